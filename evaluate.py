"""Evaluate a trained model on a COCO-format split: the paper's Tables 1 and 3 (§4.3, §4.4),
the speed-accuracy trade-off of Fig. 3 (§4.3.2) and, with --analysis, Fig. 2, Tables 4-6, Fig. 5.

The command decides what to decode for the table's rows: "All" with the chosen component
rule (the max component by default), then each component forced on every prediction (the
"Comp." rows); with --analysis also the "Oracle comp." gate and the network with
ground-truth heads; with --rescore the All detections rescored by their uncertainty. The
decoding and scoring are inference.py's; the analyses (analysis/components.py,
analysis/uncertainty.py, analysis/calibration.py, analysis/plots.py) take the decoded
results and this command writes their files. `--oracle` replaces the network by the ground
truth rendered to targets (CenterNet's oracle evaluation): the round trip that must score ~1.0.

    python evaluate.py --checkpoint runs/pose_m3/ckpt.pt            # synthetic val split
    python evaluate.py --checkpoint ckpt.pt --data COCO_ROOT --flip --refine --analysis
    python evaluate.py --checkpoint ckpt.pt --data COCO_ROOT --scales 0.5 0.75 1 1.25 1.5 --fps
    python evaluate.py --oracle --task pose --ann A.json --images DIR
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

import synthetic_coco
from analysis import calibration, plots, uncertainty
from analysis import components as analysis
from annotations import dataset_paths
from coco_data import STRIDE, CocoDataset
from inference import (Inference, MultiScale, component_rules, evaluate_rows, format_table, measure_fps,
                       network_forward, oracle_forward, predict, test_sizes, MIXTURE_KEYS)
from model import ModelConfig, default_sigma_floor, load_model
from transforms import BadImageError
from util import precision as px
from util.flags import device as device_flag, non_negative, positive


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
                     help="auto (default): bf16 autocast on a CUDA GPU, fp32 on the CPU, channels_last on both "
                          "(the table's title says which)")
    inf.add_argument("--threads", type=positive(int), help="torch CPU threads (default: torch's; on a busy shared CPU, 1 can be many times faster)")
    inf.add_argument("--fps", type=non_negative(int), nargs="?", const=50, default=0, metavar="N", help="also time N images (default 50) one at a time after 5 warm-up images: network + decoding + mapping back + merge, no data loading (Fig. 3)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="folder for results JSON, tables and figures (default: next to the checkpoint)")
    out.add_argument("--analysis", action="store_true", help="the component analyses of analysis/components.py (Fig. 2 / Tables 4-6 / Fig. 5 / latent modes) "
                     "and of analysis/uncertainty.py (an Oracle comp. row, its AP on cue-free figures, AP with ground-truth heads, "
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


# rules computed from other rules' results (post_hoc), not decoded
POST_HOC = ("oracle",) + tuple(f"rescore-{how}" for how in uncertainty.RESCORE)


def plan(rows, m, task, substitution=False, refine=False, mixture=False):
    """What to decode for the table rows {name: rule}: (rules, substitution rows
    {name: rule} or {}, the rules whose results carry the mixture). The post-hoc rules are
    not decoded, the oracle's forced components are; the first rule is the All row's (or
    max under the oracle), which the ground-truth heads are decoded with. mixture: the All
    detections carry the whole mixture (calibration, density rescoring; none for M = 0)."""
    rules = [rule for rule in rows.values() if rule not in POST_HOC]
    if "oracle" in rows.values():
        rules += list(range(max(m, 1)))
    base = rows["All"] if rows["All"] != "oracle" else "max"
    subs = uncertainty.substitution_rules(task, base, refine) if substitution else {}
    carry = () if not (mixture and m > 0) else (base,) if rows["All"] != "oracle" else tuple(range(m))
    return tuple(dict.fromkeys([base] + rules + list(subs.values()))), subs, carry


def post_hoc(results, rows, m, coco_gt, task, img_ids=None, oks_sigmas=None):
    """Adds the post-hoc rules' results to results ({rule: result dicts}): the oracle
    component from the forced ones, then the rescored All results."""
    if "oracle" in rows.values():
        results["oracle"] = uncertainty.oracle_component([results[c] for c in range(max(m, 1))], coco_gt, task, img_ids, oks_sigmas)
    for rule in rows.values():
        if rule in POST_HOC and rule.startswith("rescore-"):
            results[rule] = uncertainty.rescore(results[rows["All"]], rule[len("rescore-"):], oks_sigmas if task == "pose" else None)
    return results


def write_analysis(results, ds, task, out_dir, examples, m=0, rows=None, substitution=None):
    """--analysis: print the tables of the analyses, write analysis.txt and
    the figures. results {rule: result dicts}; rows: the main table's (their AP on the
    cue-free figures); substitution: the ground-truth heads table's {row: rule}."""
    rows = rows or {"All": "max"}
    names = getattr(ds, "keypoint_names", None)
    found, text = analysis.run_all(results[rows["All"]], ds.coco, task, names, ds.image_ids, ds.oks_sigmas)
    texts = [text]  # then those of the mixture's uncertainty
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
                       examples, names, kpt_scale=ds.oks_sigmas)
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
    ann, images = (dataset_paths(task, args.split, args.data, args.ann, args.images)
                   or synthetic_coco.ensure_demo_dataset(task)[args.split])
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
    decoded, substitution, mixture = plan(rows, m, task, args.analysis and model is not None, args.refine,
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
    post_hoc(results, rows, m, ds.coco, task, ds.image_ids, ds.oks_sigmas)
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
