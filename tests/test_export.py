"""export.py: the network and the NMS-free decoder in one ONNX graph give, in onnxruntime,
the detections PyTorch gives: the same top-k in the same order, the same mixture
components, coordinates within TOL_PX.

No training: a small_dla checkpoint is made realistic enough for the comparison to mean
something by re-estimating its BatchNorm statistics on the images (an untrained net in eval
mode gives nearly constant maps: top-k of ties) and scaling each head's last 1x1 conv to a
trained net's output range (separated heatmap peaks, a clear argmax of the mixture logits,
offsets of a few output pixels).
"""
import json
import sys

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -r requirements-export.txt)")
pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install -r requirements-export.txt)")
onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -r requirements-export.txt)")

import export  # noqa: E402
from coco_data import CocoDataset  # noqa: E402
from model import ModelConfig, build_model, load_model, save_checkpoint  # noqa: E402
from synthetic_coco import make_dataset  # noqa: E402

SIZE = 128
# Output-map pixels. The fixed and dynamic graphs differ from eager PyTorch by float32
# rounding (about 1e-3 px at most here: eager float32 is as far from a float64 run), not an
# export error; the tolerance leaves a margin of several times that. A wrong stride, offset, peak or
# component moves a coordinate by >= 0.25 px.
TOL_PX = 5e-3
# (mean, std) of each head's raw output after calibration; None keeps the mean. Offsets:
# std = map side / 6, ~5 output px at 128 px.
TARGET = {"hm": (-2.0, 1.5), "hm_hp": (-2.0, 1.5), "mdn_logits": (None, 2.0), "mdn_sigma": (None, 1.0),
          "wh": (5.0, 5.0), "hps": (None, 5.0), "reg": (0.5, 0.3), "hp_offset": (0.5, 0.3)}


def calibrate(model, x):
    """BatchNorm statistics from x (B, 3, H, W); each head's last conv rescaled per output
    channel to TARGET's spread. Returns the model in eval mode."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None          # a plain average over the calibration batch
    with torch.no_grad():
        model.train()(x)
        model.eval()
        feat = model.backbone(x)[-1]
        for name, (mean, std) in TARGET.items():
            if name not in model.heads[-1]:
                continue
            conv = model.heads[-1][name][-1]
            raw = model.heads[-1][name](feat)                          # (B, ch, H, W) before any activation
            s = std / raw.std((0, 2, 3)).clamp_min(1e-8)               # (ch,)
            m = raw.mean((0, 2, 3))
            conv.weight.mul_(s[:, None, None, None])
            conv.bias.copy_((m if mean is None else torch.full_like(m, mean)) - s * (m - conv.bias))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{task: (checkpoint path, validation inputs (4, 3, SIZE, SIZE))} for det and pose."""
    root = tmp_path_factory.mktemp("export")
    made = {}
    for task, classes in (("det", 5), ("pose", 1)):
        ann, images = make_dataset(root / "data", task, "val", 4, image_size=SIZE)
        ds = CocoDataset(ann, images, task, train=False, input_size=SIZE)
        x = torch.stack([ds[i]["input"] for i in range(len(ds))])
        torch.manual_seed(0)
        model = calibrate(build_model(ModelConfig(task=task, m=3, arch="small_dla", num_classes=classes)), x)
        path = root / f"{task}.pt"
        save_checkpoint(path, model, data=ds.info(),
                        train_config=dict(input_size=SIZE, val_ann=ann, val_images=images))
        made[task] = path, x
    return made


def assert_same_detections(ref, got):
    """The same detections, position by position (so the same top-k set in the same order):
    the same class and centre (distinct peaks are >= 1 px apart, the tolerance is far
    below), the same component, coordinates within TOL_PX. Rows of score 0 (padding past
    the last peak, tied in any order) are left out."""
    keep = ref["scores"] > 0
    assert keep.sum() > 20, "too few peaks for the comparison to mean anything"
    assert np.array_equal(keep, got["scores"] > 0), "a different number of detections"
    centers = np.abs(ref["centers"][keep] - got["centers"][keep]).max()
    assert centers < TOL_PX and np.array_equal(ref["classes"][keep], got["classes"][keep]), \
        f"a different top-k set or order (centres up to {centers:.2f} px apart)"
    assert np.array_equal(ref["component"][keep], got["component"][keep]), "a different mixture component"
    for name in ("boxes", "keypoints"):
        if name in ref:
            diff = np.abs(ref[name][keep] - got[name][keep]).max()
            assert diff < TOL_PX, f"{name} differ by {diff:.2e} output px"
    assert np.abs(ref["scores"] - got["scores"]).max() < 1e-4


@pytest.mark.parametrize("task", ["det", "pose"])
def test_fixed_graph_matches_pytorch(checkpoints, task, tmp_path, capsys):
    path, x = checkpoints[task]
    out = tmp_path / "model.onnx"
    rep = export.main(["--checkpoint", str(path), "--out", str(out), "--verify", "4"])
    printed = capsys.readouterr().out
    assert "same top-k set yes" in printed and "same order yes" in printed and "same components yes" in printed
    assert rep["same_set"] and rep["same_order"] and rep["same_components"] and rep["detections"] > 20
    assert not list(tmp_path.glob("*.data")), "weights must be inside the .onnx file"
    proto = onnx.load(out)
    names = ["boxes", "scores", "classes", "component", "alpha", "sigma", "centers"] + (["keypoints"] if task == "pose" else [])
    assert [o.name for o in proto.graph.output] == names
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["mdn_dense"])
    assert meta["stride"] == 4 and meta["task"] == task and len(meta["class_names"]) == (5 if task == "det" else 1)
    model, _ = load_model(path)
    detector = export.Detector(model)
    session = export.onnx_session(out, threads=1)
    for i in range(len(x)):   # one image at a time: the graph is (1, 3, 128, 128)
        ref, got = export.run_eager(detector, x[i:i + 1]), export.run_onnx(session, x[i:i + 1])
        assert got["boxes"].shape == (1, 100, 4) and got["scores"].dtype == np.float32
        assert task == "det" or got["keypoints"].shape == (1, 100, 17, 2)
        assert_same_detections(ref, got)


def test_dynamic_graph_takes_other_batches_and_shapes(checkpoints, tmp_path):
    path, x = checkpoints["pose"]
    out = tmp_path / "dyn.onnx"
    export.main(["--checkpoint", str(path), "--out", str(out), "--dynamic", "--verify", "0", "--topk", "50"])
    model, _ = load_model(path)
    detector, session = export.Detector(model, k=50), export.onnx_session(out, threads=1)
    for batch in (x[:3], x[:1, :, :, :96].contiguous(), torch.cat([x[:2], x[:2]], 3)):  # (3,128,128) (1,128,96) (2,128,256)
        ref, got = export.run_eager(detector, batch), export.run_onnx(session, batch)
        assert got["boxes"].shape == (len(batch), 50, 4)
        assert_same_detections(ref, got)


def test_compare_tells_order_set_and_component_changes():
    """export.compare, which the command's printout rests on, on hand-made decodings."""
    g = np.random.default_rng(0)
    ref = dict(scores=np.array([[0.9, 0.8, 0.7, 0.0]]), classes=np.array([[0, 1, 0, 0]]),
               component=np.array([[0, 2, 1, 0]]), centers=g.uniform(0, 30, (1, 4, 2)),
               boxes=g.uniform(0, 30, (1, 4, 4)), alpha=np.ones((1, 4)), sigma=np.ones((1, 4, 2)))
    swap = lambda d, i, j: {k: v[:, [j if n == i else i if n == j else n for n in range(4)]] for k, v in d.items()}
    assert all(export.compare(ref, ref)[k] for k in ("same_set", "same_order", "same_components"))
    swapped = export.compare(ref, swap(ref, 0, 1))
    assert swapped["same_set"] and not swapped["same_order"] and swapped["same_components"]
    padding = dict(ref, centers=ref["centers"].copy())
    padding["centers"][0, 3] += 5                  # a score-0 row: padding, not a detection
    assert export.compare(ref, padding)["same_order"]
    moved = dict(ref, centers=ref["centers"].copy())
    moved["centers"][0, 2] += 0.5
    assert not export.compare(ref, moved)["same_set"]
    other = dict(ref, component=np.array([[0, 2, 0, 0]]))
    assert not export.compare(ref, other)["same_components"]
    shifted = dict(ref, boxes=ref["boxes"] + 0.01)
    assert abs(export.compare(ref, shifted)["box_px"] - 0.04) < 1e-9   # input px = 4 x output px


def test_foreign_checkpoint_and_bad_size_are_clear_errors(checkpoints, tmp_path):
    bad = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(SystemExit, match="foreign.pt: not a checkpoint of this project"):
        export.main(["--checkpoint", str(bad), "--out", str(tmp_path / "x.onnx")])
    with pytest.raises(SystemExit, match="multiple of 32"):
        export.main(["--checkpoint", str(checkpoints["det"][0]), "--out", str(tmp_path / "x.onnx"), "--input-size", "100"])


def test_missing_packages_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)   # import onnxscript now raises ImportError
    with pytest.raises(SystemExit, match=r"needs onnxscript, .*pip install -r requirements-export.txt"):
        export.require(*export.EXPORT_PACKAGES)
