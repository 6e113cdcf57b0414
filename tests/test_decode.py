"""decode.py: NMS-free decoding on planted peaks, refinement, the flip merge, peak tests."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import decode as dc
import mdn_dense as md
from support import random_outputs
from model import ModelConfig, head_channels


def planted_maps(task="det", M=3, K=2, H=16, W=20, C=2):
    """Hand-built outputs with two planted objects."""
    B = 1
    heads = head_channels(ModelConfig(task=task, m=M, num_classes=C, num_joints=K))
    out = {name: torch.zeros(B, ch, H, W) for name, ch in heads.items()}
    out["hm"][:] = -10
    out["hm"][0, C - 1, 4, 5] = 3.0  # object A: class C-1 at (x=5, y=4)
    out["hm"][0, 0, 10, 12] = 2.0   # object B: class 0 at (x=12, y=10)
    out["reg"][0, :, 4, 5] = torch.tensor([0.25, 0.5])
    D = 2 if task == "det" else 2 * K
    key = md.REGRESSION_KEY[task]
    mu = out[key].view(B, M, D, H, W)
    mu[0, :, :, 4, 5] = torch.arange(M * D, dtype=torch.float32).view(M, D) + 1  # component m: values m*D+1..
    mu[0, :, :, 10, 12] = 7.0
    out["mdn_logits"][0, :, 4, 5] = torch.tensor([0.0, 2.0, 1.0])[:M]  # alpha argmax = 1 at A
    out["mdn_logits"][0, :, 10, 12] = torch.tensor([5.0, 0.0, 0.0])[:M]  # argmax = 0 at B
    out["mdn_sigma"][:] = 1.0
    out["mdn_sigma"][0, :, 4, 5] = 2.0
    if task == "pose":
        out["wh"][0, :, 4, 5] = torch.tensor([4.0, 6.0])
    return out


def test_decode_returns_planted_peaks_boxes_and_components():
    out = planted_maps("det")
    det = dc.decode(out, k=2)
    assert det["classes"][0].tolist() == [1, 0]
    assert torch.allclose(det["centers"][0, 0], torch.tensor([5.25, 4.5]))
    # component 1 of A holds (w, h) = (3, 4): box = centre +- wh / 2
    assert torch.allclose(det["boxes"][0, 0], torch.tensor([5.25 - 1.5, 4.5 - 2, 5.25 + 1.5, 4.5 + 2]))
    assert det["component"][0].tolist() == [1, 0]
    alpha = torch.softmax(torch.tensor([0.0, 2.0, 1.0]), 0)
    assert torch.allclose(det["alpha"][0, 0], alpha[1]) and torch.allclose(det["sigma"][0, 0], torch.tensor([2.0, 2.0]))
    forced = dc.decode(out, k=2, component=2)
    assert forced["component"][0].tolist() == [2, 2]
    assert torch.allclose(forced["boxes"][0, 0, 2:] - forced["boxes"][0, 0, :2], torch.tensor([5.0, 6.0]))
    mean = dc.decode(out, k=2, component="mean")
    wh_mean = (alpha[:, None] * torch.tensor([[1.0, 2], [3, 4], [5, 6]])).sum(0)
    assert torch.allclose(mean["boxes"][0, 0, 2:] - mean["boxes"][0, 0, :2], wh_mean, atol=1e-5)
    with pytest.raises(ValueError):
        dc.decode(out, component=3)


@pytest.mark.parametrize("task", ["det", "pose"])
def test_decode_mixture_is_opt_in_and_is_the_mixture_at_the_peaks(task):
    out = planted_maps(task, K=2, C=1 if task == "pose" else 2)
    det = dc.decode(out, k=2)
    assert not {"mu", "sigma_all", "log_alpha", "peaks"} & set(det)
    full = dc.decode(out, k=2, component=1, mixture=True)
    assert torch.equal(full["peaks"][0], torch.tensor([[5.0, 4.0], [12.0, 10.0]]))   # the integer cells of A, B
    ind = (full["peaks"][..., 1] * 20 + full["peaks"][..., 0]).long()                 # W = 20
    for got, want in zip((full["mu"], full["sigma_all"], full["log_alpha"]), md.mixture_at(out, ind)):
        assert torch.equal(got, want)
    D = 2 if task == "det" else 4
    assert full["mu"].shape == (1, 2, 3, D) and full["sigma_all"].shape == (1, 2, 3, 2)
    assert torch.equal(full["mu"][0, 0, 1], full["mu"][0, 0].new_tensor([3.0, 4] if task == "det" else [5.0, 6, 7, 8]))
    assert all(torch.equal(det[key], full[key]) for key in ("scores", "classes", "centers"))   # same peaks, same order


def test_decode_pose_joints_from_integer_peak():
    out = planted_maps("pose", K=2, C=1)
    det = dc.decode(out, k=2)
    # component 1 at A holds offsets (5, 6, 7, 8): joints = integer peak (5, 4) + offsets
    assert torch.allclose(det["keypoints"][0, 0], torch.tensor([[10.0, 10.0], [12.0, 12.0]]))
    assert torch.allclose(det["boxes"][0, 0], torch.tensor([5.25 - 2, 4.5 - 3, 5.25 + 2, 4.5 + 3]))


def test_base_model_decodes_as_one_component():
    out = planted_maps("det")
    base = {"hm": out["hm"], "reg": out["reg"], "wh": out["wh"][:, :2]}
    det = dc.decode(base, k=2)
    assert det["component"].eq(0).all() and torch.allclose(det["alpha"], torch.ones(1, 2))


def test_refine_snaps_to_near_peaks_only():
    H = W = 32
    kps = torch.tensor([[[[10.0, 10.0], [20.0, 20.0]]]])       # (B=1, k=1, K=2, 2)
    boxes = torch.tensor([[[0.0, 0.0, 30.0, 30.0]]])
    hm_hp = torch.full((1, 2, H, W), -10.0)
    hm_hp[0, 0, 11, 11] = 5.0   # joint 0: peak 1.4 px away -> snap (to cell + 0.5)
    hm_hp[0, 1, 2, 2] = 5.0     # joint 1: peak 25 px away > 0.3 * 30 -> keep
    refined = dc.refine_joints(kps, hm_hp, None, boxes)
    assert torch.allclose(refined[0, 0, 0], torch.tensor([11.5, 11.5]))
    assert torch.allclose(refined[0, 0, 1], torch.tensor([20.0, 20.0]))


def mirror(out, flip_idx):
    """The exact outputs a perfect network gives for the mirrored image."""
    f = lambda t: torch.flip(t, dims=[3])
    m = {k: f(v) for k, v in out.items()}
    B, _, H, W = out["hps"].shape
    K = len(flip_idx)
    hps = f(out["hps"]).view(B, -1, K, 2, H, W)[:, :, flip_idx].clone()
    hps[:, :, :, 0] = 1 - hps[:, :, :, 0]  # offsets start at the cell corner: o -> 1 - o
    m["hps"] = hps.reshape(B, -1, H, W)
    m["hm_hp"] = f(out["hm_hp"])[:, flip_idx]
    return m


def test_flip_merge_of_a_perfect_mirror_is_identity():
    out = random_outputs("pose", 3, num_classes=1, num_joints=4, H=6, W=8, seed=3)
    flip_idx = [1, 0, 3, 2]
    merged = dc.flip_merge(out, mirror(out, flip_idx), flip_idx)
    for name in ("hm", "hps", "wh", "mdn_sigma", "mdn_logits", "hm_hp"):
        assert torch.allclose(merged[name], out[name], atol=1e-4), name


def test_max_filter_equals_max_pool():
    x = torch.randn(2, 5, 9, 13)
    x[0, 0, 3, 3] = x[0, 0, 3, 4]  # ties (plateaus) must behave like max_pool2d too
    assert torch.equal(dc.max_filter3x3(x), F.max_pool2d(x, 3, stride=1, padding=1))


def test_peak_mask_and_topk_peaks():
    heat = torch.zeros(1, 2, 5, 6)
    heat[0, 0, 1, 1], heat[0, 0, 1, 2] = 0.9, 0.5       # 0.5 is next to a higher peak: suppressed
    heat[0, 1, 3, 4] = 0.7
    peaks = dc.peak_mask(heat)
    assert peaks[0, 0, 1, 2] == 0 and peaks[0, 0, 1, 1] == 0.9 and peaks[0, 1, 3, 4] == 0.7
    scores, ind, classes, ys, xs = dc.topk_peaks(peaks, 2)
    assert torch.allclose(scores, torch.tensor([[0.9, 0.7]]))
    assert classes.tolist() == [[0, 1]] and ind.tolist() == [[1 * 6 + 1, 3 * 6 + 4]]
    assert ys.tolist() == [[1.0, 3.0]] and xs.tolist() == [[1.0, 4.0]]


def saturated_blob(H=12, W=12):
    """A confident object: logits 20 at the centre, 17-19 around it (all round to p = 1.0)."""
    out = random_outputs("det", 3, num_classes=1, B=1, H=H, W=W, seed=5)
    out["hm"][:] = -10.0
    out["hm"][0, 0, 4:7, 4:7] = torch.tensor([[17.0, 18, 17], [18, 20, 19], [17, 18, 17]])
    return out


def test_saturated_blob_decodes_once_with_and_without_flip():
    out = saturated_blob()
    assert torch.sigmoid(out["hm"][0, 0, 5, 5]) == torch.sigmoid(out["hm"][0, 0, 5, 6]) == 1.0
    plain = dc.decode(out, k=5)
    mirrored = {k: torch.flip(v, dims=[3]) for k, v in out.items()}
    flipped = dc.decode(dc.flip_merge(out, mirrored), k=5)
    for det in (plain, flipped):
        assert (det["scores"][0] > 0.5).sum() == 1, det["scores"]


def test_mean_probability_logit_is_exact_and_ordered():
    a = torch.tensor([-3.0, 0.0, 2.0, 16.0, 17.0, 30.0, 40.0])
    ref = torch.logit((torch.sigmoid(a.double()) + torch.sigmoid(-a.double() / 2)) / 2)
    merged = dc.mean_probability_logit(a, -a / 2)
    assert torch.allclose(merged.double(), ref, atol=1e-5)
    same = dc.mean_probability_logit(a, a)
    assert torch.allclose(same, a, atol=1e-5) and (same.diff() > 0).all()


def test_refine_distances_are_exact():
    """Joints and joint-heatmap peaks a fraction of a pixel apart near (450, 450) of a 512
    map: cdist's matrix-multiply mode (its default for more than 25 points) is off by up to
    ~0.04 px there and snaps some joints to the second-nearest peak; the exact mode never."""
    g = torch.Generator().manual_seed(0)
    H = W = 512
    n = 30
    hm_hp = torch.full((1, 1, H, W), -10.0)
    hp_offset = torch.zeros(1, 2, H, W)
    cells_x = 100 + 3 * torch.arange(n)                                 # distinct 3x3 peaks on row 100
    hm_hp[0, 0, 100, cells_x] = 5.0
    cand = 450 + torch.rand(n, 2, generator=g) * 0.3                   # all within 0.3 px
    hp_offset[0, 0, 100, cells_x] = cand[:, 0] - cells_x
    hp_offset[0, 1, 100, cells_x] = cand[:, 1] - 100
    kps = (450 + torch.rand(1, n, 1, 2, generator=g) * 0.3)            # (B, k, K=1, 2)
    boxes = torch.tensor([[[0.0, 0.0, W, H]]]).expand(1, n, 4)
    refined = dc.refine_joints(kps, hm_hp, hp_offset, boxes)
    d = (kps[0, :, 0, None, :].double() - cand[None].double()).norm(dim=-1)  # (k, n) exact
    torch.testing.assert_close(refined[0, :, 0], cand[d.argmin(1)], rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- soft-NMS
def test_soft_nms_decays_overlaps_and_keeps_far_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)   # IoU(0, 1) = 9 / 11
    iou = 9 / 11
    keep, scores = dc.soft_nms(boxes, [0.9, 0.8, 0.7], "gaussian", sigma=0.5)
    assert keep.tolist() == [0, 2, 1]
    assert scores == pytest.approx([0.9, 0.7, 0.8 * np.exp(-iou ** 2 / 0.5)])
    keep, scores = dc.soft_nms(boxes, [0.9, 0.8, 0.7], "linear", iou_thresh=0.5)
    assert scores == pytest.approx([0.9, 0.7, 0.8 * (1 - iou)])
    keep, _ = dc.soft_nms(boxes, [0.9, 0.8, 0.7], "linear", min_score=0.2)  # 0.8 * (2 / 11) < 0.2
    assert keep.tolist() == [0, 2]
    assert len(dc.soft_nms(np.zeros((0, 4)), [])[0]) == 0
