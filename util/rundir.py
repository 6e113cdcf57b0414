"""A training run's folder: one run per folder (a lock), checkpoints that are good when
they are written, a log that always agrees with the checkpoint, and starting a run from a
checkpoint (--resume, --init).

    runs/pose_m3/ckpt.pt       model config + weights + optimiser + history (model.save_checkpoint)
    runs/pose_m3/log.jsonl     one JSON line per finished epoch, rewritten from the history
    runs/pose_m3/.lock         the owning process id while a run writes here

Nothing here is in the paper; it is what keeps a long run's results from being silently
wrong: a checkpoint is written only when every weight and optimiser value is finite, to a
temporary file renamed over the old one (a crash or a full disk leaves the last good file),
and the log is the checkpoint's own history, so a kill between the two cannot duplicate an epoch.
"""
import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from model import read_checkpoint, save_checkpoint


def next_run_folder(base, resume=False):
    """The default run folder: base if it holds no run yet, else base_2, base_3, ... (the first
    free one), as Ultralytics' runs/exp, exp2; with resume, the newest that holds a checkpoint."""
    base = Path(base)
    numbered = {1: base}
    for p in base.parent.glob(f"{base.name}_*"):
        suffix = p.name[len(base.name) + 1:]
        if suffix.isdigit() and int(suffix) >= 2:
            numbered[int(suffix)] = p
    if resume:
        return next((numbered[n] for n in sorted(numbered, reverse=True) if (numbered[n] / "ckpt.pt").exists()), base)
    used = lambda f: any((f / name).exists() for name in ("ckpt.pt", "log.jsonl", ".lock"))
    n = 1
    while n in numbered and used(numbered[n]):
        n += 1
    return base if n == 1 else base.with_name(f"{base.name}_{n}")


class RunLock:
    """`with RunLock(folder):` holds folder/.lock (O_EXCL, the process id inside) while a run
    writes there. A lock whose process is gone is stale and taken over; a live one is an
    error naming the folder and the process."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise SystemExit(f"{self.path.parent} is in use by another run (process {owner}): "
                                     f"wait for it, or pass another --out") from None
                self.path.unlink(missing_ok=True)          # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise SystemExit(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)
        return False

    def _owner(self):
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


def non_finite(model, optimizer):
    """Names of the parameters, buffers and optimiser-state tensors that hold NaN or inf."""
    bad = [name for name, t in model.state_dict().items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    for i, state in enumerate(optimizer.state_dict()["state"].values()):
        bad += [f"optimizer.state[{i}].{k}" for k, t in state.items()
                if torch.is_tensor(t) and t.is_floating_point() and not torch.isfinite(t).all()]
    return bad


def checkpoint_bytes(model, optimizer):
    """About what a checkpoint takes on disk: every tensor of the model and the optimiser."""
    tensors = list(model.state_dict().values())
    tensors += [t for s in optimizer.state_dict()["state"].values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def save_run(folder, model, optimizer, epoch, history, last_good, **extra):
    """Check, then write folder/ckpt.pt (with `extra`: the train config, the data's names)
    and folder/log.jsonl. Raises SystemExit without
    writing when a weight or optimiser value is not finite (naming last_good, the file that
    still holds good weights), and on a write error naming the folder and the space needed."""
    folder = Path(folder)
    bad = non_finite(model, optimizer)
    if bad:
        raise SystemExit(f"epoch {epoch + 1}: {len(bad)} weight / optimiser tensors are not finite "
                         f"(first: {', '.join(bad[:3])}); nothing saved. Last good checkpoint: {last_good}")
    try:
        save_checkpoint(folder / "ckpt.pt", model, optimizer=optimizer.state_dict(), epoch=epoch,
                        history=history, **extra)
        write_log(folder, history)
    except (OSError, RuntimeError) as e:
        need = checkpoint_bytes(model, optimizer) / 2 ** 20
        free = shutil.disk_usage(folder).free / 2 ** 20
        raise SystemExit(f"could not write the checkpoint in {folder} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0]}): it needs about {need:.0f} MiB, {free:.0f} MiB are free. "
                         f"Last good checkpoint: {last_good}; free some space and pass --resume") from None


def write_log(folder, history):
    """log.jsonl from the history, written whole and renamed (never appended)."""
    path = Path(folder) / "log.jsonl"
    tmp = path.with_name(f".log.{os.getpid()}.tmp")
    try:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in history))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- starting from a checkpoint
def resume_state(path, model_cfg):
    """The checkpoint to continue, checked against the model this command would build."""
    try:
        state = read_checkpoint(path)
    except FileNotFoundError:
        raise SystemExit(f"--resume: no checkpoint at {path}") from None
    except ValueError as e:
        raise SystemExit(f"--resume: {e}") from None
    stored = state["model_config"]
    differ = [f"{k} {stored.get(k)!r} (checkpoint) vs {v!r}" for k, v in dataclasses.asdict(model_cfg).items()
              if stored.get(k) != v]
    if differ:
        raise SystemExit(f"--resume {path}: the checkpoint is another model: {'; '.join(differ)}")
    return state


def init_from(model, path):
    """Start from another run's weights (CenterNet's --load_model): every tensor whose name
    and shape match is copied; the others (e.g. the mixture heads when the run was the
    base) keep their fresh initialisation. Returns (copied, skipped) names; raises if
    nothing matches."""
    try:
        source = read_checkpoint(path)["model"]
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--init: {e}") from None
    own = model.state_dict()
    copied = [k for k, v in source.items() if k in own and own[k].shape == v.shape]
    if not copied:
        raise SystemExit(f"--init {path}: no tensor matches this model (another architecture?)")
    model.load_state_dict({k: source[k] for k in copied}, strict=False)
    return copied, [k for k in own if k not in copied]
