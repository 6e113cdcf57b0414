"""calibration.py on constructed cases with a known answer: samples drawn from the model
itself are calibrated, sigmas scaled down by 2 are over-confident by an exact amount.

Sampling bounds: an observed share of n independent Bernoulli(p) points is within
4 sqrt(p (1 - p) / n) of p except with probability ~6e-5 (the seeds are fixed anyway)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis import calibration as cal


def binomial_bound(p, n):
    return 4 * np.sqrt(np.asarray(p) * (1 - np.asarray(p)) / n)


def gaussian_sample(N=4000, K=5, seed=0, true_scale=1.0):
    """Selected-component predictions and targets t ~ N(mu, (true_scale * sigma_a k_j)^2).
    K = 1 without kpt_scale is the detection case (w, h)."""
    g = torch.Generator().manual_seed(seed)
    D = 2 * K
    mu = torch.randn(N, D, generator=g, dtype=torch.float64) * 10
    sigma = torch.exp(torch.randn(N, 2, generator=g, dtype=torch.float64))   # log-normal spread
    kpt_scale = None if K == 1 else torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    k = torch.ones(K, dtype=torch.float64) if kpt_scale is None else kpt_scale
    std = sigma.repeat(1, K) * k.repeat_interleave(2)                        # by hand, (N, D)
    target = mu + true_scale * std * torch.randn(N, D, generator=g, dtype=torch.float64)
    return target, mu, sigma, kpt_scale


def mixture_sample(N=20000, M=3, K=2, seed=0):
    """A mixture per instance and t drawn from it: component by alpha, then Gaussian."""
    g = torch.Generator().manual_seed(seed)
    D = 2 * K
    mu = torch.randn(N, M, D, generator=g, dtype=torch.float64) * 5
    sigma = torch.rand(N, M, 2, generator=g, dtype=torch.float64) * 2 + 0.3
    log_alpha = F.log_softmax(torch.randn(N, M, generator=g, dtype=torch.float64), dim=1)
    kpt_scale = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
    comp = torch.multinomial(log_alpha.exp(), 1, generator=g)[:, 0]          # (N,)
    i = torch.arange(N)
    std = sigma[i, comp].repeat(1, K) * kpt_scale.repeat_interleave(2)       # by hand, (N, D)
    target = mu[i, comp] + std * torch.randn(N, D, generator=g, dtype=torch.float64)
    return target, mu, sigma, log_alpha, kpt_scale


def test_per_dim_std_interleaves_axes_and_scales_joints():
    std = cal.per_dim_std(torch.tensor([[[1.0, 2.0]]]), 4, [10.0, 100.0])   # (N=1, M=1, 2) -> (1, 1, 4)
    np.testing.assert_array_equal(std.numpy(), [[[10, 20, 100, 200]]])   # x0, y0, x1, y1
    np.testing.assert_array_equal(cal.per_dim_std([[3.0, 4.0]], 2).numpy(), [[3, 4]])


def test_quantiles_match_tabulated_values():
    assert cal.normal_quantile(0.975) == pytest.approx(1.959963985, abs=1e-8)
    assert cal.normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    assert cal.chi2_2_quantile(0.95) == pytest.approx(5.991464547, abs=1e-8)  # chi2(2) table
    assert cal.chi2_2_quantile(0.5) == pytest.approx(2 * math.log(2))


@pytest.mark.parametrize("K", [1, 5])   # detection (w, h) and pose joints with k_j
@pytest.mark.parametrize("per", ["joint", "coordinate"])
def test_coverage_of_calibrated_sample_is_nominal(K, per):
    target, mu, sigma, k = gaussian_sample(K=K)
    cov = cal.coverage(target, mu, sigma, kpt_scale=k, per=per)
    assert cov["n"] == 4000 * K * (1 if per == "joint" else 2)
    p = np.asarray(cal.LEVELS)
    assert np.all(np.abs(cov["observed"] - p) < binomial_bound(p, cov["n"])), cov["observed"]


@pytest.mark.parametrize("per", ["joint", "coordinate"])
def test_coverage_of_sigmas_twice_too_small_is_exact_undercoverage(per):
    target, mu, sigma, k = gaussian_sample(K=5, true_scale=2.0)   # the truth is twice as wide
    cov = cal.coverage(target, mu, sigma, kpt_scale=k, per=per)
    p = np.asarray(cal.LEVELS)
    if per == "joint":   # d^2 = 4 chi2_2, so P(d^2 <= q) = P(chi2_2 <= q / 4) = 1 - exp(-q / 8)
        expected = 1 - np.exp(-cal.chi2_2_quantile(p) / 8)
    else:                # P(|2 z| <= c) = 2 Phi(c / 2) - 1
        expected = np.array([math.erf(c / 2 / math.sqrt(2)) for c in cal.normal_quantile((1 + p) / 2)])
    assert np.all(expected < p - 0.1)
    assert np.all(np.abs(cov["observed"] - expected) < binomial_bound(expected, cov["n"])), cov["observed"]


def test_pit_of_calibrated_mixture_is_flat_and_too_small_sigmas_u_shaped():
    target, mu, sigma, log_alpha, k = mixture_sample()
    u = cal.pit(target, mu, sigma, log_alpha, kpt_scale=k)
    h = cal.pit_histogram(u, bins=10)
    n = len(u)
    assert n == 20000 * 4 and h["counts"].sum() == n
    assert np.all(np.abs(h["counts"] - n / 10) < n * binomial_bound(0.1, n)), h["counts"]
    assert h["chi2"] < 9 + 6 * math.sqrt(18)   # chi-square(9): mean 9, std sqrt(18)
    hs = cal.pit_histogram(cal.pit(target, mu, sigma / 2, log_alpha, kpt_scale=k), bins=10)
    c, e, sd = hs["counts"], n / 10, n * binomial_bound(0.1, n)
    assert c[0] > e + sd and c[-1] > e + sd              # mass in the outer bins ...
    assert np.all(c[3:7] < e - sd)                       # ... taken from the middle
    assert hs["chi2"] > 100 * h["chi2"]


def test_pit_of_one_gaussian_with_too_small_sigma_has_exact_outer_bin():
    target, mu, sigma, k = gaussian_sample(K=5, true_scale=2.0)
    u = cal.pit(target, mu[:, None], sigma[:, None], torch.zeros(len(mu), 1), kpt_scale=k)
    # u = Phi(2 z) < 0.1  <=>  z < Phi^-1(0.1) / 2
    expected = 0.5 * (1 + math.erf(cal.normal_quantile(0.1) / 2 / math.sqrt(2)))
    share = cal.pit_histogram(u)["counts"][0] / len(u)
    assert abs(share - expected) < binomial_bound(expected, len(u))


def test_reliability_hand_computed():
    rel = cal.reliability([1.0, -1.0, 3.0, 3.0], [1.0, 1.0, 2.0, 2.0], bins=2)["all"]
    np.testing.assert_allclose(rel["rmv"], [1, 2])
    np.testing.assert_allclose(rel["rmse"], [1, 3])
    assert rel["ence"] == pytest.approx((0 + 0.5) / 2)
    np.testing.assert_array_equal(rel["count"], [2, 2])


def test_reliability_calibrated_vs_too_small_per_group():
    target, mu, sigma, k = gaussian_sample(N=8000, K=5)
    r = cal.residuals(target, mu, sigma, kpt_scale=k)
    assert r["error"].shape == (8000 * 10,)
    calibrated = cal.reliability(r["error"], r["sigma"], bins=10)["all"]
    assert calibrated["ence"] < 0.05
    # Two groups: the first half predicts the right sigma, the second half half of it.
    half = r["instance"] >= 4000
    groups = np.where(half, "half", "right")
    rel = cal.reliability(r["error"], np.where(half, r["sigma"] / 2, r["sigma"]), bins=10, groups=groups)
    assert set(rel) == {"half", "right"}
    assert rel["right"]["ence"] < 0.05
    # per bin n_b = 4000: RMSE's relative sd ~ 1 / sqrt(2 n_b) = 1.1 %, so 0.1 is > 4 sd of the ratio 2
    np.testing.assert_allclose(rel["half"]["rmse"] / rel["half"]["rmv"], 2.0, atol=0.1)
    assert rel["half"]["ence"] == pytest.approx(1.0, abs=0.05)
    assert np.all(np.diff(rel["half"]["rmv"]) > 0)   # bins sorted by predicted sigma


def test_nll_of_one_component_is_the_hand_gaussian_nll():
    target, mu, sigma, k = gaussian_sample(N=50, K=3, seed=1)
    mask = (torch.rand(50, 3, generator=torch.Generator().manual_seed(2)) > 0.3).double().repeat_interleave(2, 1)
    std = sigma.repeat(1, 3) * k.repeat_interleave(2)                        # by hand, (N, D)
    z = (target - mu) / std
    hand = (0.5 * torch.log(2 * math.pi * std ** 2) + z ** 2 / 2)[mask > 0].mean()
    out = cal.nll_per_coordinate(target, mu[:, None], sigma[:, None], torch.zeros(50, 1), mask, k)
    assert out["coordinates"] == int(mask.sum())
    assert out["mixture"] == pytest.approx(float(hand), rel=1e-12)
    assert out["selected"] == pytest.approx(float(hand), rel=1e-12)
    assert out["log_alpha_sel"] == 0
    np.testing.assert_array_equal(cal.residuals(target, mu, sigma, mask, k)["sigma"], std[mask > 0].numpy())


def test_nll_mixture_bounds_and_identical_components():
    target, mu, sigma, log_alpha, k = mixture_sample(N=200)
    for component in (None, torch.zeros(200, dtype=torch.long)):   # argmax alpha, or forced
        out = cal.nll_per_coordinate(target, mu, sigma, log_alpha, kpt_scale=k, component=component)
        # -log sum_m alpha_m phi_m <= -log alpha_s phi_s, per instance and so per coordinate
        assert out["mixture"] <= out["selected"] + out["log_alpha_sel"] + 1e-12
        # "selected" is the chosen component alone, as a one-component mixture
        c = log_alpha.argmax(1) if component is None else component
        i = torch.arange(200)
        alone = cal.nll_per_coordinate(target, mu[i, c][:, None], sigma[i, c][:, None], torch.zeros(200, 1),
                                       kpt_scale=k)
        assert out["selected"] == pytest.approx(alone["mixture"], rel=1e-12)
        assert out["log_alpha_sel"] == pytest.approx(float(-log_alpha[i, c].mean()) / 4, rel=1e-12)  # D = 4
        assert out["mixture"] < out["selected"] - 0.01   # the other components add density
    # M copies of one Gaussian: the mixture is that Gaussian, whatever the alphas
    same = cal.nll_per_coordinate(target, mu[:, :1].expand(-1, 3, -1), sigma[:, :1].expand(-1, 3, -1),
                                  log_alpha, kpt_scale=k)
    assert same["mixture"] == pytest.approx(same["selected"], rel=1e-12)
    assert same["log_alpha_sel"] > 0


def test_select_defaults_to_the_largest_alpha():
    mu = torch.arange(2 * 3 * 2, dtype=torch.float64).view(2, 3, 2)
    sigma = torch.ones(2, 3, 2)
    log_alpha = torch.log(torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.1, 0.4]]))
    mu_s, sigma_s, la_s, comp = cal.select(mu, sigma, log_alpha)
    np.testing.assert_array_equal(comp.numpy(), [1, 0])
    np.testing.assert_array_equal(mu_s.numpy(), [[2, 3], [6, 7]])
    np.testing.assert_allclose(la_s.exp().numpy(), [0.7, 0.5])
    assert cal.select(mu, sigma, log_alpha, [2, 2])[1].shape == (2, 2)


def test_masked_dims_do_not_count():
    target, mu, sigma, log_alpha, k = mixture_sample(N=300)
    # every dim on its own, so some joints have only x or only y visible (they count per
    # coordinate, not per joint)
    mask = (torch.rand(300, 4, generator=torch.Generator().manual_seed(3)) > 0.4).double()
    mask[0] = 0   # an instance with nothing visible: no NLL, no -log alpha
    moved = torch.where(mask > 0, target, target + 1e4)   # hidden dims far off: must change nothing
    mu_s, sigma_s, _, _ = cal.select(mu, sigma, log_alpha)
    for t in (target, moved):
        cov_j = cal.coverage(t, mu_s, sigma_s, mask, k, per="joint")
        cov_c = cal.coverage(t, mu_s, sigma_s, mask, k, per="coordinate")
        nll = cal.nll_per_coordinate(t, mu, sigma, log_alpha, mask, k)
        u = cal.pit(t, mu, sigma, log_alpha, mask, k)
        r = cal.residuals(t, mu_s, sigma_s, mask, k)
        assert cov_j["n"] == int((mask[:, 0::2] * mask[:, 1::2]).sum())   # both coords visible
        assert cov_c["n"] == len(u) == len(r["error"]) == nll["coordinates"] == int(mask.sum())
        assert np.abs(r["error"]).max() < 1e3
        seen = mask.sum(1) > 0
        assert not seen[0] and seen.sum() < 299   # instance 0 and a few others show nothing
        la = log_alpha.max(1).values[seen]
        assert nll["log_alpha_sel"] == pytest.approx(float(-la.sum()) / int(mask.sum()), rel=1e-12)
        results = (cov_j["observed"], cov_c["observed"], nll["mixture"], nll["selected"], u)
        if t is target:
            first = results
    for a, b in zip(first, results):
        np.testing.assert_array_equal(a, b)


def test_non_positive_sigma_is_an_error():
    target, mu, sigma, k = gaussian_sample(N=4, K=2)
    sigma[0, 1] = 0
    with pytest.raises(ValueError, match="sigmas must be > 0"):
        cal.coverage(target, mu, sigma, kpt_scale=k)


def test_format_and_figure(tmp_path):
    target, mu, sigma, log_alpha, k = mixture_sample(N=500)
    mu_s, sigma_s, _, comp = cal.select(mu, sigma, log_alpha)
    cov = {per: cal.coverage(target, mu_s, sigma_s, kpt_scale=k, per=per) for per in ("joint", "coordinate")}
    r = cal.residuals(target, mu_s, sigma_s, kpt_scale=k)
    rel = cal.reliability(r["error"], r["sigma"], bins=5, groups=comp.numpy()[r["instance"]])
    text = cal.format_calibration(cal.nll_per_coordinate(target, mu, sigma, log_alpha, kpt_scale=k), cov, rel)
    assert "NLL" in text and "coverage" in text and text.count("ENCE") == len(rel)
    assert "95%" in text and "joint" in text and "coordinate" in text
    fig = cal.calibration_figure(cov, rel, tmp_path / "calibration.png")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 1 + 2 and len(fig.axes[1].lines) == len(rel) + 1
    assert (tmp_path / "calibration.png").stat().st_size > 0


def test_pit_table_and_panel(tmp_path):
    target, mu, sigma, log_alpha, k = mixture_sample(N=300)
    pit = cal.pit_histogram(cal.pit(target, mu, sigma, log_alpha, kpt_scale=k), bins=5)
    text = cal.format_calibration(pit=pit)
    ratios = [float(v) for v in text.splitlines()[-1].split()]
    assert ratios == pytest.approx(list(pit["counts"] / pit["expected"]), abs=0.005)   # printed to 2 decimals
    assert "0.8-1.0" in text and f"chi2 {pit['chi2']:.1f} on 4 dof" in text
    mu_s, sigma_s, _, _ = cal.select(mu, sigma, log_alpha)
    cov = cal.coverage(target, mu_s, sigma_s, kpt_scale=k)
    r = cal.residuals(target, mu_s, sigma_s, kpt_scale=k)
    fig = cal.calibration_figure(cov, cal.reliability(r["error"], r["sigma"]), tmp_path / "c.png", pit=pit)
    bars = fig.axes[2].patches
    assert len(fig.axes) == 3 and [b.get_height() for b in bars] == pytest.approx(list(pit["counts"] / pit["expected"]))
