"""COCO-format data: loading, augmentation and CenterNet target rendering (paper §3.2, §4).

One data path for real COCO 2017, the real sample in ../shared/coco_sample and the synthetic
datasets of synthetic_coco.py: a COCO annotation JSON plus an image folder, read with pycocotools.

  (annotations.py reads and validates the annotation file, names a joint's side and its mirror)
  gaussian_radius / draw_gaussian CornerNet's radius and splat (CenterNet's image.py)
  render_targets                  the target dict of mdn_dense.py's docstring (CenterNet's
                                  ctdet.py / multi_pose.py __getitem__), a pure function
  (transforms.py: the one affine warp per image, the letterbox, colour, reading images)
  CocoDataset                     the torch Dataset for task "det" or "pose"; oks_sigmas
                                  from the category's "sigmas" (COCO's for COCO's names)
  CocoDataset.check_trainable     a clear error when a split cannot train (no usable data)
  CocoDataset.hold_images         decode a small set once and keep its pixels in memory

Coordinates are continuous (transforms.py): the output map is input / 4.

Where this differs from the official code (CenterNet / MixtureDenseRegression):
- Boxes are clipped to [0, W] (the official: [0, W - 1]); the flip is part of the one affine.
- Crowd annotations are not targets (the official code uses crowd boxes as objects).
- Persons with zero keypoints are centre positives with wh/reg (mask 1) and hps_mask 0; the
  official sets their reg mask to 0 and tries to lower their heatmap peak to 0.9999, which
  the Gaussian splat then overwrites with 1.
- max_objs counts the objects kept (crowd and degenerate boxes skipped); the official
  truncates the raw annotation list first.
- Pose training keeps images with a non-crowd person (the official: any annotation).
- gaussian_radius keeps CornerNet's formula by default (see its docstring: the quirk makes
  radii 2.8x the exact third-case root), so heatmaps match the official ones;
  cornernet_quirk=False gives the exact radius.
- Train scales are the official discrete choice 0.6, 0.7, ..., 1.3, written as exact decimals.
- Validation is a fixed-size letterbox (transforms.letterbox); the sample carries out2img to
  map predictions back.
- Random streams: the official dataset holds one np.random.RandomState(123) that every
  data-loader worker copies (identical augmentations across workers). Here each training
  sample draws a fresh np.random.Generator seeded from torch's RNG, which PyTorch seeds per
  worker (base_seed + worker_id, new every epoch): no worker_init_fn needed, and
  torch.manual_seed(s) with num_workers=0 makes every sample reproducible.
- Bad input raises errors naming the file (and image id); skip_bad_images=True instead
  replaces an unreadable image by the next one, with a counted warning. Every number in an
  annotation file is checked finite (a NaN keypoint or area counts as a match in COCOeval).
"""
import functools
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from tqdm import tqdm

from annotations import default_oks_sigmas, flip_index, load_coco, skeleton_pairs
from transforms import (BadImageError, affine_matrix, apply_affine, invert_affine, letterbox, read_image, to_input,
                        warp_image)

STRIDE = 4                                  # output map = input / 4
MAX_OBJS = {"det": 128, "pose": 32}
# official: s *= choice(np.arange(0.6, 1.4, 0.1)); written out because arange gives 0.7999999999999999,
# which moves a joint that lies exactly on a cell boundary into the neighbouring cell
TRAIN_SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)
# ----------------------------------------------------------------------------- targets
def gaussian_radius(h, w, min_overlap=0.7, cornernet_quirk=True):
    """CornerNet's radius r: a box whose corners move by up to r keeps IoU >= min_overlap
    with the ground truth (h, w in output pixels). Each of three cases (box shifted,
    prediction inside, prediction around the box) gives a r^2 - b r + c = 0, and the exact
    radius is the smallest positive root over the cases. CornerNet (and the official code)
    takes (b + sqrt(b^2 - 4ac)) / 2 for all three: the larger root in the first two cases
    and / 2 instead of / 2a, so its minimum is always the third case, 4 * min_overlap (2.8)
    times that case's exact root. cornernet_quirk=True (default) keeps the official value."""
    o = min_overlap
    cases = ((1, h + w, w * h * (1 - o) / (1 + o)),          # shifted box
             (4, 2 * (h + w), (1 - o) * w * h),              # prediction inside the box
             (4 * o, -2 * o * (h + w), (o - 1) * w * h))     # prediction around the box
    sq = [math.sqrt(b * b - 4 * a * c) for a, b, c in cases]
    if cornernet_quirk:
        return min((b + s) / 2 for (a, b, c), s in zip(cases, sq))
    (a1, b1, _), (a2, b2, _), (a3, b3, _) = cases
    return min((b1 - sq[0]) / (2 * a1), (b2 - sq[1]) / (2 * a2), (b3 + sq[2]) / (2 * a3))


@functools.lru_cache(maxsize=None)
def _gaussian_kernel(r):
    """The (2r+1, 2r+1) float64 Gaussian exp(-(dx^2 + dy^2) / (2 sigma^2)) with
    sigma = (2r + 1) / 6 (the diameter / 6) and peak 1 at the centre; values below
    eps * peak are set to 0 (CenterNet). Read-only: it is cached and shared."""
    ### BEGIN SOLUTION
    d = np.arange(-r, r + 1, dtype=np.float64)
    sigma = (2 * r + 1) / 6
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))  # (2r+1, 2r+1)
    g[g < np.finfo(np.float64).eps * g.max()] = 0
    g.flags.writeable = False                    # cached and shared: never modified
    return g
    ### END SOLUTION


def draw_gaussian(heatmap, center, radius):
    """Splat exp(-d^2 / (2 sigma^2)), sigma = (2r + 1) / 6, into heatmap (H, W) in place by
    element-wise max, centred on the integer cell center = (x, y), clipped to the map.
    Values below eps * peak are zeroed, as CenterNet does. Returns heatmap."""
    ### BEGIN SOLUTION
    x, y, r = int(center[0]), int(center[1]), int(radius)
    H, W = heatmap.shape
    g = _gaussian_kernel(r)
    left, right, top, bottom = min(x, r), min(W - x, r + 1), min(y, r), min(H - y, r + 1)
    window = heatmap[y - top:y + bottom, x - left:x + right]
    np.maximum(window, g[r - top:r + bottom, r - left:r + right], out=window)
    return heatmap
    ### END SOLUTION


def render_targets(boxes, classes, num_classes, out_size, max_objs, keypoints=None,
                   min_overlap=0.7):
    """Ground truth in output-map pixels -> the target dict of mdn_dense.py (numpy arrays).

    boxes (n, 4) x1 y1 x2 y2, classes (n,) contiguous ids, keypoints (n, K, 3) x y v or
    None (detection); out_size H = W. Boxes are clipped to the map; degenerate ones (w or
    h <= 0) are skipped; at most max_objs objects (N) are kept, in the given order.
    Returns hm (C, H, W), ind (N,) int64, mask (N,), reg (N, 2), wh (N, 2) and, with
    keypoints, hps (N, 2K), hps_mask (N, 2K), hm_hp (K, H, W), hp_ind (N*K,) int64,
    hp_mask (N*K,), hp_offset (N*K, 2); float32 unless said. A joint is a target when
    v > 0 and it lies inside the map.
    """
    H = W = int(out_size)
    N = max_objs
    t = dict(hm=np.zeros((num_classes, H, W), np.float32), ind=np.zeros(N, np.int64),
             mask=np.zeros(N, np.float32), reg=np.zeros((N, 2), np.float32),
             wh=np.zeros((N, 2), np.float32))
    if keypoints is not None:
        K = keypoints.shape[1]
        t.update(hps=np.zeros((N, 2 * K), np.float32), hps_mask=np.zeros((N, 2 * K), np.float32),
                 hm_hp=np.zeros((K, H, W), np.float32), hp_ind=np.zeros(N * K, np.int64),
                 hp_mask=np.zeros(N * K, np.float32), hp_offset=np.zeros((N * K, 2), np.float32))
    boxes = np.clip(np.asarray(boxes, np.float64).reshape(-1, 4), 0, [W, H, W, H])
    k = 0
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        w, h = x2 - x1, y2 - y1
        if k == N:
            break
        if w <= 0 or h <= 0:
            continue
        radius = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w), min_overlap)))
        ct = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        cx, cy = min(int(ct[0]), W - 1), min(int(ct[1]), H - 1)   # floor (ct >= 0)
        draw_gaussian(t["hm"][classes[i]], (cx, cy), radius)
        t["ind"][k], t["mask"][k] = cy * W + cx, 1
        t["reg"][k], t["wh"][k] = ct - (cx, cy), (w, h)
        if keypoints is not None:
            for j, (px, py, v) in enumerate(keypoints[i]):
                if v > 0 and 0 <= px < W and 0 <= py < H:
                    jx, jy = int(px), int(py)
                    t["hps"][k, 2 * j:2 * j + 2] = px - cx, py - cy   # from the integer centre
                    t["hps_mask"][k, 2 * j:2 * j + 2] = 1
                    t["hp_ind"][k * K + j], t["hp_mask"][k * K + j] = jy * W + jx, 1
                    t["hp_offset"][k * K + j] = px - jx, py - jy
                    draw_gaussian(t["hm_hp"][j], (jx, jy), radius)   # the person's radius
        k += 1
    return t


# ----------------------------------------------------------------------------- augmentation
def _border(size, border=128):
    """CenterNet's margin for random centres: 128 px, halved until it fits the image."""
    i = 1
    while size - border // i <= border // i:
        i *= 2
    return border // i


# ----------------------------------------------------------------------------- dataset
class CocoDataset(torch.utils.data.Dataset):
    """A COCO-format split for task "det" (all categories, contiguous class ids) or "pose"
    (the one category that names keypoints; training keeps images with a non-crowd person).

    Each item: input (3, S, S) float32; the render_targets dict as tensors (C = num_classes,
    H = W = S / 4, N = max_objs); image_id int; out2img (2, 3) float64 mapping output-map
    coordinates back to original image pixels. train=True augments (random scale from
    `scales`, random centre, flip with probability flip_prob, colour); train=False is the
    deterministic letterbox: centre of the image, scale max(h, w), fixed size S.
    skip_bad_images=True replaces an unreadable image by the next readable one with a
    counted warning (evaluation should deduplicate image ids); otherwise it raises.
    oks_sigmas (K,) float64 or None: COCOeval's per-joint sigmas (pycocotools' convention),
    the argument, else the category's "sigmas", else COCO's when the names are COCO's 17.
    """

    def __init__(self, ann_file, image_dir, task, train=False, input_size=512, max_objs=None,
                 scales=TRAIN_SCALES, random_center=True, flip_prob=0.5, color_aug=True,
                 min_overlap=0.7, skip_bad_images=False, oks_sigmas=None):
        if task not in ("det", "pose"):
            raise ValueError(f"task must be 'det' or 'pose', got {task!r}")
        if input_size % STRIDE:
            raise ValueError(f"input_size must be a multiple of {STRIDE}, got {input_size}")
        self.ann_file, self.image_dir, self.task, self.train = ann_file, Path(image_dir), task, train
        self.input_size, self.out_size = input_size, input_size // STRIDE
        self.max_objs = max_objs or MAX_OBJS[task]
        self.scales, self.random_center, self.flip_prob = scales, random_center, flip_prob
        self.color_aug, self.min_overlap, self.skip_bad_images = color_aug, min_overlap, skip_bad_images
        self.num_bad_images = 0
        self.coco = coco = load_coco(ann_file)
        cats = sorted(coco.cats.values(), key=lambda c: c["id"])
        if task == "pose":
            cats = [c for c in cats if c.get("keypoints")]
            if len(cats) != 1:
                raise ValueError(f"{ann_file}: pose needs exactly one category with keypoint "
                                 f"names, found {len(cats)}")
            self.keypoint_names = list(cats[0]["keypoints"])
            self.flip_idx = flip_index(self.keypoint_names, cats[0].get("flip_pairs"))
        else:
            self.keypoint_names, self.flip_idx = [], None
        self.num_joints = len(self.keypoint_names)
        self.oks_sigmas = self._oks_sigmas(oks_sigmas, cats[0] if task == "pose" else None)
        self.cat_ids = [c["id"] for c in cats]                 # class id -> COCO category id
        self.cat_to_class = {c: i for i, c in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)
        self._hold_records()
        self._pixels, self._pixel_start = None, None          # hold_images
        self.image_ids = sorted(coco.imgs)
        if task == "pose" and train:
            self.image_ids = [i for i in self.image_ids if self.annotations(i)]

    # Records as numpy arrays: forked loader workers read these without writing to them.
    # Python dicts and lists would be copied into each worker page by page as reference
    # counts change, up to a copy of all records per worker (checks/coco_scale.py measures
    # it); self.coco stays for the main process (evaluation, info, check_trainable).
    def _hold_records(self):
        ids = np.array(sorted(self.coco.imgs), np.int64)
        imgs = [self.coco.imgs[int(i)] for i in ids]
        self._rec_ids = ids                                                    # (I,) sorted
        self._rec_files = np.array([im["file_name"] for im in imgs], np.str_)  # (I,)
        self._rec_sizes = np.array([(im["width"], im["height"]) for im in imgs], np.int64).reshape(-1, 2)
        anns = [self.annotations(int(i)) for i in ids]
        self._ann_start = np.cumsum([0] + [len(a) for a in anns], dtype=np.int64)  # (I + 1,)
        flat = [a for per_image in anns for a in per_image]
        self._ann_boxes = np.array([a["bbox"] for a in flat], np.float64).reshape(-1, 4)  # (A, 4) xywh
        self._ann_classes = np.array([self.cat_to_class[a["category_id"]] for a in flat], np.int64)
        K = self.num_joints
        self._ann_keypoints = (np.array([a["keypoints"] for a in flat], np.float64).reshape(-1, K, 3) if K
                               else np.zeros((len(flat), 0, 3)))               # (A, K, 3)

    def _row(self, img_id):
        row = int(np.searchsorted(self._rec_ids, img_id))
        if row == len(self._rec_ids) or self._rec_ids[row] != img_id:
            raise KeyError(f"{self.ann_file}: no image id {img_id}")
        return row

    @property
    def image_ids(self):
        """The ids of the images this split serves, in order (a list; assign to cut it)."""
        return self._image_ids

    @image_ids.setter
    def image_ids(self, ids):
        self._image_ids = list(ids)
        self._image_id_array = np.array(self._image_ids, np.int64)   # what __getitem__ reads

    def _oks_sigmas(self, given, cat):
        """The argument, else the category's "sigmas", else COCO's for COCO's 17 names."""
        if cat is None:
            if given is not None:
                raise ValueError("oks_sigmas is for task pose")
            return None
        if given is None and "sigmas" in cat:                  # checked by load_coco
            return np.array(cat["sigmas"], np.float64)
        if given is None:
            return default_oks_sigmas(self.keypoint_names)
        try:
            s = np.array(given, np.float64)
        except (TypeError, ValueError):
            s = np.zeros(0)
        if s.shape != (self.num_joints,) or not (np.isfinite(s) & (s > 0)).all():
            raise ValueError(f"oks_sigmas must be {self.num_joints} finite numbers > 0 (one per "
                             f"keypoint name of {self.ann_file}, pycocotools' scale), got {given}")
        return s

    def __len__(self):
        return len(self._image_id_array)

    def annotations(self, img_id):
        """The COCO annotation dicts of image img_id that are targets: the task's categories,
        not crowd, in file order (zero-size boxes included: render_targets skips them)."""
        return [a for a in self.coco.imgToAnns.get(img_id, [])
                if a["category_id"] in self.cat_to_class and not a["iscrowd"]]

    def info(self):
        """The names a trained model needs without this file: class names and COCO category
        ids; pose adds keypoint names, the skeleton (0-based pairs), flip_idx, OKS sigmas."""
        cats = [self.coco.cats[c] for c in self.cat_ids]
        info = dict(task=self.task, cat_ids=list(self.cat_ids), class_names=[c["name"] for c in cats])
        if self.task == "pose":
            info.update(keypoint_names=self.keypoint_names, flip_idx=list(self.flip_idx),
                        skeleton=[list(p) for p in skeleton_pairs(cats[0].get("skeleton", []))],
                        oks_sigmas=None if self.oks_sigmas is None else self.oks_sigmas.tolist())
        return info

    def check_trainable(self, batch_size, drop_last=True):
        """Raise ValueError naming the annotation file when this split cannot train: no
        images, no usable object in image_ids (every annotation crowd, zero-size or of
        another category), or fewer images than batch_size (the global batch) with
        drop_last, where the loader would make no batch and an epoch would silently do
        nothing. Call it after any cut of image_ids. Returns the images with an object."""
        def usable(a):                                   # render_targets skips zero-size boxes
            return a["bbox"][2] > 0 and a["bbox"][3] > 0

        where = f"{self.ann_file}: cannot train {self.task}"
        if not self.coco.imgs:
            raise ValueError(f"{where}: the file lists no images")
        with_objects = sum(any(map(usable, self.annotations(i))) for i in self.image_ids)
        if not with_objects:
            ours = [a for a in self.coco.anns.values() if a["category_id"] in self.cat_to_class]
            crowd = sum(bool(a["iscrowd"]) for a in ours)
            names = [self.coco.cats[c]["name"] for c in self.cat_ids]
            raise ValueError(f"{where}: no usable object in {len(self.image_ids)} of its "
                             f"{len(self.coco.imgs)} images (the file has {len(self.coco.anns)} "
                             f"annotations, {len(ours)} of {names}, {crowd} crowd, "
                             f"{sum(not a['iscrowd'] and not usable(a) for a in ours)} with zero "
                             f"width or height)")
        if drop_last and len(self.image_ids) < batch_size:
            raise ValueError(f"{where}: {len(self.image_ids)} images < batch size {batch_size}: "
                             f"with drop_last the loader makes no batch (lower the batch size)")
        return with_objects

    def hold_images(self, progress=False):
        """Decode every image of image_ids once and keep the pixels, so that later epochs skip
        the file and the JPEG decoder (0.35 ms of a 128 x 128 image's 1.8 ms here). For small
        sets: the synthetic demo's 2,000 images take 98 MB; COCO train2017 would take ~100 GB.
        The pixels sit in one numpy buffer (loader workers share it, as the records). An image
        that cannot be read is not held: drawing it raises (or skips) as without holding."""
        rows = np.array([self._row(i) for i in self.image_ids], np.int64)
        sizes = self._rec_sizes[rows].prod(1) * 3                              # (n,) bytes of RGB
        start = np.full(len(self._rec_ids), -1, np.int64)
        start[rows] = np.cumsum(sizes) - sizes
        pixels = np.empty(int(sizes.sum()), np.uint8)
        for img_id, row in zip(tqdm(self.image_ids, desc="holding images", unit="img", disable=not progress), rows):
            try:
                image = np.asarray(self.load_image(img_id))                      # (h, w, 3)
            except BadImageError:
                start[row] = -1
                continue
            pixels[start[row]:start[row] + image.size] = image.reshape(-1)
        self._pixels, self._pixel_start = pixels, start

    def load_image(self, img_id):
        """The image as PIL RGB (read_image), checked against the annotated size."""
        row = self._row(img_id)
        width, height = self._rec_sizes[row].tolist()
        if self._pixel_start is not None and self._pixel_start[row] >= 0:    # hold_images
            first = self._pixel_start[row]
            return Image.fromarray(self._pixels[first:first + width * height * 3].reshape(height, width, 3))
        path = self.image_dir / str(self._rec_files[row])
        image = read_image(path, f"image id {img_id}")
        if image.size != (width, height):
            exif = image.info.get("orientation", 1)
            why = (f" once its EXIF orientation {exif} is applied (as viewers show it; the stored pixels are "
                   f"{image.size[1]}x{image.size[0]}): annotate the upright photo, or strip the tag"
                   if exif in (5, 6, 7, 8) and image.size[::-1] == (width, height) else "")
            raise BadImageError(f"image id {img_id}: {path} is "
                                f"{image.size[0]}x{image.size[1]}{why}, the annotations say {width}x{height}")
        return image

    def __getitem__(self, index):
        # A fresh generator per sample, seeded from torch's RNG (per-worker seeds in a
        # DataLoader, torch.manual_seed in the main process).
        rng = np.random.default_rng(int(torch.randint(2 ** 62, ()))) if self.train else None
        for attempt in range(len(self)):
            try:
                return self.sample((index + attempt) % len(self), rng)
            except BadImageError as e:
                if not self.skip_bad_images:
                    raise
                self.num_bad_images += 1
                warnings.warn(f"skipped a bad image ({self.num_bad_images} in this process): {e}")
        raise BadImageError(f"no readable image in {self.image_dir}")

    def sample(self, index, rng=None):
        """Item `index`: augmented with rng (np.random.Generator), the deterministic
        validation transform without."""
        img_id = int(self._image_id_array[index])
        image = self.load_image(img_id)
        w, h = image.size
        S = self.input_size
        flip = False
        if rng is None:
            inp, img2in = letterbox(image, S)                     # the path predict.py uses too
        else:
            center, scale = np.array([w / 2, h / 2]), float(max(w, h)) * rng.choice(self.scales)
            if self.random_center:
                bx, by = _border(w), _border(h)
                center = np.array([rng.integers(bx, w - bx), rng.integers(by, h - by)], float)
            flip = rng.random() < self.flip_prob
            img2in = affine_matrix(center, scale, S, flip)        # (2, 3)
            inp = to_input(warp_image(image, img2in, S), rng if self.color_aug else None)  # (3, S, S)
        img2out = img2in / STRIDE
        row = self._row(img_id)
        first, last = self._ann_start[row], self._ann_start[row + 1]   # this image's annotations
        boxes = self._ann_boxes[first:last]                      # (n, 4) x y w h
        corners = apply_affine(np.stack([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1), img2out)
        boxes = np.concatenate([corners.min(1), corners.max(1)], 1)  # (n, 4) x1 y1 x2 y2
        classes = self._ann_classes[first:last].tolist()
        keypoints = None
        if self.task == "pose":
            keypoints = self._ann_keypoints[first:last].copy()    # (n, K, 3)
            keypoints[..., :2] = apply_affine(keypoints[..., :2], img2out)
            if flip:   # the mirrored person's left joints are the original right ones
                keypoints = keypoints[:, self.flip_idx]
        targets = render_targets(boxes, classes, self.num_classes, self.out_size, self.max_objs,
                                 keypoints, self.min_overlap)
        return dict(input=inp, **{k: torch.from_numpy(v) for k, v in targets.items()},
                    image_id=int(img_id), out2img=torch.from_numpy(invert_affine(img2out)))


def run_split(train_config, task, split="val", input_size=None):
    """A run's split rebuilt from the training config its checkpoint stores (a dict or a
    train.TrainConfig): the annotation file and images train.py used, its OKS sigmas, the
    deterministic evaluation transform, the train and val splits cut to max_images as
    training cut them. split: train, val or test. None when the run has no such split (the
    test split of real data)."""
    cfg = train_config if isinstance(train_config, dict) else vars(train_config)
    prefix = {"train": "", "val": "val_", "test": "test_"}[split]
    if not cfg.get(prefix + "ann"):
        return None
    ds = CocoDataset(cfg[prefix + "ann"], cfg[prefix + "images"], task, train=False,
                     input_size=input_size or cfg["input_size"], oks_sigmas=cfg.get("oks_sigmas"))
    if cfg.get("max_images") and split != "test":
        ds.image_ids = ds.image_ids[:cfg["max_images"]]
    return ds
