"""Calibration of the mixture's uncertainty: does a predicted sigma mean what it says?

The paper reads the sigmas of Eq. (4) as uncertainty (§4.4.1, Table 4; the ellipses of
Fig. 5) but never checks that they are calibrated. These pure functions do, on matched
predictions and ground truth (no COCO objects, no model):

  nll_per_coordinate   Eq. (5) in nats per visible coordinate, full mixture and the
                       selected component alone (§3.3 picks one component at inference)
  coverage             share of ground truth inside the selected component's central
                       region at nominal levels (exact Gaussian quantiles)
  pit                  probability integral transform of the full mixture, Eqs. (1), (3)
  reliability          ENCE-style diagram: RMS predicted sigma vs RMS error per sigma bin
  format_calibration, calibration_figure   text tables and a two-panel figure

Shape legend as in mdn_dense.py: N instances, M components, D dims (2 for a box's (w, h);
2K for K joint offsets, x and y interleaved), K joints. The std of dim d = (joint j, axis a)
under component m is sigma[m, a] * k_j (Eq. (4) with the per-joint scale k_j, as
mdn_dense.mdn_nll); for detection k = 1 and (w, h) is one 2-D point ("joint" 0).
Inputs may be numpy arrays or torch tensors; the math is float64, results are numpy / float.
Sigmas must be positive: the single-mode base (m = 0, sigma 0) has nothing to calibrate.
"""
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

import mdn_dense as md
from analysis.tables import text_table

LEVELS = (0.5, 0.68, 0.9, 0.95)


def _f64(x):
    return None if x is None else torch.as_tensor(x, dtype=torch.float64)


def per_dim_std(sigma, D, kpt_scale=None):
    """sigma (..., 2) per-axis std -> (..., D) in float64: mdn_dense.per_dim_std (Eq. (4)),
    after checking that every sigma is positive."""
    sigma = _f64(sigma)
    if (sigma <= 0).any():
        raise ValueError("sigmas must be > 0 (the m = 0 base predicts no uncertainty)")
    return md.per_dim_std(sigma, D, _f64(kpt_scale))


def select(mu, sigma, log_alpha, component=None):
    """The component each instance reports: component (N,) int, None = argmax alpha (§3.3),
    picked by mdn_dense.select_component. mu (N, M, D), sigma (N, M, 2), log_alpha (N, M)
    -> mu_sel (N, D), sigma_sel (N, 2), log_alpha_sel (N,), component (N,)."""
    mu, sigma, log_alpha = _f64(mu), _f64(sigma), _f64(log_alpha)
    how = "max" if component is None else torch.as_tensor(component, dtype=torch.long)
    mu_s, sigma_s, comp, _ = md.select_component(mu, sigma, log_alpha, how)
    return mu_s, sigma_s, log_alpha.gather(-1, comp[..., None])[..., 0], comp


def _mask(mask, like):
    return torch.ones_like(like) if mask is None else (_f64(mask) > 0).to(torch.float64)


# ----------------------------------------------------------------------------- NLL
def nll_per_coordinate(target, mu, sigma, log_alpha, mask=None, kpt_scale=None, component=None):
    """Eq. (5) in nats per visible coordinate: sum of mdn_nll over instances / visible dims.

    target (N, D), mu (N, M, D), sigma (N, M, 2), log_alpha (N, M), mask (N, D) 1 = visible,
    kpt_scale (K,), component (N,) int or None (argmax alpha). Returns dict mixture (the
    full mixture), selected (the selected component as a one-component mixture, alpha = 1),
    log_alpha_sel (mean -log alpha_sel per coordinate: mixture <= selected + it), coordinates.
    """
    target, mu = _f64(target), _f64(mu)
    mask = _mask(mask, target)
    n = int(mask.sum())
    per_dim_std(sigma, mu.shape[-1], kpt_scale)                        # checks sigma > 0
    mu_s, sigma_s, la_s, _ = select(mu, sigma, log_alpha, component)
    full = md.mdn_nll(target, mu, _f64(sigma), _f64(log_alpha), mask, kpt_scale)       # (N,)
    one = md.mdn_nll(target, mu_s[:, None], sigma_s[:, None], torch.zeros_like(la_s)[:, None],
                     mask, kpt_scale)                                  # (N,)
    seen = (mask.sum(1) > 0).to(torch.float64)
    per = lambda x: float(x.sum()) / n if n else float("nan")
    return dict(mixture=per(full), selected=per(one), log_alpha_sel=per(-la_s * seen), coordinates=n)


# ----------------------------------------------------------------------------- coverage
def normal_quantile(p):
    """Phi^-1(p), the standard normal inverse CDF (torch.special.ndtri; no scipy)."""
    return torch.special.ndtri(_f64(p)).numpy()


def chi2_2_quantile(p):
    """Quantile of chi-square with 2 dof (an exponential with mean 2): -2 ln(1 - p)."""
    return -2.0 * np.log1p(-np.asarray(p, np.float64))


def standardized(target, mu_sel, sigma_sel, mask=None, kpt_scale=None):
    """z = (t - mu_sel) / (sigma_a k_j) (N, D) and the visibility mask (N, D) as 0 / 1."""
    target, mu_sel = _f64(target), _f64(mu_sel)
    z = (target - mu_sel) / per_dim_std(sigma_sel, target.shape[-1], kpt_scale)
    return z, _mask(mask, target)


def coverage(target, mu_sel, sigma_sel, mask=None, kpt_scale=None, levels=LEVELS, per="joint"):
    """Observed share of ground truth inside the central region of nominal level p.

    target, mu_sel (N, D), sigma_sel (N, 2), mask (N, D), kpt_scale (K,).
    per "joint": each joint (x, y) (for detection the (w, h) point) with both coords visible;
    z_x^2 + z_y^2 is chi-square with 2 dof, so the region is d^2 <= -2 ln(1 - p).
    per "coordinate": each visible dim, |z| <= Phi^-1((1 + p) / 2).
    Returns dict levels (L,), observed (L,), n (points counted), per.
    """
    z, mask = standardized(target, mu_sel, sigma_sel, mask, kpt_scale)
    levels = np.asarray(levels, np.float64)
    if per == "joint":
        stat = (z[:, 0::2] ** 2 + z[:, 1::2] ** 2)[(mask[:, 0::2] * mask[:, 1::2]) > 0].numpy()  # (n,)
        bound = chi2_2_quantile(levels)
    elif per == "coordinate":
        stat = z.abs()[mask > 0].numpy()                               # (n,)
        bound = normal_quantile((1 + levels) / 2)
    else:
        raise ValueError(f"per must be 'joint' or 'coordinate', got {per!r}")
    observed = (stat[:, None] <= bound[None, :]).mean(0) if len(stat) else np.full(len(levels), np.nan)
    return dict(levels=levels, observed=observed, n=len(stat), per=per)


# ----------------------------------------------------------------------------- PIT
def pit(target, mu, sigma, log_alpha, mask=None, kpt_scale=None):
    """PIT of the full mixture per visible coordinate: u = sum_m alpha_m Phi((t - mu_md) / std_md)
    (the marginal CDF of Eqs. (1), (3) on one dim). target (N, D), mu (N, M, D), sigma (N, M, 2),
    log_alpha (N, M), mask (N, D). Returns (n,): uniform on [0, 1] for a calibrated mixture."""
    target, mu = _f64(target), _f64(mu)
    std = per_dim_std(sigma, mu.shape[-1], kpt_scale)                  # (N, M, D)
    cdf = torch.special.ndtr((target[:, None, :] - mu) / std)          # (N, M, D)
    u = (_f64(log_alpha).exp()[..., None] * cdf).sum(1)                # (N, D)
    return u[_mask(mask, target) > 0].numpy()


def pit_histogram(values, bins=10):
    """Counts of PIT values in equal bins of [0, 1]; flatness as chi2 = sum (c - e)^2 / e
    (about chi-square with bins - 1 dof when flat) and max_dev = max |c / e - 1|."""
    values = np.asarray(values, np.float64)
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    expected = len(values) / bins
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        max_dev = float(np.abs(counts / expected - 1).max())
    return dict(counts=counts, edges=edges, expected=expected, chi2=chi2, dof=bins - 1, max_dev=max_dev)


# ----------------------------------------------------------------------------- reliability
def residuals(target, mu_sel, sigma_sel, mask=None, kpt_scale=None):
    """Per visible coordinate: error t - mu_sel and its predicted std sigma_a k_j, with the
    instance, joint and axis (0 = x, 1 = y) it belongs to (to build reliability groups).
    target, mu_sel (N, D), sigma_sel (N, 2). Returns dict of (n,) numpy arrays. Calibrated:
    E[error^2] = sigma^2."""
    target, mu_sel = _f64(target), _f64(mu_sel)
    N, D = target.shape
    std = per_dim_std(sigma_sel, D, kpt_scale)                         # (N, D)
    keep = _mask(mask, target) > 0
    dims = torch.arange(D).expand(N, D)
    return dict(error=(target - mu_sel)[keep].numpy(), sigma=std[keep].numpy(),
                instance=torch.arange(N)[:, None].expand(N, D)[keep].numpy(),
                joint=(dims // 2)[keep].numpy(), axis=(dims % 2)[keep].numpy())


def _reliability_table(e, s, bins):
    order = np.argsort(s, kind="stable")
    parts = [p for p in np.array_split(order, min(bins, len(order))) if len(p)]  # equal-count bins
    rmv = np.array([np.sqrt(np.mean(s[p] ** 2)) for p in parts])
    rmse = np.array([np.sqrt(np.mean(e[p] ** 2)) for p in parts])
    return dict(rmv=rmv, rmse=rmse, count=np.array([len(p) for p in parts]),
                sigma_lo=np.array([s[p].min() for p in parts]), sigma_hi=np.array([s[p].max() for p in parts]),
                ence=float(np.mean(np.abs(rmv - rmse) / rmv)) if parts else float("nan"))


def reliability(errors, predicted_sigma, bins=10, groups=None):
    """ENCE-style reliability: sort by predicted sigma, split into `bins` equal-count bins;
    per bin RMV = sqrt(mean sigma^2) and RMSE = sqrt(mean error^2) (equal when calibrated);
    ENCE = mean over bins of |RMV - RMSE| / RMV. errors, predicted_sigma (n,) per coordinate
    (see residuals); groups (n,) labels or None. Returns {label: table} ("all" without
    groups), a table being dict rmv, rmse, count, sigma_lo, sigma_hi (B,) and ence."""
    e, s = np.asarray(errors, np.float64).ravel(), np.asarray(predicted_sigma, np.float64).ravel()
    if e.shape != s.shape:
        raise ValueError(f"errors {e.shape} and predicted_sigma {s.shape} differ")
    if groups is None:
        return {"all": _reliability_table(e, s, bins)}
    groups = np.asarray(groups).ravel()
    return {g: _reliability_table(e[groups == g], s[groups == g], bins) for g in np.unique(groups).tolist()}


# ----------------------------------------------------------------------------- printing
def format_calibration(nll=None, cov=None, rel=None, pit=None):
    """Plain-text tables of nll_per_coordinate, coverage (one result or {name: result}),
    reliability and pit_histogram outputs; any may be None."""
    texts = []
    if nll is not None:
        texts.append(text_table(["mixture", "selected", "-log alpha_sel", "coords"],
                                [[f"{nll['mixture']:.3f}", f"{nll['selected']:.3f}",
                                  f"{nll['log_alpha_sel']:.3f}", nll["coordinates"]]],
                                "NLL, Eq. (5), nats per visible coordinate (mixture <= selected - log alpha_sel)"))
    if cov is not None:
        cov = {cov["per"]: cov} if "observed" in cov else cov
        levels = next(iter(cov.values()))["levels"]
        texts.append(text_table(["per", "n"] + [f"{100 * p:g}%" for p in levels],
                                [[name, c["n"]] + [f"{100 * o:.1f}" for o in c["observed"]] for name, c in cov.items()],
                                "coverage: observed % inside the selected component's central region"))
    if rel is not None:
        for name, t in rel.items():
            rows = [[i, n, f"{lo:.3g}-{hi:.3g}", f"{v:.3g}", f"{r:.3g}", f"{r / v:.2f}"]
                    for i, (n, lo, hi, v, r) in enumerate(zip(t["count"], t["sigma_lo"], t["sigma_hi"],
                                                             t["rmv"], t["rmse"]))]
            texts.append(text_table(["bin", "n", "sigma range", "RMV", "RMSE", "RMSE/RMV"], rows,
                                    f"reliability ({name}): ENCE {t['ence']:.3f}"))
    if pit is not None:
        edges = pit["edges"]
        ratio = [f"{c / pit['expected']:.2f}" if pit["expected"] else "-" for c in pit["counts"]]
        texts.append(text_table([f"{lo:.1f}-{hi:.1f}" for lo, hi in zip(edges[:-1], edges[1:])], [ratio],
                                f"PIT of the full mixture: count / expected ({pit['expected']:.1f}) per bin, "
                                f"chi2 {pit['chi2']:.1f} on {pit['dof']} dof, max |c/e - 1| {pit['max_dev']:.2f} "
                                "(flat = calibrated; U = over-confident, hump = under-confident)"))
    return "\n\n".join(texts)


# ----------------------------------------------------------------------------- figure
def calibration_figure(cov, rel, path=None, pit=None):
    """Left: coverage curves, nominal vs observed (one result or {name: result}), with the
    diagonal; middle: reliability diagram, RMV vs RMSE per bin for each group, log-log with
    the diagonal; right (when pit, a pit_histogram result): the PIT histogram as count /
    expected, flat at 1 when calibrated. Returns the matplotlib Figure (no pyplot); saved
    to path when given."""
    fig = Figure(figsize=(9 if pit is None else 13, 4))
    ax1, ax2, *ax3 = fig.subplots(1, 2 if pit is None else 3)
    ax1.plot([0, 1], [0, 1], color="gray", ls="--", lw=1)
    for name, c in ({cov["per"]: cov} if "observed" in cov else cov).items():
        ax1.plot(c["levels"], c["observed"], "o-", label=f"{name} (n={c['n']})")
    ax1.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal level", ylabel="observed coverage",
            title="coverage of the selected component")
    ax1.legend(fontsize=8)
    values = []
    for name, t in rel.items():
        ax2.plot(t["rmv"], t["rmse"], "o-", label=f"{name}: ENCE {t['ence']:.2f}")
        values += list(t["rmv"]) + list(t["rmse"])
    values = [v for v in values if v > 0]
    if values:
        lo, hi = min(values) / 1.2, max(values) * 1.2
        ax2.plot([lo, hi], [lo, hi], color="gray", ls="--", lw=1)
        ax2.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
        for axis in (ax2.xaxis, ax2.yaxis):   # plain numbers; no crowded minor labels
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    ax2.set(xlabel="RMV (RMS predicted sigma)", ylabel="RMSE (observed)", title="reliability per sigma bin")
    ax2.legend(fontsize=8)
    if pit is not None:
        e = pit["edges"]
        ax3[0].bar(e[:-1], pit["counts"] / max(pit["expected"], 1e-12), width=np.diff(e), align="edge",
                   color="tab:blue", edgecolor="white")
        ax3[0].axhline(1, color="gray", ls="--", lw=1)
        ax3[0].set(xlim=(0, 1), xlabel="PIT of the full mixture", ylabel="count / expected",
                   title=f"PIT histogram (chi2 {pit['chi2']:.0f}, {pit['dof']} dof)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
