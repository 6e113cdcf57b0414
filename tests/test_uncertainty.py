"""uncertainty.py and its evaluate.py rows: the oracle gate on a hand-made case, ground-truth
heads that rebuild the oracle, the calibration glue's coordinates (hand-made results and an
oracle on non-square images), rescoring by hand, the cue-free subset, and the CLI tables."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

import annotations as an
from analysis import calibration as cal
import evaluate
import inference
from analysis import matching
from analysis import uncertainty as uq
from coco_data import CocoDataset
from coco_eval import coco_evaluate
from model import default_sigma_floor, load_model
from test_evaluate import MIN_ORACLE_AP, fake_checkpoint

NAMES = ["nose", "left_wrist", "right_ankle"]          # one facial joint, two limbs


def make_coco(annotations, keypoints=None):
    """A pycocotools COCO of one 200 x 200 image from (bbox, extra fields) annotations."""
    coco = COCO()
    cat = dict(id=1, name="person" if keypoints else "thing", **({"keypoints": keypoints} if keypoints else {}))
    coco.dataset = dict(info={}, images=[dict(id=1, width=200, height=200, file_name="x.png")], categories=[cat],
                        annotations=[dict(id=i + 1, image_id=1, category_id=1, iscrowd=0, bbox=list(bbox),
                                          area=float(bbox[2] * bbox[3]), **extra)
                                     for i, (bbox, extra) in enumerate(annotations)])
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def result(rank, score, bbox, component, alpha, **extra):
    return dict(image_id=1, category_id=1, rank=rank, score=score, bbox=list(bbox), component=component,
                alpha=alpha, **extra)


# ----------------------------------------------------------------------------- oracle gate
def test_oracle_component_is_the_best_component_per_instance_one_to_one():
    coco = make_coco([([0, 0, 10, 10], {}), ([50, 50, 20, 20], {})])       # A, B
    comp0 = [result(0, 0.9, [1, 1, 10, 10], 0, 0.7),       # A at IoU 81/119
             result(1, 0.8, [51, 51, 20, 20], 0, 0.6),     # B at IoU 361/439
             result(2, 0.3, [150, 150, 5, 5], 0, 0.3)]     # near nothing
    comp1 = [result(0, 0.9, [0, 0, 10, 10], 1, 0.3),       # A exactly
             result(1, 0.8, [0, 0, 10, 10], 1, 0.4),       # A again: closest to a taken ground truth
             result(2, 0.3, [160, 160, 5, 5], 1, 0.7)]
    chosen = uq.oracle_component([comp0, comp1], coco, "det")
    # peak 0 takes A with component 2 (IoU 1); peak 1 finds A taken and takes B with component 1,
    # although its component 2 sits exactly on A (a gate without one-to-one matching would pick
    # that duplicate); peak 2 matches nothing and keeps the higher alpha, the max rule's component
    assert [(r["rank"], r["component"]) for r in chosen] == [(0, 1), (1, 0), (2, 1)]
    ap = lambda res: coco_evaluate(coco, res, "det")[0]
    assert ap(chosen) > max(ap(comp0), ap(comp1))
    # a better-scored peak that misses A (IoU 0.3 < 0.5: a false positive either way) leaves it to peak 1
    loose = lambda c: result(3, 0.95, [0, 0, 10, 3], c, 0.5)
    chosen = uq.oracle_component([[loose(0), *comp0], [loose(1), *comp1]], coco, "det")
    assert [(r["rank"], r["component"]) for r in chosen] == [(3, 0), (0, 1), (1, 0), (2, 1)]
    chosen = chosen[1:]
    # per ground truth, the oracle's prediction is the best forced component's
    for g, peak in (([0, 0, 10, 10], 0), ([50, 50, 20, 20], 1)):
        best = max(matching.iou_matrix(c[peak]["bbox"], g)[0, 0] for c in (comp0, comp1))
        assert matching.iou_matrix(chosen[peak]["bbox"], g)[0, 0] == best


def test_oracle_rows_are_opt_in():
    assert list(inference.component_rules(3)) == ["All", "1", "2", "3"]
    rows = inference.component_rules(3, oracle=True, rescore="sigma")
    assert rows["Oracle comp."] == "oracle" and rows["Rescored (sigma)"] == "rescore-sigma"
    rules, subs, carry = evaluate.plan(rows, 3, "det")
    assert rules == ("max", 0, 1, 2) and subs == {} and carry == ()
    rules, subs, carry = evaluate.plan({"All": "oracle", "1": 0, "2": 1}, 2, "pose", substitution=True, mixture=True)
    assert rules[:3] == ("max", 0, 1) and carry == (0, 1) and list(subs) == ["network", "GT hm", "GT reg", "GT hps", "GT all"]
    assert evaluate.plan({"All": "max"}, 0, "det", mixture=True)[2] == ()   # the base has no mixture to carry


# ----------------------------------------------------------------------------- ground-truth heads
def test_at_cells_writes_every_component_and_keeps_the_rest():
    fmap = torch.randn(1, 4, 2, 3)                          # M = 2 components of d = 2
    values = torch.tensor([[[7.0, 8.0], [5.0, 6.0]]])      # objects at cells 1 and 4
    mask = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])        # the first object's y unannotated
    new = inference.at_cells(fmap, torch.tensor([[1, 4]]), values, mask).view(4, 6)
    old = fmap.view(4, 6)
    assert new[[0, 2], 1].tolist() == [7.0, 7.0] and torch.equal(new[[1, 3], 1], old[[1, 3], 1])
    assert new[:, 4].tolist() == [5.0, 6.0, 5.0, 6.0]
    assert torch.equal(new[:, [0, 2, 3, 5]], old[:, [0, 2, 3, 5]])


@pytest.mark.parametrize("task", ["det", "pose"])
def test_all_ground_truth_heads_give_the_oracle_ap(synthetic, task, tmp_path):
    ckpt = fake_checkpoint(tmp_path / "ckpt.pt", task, 5 if task == "det" else 1, hm_bias=0.0)
    model, _ = load_model(ckpt, "cpu")
    model.eval()
    ds = CocoDataset(*synthetic[task], task, input_size=128)
    loader = torch.utils.data.DataLoader(ds, batch_size=5)
    rows = uq.substitution_rules(task, "max")
    inf = inference.Inference(rules=tuple(rows.values()), cfg=model.cfg)
    network, g = inference.network_forward(model, torch.device("cpu"), inf), torch.Generator().manual_seed(0)

    def forward(view):                                      # a gate whose choice varies from cell to cell
        out = network(view)
        return dict(out, mdn_logits=5 * torch.randn(out["mdn_logits"].shape, generator=g))
    results = inference.predict(forward, loader, ds.cat_ids, inf, progress=False)
    stats = {n: s[0] for n, s in inference.evaluate_rows(ds.coco, results, rows, task, ds.image_ids, ds.oks_sigmas).items()}
    oracle = inference.Inference(rules=("max",))
    expected = coco_evaluate(ds.coco, inference.predict(inference.oracle_forward(model.cfg), loader, ds.cat_ids, oracle,
                                                       progress=False)["max"], task, ds.image_ids)[0]
    assert stats["GT all"] == pytest.approx(expected, abs=1e-9) and expected >= MIN_ORACLE_AP["synthetic", task]
    assert stats["network"] < 0.05 and stats["GT hm"] < 0.5 * stats["GT all"]
    # the gate picks both components at the ground-truth centres: every one must carry the truth
    confident = [r["component"] for r in results[rows["GT all"]] if r["score"] > 0.99]
    assert len(set(confident)) == 2


# ----------------------------------------------------------------------------- calibration glue
def mixture_fields(mu, sigma, log_alpha, **extra):
    return dict(mix_mu=np.asarray(mu, np.float32), mix_sigma=np.asarray(sigma, np.float32),
                mix_log_alpha=np.asarray(log_alpha, np.float32), **extra)


def test_calibration_glue_converts_pose_ground_truth_to_offsets_from_the_peak():
    people = [[30, 40, 2, 50, 60, 1, 0, 0, 0], [130, 40, 2, 150, 80, 2, 120, 90, 2]]
    coco = make_coco([([20, 30, 40, 60], dict(keypoints=p, num_keypoints=sum(v > 0 for v in p[2::3]))) for p in people], NAMES)
    la = np.log([0.3, 0.7])
    results = [result(0, 0.9, [20, 30, 40, 60], 1, 0.7, keypoints=people[0], out_px=2.0,
                      **mixture_fields(np.arange(12).reshape(2, 6), [[1, 2], [3, 4]], la, peak=[20.0, 30.0])),
               result(1, 0.8, [120, 30, 40, 60], 0, 0.3, keypoints=people[1], out_px=4.0,
                      **mixture_fields(-np.arange(12).reshape(2, 6), [[5, 6], [7, 8]], la, peak=[128.0, 36.0])),
               result(2, 0.2, [0, 0, 5, 5], 0, 0.5, keypoints=people[1], out_px=1.0,   # under the score threshold
                      **mixture_fields(np.zeros((2, 6)), np.ones((2, 2)), la, peak=[0.0, 0.0]))]
    x = uq.matched_mixtures(results, coco, "pose", oks_sigmas=[0.05, 0.05, 0.05])
    # (joint - peak) / out_px; the unannotated joint is masked
    np.testing.assert_allclose(x["target"], [[5, 5, 15, 15, -10, -15], [0.5, 1, 5.5, 11, -2, 13.5]])
    np.testing.assert_array_equal(x["mask"], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(x["component"], [1, 0])
    k = [0.026, 0.062, 0.089]
    found = uq.calibration_metrics(x, k, NAMES)
    args = (x["target"], x["mu"], x["sigma"], x["log_alpha"], x["mask"], k)
    assert found["nll"] == cal.nll_per_coordinate(*args, component=[1, 0])
    mu_s, sigma_s = np.stack([results[0]["mix_mu"][1], results[1]["mix_mu"][0]]), np.array([[3, 4], [5, 6]])
    want = cal.coverage(x["target"], mu_s, sigma_s, x["mask"], k)
    np.testing.assert_array_equal(found["coverage"]["joint"]["observed"], want["observed"])
    assert found["coverage"]["joint"]["n"] == 5 and found["coverage"]["coordinate"]["n"] == 10
    np.testing.assert_array_equal(found["pit"]["counts"], cal.pit_histogram(cal.pit(*args))["counts"])
    assert set(found["reliability"]) == {"all", "comp 1", "comp 2", "facial", "limbs"}
    assert found["reliability"]["facial"]["count"].sum() == 4     # the nose of both, x and y
    assert found["reliability"]["comp 2"]["count"].sum() == 4     # the first person's 4 visible coordinates


def test_calibration_glue_det_coverage_by_hand():
    coco = make_coco([([10, 20, 40, 60], {}), ([100, 100, 40, 40], {})])
    s = np.array([[2.0, 3.0], [1.0, 1.0]])                  # component 0's sigma, component 1's
    # in output pixels (out_px 2) the boxes are (20, 30) and (20, 20); component 0 is off by
    # (1, 0) sigma (d^2 = 1) and by (0, 2) sigma (d^2 = 4)
    mu0, mu1 = [[22, 30], [0, 0]], [[20, 26], [0, 0]]
    results = [result(0, 0.9, [10, 20, 40, 60], 0, 0.9, out_px=2.0, **mixture_fields(mu0, s, np.log([0.9, 0.1]))),
               result(1, 0.8, [100, 100, 40, 40], 0, 0.9, out_px=2.0, **mixture_fields(mu1, s, np.log([0.9, 0.1])))]
    found, text = uq.calibration_report(results, coco, "det", m=2)
    # chi2(2) quantiles: 1.39 (50 %), 2.28 (68 %), 4.61 (90 %), 5.99 (95 %)
    assert found["coverage"]["joint"]["observed"].tolist() == [0.5, 0.5, 1.0, 1.0] and found["pairs"] == 2
    per = lambda t, m, sd: 0.5 * math.log(2 * math.pi) + math.log(sd) + 0.5 * ((t - m) / sd) ** 2
    want = (per(20, 22, 2) + per(30, 30, 3) + per(20, 20, 2) + per(20, 26, 3)) / 4
    assert found["nll"]["selected"] == pytest.approx(want, rel=1e-6)
    assert "box (w, h)" in text and "reliability by group" in text and "PIT" in text
    assert "no density" in uq.calibration_report(results, coco, "det", m=0)[1]
    with pytest.raises(ValueError, match="mixture=True"):
        uq.calibration_report([{k: v for k, v in r.items() if k != "mix_mu"} for r in results], coco, "det", m=2)


def padded(ann, images, tmp_path, extra=32):
    """The synthetic set with `extra` black rows under every image: non-square images, so the
    letterbox shifts x and out_px is not the stride."""
    data = json.loads(open(ann).read())
    folder = tmp_path / "padded"
    folder.mkdir()
    for img in data["images"]:
        src = Image.open(f"{images}/{img['file_name']}").convert("RGB")
        canvas = Image.new("RGB", (src.width, src.height + extra))
        canvas.paste(src, (0, 0))
        canvas.save(folder / img["file_name"])
        img["height"] += extra
    (tmp_path / "padded.json").write_text(json.dumps(data))
    return str(tmp_path / "padded.json"), str(folder)


@pytest.mark.parametrize("task", ["det", "pose"])
def test_oracle_mixture_is_exact_at_the_ground_truth(synthetic, task, tmp_path):
    """The oracle's component 0 is the truth with sigma 1 + floor: after decoding, mapping back
    and converting the ground truth again, every residual is ~0 and the NLL is the density's peak."""
    ds = CocoDataset(*padded(*synthetic[task], tmp_path), task, input_size=128)
    cfg = inference.ModelConfig(task=task, m=2, num_classes=ds.num_classes, num_joints=ds.num_joints or 17,
                               sigma_floor=default_sigma_floor(task, "dla34"))
    inf = inference.Inference(rules=("max",), mixture=("max",))
    results = inference.predict(inference.oracle_forward(cfg), torch.utils.data.DataLoader(ds, batch_size=5),
                               ds.cat_ids, inf, progress=False)["max"]
    assert {r["out_px"] for r in results} == {160 / 32}
    k = ds.oks_sigmas if task == "pose" else None
    x = uq.matched_mixtures(results, ds.coco, task, oks_sigmas=ds.oks_sigmas)
    found = uq.calibration_metrics(x, k)
    assert len(x["target"]) >= 15 and found["coverage"]["coordinate"]["observed"].tolist() == [1.0] * 4
    res = cal.residuals(x["target"], x["mu"][:, 0], x["sigma"][:, 0], x["mask"], k)
    assert np.abs(res["error"]).max() < 1e-3                # output pixels
    std = (1 + cfg.sigma_floor) * (np.repeat(k, 2) if task == "pose" else np.ones(2))
    peak = ((0.5 * math.log(2 * math.pi) + np.log(std)) * x["mask"]).sum() / x["mask"].sum()
    assert found["nll"]["selected"] == pytest.approx(peak, abs=1e-4)


# ----------------------------------------------------------------------------- rescoring, cue-free
def test_rescore_by_hand():
    mk = lambda score, bbox, sigma, out_px, comp, mu, sig, la: dict(score=score, bbox=bbox, sigma=sigma, out_px=out_px,
                                                                    component=comp, **mixture_fields(mu, sig, la))
    results = [mk(0.9, [0, 0, 8, 8], [4.0, 4.0], 1.0, 0, [[5, 5], [9, 9]], [[4, 4], [1, 1]], np.log([0.5, 0.5])),
               mk(0.8, [0, 0, 32, 32], [2.0, 6.0], 2.0, 1, [[5, 5], [5, 5]], [[2, 2], [1, 3]], np.log([0.2, 0.8])),
               mk(0.7, [0, 0, 4, 4], [1.0, 1.0], 1.0, 0, [[5, 5], [5, 5]], [[1, 1], [1, 1]], np.log([0.5, 0.5]))]
    u = np.array([4 / 8, 4 / 16, 1 / 4])                    # mean sigma / (sqrt(area) / out_px)
    scores = [r["score"] for r in uq.rescore(results, "sigma")]
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.7] / (1 + u / np.median(u)))
    assert [r["score"] for r in results] == [0.9, 0.8, 0.7]      # copies

    def density(r):                                         # the mixture at the selected mean, per dim
        at = r["mix_mu"][r["component"]]
        p = sum(math.exp(la) * np.prod([math.exp(-0.5 * ((a - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
                                        for a, m, s in zip(at, mu, sd)])
                for mu, sd, la in zip(r["mix_mu"], r["mix_sigma"], r["mix_log_alpha"]))
        return math.sqrt(p) * math.sqrt(r["bbox"][2] * r["bbox"][3]) / r["out_px"]
    f = np.array([density(r) for r in results])
    np.testing.assert_allclose([r["score"] for r in uq.rescore(results, "density")], [0.9, 0.8, 0.7] * f / f.max(), rtol=1e-5)
    with pytest.raises(ValueError, match="rescore"):
        uq.rescore(results, "alpha")


def test_cue_free_ground_truth_ignores_the_figures_with_cues(synthetic):
    coco = CocoDataset(*synthetic["pose"], "pose").coco
    anns = coco.dataset["annotations"]
    free = [a for a in anns if not a["cues_visible"]]
    assert 0 < len(free) < len(anns)
    # exact on the cue-free figures; 6 px off, and ranked first, on the others
    shift = lambda a: 0 if not a["cues_visible"] else 6
    results = [dict(image_id=a["image_id"], category_id=1, score=0.5 + 0.5 * a["cues_visible"], bbox=a["bbox"],
                    keypoints=[v + shift(a) if i % 3 < 2 else 1 for i, v in enumerate(a["keypoints"])]) for a in anns]
    gt = uq.cue_free_ground_truth(coco)
    free_results = uq.cue_free_results(results, coco, an.COCO_PERSON_SIGMAS)
    assert len(free_results) == len(free) and all(r["score"] == 0.5 for r in free_results)
    assert coco_evaluate(gt, free_results, "pose")[0] == pytest.approx(1.0)
    assert coco_evaluate(gt, results, "pose")[0] < 0.5      # ignoring alone: the loose ones are false positives
    far = dict(results[0], keypoints=[-500.0 if i % 3 < 2 else 1 for i in range(51)])
    assert uq.cue_free_results([far], coco, an.COCO_PERSON_SIGMAS) == [far]        # near no figure: background, kept
    assert sum(a["num_keypoints"] > 0 for a in gt.dataset["annotations"]) == len(free)
    assert uq.cue_free_ground_truth(CocoDataset(*synthetic["det"], "det").coco) is None


# ----------------------------------------------------------------------------- command line
def test_cli_oracle_analysis_prints_calibration_and_the_cue_free_oracle_row(synthetic, tmp_path, capsys):
    ann, images = synthetic["pose"]
    stats = evaluate.main(["--oracle", "--task", "pose", "--m", "2", "--ann", ann, "--images", images, "--out", str(tmp_path),
                           "--input-size", "128", "--analysis", "--examples", "0"])
    out = capsys.readouterr().out
    assert stats["Oracle comp."][0] == pytest.approx(stats["All"][0]) and stats["2"][0] < 0.1
    cue_free = out.split("cue-free figures alone")[1]
    assert "Oracle comp.     100.0" in cue_free
    assert "joint  " in out.split("coverage: observed")[1].split("\n\n")[0] and "100.0  100.0  100.0  100.0" in out
    assert "Where does the AP go" not in out                 # no network to substitute into
    assert (tmp_path / "calibration.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "rank" in saved[0] and not set(inference.MIXTURE_KEYS) & set(saved[0])


def test_cli_base_has_no_density_and_rescore_needs_one(synthetic, tmp_path, capsys):
    ckpt = fake_checkpoint(tmp_path / "ckpt.pt", "det", 5, hm_bias=3.0, m=0)
    ann, images = synthetic["det"]
    common = ["--checkpoint", ckpt, "--ann", ann, "--images", images, "--out", str(tmp_path), "--max-images", "3"]
    stats = evaluate.main(common + ["--analysis", "--examples", "0"])
    out = capsys.readouterr().out
    assert list(stats) == ["All"] and "the M = 0 base (L1 regression) predicts no density" in out
    assert "GT all" in out and not (tmp_path / "calibration.png").exists()
    with pytest.raises(SystemExit, match="--rescore"):
        evaluate.main(common + ["--rescore", "sigma"])
