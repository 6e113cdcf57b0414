"""One command that proves the GPU path of the paper's experiment (§4 training, Table 2 speed).

    python -m checks.gpu                     # on a CUDA machine: one table in under 8 minutes
    python -m checks.gpu --device cpu --sample-arch small_dla --sample-size 64   # CPU parts only

Parts, one row each (a part that needs CUDA says so and is skipped on the CPU):
  train step     img/s and peak memory of a train step (forward, Eq. (6) loss, backward,
                 Adam) for dla34 and hourglass104 at 512 px, fp32 and bf16 + channels_last
                 (bench.py's row, in its own process so the peak is its own); CUDA only
  inference      forward + decoding (k = 100) at batch 1, 512 px, det MDN_3, in FPS next to
                 the paper's Table 2 (DLA-34 MDN_3 18.97, Hourglass-104 7.47, on the
                 authors' GPU); CUDA only
  sample run     torchrun of train.py over every visible GPU (NCCL; gloo on the CPU, two
                 processes there), det MDN_3, 2 epochs on the real COCO sample with
                 --eval-every 1: wall time and the last AP (a smoke run: 44 images)
  export         export.py of that run's checkpoint to ONNX, checked against PyTorch
                 (needs requirements-export.txt; skipped with the reason otherwise)
  loader         training samples per second from the real sample at 512 px with
                 --loader-workers workers (8 by default), pinned memory on CUDA

Each part runs in its own process with a time limit; a failed part prints its last line
and the next part runs. The run's files go to --out (default runs/gpu_check, ignored by git).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "coco_sample"
PAPER_FPS = {"dla34": 18.97, "hourglass104": 7.47}      # Table 2, MDN_3 detection
TRAIN_BATCH = {"dla34": 32, "hourglass104": 12}          # bench.py's batches at 512 px
NO_CUDA = "skipped: needs a CUDA GPU"


def run(cmd, timeout, env=None):
    """(return code, stdout + stderr, seconds) of a command run from the repository root;
    a timeout is return code 124."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\ntimed out after {timeout} s", time.perf_counter() - t0


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# ----------------------------------------------------------------------------- one process each
def infer_row(arch, size, precision, warmup=5, iters=30):
    """Forward (last stack) + decode of one image on CUDA: {'FPS', 'peak MB'}."""
    from util.timing import timed
    from decode import decode
    from model import ModelConfig, build_model, default_sigma_floor
    from util import precision as px
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = build_model(ModelConfig(task="det", m=3, arch=arch, num_classes=80,
                                    sigma_floor=default_sigma_floor("det", arch))).to(device).eval()
    model = model.to(memory_format=px.memory_format(precision))
    x = torch.randn(1, 3, size, size, device=device).contiguous(memory_format=px.memory_format(precision))

    def step():
        with torch.inference_mode(), px.autocast(device, precision):
            decode(model(x)[-1], k=100)
    s = timed(step, warmup, iters, cuda=True)
    return {"FPS": 1 / s, "peak MB": torch.cuda.max_memory_allocated() / 2 ** 20}


def loader_row(size, workers, batches, batch_size, cuda):
    """Samples per second of the training loader on the real sample (drawn with replacement)."""
    from coco_data import CocoDataset
    ds = CocoDataset(SAMPLE / "annotations" / "instances_sample.json", SAMPLE / "images", "det",
                     train=True, input_size=size)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=(batches + 2) * batch_size)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=cuda, drop_last=True)
    it = iter(loader)
    for _ in range(2):             # workers started and their first batches built
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return {"img/s": batches * batch_size / (time.perf_counter() - t0)}


def run_row(spec):
    kind = spec.pop("kind")
    result = infer_row(**spec) if kind == "infer" else loader_row(**spec)
    print(json.dumps(result))


def row_process(spec, timeout):
    """Run one row of this file (infer, loader) or of bench.py (train) in its own process:
    (result dict or None, the failure's last line, seconds)."""
    if spec["kind"] == "train":
        cmd = [sys.executable, "bench.py", "--row", json.dumps(spec)]
    else:
        cmd = [sys.executable, "-m", "checks.gpu", "--row", json.dumps(spec)]
    code, out, seconds = run(cmd, timeout)
    if code:
        return None, last_line(out), seconds
    return json.loads(last_line(out)), "", seconds


# ----------------------------------------------------------------------------- the parts
def part_rows(args, cuda):
    """(part, configuration, result, note, seconds) rows, printed as they come."""
    for arch in ("dla34", "hourglass104"):
        for precision in ("fp32", "bf16"):
            name = f"{arch} {args.size} px batch {TRAIN_BATCH[arch]} " + \
                   ("bf16 + channels_last" if precision == "bf16" else "fp32")
            if not cuda:
                yield "train step", name, "", NO_CUDA, 0.0
                continue
            spec = dict(kind="train", arch=arch, task="det", m=3, size=args.size, batch=TRAIN_BATCH[arch],
                        device="cuda", warmup=3, iters=10, precision=precision)
            res, err, s = row_process(spec, 240)
            yield ("train step", name, f"{1000 / res['train ms/img']:.1f} img/s, peak {res['peak MB'] / 1024:.1f} GiB"
                   if res else "failed", err, s)
    for arch in ("dla34", "hourglass104"):
        for precision in ("fp32", "bf16"):
            name = f"{arch} det MDN_3 {args.size} px batch 1 {precision}"
            if not cuda:
                yield "inference", name, "", NO_CUDA, 0.0
                continue
            res, err, s = row_process(dict(kind="infer", arch=arch, size=args.size, precision=precision), 180)
            yield ("inference", name, f"{res['FPS']:.1f} FPS" if res else "failed",
                   f"paper {PAPER_FPS[arch]} FPS" if res else err, s)
    yield from sample_run(args, cuda)
    name = f"det {args.loader_workers} workers {args.size} px batch {args.loader_batch}"
    res, err, s = row_process(dict(kind="loader", size=args.size, workers=args.loader_workers,
                                   batches=args.loader_batches, batch_size=args.loader_batch, cuda=cuda), 240)
    yield "loader", name, f"{res['img/s']:.0f} img/s" if res else "failed", err, s


def sample_run(args, cuda):
    """The torchrun run on the real sample and export.py of its checkpoint."""
    procs = torch.cuda.device_count() if cuda else 2
    batch = procs * max(1, args.sample_batch // procs)   # the global batch splits evenly
    out = Path(args.out) / "sample_run"
    shutil.rmtree(out, ignore_errors=True)   # a fresh run each time (train.py refuses to overwrite)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           "train.py", "--task", "det", "--mdn", "3", "--arch", args.sample_arch,
           "--ann", str(SAMPLE / "annotations" / "instances_sample.json"), "--images", str(SAMPLE / "images"),
           "--input-size", str(args.sample_size), "--batch-size", str(batch), "--epochs", "2",
           "--lr-steps", "--eval-every", "1", "--workers", "2" if cuda else "0", "--out", str(out)]
    if args.backbone_weights:
        cmd += ["--backbone-weights", args.backbone_weights]
    name = (f"torchrun x{procs} ({'NCCL' if cuda else 'gloo'}) {args.sample_arch} {args.sample_size} px, "
            f"2 epochs, --eval-every 1")
    code, text, s = run(cmd, 300, env={"OMP_NUM_THREADS": "1"})
    log = out / "log.jsonl"
    epochs = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    if code or len(epochs) != 2:
        yield "sample run", name, "failed", last_line(text), s
        yield "export", "", "", "skipped: no checkpoint from the sample run", 0.0
        return
    note = "one process: DDP's all-reduce needs 2 GPUs" if procs == 1 else f"{procs} processes"
    yield ("sample run", name, f"AP {epochs[-1].get('AP', float('nan')):.3f} after epoch 2, "
           f"{sum(e['time'] for e in epochs):.0f} s training", note, s)
    try:
        from export import EXPORT_PACKAGES, require
        require(*EXPORT_PACKAGES)
    except SystemExit as e:
        yield "export", "", "", f"skipped: {e}", 0.0
        return
    onnx_file = Path(args.out) / "sample_run.onnx"
    code, text, s = run([sys.executable, "export.py", "--checkpoint", str(out / "ckpt.pt"), "--out", str(onnx_file),
                         "--verify", "2"], 300)
    yield "export", f"{out / 'ckpt.pt'} -> {onnx_file}", "ok" if code == 0 else "failed", last_line(text), s


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default when available) or cpu: the CPU runs only the parts that need no GPU")
    p.add_argument("--size", type=int, default=512, help="input side of the train-step, inference and loader rows (default 512)")
    p.add_argument("--sample-arch", default="dla34", help="network of the sample run (default dla34, the paper's)")
    p.add_argument("--sample-size", type=int, default=512, help="input side of the sample run (default 512)")
    p.add_argument("--sample-batch", type=int, default=8, help="global batch of the sample run, rounded down to a multiple of the processes (default 8)")
    p.add_argument("--backbone-weights", help="ImageNet weights for the sample run's dla34 (train.py's flag; default none)")
    p.add_argument("--loader-workers", type=int, default=8, help="loader worker processes (default 8)")
    p.add_argument("--loader-batch", type=int, default=16, help="loader batch size (default 16)")
    p.add_argument("--loader-batches", type=int, default=40, help="loader batches timed (default 40)")
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu_check"), help="folder of the sample run and its ONNX file")
    p.add_argument("--row", help=argparse.SUPPRESS)   # internal: one row (JSON spec) in this process
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.row:
        return run_row(json.loads(args.row))
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False)")
    if not (SAMPLE / "annotations" / "instances_sample.json").is_file():
        raise SystemExit(f"{SAMPLE}: the real COCO sample is absent (the sample run and the loader read it)")
    where = torch.cuda.get_device_name() + f" x{torch.cuda.device_count()}" if cuda else f"CPU, {os.cpu_count()} cores"
    print(f"checks.gpu on {where}, torch {torch.__version__}", flush=True)
    print("| part | configuration | result | note | s |\n|---|---|---|---|---|", flush=True)
    rows, t0 = [], time.perf_counter()
    for row in part_rows(args, cuda):
        rows.append(row)
        print("| " + " | ".join(str(c).replace("|", "\\|") for c in row[:4]) + f" | {row[4]:.0f} |", flush=True)
    print(f"{time.perf_counter() - t0:.0f} s in all")
    return rows


if __name__ == "__main__":
    main()
