"""util/muon.py: the Newton-Schulz steps against torch's iteration in float64 (the oracle), ConvMuon
against torch.optim.Muon, the parameter split, resume."""
import copy

import pytest
import torch

from model import ModelConfig, build_model
from util.muon import NS_COEFFICIENTS, ConvMuon, MuonAdam, is_hidden_conv, orthogonalise


def run(opt_cls, param, grads, **kw):
    opt = opt_cls([param], **kw)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    return param.detach()


def torch_iteration(G, steps=5):
    """torch.optim.Muon's Newton-Schulz iteration on one matrix, in float64: the oracle."""
    a, b, c = NS_COEFFICIENTS
    X = G.double()
    tall = X.size(0) > X.size(1)
    X = X.T if tall else X
    X = X / X.norm()
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (16, 16), (32, 288), (1, 5)])
def test_gram_form_is_torchs_iteration(shape):
    torch.manual_seed(0)
    G = torch.randn(shape, dtype=torch.float64) * torch.logspace(0, -3, shape[1], dtype=torch.float64)
    ref = torch_iteration(G)
    assert torch.allclose(orthogonalise(G), ref, rtol=0, atol=1e-10)            # exact arithmetic: equal
    # float32: the Gram matrix squares the condition number, so this G (singular values over
    # three decades) keeps ~3 digits when square, ~5 when wide; torch's bfloat16 keeps ~2
    atol = 1e-3 if max(shape) < 2 * min(shape) else 2e-5
    assert torch.allclose(orthogonalise(G.float()).double(), ref, rtol=0, atol=atol)


def test_newton_schulz_makes_a_matrix_near_orthogonal():
    torch.manual_seed(2)
    s = torch.linalg.svdvals(orthogonalise(torch.randn(32, 288)))
    assert 0.5 < s.min() and s.max() < 1.3             # torch's quintic: singular values in ~(0.7, 1.2)


def test_a_stack_is_each_matrix_alone():
    torch.manual_seed(1)
    G = torch.randn(5, 12, 40)
    stacked = orthogonalise(G)
    for i in range(5):
        assert torch.allclose(stacked[i], orthogonalise(G[i]), rtol=0, atol=1e-6)
    assert torch.allclose(orthogonalise(G.mT), stacked.mT, rtol=0, atol=1e-6)   # the tall side


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (64, 576)])
def test_conv_muon_steps_as_torch_muon(shape):
    """The same update rule as torch.optim.Muon (momentum, Nesterov, scale, weight decay); torch
    runs its Newton-Schulz steps in bfloat16 (8 significant bits), so the updates agree to ~1 %."""
    torch.manual_seed(0)
    w, grads = torch.randn(shape), [torch.randn(shape) for _ in range(4)]
    ours = run(ConvMuon, torch.nn.Parameter(w.clone()), grads, lr=0.01, weight_decay=0.1)
    theirs = run(torch.optim.Muon, torch.nn.Parameter(w.clone()), grads, lr=0.01, weight_decay=0.1,
                 adjust_lr_fn="match_rms_adamw")
    assert not torch.equal(ours, w)
    assert (ours - theirs).norm() < 0.02 * (theirs - w).norm()


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_weight_moves_as_its_flattened_matrix(channels_last):
    torch.manual_seed(1)
    w = torch.randn(6, 4, 3, 3)
    grads = [torch.randn(6, 4, 3, 3) for _ in range(3)]
    p = torch.nn.Parameter(w.clone().contiguous(memory_format=torch.channels_last) if channels_last else w.clone())
    ours = run(ConvMuon, p, grads, lr=0.01)
    flat = run(ConvMuon, torch.nn.Parameter(w.reshape(6, -1).clone()), [g.reshape(6, -1) for g in grads], lr=0.01)
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
