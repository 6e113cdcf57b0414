"""Evaluate a trained model on a COCO-format split: the paper's Tables 1 and 3 (§4.3, §4.4),
the speed-accuracy trade-off of Fig. 3 (§4.3.2) and, with --analysis, Fig. 2, Tables 4-6, Fig. 5.

Inference runs the network, optionally with the left-right flip test (decode.flip_merge),
decodes peaks without NMS (decode.decode, §3.3), maps them back to original pixels
(coco_eval.to_coco_results) and scores them with COCOeval: once with the chosen component
rule ("All": the max component by default) and once per component forced on every
prediction (the "Comp." rows). `--oracle` replaces the network by the ground truth rendered
to targets (CenterNet's oracle evaluation): the round trip that must score ~1.0.

Multi-scale test (`--scales`, the paper's S3 / S5 in Fig. 3): the network sees the letterboxed
image at input_size * s for every s (rounded to the network's size multiple), each scale's
detections are mapped back to original pixels and all scales are merged per image and class
with soft-NMS (decode.merge_scales) as CenterNet's multi-scale test does. (CenterNet keeps a fixed 512 input
and zooms and crops the image; here the whole image is seen at every scale.) A single scale
uses no NMS at all. `--fps` times network + decoding + mapping back (+ merge) per image.

    python evaluate.py --checkpoint runs/pose_m3/ckpt.pt            # synthetic val split
    python evaluate.py --checkpoint ckpt.pt --data COCO_ROOT --flip --refine --analysis
    python evaluate.py --checkpoint ckpt.pt --data COCO_ROOT --scales 0.5 0.75 1 1.25 1.5 --fps
    python evaluate.py --oracle --task pose --ann A.json --images DIR

The analyses themselves (Fig. 2, Tables 4-6, latent-mode agreement) are in analysis.py, those
of the mixture's uncertainty (calibration, the "Oracle comp." gate, AP with ground-truth heads,
`--rescore`) in uncertainty.py, the figures in plots.py and calibration.py; this command
writes their files.
"""
import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from analysis import components as analysis
from analysis import calibration
from analysis import plots
from util import precision as px
from util.flags import device as device_flag, non_negative, positive
from analysis import uncertainty
from annotations import dataset_paths
from coco_data import STRIDE, BadImageError, CocoDataset, apply_affine
from coco_eval import coco_evaluate, to_coco_results
from decode import decode, flip_merge, merge_scales
from model import ModelConfig, default_sigma_floor, head_channels, load_model

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
    cfg: ModelConfig | None = None  # the model's config: the oracle heads of uncertainty.GroundTruthHeads rules


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
        out["mdn_sigma"] += 1.0 + cfg.sigma_floor    # sigma_activation(0): the truth has no spread to report
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


MIXTURE_KEYS = ("mix_mu", "mix_sigma", "mix_log_alpha", "peak")   # decode_results(mixture=True); not in results.json


def decode_results(out, batch, cat_ids, rule="max", k=100, refine=False, mixture=False):
    """Decode one batch's outputs with one component rule into COCO result dicts (original
    pixels). Each dict also carries component (int), alpha (float), sigma ([sx, sy] in
    output-map pixels, before the per-joint scale k_j), center ([x, y], original pixels),
    out_px (original pixels per output-map pixel) for analysis.py and plots.py, and rank
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


def infer_batch(forward, batch, cat_ids, inference):
    """One batch -> {rule: result dicts}. forward(view) -> outputs (network_forward or
    oracle_forward); batch is a CocoDataset batch, or a list of batches of the same images
    at several test scales (MultiScale), merged by soft-NMS. One forward pass serves every rule;
    a uncertainty.GroundTruthHeads rule decodes it with some heads replaced by the oracle's
    (inference.cfg). The ranks of scale v are offset by v * k (unique per image)."""
    views = batch if isinstance(batch, list) else [batch]
    results = {rule: [] for rule in inference.rules}
    for v, view in enumerate(views):
        out, oracle = forward(view), None
        for rule in inference.rules:
            how, ref = rule if isinstance(rule, tuple) else (rule, inference.refine)
            o = out
            if isinstance(rule, uncertainty.GroundTruthHeads):
                oracle = oracle_outputs(view, inference.cfg) if oracle is None else oracle
                how, o = rule.rule, uncertainty.substitute(out, oracle, view, rule.heads)
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


# ----------------------------------------------------------------------------- command line
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
    src.add_argument("--m", type=non_negative(int), default=3, help="mixture components for --oracle (default 3)")
    data = p.add_argument_group("data (default: the synthetic validation split)")
    data.add_argument("--data", help="COCO 2017 root (annotations/, val2017/)")
    data.add_argument("--ann", help="a COCO-format annotation JSON (with --images)")
    data.add_argument("--images", help="the image folder of --ann")
    data.add_argument("--split", choices=["train", "val", "test"], default="val",
                      help="split of --data (train, val) or of the synthetic set (train, val, test); default val")
    data.add_argument("--input-size", type=positive(int), help="network input side (default: the checkpoint's; 512 for --oracle)")
    data.add_argument("--oks-sigmas", type=positive(float), nargs="+", metavar="S",
                      help="pose: one OKS sigma per joint for keypoint sets other than COCO's 17 whose category has no 'sigmas'")
    data.add_argument("--max-images", type=non_negative(int), default=0, help="evaluate only the first N images (quick checks; default all)")
    inf = p.add_argument_group("inference")
    inf.add_argument("--component", default="max", help="'max' (paper), 'mean', a 1-based component index, or 'oracle' "
                                                         "(per peak the component closest to its ground truth) for the All row")
    inf.add_argument("--rescore", choices=uncertainty.RESCORE, help="add a row of the All detections rescored by their "
                     "uncertainty: sigma: score / (1 + u / median u), u = mean sigma / box size; density: score * the "
                     "mixture's density at the selected mean per dim * box size (default: none)")
    inf.add_argument("--flip", action="store_true", help="left-right flip test (not on the synthetic figures: "
                                                         "their colour-coded sides make the mirror image unlike any figure)")
    inf.add_argument("--refine", action="store_true", help="pose: snap joints to hm_hp peaks (CenterNet refinement)")
    inf.add_argument("--scales", type=positive(float), nargs="+", help="multi-scale test, e.g. 0.5 0.75 1 1.25 1.5 (S5) or 0.75 1 1.25 (S3): input_size * s per scale, merged with soft-NMS (default: one scale, no NMS)")
    inf.add_argument("--soft-nms", choices=["gaussian", "linear"], default="gaussian", help="soft-NMS decay for --scales: gaussian exp(-IoU^2/0.5) (CenterNet's) or linear 1 - IoU above IoU 0.5")
    inf.add_argument("--topk", type=positive(int), default=100, help="detections per image (default 100)")
    inf.add_argument("--batch-size", type=positive(int), default=8, help="images per inference batch (default 8)")
    inf.add_argument("--workers", type=non_negative(int), default=0, help="data-loader workers (default 0)")
    inf.add_argument("--device", type=device_flag, default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    inf.add_argument("--precision", choices=px.PRECISIONS, default="auto",
                     help="auto (default): bf16 autocast + channels_last on a CUDA GPU, fp32 on the CPU "
                          "(the table's title says which)")
    inf.add_argument("--threads", type=positive(int), help="torch CPU threads (default: torch's; on a busy shared CPU, 1 can be many times faster)")
    inf.add_argument("--fps", type=non_negative(int), nargs="?", const=50, default=0, metavar="N", help="also time N images (default 50) one at a time after 5 warm-up images: network + decoding + mapping back + merge, no data loading (Fig. 3)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="folder for results JSON, tables and figures (default: next to the checkpoint)")
    out.add_argument("--analysis", action="store_true", help="the component analyses of analysis.py (Fig. 2 / Tables 4-6 / Fig. 5 / latent modes) "
                     "and of uncertainty.py (an Oracle comp. row, its AP on cue-free figures, AP with ground-truth heads, "
                     "calibration of the mixture), tables printed, figures saved in --out")
    out.add_argument("--examples", type=non_negative(int), default=4, help="images drawn for Fig. 5 with --analysis (default 4)")
    args = p.parse_args(argv)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file: give a folder")
    return args


def parse_rule(text):
    """'max' / 'mean' / 'oracle' / a 1-based index -> select_component's argument (or "oracle")."""
    if text in ("max", "mean", "oracle"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text) - 1
    raise SystemExit(f"--component must be max, mean, oracle or a component number >= 1, got {text!r}")


def write_analysis(results, ds, task, out_dir, examples, m=0, rows=None, substitution=None):
    """--analysis: print the tables of analysis.py and uncertainty.py, write analysis.txt and
    the figures. results {rule: result dicts}; rows: the main table's (their AP on the
    cue-free figures); substitution: the ground-truth heads table's {row: rule}."""
    rows = rows or {"All": "max"}
    names = getattr(ds, "keypoint_names", None)
    found, text = analysis.run_all(results[rows["All"]], ds.coco, task, names, ds.image_ids)
    texts = [text]  # then the tables of uncertainty.py
    cue_free = uncertainty.cue_free_ground_truth(ds.coco) if task == "pose" else None
    kept = {name: rule for name, rule in rows.items() if not str(rule).startswith("rescore-")}
    if cue_free is not None:
        free = {rule: uncertainty.cue_free_results(results[rule], ds.coco, ds.oks_sigmas) for rule in kept.values()}
        found["cue_free"] = evaluate_rows(cue_free, free, kept, task, ds.image_ids, ds.oks_sigmas)
        texts.append(format_table(found["cue_free"], task, "keypoint AP on the cue-free figures alone (the others ignored)"))
    if substitution:
        found["substitution"] = evaluate_rows(ds.coco, results, substitution, task, ds.image_ids, ds.oks_sigmas)
        texts.append(format_table(found["substitution"], task, "Where does the AP go: the network with ground-truth heads "
                                  "(hm whole map; reg / size / joint offsets at the ground-truth centres, every component)",
                                  label="heads", delta="network"))
    found["calibration"], text = uncertainty.calibration_report(results[rows["All"]], ds.coco, task, m,
                                                                ds.oks_sigmas if task == "pose" else None, names, ds.image_ids)
    texts.append(text)
    text = "\n\n".join(texts)
    print(text)
    (out_dir / "analysis.txt").write_text(text + "\n")
    if task == "det" and "fig2" in found:
        plots.scale_distribution(found["fig2"], out_dir / "fig2_scale.png")
    if c := found["calibration"]:
        calibration.calibration_figure(c["coverage"], c["reliability"], out_dir / "calibration.png", c["pit"])
    if examples > 0:
        plots.examples(results[rows["All"]], ds.coco, task, ds.image_ids, ds.load_image, out_dir / "fig5_examples.png",
                       examples, names)
    return found


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.oracle:
        if not args.task:
            raise SystemExit("--oracle needs --task det|pose")
        if args.fps:
            raise SystemExit("--fps times a network: give --checkpoint, not --oracle")
        model, input_size = None, args.input_size or 512
    elif args.checkpoint:
        try:
            model, state = load_model(args.checkpoint, device)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"--checkpoint: {e}") from None
        cfg = model.cfg
        input_size = args.input_size or state.get("train_config", {}).get("input_size", 512)
        if args.task and args.task != cfg.task:
            raise SystemExit(f"--task {args.task} but {args.checkpoint} was trained for {cfg.task}")
    else:
        raise SystemExit("give --checkpoint RUN/ckpt.pt or --oracle")
    task = cfg.task if model is not None else args.task
    if args.refine and task != "pose":
        raise SystemExit("--refine is for pose (it snaps joints to hm_hp peaks)")
    ann, images = dataset_paths(task, args.split, args.data, args.ann, args.images)
    try:
        ds = CocoDataset(ann, images, task, train=False, input_size=input_size, oks_sigmas=args.oks_sigmas)
    except (ValueError, OSError) as e:       # a bad annotation file or folder: the message names it
        raise SystemExit(str(e)) from None
    if task == "pose" and ds.oks_sigmas is None:
        raise SystemExit(f"{ann}: its {ds.num_joints} keypoints are not COCO's 17 and carry no OKS sigmas: "
                         f"give --oks-sigmas with {ds.num_joints} values or a 'sigmas' list in the category")
    if args.max_images:
        ds.image_ids = ds.image_ids[:args.max_images]
    if model is None:
        try:
            cfg = ModelConfig(task=task, m=args.m, arch="dla34", num_classes=ds.num_classes,
                              num_joints=ds.num_joints or 17, sigma_floor=default_sigma_floor(task, "dla34"))
        except ValueError as e:      # --m beyond reason, or a file without categories
            raise SystemExit(f"--oracle on {ann}: {e}") from None
    elif (ds.num_classes, ds.num_joints) != (cfg.num_classes, cfg.num_joints if task == "pose" else 0):
        raise SystemExit(f"{args.checkpoint} predicts {cfg.num_classes} classes / {cfg.num_joints} joints; "
                         f"{ann} has {ds.num_classes} / {ds.num_joints}")
    m = cfg.m
    data = ds
    if args.scales:
        data = MultiScale(ds, test_sizes(input_size, args.scales, getattr(model, "size_multiple", STRIDE)))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=args.workers)
    rule = parse_rule(args.component)
    if isinstance(rule, int) and rule >= max(m, 1):
        raise SystemExit(f"--component {args.component}: the model has {max(m, 1)} component(s)")
    if args.rescore and m == 0:
        raise SystemExit("--rescore: the M = 0 base predicts no uncertainty to rescore by")
    rows = component_rules(m, rule, oracle=args.analysis, rescore=args.rescore)
    decoded, substitution, mixture = uncertainty.plan(rows, m, task, args.analysis and model is not None, args.refine,
                                                      args.analysis or args.rescore == "density")
    precision = px.resolve(args.precision, device) if model is not None else "fp32"
    if model is not None:
        model = model.to(memory_format=px.memory_format(precision))
    inference = Inference(rules=decoded, k=args.topk, flip=args.flip, flip_idx=getattr(ds, "flip_idx", None),
                          refine=args.refine, nms_method=args.soft_nms, precision=precision, mixture=mixture, cfg=cfg)
    forward = oracle_forward(cfg) if model is None else network_forward(model, device, inference)
    t0 = time.perf_counter()
    try:
        results = predict(forward, loader, ds.cat_ids, inference, progress=sys.stderr.isatty())
    except BadImageError as e:
        raise SystemExit(e.line()) from None
    uncertainty.post_hoc(results, rows, m, ds.coco, task, ds.image_ids, ds.oks_sigmas)
    seconds = time.perf_counter() - t0
    if not results[rows["All"]]:
        print("no detections: every metric is 0")
    stats = evaluate_rows(ds.coco, results, rows, task, ds.image_ids, ds.oks_sigmas)
    how = "".join([" flip" if args.flip else "", " refine" if args.refine else "",
                   f" scales {[v.input_size for v in data.sets]} px" if args.scales else ""])
    title = (f"{'oracle' if args.oracle else args.checkpoint}: {task}, M = {m}, {len(ds)} images at "
             f"{input_size} px{how}, {seconds:.1f} s" + ("" if model is None else f", {px.describe(device, precision)}"))
    table = format_table(stats, task, title)
    if args.rescore:
        table += f"\nrescored by {args.rescore}: AP {100 * (stats[f'Rescored ({args.rescore})'][0] - stats['All'][0]):+.1f} vs All"
    if args.fps:
        timing = Inference(rules=(decoded[0],), k=args.topk, flip=args.flip, flip_idx=inference.flip_idx,
                           refine=args.refine, nms_method=args.soft_nms, precision=precision)
        fps = measure_fps(network_forward(model, device, timing), data, ds.cat_ids, timing,
                          device.type == "cuda", args.fps)
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        table += f"\nFPS {fps:.2f} images/s on {device.type}{threads} ({args.fps} images, batch 1, after 5 warm-up)"
    print(table)
    out_dir = Path(args.out or (Path(args.checkpoint).parent if args.checkpoint else "runs/oracle"))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"--out {out_dir}: cannot write there ({type(e).__name__}: {e.strerror or e})") from None
    plain = [{key: v for key, v in r.items() if key not in MIXTURE_KEYS} for r in results[rows["All"]]]
    (out_dir / "results.json").write_text(json.dumps(plain))
    (out_dir / "eval_table.txt").write_text(table + "\n")
    if args.analysis:
        write_analysis(results, ds, task, out_dir, args.examples, m, rows, substitution)
    return stats


if __name__ == "__main__":
    main()
