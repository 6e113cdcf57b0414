"""Mixture dense regression: the mixture math and the losses (paper §3.1-3.2, §4.2).

This module replaces CenterNet's L1 size/offset regression with a Gaussian mixture
density network evaluated densely at object centres (Varamesh & Tuytelaars, CVPR 2020):

  Eq. (1)-(2)  a mixture of Gaussian kernels           -> mdn_nll
  Eq. (3)-(4)  the dense version, per-axis sigmas,
               keypoint-scale normalisation            -> mdn_nll(kpt_scale=...)
  Eq. (5)      the negative log-likelihood loss        -> mixture_loss
  Eq. (6)      the total loss with CenterNet's terms   -> total_loss
  §3.3         one prediction from the mixture (max / mean component) -> select_component
  §4.2         ELU-plus-one sigma activation           -> sigma_activation

The heads that emit these outputs are in model.py, NMS-free decoding (§3.3) in decode.py.

Shape legend, used in every module of the project:
  B batch, M mixture components, K joints (17 for COCO), D regression dims
  (2 for a box's (w, h); 2K for K joint offsets, x and y interleaved x0, y0, x1, y1, ...),
  C classes, H, W output map (input / 4), N objects per image (max_objs).

One stack's outputs `out` (model.MixtureCenterNet), channel layout component-major as the
official code:
  wh / hps     (B, M*D, H, W)  component m's dim d is channel m*D + d
  mdn_sigma    (B, M*2, H, W)  sigma itself (the heads apply sigma_activation with the
                               model's floor): component m's axis a (0 = x) is channel 2m + a
  mdn_logits   (B, M, H, W)    raw mixing logits
For M = 0 (the single-mode CenterNet base) wh / hps have D channels and there are no
mixture outputs. The outputs say what they are: pose has "hps", a mixture has
"mdn_logits"; so the losses and the decoder take no task, M or floor arguments.

Targets, one dict per image as written by coco_data.py (N = max_objs):
  hm (C, H, W) centre heatmap; ind (N,) int64 centre index y*W + x; mask (N,) 1 = real
  object; reg (N, 2) sub-pixel centre offset; wh (N, 2) box size in output pixels.
  Pose adds: hps (N, 2K) joint offsets from the integer centre; hps_mask (N, 2K);
  hm_hp (K, H, W) joint heatmaps; hp_ind (N*K,) int64; hp_mask (N*K,); hp_offset (N*K, 2).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- activations
def sigma_activation(x, floor):
    """§4.2: sigma = ELU(x) + 1 + floor, so sigma > floor for every input (in float32,
    floor + ELU(x) + 1 rounds to the floor once ELU(x) + 1 is below its precision).

    An exp / softplus activation lets the sigmas of redundant components fall into (0, 1)
    where a few assigned samples produce huge gradients; the ELU-plus-one with a floor
    keeps every sigma above it. The official code calls (1 + floor) `mdn_min_sigma`
    (1 for hourglass detection, 2 for DLA detection, 10 for pose), i.e.
    floor = mdn_min_sigma - 1 (model.default_sigma_floor). The clamp only matters for floor = 0, where ELU(-1e3) + 1
    is exactly 0 in float32; it mirrors the official clamp at 1e-4. Raises ValueError for
    floor < 0.
    """
    if floor < 0:
        raise ValueError(f"sigma floor must be >= 0, got {floor}")
    ### BEGIN SOLUTION
    return (F.elu(x) + 1.0 + floor).clamp_min(1e-4)
    ### END SOLUTION


def log_mixing_coefficients(logits, dim=1):
    """alpha = softmax(logits), kept in log space (the official code clamps alpha to
    [1e-4, 1 - 1e-4] instead; log_softmax needs no clamp and stays exact)."""
    return F.log_softmax(logits.float(), dim=dim)


# ----------------------------------------------------------------------------- mixture NLL
def _expand_axes(sigma, D):
    """(..., M, 2) per-axis sigmas -> (..., M, D): every joint shares its component's
    sigma_x on even dims and sigma_y on odd dims."""
    return sigma.repeat(*([1] * (sigma.dim() - 1)), D // 2)


def per_dim_std(sigma, D, kpt_scale=None):
    """Eq. (4)'s std of every regression dim: sigma (..., 2) per-axis std -> (..., D).

    Dim d = 2j + a (joint j, axis a, 0 = x; x and y interleaved) has the std
    sigma[..., a] * k_j, with k_j = kpt_scale[j] (D/2 entries; None: every k_j = 1).
    Raises ValueError when kpt_scale does not have D/2 entries.
    """
    n = None if kpt_scale is None else torch.as_tensor(kpt_scale).numel()
    if n is not None and n != D // 2:
        raise ValueError(f"kpt_scale has {n} entries, expected D/2 = {D // 2}")
    ### BEGIN SOLUTION
    std = _expand_axes(sigma, D)                                       # (..., D)
    if kpt_scale is not None:
        k = torch.as_tensor(kpt_scale, dtype=std.dtype, device=std.device)
        std = std * k.repeat_interleave(2)
    return std
    ### END SOLUTION


def mdn_nll(target, mu, sigma, log_alpha, mask=None, kpt_scale=None):
    """Per-instance mixture negative log-likelihood, Eqs. (2)-(5).

    target (N, D), mu (N, M, D), sigma (N, M, 2) per-axis std of each component,
    log_alpha (N, M) log mixing coefficients, mask (N, D) 1 = visible dim (None: all),
    kpt_scale (D/2,) per-joint scale k_j (None: 1). Returns (N,).

    The std of joint j on axis a under component m is sigma[m, a] * k_j (per_dim_std).
    §3.2 (below Eq. 4) divides by each keypoint's COCO scale instead: dividing the offsets
    t - mu by k_j and giving them std sigma is the same Gaussian as std sigma * k_j on the
    offsets themselves, written the other way (up to the -sum log k_j of the change of
    variables, kept here so the value is a true log-density). c in Eq. (2) counts only the
    visible dims. An instance with no visible dim contributes 0. Computed in float32
    (float64 if given) with log-sum-exp, outside autocast. Raises ValueError when
    kpt_scale does not have D/2 entries.
    """
    N, M, D = mu.shape
    if D % 2:
        raise ValueError(f"D must be even (x, y interleaved), got mu of shape {tuple(mu.shape)}")
    dtype = torch.promote_types(target.dtype, torch.float32)
    with torch.autocast(device_type=mu.device.type, enabled=False):
        ### BEGIN SOLUTION
        t, mu, sigma = target.to(dtype), mu.to(dtype), sigma.to(dtype)
        log_alpha = log_alpha.to(dtype)
        mask = torch.ones_like(t) if mask is None else mask.to(dtype)
        std = per_dim_std(sigma, D, kpt_scale)                         # (N, M, D)
        z = (t[:, None, :] - mu) / std                                 # (N, M, D)
        # log of Eq. (2)/(4): -c/2 log(2 pi) - sum_d log std_d - |t - mu|^2 / (2 std^2),
        # summed over visible dims only (the official code drops -sum log k_j; we keep it
        # so the value is a true log-density).
        log_phi = (mask[:, None, :] * (-0.5 * z ** 2 - torch.log(std)
                                       - 0.5 * math.log(2 * math.pi))).sum(-1)  # (N, M)
        nll = -torch.logsumexp(log_alpha + log_phi, dim=1)             # Eq. (5), (N,)
        return nll * (mask.sum(1) > 0).to(dtype)
        ### END SOLUTION


# ----------------------------------------------------------------------------- outputs
REGRESSION_KEY = {"det": "wh", "pose": "hps"}  # the head regressed by the mixture


def gather_feat(fmap, ind):
    """fmap (B, C, H, W), ind (B, N) flat indices y*W + x -> (B, N, C). Reads the map in
    its own memory layout: a channels_last map flattened as (B, C, H*W) would be copied
    whole (and its gradient copied back), 3-6x the cost of the gather for the 102-channel
    joint offsets; the values are the same either way."""
    B, C = fmap.shape[:2]
    N = ind.shape[1]
    if fmap.is_contiguous(memory_format=torch.channels_last):
        flat = fmap.permute(0, 2, 3, 1).reshape(B, -1, C)              # (B, H*W, C), a view
        return flat.gather(1, ind[:, :, None].expand(B, N, C))
    flat = fmap.reshape(B, C, -1)                                      # (B, C, H*W)
    return flat.gather(2, ind[:, None, :].expand(B, C, N)).transpose(1, 2)


def task_of(out):
    """'pose' when the outputs carry joint offsets, else 'det'."""
    return "pose" if "hps" in out else "det"


def num_components(out):
    """M of the outputs: 0 for the L1 base (no mixing logits), else the logits' channels."""
    return out["mdn_logits"].shape[1] if "mdn_logits" in out else 0


def mixture_params(out):
    """One stack's outputs -> (mu (B, M, D, H, W), sigma (B, M, 2, H, W), log_alpha (B, M, H, W)).

    For the base (M = 0) there is one component with alpha = 1 and sigma = 0 (no
    uncertainty is predicted), so decoding and analysis treat every rung alike.
    """
    reg = out[REGRESSION_KEY[task_of(out)]]
    B, _, H, W = reg.shape
    m = num_components(out)
    mu = reg.view(B, max(m, 1), -1, H, W)                              # (B, M, D, H, W)
    if m == 0:
        return mu, reg.new_zeros(B, 1, 2, H, W), reg.new_zeros(B, 1, H, W)
    sigma = out["mdn_sigma"].view(B, m, 2, H, W)                       # (B, M, 2, H, W)
    return mu, sigma, log_mixing_coefficients(out["mdn_logits"], dim=1)


def mixture_at(out, ind):
    """The mixture at flat map indices ind (B, N): mu (B, N, M, D), sigma (B, N, M, 2),
    log_alpha (B, N, M), in float32. Gathers first, so the softmax runs on N positions
    instead of the whole map (what the loss and the decoder need)."""
    reg = gather_feat(out[REGRESSION_KEY[task_of(out)]].float(), ind)  # (B, N, M*D)
    B, N = ind.shape
    m = num_components(out)
    mu = reg.view(B, N, max(m, 1), -1)                                 # (B, N, M, D)
    if m == 0:
        return mu, reg.new_zeros(B, N, 1, 2), reg.new_zeros(B, N, 1)
    sigma = gather_feat(out["mdn_sigma"].float(), ind).view(B, N, m, 2)
    return mu, sigma, log_mixing_coefficients(gather_feat(out["mdn_logits"], ind), dim=-1)


def select_component(mu, sigma, log_alpha, how="max"):
    """§3.3: turn a mixture into one prediction per location.

    mu (..., M, D), sigma (..., M, 2), log_alpha (..., M); how = "max" (argmax alpha, the
    paper's choice), "mean" (alpha-weighted mu and sigma; the reported component is the
    argmax), an int (force that component, the "Comp." rows of Tables 1 and 3) or an
    integer tensor (...) (force a component per location). Returns mu (..., D),
    sigma (..., 2), component (...) int64, alpha (...) of the reported component.
    """
    M = mu.shape[-2]
    if isinstance(how, str) and how in ("max", "mean"):
        comp = log_alpha.argmax(-1)                                    # (...)
    elif isinstance(how, int) and not isinstance(how, bool) and 0 <= how < M:
        comp = torch.full(log_alpha.shape[:-1], how, dtype=torch.long, device=mu.device)
    elif torch.is_tensor(how) and not how.is_floating_point() and how.dtype != torch.bool:
        comp = how.to(device=mu.device, dtype=torch.long).expand(log_alpha.shape[:-1])  # (...)
        if comp.numel() and (comp.min() < 0 or comp.max() >= M):
            raise ValueError(f"component indices must lie in [0, {M}), got "
                             f"{comp.min().item()}..{comp.max().item()}")
    else:
        raise ValueError(f"component must be 'max', 'mean', an int in [0, {M}) or an integer tensor, got {how!r}")
    ### BEGIN SOLUTION
    alpha = log_alpha.exp()
    pick = lambda t: t.gather(-2, comp[..., None, None].expand(*t.shape[:-2], 1, t.shape[-1]))[..., 0, :]
    if how == "mean":
        w = alpha.to(mu.dtype)[..., None]                              # (..., M, 1)
        return (w * mu).sum(-2), (w * sigma).sum(-2), comp, alpha.gather(-1, comp[..., None])[..., 0]
    return pick(mu), pick(sigma), comp, alpha.gather(-1, comp[..., None])[..., 0]
    ### END SOLUTION


# ----------------------------------------------------------------------------- losses
def focal_loss(logits, gt):
    """Penalty-reduced pixel-wise focal loss of CornerNet/CenterNet (alpha 2, beta 4).

    logits (B, C, H, W) raw heatmap output, gt (B, C, H, W) Gaussian-splatted targets with
    exact 1s at centres. Normalised by the number of positives; with none, the negative
    term alone (finite). float32 outside autocast: in bf16 the official clamp to
    1 - 1e-4 rounds to 1 and log(1 - p) becomes -inf.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
        gt = gt.float()
        pos = gt.eq(1).float()
        pos_loss = torch.log(p) * (1 - p) ** 2 * pos
        neg_loss = torch.log(1 - p) * p ** 2 * (1 - gt) ** 4 * (1 - pos)
        return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1)


def l1_loss(pred, target, mask):
    """Masked L1, divided by the number of unmasked elements (CenterNet's RegL1Loss).
    pred, target (B, N, D); mask (B, N) or (B, N, D)."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        mask = mask.float()
        if mask.dim() == 2:
            mask = mask[..., None].expand_as(pred)
        return (torch.abs(pred.float() - target.float()) * mask).sum() / (mask.sum() + 1e-4)


def scale_gradient(x, k):
    """x in the forward pass (exactly: x - x.detach() is 0); k times its gradient in the backward pass."""
    return x if k == 1 else x.detach() + k * (x - x.detach())


def mixture_loss(out, batch, kpt_scale=None, gate_grad=1.0):
    """Eq. (5) at the ground-truth centres, summed over objects and divided by 1 + the
    number of objects that carry a target, as the official code normalises: detection
    counts the objects (mask = 1); pose counts the persons with at least one visible
    joint (a person without keypoints, or whose joints the crop removed, adds nothing to
    the sum and nothing to the denominator). The +1 keeps an image without objects finite.
    kpt_scale: per-joint k_j of Eq. (4), pose only. gate_grad (not in the paper; 1 = the
    paper): the gradient the mixing coefficients receive is multiplied by it, the loss's
    value is unchanged (LossWeights.gate_grad says why)."""
    valid = batch["mask"].bool()                                       # (B, N)
    mu, sigma, log_alpha = mixture_at(out, batch["ind"])
    log_alpha = scale_gradient(log_alpha, gate_grad)
    mu_i, sigma_i, log_alpha_i = mu[valid], sigma[valid], log_alpha[valid]  # (n, M, D), (n, M, 2), (n, M)
    if task_of(out) == "det":
        target, dmask, kpt_scale = batch["wh"][valid], None, None
        counted = valid.sum()
    else:
        target, dmask = batch["hps"][valid], batch["hps_mask"][valid]
        counted = (dmask.sum(1) > 0).sum()
    nll = mdn_nll(target, mu_i, sigma_i, log_alpha_i, dmask, kpt_scale)
    return nll.sum() / (1 + counted)


@dataclass
class LossWeights:
    """λ of Eq. (6) with the official values. The paper's text says λ_off = 0.1; the
    official code (and this project) uses 1 for the centre offset and 0.1 for the
    size term. hps defaults to 0.1 for the mixture and 1 for the L1 base."""
    hm: float = 1.0
    reg: float = 1.0
    wh: float = 0.1
    hps: float | None = None
    hm_hp: float = 1.0
    hp_offset: float = 1.0
    # Not in the paper (1 = the paper). Eq. (5)'s gradient on the mixing logits is alpha - r
    # (r: each component's responsibility), bounded, while the means' grows with the
    # offset error over sigma^2: at lambda_hps = 0.1 the gate's share of the backbone's
    # gradient is small, and only the gate needs the features that tell the modes apart
    # (a front and a back component can each place their joints without knowing the view).
    # gate_grad > 1 multiplies that share (mixture_loss), leaving the loss's value as is.
    # Measured share and effect: analysis/gate_gradient.py, RESULTS.md ("Why the gate fails").
    gate_grad: float = 1.0

    def lambdas(self, mixture):
        """{part: λ} of Eq. (6); hps unset means 0.1 for the mixture and 1 for the L1 base."""
        hps = self.hps if self.hps is not None else (0.1 if mixture else 1.0)
        return {"hm": self.hm, "reg": self.reg, "wh": self.wh, "hps": hps,
                "hm_hp": self.hm_hp, "hp_offset": self.hp_offset}


def stack_loss(out, batch, kpt_scale=None, gate_grad=1.0):
    """Named loss parts of Eq. (6) for one stack's outputs (unweighted; gate_grad: mixture_loss)."""
    mixture = num_components(out) > 0
    regressed = lambda name, mask: l1_loss(gather_feat(out[name], batch["ind"]), batch[name], mask)
    parts = {"hm": focal_loss(out["hm"], batch["hm"]),
             "reg": regressed("reg", batch["mask"])}
    if task_of(out) == "det":
        parts["wh"] = mixture_loss(out, batch, gate_grad=gate_grad) if mixture else regressed("wh", batch["mask"])
        return parts
    parts["wh"] = regressed("wh", batch["mask"])
    parts["hps"] = mixture_loss(out, batch, kpt_scale, gate_grad) if mixture else regressed("hps", batch["hps_mask"])
    if "hm_hp" in out:
        parts["hm_hp"] = focal_loss(out["hm_hp"], batch["hm_hp"])
        parts["hp_offset"] = l1_loss(gather_feat(out["hp_offset"], batch["hp_ind"]),
                                     batch["hp_offset"], batch["hp_mask"])
    return parts


def total_loss(outputs, batch, weights=None, kpt_scale=None):
    """Eq. (6): sum_k λ_k L_k, averaged over the stacks of an hourglass (intermediate
    supervision; a single-output network passes a one-element list).

    Every part is averaged over stacks, as CenterNet does for detection. The official
    pose code, by a slip, assigns instead of summing the mixture term, so only the last
    stack's counts (at half weight); here every stack counts. Returns (total, {name: float parts}).
    """
    weights = weights or LossWeights()
    if isinstance(outputs, dict):
        outputs = [outputs]
    lam = weights.lambdas(mixture=num_components(outputs[0]) > 0)
    parts = {}
    for out in outputs:
        for name, value in stack_loss(out, batch, kpt_scale, weights.gate_grad).items():
            parts[name] = parts.get(name, 0.0) + value / len(outputs)
    total = sum(lam[name] * value for name, value in parts.items())   # Eq. (6)
    return total, {name: float(value.detach()) for name, value in parts.items()}
