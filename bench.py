"""Speed and memory of the pieces, printed as one table (RESULTS.md records its rows).

    python bench.py                 # CPU rows at the demo size (128 px) + loader at 512
    python bench.py --quick         # fewer iterations (a smoke check, numbers are noisy)
    python bench.py --device cuda   # adds 512x512 bf16 rows for the paper's networks

Rows: a training step (forward + backward + the optimiser) per architecture preset and rung of
the --m ladder (the MDN_3 vs base overhead, target <= 5 %, in time and in forward FLOPs:
the FLOPs do not depend on the machine; for the official separate heads and for
--mdn-head shared), NMS-free decoding per image,
inference FPS, forward + decoding per image at batch 1 in PyTorch eager (fp32, bf16) and in
onnxruntime on the CPU (backend "onnx": the one graph export.py writes, with as many
intra-op threads as torch has; skipped with a note without onnxruntime; `--only infer`),
data-loader images/s per worker (target >= 150 at 512 px; read from the files, and held in
memory as train.py --hold-images holds them), and the pose demo's train step:
the old recipe's and today's preset's timed in turn in one process (the "pair" row; with
--compile also today's through torch.compile) and today's split into its parts. Each row
runs in its own subprocess so that "peak MB" is that row's own peak (CPU: max RSS of the
process; CUDA: torch.cuda.max_memory_allocated). Timings are the median of the measured
iterations after warm-up; the machine line says where they came from.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import mdn_dense as md
from decode import decode
from util import precision as px
from model import ModelConfig, build_model, default_sigma_floor, head_channels
from annotations import COCO_PERSON_SIGMAS
from util.ema import WeightAverage
from util.muon import build_optimizer
from util.recipes import preset
from util.timing import interleaved, timed

SAMPLE = Path(__file__).resolve().parent.parent / "shared" / "coco_sample"
# The CPU demo's train step before the speedrun preset (fp32 in the contiguous layout, batch
# 32, 20 epochs, no weight average, Adam), timed beside today's preset in the same command.
OLD_DEMO = dict(batch=32, epochs=20, layout="contiguous", ema=0.0, optimizer="adam")


def synthetic_batch(task, B, size, device, num_classes):
    """Random targets with the shapes coco_data renders (timing only needs shapes)."""
    H = size // 4
    K, N = 17, 32 if task == "pose" else 128
    g = torch.Generator().manual_seed(0)
    batch = {"hm": torch.rand(B, num_classes, H, H, generator=g) * 0.9,
             "ind": torch.randint(0, H * H, (B, N), generator=g),
             "mask": (torch.rand(B, N, generator=g) < 0.1).float(),
             "reg": torch.rand(B, N, 2, generator=g), "wh": torch.rand(B, N, 2, generator=g) * H / 2}
    if task == "pose":
        batch.update(hps=torch.randn(B, N, 2 * K, generator=g) * 5, hps_mask=torch.ones(B, N, 2 * K),
                     hm_hp=torch.rand(B, K, H, H, generator=g) * 0.9,
                     hp_ind=torch.randint(0, H * H, (B, N * K), generator=g),
                     hp_mask=torch.ones(B, N * K), hp_offset=torch.rand(B, N * K, 2, generator=g))
    return {k: v.to(device) for k, v in batch.items()}


def training_setup(arch, task, m, size, batch, device, head="separate", fmt=torch.contiguous_format, optimizer="adam"):
    """(model, optimiser, input x, synthetic targets) of one configuration, in memory format fmt;
    optimizer: adam or muon, as train.py --optimizer."""
    num_classes = 80 if task == "det" else 1
    model = build_model(ModelConfig(task=task, m=m, arch=arch, num_classes=num_classes, mdn_head=head,
                                    sigma_floor=default_sigma_floor(task, arch))).to(device)
    model = model.to(memory_format=fmt)
    opt = build_optimizer(model, optimizer, lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    return model, opt, x, synthetic_batch(task, batch, size, device, num_classes)


def train_step(arch, task, m, size, batch, device, head="separate", precision="fp32", layout=None, ema=0.0,
               compile=False, optimizer="adam"):
    """(step, forward, model) of one configuration. layout: "contiguous" overrides the
    precision's memory format; ema: a weight-average decay (its update is part of the step,
    as in train.py --ema); compile: the step's forward through torch.compile (inductor), as
    train.py --compile (the first warm-up step pays the compilation)."""
    fmt = torch.contiguous_format if layout == "contiguous" else px.memory_format(precision)
    model, opt, x, targets = training_setup(arch, task, m, size, batch, device, head, fmt, optimizer)
    average = WeightAverage(model, ema) if ema else None
    net = torch.compile(model) if compile else model

    def step():
        with px.autocast(device, precision):
            outputs = net(x)
        loss, _ = md.total_loss(outputs, targets, kpt_scale=COCO_PERSON_SIGMAS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if average:
            average.update(model)

    def forward():
        with torch.no_grad(), px.autocast(device, precision):
            model(x)
    return step, forward, model


def row_train(arch, task, m, size, batch, device, warmup, iters, head="separate", precision="fp32",
              layout=None, ema=0.0, optimizer="adam"):
    cuda = device.type == "cuda"
    step, forward, model = train_step(arch, task, m, size, batch, device, head, precision, layout, ema,
                                      optimizer=optimizer)
    model.train()
    s_train = timed(step, warmup, iters, cuda)
    model.eval()
    s_fwd = timed(forward, warmup, iters, cuda)
    counter = FlopCounterMode(display=False)  # counts the matmuls / convs of one forward
    with counter:
        forward()
    return {"train ms/img": 1000 * s_train / batch, "fwd ms/img": 1000 * s_fwd / batch,
            "FPS": batch / s_fwd, "fwd GFLOP/img": counter.get_total_flops() / batch / 1e9}


def row_pair(specs, device, warmup, iters):
    """Train steps of several configurations timed by `util.timing.interleaved`. -> {"train ms/img": [one per spec]}."""
    steps = [train_step(device=device, **s)[0] for s in specs]
    return {"train ms/img": [1000 * t / s["batch"] for t, s in zip(interleaved(steps, warmup, iters), specs)]}


def row_parts(arch, task, m, size, batch, device, warmup, iters, precision="fp32", optimizer="adam"):
    """Where one train step's time goes: backbone forward, heads forward, loss, backward,
    the optimiser (Adam or Muon + Adam), timed apart (median ms/img each). -> {"parts ms/img": {part: ms}}."""
    model, opt, x, targets = training_setup(arch, task, m, size, batch, device, fmt=px.memory_format(precision),
                                            optimizer=optimizer)
    name = "Muon + Adam" if optimizer == "muon" else "Adam"
    seen = {k: [] for k in ("backbone forward", "heads forward", "loss", "backward", name)}
    marks = []

    def mark():   # the GPU runs asynchronously: wait for it before reading the clock
        if device.type == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
    model.train()
    for i in range(warmup + iters):
        marks.clear()
        mark()
        with px.autocast(device, precision):
            features = model.backbone(x)
            mark()
            outputs = [heads(f) for heads, f in zip(model.heads, features)]
            mark()
        loss, _ = md.total_loss(outputs, targets, kpt_scale=COCO_PERSON_SIGMAS)
        mark()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        opt.step()
        mark()
        if i >= warmup:
            for k, a, b in zip(seen, marks, marks[1:]):
                seen[k].append(b - a)
    return {"parts ms/img": {k: 1000 * statistics.median(v) / batch for k, v in seen.items()}}


def row_decode(task, m, size, device, warmup, iters):
    H = size // 4
    num_classes = 80 if task == "det" else 1
    g = torch.Generator().manual_seed(0)
    out = {k: torch.randn(1, c, H, H, generator=g).to(device)
           for k, c in head_channels(ModelConfig(task=task, m=m, num_classes=num_classes)).items()}
    out["mdn_sigma"] = out["mdn_sigma"].exp()  # the heads emit sigma > 0
    s = timed(lambda: decode(out, k=100, refine=task == "pose"), warmup, iters, device.type == "cuda")
    return {"decode ms/img": 1000 * s}


def row_infer(arch, task, size, batch, backend, precision, warmup, iters):
    """What an application runs per image: the network's last stack and decode (k = 100),
    in PyTorch eager (fp32, or bf16 autocast + channels_last) or as export.py's ONNX graph
    in onnxruntime. Untrained weights: the cost does not depend on them."""
    import export
    if backend == "onnx":
        try:
            export.require(*export.EXPORT_PACKAGES)
        except SystemExit:
            return {"note": f"skipped: onnx / onnxscript / onnxruntime not installed ({export.INSTALL_HINT})"}
    torch.manual_seed(0)
    model = build_model(ModelConfig(task=task, m=3, arch=arch, num_classes=80 if task == "det" else 1,
                                    sigma_floor=default_sigma_floor(task, arch))).eval()
    x = torch.randn(batch, 3, size, size)
    if backend == "onnx":
        detector = export.Detector(model)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            export.to_onnx(export.export_program(detector, x, dynamic=False), detector.names, f"{tmp}/m.onnx")
            t_export = time.perf_counter() - t
            session = export.onnx_session(f"{tmp}/m.onnx", torch.get_num_threads())
        feed = {"image": x.numpy()}
        s = timed(lambda: session.run(None, feed), warmup, iters, False)
        note = f"export {t_export:.0f} s, {session.get_session_options().intra_op_num_threads} intra-op threads"
        return {"fwd+decode ms/img": 1000 * s / batch, "FPS": batch / s, "note": note}
    cpu = torch.device("cpu")
    model = model.to(memory_format=px.memory_format(precision))
    x = x.contiguous(memory_format=px.memory_format(precision))

    def run():
        with torch.inference_mode(), px.autocast(cpu, precision):
            decode(model(x)[-1], k=100)
    s = timed(run, warmup, iters, False)
    return {"fwd+decode ms/img": 1000 * s / batch, "FPS": batch / s}


def row_loader(task, size, warmup, iters):
    from coco_data import CocoDataset
    ann = SAMPLE / "annotations" / ("person_keypoints_sample.json" if task == "pose" else "instances_sample.json")
    if not ann.exists():
        return {"note": f"skipped: {ann} not found"}
    torch.set_num_threads(1)  # one worker = one process on one core
    ds = CocoDataset(ann, SAMPLE / "images", task, train=True, input_size=size)
    n = len(ds)
    for i in range(warmup):
        ds[i % n]

    def rate():
        t = time.perf_counter()
        for i in range(iters):
            ds[i % n]
        return iters / (time.perf_counter() - t)
    from_files = rate()
    ds.hold_images()                                    # as train.py --hold-images
    return {"loader img/s/worker": from_files, "held img/s/worker": rate()}


def run_row(spec):
    """Run one row in this process; print its JSON."""
    device = torch.device(spec["device"])
    kind, w, it = spec["kind"], spec["warmup"], spec["iters"]
    if kind == "train":
        res = row_train(spec["arch"], spec["task"], spec["m"], spec["size"], spec["batch"], device, w, it,
                        spec.get("head", "separate"), spec.get("precision", "fp32"), spec.get("layout"),
                        spec.get("ema", 0.0), spec.get("optimizer", "adam"))
    elif kind == "pair":
        res = row_pair(spec["specs"], device, w, 2 * it)
    elif kind == "parts":
        res = row_parts(spec["arch"], spec["task"], spec["m"], spec["size"], spec["batch"], device, w, 2 * it,
                        spec.get("precision", "fp32"), spec.get("optimizer", "adam"))
    elif kind == "decode":
        res = row_decode(spec["task"], spec["m"], spec["size"], device, w, it)
    elif kind == "infer":   # ~10 ms per image at 128 px: 10x the iterations there
        res = row_infer(spec["arch"], spec["task"], spec["size"], spec["batch"], spec["backend"], spec["precision"],
                        w, it * (10 if spec["size"] <= 256 else 1))
    else:
        res = row_loader(spec["task"], spec["size"], w, 10 * it)
    if device.type == "cuda":
        res["peak MB"] = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        res["peak MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def rows(args):
    dev, q = args.device, args.quick
    w, it = (1, 2) if q else (2, 5)
    # The overhead rows run in the precision a run would use on this device by default.
    auto = px.resolve("auto", torch.device(dev))
    specs = []
    # Every base row has an MDN_3 partner with the official heads and one with the shared
    # head (--mdn-head shared), so both overheads are printed.
    ladder = [dict(m=0), dict(m=3), dict(m=3, head="shared")]
    for arch in ("small_dla", "small_hourglass"):
        for task in ("pose", "det"):
            specs += [dict(kind="train", arch=arch, task=task, size=128, batch=32, precision=auto, **r) for r in ladder]
    # The paper's networks at a CPU-sized input, where the heads are a smaller share.
    for arch, task, b in (("dla34", "det", 4), ("hourglass104", "pose", 2)):
        specs += [dict(kind="train", arch=arch, task=task, size=128, batch=b, precision=auto, **r) for r in ladder]
    if dev == "cuda":
        for arch, b in (("dla34", 32), ("hourglass104", 12)):
            for task in ("det", "pose"):
                specs += [dict(kind="train", arch=arch, task=task, size=512, batch=b, precision="bf16", **r)
                          for r in ladder[:2]]
    # fp32 / bf16 pairs of MDN_3 (train step and forward) for every preset: the gain on this machine
    pairs = [("small_dla", "pose", 128, 32), ("small_dla", "det", 128, 32), ("small_hourglass", "pose", 128, 32),
             ("dla34", "det", 128, 4)] + ([("dla34", "det", 512, 32), ("hourglass104", "pose", 512, 12)]
                                          if dev == "cuda" else [])
    for arch, task, size, b in pairs:
        for prec in ("fp32", "bf16"):
            spec = dict(kind="train", arch=arch, task=task, size=size, batch=b, m=3, precision=prec)
            if spec not in specs:
                specs.append(spec)
    # The demo job's train step: the old recipe and today's preset, side by side
    for spec in demo_specs(auto):
        if spec not in specs:
            specs.append(spec)
    keys = ("arch", "task", "m", "size", "batch", "precision", "layout", "ema", "optimizer")
    pair = [{k: s[k] for k in keys if k in s} for s in demo_specs(auto)]
    if args.compile:   # today's step again, through torch.compile
        pair.append(dict(pair[-1], compile=True))
    specs.append(dict(kind="pair", arch="small_dla", task="pose", size=128, precision=auto, specs=pair))
    today = {k: v for k, v in pair[1].items() if k in ("arch", "task", "m", "size", "batch", "precision", "optimizer")}
    specs.append(dict(kind="parts", **today))
    for task in ("det", "pose"):
        specs.append(dict(kind="decode", task=task, m=3, size=512))
        specs.append(dict(kind="loader", task=task, size=512, device="cpu"))
    # Forward + decode at batch 1 on the CPU: the demo preset and the paper's DLA-34 detector
    for arch, task, size in (("small_dla", "pose", 128), ("dla34", "det", 512)):
        for backend, prec in (("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32")):
            specs.append(dict(kind="infer", arch=arch, task=task, m=3, size=size, batch=1, device="cpu",
                              precision=prec, backend=backend))
    for s in specs:
        s.setdefault("device", dev)
        s.update(warmup=w, iters=it)
    return specs


def row_name(spec):
    if spec["kind"] == "parts":
        return f"parts {spec['arch']} {spec['task']} {spec['m']} {spec['size']} {spec['batch']} {spec['precision']}: the pose demo's step, part by part"
    if spec["kind"] == "pair":
        return f"pair {spec['arch']} {spec['task']} {spec['size']} {spec['precision']}: the pose demo's old and new step"
    return " ".join(str(spec[k]) if k != "ema" else f"ema {spec[k]}"
                    for k in ("kind", "arch", "task", "m", "head", "size", "batch", "device", "precision",
                              "layout", "ema", "optimizer", "backend") if k in spec) + (" compiled" if spec.get("compile") else "")


def demo_specs(precision, device=None):
    """The pose demo's (small_dla, MDN_3) train-step rows: the old recipe, today's preset."""
    demo = preset("small_dla", "pose")
    where = dict(device=device) if device else {}
    return [dict(kind="train", arch="small_dla", task="pose", size=128, m=3, precision=precision, **where,
                 **{k: v for k, v in r.items() if k != "epochs" and v})
            for r in (OLD_DEMO, dict(batch=demo["batch_size"], ema=demo.get("ema", 0.0),
                                     optimizer=demo["optimizer"]))]


def demo_line(by_name, precision, device):
    """The pose demo's training, today's preset against the old recipe: per image and per job,
    from the interleaved pair row when it ran, else from the two separate rows."""
    specs = demo_specs(precision, device)
    pair = [r for n, r in by_name.items() if n.startswith("pair ")]
    rows_ = [by_name.get(row_name(s)) for s in specs]
    if pair:
        (o, t), how = pair[0]["train ms/img"][:2], "interleaved in one process"
        if len(pair[0]["train ms/img"]) > 2:
            print(f"torch.compile vs eager, today's pose demo step: x{t / pair[0]['train ms/img'][2]:.2f} "
                  "(compilation excluded)")
    elif all(rows_):
        (o, t), how = [r["train ms/img"] for r in rows_], "separate rows"
    else:
        return
    epochs = preset("small_dla", "pose")["epochs"]
    old, new = (row_name(s)[6:] for s in specs)
    print(f"pose demo train step, today's preset ({new}) vs the old recipe ({old}), {how}: {t:.1f} against "
          f"{o:.1f} ms/img (x{o / t:.2f}); its training, {epochs} against {OLD_DEMO['epochs']} epochs: "
          f"x{o * OLD_DEMO['epochs'] / (t * epochs):.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="fewer iterations (noisy; a smoke check)")
    p.add_argument("--only", help="run only rows whose name contains this text (e.g. small_dla, loader)")
    p.add_argument("--compile", action="store_true",
                   help="add today's pose demo step through torch.compile to the interleaved pair row "
                        "(needs a C++ compiler; the first step compiles, about a minute on 2 cores)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row (JSON spec) and print its result
    args = p.parse_args(argv)
    if args.row:
        return run_row(json.loads(args.row))
    name = row_name
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          + (torch.cuda.get_device_name() if args.device == "cuda" else "CPU") + f", {torch.get_num_threads()} threads")
    cols = ["train ms/img", "fwd ms/img", "fwd GFLOP/img", "FPS", "decode ms/img", "fwd+decode ms/img",
            "loader img/s/worker", "held img/s/worker", "peak MB"]
    print(f"{'row':<48}" + "".join(f"{c:>20}" for c in cols))
    results = []
    for spec in rows(args):
        if args.only and args.only not in name(spec):
            continue
        proc = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)],
                              capture_output=True, text=True)
        if proc.returncode:
            print(f"{name(spec):<48}  failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append({"row": name(spec), **res})
        if spec["kind"] == "pair":   # one line per configuration, timed in turn
            for sub, ms in zip(spec["specs"], res["train ms/img"]):
                print(f"{'  interleaved: ' + name(dict(kind='train', **sub, device=spec['device'])):<48}{ms:>20.1f}")
            continue
        if spec["kind"] == "parts":
            total = sum(res["parts ms/img"].values())
            for part, ms in res["parts ms/img"].items():
                print(f"{'  ' + part + f' ({100 * ms / total:.0f} %)':<48}{ms:>20.1f}")
            continue
        print(f"{name(spec):<48}" + "".join(f"{res[c]:>20.{2 if 'GFLOP' in c else 1}f}" if c in res else f"{'':>20}" for c in cols)
              + (f"  {res['note']}" if "note" in res else ""))
    by_name = {r["row"]: r for r in results}
    auto = px.resolve("auto", torch.device(args.device)) if args.device != "cuda" else "bf16"
    for arch in ("small_dla", "small_hourglass", "dla34", "hourglass104"):
        for task in ("det", "pose"):
            for size in (128, 512):
                same = lambda n, key: n.startswith(f"train {arch} {task} {key} {size} ") and n.endswith(f" {auto}")
                base = [r for n, r in by_name.items() if same(n, "0")]
                for label, key in (("MDN_3", "3"), ("MDN_3 shared head", "3 shared")):
                    mdn = [r for n, r in by_name.items() if same(n, key)]
                    if base and mdn:
                        over = 100 * (mdn[0]["train ms/img"] / base[0]["train ms/img"] - 1)
                        flops = 100 * (mdn[0]["fwd GFLOP/img"] / base[0]["fwd GFLOP/img"] - 1)
                        print(f"{label} vs base train-step overhead, {arch} {task} {size}px: {over:+.1f} % "
                              f"(forward FLOPs {flops:+.1f} %)")
    for n, r in by_name.items():
        if n.startswith("train ") and n.endswith(" bf16") and n[:-4] + "fp32" in by_name:
            f = by_name[n[:-4] + "fp32"]
            print(f"bf16 vs fp32, {n[6:-5]}: train step x{f['train ms/img'] / r['train ms/img']:.2f}, "
                  f"forward x{f['fwd ms/img'] / r['fwd ms/img']:.2f}")
    for n, r in by_name.items():
        if n.startswith("infer ") and n.endswith(" fp32 onnx") and "FPS" in r:
            base = n.removesuffix(" fp32 onnx")
            vs = [(p, by_name[f"{base} {p} torch"]) for p in ("fp32", "bf16") if "FPS" in by_name.get(f"{base} {p} torch", {})]
            print(f"onnxruntime vs PyTorch eager, {base[6:]} forward + decode: "
                  + ", ".join(f"x{r['FPS'] / t['FPS']:.2f} of {p}" for p, t in vs))
    demo_line(by_name, px.resolve("auto", torch.device(args.device)), args.device)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
