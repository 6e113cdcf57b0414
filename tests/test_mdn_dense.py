"""Oracle and invariance tests for mdn_dense.py (the mixture math and the losses).

The tests of the two graded activation / loss functions come first, sigma_activation then
mdn_nll. Each depends on its own function alone and fails for one of that function's typical
mistakes with a message that names it (the course grader's own checks, course/checks.py,
judge the same behaviour in a sandbox; tests/test_assignments.py plants the mistakes there).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import annotations as an
import mdn_dense as md
from support import random_outputs


# ----------------------------------------------------------------------------- sigma_activation
def elu_plus_one(x, floor):
    """§4.2 written out for one number: ELU(x) + 1 is x + 1 for x >= 0 and exp(x) below."""
    return (x + 1 if x >= 0 else math.exp(x)) + floor


@pytest.mark.parametrize("floor", [0.0, 1.0, 9.0])
def test_sigma_activation_matches_elu_plus_one_plus_floor(floor):
    # the telling points first: 0 (exactly 1 + floor), then x > 0 where ELU + 1 is linear
    x = torch.tensor([0.0, 3.0, 0.5, 50.0, -0.25, -1.0, -6.0], dtype=torch.float64)
    got = md.sigma_activation(x, floor)
    for xi, gi in zip(x.tolist(), got.tolist()):
        want = elu_plus_one(xi, floor)
        assert math.isclose(gi, want, rel_tol=1e-6), (
            f"sigma_activation(x={xi}, floor={floor}) = {gi:.6g}, expected ELU(x) + 1 + floor = {want:.6g} "
            "(x + 1 + floor for x >= 0, linear, not exp or softplus; exp(x) + floor for x < 0)")


def test_sigma_activation_stays_above_floor():
    for floor in (1.0, 9.0):
        sigma = md.sigma_activation(torch.linspace(-8, 1e3, 1001), floor)
        assert (sigma > floor).all(), (
            f"floor={floor}: sigma reaches {sigma.min().item():.4g}, not above the floor (add it to ELU(x) + 1)")
        # float32 saturation: ELU(-1e3) + 1 is exactly 0, so sigma reaches the floor itself
        sigma = md.sigma_activation(torch.tensor([-1e3, -1e4]), floor)
        assert (sigma >= floor).all(), f"floor={floor}: sigma at x = -1e3, -1e4 is {sigma.tolist()}, below the floor"
    with pytest.raises(ValueError, match="sigma floor must be >= 0"):
        md.sigma_activation(torch.zeros(1), -1.0)


def test_sigma_activation_clamps_at_1e_4_for_floor_zero():
    """With floor = 0, ELU(-1e3) + 1 is exactly 0 in float32: the clamp at 1e-4 (the official
    code's) keeps log sigma, 1 / sigma and their gradients finite, under bf16 autocast too."""
    raw = torch.tensor([-1e4, -1e3, -200.0, -20.0], requires_grad=True)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            sigma = md.sigma_activation(raw, floor=0.0)
        where = f"(autocast={autocast}, x = {raw.tolist()})"
        assert (sigma >= 1e-4).all(), (
            f"floor=0: sigma = {sigma.tolist()} {where}; clamp it from below at 1e-4, ELU(x) + 1 underflows to 0")
        assert torch.allclose(sigma.float(), torch.full((4,), 1e-4), rtol=1e-2), (
            f"floor=0: sigma = {sigma.tolist()} {where}; where ELU(x) + 1 < 1e-4 sigma is the clamp, 1e-4")
        log_sigma = sigma.float().log()
        grad, = torch.autograd.grad(log_sigma.sum(), raw)
        assert torch.isfinite(log_sigma).all() and torch.isfinite(grad).all(), (
            f"floor=0: log sigma = {log_sigma.tolist()}, its gradient {grad.tolist()} {where}")


# ----------------------------------------------------------------------------- mdn_nll
def random_mixture(N=6, M=3, K=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = 2 * K
    target = torch.randn(N, D, generator=g, dtype=dtype) * 5
    mu = target[:, None, :] + torch.randn(N, M, D, generator=g, dtype=dtype) * 3
    sigma = torch.rand(N, M, 2, generator=g, dtype=dtype) * 2 + 0.3
    log_alpha = F.log_softmax(torch.randn(N, M, generator=g, dtype=dtype), dim=1)
    mask = (torch.rand(N, K, generator=g) > 0.3).to(dtype).repeat_interleave(2, dim=1)
    mask[0] = 0  # an instance with no visible joint
    kpt_scale = torch.rand(K, generator=g, dtype=dtype) + 0.2
    return target, mu, sigma, log_alpha, mask, kpt_scale


def test_mdn_nll_matches_torch_distributions():
    """The main check, one instance at a time: -log p of a MixtureSameFamily of independent
    Normals over the instance's visible dims, dim d of joint d // 2 on axis d % 2 having the
    std sigma[m, d % 2] * k[d // 2] (the docstring's definition)."""
    target, mu, sigma, log_alpha, mask, k = random_mixture()
    ours = md.mdn_nll(target, mu, sigma, log_alpha, mask, k)
    assert ours.shape == (6,) and ours.dtype == torch.float64, f"shape {tuple(ours.shape)}, {ours.dtype}"
    assert ours[0] == 0, f"instance 0 has no visible dim: its NLL must be 0, got {ours[0].item():.6g}"
    for i in range(1, len(target)):
        vis = [d for d in range(target.shape[1]) if mask[i, d]]
        std = torch.stack([sigma[i, :, d % 2] * k[d // 2] for d in vis], dim=-1)  # (M, c)
        mix = MixtureSameFamily(Categorical(logits=log_alpha[i]), Independent(Normal(mu[i][:, vis], std), 1))
        ref = -mix.log_prob(target[i, vis])
        assert abs(ours[i] - ref) < 1e-5, (
            f"instance {i} ({len(vis)} of {target.shape[1]} dims visible): mdn_nll gives {ours[i].item():.6f}, "
            f"torch.distributions {ref.item():.6f}")


def test_mdn_nll_detection_shape_without_mask_or_scale():
    # D = 2 (a box's w, h): the std of each axis is sigma itself; no mask, no k_j
    target, mu, sigma, log_alpha, _, _ = random_mixture(K=1)
    ours = md.mdn_nll(target, mu, sigma, log_alpha)
    ref = -MixtureSameFamily(Categorical(logits=log_alpha), Independent(Normal(mu, sigma), 1)).log_prob(target)
    assert (ours - ref).abs().max() < 1e-5, f"mask=None, kpt_scale=None: {ours.tolist()} vs torch.distributions {ref.tolist()}"


def test_mdn_nll_ignores_masked_dims():
    target, mu, sigma, log_alpha, mask, k = random_mixture()
    base = md.mdn_nll(target, mu, sigma, log_alpha, mask, k)
    far = 1e3 * (1 - mask)                                             # moves masked dims only
    moved = md.mdn_nll(target + far, mu - far[:, None, :], sigma, log_alpha, mask, k)
    assert (moved - base).abs().max() < 1e-9, (
        f"moving masked dims (mask = 0) changed the NLL by up to {(moved - base).abs().max().item():.3g}: "
        "every per-dim term must be multiplied by the mask before the sum over D")


def test_mdn_nll_counts_only_visible_dims_in_c():
    # One component centred on the target, std 1: the NLL is the normaliser alone,
    # c/2 log(2 pi) with c the number of visible dims (Eq. 2)
    c = torch.tensor([2.0, 6.0, 8.0], dtype=torch.float64)
    mask = (torch.arange(8)[None, :] < c[:, None]).to(torch.float64)  # (3, D = 8)
    got = md.mdn_nll(torch.zeros(3, 8, dtype=torch.float64), torch.zeros(3, 1, 8, dtype=torch.float64),
                     torch.ones(3, 1, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64),
                     mask, torch.ones(4, dtype=torch.float64))
    want = c / 2 * math.log(2 * math.pi)
    assert (got - want).abs().max() < 1e-10, (
        f"at the mean with std 1 and c = 2, 6, 8 visible dims: got {got.tolist()}, expected c/2 log(2 pi) = "
        f"{want.tolist()}; c counts the visible dims only")


def test_mdn_nll_divides_residuals_by_sigma_times_kpt_scale():
    # A residual of one std, sigma[axis] * k_j, on every dim: the squared term of Eq. (4) adds 1/2 per dim
    k = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    sigma = torch.tensor([[[1.5, 3.0]]], dtype=torch.float64)          # (N=1, M=1, 2)
    std = torch.tensor([[0.75, 1.5, 3.0, 6.0, 6.0, 12.0]], dtype=torch.float64)  # x0 y0 x1 y1 x2 y2
    mu, log_alpha = torch.zeros(1, 1, 6, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    rise = md.mdn_nll(std, mu, sigma, log_alpha, kpt_scale=k) - md.mdn_nll(0 * std, mu, sigma, log_alpha, kpt_scale=k)
    assert abs(rise.item() - 3.0) < 1e-10, (
        f"moving the target one std (sigma_axis * k_j) from mu on each of 6 dims raised the NLL by {rise.item():.6g}, "
        "expected 6 / 2 = 3: divide each residual by sigma times its joint's k_j")


def test_mdn_nll_keeps_log_kpt_scale_term():
    # Halving every k_j halves every std: the density of a 2K-dim Gaussian at its mean
    # rises by 2K*log 2, so the NLL drops by exactly that (the official code drops it).
    target, mu, sigma, log_alpha, _, k = random_mixture(N=1, M=1, K=3)
    mu = target[:, None, :].clone()
    diff = md.mdn_nll(target, mu, sigma, log_alpha, kpt_scale=k) - md.mdn_nll(target, mu, sigma, log_alpha, kpt_scale=k / 2)
    assert torch.allclose(diff, torch.tensor([6 * math.log(2)], dtype=torch.float64)), (
        f"halving every k_j lowered the NLL at the mean by {diff.item():.6g}, expected 6 log 2 = {6 * math.log(2):.6g}: "
        "the std is sigma * k_j in the log-normaliser too (the -sum log k_j term of Eq. 4)")


def test_mdn_nll_combines_components_with_log_sum_exp():
    # M identical components are one Gaussian whatever the alphas: Eq. (5) is
    # -log sum_m alpha_m phi_m, i.e. -logsumexp(log_alpha + log_phi), not a mean over m
    target, mu, sigma, _, _, _ = random_mixture(N=4, M=1, K=1)
    one = md.mdn_nll(target, mu, sigma, torch.zeros(4, 1, dtype=torch.float64))
    log_alpha = torch.log(torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)).repeat(4, 1)
    three = md.mdn_nll(target, mu.repeat(1, 3, 1), sigma.repeat(1, 3, 1), log_alpha)
    assert (three - one).abs().max() < 1e-10, (
        f"three copies of one Gaussian with alphas 0.7, 0.2, 0.1 gave {three.tolist()}, one Gaussian {one.tolist()}: "
        "combine components with logsumexp(log_alpha + log_phi)")


def test_mdn_nll_single_component_is_a_gaussian_nll():
    target, mu, sigma, _, _, _ = random_mixture(M=1, K=1)
    ours = md.mdn_nll(target, mu, sigma, torch.zeros(len(target), 1, dtype=torch.float64))
    ref = -Normal(mu[:, 0], sigma[:, 0]).log_prob(target).sum(-1)
    assert (ours - ref).abs().max() < 1e-10, f"one component: {ours.tolist()} vs the Gaussian NLL {ref.tolist()}"


def test_mdn_nll_gradcheck():
    target, mu, sigma, log_alpha, mask, k = random_mixture(N=3, M=2, K=2)
    mu.requires_grad_(); sigma.requires_grad_(); log_alpha.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: md.mdn_nll(target, a, b, c, mask, k), (mu, sigma, log_alpha))


@pytest.mark.parametrize("autocast", [False, True])
def test_mdn_nll_is_finite_for_extreme_inputs(autocast):
    """Residuals of 1e4 output pixels at sigma = 1e-4 (the clamp of sigma_activation), alphas
    of 1 and 0, an all-masked instance, under bf16 autocast: the value and the gradients
    stay finite (log-sum-exp, float32). sigma is built directly: mdn_nll alone is tested."""
    N, M, K = 5, 3, 17
    logits = torch.tensor([1e4, -1e4, 0.0]).repeat(N, 1).requires_grad_()
    sigma = torch.tensor([1e-4, 1e3]).repeat(N, M, 1).requires_grad_()
    mu = torch.zeros(N, M, 2 * K, requires_grad=True)
    target = torch.full((N, 2 * K), 1e4)
    mask = torch.ones(N, 2 * K)
    mask[1] = 0  # an all-masked instance
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        nll = md.mdn_nll(target, mu, sigma, F.log_softmax(logits.float(), dim=1), mask, an.COCO_PERSON_SIGMAS)
        loss = nll.sum()
    assert nll.dtype == torch.float32, f"autocast={autocast}: the NLL is {nll.dtype}, compute it in float32"
    assert torch.isfinite(nll).all(), f"autocast={autocast}: NLL {nll.tolist()}; use log-sum-exp, not log(sum(exp))"
    loss.backward()
    for name, t in (("logits", logits), ("sigma", sigma), ("mu", mu)):
        assert torch.isfinite(t.grad).all(), f"autocast={autocast}: the gradient for {name} is not finite"


def test_mdn_nll_kpt_scale_wrong_length_is_a_clear_error():
    target, mu, sigma, log_alpha, mask, _ = random_mixture(K=4)
    with pytest.raises(ValueError, match="kpt_scale has 3 entries, expected D/2 = 4"):
        md.mdn_nll(target, mu, sigma, log_alpha, mask, torch.ones(3))


# ----------------------------------------------------------------------------- losses, heads, decoding
def slow_focal(logits, gt):
    pos_sum, neg_sum, n_pos = 0.0, 0.0, 0
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in logits.shape]):
        p = min(max(torch.sigmoid(logits[tuple(idx)]).item(), 1e-4), 1 - 1e-4)
        y = gt[tuple(idx)].item()
        if y == 1:
            pos_sum += math.log(p) * (1 - p) ** 2
            n_pos += 1
        else:
            neg_sum += math.log(1 - p) * p ** 2 * (1 - y) ** 4
    return -(pos_sum + neg_sum) / max(n_pos, 1)


def test_focal_loss_matches_slow_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 6, generator=g) * 3
    gt = torch.rand(2, 3, 5, 6, generator=g) * 0.9
    gt[0, 1, 2, 3] = gt[1, 2, 4, 5] = gt[1, 0, 0, 0] = 1.0
    assert abs(md.focal_loss(logits, gt).item() - slow_focal(logits, gt)) < 1e-4
    gt_empty = torch.zeros_like(gt)
    empty = md.focal_loss(logits, gt_empty)
    assert torch.isfinite(empty) and abs(empty.item() - slow_focal(logits, gt_empty)) < 1e-4


def test_focal_loss_finite_in_bf16_with_confident_logits():
    logits = torch.full((1, 1, 4, 4), 30.0, requires_grad=True)
    gt = torch.zeros(1, 1, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = md.focal_loss(logits.to(torch.bfloat16), gt)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def two_object_batch(task="pose", K=2, H=8, W=8):
    N = 4
    batch = {"hm": torch.zeros(1, 1, H, W), "ind": torch.tensor([[9, 30, 0, 0]]),
             "mask": torch.tensor([[1.0, 1, 0, 0]]), "reg": torch.rand(1, N, 2),
             "wh": torch.rand(1, N, 2) * 4, "hps": torch.randn(1, N, 2 * K),
             "hps_mask": torch.ones(1, N, 2 * K), "hm_hp": torch.zeros(1, K, H, W),
             "hp_ind": torch.zeros(1, N * K, dtype=torch.long), "hp_mask": torch.zeros(1, N * K),
             "hp_offset": torch.zeros(1, N * K, 2)}
    batch["hm"][0, 0, 1, 1] = batch["hm"][0, 0, 3, 6] = 1.0
    return batch


def test_total_loss_averages_stacks_and_counts_every_stack():
    out_a = random_outputs("pose", 3, num_classes=1, num_joints=2, B=1, H=8, W=8, seed=0)
    out_b = random_outputs("pose", 3, num_classes=1, num_joints=2, B=1, H=8, W=8, seed=1)
    batch = two_object_batch()
    la, pa = md.total_loss([out_a], batch)
    lb, pb = md.total_loss([out_b], batch)
    lab, pab = md.total_loss([out_a, out_b], batch)
    assert torch.allclose(lab, (la + lb) / 2)
    assert abs(pab["hps"] - (pa["hps"] + pb["hps"]) / 2) < 1e-5
    assert set(pa) == {"hm", "reg", "wh", "hps", "hm_hp", "hp_offset"}
    # weights of Eq. (6): hps counts with 0.1 for the mixture
    expected = pa["hm"] + pa["reg"] + 0.1 * pa["wh"] + 0.1 * pa["hps"] + pa["hm_hp"] + pa["hp_offset"]
    assert abs(la.item() - expected) < 1e-4


def test_l1_base_weighs_hps_by_one():
    out = random_outputs("pose", 0, num_classes=1, num_joints=2, B=1, H=8, W=8)
    loss, p = md.total_loss([out], two_object_batch())
    expected = p["hm"] + p["reg"] + 0.1 * p["wh"] + 1.0 * p["hps"] + p["hm_hp"] + p["hp_offset"]
    assert abs(loss.item() - expected) < 1e-4


def per_object_nll(out, batch, kpt_scale=None):
    mu, sigma, la = md.mixture_params(out)
    ind = batch["ind"][0, :2]
    target = batch["wh" if "wh" == md.REGRESSION_KEY[md.task_of(out)] else "hps"][0, :2]
    mask = None if md.task_of(out) == "det" else batch["hps_mask"][0, :2]
    return md.mdn_nll(target, mu.flatten(3)[0, :, :, ind].permute(2, 0, 1),
                      sigma.flatten(3)[0, :, :, ind].permute(2, 0, 1), la.flatten(2)[0, :, ind].T, mask, kpt_scale)


def test_mixture_loss_normalised_by_one_plus_objects():
    out = random_outputs("det", 2, num_classes=1, B=1, H=8, W=8)
    batch = two_object_batch("det")
    assert torch.allclose(md.mixture_loss(out, batch), per_object_nll(out, batch).sum() / 3)


def test_pose_mixture_loss_counts_persons_with_visible_joints():
    """The official pose normalisation: 1 + persons with at least one visible joint. One
    person with 3 visible joints and one with none: the sum / 2, not / 3."""
    out = random_outputs("pose", 3, num_classes=1, num_joints=4, B=1, H=8, W=8)
    batch = two_object_batch("pose", K=4)
    batch["hps_mask"][0, 0] = torch.tensor([1.0, 1, 1, 1, 1, 1, 0, 0])   # 3 joints visible
    batch["hps_mask"][0, 1] = 0                                          # none visible
    nll = per_object_nll(out, batch)
    assert nll[1] == 0
    assert torch.allclose(md.mixture_loss(out, batch), nll.sum() / 2)


@pytest.mark.parametrize("task,m", [("det", 0), ("det", 3), ("pose", 2)])
def test_mixture_at_equals_dense_maps_gathered(task, m):
    out = random_outputs(task, m, num_classes=3, num_joints=4, seed=4)
    ind = torch.randint(0, 42, (2, 5), generator=torch.Generator().manual_seed(4))
    mu, sigma, log_alpha = md.mixture_params(out)                      # (B, M, D, H, W) ...
    mu_k, sigma_k, la_k = md.mixture_at(out, ind)
    B, M, D = mu.shape[:3]
    assert md.num_components(out) == m and mu.shape[1] == max(m, 1)
    assert torch.allclose(mu_k, md.gather_feat(mu.reshape(B, M * D, 6, 7), ind).view(B, 5, M, D))
    assert torch.allclose(sigma_k, md.gather_feat(sigma.reshape(B, M * 2, 6, 7), ind).view(B, 5, M, 2))
    assert torch.allclose(la_k, md.gather_feat(log_alpha, ind))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gather_feat_equals_a_loop_in_either_layout(layout):
    """gather_feat against reading fmap[b, :, y, x] one object at a time; the gradient (a
    scatter back into the map) is the same bits in both layouts, so a channels_last
    network trains as a contiguous one would."""
    g = torch.Generator().manual_seed(5)
    fmap0 = torch.randn(2, 9, 6, 7, generator=g)
    ind = torch.randint(0, 42, (2, 5), generator=g)
    ind[1, 3:] = 0                                                     # padding objects share cell 0
    w = torch.randn(2, 5, 9, generator=g)
    fmap = fmap0.clone(memory_format=layout).requires_grad_()
    got = md.gather_feat(fmap, ind)
    loop = torch.stack([torch.stack([fmap0[b, :, i // 7, i % 7] for i in ind[b].tolist()]) for b in range(2)])
    assert got.shape == (2, 5, 9) and torch.equal(got, loop)
    (got * w).sum().backward()
    ref = fmap0.clone().requires_grad_()
    (md.gather_feat(ref, ind) * w).sum().backward()                    # the contiguous path
    assert torch.equal(fmap.grad, ref.grad)
    expected = torch.zeros_like(fmap0)
    for b in range(2):
        for n, i in enumerate(ind[b].tolist()):
            expected[b, :, i // 7, i % 7] += w[b, n]
    assert torch.allclose(fmap.grad, expected, atol=1e-6)


def test_select_component_rules_on_one_mixture():
    mu = torch.tensor([[[1.0, 2.0], [10.0, 20.0], [100.0, 200.0]]])   # (1, M=3, D=2)
    sigma = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    alpha = torch.tensor([[0.2, 0.5, 0.3]])
    la = alpha.log()
    m_mu, m_sigma, comp, a = md.select_component(mu, sigma, la, "max")
    assert comp.tolist() == [1] and torch.allclose(m_mu, mu[:, 1]) and torch.allclose(m_sigma, sigma[:, 1])
    assert torch.allclose(a, torch.tensor([0.5]))
    e_mu, e_sigma, comp, a = md.select_component(mu, sigma, la, "mean")
    assert torch.allclose(e_mu, (alpha[..., None] * mu).sum(1)) and torch.allclose(e_sigma, (alpha[..., None] * sigma).sum(1))
    assert comp.tolist() == [1]
    f_mu, _, comp, a = md.select_component(mu, sigma, la, 2)
    assert comp.tolist() == [2] and torch.allclose(f_mu, mu[:, 2]) and torch.allclose(a, torch.tensor([0.3]))


def test_select_component_per_location_tensor_equals_forcing_each_int():
    g = torch.Generator().manual_seed(7)
    mu, sigma = torch.randn(4, 3, 6, generator=g), torch.rand(4, 3, 2, generator=g) + 0.1
    la = F.log_softmax(torch.randn(4, 3, generator=g), -1)
    comp = torch.tensor([2, 0, 1, 2])
    got = md.select_component(mu, sigma, la, comp)
    for i, c in enumerate(comp.tolist()):
        want = md.select_component(mu[i:i + 1], sigma[i:i + 1], la[i:i + 1], c)
        for a, b in zip(got, want):
            assert torch.equal(a[i:i + 1], b), (i, c)
    with pytest.raises(ValueError, match="component indices must lie in"):
        md.select_component(mu, sigma, la, torch.tensor([0, 1, 3, 0]))


@pytest.mark.parametrize("task", ["det", "pose"])
def test_gate_grad_scales_only_the_gate_gradient(task):
    """LossWeights.gate_grad = k (not in the paper): the loss value, and the gradient of every
    output but the mixing logits, are those of k = 1; the logits' gradient is k times it."""
    batch = two_object_batch(task)

    def grads(k):
        out = random_outputs(task, 3, num_classes=1, num_joints=2, B=1, H=8, W=8, seed=3)
        out = {name: v.detach().requires_grad_() for name, v in out.items()}
        loss, parts = md.total_loss([out], batch, md.LossWeights(gate_grad=k))
        loss.backward()
        return loss.detach(), {name: v.grad for name, v in out.items()}
    (l1, g1), (l10, g10) = grads(1.0), grads(10.0)
    assert torch.equal(l1, l10)
    assert g1["mdn_logits"].abs().max() > 0
    torch.testing.assert_close(g10["mdn_logits"], 10 * g1["mdn_logits"])
    for name in g1:
        if name != "mdn_logits":
            torch.testing.assert_close(g10[name], g1[name], rtol=1e-6, atol=1e-7, msg=name)
