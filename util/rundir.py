"""A training run's folder: one run per folder (a lock), checkpoints that are good when
they are written, a log that always agrees with the checkpoint, and starting a run from a
checkpoint (--resume, --init).

    runs/pose_m3/ckpt.pt       model config + weights + optimiser + history (model.save_checkpoint)
    runs/pose_m3/log.jsonl     one JSON line per finished epoch, rewritten from the history
    runs/pose_m3/.lock         while a run writes here: its folder, host, process id and start time

Nothing here is in the paper; it is what keeps a long run's results from being silently
wrong: a checkpoint is written only when every weight and optimiser value is finite, to a
temporary file renamed over the old one (a crash or a full disk leaves the last good file),
and the log is the checkpoint's own history, so a kill between the two cannot duplicate an epoch.
Nothing of the user's is written over: a new run starts only in an empty or new folder
(check_run_folder), and folders are named by one rule (run_name) and moved aside, never
deleted (set_aside). SIGINT and SIGTERM unwind through the lock (stop_on_signals), so the
run stops with one line naming its last good checkpoint.
"""
import dataclasses
import json
import os
import shutil
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

import torch

from model import read_checkpoint, save_checkpoint


def run_name(task, m):
    """The one naming rule of a run folder: <task>_m<M> (runs/pose_m3, runs/nb03/det_m0)."""
    return f"{task}_m{m}"


def read_log(run):
    """A run's log.jsonl (the run folder or its ckpt.pt): one dict per finished epoch."""
    run = Path(run)
    folder = run.parent if run.suffix == ".pt" else run
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def holds_files(folder):
    """Whether folder exists and holds anything but a lock (the files of some run or of the user)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name != ".lock" for p in folder.iterdir())


def check_run_folder(folder, resume):
    """A new run starts only in an empty or new folder: config.json, log.jsonl, curves.png of
    another run (or the user's own files) are never written over. --resume needs ckpt.pt."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"--out {folder} is a file, not a folder")
    if resume:
        if not (folder / "ckpt.pt").is_file():
            raise SystemExit(f"--resume: no checkpoint at {folder / 'ckpt.pt'}")
        return
    if holds_files(folder):
        what = "a run's checkpoint" if (folder / "ckpt.pt").exists() else \
            ", ".join(sorted(p.name for p in folder.iterdir() if p.name != ".lock")[:4])
        raise SystemExit(f"{folder} already holds {what}: pass --resume to continue a run there, "
                         f"or --out an empty or new folder (nothing is overwritten)")


def next_run_folder(base, resume=False):
    """The default run folder: base if it holds no file yet, else base_2, base_3, ... (the first
    free one), as Ultralytics' runs/exp, exp2; with resume, the newest that holds a checkpoint."""
    base = Path(base)
    numbered = {1: base}
    for p in base.parent.glob(f"{base.name}_*"):
        suffix = p.name[len(base.name) + 1:]
        if suffix.isdigit() and int(suffix) >= 2:
            numbered[int(suffix)] = p
    if resume:
        return next((numbered[n] for n in sorted(numbered, reverse=True) if (numbered[n] / "ckpt.pt").exists()), base)
    used = lambda f: holds_files(f) or (f / ".lock").exists()
    n = 1
    while n in numbered and used(numbered[n]):
        n += 1
    return base if n == 1 else base.with_name(f"{base.name}_{n}")


def set_aside(folder, label="stale"):
    """Rename folder to the first free <folder>_<label>, <folder>_<label>_2, ... (never over
    anything) and return the new path."""
    folder = Path(folder)
    target, n = folder.with_name(f"{folder.name}_{label}"), 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}_{label}_{n}")
    folder.rename(target)
    return target


class RunLock:
    """`with RunLock(folder):` holds folder/.lock (O_EXCL) while a run writes there. The lock
    says which run, host, process and process start time own it, so a lock whose process is
    gone, or whose process id now belongs to another process (a reused pid: pid 1 in a fresh
    container), is stale and taken over; a live one is an error naming the folder, host and
    process."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        self.me = dict(run=str(Path(folder).resolve()), host=socket.gethostname(), pid=os.getpid(),
                       started=_start_time(os.getpid()))

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SystemExit(f"cannot create the run folder {self.path.parent} ({type(e).__name__}: "
                             f"{e.strerror or e}): pass --out a folder you can write") from None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner["pid"] != os.getpid() and _owns(owner):
                    raise SystemExit(f"{self.path.parent} is in use by another run (process {owner['pid']} "
                                     f"on {owner.get('host') or 'this host'}): wait for it, or pass another "
                                     f"--out") from None
                self.path.unlink(missing_ok=True)          # stale: its process is gone
                continue
            except OSError as e:
                raise SystemExit(f"cannot write in {self.path.parent} ({type(e).__name__}: {e.strerror or e}): "
                                 f"pass --out a folder you can write") from None
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            return self
        raise SystemExit(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        owner = self._owner()
        if owner is not None and owner["pid"] == os.getpid():
            self.path.unlink(missing_ok=True)
        return False

    def _owner(self):
        """The lock's record, or None when unreadable. A bare process id (the older format)
        reads as a record of that pid on this host."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        try:
            owner = json.loads(text)
        except ValueError:
            return None
        if isinstance(owner, int):
            return dict(pid=owner)
        return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _start_time(pid):
    """A process's start time in clock ticks since boot (Linux /proc), or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])    # field 22, after the command name


def _owns(owner):
    """Whether the lock's recorded process still runs. Another host's lock cannot be checked
    from here, so it counts as live; on this host the pid must be alive and, where the start
    time is known, be the same process (not a later one given the same pid)."""
    if owner.get("host", socket.gethostname()) != socket.gethostname():
        return True
    if not _alive(owner["pid"]):
        return False
    started = owner.get("started")
    return started is None or _start_time(owner["pid"]) in (None, started)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


@contextmanager
def stop_on_signals():
    """SIGTERM (a scheduler, `kill`, a container stop) raises KeyboardInterrupt as SIGINT
    does, so that both unwind through the run's `with` blocks (the lock is released) and the
    caller can name the last good checkpoint. Only in the main thread (signals' rule)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:               # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def last_good_checkpoint(folder):
    """Which checkpoint of a run holds good weights, for messages: its log says its epoch
    (log and checkpoint are written together from one history)."""
    folder = Path(folder)
    try:
        epochs = len(read_log(folder))
    except (OSError, ValueError):
        epochs = 0
    if epochs and (folder / "ckpt.pt").is_file():
        return f"{folder / 'ckpt.pt'} (after epoch {epochs})"
    return "none yet"


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
