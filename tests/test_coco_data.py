"""Tests for coco_data.py and coco_eval.py: target rendering against hand-derived values,
the ground truth -> targets -> decode -> COCOeval round trip (synthetic and real COCO),
the dataset's flip, and the random streams (bad inputs: test_bad_data.py; the geometry and
colour transforms: test_transforms.py)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import annotations as an
import coco_data as cd
import transforms as tf
import coco_eval as ce
import inference
import synthetic_coco
import mdn_dense as md
from decode import decode

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "coco_sample"
COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
              "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
              "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]
PERSON = dict(id=1, name="person", keypoints=COCO_NAMES)


# ----------------------------------------------------------------------------- helpers
def write_coco(root, images, annotations, categories, pixels=None):
    """Write a COCO JSON and one image per record (random noise unless `pixels` maps a
    file name to a PIL image). Returns (ann_file, image_dir)."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for im in images:
        img = (pixels or {}).get(im["file_name"]) or Image.fromarray(
            rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8))
        img.save(root / "images" / im["file_name"])
    for i, a in enumerate(annotations):
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(dict(info={}, images=images, annotations=annotations,
                                        categories=categories)))
    return ann_file, root / "images"


def person(x, y, w, h, joints=None):
    """A person box with keypoints: joints maps a joint name to (x, y) (v = 2)."""
    kps = [0] * 51
    for name, (px, py) in (joints or {}).items():
        kps[3 * COCO_NAMES.index(name):3 * COCO_NAMES.index(name) + 3] = [px, py, 2]
    return dict(image_id=1, category_id=1, bbox=[x, y, w, h], keypoints=kps,
                num_keypoints=len(joints or {}))


def perfect_outputs(s, task, M):
    """Raw head outputs a perfect network would give for sample s (batch of one): hm logits
    +10 at the centres (the exact 1s of the target) and -10 elsewhere, reg / wh / hps
    targets scattered at the centre cells, all in mixture component 0 whose logit wins."""
    hm = s["hm"][None]
    H, W = hm.shape[-2:]
    valid = s["mask"].bool()

    def scatter(values, channels):
        t = torch.zeros(1, channels, H * W)
        t[0, :values.shape[1], s["ind"][valid]] = values[valid].T
        return t.view(1, channels, H, W)

    out = {"hm": torch.where(hm == 1, 10.0, -10.0), "reg": scatter(s["reg"], 2)}
    key = md.REGRESSION_KEY[task]
    out[key] = scatter(s[key], M * s[key].shape[1])                  # (1, M*D, H, W)
    if task == "pose":
        out["wh"] = scatter(s["wh"], 2)
    out["mdn_logits"] = torch.full((1, M, H, W), -10.0)
    out["mdn_logits"][:, 0] = 10.0
    out["mdn_sigma"] = torch.ones(1, 2 * M, H, W)
    return out


def round_trip(ds, M=3):
    """Every image through targets -> perfect outputs -> decode -> COCO results -> COCOeval."""
    results = []
    for i in range(len(ds)):
        s = ds[i]
        det = decode(perfect_outputs(s, ds.task, M), k=100)
        results += inference.to_coco_results(det, s["out2img"][None], [s["image_id"]], ds.cat_ids, ds.task)
    return results


# ----------------------------------------------------------------------------- targets
def iou_cases(h, w, r):
    """CornerNet's three cases at corner error r: one corner in and one out, prediction
    inside the box, prediction around the box."""
    return ((h - r) * (w - r) / (2 * h * w - (h - r) * (w - r)),
            (h - 2 * r) * (w - 2 * r) / (h * w), h * w / ((h + 2 * r) * (w + 2 * r)))


@pytest.mark.parametrize("h, w", [(10, 10), (3, 40), (57.5, 21)])
def test_gaussian_radius_exact_roots_and_quirk(h, w):
    r = cd.gaussian_radius(h, w, 0.7, cornernet_quirk=False)
    assert min(iou_cases(h, w, r)) == pytest.approx(0.7, abs=1e-9)       # the binding case
    roots = []
    for case, hi in enumerate([min(h, w), min(h, w) / 2, 10 * (h + w)]):
        lo = 0.0
        for _ in range(200):                                           # bisection on IoU = 0.7
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if iou_cases(h, w, mid)[case] > 0.7 else (lo, mid)
        roots.append(lo)
    assert r == pytest.approx(min(roots), rel=1e-9)
    # the official (quirky) radius is always the third case's root times 2a = 4 * 0.7
    assert cd.gaussian_radius(h, w) == pytest.approx(2.8 * roots[2], rel=1e-9)


def test_draw_gaussian_peak_sigma_clip_and_max():
    hm = np.zeros((9, 12), np.float32)
    cd.draw_gaussian(hm, (5, 4), 3)
    sigma = 7 / 6
    assert hm[4, 5] == 1 and hm.max() == 1
    assert hm[4, 6] == pytest.approx(math.exp(-1 / (2 * sigma ** 2)))
    assert hm[5, 6] == pytest.approx(math.exp(-2 / (2 * sigma ** 2)))
    assert hm[4, 9] == 0 and hm[0, 5] == 0 and hm[1, 2] > 0             # radius 3 window
    assert np.allclose(hm[4, 2:9], hm[4, 2:9][::-1]) and np.allclose(hm[1:8, 5], hm[1:8, 5][::-1])
    before = hm.copy()
    cd.draw_gaussian(hm, (0, 8), 3)                                    # clipped at the corner
    assert hm[8, 0] == 1 and np.array_equal(np.maximum(before, hm), hm)
    assert hm[5, 2] == pytest.approx(math.exp(-10 / (2 * sigma ** 2)))  # max of the two, not sum
    assert hm[8, 1] == pytest.approx(math.exp(-1 / (2 * sigma ** 2)))


def test_render_targets_det_clip_skip_and_cap():
    boxes = np.array([[2.2, 3.0, 10.6, 7.0],       # ordinary
                      [5.0, 5.0, 5.0, 9.0],        # zero width: skipped
                      [-4.0, 12.0, 6.0, 20.0],     # clipped to x1 = 0, y2 = 16
                      [1.0, 1.0, 3.0, 3.0]])       # over max_objs = 2
    t = cd.render_targets(boxes, [0, 1, 1, 0], 2, 16, 2)
    assert t["hm"].shape == (2, 16, 16) and t["ind"].dtype == np.int64
    assert t["mask"].tolist() == [1, 1]
    assert t["ind"].tolist() == [5 * 16 + 6, 14 * 16 + 3]            # floor of the centres
    assert np.allclose(t["reg"], [[0.4, 0.0], [0.0, 0.0]])
    assert np.allclose(t["wh"], [[8.4, 4.0], [6.0, 4.0]])
    assert t["hm"][0, 5, 6] == 1 and t["hm"][1, 14, 3] == 1 and (t["hm"] == 1).sum() == 2


def test_render_targets_pose_offsets_masks_and_zero_keypoints():
    kps = np.zeros((2, 3, 3))
    kps[0] = [[4.5, 2.25, 2], [33.0, 5.0, 2], [6.0, 6.0, 0]]         # visible, outside, unlabelled
    t = cd.render_targets([[2, 2, 10, 12], [20, 20, 28, 30]], [0, 0], 1, 16 * 2, 4, kps)
    assert t["hps"].shape == (4, 6) and t["hm_hp"].shape == (3, 32, 32) and t["hp_ind"].shape == (12,)
    assert t["mask"].tolist() == [1, 1, 0, 0]                          # zero-keypoint person stays
    assert np.allclose(t["hps"][0], [4.5 - 6, 2.25 - 7, 0, 0, 0, 0])
    assert t["hps_mask"][0].tolist() == [1, 1, 0, 0, 0, 0] and t["hps_mask"][1].sum() == 0
    assert t["hp_mask"].tolist() == [1] + [0] * 11
    assert t["hp_ind"][0] == 2 * 32 + 4 and np.allclose(t["hp_offset"][0], [0.5, 0.25])
    assert t["hm_hp"][0, 2, 4] == 1 and t["hm_hp"][1:].sum() == 0
    assert t["hm"][0, 25, 24] == 1                                     # second person's peak


# ----------------------------------------------------------------------------- flip pairs
def test_category_flip_pairs_reach_the_dataset(tmp_path):
    cat = dict(id=1, name="hand", keypoints=["wrist", "thumb", "pinky", "palm"], flip_pairs=[[1, 2]])
    ann = dict(image_id=1, category_id=1, bbox=[2, 2, 20, 20], keypoints=[5, 5, 2] * 4)
    ann_file, image_dir = write_coco(tmp_path, [dict(id=1, file_name="h.png", width=32, height=32)],
                                     [ann], [cat])
    assert cd.CocoDataset(ann_file, image_dir, "pose").flip_idx == [0, 2, 1, 3]


# ----------------------------------------------------------------------------- round trips
def tiny_dataset(tmp_path):
    images = [dict(id=7, file_name="a.png", width=160, height=120),
              dict(id=9, file_name="b.jpg", width=90, height=200)]
    cats = [dict(id=3, name="cat"), dict(id=5, name="dog"), PERSON]
    anns = [dict(image_id=7, category_id=3, bbox=[10.5, 12.25, 40, 30]),
            dict(image_id=7, category_id=5, bbox=[90.2, 60.7, 55.1, 50.3]),
            dict(image_id=7, category_id=3, bbox=[100, 5, 12, 9]),
            dict(image_id=9, category_id=5, bbox=[3.3, 150.1, 20, 40.2]),
            dict(person(20.3, 30.1, 50, 110, {"nose": (45.2, 40.7), "left_wrist": (62.9, 90.1),
                                               "right_ankle": (30.4, 138.8)}), image_id=9),
            dict(person(5, 5, 40, 90, {"left_eye": (20.1, 11.3)}), image_id=7)]
    return write_coco(tmp_path, images, anns, cats)


@pytest.mark.parametrize("task", ["det", "pose"])
def test_round_trip_tiny_json(tmp_path, task):
    ann_file, image_dir = tiny_dataset(tmp_path)
    ds = cd.CocoDataset(ann_file, image_dir, task, input_size=256)
    stats = ce.coco_evaluate(ds.coco, round_trip(ds), task)
    assert stats[0] >= 0.99, stats


@pytest.mark.parametrize("task", ["shapes", "figures"])
def test_round_trip_synthetic_coco(tmp_path, task):
    ann_file, image_dir = synthetic_coco.make_dataset(tmp_path, task, "val", 12, image_size=128)
    # 512 input (stride 1 in these 128 px images): at 128 input two nested squares of seed 0
    # share a 4 px centre cell, and a cell holds one object per class (a CenterNet limit).
    ds = cd.CocoDataset(ann_file, image_dir, "det" if task == "shapes" else "pose", input_size=512)
    stats = ce.coco_evaluate(ds.coco, round_trip(ds), ds.task)
    print(task, "AP", stats[0])
    assert stats[0] >= 0.99, stats


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real COCO sample not found at {SAMPLE}")
@pytest.mark.parametrize("task, ann", [("det", "instances_sample.json"),
                                       ("pose", "person_keypoints_sample.json")])
def test_round_trip_real_coco_sample(task, ann):
    ds = cd.CocoDataset(SAMPLE / "annotations" / ann, SAMPLE / "images", task, input_size=512)
    results = round_trip(ds)
    stats = ce.coco_evaluate(ds.coco, results, task)
    box_stats = ce.coco_evaluate(ds.coco, results, task, iou_type="bbox")
    print(f"real sample {task}: AP {stats[0]:.4f}, box AP {box_stats[0]:.4f}")
    # Not exactly 1 for det: one baseball glove shares its centre cell with a person
    # (image 357), and one cell holds one (reg, wh).
    assert stats[0] >= 0.99 and box_stats[0] >= 0.99, (stats, box_stats)


# ----------------------------------------------------------------------------- dataset cases
def test_crowd_zero_keypoint_and_empty_images(tmp_path):
    images = [dict(id=1, file_name="p.png", width=128, height=128),
              dict(id=2, file_name="empty.png", width=128, height=64),
              dict(id=3, file_name="crowd_only.png", width=64, height=64)]
    anns = [person(10, 10, 40, 80, {"nose": (30.5, 20.5)}), person(70, 20, 30, 60),
            dict(person(0, 60, 128, 60), iscrowd=1),
            dict(person(0, 0, 60, 60), image_id=3, iscrowd=1)]
    ann_file, image_dir = write_coco(tmp_path, images, anns, [PERSON])
    ds = cd.CocoDataset(ann_file, image_dir, "pose", input_size=128)
    assert ds.image_ids == [1, 2, 3]
    assert [a["id"] for a in ds.annotations(1)] == [1, 2] and ds.annotations(3) == []  # no crowd
    s = ds[0]
    assert s["mask"].sum() == 2 and (s["hm"] == 1).sum() == 2          # crowd skipped
    assert s["hps_mask"][0].sum() == 2 and s["hps_mask"][1].sum() == 0  # zero keypoints
    for i in (1, 2):
        e = ds[i]
        assert e["mask"].sum() == 0 and e["hm"].sum() == 0 and e["hm_hp"].sum() == 0
        assert torch.isfinite(e["input"]).all() and e["input"].shape == (3, 128, 128)
    train = cd.CocoDataset(ann_file, image_dir, "pose", train=True, input_size=128)
    assert train.image_ids == [1]                                      # needs a non-crowd person
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["hp_ind"].shape == (2, 32 * 17) and batch["image_id"].tolist() == [1, 2]
    assert batch["out2img"].shape == (2, 2, 3)


def test_flip_keeps_left_wrist_left(tmp_path):
    # a person facing the camera: their left wrist is on the image right
    images = [dict(id=1, file_name="p.png", width=128, height=128)]
    joints = {"left_wrist": (90.3, 70.6), "right_wrist": (41.7, 66.2), "nose": (64.9, 20.2)}
    ann_file, image_dir = write_coco(tmp_path, images, [person(30.2, 10.1, 70.4, 100.3, joints)],
                                     [PERSON])
    val = cd.CocoDataset(ann_file, image_dir, "pose", input_size=128)[0]
    flipped = cd.CocoDataset(ann_file, image_dir, "pose", train=True, input_size=128,
                             scales=(1.0,), random_center=False, flip_prob=1.0, color_aug=False)[0]
    LW, RW = COCO_NAMES.index("left_wrist"), COCO_NAMES.index("right_wrist")
    assert torch.equal(flipped["input"], val["input"].flip(-1))       # the image is mirrored
    assert torch.equal(flipped["hm"], val["hm"].flip(-1))
    for s in (val, flipped):                                          # left wrist: right of centre
        assert s["hps"][0, 2 * LW] > 0 and s["hps"][0, 2 * RW] < 0
    assert torch.equal(flipped["hm_hp"][LW], val["hm_hp"][RW].flip(-1))
    W = 32
    cx = val["ind"][0] % W
    fcx = flipped["ind"][0] % W
    rw_x = cx + val["hps"][0, 2 * RW]                                  # right wrist, output px
    assert flipped["hps"][0, 2 * LW] == pytest.approx(float(W - rw_x - fcx), abs=1e-5)
    # the mirror rule a flip test must use: cell cx -> W - 1 - cx, x offset o -> 1 - o
    assert fcx == W - 1 - cx
    assert flipped["hps"][0, 2 * LW] == pytest.approx(1 - float(val["hps"][0, 2 * RW]), abs=1e-5)
    assert flipped["hps"][0, 2 * LW + 1] == pytest.approx(float(val["hps"][0, 2 * RW + 1]), abs=1e-5)
    # out2img undoes the mirror: the flipped sample's left wrist is the original right wrist
    lw = torch.stack([fcx + flipped["hps"][0, 2 * LW],
                      flipped["ind"][0] // W + flipped["hps"][0, 2 * LW + 1]]).double().numpy()
    assert np.allclose(tf.apply_affine(lw, flipped["out2img"].numpy()), joints["right_wrist"],
                       atol=1e-4)



def test_oks_sigmas_from_the_category_coco_default_or_none(tmp_path):
    image = [dict(id=1, file_name="p.png", width=32, height=32)]
    hand = dict(id=1, name="hand", keypoints=["wrist", "tip"])
    ann = dict(image_id=1, category_id=1, bbox=[2, 2, 20, 20], keypoints=[5, 5, 2] * 2)
    cases = [(PERSON, None, an.COCO_PERSON_SIGMAS),                # COCO's names: pycocotools' sigmas
             (dict(PERSON, sigmas=[0.05] * 17), None, [0.05] * 17), (hand, None, None),
             (dict(hand, sigmas=[0.1, 0.2]), None, [0.1, 0.2]), (dict(hand, sigmas=[0.1, 0.2]), [1, 2], [1, 2])]
    for i, (cat, given, expected) in enumerate(cases):
        a = dict(ann, keypoints=[5, 5, 2] * len(cat["keypoints"]))
        ann_file, image_dir = write_coco(tmp_path / str(i), image, [a], [cat])
        s = cd.CocoDataset(ann_file, image_dir, "pose", oks_sigmas=given).oks_sigmas
        assert (s is None) if expected is None else (s.dtype == np.float64 and np.allclose(s, expected)), i
    assert np.allclose(an.COCO_PERSON_SIGMAS, an.COCO_PERSON_SIGMAS) and an.COCO_PERSON_KEYPOINTS == COCO_NAMES
    assert cd.CocoDataset(ann_file, image_dir, "det").oks_sigmas is None

# ----------------------------------------------------------------------------- random streams
def twin_dataset(tmp_path, **kw):
    """Two images with identical pixels and annotations: only the random stream differs."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    images = [dict(id=i, file_name=f"{i}.png", width=64, height=48) for i in (1, 2)]
    anns = [dict(image_id=i, category_id=1, bbox=[10.5, 8.25, 30, 20]) for i in (1, 2)]
    ann_file, image_dir = write_coco(tmp_path, images, anns, [dict(id=1, name="x")],
                                     {"1.png": img, "2.png": img})
    return cd.CocoDataset(ann_file, image_dir, "det", train=True, input_size=64, **kw)


def test_training_samples_are_deterministic_for_a_seed(tmp_path):
    ds = twin_dataset(tmp_path)
    torch.manual_seed(0)
    a = [ds[0] for _ in range(4)]
    torch.manual_seed(0)
    b = [ds[0] for _ in range(4)]
    for x, y in zip(a, b):
        assert all(torch.equal(x[k], y[k]) for k in x if torch.is_tensor(x[k]))
    assert not all(torch.equal(a[0]["input"], x["input"]) for x in a[1:])  # draws do change


def test_workers_get_different_streams(tmp_path):
    ds = twin_dataset(tmp_path)

    def first_items(seed):
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2,
                                             generator=torch.Generator().manual_seed(seed))
        return [b["input"] for b in loader]                         # item 0 -> worker 0, 1 -> 1

    w0, w1 = first_items(0)
    assert not torch.equal(w0, w1)          # same pixels, same targets, different augmentations
    again = first_items(0)
    assert torch.equal(w0, again[0]) and torch.equal(w1, again[1])
    assert not torch.equal(w0, first_items(1)[0])                    # a new seed, a new stream


# ----------------------------------------------------------------------------- coco_eval
def test_to_coco_results_maps_back_and_evaluate_edge_cases(tmp_path):
    ann_file, image_dir = tiny_dataset(tmp_path)
    ds = cd.CocoDataset(ann_file, image_dir, "pose", input_size=128)
    out2img = torch.from_numpy(tf.invert_affine(tf.affine_matrix((40, 30), 100, 32, flip=True)))
    det = dict(scores=torch.tensor([[0.123456789]]), classes=torch.zeros(1, 1, dtype=torch.long),
               boxes=torch.tensor([[[4.0, 2.0, 12.0, 10.0]]]), keypoints=torch.full((1, 1, 17, 2), 8.0))
    (r,) = inference.to_coco_results(det, out2img[None], [9], ds.cat_ids, "pose")
    # by hand: x = 40 + 3.125 * (16 - x_out) (mirrored; corners swap), y = 30 + 3.125 * (y_out - 16)
    assert r["image_id"] == 9 and r["category_id"] == 1 and r["score"] == pytest.approx(0.123456789)
    assert np.allclose(r["bbox"], [40 + 3.125 * 4, 30 - 3.125 * 14, 25.0, 25.0])
    assert np.allclose(r["keypoints"][:3], [40 + 3.125 * 8, 30 - 3.125 * 8, 1]) and len(r["keypoints"]) == 51
    assert np.array_equal(ce.coco_evaluate(ds.coco, [], "pose"), np.zeros(10))
    assert np.array_equal(ce.coco_evaluate(ds.coco, [], "det"), np.zeros(12))
    with pytest.raises(ValueError, match="404"):
        ce.coco_evaluate(ds.coco, [dict(r, image_id=404)], "pose")
    results = [r]
    ce.coco_evaluate(ds.coco, results, "pose")
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score", "keypoints"}


def test_run_split_rebuilds_a_runs_split_with_its_own_sigmas(tmp_path):
    # the one function that rebuilds a run's data from its checkpoint's train config: the config's
    # OKS sigmas win over the COCO default, train / val are cut to max_images, test is not
    ann, images = synthetic_coco.make_dataset(tmp_path, "figures", "val", 6)
    sigmas = [0.05 + 0.01 * j for j in range(17)]
    cfg = dict(ann=str(ann), images=str(images), val_ann=str(ann), val_images=str(images), test_ann=str(ann),
               test_images=str(images), input_size=64, max_images=4, oks_sigmas=sigmas)
    for split, n in (("train", 4), ("val", 4), ("test", 6)):
        ds = cd.run_split(cfg, "pose", split)
        assert len(ds.image_ids) == n and ds.input_size == 64 and not ds.train
        assert ds.oks_sigmas.tolist() == pytest.approx(sigmas)
    assert cd.run_split(dict(cfg, test_ann=""), "pose", "test") is None
    assert cd.run_split(cfg, "pose", "val", input_size=96).input_size == 96
