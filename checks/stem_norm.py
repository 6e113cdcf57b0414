"""Why dla.StemBatchNorm2d exists: torch's CPU batch norm on channels_last maps with few channels.

    python -m checks.stem_norm                # the stem's shapes, then the pose demo's train step
    python -m checks.stem_norm --rounds 3 --no-step

For each map shape (B, C, H, W) of small_dla's first levels at the demo's batch 16 and 128 px,
one table row: forward + backward time of F.batch_norm (training mode) on the channels_last map
against the contiguous kernel with both layout copies, and each output's largest distance
from a float64 batch norm. Then the pose demo's train step (bench.training_setup: batch 16,
channels_last, Muon) with the stem's batch norms as built (StemBatchNorm2d) and switched back
to nn.BatchNorm2d, timed in turn in one process: the side-by-side ratio RESULTS.md records.
Times are the minimum over rounds (ms); run it on a quiet machine.
"""
import argparse
import time

import torch
import torch.nn.functional as F

# small_dla's maps at batch 16, 128 px: base_layer / level0, level1, level2's 16 channels
SHAPES = [(16, 4, 128, 128), (16, 8, 64, 64), (16, 16, 32, 32), (16, 32, 16, 16)]


def norm_row(shape, rounds, repeats=10):
    """(ms channels_last, ms contiguous + copies, error channels_last, error contiguous)."""
    torch.manual_seed(0)
    C = shape[1]
    x0 = (torch.randn(shape) * 3 + 5).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, requires_grad=True), torch.randn(C, requires_grad=True)
    bn = lambda x: F.batch_norm(x, torch.zeros(C, dtype=x.dtype), torch.ones(C, dtype=x.dtype),
                                w.to(x.dtype), b.to(x.dtype), True, 0.1, 1e-5)
    ways = {"channels_last": bn,
            "contiguous": lambda x: bn(x.contiguous()).contiguous(memory_format=torch.channels_last)}
    with torch.no_grad():
        ref = bn(x0.double())
        errors = [(way(x0).double() - ref).abs().max().item() for way in ways.values()]
    g = torch.randn_like(x0)
    best = {name: float("inf") for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            x = x0.clone().requires_grad_()
            t0 = time.perf_counter()
            for _ in range(repeats):
                way(x).backward(g)
            best[name] = min(best[name], (time.perf_counter() - t0) / repeats * 1e3)
    return best["channels_last"], best["contiguous"], *errors


def step_times(rounds, steps=5):
    """Minimum ms per train step of the pose demo: StemBatchNorm2d as built, then plain."""
    import dla
    import mdn_dense as md
    from annotations import COCO_PERSON_SIGMAS
    from bench import training_setup

    def variant(plain):
        torch.manual_seed(0)
        model, opt, x, t = training_setup("small_dla", "pose", 3, 128, 16, "cpu",
                                          fmt=torch.channels_last, optimizer="muon")
        if plain:
            for module in model.modules():
                if isinstance(module, dla.StemBatchNorm2d):
                    module.__class__ = torch.nn.BatchNorm2d

        def step():
            loss, _ = md.total_loss(model(x), t, kpt_scale=COCO_PERSON_SIGMAS)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()
        return step

    runs = {"StemBatchNorm2d": variant(False), "nn.BatchNorm2d": variant(True)}
    for step in runs.values():
        step()
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, step in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            best[name] = min(best[name], (time.perf_counter() - t0) / steps * 1e3)
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="timing rounds; the minimum is printed (default 5)")
    p.add_argument("--no-step", action="store_true", help="only the batch-norm rows, not the train step")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"batch norm, training mode, forward + backward, {torch.get_num_threads()} threads (ms; error: max |y - float64|)")
    print(f"{'map (B, C, H, W)':>20}  {'channels_last':>13}  {'contiguous':>10}  {'error cl':>9}  {'error contig':>12}")
    rows = {}
    for shape in SHAPES:
        rows[shape] = norm_row(shape, args.rounds)
        cl, contig, e_cl, e_contig = rows[shape]
        print(f"{str(shape):>20}  {cl:13.2f}  {contig:10.2f}  {e_cl:9.1e}  {e_contig:12.1e}")
    if not args.no_step:
        best = step_times(args.rounds)
        new, old = best["StemBatchNorm2d"], best["nn.BatchNorm2d"]
        print(f"pose demo train step: {new:.0f} ms with StemBatchNorm2d, {old:.0f} ms with nn.BatchNorm2d "
              f"(x{new / old:.2f})")
    return rows


if __name__ == "__main__":
    main()
