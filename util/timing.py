"""Timing helpers for bench.py and checks/: the median of repeated calls, and several steps
timed in turn so that a change in a shared machine's load hits them alike."""
import statistics
import time

import torch


def timed(fn, warmup, iters, cuda):
    """Median seconds of fn() over iters calls after warmup calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(steps, warmup, iters):
    """Median seconds of each of several step functions, timed in turn in one process (step
    of the first, of the second, ...), so that a change in the machine's load hits them alike:
    the reliable ratio on a shared machine."""
    for _ in range(warmup):
        for step in steps:
            step()
    times = [[] for _ in steps]
    for _ in range(iters):
        for step, seen in zip(steps, times):
            t = time.perf_counter()
            step()
            seen.append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]
