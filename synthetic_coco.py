"""Synthetic COCO-format datasets with known latent modes: shapes (detection), stick figures (pose).

They stand in for COCO so the whole pipeline trains on a CPU in minutes, and every "mode" a mixture
component might discover is written down next to the ground truth:

- "shapes" (detection, §4.3.1): circle, square, triangle, star, cross; random colours and textures on
  cluttered backgrounds. Size (sqrt of box area) is log-uniform over 8..120 px, spanning COCO's small
  (< 32^2), medium and large (>= 96^2) ranges in absolute pixels on 128x128 images, and is drawn
  independently of category: if components split by scale, as on COCO (Fig. 2: Pearson 0.76 with
  scale, 0.04 with category), that is a finding, not a built-in.
- "figures" (pose, §4.4.1): stick people with the 17 COCO joints and a front/back viewpoint latent.
  Front view: the person's left is on the image right (a photo of someone facing the camera); back
  view: mirrored. Cues: left limbs warm (reds), right limbs cool (blues); front heads show a face,
  back heads are hair-coloured. A fraction `cue_free_fraction` has no cues (green limbs on both sides,
  faceless head): their keypoint offsets are truly bimodal given the image, the case §3.1 says a
  single-mode regressor averages into a wrong in-between answer.

Extra annotation fields (pycocotools ignores them) record the modes:
    scale_bin     0 small / 1 medium / 2 large, COCO's thresholds on `area` (both tasks)
    viewpoint     "front" or "back" (figures)
    cues_visible  False for cue-free figures (figures)

Conventions: pixel (i, j) covers [i, i+1) x [j, j+1). bbox is the tight box of the drawn pixels (head
and limb thickness included), hence inside the image; area = bbox w * h (no masks here; COCO uses
mask area). Joints outside the image are [0, 0, 0] as in COCO. Back views hide nose and eyes (v = 0)
but keep the ears, as COCO labels ears seen from behind. Joints under a later-drawn figure: v = 1.

Cache rule: <root>/<task>_<split>_<n>x<size>_seed<seed>_<hash of all parameters + GENERATOR_VERSION>/
holds images/ and annotations.json. The JSON is written last and atomically (tmp file + os.replace):
if it exists the folder is complete and reused, otherwise the folder is regenerated. Each image has
its own RNG seeded by (seed, task, split, index): same parameters give byte-identical files, train
and val differ, and image i does not depend on num_images.

Figure defaults aim at keypoint AP >= 0.7 for a small CenterNet (128x128 input, stride 4) trained a
few minutes on a CPU: stature 48..110 px (OKS tolerance scales with sqrt(area); smaller people need
sub-pixel accuracy at stride 4), 1..3 people, limbs >= 3 px thick, little clutter, 20% cut by the
border, 50% back views (COCO is ~73/27, balanced shows both modes best), 20% cue-free (shows the
bimodality; each is a coin flip for any model, capping AP near 1 - 0.2 / 2 = 0.9). Generating the
default demo set (2000 train + 250 val images) takes about 5 s of CPU per task.

Caveat: the figures are chiral. A horizontal flip swaps the left/right labels but not the colours,
so a mirrored figure has warm limbs labelled right: an image this generator never draws (real
people and the shapes are mirror-symmetric, colour-coded sides are not). train.py therefore does
not flip-augment this set by default (--flip-prob), and evaluate.py --flip does not suit it.
With flip augmentation the limb colours stop telling the viewpoint, only the face/hair cue at
the head does, and MDN_3 trained from scratch never learns to pick its component (README).
"""
import colorsys
import hashlib
import json
import math
import os
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from annotations import COCO_PERSON_KEYPOINTS, COCO_PERSON_SKELETON

GENERATOR_VERSION = 2  # part of the cache key: bump it whenever the drawing code changes

FACE_HIDDEN_ON_BACK = (0, 1, 2)  # nose, left_eye, right_eye
SHAPE_NAMES = ["circle", "square", "triangle", "star", "cross"]
SMALL_AREA, LARGE_AREA = 32 ** 2, 96 ** 2  # COCO's area thresholds

SHAPES_DEFAULTS = dict(
    objects=(1, 6),     # objects per image (fewer when large ones leave no room)
    min_size=8.0,       # sqrt(box area) in px, log-uniform between min and max
    max_size=120.0,
    max_aspect=2.0,     # w/h log-uniform in [1/max_aspect, max_aspect]
    max_occlusion=0.3,  # later objects may hide at most this fraction of an earlier one's pixels
    clutter=12,         # up to this many faint lines/blobs in the background
    noise=8.0,          # std of Gaussian pixel noise
)
FIGURES_DEFAULTS = dict(
    people=(1, 3),
    min_height=48.0,    # stature (body-frame unit) in px, log-uniform
    max_height=110.0,
    back_fraction=0.5,
    cue_free_fraction=0.2,
    truncate_fraction=0.2,  # figures that may stick out of the image by up to 40% of their extent
    max_occlusion=0.2,
    clutter=4,
    noise=5.0,
)
DEFAULTS = {"shapes": SHAPES_DEFAULTS, "figures": FIGURES_DEFAULTS}
TASK_ALIASES = {"det": "shapes", "detection": "shapes", "pose": "figures"}
DEMO_NUM_IMAGES = {"train": 2000, "val": 250, "test": 250}
DEMO_SEEDS = {"train": 0, "val": 0, "test": 1}  # the test split: another seed, never used for tuning
JPEG_QUALITY = 95  # fixed quality and no chroma subsampling: deterministic and keeps limb colours crisp

# hue ranges (0..1) of the colour families; they must not overlap for the cues to be readable
LEFT_HUES, RIGHT_HUES = (-0.03, 0.06), (0.55, 0.65)  # reds, blues
CUE_FREE_HUES, TORSO_HUES = (0.27, 0.37), (0.75, 0.85)  # greens, purples


def scale_bin(area):
    """0 small (< 32^2), 1 medium, 2 large (>= 96^2): COCO's area ranges."""
    return 0 if area < SMALL_AREA else 1 if area < LARGE_AREA else 2


# ----------------------------------------------------------------------------- colours, background

def _hsv(rng, hues, sat=(0.65, 1.0), val=(0.65, 1.0)):
    """A random RGB colour from a hue range."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(*hues) % 1.0, rng.uniform(*sat), rng.uniform(*val))
    return int(255 * r), int(255 * g), int(255 * b)


def _muted(rng, tint=12.0):
    """A low-saturation colour (grey plus a small tint): never competes with the cue colours."""
    return np.clip(rng.uniform(50, 205) + rng.normal(0, tint, 3), 0, 255)


def _background(rng, size, clutter, noise):
    """Muted gradient + Gaussian pixel noise + faint random lines and blobs."""
    c0, c1 = _muted(rng), _muted(rng)
    ramp = np.linspace(0.0, 1.0, size)
    ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]  # vertical or horizontal gradient
    t = np.broadcast_to(ramp, (size, size))[..., None]  # (S, S, 1)
    pixels = c0 + (c1 - c0) * t + rng.normal(0.0, noise, (size, size, 3))  # (S, S, 3)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, clutter + 1))):
        fill = tuple(int(c) for c in _muted(rng, tint=5.0))  # near-grey: clutter is never an object
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=fill, width=int(rng.integers(1, 3)))
        else:
            rx, ry = rng.uniform(2, size / 10, 2)
            draw.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=fill)
    return img


def _paste(rng, img, owner, areas, sprite, max_occlusion, slack=0.0, tries=20):
    """Paste an RGBA sprite at a random integer spot, at most slack * its size outside the image, where
    every earlier object keeps >= 1 - max_occlusion of its pixels visible (so it stays recognisable).
    owner (S, S) holds the index of the topmost object per pixel (-1: background) and is updated, as
    are areas (in-image pixels per object). Returns the sprite's full-image 'L' mask and its top-left
    (x, y), or None if all tries fail."""
    size, (w, h) = img.size[0], sprite.size
    visible = np.bincount(owner[owner >= 0], minlength=len(areas))  # pixels each object shows now
    for _ in range(tries):
        x = int(rng.integers(-int(slack * w), max(size - w + int(slack * w), -int(slack * w)) + 1))
        y = int(rng.integers(-int(slack * h), max(size - h + int(slack * h), -int(slack * h)) + 1))
        mask = Image.new("L", (size, size), 0)
        mask.paste(sprite.getchannel("A"), (x, y))  # clipped to the image
        inside = np.asarray(mask) > 0  # (S, S)
        hidden = np.bincount(owner[inside & (owner >= 0)], minlength=len(areas))
        if inside.any() and np.all(visible - hidden >= (1 - max_occlusion) * np.asarray(areas)):
            img.paste(sprite, (x, y), sprite)
            owner[inside] = len(areas)
            areas.append(int(inside.sum()))
            return mask, (x, y)
    return None


def _coco_box(mask):
    """Tight [x, y, w, h] of the nonzero pixels of a full-image mask, and its area w * h."""
    x0, y0, x1, y1 = mask.getbbox()
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], float((x1 - x0) * (y1 - y0))


# ----------------------------------------------------------------------------- shapes

def _unit_outline(kind, rng):
    """Polygon vertices touching all four sides of [0, 1]^2, so the drawn shape fills its box."""
    if kind == "square":
        pts = [(0, 0), (1, 0), (1, 1), (0, 1)]
    elif kind == "triangle":
        pts = [(0.5, 0), (1, 1), (0, 1)]
        k = int(rng.integers(4))  # point up, down, left or right
        if k & 1:
            pts = [(x, 1 - y) for x, y in pts]
        if k & 2:
            pts = [(y, x) for x, y in pts]
    elif kind == "star":
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)  # (10, 2)
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0))
    else:  # cross: a plus sign with random arm thickness
        t = rng.uniform(0.3, 0.45)
        a, b = 0.5 - t / 2, 0.5 + t / 2
        pts = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b),
               (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    return np.asarray(pts, dtype=float)


def _shape_mask(kind, w, h, rng):
    """'L' mask of size w x h holding one shape that fills it."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
    else:
        draw.polygon([tuple(p) for p in _unit_outline(kind, rng) * [w - 1, h - 1]], fill=255)
    return mask


def _texture(rng, w, h):
    """(h, w, 3) fill: solid, stripes, checker or speckle in a saturated colour and a darker shade."""
    c1 = np.array(_hsv(rng, (0.0, 1.0), sat=(0.6, 1.0)), dtype=float)
    c2 = c1 * rng.uniform(0.35, 0.7)
    yy, xx = np.mgrid[0:h, 0:w]
    period, angle, kind = rng.uniform(3, 8), rng.uniform(0, np.pi), int(rng.integers(4))
    if kind == 0:
        pattern = np.zeros((h, w), bool)
    elif kind == 1:
        pattern = ((xx * np.cos(angle) + yy * np.sin(angle)) // period) % 2 == 1
    elif kind == 2:
        pattern = ((xx // period) + (yy // period)) % 2 == 1
    else:
        pattern = rng.random((h, w)) < 0.3
    return Image.fromarray(np.where(pattern[..., None], c2, c1).astype(np.uint8))


def _box_size(rng, scale, max_aspect, size):
    """(w, h) with sqrt(w * h) = scale and log-uniform aspect w/h, limited so that both sides fit."""
    lim = max(0.0, min(math.log(max_aspect), 2 * math.log(size / scale)))
    half_log_aspect = rng.uniform(-lim, lim) / 2
    w, h = scale * math.exp(half_log_aspect), scale / math.exp(half_log_aspect)
    return max(3, min(size, round(w))), max(3, min(size, round(h)))


def _render_shapes(rng, size, p):
    """One image of textured shapes; returns (PIL image, list of annotation dicts without ids)."""
    img = _background(rng, size, p["clutter"], p["noise"])
    n = int(rng.integers(p["objects"][0], p["objects"][1] + 1))
    # Category and scale are drawn independently (§4.3.1): scale must not be predictable from category.
    cats = rng.integers(len(SHAPE_NAMES), size=n)
    scales = np.minimum(np.exp(rng.uniform(np.log(p["min_size"]), np.log(p["max_size"]), n)), size)
    anns, owner, areas = [], np.full((size, size), -1), []
    for k in np.argsort(-scales):  # largest first: they are the hardest to fit, small ones go on top
        w, h = _box_size(rng, scales[k], p["max_aspect"], size)
        sprite = _texture(rng, w, h).convert("RGBA")
        sprite.putalpha(_shape_mask(SHAPE_NAMES[cats[k]], w, h, rng))
        placed = _paste(rng, img, owner, areas, sprite, p["max_occlusion"])
        if placed is not None:
            bbox, area = _coco_box(placed[0])
            anns.append(dict(category_id=int(cats[k]) + 1, bbox=bbox, area=area,
                             scale_bin=scale_bin(area)))
    return img, anns


# ----------------------------------------------------------------------------- figures

def _body_joints(rng):
    """Front-view body frame: (17, 2) joints, head centre (2,) and head radius, in units of stature,
    origin at mid-hip, y down, the person's left towards +x (the image right for a front view)."""
    lean = rng.uniform(-0.2, 0.2)
    up = np.array([np.sin(lean), -np.cos(lean)])  # mid-hip -> mid-shoulder
    side = np.array([np.cos(lean), np.sin(lean)])  # towards the person's left
    limb = rng.uniform(0.9, 1.1)  # per-person limb length factor

    def direction(angle, s):  # angle 0 hangs straight down, positive swings outwards on side s
        return np.cos(angle) * -up + s * np.sin(angle) * side

    J = np.zeros((17, 2))
    neck = rng.uniform(0.27, 0.32) * up
    shoulder_half, hip_half = rng.uniform(0.09, 0.13), rng.uniform(0.06, 0.09)
    for s, o in ((+1, 0), (-1, 1)):  # o: COCO lists each left joint just before its right twin
        J[5 + o] = neck + s * shoulder_half * side
        J[11 + o] = s * hip_half * side
        arm = rng.uniform(-0.3, 2.6)
        J[7 + o] = J[5 + o] + 0.16 * limb * direction(arm, s)
        J[9 + o] = J[7 + o] + 0.15 * limb * direction(arm + rng.uniform(-0.5, 2.0), s)
        leg = rng.uniform(-0.15, 0.5)
        J[13 + o] = J[11 + o] + 0.23 * limb * direction(leg, s)
        J[15 + o] = J[13 + o] + 0.23 * limb * direction(leg + rng.uniform(-0.6, 0.3), s)
    r = 0.08
    head = neck + (0.04 + r) * up
    J[0] = head - 0.1 * r * up  # nose just below the head centre
    for s, o in ((+1, 0), (-1, 1)):
        J[1 + o] = head + r * (0.3 * up + 0.4 * s * side)
        J[3 + o] = head + 0.9 * r * s * side
    return J, head, r


def _figure_colours(rng, cues, back):
    """Limb colours by side (the left/right cue), torso and head colour (the face/hair cue)."""
    if cues:
        left, right = _hsv(rng, LEFT_HUES), _hsv(rng, RIGHT_HUES)
    else:  # one colour for both sides: nothing tells left from right
        left = right = _hsv(rng, CUE_FREE_HUES)
    skin = _hsv(rng, (0.05, 0.09), sat=(0.3, 0.5), val=(0.85, 1.0))
    hair = _hsv(rng, (0.05, 0.1), sat=(0.4, 0.8), val=(0.12, 0.3))
    torso = _hsv(rng, TORSO_HUES, sat=(0.3, 0.6), val=(0.5, 0.8))
    return dict(left=left, right=right, torso=torso, head=hair if (cues and back) else skin)


def _disc(draw, p, radius, fill):
    # PIL's ellipse and polygon read coordinates as pixel corners, like ours (pixel i covers [i, i+1)):
    # measured, their pixel centroids are unbiased, so continuous coordinates go in unchanged.
    x, y = float(p[0]), float(p[1])
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)


def _draw_figure(w, h, P, head, r, t, col, face):
    """w x h RGBA sprite (alpha = mask): thick limbs, torso, neck and head (with a face if asked)."""
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    width = 2 * int(round((t - 1) / 2)) + 1  # odd: PIL centres odd-width lines, even ones shift 0.5 px
    pts = [tuple(map(float, q)) for q in P]

    def limb(idx, colour):
        draw.line([pts[i] for i in idx], fill=colour, width=width, joint="curve")
        for i in idx:
            _disc(draw, P[i], t / 2, colour)  # round joints and limb ends

    for o, side in ((0, "left"), (1, "right")):
        limb([11 + o, 13 + o, 15 + o], col[side])  # hip, knee, ankle
    draw.polygon([pts[i] for i in (5, 6, 12, 11)], fill=col["torso"])
    neck = (P[5] + P[6]) / 2
    draw.line([tuple(map(float, neck)), tuple(map(float, head))], fill=col["torso"], width=width)
    for o, side in ((0, "left"), (1, "right")):
        limb([5 + o, 7 + o, 9 + o], col[side])  # shoulder, elbow, wrist
    _disc(draw, head, r, col["head"])
    if face:
        for eye in (1, 2):
            _disc(draw, P[eye], max(1.0, 0.18 * r), (25, 25, 25))
        _disc(draw, P[0], max(0.7, 0.12 * r), (150, 60, 50))
    return layer


def _keypoints(P, back, size, owner, me):
    """COCO [x, y, v] * 17: v = 0 (and 0, 0) outside the image or for a back view's face,
    1 under a figure drawn later (owner is not me), 2 visible."""
    kps = []
    for k, (x, y) in enumerate(P):
        # round first: "inside" must hold for the stored value (+ 0.0 turns -0.0 into 0.0)
        x, y = round(float(x), 2) + 0.0, round(float(y), 2) + 0.0
        if not (0 <= x < size and 0 <= y < size) or (back and k in FACE_HIDDEN_ON_BACK):
            kps += [0, 0, 0]
        else:
            kps += [x, y, 2 if owner[int(y), int(x)] == me else 1]
    return kps


def _render_figures(rng, size, p):
    """One image of stick figures; returns (PIL image, list of annotation dicts without ids)."""
    img = _background(rng, size, p["clutter"], p["noise"])
    n = int(rng.integers(p["people"][0], p["people"][1] + 1))
    statures = np.exp(rng.uniform(np.log(p["min_height"]), np.log(p["max_height"]), n))
    placed, owner, areas = [], np.full((size, size), -1), []
    for height in sorted(statures, reverse=True):  # tallest first: hardest to fit
        back = bool(rng.random() < p["back_fraction"])
        cues = bool(rng.random() >= p["cue_free_fraction"])
        J, head, r = _body_joints(rng)
        if back:  # seen from behind, the person's left appears on the image left: mirror x
            J[:, 0], head[0] = -J[:, 0], -head[0]
        J, head, r = J * height, head * height, r * height  # body units -> px, origin still at mid-hip
        t = max(3.0, 0.08 * height)  # limb thickness: >= 3 px so it survives the stride-4 backbone
        lo = np.minimum(J.min(0) - t / 2, head - r) - 1  # sprite corner (1 px margin for rounding)
        w, h = np.ceil(np.maximum(J.max(0) + t / 2, head + r) + 1 - lo).astype(int)
        sprite = _draw_figure(w, h, J - lo, head - lo, r, t, _figure_colours(rng, cues, back),
                              face=cues and not back)
        slack = 0.4 if rng.random() < p["truncate_fraction"] else 0.0
        pasted = _paste(rng, img, owner, areas, sprite, p["max_occlusion"], slack)
        if pasted is not None:
            mask, xy = pasted
            placed.append((J - lo + xy, back, cues, mask))
    anns = []
    for me, (P, back, cues, mask) in enumerate(placed):
        kps = _keypoints(P, back, size, owner, me)
        bbox, area = _coco_box(mask)
        anns.append(dict(category_id=1, bbox=bbox, area=area, keypoints=kps,
                         num_keypoints=sum(v > 0 for v in kps[2::3]), scale_bin=scale_bin(area),
                         viewpoint="back" if back else "front", cues_visible=cues))
    return img, anns


# ----------------------------------------------------------------------------- datasets on disk

RENDERERS = {"shapes": _render_shapes, "figures": _render_figures}


def categories(task):
    """COCO "categories" list for a task."""
    if task == "shapes":
        return [dict(id=i + 1, name=name, supercategory="shape") for i, name in enumerate(SHAPE_NAMES)]
    return [dict(id=1, name="person", supercategory="person",
                 keypoints=list(COCO_PERSON_KEYPOINTS), skeleton=[list(e) for e in COCO_PERSON_SKELETON])]


def _resolve(task, params):
    """Canonical task name and the full parameter dict (defaults + overrides); rejects unknown names."""
    task = TASK_ALIASES.get(task, task)
    if task not in DEFAULTS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(DEFAULTS)}")
    unknown = set(params) - set(DEFAULTS[task])
    if unknown:
        raise TypeError(f"unknown {task} parameters: {sorted(unknown)}")
    return task, {**DEFAULTS[task], **params}


def _image_rng(seed, task, split, index):
    """Per-image generator: crc32 is stable across runs (Python's hash() is salted per process)."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(split.encode()), index])


def _write_json_atomic(path, data):
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)


def make_dataset(root, task, split, num_images, image_size=128, seed=0, **params):
    """Generate (or reuse from the cache) one split; returns (annotation JSON path, image folder) as str.

    task: "shapes" or "figures" (aliases "det", "pose"); params override SHAPES_DEFAULTS /
    FIGURES_DEFAULTS. Each split gets its own seeds, derived from (seed, task, split, image index).
    """
    task, p = _resolve(task, params)
    key = dict(version=GENERATOR_VERSION, task=task, split=split, num_images=num_images,
               image_size=image_size, seed=seed, params=p)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(root) / f"{task}_{split}_{num_images}x{image_size}_seed{seed}_{digest}"
    ann_file, image_dir = folder / "annotations.json", folder / "images"
    if ann_file.exists():  # written last and atomically: it exists only for a complete dataset
        return str(ann_file), str(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    # a bar on a terminal; in a log file, CI or a notebook its redraws would pile up: one line instead
    tty = sys.stderr.isatty()
    for i in tqdm(range(num_images), desc=f"synthetic {task}/{split}", unit="img", disable=not tty):
        img, objs = RENDERERS[task](_image_rng(seed, task, split, i), image_size, p)
        file_name = f"{i:06d}.jpg"
        img.save(image_dir / file_name, quality=JPEG_QUALITY, subsampling=0)
        images.append(dict(id=i + 1, file_name=file_name, width=image_size, height=image_size))
        for obj in objs:  # ids start at 1: COCOeval treats id 0 as "unmatched"
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, iscrowd=0, **obj))
    info = dict(description=f"synthetic {task} ({split}), synthetic_coco.py", **key)
    _write_json_atomic(ann_file, dict(info=info, licenses=[], images=images, annotations=anns,
                                      categories=categories(task)))
    if not tty:
        print(f"synthetic {task}/{split}: {num_images} images in {folder}", file=sys.stderr)
    return str(ann_file), str(image_dir)


def ensure_demo_dataset(task, root="data/synthetic"):
    """The default demo dataset: {"train" | "val" | "test": (ann_file, image_dir)}: 2000 train
    and 250 val images of 128x128 with default parameters and seed 0 (tune on val), and 250
    test images with seed 1 (report on test)."""
    return {split: make_dataset(root, task, split, n, seed=DEMO_SEEDS[split]) for split, n in DEMO_NUM_IMAGES.items()}
