"""Images to network inputs: the one affine warp, the letterbox, colour augmentation and
normalisation, and reading image files (CenterNet's image.py and the transforms of its
datasets, paper §4.1). coco_data.py builds its training samples and evaluation views from
these; predict.py and inference.py map detections back with the same affines.

  affine_matrix / invert_affine / apply_affine   the one warp per image and its inverse (2, 3)
  warp_image / letterbox                         a PIL image under a warp; the evaluation view
  color_matrix / to_input                        colour jitter + PCA lighting + normalisation
                                                 as one 3x3 map, applied to a warped image
  read_image / BadImageError                     an image file as upright RGB, or one line

Coordinates are continuous: pixel (i, j) covers [i, i+1) x [j, j+1), as COCO boxes and PIL's
Image.transform use them, so a warp and its inverse are exact and the output map is input / 4.

Where this differs from the official code (CenterNet / MixtureDenseRegression):
- RGB, not BGR: mean, std, the PCA eigenvectors and the grey weights are reversed to RGB
  order, so each colour gets the official numbers (official weights would need BGR input).
- The warp is PIL's Image.transform (AFFINE, BILINEAR; opencv is not a dependency), in
  continuous coordinates. The flip is part of the same affine, x -> S - x, exactly
  invertible (the official flips the array and maps x -> width - 1 - x, the pixel-index
  convention).
- Colour jitter is one per-pixel 3x3 matrix, the composition of the official steps (see
  color_matrix).
- Validation is a fixed-size letterbox (the official default, fix_res): the image centre,
  scale max(h, w), an S x S input.
- Photos are read upright (their EXIF orientation applied); 16-bit grey images are scaled by
  1 / 257; 32-bit integer and float images are refused.
"""
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

# CenterNet's COCO statistics, official BGR values reversed to RGB.
MEAN_RGB = np.array([0.47026115, 0.44719302, 0.40789654], np.float32)
STD_RGB = np.array([0.27809835, 0.27408164, 0.28863828], np.float32)
EIG_VAL = np.array([0.2141788, 0.01817699, 0.00341571], np.float32)   # CenterNet's _eig_val
EIG_VEC_RGB = np.array([[-0.56089297, 0.71832671, 0.41158938],   # rows: R, G, B
                        [-0.5832747, 0.00994535, -0.81221408],
                        [-0.58752847, -0.69563484, 0.41340352]], np.float32)
GRAY_RGB = np.array([0.299, 0.587, 0.114], np.float32)  # cv2's BGR2GRAY weights, RGB order
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")   # PIL's 16-bit grey (PNG, TIFF)


# ----------------------------------------------------------------------------- geometry
def affine_matrix(center, scale, size, flip=False):
    """(2, 3) map from image to input coordinates: the square of side `scale` around
    `center` (image pixels) fills the size x size input; flip mirrors it (x -> size - x)."""
    k = size / scale
    A = np.array([[k, 0.0, size / 2 - k * center[0]], [0.0, k, size / 2 - k * center[1]]])
    if flip:
        A[0] = -A[0]
        A[0, 2] += size
    return A


def invert_affine(A):
    """(2, 3) affine -> its inverse (2, 3)."""
    L = np.linalg.inv(A[:, :2])
    return np.concatenate([L, -L @ A[:, 2:]], axis=1)


def apply_affine(points, A):
    """points (..., 2) -> A applied, (..., 2); A (2, 3)."""
    points = np.asarray(points, np.float64)
    return points @ A[:, :2].T + A[:, 2]


def warp_image(image, img2in, size):
    """PIL RGB image -> the size x size input under the affine img2in (2, 3): bilinear
    sampling in continuous coordinates, black outside the image. Only the rectangle the
    image lands in is resampled (letterbox bars and shifted crops stay black for free)."""
    w, h = image.size
    corners = apply_affine([[0, 0], [w, h]], img2in)                   # (2, 2), maybe mirrored
    x0, y0 = np.clip(np.floor(corners.min(0)) - 1, 0, size).astype(int)   # 1 px margin: PIL
    x1, y1 = np.clip(np.ceil(corners.max(0)) + 1, 0, size).astype(int)   # decides the edges
    out = Image.new("RGB", (size, size))
    if x1 > x0 and y1 > y0:
        A = invert_affine(img2in)                                      # input -> image
        A[:, 2] += A[:, :2] @ (x0, y0)                                 # from the rectangle's origin
        out.paste(image.transform((int(x1 - x0), int(y1 - y0)), Image.AFFINE, tuple(A.ravel()),
                                  resample=Image.BILINEAR), (int(x0), int(y0)))
    return out


def color_matrix(channel_mean=None, rng=None, jitter=0.4, lighting=0.1):
    """Colour jitter, PCA lighting and normalisation as one affine map of an RGB pixel.

    Returns P (3, 3), q (3,) float32 so that P @ x + q, for a raw pixel x in 0..255, is the
    normalised input. rng None: normalisation only. With rng (and channel_mean (3,), the
    mean raw RGB of the warped image), the official color_aug: brightness, contrast and
    saturation (factors 1 + U(-jitter, jitter)) in random order, then lighting
    eigvec @ (eigval * N(0, lighting)). Every step is affine in the pixel (saturation mixes
    in the grey of the un-jittered image, contrast its mean grey), so they compose into one
    matrix. Draws: rng.permutation(3), one uniform per step in that order, then 3 normals.
    """
    P, q = np.eye(3) / 255, np.zeros(3)                   # x / 255 first, as the official
    if rng is not None:
        gray = GRAY_RGB.astype(np.float64) / 255          # grey of the un-jittered pixel
        gray_mean = float(gray @ channel_mean)
        for op in rng.permutation(3):                     # 0 brightness, 1 contrast, 2 saturation
            a = 1 + rng.uniform(-jitter, jitter)
            P, q = a * P, a * q
            if op == 1:
                q = q + (1 - a) * gray_mean
            elif op == 2:
                P = P + (1 - a) * np.outer(np.ones(3), gray)
        q = q + EIG_VEC_RGB @ (EIG_VAL * rng.normal(0, lighting, 3))
    P, q = P / STD_RGB[:, None], (q - MEAN_RGB) / STD_RGB
    return P.astype(np.float32), q.astype(np.float32)


def to_input(image, rng=None):
    """PIL RGB image (S, S) -> normalised float32 tensor (3, S, S), colour-jittered when rng."""
    w, h = image.size
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).reshape(3, -1).float()  # (3, S*S)
    P, q = color_matrix(x.mean(1).double().numpy() if rng is not None else None, rng)
    return torch.addmm(torch.from_numpy(q)[:, None], torch.from_numpy(P), x).view(3, h, w)


def letterbox(image, size):
    """The deterministic evaluation transform: the whole image, centred, its longer side
    scaled to `size`, in a size x size input. -> (input (3, size, size), img2in (2, 3))."""
    w, h = image.size
    img2in = affine_matrix(np.array([w / 2, h / 2]), float(max(w, h)), size)
    return to_input(warp_image(image, img2in, size)), img2in


# ----------------------------------------------------------------------------- files
class BadImageError(OSError):
    """A missing or unreadable image; the message names the file and the image id."""

    def line(self):
        """The message alone, also when a DataLoader worker re-raised it inside its traceback."""
        return str(self).strip().splitlines()[-1].removeprefix(f"{__name__}.BadImageError: ")


def read_image(path, what="image"):
    """An image file as PIL RGB (grayscale, palette, RGBA, CMYK become RGB). 16-bit grey
    (PNG / TIFF modes I;16, I;16B) is scaled by its range, round(v / 257): 65535 -> 255
    (PIL's convert would clip every value above 255 to white). 32-bit integer ('I', but
    for PNG) and float ('F') images state no range, so they are refused. The EXIF orientation
    is applied, so a phone's portrait photo is upright as viewers show it; image.info
    ["orientation"] keeps the tag (1 = none). Every failure is a BadImageError naming `what`
    (e.g. the image id) and the file."""
    try:
        with Image.open(path) as raw:
            raw.load()                                 # decode now, inside the try
            orientation = raw.getexif().get(ExifTags.Base.Orientation, 1)
            im = ImageOps.exif_transpose(raw)
            mode, image = im.mode, None
            # A PNG holds at most 16 bits a channel: older Pillow opens 16-bit grey PNG as "I".
            if mode in SIXTEEN_BIT_MODES or (mode == "I" and im.format == "PNG"):
                grey = (np.asarray(im).astype(np.uint32) + 128) // 257    # (h, w) round(v / 257)
                image = Image.fromarray(grey.astype(np.uint8)).convert("RGB")
            elif mode not in ("I", "F"):
                image = im if mode == "RGB" else im.convert("RGB")
    except FileNotFoundError:
        raise BadImageError(f"{what}: file not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"{what}: cannot read {path}: {e}") from e
    if image is None:
        raise BadImageError(f"{what}: {path}: mode '{mode}' (32-bit {'float' if mode == 'F' else 'integer'}) "
                            f"has no defined 8-bit range; convert it to 8 bits (or 16-bit PNG) first")
    image.info["orientation"] = orientation
    return image
