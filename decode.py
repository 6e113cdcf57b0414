"""NMS-free decoding of the network's outputs (paper §3.3), the flip test and the
multi-scale merge.

  decode        3x3 local maxima of the centre heatmap (CenterNet's replacement for NMS),
                top-k, the mixture read at each peak and turned into one prediction by
                mdn_dense.select_component (max or mean component, §3.3), boxes and joints
  refine_joints CenterNet's hm_hp refinement: snap regressed joints to joint-heatmap peaks
                (the "refined" rows of Table 7)
  flip_merge    the left-right flip test, per mixture component
  merge_scales  the multi-scale test (Fig. 3's S3 / S5): soft-NMS over the scales' detections

Everything is in output-map pixels (input / 4); inference.to_coco_results maps back to
the image. Shapes as in mdn_dense.py's legend (k: detections kept per image).
"""
import numpy as np
import torch
import torch.nn.functional as F

from mdn_dense import gather_feat, mixture_at, select_component, task_of

# CenterNet's multi-scale merge: soft_nms(Nt=0.5, method=2 (Gaussian)), sigma 0.5, threshold 0.001.
SOFT_NMS = dict(sigma=0.5, iou_thresh=0.5, min_score=0.001)


# ----------------------------------------------------------------------------- peaks
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


def peak_logits(logits):
    """The logits at their 3x3 local maxima, -inf elsewhere. The test, and the top-k after it,
    run on the logits, not the probabilities: near a confident centre the sigmoid rounds
    neighbouring cells to exactly 1.0 in float32, so both would pass as peaks (one object
    decoded twice) and the top-k would break the ties arbitrarily (differently in PyTorch
    and onnxruntime); the logits keep their order. logits (B, C, H, W)."""
    logits = logits.float()
    return logits.masked_fill(max_filter3x3(logits) != logits, float("-inf"))


def topk_peaks(heat, k):
    """Top-k over all classes and positions of heat (B, C, H, W). Returns scores, flat
    spatial index ind, class, ys, xs, each (B, k). (The official top-k per class then
    top-k overall selects the same set.)"""
    ### BEGIN SOLUTION
    B, C, H, W = heat.shape
    scores, idx = heat.reshape(B, -1).topk(min(k, C * H * W))         # (B, k)
    cls = idx // (H * W)
    ind = idx - cls * (H * W)               # idx % (H * W), written so that ONNX export takes it
    ys = ind // W
    return scores, ind, cls, ys.to(heat.dtype), (ind - ys * W).to(heat.dtype)
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
    top, ind = peak_logits(hm_hp).view(B, K, -1).topk(min(k, H * W))  # (B, K, k2)
    score = torch.sigmoid(top)
    k2 = ind.shape[-1]
    xs, ys = (ind - (ind // W) * W).float(), (ind // W).float()
    if hp_offset is not None:
        off = gather_feat(hp_offset.float(), ind.view(B, -1)).view(B, K, k2, 2)
        xs, ys = xs + off[..., 0], ys + off[..., 1]
    else:
        xs, ys = xs + 0.5, ys + 0.5
    cand = torch.stack([xs, ys], -1)                                   # (B, K, k2, 2)
    reg = kps.float().permute(0, 2, 1, 3)                              # (B, K, k, 2)
    # the exact mode: the default matrix-multiply mode is off by up to 0.18 px at 512 px
    dist = torch.cdist(reg, cand, compute_mode="donot_use_mm_for_euclid_dist")  # (B, K, k, k2)
    dist = dist.masked_fill(~(score > thresh)[:, :, None, :], float("inf"))
    min_dist, j = dist.min(-1)                                         # (B, K, k)
    snapped = cand.gather(2, j[..., None].expand(B, K, k, 2))         # (B, K, k, 2)
    x1, y1, x2, y2 = (boxes.float()[:, None, :, i] for i in range(4))  # (B, 1, k) each
    sx, sy = snapped[..., 0], snapped[..., 1]
    keep = (torch.isfinite(min_dist) & (sx >= x1) & (sx <= x2) & (sy >= y1) & (sy <= y2)
            & (min_dist <= snap * torch.maximum(x2 - x1, y2 - y1)))
    return torch.where(keep[..., None], snapped, reg).permute(0, 2, 1, 3)  # (B, k, K, 2)


# ----------------------------------------------------------------------------- decoding
@torch.no_grad()
def decode(out, k=100, component="max", refine=False, mixture=False):
    """NMS-free decoding (§3.3) of one stack's raw outputs into k detections per image.

    Returns a dict of tensors in output-map pixels (multiply by the stride and undo the
    input warp for image pixels): scores, classes, component (B, k); alpha (B, k) of the
    reported component; sigma (B, k, 2); centers, (B, k, 2); boxes (B, k, 4) x1 y1 x2 y2;
    pose adds keypoints (B, k, K, 2) = integer peak + selected offsets (optionally
    refined by hm_hp). The component is chosen per pixel, before peak extraction.
    mixture=True adds the whole mixture at each peak (for calibration, uncertainty.py):
    mu (B, k, M, D) (det: (w, h); pose: joint offsets from the peak), sigma_all (B, k, M, 2),
    log_alpha (B, k, M) and peaks (B, k, 2), the integer peak cell (the offsets' origin).
    Detections come best first, in the same order for every component rule.
    """
    ### BEGIN SOLUTION
    task = task_of(out)
    top, ind, classes, ys, xs = topk_peaks(peak_logits(out["hm"]), k)  # (B, k) each
    scores = torch.sigmoid(top)                                        # 0 for a -inf (no peak)
    reg = gather_feat(out["reg"].float(), ind)                         # (B, k, 2)
    cx, cy = xs + reg[..., 0], ys + reg[..., 1]
    mu_k, sigma_k, log_alpha_k = mixture_at(out, ind)                  # (B, k, M, ...)
    B, _, M, D = mu_k.shape
    mu_s, sigma_s, comp, alpha = select_component(mu_k, sigma_k, log_alpha_k, component)
    wh = mu_s if task == "det" else gather_feat(out["wh"].float(), ind)  # (B, k, 2)
    boxes = torch.stack([cx - wh[..., 0] / 2, cy - wh[..., 1] / 2,
                         cx + wh[..., 0] / 2, cy + wh[..., 1] / 2], -1)  # (B, k, 4)
    det = dict(scores=scores, classes=classes, component=comp, alpha=alpha, sigma=sigma_s,
               centers=torch.stack([cx, cy], -1), boxes=boxes)
    if mixture:
        det.update(mu=mu_k, sigma_all=sigma_k, log_alpha=log_alpha_k, peaks=torch.stack([xs, ys], -1))
    if task == "pose":
        kps = mu_s.view(B, -1, D // 2, 2) + torch.stack([xs, ys], -1)[:, :, None, :]  # (B, k, K, 2)
        if refine:
            if "hm_hp" not in out:
                raise ValueError("refine=True needs the hm_hp head (train with refinement heads)")
            kps = refine_joints(kps, out["hm_hp"], out.get("hp_offset"), boxes)
        det["keypoints"] = kps
    return det
    ### END SOLUTION


def mean_probability_logit(a, b):
    """logit((sigmoid(a) + sigmoid(b)) / 2), computed in log space so that it stays exact
    and strictly ordered where the probabilities round to 1 (a clamped logit of the mean
    made confident neighbours equal, and both passed the peak test)."""
    a, b = a.float(), b.float()
    return (torch.logaddexp(F.logsigmoid(a), F.logsigmoid(b))
            - torch.logaddexp(F.logsigmoid(-a), F.logsigmoid(-b)))


def flip_merge(out, out_flipped, flip_idx=None):
    """Left-right flip test: merge the outputs of an image and of its mirror image.

    Heatmaps are averaged as probabilities (CenterNet), every mixture head per component
    (mu, sigma, logits), so the component index stays the same for both views (the
    official detector averages after selection and never flips the component back).
    Pose offsets are mirrored: x offset o -> 1 - o (offsets start at a cell's corner),
    left/right joints swapped by flip_idx (each joint's mirror joint; pose only).
    reg and hp_offset come from the original only.
    """
    f = lambda t: torch.flip(t, dims=[3])
    merged = dict(out)
    merged["hm"] = mean_probability_logit(out["hm"], f(out_flipped["hm"]))
    for name in ("wh", "mdn_sigma", "mdn_logits"):
        if name in out:
            merged[name] = (out[name] + f(out_flipped[name])) / 2
    if task_of(out) == "pose":
        if flip_idx is None:
            raise ValueError("the pose flip test needs flip_idx (each joint's mirror joint)")
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
            merged["hm_hp"] = mean_probability_logit(out["hm_hp"], f(out_flipped["hm_hp"])[:, flip_idx])
    return merged


# ----------------------------------------------------------------------------- multi-scale
def box_iou(a, b):
    """IoU of boxes a (n, 4) with boxes b (g, 4), all x1 y1 x2 y2 (continuous, no +1) -> (n, g);
    0 where neither box has area. The project's one IoU (analysis/matching.py uses it too)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)                # (n, g)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def soft_nms(boxes, scores, method="gaussian", sigma=0.5, iou_thresh=0.5, min_score=0.001):
    """Soft-NMS (Bodla et al. 2017): take the best box, decay the others' scores by their
    overlap with it, repeat. boxes (n, 4) x1 y1 x2 y2, scores (n,). method "gaussian":
    score *= exp(-IoU^2 / sigma); "linear": score *= 1 - IoU where IoU > iou_thresh. Boxes
    decayed below min_score are dropped. Returns (kept indices, their new scores), best first."""
    boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.array(scores, np.float64)
    if method not in ("gaussian", "linear"):
        raise ValueError(f"soft-NMS method must be gaussian or linear, got {method!r}")
    todo, keep = np.arange(len(scores)), []
    while len(todo):
        best = todo[scores[todo].argmax()]
        keep.append(best)
        todo = todo[todo != best]
        iou = box_iou(boxes[best], boxes[todo])[0]
        scores[todo] *= np.exp(-iou ** 2 / sigma) if method == "gaussian" else np.where(iou > iou_thresh, 1 - iou, 1.0)
        todo = todo[scores[todo] >= min_score]
    keep = np.array(keep, dtype=np.int64)
    return keep, scores[keep]


def merge_scales(results, k=100, method="gaussian"):
    """Result dicts of several test scales -> soft-NMS per image and class, then the top k
    per image (CenterNet's merge_outputs). Keypoints and the analysis fields ride along."""
    groups = {}
    for r in results:
        groups.setdefault((r["image_id"], r["category_id"]), []).append(r)
    per_image = {}
    for (img_id, _), group in groups.items():
        xywh = np.array([r["bbox"] for r in group], np.float64)
        keep, scores = soft_nms(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                                [r["score"] for r in group], method, **SOFT_NMS)
        per_image.setdefault(img_id, []).extend(dict(group[i], score=float(s)) for i, s in zip(keep, scores))
    return [r for img_id in per_image
            for r in sorted(per_image[img_id], key=lambda r: -r["score"])[:k]]
