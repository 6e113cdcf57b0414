"""argparse types shared by the commands (train.py, evaluate.py, predict.py, export.py), so a
bad number or device is refused at parse time with one line naming the flag (argparse adds
the flag's name to the message)."""
import argparse

import torch


def positive(kind):
    """argparse type: a number > 0."""
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def non_negative(kind):
    """argparse type: a number >= 0."""
    def parse(text):
        value = kind(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value
    return parse


def probability(text):
    """argparse type: a number in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def device(text):
    """argparse type: a torch device this machine has (cpu, cuda, cuda:N)."""
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this torch build or machine has no CUDA GPU; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: there are {torch.cuda.device_count()} CUDA GPUs")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: only cpu and cuda are supported")
    return dev
