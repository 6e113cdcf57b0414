"""precision.py: what --precision auto picks, and that bf16 autocast + channels_last is the
same training as fp32 (one step's losses and the next step's within a stated tolerance)."""
import copy

import pytest
import torch

import annotations as an
import mdn_dense as md
from util import precision as px
from coco_data import CocoDataset
from model import ModelConfig, build_model
from synthetic_coco import make_dataset


def test_auto_is_fp32_on_the_cpu_and_native_bf16_is_detected(tmp_path):
    (tmp_path / "with").write_text("flags\t: fpu sse avx512f avx512_bf16 amx_tile\n")
    (tmp_path / "without").write_text("flags\t: fpu sse avx2 avx512f avx512bw\n")
    assert px.cpu_has_native_bf16(tmp_path / "with") and not px.cpu_has_native_bf16(tmp_path / "without")
    assert not px.cpu_has_native_bf16(tmp_path / "missing")
    cpu = torch.device("cpu")
    assert px.resolve("auto", cpu) == "fp32"          # bf16 on the CPU is opt-in (precision.py's docstring)
    assert px.resolve("fp32", cpu) == "fp32" and px.resolve("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        px.resolve("fp16", cpu)


@pytest.mark.parametrize("task", ["pose", "det"])
def test_one_step_in_bf16_matches_fp32(task, tmp_path):
    """bf16 autocast changes the total loss, and the loss after one Adam step, by well under
    a percent (bf16 keeps 8 bits of mantissa); 2 % leaves room for that and catches a loss
    computed in bf16 or a head left in the wrong precision."""
    ann, images = make_dataset(tmp_path, task, "train", 8)
    ds = CocoDataset(ann, images, task, train=True, input_size=128)
    torch.manual_seed(0)
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    torch.manual_seed(0)
    net = build_model(ModelConfig(task=task, m=3, num_classes=ds.num_classes, sigma_floor=9.0 if task == "pose" else 1.0))
    kpt = an.COCO_PERSON_SIGMAS if task == "pose" else None
    losses = {}
    for prec in ("fp32", "bf16"):
        model = copy.deepcopy(net).to(memory_format=px.memory_format(prec)).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = batch["input"].contiguous(memory_format=px.memory_format(prec))
        seen = []
        for _ in range(2):
            with px.autocast(torch.device("cpu"), prec):
                out = model(x)
            loss, parts = md.total_loss(out, batch, kpt_scale=kpt)
            assert loss.dtype == torch.float32
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen.append(loss.item())
        losses[prec] = seen
    rel = [abs(b - a) / abs(a) for a, b in zip(losses["fp32"], losses["bf16"])]
    print(f"\n{task}: fp32 {losses['fp32']}, bf16 {losses['bf16']}, relative {rel}")
    assert max(rel) < 0.02, losses


def test_heads_emit_float32_under_bf16_autocast():
    """The last 1x1 conv of every head runs in float32 (model.Heads): under bf16 the joint
    offsets would be rounded to 1/8 px at 30 px, against per-joint stds below a pixel."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(task="pose", m=3)).eval()
    torch.nn.init.constant_(net.heads[0]["hps"][2].bias, 29.99)       # offsets near 30 px
    with torch.no_grad(), px.autocast(torch.device("cpu"), "bf16"):
        out = net(torch.randn(1, 3, 64, 64))[-1]
    assert all(v.dtype == torch.float32 for v in out.values()), {k: v.dtype for k, v in out.items()}
    hps = out["hps"]
    assert (hps - hps.to(torch.bfloat16).float()).abs().max() > 1e-3   # finer than bf16 can hold there


def test_fp32_trains_in_channels_last_and_the_layout_does_not_change_a_step(tmp_path):
    """channels_last is only a layout: an fp32 train step's loss and gradients are the
    contiguous layout's up to float rounding (other kernels, other summation order). The
    early layers' gradients amplify rounding (batch statistics over 4 images): an input
    scaled by 1 + 1e-7 moves them by about 2 % in norm, so that is the tolerance, where a
    wrong layout would be off by order 1."""
    assert px.memory_format("fp32") == torch.channels_last
    ann, images = make_dataset(tmp_path, "pose", "train", 4)
    ds = CocoDataset(ann, images, "pose", train=True, input_size=64)
    torch.manual_seed(0)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    torch.manual_seed(0)
    net = build_model(ModelConfig(task="pose", m=3, sigma_floor=9.0)).train()
    runs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = copy.deepcopy(net).to(memory_format=fmt)
        loss, _ = md.total_loss(model(batch["input"].contiguous(memory_format=fmt)), batch, kpt_scale=an.COCO_PERSON_SIGMAS)
        loss.backward()
        runs.append((loss.item(), {k: p.grad for k, p in model.named_parameters()}))
    (a, ga), (b, gb) = runs
    assert a == pytest.approx(b, rel=1e-5)
    for k in ga:
        assert (ga[k] - gb[k]).norm() <= 0.05 * ga[k].norm(), k


def fresh_mdn3_and_batch(task, tmp_path):
    """A fresh MDN_3 small_dla in train mode, 4 synthetic training images as one batch (the
    evaluation transform) and the task's k_j: what the gradient analyses take."""
    ann, images = make_dataset(tmp_path, task, "train", 4)
    ds = CocoDataset(ann, images, task, train=False, input_size=128)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    torch.manual_seed(0)
    net = build_model(ModelConfig(task=task, m=3, num_classes=ds.num_classes, sigma_floor=9.0 if task == "pose" else 1.0))
    return net.train(), batch, an.COCO_PERSON_SIGMAS if task == "pose" else None


@pytest.mark.parametrize("task", ["pose", "det"])
def test_bf16_gradient_parts_add_up_to_the_training_gradient(task, tmp_path):
    """analysis.bf16_gradients: the weighted parts' backbone gradients sum to the gradient of
    md.total_loss (the λ of Eq. 6 as training uses them); in float32 the comparison with
    itself is exact, under bf16 it is not."""
    from analysis import bf16_gradients as bg
    net, batch, kpt = fresh_mdn3_and_batch(task, tmp_path)
    net = net.to(memory_format=torch.channels_last)
    parts = bg.part_gradients(net, batch, kpt, bf16=False)
    loss, _ = md.total_loss(net(batch["input"].contiguous(memory_format=torch.channels_last)), batch, kpt_scale=kpt)
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(loss, net.backbone_parameters())])
    # the same sums in another order: float32 rounding of a vector whose norm is in the hundreds
    assert ((parts["total"] - exact).norm() / exact.norm()).item() < 1e-5
    assert torch.equal(parts["hm"], bg.part_gradients(net, batch, kpt, bf16=False)["hm"])
    rows = bg.compare(net, batch, kpt)
    assert set(rows) == set(parts) and all(0 < err and -1 <= cos <= 1 for _, err, cos in rows.values())


@pytest.mark.parametrize("task", ["pose", "det"])
def test_gate_and_mean_paths_add_up_to_the_mixture_gradient(task, tmp_path):
    """analysis.gate_gradient: the backbone gradients through the gate and through mu and
    sigma sum to the whole gradient of λ * Eq. (5); --gate-grad k multiplies the gate's path
    by k and leaves the other as it is."""
    from analysis import gate_gradient as gg
    net, batch, kpt = fresh_mdn3_and_batch(task, tmp_path)
    paths = gg.path_gradients(net, batch, kpt)
    part = md.REGRESSION_KEY[task]
    loss = md.LossWeights().lambdas(mixture=True)[part] * md.mixture_loss(net(batch["input"])[0], batch, kpt)
    whole = torch.cat([g.flatten() for g in torch.autograd.grad(loss, net.backbone_parameters(), allow_unused=True)
                       if g is not None])
    both = paths["gate"] + paths["means and sigmas"]
    assert paths["gate"].norm() > 0 and ((both - whole).norm() / whole.norm()).item() < 1e-5
    scaled = gg.path_gradients(net, batch, kpt, md.LossWeights(gate_grad=10.0))
    # float32 rounding of a sum over the whole network, relative to the vector's norm
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    assert rel(scaled["gate"], 10 * paths["gate"]) < 1e-5
    assert rel(scaled["means and sigmas"], paths["means and sigmas"]) < 1e-5
