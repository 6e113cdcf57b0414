"""Inference: a network (or the ground truth) -> decoded detections -> COCOeval rows (§3.3,
§4.3-4.4). The library behind evaluate.py, train.py's evaluations, predict.py and the notebooks.

A forward function (network_forward: the last stack, optionally with the left-right flip
test of decode.flip_merge; oracle_forward: the ground truth rendered to targets, CenterNet's
oracle) gives one stack's outputs per batch; infer_batch decodes them without NMS
(decode.decode, §3.3) under every requested rule and maps the peaks back to original pixels
(to_coco_results). The rules are evaluation's own: a component rule ("max", the
paper's; "mean"; a forced component index), a (rule, refine) pair, or GroundTruthHeads (some
heads replaced by the ground truth: CenterNet's error analysis). evaluate_rows scores each
row with COCOeval; format_table prints the layout of the paper's Tables 1 and 3.

Multi-scale test (the paper's S3 / S5 in Fig. 3): MultiScale shows the letterboxed image at
input_size * s for every s (rounded to the network's size multiple), each scale's detections
are mapped back to original pixels and merged per image and class with soft-NMS
(decode.merge_scales) as CenterNet's multi-scale test does. (CenterNet keeps a fixed 512
input and zooms and crops the image; here the whole image is seen at every scale.) A single
scale uses no NMS at all. measure_fps times network + decoding + mapping back (+ merge).
"""
import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from coco_data import STRIDE
from coco_eval import coco_evaluate
import mdn_dense as md
from decode import decode, flip_merge, merge_scales
from model import ModelConfig, head_channels
from transforms import apply_affine
from util import precision as px

STAT_NAMES = {"det": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
              "pose": ["AP", "AP50", "AP75", "APm", "APl"]}


@dataclass
class Inference:
    """How to turn outputs into detections. rules: component rules to decode ("max",
    "mean", an int, or a pair (rule, refine) that sets refinement for that rule alone);
    k detections per image; flip test (flip_idx: each joint's mirror, pose); hm_hp
    refinement; soft-NMS method of the multi-scale merge."""
    rules: tuple = ("max",)
    k: int = 100
    flip: bool = False
    flip_idx: list | None = None
    refine: bool = False
    nms_method: str = "gaussian"
    precision: str = "fp32"      # fp32 | bf16 (a resolved precision.py choice)
    mixture: tuple = ()          # rules whose result dicts carry the whole mixture (decode_results)
    cfg: ModelConfig | None = None  # the model's config: the oracle heads of GroundTruthHeads rules


# ----------------------------------------------------------------------------- inference
def oracle_outputs(batch, cfg):
    """Ground-truth targets -> the outputs of a perfect network of ModelConfig cfg
    (component 0 of the mixture carries the truth), so decoding them must give back the
    ground truth."""
    hm = batch["hm"].float()
    B, C, H, W = hm.shape
    logit = lambda p: torch.logit(p.clamp(1e-6, 1 - 1e-6))
    heads = head_channels(cfg)
    out = {name: hm.new_zeros(B, ch, H, W) for name, ch in heads.items()}
    out["hm"] = logit(hm)

    def scatter(name, ind, values, mask):
        """Write values (B, N, c) at flat indices ind (B, N) where mask (B, N) is set."""
        flat = out[name].view(B, out[name].shape[1], H * W)
        for b in range(B):
            keep = mask[b] > 0
            flat[b, :values.shape[-1], ind[b][keep]] = values[b][keep].T.float()

    scatter("reg", batch["ind"], batch["reg"], batch["mask"])
    scatter("wh", batch["ind"], batch["wh"], batch["mask"])  # det: component 0 = channels 0, 1
    if cfg.task == "pose":
        scatter("hps", batch["ind"], batch["hps"], batch["mask"])
        if "hm_hp" in out:
            out["hm_hp"] = logit(batch["hm_hp"].float())
            scatter("hp_offset", batch["hp_ind"], batch["hp_offset"], batch["hp_mask"])
    if cfg.m >= 1:
        out["mdn_logits"][:, 0] = 10.0               # alpha_0 ~ 1 everywhere
        # the truth has no spread to report: the sigma a raw output of 0 activates to
        out["mdn_sigma"] = md.sigma_activation(out["mdn_sigma"], cfg.sigma_floor)
    return out


def network_forward(model, device, inference):
    """view (a CocoDataset batch) -> one stack's outputs: the last stack of the network,
    averaged with the mirrored image's outputs when inference.flip."""
    def forward(view):
        x = view["input"].to(device, non_blocking=True).contiguous(memory_format=px.memory_format(inference.precision))
        with px.autocast(device, inference.precision):
            out = model(x)[-1]
            if inference.flip:
                out = flip_merge(out, model(torch.flip(x, dims=[3]))[-1], inference.flip_idx)
        return out
    return forward


def oracle_forward(cfg):
    """view -> the oracle's outputs (oracle_outputs), for the same loop as a network."""
    return lambda view: oracle_outputs(view, cfg)


def _numpy(x):
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, np.float64)


def to_coco_results(det, out2img, image_ids, cat_ids, task):
    """decode.decode's output -> a flat list of COCO result dicts (scores not rounded).

    det: scores, classes (B, k), boxes (B, k, 4) x1 y1 x2 y2 and, for pose, keypoints
    (B, k, K, 2), all in output-map pixels; out2img (B, 2, 3); image_ids (B,); cat_ids: class
    id -> COCO category id. Each dict: image_id, category_id, bbox [x, y, w, h] in original
    pixels, score (float, unrounded); pose adds keypoints [x, y, 1] * K, so one list can be
    evaluated as boxes and as keypoints.
    """
    A = _numpy(out2img)                                               # (B, 2, 3)
    scores, classes = _numpy(det["scores"]), _numpy(det["classes"]).astype(int)
    boxes = _numpy(det["boxes"])
    kps = _numpy(det["keypoints"]) if task == "pose" else None
    results = []
    for b, img_id in enumerate(_numpy(image_ids).astype(int).tolist()):
        corners = apply_affine(boxes[b].reshape(-1, 2, 2), A[b])      # (k, 2, 2)
        xy1, xy2 = corners.min(1), corners.max(1)                     # a flip may swap corners
        bbox = np.concatenate([xy1, xy2 - xy1], 1).tolist()           # (k, 4) x y w h
        if kps is not None:
            pts = apply_affine(kps[b], A[b])                          # (k, K, 2)
            flat = np.concatenate([pts, np.ones_like(pts[..., :1])], -1).reshape(len(pts), -1)
        for i in range(len(bbox)):
            r = {"image_id": img_id, "category_id": int(cat_ids[classes[b, i]]),
                 "bbox": bbox[i], "score": float(scores[b, i])}
            if kps is not None:
                r["keypoints"] = flat[i].tolist()
            results.append(r)
    return results


MIXTURE_KEYS = ("mix_mu", "mix_sigma", "mix_log_alpha", "peak")   # decode_results(mixture=True); not in results.json


def decode_results(out, batch, cat_ids, rule="max", k=100, refine=False, mixture=False):
    """Decode one batch's outputs with one component rule into COCO result dicts (original
    pixels). Each dict also carries component (int), alpha (float), sigma ([sx, sy] in
    output-map pixels, before the per-joint scale k_j), center ([x, y], original pixels),
    out_px (original pixels per output-map pixel) for the analyses and plots, and rank
    (the peak's place in its image's top k: the same peak under every rule).
    mixture=True adds the whole mixture at the peak, in output-map pixels, as float32 numpy
    views of one array per batch (a list per detection would be ~100 Python floats each):
    mix_mu (M, D), mix_sigma (M, 2), mix_log_alpha (M,), and peak ([x, y], original pixels
    of the integer peak cell's corner, where pose offsets start).
    Peaks of probability exactly 0 (an underflowed sigmoid) are not detections: dropped."""
    det = {name: v.cpu() for name, v in decode(out, k=k, component=rule, refine=refine, mixture=mixture).items()}
    res = to_coco_results(det, batch["out2img"], batch["image_id"], cat_ids, "pose" if "keypoints" in det else "det")
    comp, alpha, sigma = det["component"].flatten(), det["alpha"].flatten(), det["sigma"].reshape(-1, 2)
    A = batch["out2img"].double().numpy()                                  # (B, 2, 3)
    image_px = lambda xy: np.concatenate([apply_affine(c.double().numpy(), a) for c, a in zip(xy, A)]).tolist()
    centers = image_px(det["centers"])                                     # (B*k, 2)
    kk = det["scores"].shape[1]
    out_px = np.repeat(np.sqrt(np.abs(np.linalg.det(A[:, :, :2]))), kk)
    for i, r in enumerate(res):
        r.update(component=int(comp[i]), alpha=float(alpha[i]), sigma=sigma[i].tolist(),
                 center=centers[i], out_px=float(out_px[i]), rank=i % kk)
    if mixture:
        B, _, M, D = det["mu"].shape
        mu, sig = det["mu"].reshape(B * kk, M, D).numpy(), det["sigma_all"].reshape(B * kk, M, 2).numpy()
        log_alpha, peaks = det["log_alpha"].reshape(B * kk, M).numpy(), image_px(det["peaks"])
        for i, r in enumerate(res):
            r.update(mix_mu=mu[i], mix_sigma=sig[i], mix_log_alpha=log_alpha[i], peak=peaks[i])
    return [r for r in res if r["score"] > 0]


# ----------------------------------------------------------------------------- ground-truth heads
@dataclass(frozen=True)
class GroundTruthHeads:
    """A decoding rule (Inference.rules): the network's outputs with the heads `heads`
    replaced by the ground truth (CenterNet's error analysis), decoded with the component
    rule `rule`."""
    heads: tuple
    rule: object = "max"


def at_cells(fmap, ind, values, mask):
    """fmap (B, C, H, W) with values (B, N, d) written at flat cells ind (B, N) where mask
    (B, N) or (B, N, d) is set, every group of d channels alike (C = M*d: each component);
    elsewhere fmap's own values. A copy in float32."""
    B, C, H, W = fmap.shape
    d = values.shape[-1]
    flat = fmap.detach().float().contiguous().view(B, C, H * W).clone()  # (B, C, H*W)
    ind, values, mask = ind.to(flat.device), values.to(flat.device).float(), mask.to(flat.device)
    mask = (mask[..., None].expand_as(values) if mask.dim() == 2 else mask) > 0
    for b in range(B):
        keep = mask[b].any(-1)
        idx = ind[b][keep]
        old = flat[b][:, idx].T.view(len(idx), C // d, d)               # (n, M, d)
        flat[b][:, idx] = torch.where(mask[b][keep][:, None], values[b][keep][:, None], old).reshape(len(idx), C).T
    return flat.view(B, C, H, W)


def substitute(out, oracle, batch, heads):
    """One stack's outputs with `heads` from oracle (oracle_outputs of batch):
    heatmaps (hm, hm_hp) whole; reg, wh, hps at the ground-truth centres only (hp_offset at
    the joint cells), in every mixture component, hps only on annotated joints: elsewhere
    the network's values stay, so each row isolates one head's error."""
    new = dict(out)
    for name in heads:
        if name in ("hm", "hm_hp"):
            new[name] = oracle[name].to(out[name].device).float()
        elif name == "hp_offset":
            new[name] = at_cells(out[name], batch["hp_ind"], batch["hp_offset"], batch["hp_mask"])
        else:
            mask = batch["hps_mask"] if name == "hps" else batch["mask"]
            new[name] = at_cells(out[name], batch["ind"], batch[name], mask)
    return new


# ----------------------------------------------------------------------------- the loop
def infer_batch(forward, batch, cat_ids, inference):
    """One batch -> {rule: result dicts}. forward(view) -> outputs (network_forward or
    oracle_forward); batch is a CocoDataset batch, or a list of batches of the same images
    at several test scales (MultiScale), merged by soft-NMS. One forward pass serves every rule;
    a GroundTruthHeads rule decodes it with some heads replaced by the oracle's
    (inference.cfg). The ranks of scale v are offset by v * k (unique per image)."""
    views = batch if isinstance(batch, list) else [batch]
    results = {rule: [] for rule in inference.rules}
    for v, view in enumerate(views):
        out, oracle = forward(view), None
        for rule in inference.rules:
            how, ref = rule if isinstance(rule, tuple) else (rule, inference.refine)
            o = out
            if isinstance(rule, GroundTruthHeads):
                oracle = oracle_outputs(view, inference.cfg) if oracle is None else oracle
                how, o = rule.rule, substitute(out, oracle, view, rule.heads)
            res = decode_results(o, view, cat_ids, how, inference.k, ref, rule in inference.mixture)
            for r in res:
                r["rank"] += v * inference.k
            results[rule].extend(res)
    if len(views) > 1:
        results = {rule: merge_scales(res, inference.k, inference.nms_method) for rule, res in results.items()}
    return results


@torch.no_grad()
def predict(forward, loader, cat_ids, inference, progress=True):
    """Run inference over `loader`: {rule: list of COCO result dicts} with the extra fields
    of decode_results. A network's forward must be in eval mode."""
    results = {rule: [] for rule in inference.rules}
    for batch in tqdm(loader, desc="inference", disable=not progress, leave=False):
        for rule, res in infer_batch(forward, batch, cat_ids, inference).items():
            results[rule].extend(res)
    return results


@torch.no_grad()
def measure_fps(forward, dataset, cat_ids, inference, cuda=False, n=50, warmup=5):
    """Images per second (Fig. 3's speed axis) of network + decoding + mapping back + the
    multi-scale merge, one image at a time, after `warmup` untimed images. Data loading and
    the input warp are excluded: up to 10 distinct images are loaded first and cycled
    (the cost does not depend on the pixels); the copy to the device is included."""
    if n < 1:
        raise ValueError(f"time at least one image, got n = {n}")
    strip = lambda s: {key: s[key] for key in ("input", "out2img", "image_id")}
    collate = torch.utils.data.default_collate
    samples = []
    for i in range(min(10, len(dataset))):
        s = dataset[i]
        samples.append([collate([strip(v)]) for v in s] if isinstance(s, list) else collate([strip(s)]))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for i in range(warmup + n):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        infer_batch(forward, samples[i % len(samples)], cat_ids, inference)
    sync()
    return n / (time.perf_counter() - t0)


def component_rules(m, rule="max", oracle=False, rescore=None):
    """The rows of Tables 1 / 3: "All" with the chosen rule, then each component forced;
    oracle adds "Oracle comp." (uncertainty.oracle_component, M >= 2), rescore ("sigma" or
    "density") a row of the All results rescored (uncertainty.rescore)."""
    rows = {"All": rule}
    if m >= 2:
        rows.update({str(i + 1): i for i in range(m)})
        if oracle and rule != "oracle":
            rows["Oracle comp."] = "oracle"
    if rescore:
        rows[f"Rescored ({rescore})"] = f"rescore-{rescore}"
    return rows


def evaluate_rows(coco_gt, results, rows, task, img_ids, oks_sigmas=None):
    """COCOeval per row -> {row name: stats array}. oks_sigmas: the keypoints' (None: COCO's)."""
    return {name: coco_evaluate(coco_gt, results[rule], task, img_ids, kpt_oks_sigmas=oks_sigmas)
            for name, rule in rows.items()}


def format_table(stats, task, title="", label="Comp.", delta=None):
    """The layout of the paper's Tables 1 (det) and 3 (pose), in percent; delta: a row
    name, then a last column dAP = AP - that row's AP."""
    names = STAT_NAMES[task]
    width = max([7] + [len(row) + 2 for row in stats])
    lines = [title] if title else []
    lines.append(f"{label:<{width}}" + "".join(f"{n:>8}" for n in names) + ("     dAP" if delta else ""))
    for row, s in stats.items():
        # COCOeval writes -1 where an area range has no ground truth
        lines.append(f"{row:<{width}}" + "".join(f"{100 * s[i]:8.1f}" if s[i] >= 0 else f"{'-':>8}" for i in range(len(names)))
                     + (f"{100 * (s[0] - stats[delta][0]):+8.1f}" if delta else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- during training
def evaluate_model(model, val, cfg, rank, world, device, progress, components=True):
    """train.py's evaluations: COCO AP of the full model and of each component on the
    CocoDataset val (cfg: a train.TrainConfig, for its workers and precision). Every rank
    infers a shard, rank 0 evaluates the gathered results (de-duplicated: the sampler pads).
    components=False leaves the per-component rows out (train.py's held-out test split: the
    metric there, the diagnostics on val; they cost 3 of a demo split's 7 s).

    Pose adds the row "All+ref": the max component with CenterNet's hm_hp refinement (the
    default of CenterNet's pose test, the "refined" rows of Table 7); "All" is unrefined."""
    rows = component_rules(model.cfg.m)
    if not components:
        rows = {"All": rows["All"]}
    sampler = torch.utils.data.DistributedSampler(val, world, rank, shuffle=False)
    loader = torch.utils.data.DataLoader(val, batch_size=16, sampler=sampler, num_workers=cfg.workers)
    if model.cfg.task == "pose":
        rows = {"All": rows.pop("All"), "All+ref": ("max", True), **rows}
    inference = Inference(rules=tuple(rows.values()), precision=px.resolve(cfg.precision, device))
    model.eval()
    results = predict(network_forward(model, device, inference), loader, val.cat_ids, inference, progress)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        results = {rule: [r for part in gathered for r in part[rule]] for rule in results}
    if rank != 0:
        return None
    for rule, res in results.items():  # padded duplicates carry identical detections
        seen, unique = set(), []
        for r in res:
            key = (r["image_id"], r["score"], tuple(r["bbox"]))
            if key not in seen:
                seen.add(key)
                unique.append(r)
        results[rule] = unique
    return evaluate_rows(val.coco, results, rows, model.cfg.task, val.image_ids, val.oks_sigmas)


# ----------------------------------------------------------------------------- multi-scale test
class MultiScale(torch.utils.data.Dataset):
    """The images of a CocoDataset at several input sizes: item i is a list of samples, one
    per size, each with its own letterbox (out2img), so detections map back exactly."""

    def __init__(self, dataset, sizes):
        self.sets = []
        for size in sizes:
            view = copy.copy(dataset)  # shares the parsed annotations; only the letterbox size changes
            view.input_size, view.out_size = size, size // STRIDE
            self.sets.append(view)

    def __len__(self):
        return len(self.sets[0])

    def __getitem__(self, index):
        return [view[index] for view in self.sets]


def test_sizes(input_size, scales, multiple):
    """Input side for every test scale: input_size * s rounded to the network's size
    multiple (at least one multiple)."""
    return [max(multiple, int(round(input_size * s / multiple)) * multiple) for s in scales]
