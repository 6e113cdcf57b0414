"""Which number format the network runs in, on CUDA and on the CPU people have.

`--precision auto` (the default of train.py, evaluate.py and predict.py) picks bf16
autocast with channels_last memory where the hardware computes bf16 natively: every CUDA
GPU with bf16 support, and CPUs with AVX512-BF16 or AMX-BF16 (measured on one such 2-core
CPU: a small_dla pose training step 1.59x faster than fp32 contiguous). Elsewhere it is fp32:
a CPU without those instructions emulates bf16 and would only get slower. The losses stay in
float32 whatever the network runs in (mdn_dense computes them outside autocast), and the
mixture's sigma leaves the heads in float32 (model.Heads).
"""
import contextlib
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """True when the CPU flags list avx512_bf16 or amx_bf16 (Linux; elsewhere False)."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve(precision, device):
    """'auto' | 'fp32' | 'bf16' on a torch.device -> 'fp32' | 'bf16' (what the run uses)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("--precision bf16: this GPU has no bf16 support")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(device, precision):
    """The autocast context for a resolved precision ('fp32': none)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(precision):
    """channels_last for bf16 (the layout oneDNN's and cuDNN's fast bf16 kernels want)."""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def describe(device, precision):
    """One line for a run's first output: where and in what it runs."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads{', native bf16' if cpu_has_native_bf16() else ''}"
    return f"{device.type} ({where}), {precision}" + (" autocast + channels_last" if precision == "bf16" else "")
