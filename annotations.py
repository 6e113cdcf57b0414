"""COCO-format annotation files: where a split lives, reading and validating its JSON, a
joint's side and each joint's mirror, COCO's keypoint constants (paper §4: data).

  coco2017_paths / dataset_paths  a COCO 2017 root, an --ann / --images pair or the synthetic
                                  demo set -> (annotation file, image folder), for train.py
                                  and evaluate.py alike
  load_coco                       pycocotools' COCO, after checking every record: types, and
                                  every number finite and non-negative (a NaN keypoint or area
                                  counts as a match in COCOeval), errors naming file, id, field
  joint_side / flip_index         a joint's side from its name (left_x, x_left, l_x, LHand, ...)
                                  and each joint's mirror joint, or the category's 0-based
                                  "flip_pairs"; a warning when side-looking names stay unpaired

coco_data.py builds the training samples from what this file reads.
"""
import contextlib
import io
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

# ----------------------------------------------------------------------------- COCO's person category
# The one table every module imports: joint names, the skeleton (1-based joint pairs, as COCO's files
# store it) and the OKS sigmas in pycocotools' convention (the COCO keypoint paper's values / 10). The
# sigmas are a dataset's default oks_sigmas when its category names exactly these joints, and the
# official code uses them as the per-joint scale k_j of Eq. (4), so an eye gets a tighter Gaussian
# than a hip.
COCO_PERSON_KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle"]
COCO_PERSON_SIGMAS = np.array([.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062,
                               .107, .107, .087, .087, .089, .089])
COCO_PERSON_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8],
    [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


def default_oks_sigmas(keypoint_names):
    """COCO's OKS sigmas (a copy) when keypoint_names are exactly COCO's 17, else None: a
    dataset with other joints must bring its own (its category's "sigmas", --oks-sigmas)."""
    return COCO_PERSON_SIGMAS.copy() if list(keypoint_names) == COCO_PERSON_KEYPOINTS else None


def skeleton_pairs(skeleton):
    """A COCO category's skeleton (1-based joint pairs) -> 0-based (a, b) tuples."""
    return [(a - 1, b - 1) for a, b in skeleton]


# ----------------------------------------------------------------------------- files
def coco2017_paths(root, task, split):
    """A COCO 2017 root -> (ann_file, image_dir) for task "det"/"pose", split "train"/"val"."""
    if task not in ("det", "pose") or split not in ("train", "val"):
        raise ValueError(f"task must be det/pose and split train/val, got {task!r}, {split!r}")
    root = Path(root)
    prefix = "instances" if task == "det" else "person_keypoints"
    ann_file, image_dir = root / "annotations" / f"{prefix}_{split}2017.json", root / f"{split}2017"
    for path in (ann_file, image_dir):
        if not path.exists():
            raise FileNotFoundError(f"COCO 2017 {task}/{split}: missing {path}")
    return ann_file, image_dir


def dataset_paths(task, split, data=None, ann=None, images=None):
    """Where a split comes from, for train.py and evaluate.py alike: a COCO 2017 root
    (--data) or an annotation file with its image folder (--ann / --images) -> (ann_file,
    image_dir); None when neither is given (the caller then uses the synthetic demo set,
    synthetic_coco.ensure_demo_dataset)."""
    if data:
        if ann or images:
            raise SystemExit("give --data or --ann/--images, not both")
        return coco2017_paths(data, task, split)
    if ann or images:
        if not (ann and images):
            raise SystemExit("--ann and --images go together")
        return Path(ann), Path(images)
    return None


def _check(ok, path, what):
    if not ok:
        raise ValueError(f"{path}: {what}")


def _is_numbers(value, width):
    """value is one number (width None) or a list of `width` numbers, all finite."""
    if width is not None and not (isinstance(value, list) and len(value) == width):
        return False
    try:
        return all(isinstance(v, (int, float)) and math.isfinite(v)
                   for v in ([value] if width is None else value))
    except OverflowError:                              # an int beyond float64
        return False


def _numbers(path, kind, records, field, width=None, rule="a finite number", ok=None):
    """records[i][field] -> float64 (n,) (width None) or (n, width), checked: every entry a
    finite number (JSON's NaN / Infinity, null and strings are not) and ok(array) -> (n,)
    bool true. Otherwise ValueError "{path}: {kind} id {id}: {field} must be {rule}, got ..."
    for the first bad record. Vectorised, one np.array per field (COCO train's 860k boxes:
    0.25 s, against tens of seconds of JSON parsing); the per-record scan runs only when
    numpy gets no clean numeric array, i.e. when something is wrong."""
    values = [r[field] for r in records]
    shape = (len(values),) if width is None else (len(values), width)
    if not values:
        return np.zeros(shape)
    try:
        arr = np.array(values)                         # a numeric dtype iff all are numbers
    except (ValueError, OverflowError):                # ragged lists
        arr = None
    if arr is None or arr.shape != shape or arr.dtype.kind not in "biuf":
        bad = np.array([not _is_numbers(v, width) for v in values], bool)
        arr = np.zeros(shape) if bad.any() else np.array(values, np.float64)  # ints > 2**63
    else:
        arr = arr.astype(np.float64, copy=False)
        bad = ~np.isfinite(arr).reshape(len(values), -1).all(1)
    if ok is not None and not bad.any():
        bad = ~ok(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{path}: {kind} id {records[i]['id']}: {field} must be {rule}, got {values[i]}")
    return arr


def _check_category(path, cat):
    """A category's optional keypoint fields: keypoints (distinct names), flip_pairs, sigmas."""
    where = f"category id {cat['id']}"
    names = cat.get("keypoints") or []
    _check(isinstance(names, list) and all(isinstance(n, str) for n in names)
           and len(set(names)) == len(names), path,
           f"{where}: keypoints must be a list of distinct joint names, got {names}")
    pairs, K = cat.get("flip_pairs"), len(names)
    if pairs is not None:
        ok = isinstance(pairs, list) and all(
            isinstance(p, list) and len(p) == 2 and all(type(i) is int and 0 <= i < K for i in p)
            for p in pairs)
        flat = [i for p in pairs for i in p] if ok else []
        _check(ok and len(set(flat)) == len(flat), path,
               f"{where}: flip_pairs must be 0-based [i, j] pairs of distinct joints in "
               f"0..{K - 1}, each joint in one pair at most, got {pairs}")
    if "sigmas" in cat:
        _numbers(path, "category", [cat], "sigmas", K, f"{K} finite numbers > 0, one per keypoint "
                 f"name (pycocotools' scale: COCO's nose is 0.026)", lambda s: (s > 0).all(1))


def load_coco(ann_file):
    """Read and validate a COCO annotation JSON -> pycocotools COCO.

    Required: images (id, file_name, width, height), categories (id, name), annotations
    (id, image_id, category_id, bbox of 4 numbers) pointing to known images and categories,
    keypoints of length 3K where the category names K keypoints (required on non-crowd
    annotations of such a category). Optional category fields: flip_pairs, 0-based [i, j]
    pairs of mirror joints (see flip_index); sigmas, K OKS sigmas > 0 in pycocotools'
    convention (as COCO-format tools such as MMPose write them). Every number must be
    finite (a NaN keypoint or area makes COCOeval count a match): image width, height > 0;
    bbox [x, y, w, h] with w, h >= 0; area >= 0; keypoints; num_keypoints >= 0; iscrowd 0
    or 1. Filled in when absent, as COCOeval needs them: iscrowd 0, area w * h,
    num_keypoints = number of joints with v > 0. Errors are ValueErrors naming the file,
    the record and the field.
    """
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    _check(isinstance(data, dict), path, "top level must be a JSON object")
    for key in ("images", "annotations", "categories"):
        _check(isinstance(data.get(key), list), path, f"missing list '{key}'")
    for kind, keys in (("images", ("id", "file_name", "width", "height")),
                       ("categories", ("id", "name")),
                       ("annotations", ("id", "image_id", "category_id", "bbox"))):
        for i, rec in enumerate(data[kind]):
            missing = [k for k in keys if not isinstance(rec, dict) or k not in rec]
            _check(not missing, path, f"{kind}[{i}] is missing {missing}")
    images = {im["id"] for im in data["images"]}
    _check(len(images) == len(data["images"]), path, "duplicate image ids")
    for field in ("width", "height"):
        _numbers(path, "image", data["images"], field, rule="a finite number > 0",
                 ok=lambda v: v > 0)
    for c in data["categories"]:
        _check_category(path, c)
    num_kpts = {c["id"]: len(c.get("keypoints") or []) for c in data["categories"]}
    _check(len(num_kpts) == len(data["categories"]), path, "duplicate category ids")
    anns = data["annotations"]
    with_kpts = {c: [] for c, K in num_kpts.items() if K}     # category id -> annotations
    boxes = _numbers(path, "annotation", anns, "bbox", 4,
                     "4 numbers [x, y, w, h], finite, w, h >= 0",
                     lambda b: (b[:, 2:] >= 0).all(1))                       # (n, 4)
    for a in anns:
        where = f"annotation id {a['id']}"
        _check(a["image_id"] in images, path, f"{where} points to unknown image id {a['image_id']}")
        _check(a["category_id"] in num_kpts, path,
               f"{where} points to unknown category id {a['category_id']}")
        K = num_kpts[a["category_id"]]
        if K and (a.get("keypoints") is not None or not a.get("iscrowd", 0)):
            kp = a.get("keypoints")
            _check(isinstance(kp, list) and len(kp) == 3 * K, path,
                   f"{where}: keypoints must have 3 * {K} numbers (the category's keypoint "
                   f"names), got {len(kp) if isinstance(kp, list) else kp}")
            with_kpts[a["category_id"]].append(a)
    for field, rule, ok in (("area", "a finite number >= 0", lambda v: v >= 0),
                            ("num_keypoints", "a finite number >= 0", lambda v: v >= 0),
                            ("iscrowd", "0 or 1", lambda v: (v == 0) | (v == 1))):
        _numbers(path, "annotation", [a for a in anns if field in a], field, rule=rule, ok=ok)
    for cat_id, group in with_kpts.items():
        kps = _numbers(path, "annotation", group, "keypoints", 3 * num_kpts[cat_id],
                       "finite numbers [x1, y1, v1, ...]")                   # (n, 3K)
        for i in [i for i, a in enumerate(group) if "num_keypoints" not in a]:
            group[i]["num_keypoints"] = int((kps[i, 2::3] > 0).sum())
    for i in [i for i, a in enumerate(anns) if "area" not in a]:
        anns[i]["area"] = float(boxes[i, 2] * boxes[i, 3])
    for a in anns:
        a.setdefault("iscrowd", 0)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


# A joint name's words: split at any non-alphanumeric character and at camelCase steps
# ("leftHand", "LHand" -> "L", "Hand"); digits stay with their letters, so "L1" (a lumbar
# vertebra) is one word, not a left joint.
_WORDS = re.compile(r"[A-Z]+(?![a-z0-9])|[A-Z]?[a-z0-9]+")
_SIDE_WORDS = {"left": "left", "l": "left", "right": "right", "r": "right"}


def _words(name):
    return [w.lower() for w in _WORDS.findall(name)]


def joint_side(name):
    """The side a joint name says, "left" | "right" | None: a word (see _WORDS) that is
    left / l or right / r, any case: left_hand, hand_L, leftHand, LHand, "Hand-Right".
    None for no side word or both. The one rule for every module that asks."""
    sides = {_SIDE_WORDS[w] for w in _words(name) if w in _SIDE_WORDS}
    return sides.pop() if len(sides) == 1 else None


def joint_part(name):
    """The body part a joint name says without its side: left_eye, EyeL, "eye right" -> "eye"."""
    return "_".join(w for w in _words(name) if w not in _SIDE_WORDS)


def flip_index(keypoint_names, flip_pairs=None):
    """Each joint's mirror joint: a list of K ints, an involution (flip twice = identity).

    flip_pairs (a category's "flip_pairs" field: 0-based [i, j] pairs) when given.
    Otherwise from the names: a left and a right joint (joint_side) pair when their other
    words agree, so left_hand, hand_l, LHand and "Hand Left" all mirror right_hand. Joints
    without a pair map to themselves, with a warning listing those whose names look sided
    (joint_side, or "left" / "right" inside a word, e.g. lefthand) but found no mirror.
    """
    index = list(range(len(keypoint_names)))
    if flip_pairs is not None:
        for i, j in flip_pairs:
            index[i], index[j] = j, i
        return index
    groups = {}                                   # the name without its side -> side -> joints
    for i, name in enumerate(keypoint_names):
        side = joint_side(name)
        if side:
            rest = tuple(w for w in _words(name) if w not in _SIDE_WORDS)
            groups.setdefault(rest, {}).setdefault(side, []).append(i)
    for g in groups.values():
        if len(g.get("left", ())) == 1 == len(g.get("right", ())):   # two left_hands: ambiguous
            (i,), (j,) = g["left"], g["right"]
            index[i], index[j] = j, i
    unpaired = [n for i, n in enumerate(keypoint_names) if index[i] == i
                and (joint_side(n) or "left" in n.lower() or "right" in n.lower())]
    if unpaired:
        warnings.warn(f"keypoint names that look left/right have no mirror joint: {unpaired}; "
                      f"a flip leaves them in place. Name both sides alike (left_x / right_x) "
                      f"or give the category 'flip_pairs' (0-based [i, j] pairs)")
    return index
