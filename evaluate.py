"""Evaluate a trained model on a COCO-format split: the paper's Tables 1 and 3 (§4.3, §4.4).

Inference runs the network, optionally with the left-right flip test (mdn_dense.flip_merge),
decodes peaks without NMS (mdn_dense.decode, §3.3), maps them back to original pixels
(coco_eval.to_coco_results) and scores them with COCOeval: once with the chosen component
rule ("All": the max component by default) and once per component forced on every
prediction (the "Comp." rows). `--oracle` replaces the network by the ground truth rendered
to targets (CenterNet's oracle evaluation): the round trip that must score ~1.0.

    python evaluate.py --checkpoint runs/pose_m3/ckpt.pt            # synthetic val split
    python evaluate.py --checkpoint ckpt.pt --data COCO_ROOT --flip --refine
    python evaluate.py --oracle --task pose --ann A.json --images DIR

Analyses beyond AP (Fig. 2, Tables 4-6, Fig. 5, latent-mode agreement) are in analysis.py.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import mdn_dense as md
from coco_data import CocoDataset, apply_affine
from coco_eval import coco_evaluate, to_coco_results

STAT_NAMES = {"det": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
              "pose": ["AP", "AP50", "AP75", "APm", "APl"]}


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
    if task == "det":
        scatter("wh", batch["ind"], batch["wh"], batch["mask"])  # component 0 = channels 0, 1
    else:
        scatter("wh", batch["ind"], batch["wh"], batch["mask"])
        scatter("hps", batch["ind"], batch["hps"], batch["mask"])
        if "hm_hp" in batch:
            out["hm_hp"] = logit(batch["hm_hp"].float())
            scatter("hp_offset", batch["hp_ind"], batch["hp_offset"], batch["hp_mask"])
    if m >= 1:
        out["mdn_logits"][:, 0] = 10.0  # alpha_0 ~ 1 everywhere
    return out


@torch.no_grad()
def predict(model, loader, task, m, sigma_floor, cat_ids, device, components=("max",), k=100,
            flip=False, flip_idx=None, refine=False, oracle=False, num_classes=None,
            num_joints=0, progress=True):
    """Run inference over `loader` and decode once per component rule.

    Returns {rule: list of COCO result dicts}; every dict also carries the decoder's
    component (int), alpha (float), sigma ([sx, sy], output-map pixels, before the
    per-joint scale k_j) and center ([x, y], original pixels) for analysis.
    """
    if model is not None:
        model.eval()
    results = {c: [] for c in components}
    use_amp = device.type == "cuda"
    for batch in tqdm(loader, desc="inference", disable=not progress, leave=False):
        if oracle:
            out = oracle_outputs(batch, task, m, num_classes, num_joints)
        else:
            x = batch["input"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = model(x)[-1]
                if flip:
                    out = md.flip_merge(out, model(torch.flip(x, dims=[3]))[-1], task, m, flip_idx)
        for rule in components:
            det = md.decode(out, task, m, sigma_floor, k=k, component=rule, refine=refine)
            det = {name: v.cpu() for name, v in det.items()}
            res = to_coco_results(det, batch["out2img"], batch["image_id"], cat_ids, task)
            comp, alpha, sigma = det["component"].flatten(), det["alpha"].flatten(), det["sigma"].reshape(-1, 2)
            centers = [apply_affine(c.double().numpy(), A.double().numpy())
                       for c, A in zip(det["centers"], batch["out2img"])]   # (k, 2) per image
            centers = np.concatenate(centers).tolist()
            for i, r in enumerate(res):
                r.update(component=int(comp[i]), alpha=float(alpha[i]), sigma=sigma[i].tolist(),
                         center=centers[i])
            results[rule].extend(res)
    return results


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
        lines.append(f"{row:<7}" + "".join(f"{100 * s[i]:8.1f}" for i in range(len(names))))
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
    from train import build_model
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    model = build_model(cfg["arch"], md.head_channels(cfg["task"], cfg["m"], cfg["num_classes"],
                                                      cfg["num_joints"] or 17))
    model.load_state_dict(ckpt["model"])
    return model.to(device), cfg


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
    inf = p.add_argument_group("inference")
    inf.add_argument("--component", default="max", help="'max' (paper), 'mean', or a 1-based component index for the All row")
    inf.add_argument("--flip", action="store_true", help="left-right flip test")
    inf.add_argument("--refine", action="store_true", help="pose: snap joints to hm_hp peaks (CenterNet refinement)")
    inf.add_argument("--topk", type=int, default=100, help="detections per image (default 100)")
    inf.add_argument("--batch-size", type=int, default=8, help="images per inference batch (default 8)")
    inf.add_argument("--workers", type=int, default=0, help="data-loader workers (default 0)")
    inf.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="folder for results JSON and tables (default: next to the checkpoint)")
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
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.oracle:
        if not args.task:
            raise SystemExit("--oracle needs --task det|pose")
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
    ds = build_dataset(task, input_size, args.data, args.ann, args.images, args.split)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers)
    rule = parse_rule(args.component)
    if isinstance(rule, int) and rule >= max(m, 1):
        raise SystemExit(f"--component {args.component}: the model has {max(m, 1)} component(s)")
    rows = component_rules(m, rule)
    t0 = time.perf_counter()
    results = predict(model, loader, task, m, sigma_floor, ds.cat_ids, device,
                      components=tuple(dict.fromkeys(rows.values())), k=args.topk, flip=args.flip,
                      flip_idx=getattr(ds, "flip_idx", None), refine=args.refine, oracle=args.oracle,
                      num_classes=ds.num_classes, num_joints=ds.num_joints)
    seconds = time.perf_counter() - t0
    if not results[rows["All"]]:
        print("no detections: every metric is 0")
    stats = evaluate_rows(ds.coco, results, rows, task, ds.image_ids)
    title = f"{'oracle' if args.oracle else args.checkpoint}: {task}, M = {m}, {len(ds)} images, {seconds:.1f} s"
    table = format_table(stats, task, title)
    print(table)
    out_dir = Path(args.out or (Path(args.checkpoint).parent if args.checkpoint else "runs/oracle"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results[rows["All"]]))
    (out_dir / "eval_table.txt").write_text(table + "\n")
    return stats


if __name__ == "__main__":
    main()
