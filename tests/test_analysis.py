"""The analyses of analysis/ (components.py, matching.py) against hand computations and
ground-truth oracles: Pearson, ARI, purity, OKS and IoU matching (COCOeval's own), Fig. 2's
component order, Table 4's statistics, Table 5's face visibility, Table 6's displacement, the
latent-mode agreement. evaluate.py's oracle round trips and flags are in test_evaluate.py."""
import contextlib
import io
import random

import numpy as np
import pytest
from pycocotools.coco import COCO

import annotations as an
from analysis import components as analysis
from analysis import matching
from coco_data import CocoDataset
from coco_eval import coco_evaluate


# ----------------------------------------------------------------------------- statistics
def test_pearson_ari_purity_by_hand():
    # x - mean = (-1.5, -.5, .5, 1.5), y - mean = (-3, -1, 0, 4): r = 11 / sqrt(5 * 26)
    assert analysis.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / np.sqrt(130))
    assert analysis.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert np.isnan(analysis.pearson([1, 1, 1], [1, 2, 3])) and np.isnan(analysis.pearson([1], [2]))
    # contingency [[2, 1, 0], [0, 1, 2]]: index 2, row pairs 3 + 3, column pairs 1 + 0 + 1 = ...
    a, b = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    # index = C(2,2) + C(2,2) = 2; sum_a = 2 C(3,2) = 6; sum_b = 3 C(2,2) = 3; pairs C(6,2) = 15
    # expected = 6 * 3 / 15 = 1.2; max = (6 + 3) / 2 = 4.5; ARI = 0.8 / 3.3
    assert analysis.adjusted_rand_index(a, b) == pytest.approx(0.8 / 3.3)
    assert analysis.adjusted_rand_index(b, a) == pytest.approx(0.8 / 3.3)
    assert analysis.adjusted_rand_index([0, 0, 1, 1], ["x", "x", "y", "y"]) == 1.0
    assert analysis.adjusted_rand_index([0, 0, 0], [1, 1, 1]) == 1.0
    assert analysis.adjusted_rand_index([0, 1, 0, 1], [0, 0, 1, 1]) < 0                      # worse than chance
    assert np.isnan(analysis.adjusted_rand_index([], []))
    # clusters {0: a a b, 1: b b, 2: b}: majorities 2 + 2 + 1 of 6 (the other way round, 4 of 6)
    assert analysis.purity(["a", "a", "b", "b", "b", "b"], [0, 0, 0, 1, 1, 2]) == pytest.approx(5 / 6)
    assert analysis.purity([0, 0, 0, 1, 1, 2], ["a", "a", "b", "b", "b", "b"]) == pytest.approx(4 / 6)
    table, rows, cols = analysis.contingency(a, b)
    assert table.tolist() == [[2, 1, 0], [0, 1, 2]] and rows == [0, 1] and cols == [0, 1, 2]


def test_oks_and_greedy_matcher_by_hand():
    # one visible joint 2 px away, area 100, sigma 0.1: e = 4 / ((2 * 0.1)^2 * 100 * 2) = 0.5
    # (the second joint is unannotated: left out however far off it is)
    for pred in ([3, 0, 50, 50], [3, 0, 1, 50, 50, 1]):
        assert matching.oks_matrix([pred], [[1, 0, 2, 9, 9, 0]], [100], [0.1, 0.1])[0, 0] == pytest.approx(np.exp(-0.5))
    gts = [dict(id=2, image_id=7, x=10.0), dict(id=1, image_id=7, x=0.0), dict(id=3, image_id=8, x=0.0)]
    results = [dict(image_id=7, score=0.5, x=1.0), dict(image_id=7, score=0.9, x=4.0),
               dict(image_id=7, score=0.8, x=6.0), dict(image_id=7, score=0.1, x=100.0)]
    sim = lambda rs, gs: np.array([[1 / (1 + abs(r["x"] - g["x"])) for g in gs] for r in rs])
    pairs = matching.greedy_match(results, gts, sim, thresh=0.1)
    # 0.9 (x=4) takes gt 1 (closer), 0.8 (x=6) takes gt 2, 0.5 finds both taken, 0.1 is too far,
    # gt 3 is in another image
    assert [(r["score"], g["id"]) for r, g in pairs] == [(0.9, 1), (0.8, 2)]


def test_matching_similarities_are_cocoevals_own():
    """The analyses' IoU and OKS equal COCOeval's computeIoU / computeOks on the same pairs,
    for a 5-joint skeleton with its own (non-COCO) sigmas: analysis and evaluation match alike."""
    from pycocotools.cocoeval import COCOeval
    rng = np.random.default_rng(0)
    sigmas = np.array([0.03, 0.11, 0.05, 0.2, 0.07])
    cat = dict(id=1, name="hand", keypoints=[f"j{i}" for i in range(5)], skeleton=[])
    anns = []
    for i in range(4):
        x, y = rng.uniform(0, 60, 2)
        kps = np.concatenate([rng.uniform(0, 80, (5, 2)), rng.integers(0, 3, (5, 1))], 1)
        kps[0, 2] = 2
        anns.append(dict(id=i + 1, image_id=1, category_id=1, bbox=[x, y, 30.0, 40.0], area=float(rng.uniform(200, 900)),
                         iscrowd=0, keypoints=kps.ravel().tolist(), num_keypoints=int((kps[:, 2] > 0).sum())))
    coco = COCO()
    coco.dataset = dict(images=[dict(id=1, width=100, height=100, file_name="a.png")], annotations=anns, categories=[cat])
    coco.createIndex()
    dets = [dict(image_id=1, category_id=1, score=float(s), bbox=[*rng.uniform(0, 60, 2), 25.0, 35.0],
                 keypoints=np.concatenate([rng.uniform(0, 80, (5, 2)), np.ones((5, 1))], 1).ravel().tolist())
            for s in rng.uniform(0.5, 1, 6)]
    for task, iou_type in (("pose", "keypoints"), ("det", "bbox")):
        ev = COCOeval(coco, coco.loadRes([dict(d) for d in dets]), iou_type)
        ev.params.kpt_oks_sigmas = sigmas
        ev._prepare()                                                     # COCOeval's per-image gts / dts
        by_score = sorted(dets, key=lambda d: -d["score"])               # COCOeval's order
        gts = coco.loadAnns(coco.getAnnIds())
        if task == "pose":
            want = ev.computeOks(1, 1)
            got = matching.oks_matrix([d["keypoints"] for d in by_score], [g["keypoints"] for g in gts],
                                      [g["area"] for g in gts], sigmas)
        else:
            want = ev.computeIoU(1, 1)
            got = matching.iou_matrix([d["bbox"] for d in by_score], [g["bbox"] for g in gts])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # the analyses refuse to match keypoints without the dataset's sigmas (no silent default)
    with pytest.raises(ValueError, match="OKS sigmas"):
        matching.match_keypoints(dets, coco, None)


# ----------------------------------------------------------------------------- analyses on hand-built results
def gt_results(coco, component, jitter=0.0, seed=0):
    """Result dicts made from the ground truth: component(annotation) -> int, score 1 - small
    decreasing steps, keypoints jittered by up to `jitter` px, sigma from the component."""
    rng = np.random.default_rng(seed)
    out = []
    for i, a in enumerate(a for a in coco.dataset["annotations"] if not a["iscrowd"]):
        x, y, w, h = a["bbox"]
        r = dict(image_id=a["image_id"], category_id=a["category_id"], bbox=list(a["bbox"]),
                 score=1.0 - 1e-3 * i, component=int(component(a)), sigma=[10.0 + component(a), 20.0],
                 center=[x + w / 2, y + h / 2], out_px=1.0)
        if "keypoints" in a:
            kps = np.array(a["keypoints"], float).reshape(-1, 3)
            kps[:, :2] += rng.uniform(-jitter, jitter, (len(kps), 2))
            kps[:, 2] = 1
            r["keypoints"] = kps.ravel().tolist()
        out.append(r)
    return out


def test_fig2_orders_components_by_scale(synthetic, tmp_path):
    coco = CocoDataset(*synthetic["det"], "det").coco
    shuffled = [2, 0, 1]                                       # decoder index of each scale bin
    res = analysis.component_scale(gt_results(coco, lambda a: shuffled[a["scale_bin"]]), coco)
    assert [r["component"] for r in res["rows"]] == [shuffled[b] for b in sorted({a["scale_bin"] for a in coco.dataset["annotations"]})]
    means = [r["mean_scale"] for r in res["rows"]]
    assert means == sorted(means) and sum(r["share"] for r in res["rows"]) == pytest.approx(1)
    assert res["matched"] == len(coco.dataset["annotations"]) and res["ari_scale_bin"] == 1.0
    assert res["pearson_scale"] > 0.7 and abs(res["pearson_category"]) < 0.5
    scales = np.sqrt([a["area"] for a in coco.dataset["annotations"]])
    bins = [a["scale_bin"] for a in coco.dataset["annotations"]]
    ranks = [sorted(set(bins)).index(b) for b in bins]
    assert res["pearson_scale"] == pytest.approx(analysis.pearson(ranks, scales))
    from analysis import plots
    assert plots.scale_distribution(res, tmp_path / "fig2.png").stat().st_size > 0


def test_table4_statistics_by_hand():
    names = ["nose", "left_eye", "right_eye"]
    r = lambda c, score, kps, sigma: dict(score=score, component=c, sigma=sigma, center=[10.0, 10.0],
                                          keypoints=[v for x, y in kps for v in (x, y, 1)])
    results = [r(0, 0.9, [(10, 5), (12, 8), (7, 8)], [1.0, 2.0]),      # left +x, right -x, both -y
               r(0, 0.8, [(10, 5), (10, 12), (6, 12)], [3.0, 4.0]),     # left 0 x (not +) +y, right -x +y
               r(1, 0.7, [(10, 5), (8, 8), (14, 8)], [5.0, 5.0]),       # back view: left -x, right +x
               r(1, 0.1, [(10, 5), (12, 8), (7, 8)], [9.0, 9.0])]       # below the score threshold
    rows = analysis.component_statistics(results, names, score_thresh=0.3)
    assert [(row["component"], row["count"]) for row in rows] == [(1, 2), (2, 1)]
    first, second = rows
    assert first["rate"] == pytest.approx(2 / 3) and first["sigma_x"] == 2.0 and first["sigma_y_std"] == 1.0
    assert (first["x+_left"], first["y+_left"], first["x+_right"], first["y+_right"]) == (0.5, 0.5, 0.0, 0.5)
    assert (second["x+_left"], second["x+_right"]) == (0.0, 1.0)
    text = analysis.format_component_statistics(rows)
    assert "66.7" in text and "2.0 (1.0)" in text


def tiny_coco(annotations, names):
    """A pycocotools COCO object from hand-written person annotations (one image)."""
    coco = COCO()
    coco.dataset = dict(info={}, images=[dict(id=1, width=100, height=100, file_name="x.jpg")],
                        categories=[dict(id=1, name="person", keypoints=names)],
                        annotations=[dict(id=i + 1, image_id=1, category_id=1, iscrowd=0, area=2500.0,
                                          bbox=[0, 0, 50, 50], num_keypoints=sum(v > 0 for v in a[2::3]), keypoints=a)
                                     for i, a in enumerate(annotations)])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_table5_face_is_visible_only_for_a_visible_nose():
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_hip", "right_hip"]
    person = lambda nose_v, n: [10, 10, nose_v] + [v for j in range(1, 7) for v in (10 + j, 20, 2 if j <= n else 0)]
    coco = tiny_coco([person(2, 6), person(1, 6), person(0, 6), person(2, 4)], names)   # the last has 5 joints
    res = analysis.face_visibility([], coco, names, an.COCO_PERSON_SIGMAS, min_keypoints=6)
    assert res["gt"]["instances"] == 3 and res["gt"]["visible_face"] == pytest.approx(1 / 3)
    # annotated joints of the 3: 7 + 7 + 6 = 20, one of them occluded (v = 1)
    assert res["gt"]["occluded_keypoints"] == pytest.approx(1 / 20)


def test_table5_face_visibility(synthetic):
    coco = CocoDataset(*synthetic["pose"], "pose").coco
    names = coco.loadCats(1)[0]["keypoints"]
    comp = lambda a: 0 if a["viewpoint"] == "front" else 1
    res = analysis.face_visibility(gt_results(coco, comp), coco, names, an.COCO_PERSON_SIGMAS, 0.5, 6)
    gts = [a for a in coco.dataset["annotations"] if a["num_keypoints"] >= 6]
    visible = [a["keypoints"][2] == 2 for a in gts]
    assert res["gt"]["instances"] == len(gts) and res["matched"] == len(gts)
    assert res["gt"]["visible_face"] == pytest.approx(np.mean(visible))
    assert res["gt"]["visible_keypoints"] + res["gt"]["occluded_keypoints"] == pytest.approx(1)
    # synthetic back views hide the nose: every back view (component 2) has an occluded face
    table = dict(zip(res["faces"], res["table"].tolist()))
    back = sum(a["viewpoint"] == "back" for a in gts)
    assert back > 0 and res["components"] == [1, 2]
    assert table["occluded"][1] == back and table["visible"][1] == 0
    assert sum(res["predictions"].values()) == pytest.approx(1)


def test_keypoint_subset_ap_equals_full_evaluation_without_the_other_joints(synthetic):
    """An independent oracle for the slicing: evaluating joints J alone must equal plain
    COCOeval (all 17 sigmas) on ground truth whose other joints are marked unannotated."""
    coco = CocoDataset(*synthetic["pose"], "pose").coco
    results = gt_results(coco, lambda a: 0, jitter=2.0)
    hidden = COCO()
    anns = []
    for a in coco.dataset["annotations"]:
        kps = [v if i % 3 != 2 or i // 3 in (0, 9, 10) else 0 for i, v in enumerate(a["keypoints"])]
        anns.append(dict(a, keypoints=kps, num_keypoints=sum(v > 0 for v in kps[2::3])))
    hidden.dataset = dict(coco.dataset, annotations=anns)
    with contextlib.redirect_stdout(io.StringIO()):
        hidden.createIndex()
    expected = coco_evaluate(hidden, results, "pose")[0]
    assert 0.1 < expected < 0.99                               # the jitter makes it a real test
    assert analysis.keypoint_subset_ap(coco, results, [0, 9, 10], an.COCO_PERSON_SIGMAS) == pytest.approx(expected)
    assert analysis.keypoint_subset_ap(coco, results, list(range(17)), an.COCO_PERSON_SIGMAS) == pytest.approx(coco_evaluate(coco, results, "pose")[0])


def test_table6_ground_truth_displacement_is_monotone(synthetic):
    coco = CocoDataset(*synthetic["pose"], "pose").coco
    names = coco.loadCats(1)[0]["keypoints"]
    subsets = analysis.subset_joints(names)
    assert subsets["Facial"] == [0, 1, 2, 3, 4] and subsets["Ears"] == [3, 4] and len(subsets) == 9
    table = {d: {s: analysis.keypoint_subset_ap(coco, analysis.displaced_ground_truth(coco, d), j, an.COCO_PERSON_SIGMAS)
                 for s, j in subsets.items() if s in ("All", "Facial", "Nose", "Hips")} for d in (0, 1, 3)}
    assert all(ap == pytest.approx(1.0) for ap in table[0].values())
    for s in table[0]:
        assert table[0][s] >= table[1][s] >= table[3][s]
    assert table[3]["All"] < 1.0 and table[3]["Nose"] < table[3]["Hips"]      # faces are the most sensitive
    full = analysis.keypoint_subset_table(gt_results(coco, lambda a: 0), coco, names, an.COCO_PERSON_SIGMAS, displacements=(2,))
    assert set(full) == {"GT Disp. 2", "Model"} and full["Model"]["All"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- latent modes
def test_latent_modes_ground_truth_oracle(synthetic):
    pose = CocoDataset(*synthetic["pose"], "pose").coco
    view = lambda a: {"front": 0, "back": 1}[a["viewpoint"]]
    found = analysis.latent_mode_agreement(gt_results(pose, view), pose, "pose", an.COCO_PERSON_SIGMAS)
    assert set(found) == {"cues True", "cues False"}
    for group in found.values():
        if group["pairs"]:
            assert group["purity"] == 1.0 and group["ari"] == 1.0
    assert sum(g["pairs"] for g in found.values()) == sum(a["num_keypoints"] > 0 for a in pose.dataset["annotations"])
    det = CocoDataset(*synthetic["det"], "det").coco
    found = analysis.latent_mode_agreement(gt_results(det, lambda a: a["scale_bin"]), det, "det")["all"]
    assert found["purity"] == 1.0 and found["ari"] == 1.0 and found["table"].sum() == len(det.dataset["annotations"])
    rng = random.Random(0)                                     # a control: random components do not agree
    found = analysis.latent_mode_agreement(gt_results(det, lambda a: rng.randrange(3)), det, "det")["all"]
    assert found["ari"] < 0.5
    plain = COCO()                                              # no latent fields: nothing to compare
    plain.dataset = dict(pose.dataset, annotations=[{k: v for k, v in a.items() if k != "viewpoint"}
                                                    for a in pose.dataset["annotations"]])
    with contextlib.redirect_stdout(io.StringIO()):
        plain.createIndex()
    assert analysis.latent_mode_agreement(gt_results(plain, lambda a: 0), plain, "pose", an.COCO_PERSON_SIGMAS) == {}
