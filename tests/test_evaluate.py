"""evaluate.py: oracle round trips (AP ~1 from ground truth rendered to targets, single- and
multi-scale), the flip test against a mirrored oracle, soft-NMS, "no detections", files
COCOeval would mis-score, the CLI flags, and every --analysis run end to end on an untrained
network. The analyses' arithmetic against hand computations is in test_analysis.py."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import annotations as an
from analysis import components as analysis
import evaluate
import inference
import mdn_dense as md
from coco_data import CocoDataset
from support import SAMPLE, SAMPLE_ANN, needs_sample
from decode import flip_merge
from model import ModelConfig, build_model, default_sigma_floor, save_checkpoint

# What the oracle round trip scores, less a margin of 0.005 for pycocotools / float noise: the
# synthetic sets are exact; on the real sample a few tiny boxes render onto a shared cell.
MEASURED_ORACLE_AP = {("synthetic", "det"): 1.000, ("synthetic", "pose"): 1.000,
                      ("real", "det"): 0.995, ("real", "pose"): 1.000}
MIN_ORACLE_AP = {key: ap - 0.005 for key, ap in MEASURED_ORACLE_AP.items()}


def oracle_ap(ann, images, task, out, *extra):
    stats = evaluate.main(["--oracle", "--task", task, "--ann", str(ann), "--images", str(images),
                           "--out", str(out), *extra])
    return stats["All"][0]


# ----------------------------------------------------------------------------- oracle round trips
@pytest.mark.parametrize("task", ["det", "pose"])
def test_oracle_synthetic(synthetic, task, tmp_path):
    ap = oracle_ap(*synthetic[task], task, tmp_path, "--m", "2", "--input-size", "128")
    assert ap >= MIN_ORACLE_AP["synthetic", task]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"component", "alpha", "sigma", "center", "out_px"} <= set(results[0])
    best = [r for r in results if r["score"] > 0.5]
    x, y, w, h = np.array([r["bbox"] for r in best]).T
    assert np.allclose([r["center"] for r in best], np.stack([x + w / 2, y + h / 2], 1), atol=1e-6)
    assert all(r["out_px"] == pytest.approx(4.0) for r in results)    # 128 px images at 128 px: the stride


@needs_sample
@pytest.mark.parametrize("task", ["det", "pose"])
def test_oracle_real_sample(task, tmp_path):
    ap = oracle_ap(SAMPLE_ANN[task], SAMPLE / "images", task, tmp_path, "--m", "1")
    assert ap >= MIN_ORACLE_AP["real", task]


def _repeat_an_id(data):
    data["annotations"][1]["id"] = data["annotations"][0]["id"]


def _num_keypoints_zero(data):
    for a in data["annotations"]:
        a["num_keypoints"] = 0


# (task, edit, the oracle AP pycocotools gives the edited file, measured: det 0.956, pose
# 0.889, pose -1 ("-": every person ignored); the message that refuses it now)
MISSCORED = [("det", _repeat_an_id, 0.97, r"annotation id 1: id appears more than once"),
             ("pose", _repeat_an_id, 0.95, r"annotation id 1: id appears more than once"),
             ("pose", _num_keypoints_zero, 0.0, r"annotation id 1: num_keypoints 0 but \d+ joints have v > 0")]


@pytest.mark.parametrize("case", range(len(MISSCORED)))
def test_files_cocoeval_would_misscore_are_refused(synthetic, case, tmp_path, monkeypatch):
    """Before: the file loaded and the oracle, a perfect prediction, scored below 1 without a
    word. After: one line naming the file, the annotation id and the field."""
    import annotations
    task, edit, ap_below, message = MISSCORED[case]
    ann, images = synthetic[task]
    data = json.loads(Path(ann).read_text())
    edit(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    args = ("--m", "1", "--input-size", "128")
    assert oracle_ap(ann, images, task, tmp_path / "good", *args) >= MIN_ORACLE_AP["synthetic", task]
    with monkeypatch.context() as unchecked:              # before: the checks were not there
        unchecked.setattr(annotations, "check_ids", lambda *a: None)
        unchecked.setattr(annotations, "check_visibility", lambda *a: None)
        assert oracle_ap(bad, images, task, tmp_path / "before", *args) < ap_below
    with pytest.raises(SystemExit, match=rf"^{bad}: {message}"):
        oracle_ap(bad, images, task, tmp_path / "after", *args)


@pytest.mark.parametrize("flag,value,message", [
    ("--max-images", "-1", "argument --max-images: must be >= 0, got -1"),
    ("--topk", "0", "argument --topk: must be > 0, got 0"),
    ("--input-size", "-32", "argument --input-size: must be > 0, got -32"),
    ("--batch-size", "0", "argument --batch-size: must be > 0, got 0"),
    ("--workers", "-1", "argument --workers: must be >= 0, got -1"),
    ("--scales", "0", "argument --scales: must be > 0, got 0"),
    ("--m", "-1", "argument --m: must be >= 0, got -1"),
    ("--split", "tset", "argument --split: invalid choice: 'tset'"),
    ("--device", "cuda:99", "argument --device: cuda:99"),
])
def test_bad_flag_values_are_refused_at_parse_time(flag, value, message, capsys):
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.parse_args([flag, value])
    assert message in capsys.readouterr().err


def test_an_existing_file_as_out_and_a_bad_annotation_file_are_one_line(tmp_path, capsys):
    (tmp_path / "table.txt").write_text("mine")
    with pytest.raises(SystemExit, match="^2$"):
        evaluate.parse_args(["--oracle", "--task", "det", "--out", str(tmp_path / "table.txt")])
    assert "--out" in capsys.readouterr().err and (tmp_path / "table.txt").read_text() == "mine"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match=rf"^{tmp_path / 'bad.json'}: missing list 'images'$"):
        evaluate.main(["--oracle", "--task", "det", "--ann", str(tmp_path / "bad.json"), "--images", str(tmp_path)])


@pytest.mark.parametrize("task", ["det", "pose"])
def test_multiscale_oracle_merges_duplicates(synthetic, task, tmp_path):
    """Every scale finds every object: soft-NMS must decay the copies below the originals,
    so AP stays ~1, and the copies are still there with lower scores (soft, not hard)."""
    ap = oracle_ap(*synthetic[task], task, tmp_path, "--m", "1", "--input-size", "128", "--scales", "0.75", "1.5")
    assert ap >= MIN_ORACLE_AP["synthetic", task]
    scores = np.array([r["score"] for r in json.loads((tmp_path / "results.json").read_text())])
    assert (scores > 0.9).any() and ((scores > 0.05) & (scores < 0.5)).any()


def mirrored_oracles(ann, images, task, m):
    """Oracle outputs of a batch and of its mirror image (the dataset's own flip augmentation)."""
    plain = CocoDataset(ann, images, task, input_size=128)
    mirror = CocoDataset(ann, images, task, train=True, input_size=128, scales=(1.0,), random_center=False,
                         flip_prob=1.0, color_aug=False)
    collate = torch.utils.data.default_collate
    b, bf = collate([plain[i] for i in range(6)]), collate([mirror[i] for i in range(6)])
    assert torch.allclose(torch.flip(b["input"], dims=[3]), bf["input"])
    cfg = ModelConfig(task=task, m=m, num_classes=plain.num_classes, num_joints=plain.num_joints or 17)
    out, out_f = inference.oracle_outputs(b, cfg), inference.oracle_outputs(bf, cfg)
    merged = flip_merge(out, out_f, getattr(plain, "flip_idx", None))
    # Objects whose centre sits exactly on a cell border peak one cell apart in the mirror
    # (a property of the oracle's one-cell peaks, not of a smooth network): leave them out.
    ok = (b["mask"] > 0) & (b["reg"][..., 0] > 1e-6)
    return b, out, merged, ok


def test_flip_merge_detection_matches_mirrored_oracle(synthetic):
    b, out, merged, ok = mirrored_oracles(*synthetic["det"], "det", 2)
    assert ok.sum() >= 5
    wh, wh_flip = (md.gather_feat(o["wh"], b["ind"])[ok] for o in (out, merged))
    assert torch.allclose(wh, wh_flip, atol=1e-5)
    heat = md.gather_feat(torch.sigmoid(merged["hm"]), b["ind"])[ok].max(-1).values
    assert (heat > 0.99).all()                                 # both views peak at the same cell


def test_flip_merge_pose_offsets_match_mirrored_oracle(synthetic):
    """The mirror's cell c' is cell W - 1 - c' here, so a mirrored x offset o' means 1 - o'
    (negating it alone, as the official code does, is 0.5 output pixels off)."""
    b, out, merged, ok = mirrored_oracles(*synthetic["pose"], "pose", 2)
    visible = ok[..., None] & (b["hps_mask"] > 0)
    hps, hps_flip = (md.gather_feat(o["hps"][:, :b["hps"].shape[-1]], b["ind"])[visible] for o in (out, merged))
    assert visible.sum() >= 20
    assert torch.allclose(hps, hps_flip, atol=1e-4)


# ----------------------------------------------------------------------------- checkpoints
def fake_checkpoint(path, task, num_classes, hm_bias, m=2):
    """An untrained small_dla saved as train.py does; the heatmap head outputs hm_bias
    everywhere plus (when the weights are kept) the untrained response."""
    num_joints = 17 if task == "pose" else 0
    torch.manual_seed(0)
    model = build_model(ModelConfig(task=task, m=m, num_classes=num_classes, num_joints=num_joints or 17,
                                    sigma_floor=default_sigma_floor(task, "small_dla")))
    last = model.heads[0]["hm"][-1]
    torch.nn.init.constant_(last.bias, hm_bias)
    if hm_bias < -50:
        torch.nn.init.zeros_(last.weight)
    save_checkpoint(path, model, train_config={"input_size": 64})
    return str(path)


@pytest.mark.parametrize("task", ["det", "pose"])
def test_no_detections_gives_zeros_and_message(synthetic, task, tmp_path, capsys):
    """A heatmap of -200 underflows to probability 0 everywhere: nothing is detected."""
    ckpt = fake_checkpoint(tmp_path / "ckpt.pt", task, 5 if task == "det" else 1, hm_bias=-200.0)
    ann, images = synthetic[task]
    stats = evaluate.main(["--checkpoint", ckpt, "--ann", ann, "--images", images, "--out", str(tmp_path),
                           "--analysis", "--max-images", "4"])
    assert all(np.all(s == 0) for s in stats.values())
    out = capsys.readouterr().out
    assert "no detections: every metric is 0" in out and "no detections: the analyses are empty" in out
    assert json.loads((tmp_path / "results.json").read_text()) == []
    coco = CocoDataset(ann, images, task).coco
    names = coco.loadCats(1)[0].get("keypoints")
    found, _ = analysis.run_all([], coco, task, names, sigmas=an.COCO_PERSON_SIGMAS)         # the functions alone, no files
    if task == "det":
        assert found["fig2"]["matched"] == 0 and np.isnan(found["fig2"]["pearson_scale"])
    else:
        assert found["table4"] == [] and found["table5_6_0.5"]["matched"] == 0
        nobody = analysis.face_visibility([], coco, names, an.COCO_PERSON_SIGMAS, min_keypoints=100)   # no ground truth qualifies
        assert nobody["gt"]["instances"] == 0 and nobody["gt"]["visible_face"] == 0
        assert all(ap == 0 for ap in found["table6"]["Model"].values())
        assert found["table6"]["GT Disp. 1"]["All"] > 0.5       # the reference rows need no detections
    assert all(r["pairs"] == 0 for r in found["latent"].values())


@pytest.mark.parametrize("task", ["det", "pose"])
def test_cli_flags_and_every_analysis_on_an_untrained_network(synthetic, task, tmp_path, capsys):
    """An untrained network with a high heatmap bias fires everywhere: every table and
    figure is computed from real decoder output (flip, two scales, mean rule, FPS)."""
    ckpt = fake_checkpoint(tmp_path / "ckpt.pt", task, 5 if task == "det" else 1, hm_bias=3.0)
    ann, images = synthetic[task]
    evaluate.main(["--checkpoint", ckpt, "--ann", ann, "--images", images, "--out", str(tmp_path), "--max-images", "3",
                   "--flip", "--scales", "1", "1.5", "--component", "mean", "--fps", "2", "--analysis",
                   "--examples", "2"] + (["--refine"] if task == "pose" else []))
    out = capsys.readouterr().out
    fps = float(out.split("FPS ")[1].split()[0])
    assert fps > 0
    assert "scales [64, 96] px" in out                          # 64 * 1.5 rounded to DLA's multiple 32
    assert (tmp_path / "fig5_examples.png").stat().st_size > 0
    assert (tmp_path / "fig2_scale.png").exists() == (task == "det")
    text = (tmp_path / "analysis.txt").read_text()
    assert ("Fig. 2" in text) if task == "det" else all(t in text for t in ("Table 4", "Table 5", "Table 6"))
    # uncertainty.py's tables: the oracle gate, the ground-truth heads, the calibration
    assert "\nOracle comp. " in out and ("cue-free figures alone" in text) == (task == "pose")
    lines = text.split("Where does the AP go")[1].split("\n\n")[0].splitlines()[2:]
    heads = dict((name, float(ap)) for name, ap in (re.match(r"(.+?)\s+([\d.]+)\s", line).groups() for line in lines))
    assert set(heads) == {"network", "GT hm", "GT reg", "GT " + ("wh" if task == "det" else "hps"), "GT all"} | (
        {"GT hm_hp"} if task == "pose" else set())
    assert heads["GT all"] > 95 and heads["network"] < 5          # the truth in every head, mean rule, flip and two scales
    assert "calibration" in text and (tmp_path / "calibration.png").exists() == ("calibration of the mixture" in text)
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) <= 3 * 100 and len({r["image_id"] for r in results}) == 3   # merged to top 100 per image
    coco = CocoDataset(ann, images, task).coco
    if task == "det":
        fig2 = analysis.component_scale(results, coco, score_thresh=0.0, iou_thresh=0.0)  # everything counts
        assert fig2["matched"] > 0 and sum(r["share"] for r in fig2["rows"]) == pytest.approx(1)
        assert all(np.isnan(p) or -1 <= p <= 1 for p in (fig2["pearson_scale"], fig2["pearson_category"]))
    else:
        rows = analysis.component_statistics(results, coco.loadCats(1)[0]["keypoints"])
        assert sum(r["rate"] for r in rows) == pytest.approx(1) and {r["component"] for r in rows} <= {1, 2}
        floor = default_sigma_floor("pose", "small_dla")
        assert all(r["sigma_x"] > floor and r["sigma_y"] > floor and 0 <= r["x+_left"] <= 1 for r in rows)
    with pytest.raises(SystemExit, match="--component 3: the model has 2 component"):
        evaluate.main(["--checkpoint", ckpt, "--ann", ann, "--images", images, "--component", "3"])


def test_a_missing_image_is_one_line(synthetic, tmp_path):
    import shutil
    ann, images = synthetic["det"]
    shutil.copytree(images, tmp_path / "images")
    (tmp_path / "images" / "000001.jpg").unlink()
    with pytest.raises(SystemExit, match=r"^image id 2: file not found: .*000001.jpg$"):
        oracle_ap(ann, tmp_path / "images", "det", tmp_path / "out", "--workers", "1")


def test_oracle_components_beyond_reason_are_one_line(synthetic, tmp_path):
    ann, images = synthetic["det"]
    with pytest.raises(SystemExit, match=r"^--oracle on .*: --m must be an integer in 0..64, got 100000$"):
        oracle_ap(ann, images, "det", tmp_path, "--m", "100000")
