"""Mixture dense regression: the math, the heads, the losses (paper §3.1-3.3, §4.2).

This module replaces CenterNet's L1 size/offset regression with a Gaussian mixture
density network evaluated densely at object centres (Varamesh & Tuytelaars, CVPR 2020):

  Eq. (1)-(2)  a mixture of Gaussian kernels           -> mdn_nll
  Eq. (3)-(4)  the dense version, per-axis sigmas,
               keypoint-scale normalisation            -> mdn_nll(kpt_scale=...)
  Eq. (5)      the negative log-likelihood loss        -> mixture_loss
  Eq. (6)      the total loss with CenterNet's terms   -> total_loss
  §3.3         inference with the max / mean component-> select_component
  §4.2         ELU-plus-one sigma activation           -> sigma_activation

  §3.3         NMS-free decoding of peaks to boxes / joints -> decode

Shape legend, used in every module of the project:
  B batch, M mixture components, K joints (17 for COCO), D regression dims
  (2 for a box's (w, h); 2K for K joint offsets, x and y interleaved x0, y0, x1, y1, ...),
  C classes, H, W output map (input / 4), N objects per image (max_objs).

Channel layout of the raw head outputs (component-major, as the official code):
  wh / hps     (B, M*D, H, W)  component m's dim d is channel m*D + d
  mdn_sigma    (B, M*2, H, W)  component m's axis a (0 = x, 1 = y) is channel 2m + a
  mdn_logits   (B, M, H, W)
For M = 0 (the single-mode CenterNet base) wh / hps have D channels and there are no
mixture heads.

Targets, one dict per image as written by coco_data.py (N = max_objs):
  hm (C, H, W) centre heatmap; ind (N,) int64 centre index y*W + x; mask (N,) 1 = real
  object; reg (N, 2) sub-pixel centre offset; wh (N, 2) box size in output pixels.
  Pose adds: hps (N, 2K) joint offsets from the integer centre; hps_mask (N, 2K);
  hm_hp (K, H, W) joint heatmaps; hp_ind (N*K,) int64; hp_mask (N*K,); hp_offset (N*K, 2).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# COCO's per-joint OKS sigmas as printed in the COCO keypoint paper (pycocotools' own
# `sigmas` are these / 10). The official code uses them / 10 (= pycocotools' sigmas) as the
# per-joint scale k_j of Eq. (4), so that eyes get tighter Gaussians than hips.
COCO_OKS_SIGMAS = [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62,
                   1.07, 1.07, .87, .87, .89, .89]
COCO_KPT_SCALE = [s / 10 for s in COCO_OKS_SIGMAS]

HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ~= 0.1: the focal loss prior of CornerNet/CenterNet


# ----------------------------------------------------------------------------- activations
def sigma_activation(x, floor):
    """§4.2: sigma = ELU(x) + 1 + floor, so sigma > floor for every input (in float32,
    floor + ELU(x) + 1 rounds to the floor once ELU(x) + 1 is below its precision).

    An exp / softplus activation lets the sigmas of redundant components fall into (0, 1)
    where a few assigned samples produce huge gradients; the ELU-plus-one with a floor
    keeps every sigma above it. The official code calls (1 + floor) `mdn_min_sigma`
    (1 for hourglass detection, 2 for DLA detection, 10 for pose), i.e.
    floor = mdn_min_sigma - 1. The clamp only matters for floor = 0, where ELU(-1e3) + 1
    is exactly 0 in float32; it mirrors the official clamp at 1e-4.
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


def mdn_nll(target, mu, sigma, log_alpha, mask=None, kpt_scale=None):
    """Per-instance mixture negative log-likelihood, Eqs. (2)-(5).

    target (N, D), mu (N, M, D), sigma (N, M, 2) per-axis std of each component,
    log_alpha (N, M) log mixing coefficients, mask (N, D) 1 = visible dim (None: all),
    kpt_scale (D/2,) per-joint scale k_j (None: 1). Returns (N,).

    The std of joint j on axis a under component m is sigma[m, a] * k_j. c in Eq. (2)
    counts only the visible dims. An instance with no visible dim contributes 0.
    Computed in float32 (float64 if given) with log-sum-exp, outside autocast.
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
        std = _expand_axes(sigma, D)                                   # (N, M, D)
        if kpt_scale is not None:
            k = torch.as_tensor(kpt_scale, dtype=dtype, device=t.device)
            if k.numel() != D // 2:
                raise ValueError(f"kpt_scale has {k.numel()} entries, expected D/2 = {D // 2}")
            std = std * k.repeat_interleave(2)                         # (N, M, D)
        z = (t[:, None, :] - mu) / std                                 # (N, M, D)
        # log of Eq. (2)/(4): -c/2 log(2 pi) - sum_d log std_d - |t - mu|^2 / (2 std^2),
        # summed over visible dims only (the official code drops -sum log k_j; we keep it
        # so the value is a true log-density).
        log_phi = (mask[:, None, :] * (-0.5 * z ** 2 - torch.log(std)
                                       - 0.5 * math.log(2 * math.pi))).sum(-1)  # (N, M)
        nll = -torch.logsumexp(log_alpha + log_phi, dim=1)             # Eq. (5), (N,)
        return nll * (mask.sum(1) > 0).to(dtype)
        ### END SOLUTION


# ----------------------------------------------------------------------------- heads
def head_channels(task, m, num_classes=80, num_joints=17, refine=True, mdn_head="separate"):
    """Head name -> output channels for a task and a rung of the --m ladder.

    m = 0 is the single-mode CenterNet base (L1 regression, no mixture heads);
    m >= 1 is MDN_m. Names follow CenterNet: hm, reg, wh, hps, hm_hp, hp_offset.
    mdn_head "separate" gives mu, sigma and the logits a head each (the official layout:
    two more 256-channel 3x3 convs); "shared" (not the paper's) groups them under "mdn",
    {name: channels}, one head whose hidden layer feeds all three (see Heads).
    """
    if m < 0:
        raise ValueError(f"--m must be >= 0, got {m}")
    M = max(m, 1)
    if task == "det":
        heads = {"hm": num_classes, "reg": 2, "wh": 2 * M}
    elif task == "pose":
        heads = {"hm": 1, "reg": 2, "wh": 2, "hps": 2 * num_joints * M}
        if refine:
            heads.update(hm_hp=num_joints, hp_offset=2)
    else:
        raise ValueError(f"task must be 'det' or 'pose', got {task!r}")
    if m >= 1:
        heads.update(mdn_sigma=2 * m, mdn_logits=m)
        if mdn_head == "shared":
            heads["mdn"] = {k: heads.pop(k) for k in (regression_key(task), "mdn_sigma", "mdn_logits")}
        elif mdn_head != "separate":
            raise ValueError(f"mdn_head must be 'separate' or 'shared', got {mdn_head!r}")
    return heads


class Head(nn.Sequential):
    """3x3 conv + ReLU + 1x1 conv, as every CenterNet head."""

    def __init__(self, in_channels, out_channels, head_conv=256, prior_bias=None):
        super().__init__(nn.Conv2d(in_channels, head_conv, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(head_conv, out_channels, 1))
        if prior_bias is None:
            nn.init.zeros_(self[-1].bias)  # CenterNet's fill_fc_weights for non-heatmap heads
        else:
            nn.init.constant_(self[-1].bias, prior_bias)


def check_input(x, multiple):
    """Raise a ValueError unless x is (B, 3, H, W) with H, W multiples of `multiple` (the
    backbones' requirement for an exact stride-4 output)."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"input of shape {tuple(x.shape)}: expected (B, 3, H, W) with H and W "
                         f"multiples of {multiple}")


class Heads(nn.ModuleDict):
    """All heads on one feature map: forward(x (B, in, H, W)) -> {name: (B, ch, H, W)}.
    A group {name: ch} is one head whose output channels are split among its names, so
    the rest of the code sees the same outputs whichever mdn_head built them."""

    def __init__(self, heads, in_channels, head_conv=256):
        width = lambda ch: sum(ch.values()) if isinstance(ch, dict) else ch
        super().__init__({name: Head(in_channels, width(ch), head_conv,
                                     HEATMAP_PRIOR_BIAS if name in ("hm", "hm_hp") else None)
                          for name, ch in heads.items()})
        self.groups = {name: ch for name, ch in heads.items() if isinstance(ch, dict)}

    def forward(self, x):
        out = {}
        for name, head in self.items():
            y = head(x)                                                # (B, ch, H, W)
            if name in self.groups:
                out.update(zip(self.groups[name], y.split(list(self.groups[name].values()), 1)))
            else:
                out[name] = y
        return out


def regression_key(task):
    """The head regressed by the mixture: box size for det, joint offsets for pose."""
    return {"det": "wh", "pose": "hps"}[task]


def mixture_params(out, task, m, sigma_floor):
    """Raw head outputs -> (mu (B, M, D, H, W), sigma (B, M, 2, H, W), log_alpha (B, M, H, W)).

    For the base (m = 0) there is one component with alpha = 1 and sigma = 0 (no
    uncertainty is predicted), so decoding and analysis treat every rung alike.
    """
    reg = out[regression_key(task)]
    B, _, H, W = reg.shape
    M = max(m, 1)
    mu = reg.view(B, M, -1, H, W)                                      # (B, M, D, H, W)
    if m == 0:
        return mu, reg.new_zeros(B, 1, 2, H, W), reg.new_zeros(B, 1, H, W)
    sigma = sigma_activation(out["mdn_sigma"], sigma_floor).view(B, M, 2, H, W)
    return mu, sigma, log_mixing_coefficients(out["mdn_logits"], dim=1)


def mixture_at(out, task, m, sigma_floor, ind):
    """The mixture at flat map indices ind (B, N): mu (B, N, M, D), sigma (B, N, M, 2),
    log_alpha (B, N, M). Gathers the raw channels first, so the activations run on N
    positions instead of the whole map (what the loss and the decoder need)."""
    reg = gather_feat(out[regression_key(task)].float(), ind)         # (B, N, M*D)
    B, N = ind.shape
    M = max(m, 1)
    mu = reg.view(B, N, M, -1)                                         # (B, N, M, D)
    if m == 0:
        return mu, reg.new_zeros(B, N, 1, 2), reg.new_zeros(B, N, 1)
    sigma = sigma_activation(gather_feat(out["mdn_sigma"].float(), ind), sigma_floor).view(B, N, M, 2)
    return mu, sigma, log_mixing_coefficients(gather_feat(out["mdn_logits"], ind), dim=-1)


def select_component(mu, sigma, log_alpha, how="max"):
    """§3.3: turn a mixture into one prediction per location.

    mu (..., M, D), sigma (..., M, 2), log_alpha (..., M); how = "max" (argmax alpha, the
    paper's choice), "mean" (alpha-weighted mu and sigma; the reported component is the
    argmax) or an int (force that component, the "Comp." rows of Tables 1 and 3).
    Returns mu (..., D), sigma (..., 2), component (...) int64, alpha (...) of the
    reported component.
    """
    M = mu.shape[-2]
    if how == "max" or how == "mean":
        comp = log_alpha.argmax(-1)                                    # (...)
    elif isinstance(how, int) and not isinstance(how, bool) and 0 <= how < M:
        comp = torch.full(log_alpha.shape[:-1], how, dtype=torch.long, device=mu.device)
    else:
        raise ValueError(f"component must be 'max', 'mean' or an int in [0, {M}), got {how!r}")
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


def gather_feat(fmap, ind):
    """fmap (B, C, H, W), ind (B, N) flat indices y*W + x -> (B, N, C)."""
    B, C = fmap.shape[:2]
    flat = fmap.reshape(B, C, -1)                                      # (B, C, H*W)
    return flat.gather(2, ind[:, None, :].expand(B, C, ind.shape[1])).transpose(1, 2)


def l1_loss(pred, target, mask):
    """Masked L1, divided by the number of unmasked elements (CenterNet's RegL1Loss).
    pred, target (B, N, D); mask (B, N) or (B, N, D)."""
    with torch.autocast(device_type=pred.device.type, enabled=False):
        mask = mask.float()
        if mask.dim() == 2:
            mask = mask[..., None].expand_as(pred)
        return (torch.abs(pred.float() - target.float()) * mask).sum() / (mask.sum() + 1e-4)


def mixture_loss(out, batch, task, m, sigma_floor, kpt_scale=None):
    """Eq. (5) at the ground-truth centres, summed over objects / (1 + number of objects)
    (the official normalisation; the +1 keeps an image without objects finite)."""
    valid = batch["mask"].bool()
    mu, sigma, log_alpha = mixture_at(out, task, m, sigma_floor, batch["ind"])
    mu_i, sigma_i, log_alpha_i = mu[valid], sigma[valid], log_alpha[valid]  # (n, M, D), (n, M, 2), (n, M)
    if task == "det":
        target, dmask = batch["wh"][valid], None
    else:
        target, dmask = batch["hps"][valid], batch["hps_mask"][valid]
    nll = mdn_nll(target, mu_i, sigma_i, log_alpha_i, dmask, kpt_scale if task == "pose" else None)
    return nll.sum() / (1 + valid.sum())


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


def stack_loss(out, batch, task, m, sigma_floor, kpt_scale=None):
    """Named loss parts of Eq. (6) for one stack's outputs (unweighted)."""
    parts = {"hm": focal_loss(out["hm"], batch["hm"]),
             "reg": l1_loss(gather_feat(out["reg"], batch["ind"]), batch["reg"], batch["mask"])}
    if task == "det":
        parts["wh"] = (mixture_loss(out, batch, task, m, sigma_floor) if m > 0 else
                       l1_loss(gather_feat(out["wh"], batch["ind"]), batch["wh"], batch["mask"]))
        return parts
    parts["wh"] = l1_loss(gather_feat(out["wh"], batch["ind"]), batch["wh"], batch["mask"])
    parts["hps"] = (mixture_loss(out, batch, task, m, sigma_floor, kpt_scale) if m > 0 else
                    l1_loss(gather_feat(out["hps"], batch["ind"]), batch["hps"], batch["hps_mask"]))
    if "hm_hp" in out:
        parts["hm_hp"] = focal_loss(out["hm_hp"], batch["hm_hp"])
        parts["hp_offset"] = l1_loss(gather_feat(out["hp_offset"], batch["hp_ind"]),
                                     batch["hp_offset"], batch["hp_mask"])
    return parts


def total_loss(outputs, batch, task, m, sigma_floor, weights=None, kpt_scale=None):
    """Eq. (6): sum_k λ_k L_k, averaged over the stacks of an hourglass (intermediate
    supervision; a single-output network passes a one-element list).

    Every part is averaged over stacks, as CenterNet does for detection. The official
    pose code, by a slip, assigns instead of summing the mixture term, so only the last
    stack's counts; here every stack counts. Returns (total, {name: float parts}).
    """
    weights = weights or LossWeights()
    if isinstance(outputs, dict):
        outputs = [outputs]
    lam = {"hm": weights.hm, "reg": weights.reg, "wh": weights.wh,
           "hps": weights.hps if weights.hps is not None else (0.1 if m > 0 else 1.0),
           "hm_hp": weights.hm_hp, "hp_offset": weights.hp_offset}
    parts = {}
    for out in outputs:
        for name, value in stack_loss(out, batch, task, m, sigma_floor, kpt_scale).items():
            parts[name] = parts.get(name, 0.0) + value / len(outputs)
    total = sum(lam[name] * value for name, value in parts.items())   # Eq. (6)
    return total, {name: float(value.detach()) for name, value in parts.items()}


def default_sigma_floor(task):
    """Detection: 1 (the paper's 'minimum value one'); pose: 9 (official mdn_min_sigma 10)."""
    return {"det": 1.0, "pose": 9.0}[task]


# ----------------------------------------------------------------------------- decoding
def max_filter3x3(x):
    """3x3 max-pool with stride 1 and -inf padding, as two 1-D passes of shifted maxima:
    the same values as F.max_pool2d(x, 3, 1, 1), ~30x faster on CPU for 80-class maps."""
    ### BEGIN SOLUTION
    p = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(p[..., :, :-2], p[..., :, 1:-1]), p[..., :, 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])
    ### END SOLUTION


def peak_mask(heat):
    """Keep only 3x3 local maxima: CenterNet's replacement for NMS. heat (B, C, H, W)."""
    ### BEGIN SOLUTION
    return heat * (max_filter3x3(heat) == heat).to(heat.dtype)
    ### END SOLUTION


def topk_peaks(heat, k):
    """Top-k over all classes and positions of heat (B, C, H, W). Returns scores, flat
    spatial index ind, class, ys, xs, each (B, k). (The official top-k per class then
    top-k overall selects the same set.)"""
    ### BEGIN SOLUTION
    B, C, H, W = heat.shape
    scores, idx = heat.reshape(B, -1).topk(min(k, C * H * W))         # (B, k)
    ind = idx % (H * W)
    return scores, ind, idx // (H * W), (ind // W).to(heat.dtype), (ind % W).to(heat.dtype)
    ### END SOLUTION


def refine_joints(kps, hm_hp, hp_offset, boxes, thresh=0.1, snap=0.3):
    """Snap each regressed joint to the nearest joint-heatmap peak (CenterNet's rule).

    kps (B, k, K, 2) regressed joints, hm_hp (B, K, H, W) logits, hp_offset (B, 2, H, W)
    or None, boxes (B, k, 4) x1 y1 x2 y2, all in output pixels. A joint keeps its
    regressed position when the nearest peak scores < thresh, lies outside its person's
    box, or is further than snap * max(box w, h).
    """
    B, K, H, W = hm_hp.shape
    k = kps.shape[1]
    heat = peak_mask(torch.sigmoid(hm_hp.float()))
    score, ind = heat.view(B, K, -1).topk(min(k, H * W))               # (B, K, k2)
    k2 = ind.shape[-1]
    xs, ys = (ind % W).float(), (ind // W).float()
    if hp_offset is not None:
        off = gather_feat(hp_offset.float(), ind.view(B, -1)).view(B, K, k2, 2)
        xs, ys = xs + off[..., 0], ys + off[..., 1]
    else:
        xs, ys = xs + 0.5, ys + 0.5
    cand = torch.stack([xs, ys], -1)                                   # (B, K, k2, 2)
    reg = kps.float().permute(0, 2, 1, 3)                              # (B, K, k, 2)
    dist = torch.cdist(reg, cand)                                      # (B, K, k, k2)
    dist = dist.masked_fill(~(score > thresh)[:, :, None, :], float("inf"))
    min_dist, j = dist.min(-1)                                         # (B, K, k)
    snapped = cand.gather(2, j[..., None].expand(B, K, k, 2))         # (B, K, k, 2)
    x1, y1, x2, y2 = (boxes.float()[:, None, :, i] for i in range(4))  # (B, 1, k) each
    sx, sy = snapped[..., 0], snapped[..., 1]
    keep = (torch.isfinite(min_dist) & (sx >= x1) & (sx <= x2) & (sy >= y1) & (sy <= y2)
            & (min_dist <= snap * torch.maximum(x2 - x1, y2 - y1)))
    return torch.where(keep[..., None], snapped, reg).permute(0, 2, 1, 3)  # (B, k, K, 2)


@torch.no_grad()
def decode(out, task, m, sigma_floor, k=100, component="max", refine=False):
    """NMS-free decoding (§3.3) of one stack's raw outputs into k detections per image.

    Returns a dict of tensors in output-map pixels (multiply by the stride and undo the
    input warp for image pixels): scores, classes, component (B, k); alpha (B, k) of the
    reported component; sigma (B, k, 2); centers, (B, k, 2); boxes (B, k, 4) x1 y1 x2 y2;
    pose adds keypoints (B, k, K, 2) = integer peak + selected offsets (optionally
    refined by hm_hp). The component is chosen per pixel, before peak extraction.
    """
    ### BEGIN SOLUTION
    heat = peak_mask(torch.sigmoid(out["hm"].float()))
    scores, ind, classes, ys, xs = topk_peaks(heat, k)                 # (B, k) each
    reg = gather_feat(out["reg"].float(), ind)                         # (B, k, 2)
    cx, cy = xs + reg[..., 0], ys + reg[..., 1]
    mu_k, sigma_k, log_alpha_k = mixture_at(out, task, m, sigma_floor, ind)  # (B, k, M, ...)
    B, _, M, D = mu_k.shape
    mu_s, sigma_s, comp, alpha = select_component(mu_k, sigma_k, log_alpha_k, component)
    wh = mu_s if task == "det" else gather_feat(out["wh"].float(), ind)  # (B, k, 2)
    boxes = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2,
                         cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)  # (B, k, 4)
    det = dict(scores=scores, classes=classes, component=comp, alpha=alpha, sigma=sigma_s,
               centers=torch.stack([cx, cy], -1), boxes=boxes)
    if task == "pose":
        kps = mu_s.view(B, -1, D // 2, 2) + torch.stack([xs, ys], -1)[:, :, None, :]  # (B, k, K, 2)
        if refine:
            if "hm_hp" not in out:
                raise ValueError("refine=True needs the hm_hp head (train with refinement heads)")
            kps = refine_joints(kps, out["hm_hp"], out.get("hp_offset"), boxes)
        det["keypoints"] = kps
    return det
    ### END SOLUTION


def flip_merge(out, out_flipped, task, m, flip_idx):
    """Left-right flip test: merge the outputs of an image and of its mirror image.

    Heatmaps are averaged as probabilities (CenterNet), every mixture head per component
    (mu, raw sigma, logits), so the component index stays the same for both views (the
    official detector averages after selection and never flips the component back).
    Pose offsets are mirrored: x offset o -> 1 - o (offsets start at a cell's corner),
    left/right joints swapped by flip_idx (a list giving each joint's mirror joint). reg and hp_offset come from the original only.
    """
    f = lambda t: torch.flip(t, dims=[3])
    merged = dict(out)
    prob = (torch.sigmoid(out["hm"].float()) + f(torch.sigmoid(out_flipped["hm"].float()))) / 2
    merged["hm"] = torch.logit(prob, eps=1e-6)
    for name in ("wh", "mdn_sigma", "mdn_logits"):
        if name in out:
            merged[name] = (out[name] + f(out_flipped[name])) / 2
    if task == "pose":
        B, _, H, W = out["hps"].shape
        K = len(flip_idx)
        hps = f(out_flipped["hps"]).view(B, -1, K, 2, H, W)[:, :, flip_idx]  # (B, M, K, 2, H, W)
        # The mirror's cell c' is our cell W-1-c', and offsets are measured from a cell's
        # corner, so its x offset o' is 1 - o in our frame (not -o: that is 0.5 px off).
        sign = torch.tensor([-1.0, 1.0], dtype=hps.dtype, device=hps.device).view(1, 1, 1, 2, 1, 1)
        shift = torch.tensor([1.0, 0.0], dtype=hps.dtype, device=hps.device).view(1, 1, 1, 2, 1, 1)
        hps = hps * sign + shift
        merged["hps"] = (out["hps"] + hps.reshape(B, -1, H, W)) / 2
        if "hm_hp" in out:
            prob = (torch.sigmoid(out["hm_hp"].float())
                    + f(torch.sigmoid(out_flipped["hm_hp"].float()))[:, flip_idx]) / 2
            merged["hm_hp"] = torch.logit(prob, eps=1e-6)
    return merged
