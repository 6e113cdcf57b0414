"""Backbones (hourglass.py, dla.py) inside model.MixtureCenterNet: head shapes, parameter counts, initialisation,
invariances (batch vs single, channels_last), a training step, the ImageNet weight
loader and the input-size check. Full-size networks are built once per module and run
at tiny inputs so the file stays under a minute on two CPU cores."""
import copy

import pytest
import torch
import torch.nn.functional as F

from dla import DLA, StemBatchNorm2d, bilinear_, dla34, load_imagenet_weights
from hourglass import StackedHourglass, hourglass_small
from model import HEATMAP_PRIOR_BIAS, ModelConfig, build_model, head_channels


def config(task, arch="small_dla"):
    return ModelConfig(task=task, m=3, arch=arch, num_classes=80 if task == "det" else 1)


def net(arch, task):
    return build_model(config(task, arch))


DET = head_channels(config("det"))     # hm 80, reg, wh 6, mdn_sigma, mdn_logits
POSE = head_channels(config("pose"))   # + hps 102, hm_hp 17, hp_offset
SMALL = {"hourglass_small": "small_hourglass", "dla_small": "small_dla"}


def n_params(params):
    return sum(p.numel() for p in params)


@pytest.fixture(scope="module")
def hg104():
    torch.manual_seed(0)
    return net("hourglass104", "det")


@pytest.fixture(scope="module")
def dla_full():
    torch.manual_seed(0)
    return net("dla34", "pose")


def check_outputs(outputs, heads, n_stacks, B, H, W, stride=4):
    assert isinstance(outputs, list) and len(outputs) == n_stacks
    for out in outputs:
        assert set(out) == set(heads)
        for name, channels in heads.items():
            assert out[name].shape == (B, channels, H // stride, W // stride), name


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("task,heads", [("det", DET), ("pose", POSE)])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_head_shapes(name, task, heads):
    model = net(SMALL[name], task).eval()
    k = model.size_multiple
    stacks = 2 if name.startswith("hourglass") else 1
    with torch.no_grad():
        for H, W in [(2 * k, 2 * k), (k, 3 * k)]:
            check_outputs(model(torch.randn(2, 3, H, W)), heads, stacks, 2, H, W)


def test_hourglass104_shapes(hg104):
    assert (hg104.stride, hg104.size_multiple) == (4, 128)
    with torch.no_grad():
        for H, W in [(128, 128), (128, 256)]:
            check_outputs(hg104.eval()(torch.randn(1, 3, H, W)), DET, 2, 1, H, W)


def test_hourglass104_pose_shapes():
    model = net("hourglass104", "pose").eval()
    with torch.no_grad():
        check_outputs(model(torch.randn(1, 3, 128, 128)), POSE, 2, 1, 128, 128)


def test_dla34_shapes(dla_full):
    assert (dla_full.stride, dla_full.size_multiple) == (4, 32)
    with torch.no_grad():
        for H, W in [(64, 64), (32, 96)]:
            check_outputs(dla_full.eval()(torch.randn(2, 3, H, W)), POSE, 1, 2, H, W)
    det = net("dla34", "det").eval()
    with torch.no_grad():
        check_outputs(det(torch.randn(1, 3, 64, 32)), DET, 1, 1, 64, 32)


def test_small_hourglass_size_multiple_follows_depth():
    model = StackedHourglass(stacks=1, dims=(16, 24, 32), counts=(1, 1, 1))
    assert model.size_multiple == 2 ** (2 + 2)
    with torch.no_grad():
        features = model.eval()(torch.randn(1, 3, 16, 48))
    assert [f.shape for f in features] == [(1, 16, 4, 12)]
    assert hourglass_small().size_multiple == 2 ** (3 + 2)


# ----------------------------------------------------------------------------- parameters
def test_parameter_counts(hg104, dla_full):
    hg_backbone = n_params(hg104.backbone_parameters())
    print(f"\nhourglass104 backbone {hg_backbone:,}, with det heads m=3 {n_params(hg104.parameters()):,}")
    assert abs(hg_backbone - 187.7e6) / 187.7e6 < 0.01
    dla_backbone = n_params(dla_full.backbone_parameters())
    imagenet = n_params(dla_full.backbone.base.parameters()) + 512 * 1000 + 1000  # + the classifier
    print(f"dla34 backbone + neck {dla_backbone:,}, ImageNet DLA-34 with classifier {imagenet:,}")
    assert imagenet == 15_742_104       # DLA-34 as published: 15.7M
    assert dla_backbone == 18_529_712   # the DCN neck adds offset branches: ~20M officially


def test_small_presets_are_small():
    for name, build in SMALL.items():
        n = n_params(net(build, "det").backbone_parameters())
        print(f"\n{name} backbone {n:,}")
        assert 0.2e6 < n < 3e6, name


# ----------------------------------------------------------------------------- init
@pytest.mark.parametrize("name", sorted(SMALL))
def test_head_bias_init(name):
    model = net(SMALL[name], "pose")
    for heads in model.heads:
        for head_name, head in heads.items():
            expected = HEATMAP_PRIOR_BIAS if head_name in ("hm", "hm_hp") else 0.0
            assert torch.all(head[-1].bias == expected), head_name
    assert HEATMAP_PRIOR_BIAS == pytest.approx(-2.19)


def test_dla_upsampling_starts_bilinear():
    # The interior of a bilinear-initialised transposed conv is bilinear interpolation.
    x = torch.randn(1, 3, 8, 8)
    for f in (2, 4):
        up = torch.nn.ConvTranspose2d(3, 3, 2 * f, stride=f, padding=f // 2, groups=3, bias=False)
        bilinear_(up)
        ref = F.interpolate(x, scale_factor=f, mode="bilinear", align_corners=False)
        b = f // 2
        torch.testing.assert_close(up(x)[..., b:-b, b:-b], ref[..., b:-b, b:-b])


# ----------------------------------------------------------------------------- invariances
def run(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_batch_equals_singles_in_eval(name):
    torch.manual_seed(0)
    model = net(SMALL[name], "pose")
    model(torch.randn(4, 3, 64, 64))  # one train-mode pass so BN running stats are not 0/1
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    both = run(model, x)
    for i in range(2):
        single = run(model, x[i:i + 1])
        for stack_b, stack_s in zip(both, single):
            for k in stack_b:
                torch.testing.assert_close(stack_b[k][i:i + 1], stack_s[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_channels_last_matches(name):
    torch.manual_seed(0)
    model = net(SMALL[name], "det").eval()
    x = torch.randn(2, 3, 64, 64)
    ref = run(model, x)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out = run(cl, x.contiguous(memory_format=torch.channels_last))
    for stack_r, stack_o in zip(ref, out):
        for k in stack_r:
            torch.testing.assert_close(stack_o[k], stack_r[k], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- training step
def check_train_step(model, x):
    model.train()
    model.zero_grad(set_to_none=True)
    outputs = model(x)
    loss = sum(o.pow(2).mean() for out in outputs for o in out.values())
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert n_params([p for p in model.parameters() if p.grad.abs().sum() > 0]) > 0.9 * n_params(model.parameters())


def test_hourglass104_train_step(hg104):
    # Batch 2: at 128 x 128 the innermost map is 1 x 1, and BN needs two values per channel.
    check_train_step(hg104, torch.randn(2, 3, 128, 128))


def test_dla34_train_step(dla_full):
    check_train_step(dla_full, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_train_step(name):
    check_train_step(net(SMALL[name], "pose"), torch.randn(2, 3, 64, 64))


# ----------------------------------------------------------------------------- weights
QUARTER = [4, 8, 16, 32, 64, 128]  # DLA-34 at width 0.25: same keys, small file


def test_imagenet_loader_accepts_official_layout(tmp_path):
    torch.manual_seed(0)
    state = DLA(channels=QUARTER).state_dict()
    # The official file also holds the classifier and the unused projection of the
    # two-level trees; old checkpoints have no BN num_batches_tracked.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state.update({"fc.weight": torch.randn(1000, 128, 1, 1), "fc.bias": torch.randn(1000),
                  "level3.project.0.weight": torch.randn(32, 16, 1, 1)})
    torch.save(state, tmp_path / "dla34.pth")
    model = dla34(width=0.25, weights=tmp_path / "dla34.pth")
    own = model.base.state_dict()
    for k, v in state.items():
        if k in own:
            assert torch.equal(own[k], v), k


def test_imagenet_loader_reports_mismatches(tmp_path):
    state = DLA(channels=QUARTER).state_dict()
    del state["level2.root.conv.weight"]
    state["level9.tree1.conv1.weight"] = torch.zeros(1)
    state["level1.0.weight"] = torch.zeros(8, 4, 5, 5)
    torch.save(state, tmp_path / "bogus.pth")
    with pytest.raises(ValueError) as err:
        load_imagenet_weights(DLA(channels=QUARTER), tmp_path / "bogus.pth")
    msg = str(err.value)
    assert "missing keys: ['level2.root.conv.weight']" in msg
    assert "unexpected keys: ['level9.tree1.conv1.weight']" in msg
    assert "level1.0.weight: file (8, 4, 5, 5) vs model (8, 4, 3, 3)" in msg


# ----------------------------------------------------------------------------- input size
def test_size_multiple_errors(hg104, dla_full):
    with pytest.raises(ValueError, match=r"\(1, 3, 96, 128\).*multiples of 128"):
        hg104(torch.randn(1, 3, 96, 128))
    with pytest.raises(ValueError, match=r"\(1, 3, 64, 48\).*multiples of 32"):
        dla_full(torch.randn(1, 3, 64, 48))
    with pytest.raises(ValueError, match=r"\(1, 3, 48, 64\).*multiples of 32"):
        net("small_hourglass", "det")(torch.randn(1, 3, 48, 64))
    with pytest.raises(ValueError, match=r"\(3, 64, 64\)"):
        net("small_dla", "det")(torch.randn(3, 64, 64))


@pytest.mark.parametrize("channels", [3, 4, 8])
def test_stem_batch_norm_matches_float64(channels):
    """dla.StemBatchNorm2d: a channels_last CPU map of <= 8 channels normalised in the
    contiguous layout: output (channels_last), running statistics and gradients equal a float64
    batch norm to float32 rounding. The channels_last kernel itself misses by 1e-4 to 3e-4
    here (test below), so the comparison fails if the contiguous path is not taken."""
    torch.manual_seed(0)
    x = (torch.randn(16, channels, 128, 128) * 3 + 5).contiguous(memory_format=torch.channels_last)
    bn = StemBatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.normal_(), bn.bias.normal_()
    ref = torch.nn.BatchNorm2d(channels).double()
    ref.load_state_dict(bn.state_dict())
    assert list(bn.state_dict()) == list(torch.nn.BatchNorm2d(channels).state_dict())
    g = torch.randn_like(x)
    x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    y, y64 = bn(x), ref(x64)
    y.backward(g), y64.backward(g.double())
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert (y.double() - y64).abs().max() < 2e-6
    assert (x.grad.double() - x64.grad).abs().max() < 2e-5
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(bn, name).double(), getattr(ref, name), rtol=1e-6, atol=1e-6)
    assert torch.allclose(bn.weight.grad.double(), ref.weight.grad, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("channels", [4, 8])
def test_stem_batch_norm_kernel_gap_is_real(channels):
    """Why StemBatchNorm2d exists: if torch's channels_last kernel ever matches float64 at
    these widths, this fails and the workaround can go."""
    torch.manual_seed(0)
    x = (torch.randn(16, channels, 128, 128) * 3 + 5).contiguous(memory_format=torch.channels_last)
    y64 = torch.nn.BatchNorm2d(channels).double()(x.double())
    assert (torch.nn.BatchNorm2d(channels)(x).double() - y64).abs().max() > 2e-6


def test_stem_batch_norm_leaves_wider_maps_alone():
    """From 16 channels on (and for contiguous maps) it is nn.BatchNorm2d, bit for bit."""
    torch.manual_seed(0)
    for x in (torch.randn(4, 16, 32, 32).contiguous(memory_format=torch.channels_last),
              torch.randn(4, 4, 32, 32)):
        bn, plain = StemBatchNorm2d(x.shape[1]), torch.nn.BatchNorm2d(x.shape[1])
        assert torch.equal(bn(x), plain(x)) and torch.equal(bn.running_var, plain.running_var)


def test_stem_norm_check_reports_the_gap(capsys):
    """`python -m checks.stem_norm`, the command behind StemBatchNorm2d's numbers: one row per
    map, the contiguous kernel within float32 rounding of float64 where channels_last is not."""
    from checks import stem_norm
    rows = stem_norm.main(["--rounds", "1", "--no-step"])
    cl, contig, e_cl, e_contig = rows[(16, 4, 128, 128)]
    assert e_contig < 2e-6 < e_cl and cl > 0 and contig > 0
    assert "(16, 4, 128, 128)" in capsys.readouterr().out
