"""Export a trained model to ONNX: the network and the NMS-free decoder (§3.3) in one graph.

    python export.py --checkpoint runs/pose_m3/ckpt.pt --out model.onnx
    python export.py --checkpoint ckpt.pt --out model.onnx --dynamic --topk 50
    python export.py --checkpoint ckpt.pt --out model.onnx --torch-export model.pt2

CenterNet's decoder needs no NMS, so the whole detector (the last stack's heads, the 3x3
peak test, the top-k, the mixture read at each peak and the max / mean component rule of
§3.3) is one static graph: decode.decode is traced as it is, by torch.export (dynamo=True).
The file is self-contained (weights inside, external_data=False); the data's names (class
names, COCO category ids, keypoint names, skeleton, flip_idx) ride along as metadata under
the key "mdn_dense" (JSON). hm_hp refinement is not in the graph (refine=False).

Input "image" (B, 3, H, W) float32: what evaluation feeds the network, i.e.
transforms.letterbox(image, S)[0]: the image letterboxed into S x S, RGB, x / 255, minus
transforms.MEAN_RGB, over transforms.STD_RGB. Fixed graphs take (batch, 3, S, S); --dynamic
takes any batch 1..64 and any H, W that are multiples of the network's size multiple (32
for DLA, 128 for Hourglass) from twice that multiple up to 2048.

Outputs, k = --topk per image, best first (shape legend of mdn_dense.py):
  boxes (B, k, 4) x1 y1 x2 y2, centers (B, k, 2), keypoints (B, k, K, 2) (pose),
  scores (B, k) float, classes / component (B, k) int64, alpha (B, k), sigma (B, k, 2).
Coordinates and sigma are in OUTPUT-MAP pixels: multiply by 4 (model.stride) for input
pixels, then apply the inverse letterbox (out2img of predict.as_batch) for image pixels.
An image with fewer than k 3x3 peaks pads with score 0 (no detection): drop those rows.

After the export, onnxruntime runs the graph on --verify N images (the checkpoint's
validation split when its files are here, else smooth random inputs) next to PyTorch eager,
and the command prints whether the top-k sets, their order and the components are the same
and the largest coordinate difference in input pixels (exit status 1 when they differ).
"""
import argparse
import importlib
import json
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from decode import decode
from model import load_model
from util.flags import non_negative, positive

INSTALL_HINT = "pip install -r requirements-export.txt"
EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
DET_OUTPUTS = ("boxes", "scores", "classes", "component", "alpha", "sigma", "centers")
MATCH_PX = 0.05  # output px: two decodings of one peak have centres far closer than this
# Scores this close are ties: float32 rounding (eager vs onnxruntime, ~1e-7) may order them
# either way, and an early checkpoint's heatmap is full of them.
TIE_SCORE = 1e-5


def require(*packages):
    """Import the third-party export packages, or exit with the install hint."""
    missing = []
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise SystemExit(f"export.py needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         f"not installed: {INSTALL_HINT}")


def output_names(task):
    return DET_OUTPUTS + (("keypoints",) if task == "pose" else ())


class Detector(nn.Module):
    """image (B, 3, H, W) -> the decoded detections as a tuple in output_names order:
    the network's last stack and decode.decode, nothing else."""

    def __init__(self, model, k=100, component="max"):
        super().__init__()
        self.model, self.k, self.component = model.eval(), k, component
        self.names = output_names(model.cfg.task)

    def forward(self, image):
        det = decode(self.model(image)[-1], k=self.k, component=self.component)
        return tuple(det[n] for n in self.names)


def dynamic_shapes(multiple, max_side=2048, max_batch=64):
    """Batch, H and W free. H and W as multiple * n (a derived Dim), so that the backbone's
    check H % multiple == 0 is provably true; a plain Dim fails that guard. export raises
    n's lower bound to 2 by its 0/1 specialisation of the stride-32 map (n = 1 would be a
    1x1 map), hence H, W >= 2 * multiple."""
    Dim = torch.export.Dim
    n = max_side // multiple
    return {"image": {0: Dim("batch", min=1, max=max_batch), 2: multiple * Dim("h", min=2, max=n),
                      3: multiple * Dim("w", min=2, max=n)}}


def export_program(detector, example, dynamic):
    """torch.export of the detector. A dynamic batch needs an example batch >= 2 (export
    specialises a size-1 dimension to the constant 1)."""
    if dynamic and example.shape[0] < 2:
        example = example.repeat(2, 1, 1, 1)
    shapes = dynamic_shapes(detector.model.size_multiple) if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # inside torch 2.13
        return torch.export.export(detector, (example,), dynamic_shapes=shapes)


def to_onnx(program, names, path, metadata=None):
    """ExportedProgram -> one self-contained .onnx file; returns its size in bytes."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision is not installed"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # inside torch 2.13
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=["image"], output_names=list(names),
                                         verbose=False)
    readable_dims(onnx_program.model)
    if metadata:
        onnx_program.model.metadata_props["mdn_dense"] = json.dumps(metadata)
    onnx_program.save(path, external_data=False)
    return Path(path).stat().st_size


def readable_dims(model):
    """Rename export's symbols (s40, 32*s39, ...) to batch, h, w in every shape of the graph:
    the input reads (batch, 3, 32*h, 32*w), the outputs (batch, Min(100, 64*h*w), ...)."""
    import onnx_ir as ir   # onnxscript's IR (installed with it)
    shape = model.graph.inputs[0].shape
    rename = {}
    for dim, name in ((shape[0], "batch"), (shape[2], "h"), (shape[3], "w")):
        symbols = re.findall(r"\bs\d+\b", str(getattr(dim, "value", "")))
        if len(symbols) == 1:
            rename[symbols[0]] = name
    if not rename:   # a fixed graph
        return
    sub = lambda text: re.sub(r"\bs\d+\b", lambda m: rename.get(m.group(), m.group()), text)
    values = list(model.graph.inputs) + list(model.graph.outputs) + [v for node in model.graph for v in node.outputs]
    for v in values:
        if v.shape is not None and any(isinstance(d, ir.SymbolicDim) for d in v.shape):
            v.shape = ir.Shape([ir.SymbolicDim(sub(d.value)) if isinstance(d, ir.SymbolicDim) and d.value else d
                                for d in v.shape])


def onnx_session(path, threads=None):
    """An onnxruntime CPU session with `threads` intra-op threads (default: torch's)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_onnx(session, image):
    """image (B, 3, H, W) tensor -> {name: numpy array} from an onnxruntime session."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": image.numpy()})))


def run_eager(detector, image):
    with torch.inference_mode():
        return {n: v.numpy() for n, v in zip(detector.names, detector(image))}


# ----------------------------------------------------------------------------- verification
def compare(ref, got, stride=4, tie=TIE_SCORE):
    """Two decodings (dicts of (B, k, ...) arrays) of the same images: are they the same
    detections? Rows of score 0 (top-k padding past the last peak: ties in any order) are
    left out. A detection is its class and its centre (within MATCH_PX output px). Scores
    within `tie` of each other are ties: their order is not compared, and when all k rows
    are taken, a detection tied with the k-th score may be replaced by another. Returns
    same_set / same_order / same_components / same_count, the number compared and the
    largest absolute differences: boxes and keypoints in INPUT pixels (output px * stride),
    scores, alpha and sigma (output px)."""
    rep = dict(same_count=True, same_set=True, same_order=True, same_components=True, detections=0,
               box_px=0.0, keypoint_px=0.0, score=0.0, alpha=0.0, sigma=0.0)
    for b in range(ref["scores"].shape[0]):
        r, g = np.flatnonzero(ref["scores"][b] > 0), np.flatnonzero(got["scores"][b] > 0)
        rep["same_count"] &= len(r) == len(g)
        near = np.abs(ref["centers"][b, r][:, None] - got["centers"][b, g][None]).max(-1) < MATCH_PX
        same = near & (ref["classes"][b, r][:, None] == got["classes"][b, g][None])   # (len(r), len(g))
        full = len(r) == ref["scores"].shape[1]            # no padding: the k-th row cut a list
        last = ref["scores"][b, r].min() if len(r) else 0.0
        at_cut = lambda score: full and abs(score - last) <= tie   # tied with the k-th: may be left out
        free, pairs = set(range(len(g))), []
        for a, i in enumerate(r):   # each reference detection -> the same detection in `got`, if any
            hits = [c for c in np.flatnonzero(same[a]) if c in free]
            if not hits:
                rep["same_set"] &= bool(at_cut(ref["scores"][b, i]))
                continue
            c = min(hits, key=lambda c: abs(g[c] - i))
            free.discard(c)
            pairs.append((i, g[c]))
        rep["same_set"] &= all(at_cut(got["scores"][b, g[c]]) for c in free)
        if pairs:   # same order: j before j' wherever the reference scores i clearly above i'
            i, j = (np.array(v) for v in zip(*pairs))
            s = ref["scores"][b, i]
            clearly = s[:, None] > s[None, :] + tie                           # (n, n)
            rep["same_order"] &= bool((j[:, None] < j[None, :])[clearly].all())
        rep["same_order"] &= rep["same_set"]
        if not pairs:
            continue
        i, j = map(list, zip(*pairs))
        rep["detections"] += len(pairs)
        rep["same_components"] &= bool((ref["component"][b, i] == got["component"][b, j]).all())
        diff = lambda name: float(np.abs(ref[name][b, i].astype(np.float64) - got[name][b, j]).max())
        rep["box_px"] = max(rep["box_px"], stride * diff("boxes"))
        if "keypoints" in ref:
            rep["keypoint_px"] = max(rep["keypoint_px"], stride * diff("keypoints"))
        for name, key in (("scores", "score"), ("alpha", "alpha"), ("sigma", "sigma")):
            rep[key] = max(rep[key], diff(name))
    return rep


def merge(a, b):
    """Two compare() reports -> one (all flags and the worst differences)."""
    return {k: (a[k] and b[k]) if isinstance(a[k], bool) else a[k] + b[k] if k == "detections"
            else max(a[k], b[k]) for k in a}


def smooth_random(n, size, seed=0):
    """(n, 3, size, size) blurred noise with a few bright rectangles, about the range of a
    normalised photo (white noise makes most networks' heatmaps flat or saturated)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, size // 16, size // 16, generator=g), size=(size, size), mode="bilinear")
    for i in range(n):
        for _ in range(4):
            x0, y0, w, h = (torch.randint(0, size // 2, (4,), generator=g) + torch.tensor([0, 0, 4, 4])).tolist()
            x[i, :, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g)
    return (x - 0.45) / 0.28


def verification_images(state, size, n, seed=0):
    """(inputs (n, 3, size, size), where they came from): the first n images of the
    checkpoint's validation split, letterboxed as evaluation does, or smooth random inputs
    when that split's files are not here."""
    cfg = state.get("train_config", {})
    ann, images = cfg.get("val_ann"), cfg.get("val_images")
    task = state["model_config"]["task"]
    if ann and images and Path(ann).is_file() and Path(images).is_dir():
        from coco_data import run_split
        try:
            ds = run_split(cfg, task, "val", input_size=size)
            n = min(n, len(ds))
            return torch.stack([ds[i]["input"] for i in range(n)]), f"{n} validation images of {ann}"
        except (OSError, ValueError) as e:   # unreadable split: say so and fall back
            print(f"validation split {ann} not usable ({e}); verifying on random inputs")
    return smooth_random(n, size, seed), f"{n} smooth random inputs (the checkpoint's validation split is not here)"


def verify(detector, session, images, batch=1):
    """compare() of onnxruntime against PyTorch eager on images (N, 3, H, W), `batch` at a time."""
    rep = None
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        if len(x) < batch:   # a fixed-batch graph takes exactly `batch` images
            break
        r = compare(run_eager(detector, x), run_onnx(session, x), detector.model.stride)
        rep = r if rep is None else merge(rep, r)
    return rep


def report_line(rep):
    yes = lambda v: "yes" if v else "NO"
    line = (f"same top-k set {yes(rep['same_set'] and rep['same_count'])} ({rep['detections']} detections), "
            f"same order {yes(rep['same_order'])}, same components {yes(rep['same_components'])}; "
            f"max |diff| boxes {rep['box_px']:.2e} input px")
    if rep["keypoint_px"]:
        line += f", keypoints {rep['keypoint_px']:.2e} input px"
    return line + f", scores {rep['score']:.1e}, sigma {rep['sigma']:.1e} output px, alpha {rep['alpha']:.1e}"


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a ckpt.pt written by train.py")
    p.add_argument("--out", required=True, help="the .onnx file to write (one file, weights inside); not the checkpoint")
    p.add_argument("--dynamic", action="store_true",
                   help="free batch (1..64) and H, W (multiples of the network's size multiple, up to 2048); "
                        "default: a fixed (--batch, 3, S, S) graph")
    p.add_argument("--input-size", type=positive(int), help="S, the example's (and a fixed graph's) side in pixels "
                                                  "(default: the checkpoint's training input size)")
    p.add_argument("--batch", type=positive(int), default=1, help="batch of a fixed graph (default 1)")
    p.add_argument("--topk", type=positive(int), default=100, help="detections per image, k (default 100, as evaluation)")
    p.add_argument("--component", default="max", help="the §3.3 rule: max (default), mean, or a component index")
    p.add_argument("--torch-export", metavar="PT2", help="also save the torch.export program here (.pt2; "
                                                         "torch.export.load(PT2).module()(image))")
    p.add_argument("--verify", type=non_negative(int), default=4, metavar="N", help="check onnxruntime against PyTorch on N "
                                                                     "images (default 4; 0: no check)")
    p.add_argument("--tol", type=positive(float), default=0.05, help="the largest coordinate difference accepted, input px "
                                                           "(default 0.05: float32 rounding stays far below it, a wrong offset is >= 0.25)")
    p.add_argument("--threads", type=positive(int), default=1, help="torch and onnxruntime threads (default 1)")
    args = p.parse_args(argv)
    if Path(args.out).suffix.lower() != ".onnx":
        p.error(f"--out {args.out}: give a file name ending in .onnx")
    written = [("--out", Path(args.out))] + ([("--torch-export", Path(args.torch_export))] if args.torch_export else [])
    taken = [("--checkpoint", Path(args.checkpoint))]
    for flag, path in written:       # an output that is an input, or both outputs one file
        for other, used in taken:
            if path.resolve() == used.resolve():
                p.error(f"{flag} {path} is the {other} file {used}: it would be overwritten; give another name")
        taken.append((flag, path))
    return args


def main(argv=None):
    args = parse_args(argv)
    require(*EXPORT_PACKAGES)
    torch.set_num_threads(args.threads)
    try:
        model, state = load_model(args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"export.py: {e}") from None
    component = int(args.component) if args.component.lstrip("-").isdigit() else args.component
    if component not in ("max", "mean") and not (isinstance(component, int) and 0 <= component < max(model.cfg.m, 1)):
        raise SystemExit(f"--component {args.component}: give max, mean or an index below {max(model.cfg.m, 1)}")
    size = args.input_size or state.get("train_config", {}).get("input_size") or 512
    mult = model.size_multiple
    if size % mult or (args.dynamic and size < 2 * mult):
        raise SystemExit(f"--input-size {size}: {model.cfg.arch} needs a multiple of {mult}"
                         + (f" of at least {2 * mult} for --dynamic" if args.dynamic else ""))
    detector = Detector(model, args.topk, component)
    images, source = verification_images(state, size, max(args.verify, 2 if args.dynamic else args.batch))
    example = images[:2] if args.dynamic else images[:args.batch].expand(args.batch, -1, -1, -1).contiguous()

    t0 = time.perf_counter()
    program = export_program(detector, example, args.dynamic)
    t_program = time.perf_counter() - t0
    if args.torch_export:
        torch.export.save(program, args.torch_export)
        with torch.inference_mode():
            d = max(float((a - b).abs().max()) for a, b in zip(torch.export.load(args.torch_export).module()(example),
                                                                detector(example)) if a.numel())
        print(f"torch.export program -> {args.torch_export} ({t_program:.1f} s); its module vs eager: max |diff| {d:.1e}")
    data = state.get("data", {})
    meta = dict(task=model.cfg.task, m=model.cfg.m, arch=model.cfg.arch, stride=model.stride, size_multiple=mult,
                input_size=size, dynamic=args.dynamic, k=args.topk, component=component,
                coordinates="output-map pixels: x stride for input pixels, then the inverse letterbox",
                input="transforms.letterbox(image, input_size)[0]: RGB / 255, minus MEAN_RGB, over STD_RGB",
                outputs=list(detector.names), checkpoint=str(args.checkpoint),
                **{k: data[k] for k in ("class_names", "cat_ids", "keypoint_names", "skeleton", "flip_idx")
                   if data.get(k) is not None})
    nbytes = to_onnx(program, detector.names, args.out, meta)
    t_export = time.perf_counter() - t0
    shape = "batch x 3 x H x W (dynamic)" if args.dynamic else f"{args.batch} x 3 x {size} x {size}"
    print(f"{args.checkpoint} -> {args.out}: {model.cfg.task} M={model.cfg.m} {model.cfg.arch}, input {shape}, "
          f"k={args.topk}, {nbytes / 2 ** 20:.1f} MB, exported in {t_export:.1f} s")
    print("outputs: " + ", ".join(detector.names) + " (coordinates in output-map pixels: x4 for input pixels)")
    if args.verify <= 0:
        return None
    import onnx
    onnx.checker.check_model(args.out, full_check=True)
    session = onnx_session(args.out, args.threads)
    rep = verify(detector, session, images[:args.verify], 1 if args.dynamic else args.batch)
    if args.dynamic and len(images) >= 2 and size - mult >= 2 * mult:  # another batch and a non-square shape
        rep = merge(rep, verify(detector, session, images[:2, :, :, :size - mult].contiguous(), 2))
        source += f", and 2 of them cropped to {size} x {size - mult} as one batch"
    print(f"onnxruntime {importlib.import_module('onnxruntime').__version__} vs PyTorch eager on {source}:")
    print("  " + report_line(rep))
    ok = rep["same_set"] and rep["same_count"] and rep["same_order"] and rep["same_components"] \
        and max(rep["box_px"], rep["keypoint_px"]) <= args.tol
    if not ok:
        print(f"  MISMATCH (coordinate tolerance {args.tol} input px)")
        sys.exit(1)
    return rep


if __name__ == "__main__":
    main()
