"""util/muon.py: ConvMuon against torch.optim.Muon (the oracle), the parameter split, resume."""
import copy

import pytest
import torch

from model import ModelConfig, build_model
from util.muon import ConvMuon, MuonAdam, is_hidden_conv


def run(opt_cls, param, grads, **kw):
    opt = opt_cls([param], **kw)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    return param.detach()


@pytest.mark.parametrize("shape", [(8, 20), (20, 8)])
def test_conv_muon_is_torch_muon_on_a_matrix(shape):
    torch.manual_seed(0)
    w, grads = torch.randn(shape), [torch.randn(shape) for _ in range(4)]
    ours = run(ConvMuon, torch.nn.Parameter(w.clone()), grads, lr=0.01, weight_decay=0.1)
    theirs = run(torch.optim.Muon, torch.nn.Parameter(w.clone()), grads, lr=0.01, weight_decay=0.1,
                 adjust_lr_fn="match_rms_adamw")
    assert not torch.equal(ours, w)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_weight_moves_as_its_flattened_matrix(channels_last):
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3)
    grads = [torch.randn(6, 4, 3, 3) for _ in range(3)]
    p = torch.nn.Parameter(w.clone().contiguous(memory_format=torch.channels_last) if channels_last else w.clone())
    ours = run(ConvMuon, p, grads, lr=0.01)
    flat = run(torch.optim.Muon, torch.nn.Parameter(w.reshape(6, -1).clone()), [g.reshape(6, -1) for g in grads],
               lr=0.01, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    assert torch.equal(ours.reshape(6, -1), flat)


def test_refuses_vectors():
    with pytest.raises(ValueError, match="2 or more dimensions"):
        ConvMuon([torch.nn.Parameter(torch.zeros(5))])


def small_pose_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(task="pose", m=3, arch="small_dla", num_joints=17))


def test_split_takes_hidden_convolutions_only():
    named = dict(small_pose_model().named_parameters())
    muon = {n for n, p in named.items() if is_hidden_conv(n, p)}
    assert "backbone.base.level1.0.weight" in muon and "heads.0.hps.0.weight" in muon
    assert "backbone.base.base_layer.0.weight" not in muon                 # the first layer: 3 input channels
    assert not any(n.endswith(".bias") or named[n].ndim < 4 for n in muon)
    assert not any(named[n].shape[1] == 1 for n in muon)                    # depthwise up-sampling
    assert not any(n.startswith("heads.") and n.endswith(".2.weight") for n in muon)   # the outputs


def step(model, opt, seed):
    torch.manual_seed(seed)
    out = model(torch.randn(2, 3, 64, 64))[-1]
    loss = sum((v.float() ** 2).mean() for v in out.values())
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_state_dict_round_trip_continues_identically():
    a = small_pose_model()
    opt_a = MuonAdam(a, lr=1e-3)
    for s in range(2):
        step(a, opt_a, s)
    b = copy.deepcopy(a)
    opt_b = MuonAdam(b, lr=1e-3)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert len(opt_a.state_dict()["state"]) == sum(1 for p in a.parameters() if p.grad is not None)
    step(a, opt_a, 5)
    step(b, opt_b, 5)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n
    fresh = copy.deepcopy(a)
    step(fresh, MuonAdam(fresh, lr=1e-3), 6)      # without the momentum the same step differs
    step(a, opt_a, 6)
    hidden = "backbone.base.level1.0.weight"       # a Muon weight
    assert not torch.equal(dict(fresh.named_parameters())[hidden], dict(a.named_parameters())[hidden])
