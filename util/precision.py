"""Which number format the network runs in, on CUDA and on the CPU people have.

`--precision auto` (the default of train.py, evaluate.py and predict.py) is bf16 autocast
on a CUDA GPU with bf16 support and **fp32 on the CPU**; the memory layout is channels_last
in both (memory_format).
`--precision bf16` on a CPU with AVX512-BF16 or AMX-BF16 (cpu_has_native_bf16) is faster
per train step (bench.py prints the ratio), but it is opt-in there: over three seeds it kept
pose MDN_3 and the L1 bases within the seed spread of fp32 but cost detection MDN_3 several AP
(RESULTS.md, "Precision: bf16 on the CPU"), a loss not yet explained. The losses stay in
float32 whatever the network runs in (mdn_dense computes them outside autocast), and every
head's last layer runs in float32 (model.Heads).
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
    return "fp32"   # bf16 on the CPU is opt-in: it cost det MDN_3 accuracy (see the docstring)


def autocast(device, precision):
    """The autocast context for a resolved precision ('fp32': none)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(precision):
    """channels_last in every precision: the layout oneDNN's (CPU) and cuDNN's fast convolution
    kernels want; on the CPU it speeds up fp32 training as well (bench.py's layout rows). The
    argument is kept so that a precision could choose another layout."""
    return torch.channels_last


def describe(device, precision):
    """One line for a run's first output: where and in what it runs."""
    n = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {n} thread{'s' * (n != 1)}{', native bf16' if cpu_has_native_bf16() else ''}"
    return f"{device.type} ({where}), {precision}" + (" autocast" if precision == "bf16" else "") + " + channels_last"
