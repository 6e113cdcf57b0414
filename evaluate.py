"""Evaluate a trained model on a COCO-format split: the paper's Tables 1 and 3 (§4.3, §4.4),
the speed-accuracy trade-off of Fig. 3 (§4.3.2) and, with --analysis, Fig. 2, Tables 4-6, Fig. 5.

Inference runs the network, optionally with the left-right flip test (mdn_dense.flip_merge),
decodes peaks without NMS (mdn_dense.decode, §3.3), maps them back to original pixels
(coco_eval.to_coco_results) and scores them with COCOeval: once with the chosen component
rule ("All": the max component by default) and once per component forced on every
prediction (the "Comp." rows). `--oracle` replaces the network by the ground truth rendered
to targets (CenterNet's oracle evaluation): the round trip that must score ~1.0.

Multi-scale test (`--scales`, the paper's S3 / S5 in Fig. 3): the network sees the letterboxed
image at input_size * s for every s (rounded to the network's size multiple), each scale's
detections are mapped back to original pixels and all scales are merged per image and class
with soft-NMS (Bodla et al. 2017) as CenterNet's multi-scale test does: Gaussian decay
score *= exp(-IoU^2 / 0.5), or linear score *= 1 - IoU above IoU 0.5; boxes whose score falls
below 0.001 are dropped; then the top k per image are kept. (CenterNet keeps a fixed 512 input
and zooms and crops the image; here the whole image is seen at every scale.) A single scale
uses no NMS at all. `--fps` times network + decoding + mapping back (+ merge) per image.

    python evaluate.py --checkpoint runs/pose_m3/ckpt.pt            # synthetic val split
    python evaluate.py --checkpoint ckpt.pt --data COCO_ROOT --flip --refine --analysis
    python evaluate.py --checkpoint ckpt.pt --data COCO_ROOT --scales 0.5 0.75 1 1.25 1.5 --fps
    python evaluate.py --oracle --task pose --ann A.json --images DIR

The analyses themselves (Fig. 2, Tables 4-6, latent-mode agreement) are in analysis.py,
the figures in plots.py.
"""
import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import mdn_dense as md
from coco_data import STRIDE, CocoDataset, apply_affine
from coco_eval import coco_evaluate, to_coco_results

STAT_NAMES = {"det": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
              "pose": ["AP", "AP50", "AP75", "APm", "APl"]}
# CenterNet's multi-scale merge: soft_nms(Nt=0.5, method=2 (Gaussian)), sigma 0.5, threshold 0.001.
SOFT_NMS = dict(sigma=0.5, iou_thresh=0.5, min_score=0.001)


# ----------------------------------------------------------------------------- inference
def oracle_outputs(batch, task, m, num_classes, num_joints=0):
    """Ground-truth targets -> the raw head outputs of a perfect network (component 0 of
    the mixture carries the truth), so decoding them must give back the ground truth."""
    hm = batch["hm"].float()
    B, C, H, W = hm.shape
    logit = lambda p: torch.logit(p.clamp(1e-6, 1 - 1e-6))
    M = max(m, 1)
    heads = md.head_channels(task, m, num_classes, num_joints, refine="hm_hp" in batch)
    out = {name: hm.new_zeros(B, ch, H, W) for name, ch in heads.items()}
    out["hm"] = logit(hm)

    def scatter(name, ind, values, mask, first_channel=0):
        """Write values (B, N, c) at flat indices ind (B, N) where mask (B, N) is set."""
        flat = out[name].view(B, out[name].shape[1], H * W)
        for b in range(B):
            keep = mask[b] > 0
            c = values.shape[-1]
            flat[b, first_channel:first_channel + c, ind[b][keep]] = values[b][keep].T.float()

    scatter("reg", batch["ind"], batch["reg"], batch["mask"])
    scatter("wh", batch["ind"], batch["wh"], batch["mask"])  # det: component 0 = channels 0, 1
    if task == "pose":
        scatter("hps", batch["ind"], batch["hps"], batch["mask"])
        if "hm_hp" in batch:
            out["hm_hp"] = logit(batch["hm_hp"].float())
            scatter("hp_offset", batch["hp_ind"], batch["hp_offset"], batch["hp_mask"])
    if m >= 1:
        out["mdn_logits"][:, 0] = 10.0  # alpha_0 ~ 1 everywhere
    return out


def network_outputs(model, x, task, m, flip=False, flip_idx=None):
    """One stack's raw head outputs for the input batch x (B, 3, S, S): the last stack of an
    hourglass, averaged with the mirrored image's outputs when flip."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        out = model(x)[-1]
        if flip:
            out = md.flip_merge(out, model(torch.flip(x, dims=[3]))[-1], task, m, flip_idx)
    return out


def decode_results(out, batch, task, m, sigma_floor, cat_ids, rule="max", k=100, refine=False):
    """Decode one batch's outputs with one component rule into COCO result dicts (original
    pixels). Each dict also carries component (int), alpha (float), sigma ([sx, sy] in
    output-map pixels, before the per-joint scale k_j), center ([x, y], original pixels) and
    out_px (original pixels per output-map pixel) for analysis.py and plots.py.
    Peaks of probability exactly 0 (an underflowed sigmoid) are not detections: dropped."""
    det = {name: v.cpu() for name, v in md.decode(out, task, m, sigma_floor, k=k, component=rule,
                                                  refine=refine).items()}
    res = to_coco_results(det, batch["out2img"], batch["image_id"], cat_ids, task)
    comp, alpha, sigma = det["component"].flatten(), det["alpha"].flatten(), det["sigma"].reshape(-1, 2)
    A = batch["out2img"].double().numpy()                                  # (B, 2, 3)
    centers = np.concatenate([apply_affine(c.double().numpy(), a)
                              for c, a in zip(det["centers"], A)]).tolist()  # (B*k, 2)
    out_px = np.repeat(np.sqrt(np.abs(np.linalg.det(A[:, :, :2]))), det["scores"].shape[1])
    for i, r in enumerate(res):
        r.update(component=int(comp[i]), alpha=float(alpha[i]), sigma=sigma[i].tolist(),
                 center=centers[i], out_px=float(out_px[i]))
    return [r for r in res if r["score"] > 0]


def box_iou(box, boxes):
    """IoU of one box (4,) with boxes (n, 4), all x1 y1 x2 y2 (continuous, no +1)."""
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


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
        iou = box_iou(boxes[best], boxes[todo])
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


def infer_batch(model, batch, task, m, sigma_floor, cat_ids, rules=("max",), k=100, flip=False,
                flip_idx=None, refine=False, oracle=False, num_classes=None, num_joints=0,
                nms_method="gaussian", device=None):
    """One batch -> {rule: result dicts}. batch is a CocoDataset batch, or a list of batches
    of the same images at several test scales (MultiScale), merged by soft-NMS. A rule is a
    component rule ("max", "mean", an int) decoded with `refine`, or a pair (rule, refine)
    that sets refinement for that rule alone (one forward pass serves both)."""
    views = batch if isinstance(batch, list) else [batch]
    results = {rule: [] for rule in rules}
    for view in views:
        if oracle:
            out = oracle_outputs(view, task, m, num_classes, num_joints)
        else:
            x = view["input"].to(device or "cpu", non_blocking=True)
            out = network_outputs(model, x, task, m, flip, flip_idx)
        for rule in rules:
            how, ref = rule if isinstance(rule, tuple) else (rule, refine)
            results[rule].extend(decode_results(out, view, task, m, sigma_floor, cat_ids, how, k, ref))
    if len(views) > 1:
        results = {rule: merge_scales(res, k, nms_method) for rule, res in results.items()}
    return results


@torch.no_grad()
def predict(model, loader, task, m, sigma_floor, cat_ids, device, components=("max",), k=100,
            flip=False, flip_idx=None, refine=False, oracle=False, num_classes=None,
            num_joints=0, progress=True, nms_method="gaussian"):
    """Run inference over `loader` and decode once per component rule.

    Returns {rule: list of COCO result dicts} with the extra fields of decode_results. The
    loader's batches may be multi-scale (a MultiScale dataset): scales are merged by soft-NMS.
    """
    if model is not None:
        model.eval()
    results = {c: [] for c in components}
    for batch in tqdm(loader, desc="inference", disable=not progress, leave=False):
        for rule, res in infer_batch(model, batch, task, m, sigma_floor, cat_ids, components, k, flip,
                                     flip_idx, refine, oracle, num_classes, num_joints, nms_method,
                                     device).items():
            results[rule].extend(res)
    return results


@torch.no_grad()
def measure_fps(model, dataset, task, m, sigma_floor, cat_ids, device, n=50, warmup=5, rule="max",
                k=100, flip=False, flip_idx=None, refine=False, nms_method="gaussian"):
    """Images per second (Fig. 3's speed axis) of network + decoding + mapping back + the
    multi-scale merge, one image at a time, after `warmup` untimed images. Data loading and
    the input warp are excluded: up to 10 distinct images are loaded first and cycled
    (the cost does not depend on the pixels); the copy to the device is included."""
    if n < 1:
        raise ValueError(f"time at least one image, got n = {n}")
    model.eval()
    strip = lambda s: {key: s[key] for key in ("input", "out2img", "image_id")}
    collate = torch.utils.data.default_collate
    samples = []
    for i in range(min(10, len(dataset))):
        s = dataset[i]
        samples.append([collate([strip(v)]) for v in s] if isinstance(s, list) else collate([strip(s)]))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for i in range(warmup + n):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        infer_batch(model, samples[i % len(samples)], task, m, sigma_floor, cat_ids, (rule,), k, flip,
                    flip_idx, refine, nms_method=nms_method, device=device)
    sync()
    return n / (time.perf_counter() - t0)


def component_rules(m, rule="max"):
    """The rows of Tables 1 / 3: "All" with the chosen rule, then each component forced."""
    rows = {"All": rule}
    if m >= 2:
        rows.update({str(i + 1): i for i in range(m)})
    return rows


def evaluate_rows(coco_gt, results, rows, task, img_ids):
    """COCOeval per row -> {row name: stats array}."""
    return {name: coco_evaluate(coco_gt, results[rule], task, img_ids) for name, rule in rows.items()}


def format_table(stats, task, title=""):
    """The layout of the paper's Tables 1 (det) and 3 (pose), in percent."""
    names = STAT_NAMES[task]
    lines = [title] if title else []
    lines.append("Comp.  " + "".join(f"{n:>8}" for n in names))
    for row, s in stats.items():
        # COCOeval writes -1 where an area range has no ground truth
        lines.append(f"{row:<7}" + "".join(f"{100 * s[i]:8.1f}" if s[i] >= 0 else f"{'-':>8}" for i in range(len(names))))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def build_dataset(task, input_size, data=None, ann=None, images=None, split="val"):
    """The evaluation split: a COCO 2017 root, an explicit annotation file + image folder,
    or (neither given) the synthetic demo split."""
    from coco_data import coco2017_paths
    if data:
        ann, images = coco2017_paths(data, task, split)
    elif ann or images:
        if not (ann and images):
            raise SystemExit("--ann and --images go together")
    else:
        from synthetic_coco import ensure_demo_dataset
        ann, images = ensure_demo_dataset(task)[split]
    return CocoDataset(ann, images, task, train=False, input_size=input_size)


def load_model(checkpoint, device):
    """A model and its training config from a train.py checkpoint."""
    from train import build_model, config_of
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = dataclasses.asdict(config_of(ckpt["config"]))   # fields added since: their defaults
    model = build_model(cfg["arch"], md.head_channels(cfg["task"], cfg["m"], cfg["num_classes"],
                                                      cfg["num_joints"] or 17, mdn_head=cfg["mdn_head"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), cfg


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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to evaluate")
    src.add_argument("--checkpoint", help="a train.py checkpoint (ckpt.pt)")
    src.add_argument("--oracle", action="store_true", help="decode the ground truth rendered to targets instead of a network (must give AP ~1.0)")
    src.add_argument("--task", choices=["det", "pose"], help="task (read from the checkpoint when given)")
    src.add_argument("--m", type=int, default=3, help="mixture components for --oracle (default 3)")
    data = p.add_argument_group("data (default: the synthetic validation split)")
    data.add_argument("--data", help="COCO 2017 root (annotations/, val2017/)")
    data.add_argument("--ann", help="a COCO-format annotation JSON (with --images)")
    data.add_argument("--images", help="the image folder of --ann")
    data.add_argument("--split", default="val", help="split of --data or of the synthetic set (default val)")
    data.add_argument("--input-size", type=int, help="network input side (default: the checkpoint's; 512 for --oracle)")
    data.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images (quick checks; default all)")
    inf = p.add_argument_group("inference")
    inf.add_argument("--component", default="max", help="'max' (paper), 'mean', or a 1-based component index for the All row")
    inf.add_argument("--flip", action="store_true", help="left-right flip test (not on the synthetic figures: "
                                                         "their colour-coded sides make the mirror image unlike any figure)")
    inf.add_argument("--refine", action="store_true", help="pose: snap joints to hm_hp peaks (CenterNet refinement)")
    inf.add_argument("--scales", type=float, nargs="+", help="multi-scale test, e.g. 0.5 0.75 1 1.25 1.5 (S5) or 0.75 1 1.25 (S3): input_size * s per scale, merged with soft-NMS (default: one scale, no NMS)")
    inf.add_argument("--soft-nms", choices=["gaussian", "linear"], default="gaussian", help="soft-NMS decay for --scales: gaussian exp(-IoU^2/0.5) (CenterNet's) or linear 1 - IoU above IoU 0.5")
    inf.add_argument("--topk", type=int, default=100, help="detections per image (default 100)")
    inf.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default 8)")
    inf.add_argument("--workers", type=int, default=0, help="data-loader workers (default 0)")
    inf.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    inf.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; on a busy shared CPU, 1 can be many times faster)")
    inf.add_argument("--fps", type=int, nargs="?", const=50, default=0, metavar="N", help="also time N images (default 50) one at a time after 5 warm-up images: network + decoding + mapping back + merge, no data loading (Fig. 3)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="folder for results JSON, tables and figures (default: next to the checkpoint)")
    out.add_argument("--analysis", action="store_true", help="the component analyses of analysis.py (Fig. 2 / Tables 4-6 / Fig. 5 / latent modes), tables printed, figures saved in --out")
    out.add_argument("--examples", type=int, default=4, help="images drawn for Fig. 5 with --analysis (default 4)")
    return p.parse_args(argv)


def parse_rule(text):
    """'max' / 'mean' / a 1-based index -> select_component's argument."""
    if text in ("max", "mean"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text) - 1
    raise SystemExit(f"--component must be max, mean or a component number >= 1, got {text!r}")


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.oracle:
        if not args.task:
            raise SystemExit("--oracle needs --task det|pose")
        if args.fps:
            raise SystemExit("--fps times a network: give --checkpoint, not --oracle")
        model, task, m = None, args.task, args.m
        sigma_floor, input_size = md.default_sigma_floor(task), args.input_size or 512
    elif args.checkpoint:
        model, cfg = load_model(args.checkpoint, device)
        task, m, sigma_floor = cfg["task"], cfg["m"], cfg["sigma_floor"]
        input_size = args.input_size or cfg["input_size"]
        if args.task and args.task != task:
            raise SystemExit(f"--task {args.task} but {args.checkpoint} was trained for {task}")
    else:
        raise SystemExit("give --checkpoint RUN/ckpt.pt or --oracle")
    if args.refine and task != "pose":
        raise SystemExit("--refine is for pose (it snaps joints to hm_hp peaks)")
    ds = build_dataset(task, input_size, args.data, args.ann, args.images, args.split)
    if args.max_images:
        ds.image_ids = ds.image_ids[:args.max_images]
    data = ds
    if args.scales:
        data = MultiScale(ds, test_sizes(input_size, args.scales, getattr(model, "size_multiple", STRIDE)))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
    rule = parse_rule(args.component)
    if isinstance(rule, int) and rule >= max(m, 1):
        raise SystemExit(f"--component {args.component}: the model has {max(m, 1)} component(s)")
    rows = component_rules(m, rule)
    flip_idx = getattr(ds, "flip_idx", None)
    t0 = time.perf_counter()
    results = predict(model, loader, task, m, sigma_floor, ds.cat_ids, device,
                      components=tuple(dict.fromkeys(rows.values())), k=args.topk, flip=args.flip,
                      flip_idx=flip_idx, refine=args.refine, oracle=args.oracle,
                      num_classes=ds.num_classes, num_joints=ds.num_joints, nms_method=args.soft_nms)
    seconds = time.perf_counter() - t0
    if not results[rows["All"]]:
        print("no detections: every metric is 0")
    stats = evaluate_rows(ds.coco, results, rows, task, ds.image_ids)
    how = "".join([" flip" if args.flip else "", " refine" if args.refine else "",
                   f" scales {[v.input_size for v in data.sets]} px" if args.scales else ""])
    title = (f"{'oracle' if args.oracle else args.checkpoint}: {task}, M = {m}, {len(ds)} images at "
             f"{input_size} px{how}, {seconds:.1f} s")
    table = format_table(stats, task, title)
    if args.fps:
        fps = measure_fps(model, data, task, m, sigma_floor, ds.cat_ids, device, args.fps, rule=rule,
                          k=args.topk, flip=args.flip, flip_idx=flip_idx, refine=args.refine,
                          nms_method=args.soft_nms)
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        table += f"\nFPS {fps:.2f} images/s on {device.type}{threads} ({args.fps} images, batch 1, after 5 warm-up)"
    print(table)
    out_dir = Path(args.out or (Path(args.checkpoint).parent if args.checkpoint else "runs/oracle"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results[rows["All"]]))
    (out_dir / "eval_table.txt").write_text(table + "\n")
    if args.analysis:
        import analysis
        analysis.run_all(results[rows["All"]], ds.coco, task, getattr(ds, "keypoint_names", None),
                         ds.image_ids, out_dir, ds.load_image, args.examples)
    return stats


if __name__ == "__main__":
    main()
