"""Use a trained model on pictures: boxes, skeletons and the mixture's uncertainty (§3.3).

    python predict.py --checkpoint runs/pose_m3/ckpt.pt --source photos/
    python predict.py --checkpoint runs/det_m3/ckpt.pt --source 'shots/*.jpg' --score-thresh 0.4
    python predict.py --checkpoint runs/pose_m3/ckpt.pt --source clip.mp4 --ellipses   # needs PyAV

Every image takes evaluation's path (transforms.read_image, transforms.letterbox, evaluate's
network_forward and decode_results: NMS-free decoding, then back to original pixels), so a
checkpoint predicts here exactly what evaluate.py scores. For each image a picture is written
with the detections coloured by their mixture component (the colours of every figure of the
project), skeletons for pose and, with --ellipses, each joint's 1-std ellipse (sigma_axis * k_j,
Eq. (4)); one predictions.json per run holds COCO-style results with component, alpha and sigma.
Pictures keep each input's path below the common folder of the inputs and its extension
(photos/a/x.png -> OUT/a/x.png.jpg), so no two inputs share a picture and no picture is
written over an input. predictions.jsonl grows by one line per detection as images are
done (what a crash leaves); predictions.json is written at the end. Unreadable or
unsupported files, and pictures that cannot be drawn, are listed and skipped. Export to
ONNX is export.py.
"""
import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from analysis import plots
from util import precision as px
from util.flags import device, positive, probability
from coco_data import STRIDE
from inference import Inference, decode_results, network_forward
from model import load_model
from transforms import BadImageError, invert_affine, letterbox, read_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm"}


def find_sources(source):
    """An image or video file, a folder (its images and videos, sorted) or a glob -> paths."""
    path = Path(source)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file())
    elif path.is_file():
        found = [path]
    else:
        found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    if not found:
        raise SystemExit(f"--source {source}: no such file or folder, and no file matches it as a pattern")
    return found


def picture_names(sources):
    """{source path: its picture's path relative to --out}: the path below the sources'
    common folder with its extension kept (x.png and x.jpg, or a/x.jpg and b/x.jpg, get
    pictures of their own); a video's frames add _000000, _000001, ... before .jpg."""
    resolved = [p.resolve() for p in sources]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return {src: p.relative_to(root) for src, p in zip(sources, resolved)}


def check_outputs(source, sources, out):
    """Refuse an --out whose files would land on inputs: the --source folder itself, or a
    picture / predictions file that is one of the inputs (both paths named)."""
    out_r = out.resolve()
    if Path(source).is_dir() and out_r == Path(source).resolve():
        raise SystemExit(f"--out {out} is the --source folder {source}: the pictures would be written among "
                         f"the inputs; give another folder")
    inputs = {p.resolve(): p for p in sources}
    outputs = [out / "predictions.json", out / "predictions.jsonl"]
    outputs += [out / rel.with_name(rel.name + ".jpg") for rel in picture_names(sources).values()]
    for path in outputs:
        if path.resolve() in inputs:
            raise SystemExit(f"--out {out}: the output {path} would be written over the input "
                             f"{inputs[path.resolve()]}; give another folder")


def frames(path):
    """(frame index or None, PIL image) for an image file (None), or for every frame of a
    video (PyAV, optional)."""
    if path.suffix.lower() in VIDEO_SUFFIXES:
        try:
            import av
        except ImportError:
            raise BadImageError(f"{path}: videos need PyAV (pip install av)") from None
        with av.open(str(path)) as video:
            for i, frame in enumerate(video.decode(video=0)):
                yield i, frame.to_image().convert("RGB")
        return
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise BadImageError(f"{path}: not an image type this reads ({', '.join(sorted(IMAGE_SUFFIXES))})")
    yield None, read_image(path, "image")


def as_batch(image, size, image_id):
    """One image as a batch of one, exactly as CocoDataset gives an evaluation sample."""
    inp, img2in = letterbox(image, size)
    out2img = invert_affine(img2in / STRIDE)                           # (2, 3) output map -> image
    return {"input": inp[None], "out2img": torch.from_numpy(out2img)[None], "image_id": torch.tensor([image_id])}


def draw(image, results, info, path, score_thresh, ellipses):
    """The image with its detections, coloured by component, and a legend."""
    w, h = image.size
    fit = min(1.0, 60 / (6 * h / w))            # a tall image: at most 60 in (6000 px) high
    fig = Figure(figsize=(6 * fit, 6 * h / w * fit + 0.4))
    ax = fig.add_axes((0, 0.06, 1, 0.94))
    ax.imshow(image)
    shown = [r if ellipses else {k: v for k, v in r.items() if k != "sigma"} for r in results]
    if info["task"] == "pose":
        plots.draw_poses(ax, shown, info["keypoint_names"], info.get("skeleton", []), score_thresh,
                         kpt_scale=info.get("oks_sigmas"))
    else:
        plots.draw_detections(ax, shown, score_thresh)
    ax.axis("off")
    plots.component_legend(fig, {r["component"] for r in results if r["score"] >= score_thresh})
    fig.savefig(path, dpi=100)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train.py checkpoint (ckpt.pt)")
    p.add_argument("--source", required=True, help="an image, a video (with PyAV), a folder, or a glob such as 'imgs/*.jpg'")
    p.add_argument("--out", help="folder for the pictures and predictions.json (default: predictions/ next to the "
                                 "checkpoint); not the --source folder")
    p.add_argument("--score-thresh", type=probability, default=0.3, help="draw and keep detections scoring at least this (default 0.3)")
    p.add_argument("--topk", type=positive(int), default=100, help="detections decoded per image before the threshold (default 100)")
    p.add_argument("--input-size", type=positive(int), help="network input side (default: the checkpoint's training size)")
    p.add_argument("--flip", action="store_true", help="left-right flip test (averages the image and its mirror)")
    p.add_argument("--refine", action="store_true", help="pose: snap joints to hm_hp peaks (CenterNet's refinement)")
    p.add_argument("--ellipses", action="store_true", help="pose: draw each joint's 1-std uncertainty ellipse")
    p.add_argument("--no-pictures", action="store_true", help="write predictions.json only")
    p.add_argument("--device", type=device, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--precision", choices=px.PRECISIONS, default="auto",
                   help="auto (default): bf16 on a CUDA GPU, fp32 on the CPU")
    args = p.parse_args(argv)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file: give a folder")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model, state = load_model(args.checkpoint, device)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--checkpoint: {e}") from None
    info = state.get("data")
    if info is None:
        raise SystemExit(f"--checkpoint {args.checkpoint}: no class / keypoint names stored (train it again)")
    if args.refine and info["task"] != "pose":
        raise SystemExit("--refine is for pose checkpoints")
    precision = px.resolve(args.precision, device)
    model = model.to(memory_format=px.memory_format(precision))
    size = args.input_size or state["train_config"]["input_size"]
    if size % model.size_multiple:
        raise SystemExit(f"--input-size {size}: {model.cfg.arch} needs a multiple of {model.size_multiple}")
    inference = Inference(rules=("max",), k=args.topk, flip=args.flip, flip_idx=info.get("flip_idx"),
                          refine=args.refine, precision=precision)
    forward = network_forward(model, device, inference)
    out = Path(args.out or Path(args.checkpoint).parent / "predictions")
    sources, skipped, kept, n = find_sources(args.source), [], [], 0
    check_outputs(args.source, sources, out)
    names = picture_names(sources)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lines = open(out / "predictions.jsonl", "w")
    except OSError as e:
        raise SystemExit(f"--out {out}: cannot write there ({type(e).__name__}: {e.strerror or e})") from None
    t0 = time.perf_counter()
    with lines:
        for path in tqdm(sources, desc="predict", unit="file", disable=not sys.stderr.isatty()):
            try:
                for frame, image in frames(path):
                    n += 1
                    batch = as_batch(image, size, n)
                    with torch.no_grad():
                        res = decode_results(forward(batch), batch, info["cat_ids"], "max", args.topk, args.refine)
                    res = [dict(r, file_name=str(path), **({} if frame is None else {"frame": frame}))
                           for r in res if r["score"] >= args.score_thresh]
                    kept += res
                    lines.writelines(json.dumps(r) + "\n" for r in res)
                    lines.flush()
                    if not args.no_pictures:
                        rel = names[path]
                        picture = out / rel.with_name(rel.name + ("" if frame is None else f"_{frame:06d}") + ".jpg")
                        try:
                            picture.parent.mkdir(parents=True, exist_ok=True)
                            draw(image, res, info, picture, args.score_thresh, args.ellipses)
                        except (OSError, ValueError, MemoryError) as e:   # e.g. 100 x 20000 px: too tall to draw
                            skipped.append(f"{path}: its detections are kept, its picture cannot be drawn "
                                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            except BadImageError as e:
                skipped.append(str(e))
    seconds = time.perf_counter() - t0
    tmp = out / f".predictions.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(kept))
    tmp.replace(out / "predictions.json")
    for reason in skipped:
        print(f"skipped: {reason}")
    print(f"{n} images, {len(kept)} detections >= {args.score_thresh}, {n / max(seconds, 1e-9):.1f} images/s "
          f"on {px.describe(device, precision)}; {len(skipped)} files skipped; written to {out}")
    return kept, skipped


if __name__ == "__main__":
    main()
