"""Does the data path hold at COCO 2017 scale (§4: train2017's 118k images, 8-16 loader workers)?

The tests use files of tens of images; COCO train2017 holds 118,287 images and 860,001
instance annotations (about 150k persons with keypoints). A Dataset whose records are
Python dicts and lists is copied page by page into every forked loader worker as soon as
the worker touches them (reference counts are writes: PyTorch's known copy-on-read growth),
so each worker's private memory grows with the records it has read, up to a copy of them
all per worker. This command builds a COCO-size annotation file from the real sample (its
records repeated under new ids; the images are the sample's own files, reused by name)
and measures:

  annotation load    seconds and resident MB of load_coco (json + validation + pycocotools)
  dataset            seconds to build CocoDataset on top
  workers            for each --workers W: the main process's resident memory and each
                     worker's private anonymous memory (USS, /proc smaps) after the first
                     batches and after --batches batches; growth = what a worker copied
  evaluation         --eval-checkpoint: evaluate.py end to end on a val2017-size file

    python -m checks.coco_scale --workers 2 4 8 --batches 300    # default: det at train2017 size
    python -m checks.coco_scale --workers 8 --batches 0 --batch-size 64 --input-size 32 --blank-images
                                                                  # one epoch of records through 8 workers
    python -m checks.coco_scale --task pose --images 118287 --annotations 150000
    python -m checks.coco_scale --eval-checkpoint runs/det_m3/ckpt.pt    # evaluation at val2017 size
                                                                  # (--task pose for a pose checkpoint)

Linux only (/proc). The generated file lies in --out (default data/coco_scale, ignored by git).
"""
import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from annotations import load_coco
from coco_data import CocoDataset

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "coco_sample"
SAMPLE_ANN = {"det": "instances_sample.json", "pose": "person_keypoints_sample.json"}
TRAIN2017 = {"det": (118_287, 860_001), "pose": (118_287, 150_000)}   # images, annotations
VAL2017 = {"det": (5_000, 36_781), "pose": (5_000, 11_004)}


def scale_annotations(src, dst, n_images, n_annotations, seed=0):
    """Write a COCO file of n_images images (src's images repeated with new ids, same
    file_name and size) and about n_annotations annotations (each copy of an image keeps
    each of its annotations with probability n_annotations / (copies * src's), at least
    one). Returns (images, annotations) written."""
    data = json.loads(Path(src).read_text())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images = data["images"]
    keep = min(1.0, n_annotations / (len(data["annotations"]) * n_images / len(images)))
    rng = np.random.default_rng(seed)
    out_images, out_anns = [], []
    for new_id in range(1, n_images + 1):
        im = images[(new_id - 1) % len(images)]
        out_images.append({**im, "id": new_id})
        anns = by_image.get(im["id"], [])
        chosen = [a for a in anns if rng.random() < keep] or anns[:1]
        out_anns += [{**a, "id": len(out_anns) + i + 1, "image_id": new_id} for i, a in enumerate(chosen)]
    data.update(images=out_images, annotations=out_anns)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_text(json.dumps(data))
    return len(out_images), len(out_anns)


def memory(pid="self"):
    """{'rss', 'uss'} in MB of a process from /proc/<pid>/smaps. uss counts the private
    pages of anonymous memory only (the heap, Python's arenas): the pages a forked worker
    copied from its parent or allocated itself, not the shared-memory files that carry
    finished batches to the main process."""
    rss = uss = 0
    anonymous = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if "-" in head[0] and not head[0].endswith(":"):        # a mapping's header line
            anonymous = len(head) < 6 or head[5].startswith("[")
        elif head[0] == "Rss:":
            rss += int(head[1])
        elif head[0] in ("Private_Clean:", "Private_Dirty:") and anonymous:
            uss += int(head[1])
    return {"rss": rss / 1024, "uss": uss / 1024}


def quiet_memory(pids, settle):
    """Main RSS and each worker's USS, read once the workers have filled their prefetch
    queues and wait (`settle` seconds), so no half-built batch is counted."""
    time.sleep(settle)
    return {"main": memory()["rss"], "uss": [memory(p)["uss"] for p in pids]}


def worker_growth(dataset, workers, batches, batch_size, warm=5, seed=0, shuffle=True, settle=2.0):
    """Run a DataLoader with `workers` forked workers for `batches` batches. Returns a
    dict: main RSS and each worker's USS after `warm` batches and at the end (MB), seconds
    per batch after warm-up (timed before the last reading's wait)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                         persistent_workers=True, multiprocessing_context="fork",
                                         generator=torch.Generator().manual_seed(seed))
    it = iter(loader)
    pids = [w.pid for w in it._workers]      # the loader keeps its worker processes here
    for _ in range(warm):
        next(it)
    start = quiet_memory(pids, settle)
    t0 = time.perf_counter()
    for _ in range(batches - warm):
        next(it)
    seconds = (time.perf_counter() - t0) / max(1, batches - warm)
    end = quiet_memory(pids, settle)
    del it
    return {"workers": workers, "batches": batches, "main_start": start["main"], "main_end": end["main"],
            "uss_start": start["uss"], "uss_end": end["uss"], "s_per_batch": seconds,
            "samples_per_worker": (batches - warm) * batch_size / workers}


def blank_reader(sample_ann):
    """A stand-in for coco_data.read_image: a black image of each sample file's annotated
    size, made once. With it a loader reads records, not JPEGs, so a whole epoch of
    records passes through the workers in minutes."""
    from PIL import Image
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in json.loads(Path(sample_ann).read_text())["images"]}
    blank = {name: Image.new("RGB", size) for name, size in sizes.items()}
    return lambda path, what="image": blank[Path(path).name]


def measure(ann, images, task, workers_list, batches, batch_size, input_size):
    """Load time and memory, dataset construction, and worker_growth per worker count."""
    gc.collect()
    base = memory()["rss"]
    t0 = time.perf_counter()
    coco = load_coco(ann)
    load_s, load_mb = time.perf_counter() - t0, memory()["rss"] - base
    counts = len(coco.imgs), len(coco.anns)
    del coco
    gc.collect()
    t0 = time.perf_counter()
    ds = CocoDataset(ann, images, task, train=True, input_size=input_size)
    build_s = time.perf_counter() - t0
    rows = [worker_growth(ds, w, batches or len(ds) // batch_size, batch_size) for w in workers_list]
    return {"images": counts[0], "annotations": counts[1], "load_s": load_s, "load_mb": load_mb,
            "build_s": build_s, "dataset_rss": memory()["rss"] - base, "rows": rows}


def report(m, task, input_size, batch_size):
    lines = [f"{task}: {m['images']:,} images, {m['annotations']:,} annotations; load_coco {m['load_s']:.1f} s "
             f"(+{m['load_mb']:.0f} MB resident), CocoDataset {m['build_s']:.1f} s in all; loader at {input_size} px, "
             f"batch {batch_size}",
             "",
             "| workers | batches | main RSS MB (start -> end) | worker USS MB, mean (start -> end) | growth MB per worker "
             "| MB per 1000 samples read | s / batch |",
             "|---|---|---|---|---|---|---|"]
    for r in m["rows"]:
        a, b = np.mean(r["uss_start"]), np.mean(r["uss_end"])
        growth = np.array(r["uss_end"]) - np.array(r["uss_start"])
        lines.append(f"| {r['workers']} | {r['batches']} | {r['main_start']:.0f} -> {r['main_end']:.0f} | "
                     f"{a:.0f} -> {b:.0f} | {growth.mean():.1f} (max {growth.max():.1f}) | "
                     f"{1000 * growth.mean() / max(1, r['samples_per_worker']):.2f} | {r['s_per_batch']:.2f} |")
    return "\n".join(lines)


def time_evaluation(checkpoint, task, out, sample, extra=()):
    """evaluate.py on a val2017-size file (5,000 images; 36,781 instances or 11,004 persons)
    end to end: (seconds, its output's last lines)."""
    n_images, n_anns = VAL2017[task]
    ann = out / f"{task}_{n_images}_{n_anns}.json"
    if not ann.is_file():
        scale_annotations(sample / "annotations" / SAMPLE_ANN[task], ann, n_images, n_anns)
    cmd = [sys.executable, "evaluate.py", "--checkpoint", str(checkpoint), "--ann", str(ann),
           "--images", str(sample / "images"), "--out", str(out / f"eval_{task}"), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {(proc.stderr.strip().splitlines() or [''])[-1]}")
    return seconds, "\n".join(proc.stdout.strip().splitlines()[-12:])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["det", "pose"], default="det", help="which sample file to scale (default det)")
    p.add_argument("--images", type=int, help="images in the generated file (default: train2017's 118,287)")
    p.add_argument("--annotations", type=int, help="annotations in the generated file (default: train2017's, "
                                                   "860,001 for det, 150,000 persons for pose)")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8], help="loader worker counts to measure (default 2 4 8)")
    p.add_argument("--batches", type=int, default=300, help="batches per worker count (default 300; 0 = one epoch)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--input-size", type=int, default=512, help="input side in pixels (default 512, the paper's)")
    p.add_argument("--blank-images", action="store_true",
                   help="read records, not pixels: black images of the annotated sizes (use with a small --input-size "
                        "and --batches 0 to pass a whole epoch through the workers)")
    p.add_argument("--sample", type=Path, default=SAMPLE, help=f"the real COCO sample (default {SAMPLE})")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "coco_scale", help="where the generated file goes")
    p.add_argument("--eval-checkpoint", type=Path, help="instead: time evaluate.py end to end with this checkpoint "
                                                       "on a val2017-size file (5,000 images) of its task")
    p.add_argument("--eval-args", nargs=argparse.REMAINDER, default=[],
                   help="what follows goes to evaluate.py (e.g. --input-size 128 --workers 2 --threads 1)")
    args = p.parse_args(argv)
    if args.eval_checkpoint:
        seconds, tail = time_evaluation(args.eval_checkpoint, args.task, args.out, args.sample, args.eval_args)
        print(f"{tail}\nevaluate.py on {VAL2017[args.task][0]:,} images end to end: {seconds:.0f} s")
        return seconds
    src = args.sample / "annotations" / SAMPLE_ANN[args.task]
    if not src.is_file():
        raise SystemExit(f"{src}: the real COCO sample is absent (--sample)")
    if any(w < 1 for w in args.workers) or 0 < args.batches <= 5:
        raise SystemExit("--workers must be >= 1 and --batches 0 (an epoch) or > 5 (the first 5 are the warm-up)")
    if args.blank_images:
        import coco_data
        coco_data.read_image = blank_reader(src)
    n_images, n_anns = args.images or TRAIN2017[args.task][0], args.annotations or TRAIN2017[args.task][1]
    ann = args.out / f"{args.task}_{n_images}_{n_anns}.json"
    if not ann.is_file():
        t0 = time.perf_counter()
        written = scale_annotations(src, ann, n_images, n_anns)
        print(f"wrote {ann}: {written[0]:,} images, {written[1]:,} annotations, "
              f"{ann.stat().st_size / 2**20:.0f} MB in {time.perf_counter() - t0:.0f} s", flush=True)
    m = measure(ann, args.sample / "images", args.task, args.workers, args.batches, args.batch_size, args.input_size)
    print(report(m, args.task, args.input_size, args.batch_size) + ("\n(black images: records only)" if args.blank_images else ""))
    return m


if __name__ == "__main__":
    main()
