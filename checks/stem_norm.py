"""Why dla.StemBatchNorm2d exists: torch's CPU batch norm on channels_last maps with few channels.

    python -m checks.stem_norm                # the stem's shapes, then the pose demo's train step
    python -m checks.stem_norm --rounds 5 --no-step

For each map shape (B, C, H, W) of small_dla's first levels at the demo's batch 16 and 128 px,
one table row: forward + backward time of F.batch_norm (training mode) on the channels_last map
against the contiguous kernel with both layout copies, and each output's largest distance
from a float64 batch norm. Then the pose demo's train step (bench.train_step: batch 16,
channels_last, Muon) with the stem's batch norms as built (StemBatchNorm2d) and switched back
to nn.BatchNorm2d, timed in turn in one process (util.timing.interleaved): the side-by-side ratio
RESULTS.md records. Times are medians over --rounds timed calls (ms); run it on a quiet machine.
"""
import argparse

import torch
import torch.nn.functional as F

import dla
from bench import train_step
from util.timing import interleaved, timed

# small_dla's maps at batch 16, 128 px: base_layer / level0, level1, level2's 16 channels
SHAPES = [(16, 4, 128, 128), (16, 8, 64, 64), (16, 16, 32, 32), (16, 32, 16, 16)]
WARMUP = 2


def norm_row(shape, rounds):
    """(ms channels_last, ms contiguous + copies, error channels_last, error contiguous)."""
    torch.manual_seed(0)
    C = shape[1]
    x0 = (torch.randn(shape) * 3 + 5).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(C, requires_grad=True), torch.randn(C, requires_grad=True)
    bn = lambda x: F.batch_norm(x, torch.zeros(C, dtype=x.dtype), torch.ones(C, dtype=x.dtype),
                                w.to(x.dtype), b.to(x.dtype), True, 0.1, 1e-5)
    ways = [bn, lambda x: bn(x.contiguous()).contiguous(memory_format=torch.channels_last)]
    with torch.no_grad():
        ref = bn(x0.double())
        errors = [(way(x0).double() - ref).abs().max().item() for way in ways]
    g, x = torch.randn_like(x0), x0.clone().requires_grad_()
    times = [1e3 * timed(lambda: way(x).backward(g), WARMUP, rounds, cuda=False) for way in ways]
    return *times, *errors


def step_times(rounds):
    """Median ms per train step of the pose demo: StemBatchNorm2d as built, then plain."""
    steps = []
    for plain in (False, True):
        torch.manual_seed(0)
        step, _, model = train_step("small_dla", "pose", 3, 128, 16, torch.device("cpu"), optimizer="muon")
        if plain:
            for module in model.modules():
                if isinstance(module, dla.StemBatchNorm2d):
                    module.__class__ = torch.nn.BatchNorm2d
        steps.append(step)
    return [1e3 * t for t in interleaved(steps, WARMUP, rounds)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=20, help="timed calls per measurement; the median is printed (default 20)")
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
        new, old = step_times(args.rounds)
        print(f"pose demo train step: {new:.0f} ms with StemBatchNorm2d, {old:.0f} ms with nn.BatchNorm2d "
              f"(x{new / old:.2f})")
    return rows


if __name__ == "__main__":
    main()
