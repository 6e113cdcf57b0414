"""The grader's judgements: each compares the student's answer to one call with the
reference's answer to the same call, or checks a property of it, and says in one line what
was expected and what came back. They run in the trusted parent on plain data only (the
child's answers are read with torch.load(weights_only=True) and `plain` refuses anything
but tensors, numpy arrays, numbers, strings, lists, tuples and dicts).

An answer is a dict: value (what the function returned), args (arguments handed back after
the call), grads (autograd gradients of sum(value * weights)), error (None or the raised
exception's class names and message). A judgement returns None when the answer is right.
"""
import math

import numpy as np
import torch

from course.child import NDARRAY


class NotPlain(ValueError):
    """The child handed back something that is not plain data."""


def plain(x, where="the answer"):
    """The child's answer with its numpy arrays restored; NotPlain for any other type (a
    torch.Tensor subclass, an object with its own comparison, ...)."""
    if type(x) is torch.Tensor:
        return x
    if type(x) is dict:
        if set(x) == {NDARRAY}:
            return plain(x[NDARRAY], where).numpy()
        if not all(type(k) is str for k in x):
            raise NotPlain(f"{where} has a dict key that is not a string")
        return {k: plain(v, f"{where}[{k!r}]") for k, v in x.items()}
    if type(x) in (list, tuple):
        return type(x)(plain(v, f"{where}[{i}]") for i, v in enumerate(x))
    if x is None or type(x) in (bool, int, float, str):
        return x
    raise NotPlain(f"{where} is a {type(x).__module__}.{type(x).__qualname__}, not plain data")


def show(x):
    """A value in a few words: type, shape, dtype and the first values."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        kind = "tensor" if isinstance(x, torch.Tensor) else "array"
        n = x.numel() if kind == "tensor" else x.size
        flat = x.reshape(-1)[:6].tolist()
        values = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in flat)
        return f"{kind} {tuple(x.shape)} {str(x.dtype).replace('torch.', '')} [{values}{', ...' if n > 6 else ''}]"
    if isinstance(x, dict):
        return "dict with keys " + ", ".join(sorted(x))
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__} of {len(x)}"
    return repr(x)[:80]


def differ(got, want, where="the value", rtol=1e-6, atol=1e-8, dtype=True):
    """None when got matches want (same structure, types, shapes, dtypes unless dtype=False,
    values within rtol / atol; integers and booleans exactly), else one line saying where."""
    if isinstance(want, (torch.Tensor, np.ndarray)):
        if type(got) is not type(want):
            return f"{where}: expected a {show(want)}, got {show(got)}"
        if tuple(got.shape) != tuple(want.shape):
            return f"{where}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
        if dtype and got.dtype != want.dtype:
            return f"{where}: expected dtype {want.dtype}, got {got.dtype}"
        g = torch.as_tensor(got).double() if got.dtype != torch.bool else torch.as_tensor(got)
        w = torch.as_tensor(want).double() if want.dtype != torch.bool else torch.as_tensor(want)
        exact = not (torch.as_tensor(want).is_floating_point())
        bad = (g != w) if exact else ~torch.isclose(g, w, rtol=rtol, atol=atol, equal_nan=False)
        if bad.any():
            i = tuple(int(v) for v in bad.nonzero()[0])
            return (f"{where}: at index {i} expected {w[i].item():.8g}, got {g[i].item():.8g} "
                    f"({int(bad.sum())} of {bad.numel()} entries differ)")
        return None
    if isinstance(want, dict):
        if type(got) is not dict or set(got) != set(want):
            return f"{where}: expected a dict with keys {sorted(want)}, got {show(got)}"
        return next((m for k in want if (m := differ(got[k], want[k], f"{where}[{k!r}]", rtol, atol, dtype))), None)
    if isinstance(want, (list, tuple)):
        if type(got) not in (list, tuple) or len(got) != len(want):
            return f"{where}: expected a {type(want).__name__} of {len(want)}, got {show(got)}"
        return next((m for i, (g, w) in enumerate(zip(got, want))
                     if (m := differ(g, w, f"{where}[{i}]", rtol, atol, dtype))), None)
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        if type(got) not in (int, float) or not math.isclose(got, want, rel_tol=rtol, abs_tol=atol):
            return f"{where}: expected {want!r}, got {show(got)}"
        return None
    return None if got == want and type(got) is type(want) else f"{where}: expected {want!r}, got {show(got)}"


def _failed(got):
    """The answer's error in words (None when there is none)."""
    if got["error"] is None:
        return None
    types, message = got["error"].get("types") or ["?"], got["error"].get("message", "")
    return f"raised {types[0]}: {message}"


# ----------------------------------------------------------------------------- judgements
def same(rtol=1e-6, atol=1e-8, dtype=True, args=False):
    """The value (and, with args=True, the arguments handed back) match the reference's."""
    def judge(got, want):
        if (err := _failed(got)) or (err := _failed(want)):
            return err if not _failed(want) else f"the reference raised: {_failed(want)}"
        return differ(got["value"], want["value"], "the value", rtol, atol, dtype) or (
            args and differ(got["args"], want["args"], "the arguments after the call", rtol, atol, dtype)) or None
    return judge


def same_grads(rtol=1e-6, atol=1e-8):
    """The autograd gradients match the reference's."""
    def judge(got, want):
        return _failed(got) or differ(got["grads"], want["grads"], "the gradients", rtol, atol)
    return judge


def finite(grads=False):
    """The value (and the gradients) hold no inf or nan."""
    def judge(got, want):
        if err := _failed(got):
            return err
        for name, xs in (("the value", [got["value"]]), ("the gradients", got["grads"] if grads else [])):
            for x in xs:
                if not isinstance(x, torch.Tensor):
                    return f"{name}: expected a tensor, got {show(x)}"
                if not torch.isfinite(x.double()).all():
                    return f"{name}: expected finite numbers, got {show(x)}"
        return None
    return judge


def bounded(low, strict=False):
    """Every value is > low (strict) or >= low."""
    def judge(got, want):
        if err := _failed(got):
            return err
        x = got["value"]
        if not isinstance(x, torch.Tensor) or x.numel() == 0:
            return f"the value: expected a tensor, got {show(x)}"
        bad = ~(x.double() > low) if strict else ~(x.double() >= low)
        if bad.any():
            return f"the value: expected every entry {'>' if strict else '>='} {low:.4g}, got {x.double().min().item():.6g}"
        return None
    return judge


def raises(name):
    """The call raises the documented exception type (any message: the type is the contract)."""
    def judge(got, want):
        if got["error"] is None:
            return f"expected {name} to be raised, got a return value {show(got['value'])}"
        if name not in (got["error"].get("types") or []):
            return f"expected {name}, got {_failed(got)}"
        return None
    return judge


def all_of(*judges):
    def judge(got, want):
        return next((m for j in judges if (m := j(got, want))), None)
    return judge
