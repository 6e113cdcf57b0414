"""Tests for synthetic_coco.py: determinism, COCO validity, the cache, the latent modes, evaluability.

Datasets here are tiny (4..100 images of 128x128) and go into pytest's tmp_path.
"""
import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import annotations as an
import synthetic_coco as sc

TASKS = ["shapes", "figures"]


def _load(ann_file):
    return json.loads(Path(ann_file).read_text())


def _coco(ann_file):
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(ann_file)


def _pixel(image_dir, file_name, xy):
    rgb = np.asarray(Image.open(Path(image_dir) / file_name).convert("RGB"))
    return rgb[int(xy[1]), int(xy[0])].astype(int)


def _joint(ann, k):
    return np.array(ann["keypoints"][3 * k:3 * k + 3])


def _forearm_colours(data, image_dir):
    """[(is_left_forearm, (r, g, b))] at the midpoint of every figure's two forearms."""
    files = {img["id"]: img["file_name"] for img in data["images"]}
    return [(left, _pixel(image_dir, files[a["image_id"]], (_joint(a, elbow)[:2] + _joint(a, wrist)[:2]) / 2))
            for a in data["annotations"] for elbow, wrist, left in ((7, 9, True), (8, 10, False))]


def test_scale_bin_uses_coco_thresholds():
    assert [sc.scale_bin(a) for a in (1, 1023, 1024, 9215, 9216, 20000)] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_for_a_seed_and_different_for_another(tmp_path, task):
    ann_a, img_a = sc.make_dataset(tmp_path / "a", task, "train", 6, seed=3)
    ann_b, img_b = sc.make_dataset(tmp_path / "b", task, "train", 6, seed=3)
    assert Path(ann_a).read_bytes() == Path(ann_b).read_bytes()
    for f in sorted(Path(img_a).iterdir()):
        assert f.read_bytes() == (Path(img_b) / f.name).read_bytes(), f.name
    ann_c, _ = sc.make_dataset(tmp_path / "a", task, "train", 6, seed=4)
    ann_val, _ = sc.make_dataset(tmp_path / "a", task, "val", 6, seed=3)
    for other in (ann_c, ann_val):  # another seed or another split gives other annotations
        assert _load(other)["annotations"] != _load(ann_a)["annotations"]
    # each image has its own seed: a shorter dataset is a prefix of a longer one
    _, img_short = sc.make_dataset(tmp_path / "a", task, "train", 3, seed=3)
    for f in sorted(Path(img_short).iterdir()):
        assert f.read_bytes() == (Path(img_a) / f.name).read_bytes()


@pytest.mark.parametrize("task", TASKS)
def test_json_is_complete_coco(tmp_path, task):
    ann_file, image_dir = sc.make_dataset(tmp_path, task, "val", 10)
    data = _load(ann_file)
    assert data["info"] is not None and set(data) >= {"info", "images", "annotations", "categories"}
    coco = _coco(ann_file)
    assert len(coco.getImgIds()) == 10 and len(coco.getAnnIds()) >= 10
    for img in data["images"]:
        assert set(img) >= {"id", "file_name", "width", "height"}
        assert Image.open(Path(image_dir) / img["file_name"]).size == (img["width"], img["height"])
    ids = [a["id"] for a in data["annotations"]]
    assert len(set(ids)) == len(ids) and min(ids) >= 1  # COCOeval treats id 0 as "unmatched"
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        assert a["iscrowd"] == 0 and w > 0 and h > 0 and a["area"] == w * h > 0
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
        assert a["scale_bin"] == sc.scale_bin(a["area"])
        if task == "figures":
            kps = np.array(a["keypoints"]).reshape(17, 3)
            assert len(a["keypoints"]) == 51 and set(kps[:, 2]) <= {0, 1, 2}
            assert a["num_keypoints"] == int((kps[:, 2] > 0).sum())
            assert (kps[kps[:, 2] == 0, :2] == 0).all()  # unlabelled joints are (0, 0), as in COCO
            vis = kps[kps[:, 2] > 0]
            assert (vis[:, 0] >= x).all() and (vis[:, 0] <= x + w).all()  # joints lie in the drawn box
            assert (vis[:, 1] >= y).all() and (vis[:, 1] <= y + h).all()
            assert a["viewpoint"] in ("front", "back") and isinstance(a["cues_visible"], bool)
    if task == "figures":
        (cat,) = data["categories"]
        assert cat["keypoints"] == an.COCO_PERSON_KEYPOINTS and cat["skeleton"] == an.COCO_PERSON_SKELETON
        assert cat["keypoints"][0] == "nose" and cat["keypoints"][16] == "right_ankle"
    else:
        assert [c["name"] for c in data["categories"]] == sc.SHAPE_NAMES


def test_cache_reuses_complete_folders_and_regenerates_incomplete_ones(tmp_path, monkeypatch):
    ann_file, image_dir = sc.make_dataset(tmp_path, "shapes", "train", 4)

    def must_not_draw(*args):
        raise RuntimeError("regenerated")

    monkeypatch.setitem(sc.RENDERERS, "shapes", must_not_draw)
    assert sc.make_dataset(tmp_path, "shapes", "train", 4) == (ann_file, image_dir)
    # an alias and a default passed explicitly name the same dataset
    assert sc.make_dataset(tmp_path, "det", "train", 4, objects=(1, 6)) == (ann_file, image_dir)
    with pytest.raises(RuntimeError):  # other parameters: another folder, so drawing starts
        sc.make_dataset(tmp_path, "shapes", "train", 4, clutter=0)
    Path(ann_file).unlink()  # an interrupted generation leaves no JSON: the folder is not trusted
    with pytest.raises(RuntimeError):
        sc.make_dataset(tmp_path, "shapes", "train", 4)
    with pytest.raises(TypeError):
        sc.make_dataset(tmp_path, "shapes", "train", 4, cue_free_fraction=0.5)  # figures-only


def test_back_views_mirror_left_right_and_hide_the_face(tmp_path):
    ann_file, image_dir = sc.make_dataset(tmp_path, "figures", "train", 20, truncate_fraction=0.0)
    anns = _load(ann_file)["annotations"]
    assert {a["viewpoint"] for a in anns} == {"front", "back"}
    checked = 0
    for a in anns:
        ls, rs = _joint(a, 5), _joint(a, 6)
        if a["viewpoint"] == "back":
            assert all(_joint(a, k)[2] == 0 for k in (0, 1, 2))  # nose and eyes hidden
        if ls[2] and rs[2]:  # figures are upright, so the shoulders' order in x tells the viewpoint
            assert (ls[0] > rs[0]) == (a["viewpoint"] == "front")
            checked += 1
    assert checked >= 15


def test_cues_are_drawn_limb_colours_and_face(tmp_path):
    # one person per image, so nothing else covers the limbs; left limbs warm (red > blue), right cool
    ann_file, image_dir = sc.make_dataset(tmp_path, "figures", "train", 16, people=(1, 1),
                                          truncate_fraction=0.0, cue_free_fraction=0.0)
    data = _load(ann_file)
    files = {img["id"]: img["file_name"] for img in data["images"]}
    votes = [(r > b) == warm for warm, (r, g, b) in _forearm_colours(data, image_dir)]
    assert np.mean(votes) >= 0.8
    # front views show a face: the eyes are dark dots on a light head
    eyes = [_pixel(image_dir, files[a["image_id"]], _joint(a, eye)[:2]).sum() < 300
            for a in data["annotations"] if a["viewpoint"] == "front" for eye in (1, 2)]
    assert len(eyes) >= 8 and np.mean(eyes) >= 0.8


def test_cue_free_fraction_controls_the_cues(tmp_path):
    for fraction, expected in ((0.0, True), (1.0, False)):
        ann_file, _ = sc.make_dataset(tmp_path, "figures", "train", 8, cue_free_fraction=fraction)
        assert {a["cues_visible"] for a in _load(ann_file)["annotations"]} == {expected}
    ann_file, image_dir = sc.make_dataset(tmp_path, "figures", "train", 8, people=(1, 1),
                                          truncate_fraction=0.0, cue_free_fraction=1.0)
    data = _load(ann_file)
    files = {img["id"]: img["file_name"] for img in data["images"]}
    # both sides in the same (green) colour family
    greens = [g > r and g > b for _, (r, g, b) in _forearm_colours(data, image_dir)]
    assert np.mean(greens) >= 0.8
    faceless = [_pixel(image_dir, files[a["image_id"]], _joint(a, eye)[:2]).sum() > 450
                for a in data["annotations"] if a["viewpoint"] == "front" for eye in (1, 2)]
    assert len(faceless) >= 4 and np.mean(faceless) >= 0.8  # no eyes drawn: skin where they would be


def test_shape_scale_is_independent_of_category_and_covers_all_bins(tmp_path):
    anns = _load(sc.make_dataset(tmp_path, "shapes", "train", 100)[0])["annotations"]
    assert len(anns) >= 250
    cats = np.array([a["category_id"] for a in anns])
    log_area = np.log([a["area"] for a in anns])
    assert abs(np.corrcoef(cats, log_area)[0, 1]) < 0.2
    # correlation ratio: share of log-area variance explained by category (about 4/n if independent)
    means = np.array([log_area[cats == c].mean() for c in cats])
    assert ((means - log_area.mean()) ** 2).mean() / log_area.var() < 0.05
    assert {a["scale_bin"] for a in anns} == {0, 1, 2}
    assert set(cats) == set(range(1, len(sc.SHAPE_NAMES) + 1))


def _evaluate(ann_file, iou_type):
    """COCOeval AP of the ground truth itself used as detections."""
    gt = _coco(ann_file)
    # loadRes edits the dicts it gets: pass copies
    dets = [dict(copy.deepcopy(a), score=1.0) for a in gt.dataset["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(gt, gt.loadRes(dets), iou_type)
        E.evaluate(), E.accumulate(), E.summarize()
    return E.stats[0]


@pytest.mark.parametrize("task, iou_type",
                         [("shapes", "bbox"), ("figures", "bbox"), ("figures", "keypoints")])
def test_ground_truth_as_detections_scores_ap_one(tmp_path, task, iou_type):
    ann_file, _ = sc.make_dataset(tmp_path, task, "val", 12)
    assert _evaluate(ann_file, iou_type) == pytest.approx(1.0)


def test_generation_logs_one_line_when_stderr_is_not_a_terminal(tmp_path, capsys):
    """In a log file, CI or a notebook tqdm's carriage-return redraws would pile up:
    there the generator prints one line per split and no bar; a second call (the cache) prints nothing."""
    sc.make_dataset(tmp_path, "shapes", "val", 6)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 1 and "shapes/val: 6 images in" in err, repr(err)
    sc.make_dataset(tmp_path, "shapes", "val", 6)
    assert capsys.readouterr().err == ""
