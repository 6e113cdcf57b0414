"""The notebooks' helper: what notebooks 02-05 would otherwise each write again.

  train_run      train a run with train.main (what `python train.py ...` runs), or reuse a
                 finished one trained with the settings the command resolves to now;
                 a run trained with other settings is moved aside (never deleted), an
                 unfinished one resumed
  read_log       a run's log.jsonl, one dict per epoch (util.rundir.read_log)
  evaluate_run   a checkpoint on the validation split its run used: one COCOeval per
                 component rule (the "Comp." rows of Tables 1 and 3)
  run_dataset    a split of a run's data as evaluation reads it
  annotations    the annotations a CocoDataset renders for an image (pycocotools' public API)
  skeleton_lines COCO's skeleton edges of one person, for drawing
  run_record     the first line of every notebook's output: full or smoke run, date, machine
  todo_message   the one-line message for a function the student copy left blank
  explain_todos  make IPython show that message instead of a NotImplementedError traceback

Plain Python on the project's modules: no IPython import and no plotting here, so the
notebooks keep their display code and this file can be tested like any other.
"""
import dataclasses
import datetime
import os
import platform
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

import train
from coco_data import run_split
from inference import Inference, component_rules, evaluate_rows, network_forward, predict
from model import load_model, read_checkpoint
from annotations import COCO_PERSON_SKELETON, skeleton_pairs
from util.rundir import read_log, run_name, set_aside

SKELETON = skeleton_pairs(COCO_PERSON_SKELETON)
# Not settings of a run: train.py reads the model's classes and joints from the data, and
# the folder is wherever the run now lies.
NOT_SETTINGS = ("model.num_classes", "model.num_joints", "train.out")
# Marks a run that train_run(fresh=True) trained: a scratch run (the notebooks' smoke runs),
# the one kind the next fresh run replaces instead of moving it aside.
SCRATCH = ".scratch"


# ----------------------------------------------------------------------------- data
def annotations(ds, image_id):
    """The non-crowd annotations of ds's categories on image_id, in file order: the objects
    whose targets the dataset renders (target slot i is annotation i)."""
    return ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[image_id], catIds=ds.cat_ids, iscrowd=0))


def skeleton_lines(keypoints, skeleton=SKELETON):
    """[(xs, ys)] per skeleton edge whose two joints are annotated (v > 0): the segments to
    draw with ax.plot(xs, ys). keypoints: COCO's flat [x, y, v] * K or (K, 3)."""
    kps = np.asarray(keypoints, float).reshape(-1, 3)
    return [(kps[[a, b], 0], kps[[a, b], 1]) for a, b in skeleton if kps[a, 2] > 0 and kps[b, 2] > 0]


def train_config(state):
    """The TrainConfig stored in a checkpoint (fields added since at their defaults)."""
    known = {f.name for f in dataclasses.fields(train.TrainConfig)}
    return train.TrainConfig(**{k: v for k, v in state["train_config"].items() if k in known})


run_dataset = run_split   # coco_data.run_split: the notebooks' name for it


# ----------------------------------------------------------------------------- runs
def changed_settings(state, argv):
    """{"model.<field>" / "train.<field>": (stored, now)} for every setting in which the
    checkpoint state differs from what train.py would resolve argv to now."""
    model_cfg, cfg = train.config_from_args(train.parse_args(list(argv)))
    changed = {}
    for part, now, key in (("model", model_cfg, "model_config"), ("train", cfg, "train_config")):
        wanted = dataclasses.asdict(now)
        stored = {**dataclasses.asdict(type(now)()), **state.get(key, {})}  # fields added since: defaults
        for name in sorted(set(wanted) | set(stored)):
            if f"{part}.{name}" not in NOT_SETTINGS and stored.get(name) != wanted.get(name):
                changed[f"{part}.{name}"] = (stored.get(name), wanted.get(name))
    return changed


def train_run(runs, task, m, args=(), fresh=False):
    """Train runs/<task>_m<m> with train.main(["--task", task, "--m", m, "--out", ..., *args])
    unless a finished run with exactly these settings is there; returns its ckpt.pt.

    A checkpoint trained with other settings (or unreadable by this code) is moved to the
    first free <task>_m<m>_stale, _stale_2, ...; an unfinished one is continued with
    --resume. fresh=True (smoke runs) trains anew: a run already there is moved to
    <task>_m<m>_old (_old_2, ...), unless it is itself a scratch run of an earlier fresh
    call (marked SCRATCH), which is replaced. Nothing else is deleted."""
    out = Path(runs) / run_name(task, m)
    argv = ["--task", task, "--m", str(m), "--out", str(out), *map(str, args)]
    ckpt = out / "ckpt.pt"
    if fresh and (out / SCRATCH).exists():
        shutil.rmtree(out)
    elif fresh and out.exists():
        print(f"fresh run: moved {out} to {set_aside(out, 'old')}")
    if ckpt.exists():
        try:
            state = read_checkpoint(ckpt)
            why = changed_settings(state, argv)
            why = why and f"was trained with other settings (stored, now): {why}"
        except ValueError as e:
            state, why = None, f"cannot be continued ({e})"
        if why:
            print(f"{out} {why}; moved it to {set_aside(out, 'stale')}")
        elif state["epoch"] + 1 >= state["train_config"]["epochs"]:
            print(f"reusing the finished run {out} ({state['epoch'] + 1} epochs); delete it to train again")
            return ckpt
        else:
            argv.append("--resume")
    print("python train.py " + " ".join(argv))
    t0 = time.perf_counter()
    train.main(argv)
    if fresh and out.is_dir():
        (out / SCRATCH).touch()
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    return ckpt


def evaluate_run(ckpt, rows=None, extra_rules=(), flip=False, refine=False, batch_size=16):
    """A checkpoint on its run's validation split, on the CPU: one inference pass decodes
    every rule, then COCOeval per row. rows {name: rule} default to
    inference.component_rules(m) ("All" = max component, then each component forced);
    extra_rules add rows named by the rule (e.g. "mean").

    Returns dict(model (eval mode), cfg (its ModelConfig), train (TrainConfig), ds,
    results {rule: result dicts}, stats {row: COCOeval stats}, seconds)."""
    net, state = load_model(ckpt, torch.device("cpu"))
    cfg = train_config(state)
    ds = run_dataset(cfg, net.cfg.task, "val")
    rows = dict(rows or component_rules(net.cfg.m), **{str(r): r for r in extra_rules})
    inference = Inference(rules=tuple(dict.fromkeys(rows.values())), flip=flip, flip_idx=ds.flip_idx,
                          refine=refine)
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    results = predict(network_forward(net, torch.device("cpu"), inference), loader, ds.cat_ids, inference,
                      progress=False)
    stats = evaluate_rows(ds.coco, results, rows, net.cfg.task, ds.image_ids)
    return dict(model=net, cfg=net.cfg, train=cfg, ds=ds, results=results, stats=stats,
                seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- notebook sessions
def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_record(smoke):
    """One line naming the run: full or smoke, date, machine, versions. Every notebook's first
    cell prints it, so committed outputs say where and when they were computed (and
    tests/test_notebooks.py checks that they come from a full run)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"{'smoke' if smoke else 'full'} run (MDN_SMOKE={int(smoke)}) on "
            f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {platform.platform()}, {_cpu_name()}, "
            f"{os.cpu_count()} CPUs{f' (OMP_NUM_THREADS={threads})' if threads else ''}, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


TODO = re.compile(r"(\w+): your code here")  # what assignments.blank_source's raise says


def todo_message(error, tb=None):
    """For a NotImplementedError raised by a solution region that the student copy blanked
    (assignments.blank_source): one line naming the function to write and what to do next.
    None for any other error. tb: the traceback (default error.__traceback__)."""
    found = TODO.match(str(error)) if isinstance(error, NotImplementedError) else None
    tb = tb or error.__traceback__
    if found is None or tb is None:
        return None
    while tb.tb_next is not None:  # the innermost frame: the blanked function itself
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if code.co_name != found.group(1):
        return None
    module, name = tb.tb_frame.f_globals.get("__name__", ""), getattr(code, "co_qualname", code.co_name)
    if module == "__main__":  # an exercise defined in the notebook
        return f"Stopped: {name} is yours to write. Implement {name} in the cell above (the exercise), then run it again."
    return (f"Stopped: {module}.{name} is yours to write. Implement {module}.{name} ({module}.py; its docstring "
            f"gives the shapes and the paper's equations), then restart the kernel and run the notebook again.")


def explain_todos(shell):
    """Make IPython (shell: get_ipython()) show todo_message as the whole error of a cell that
    reaches a blanked function, in place of the NotImplementedError traceback. The cell still
    fails, so "Run All" stops there; every other error keeps its usual traceback."""
    if shell is None:  # not under IPython
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        # IPython leaves the display to the handler; showtraceback draws an exception that
        # carries _render_traceback_ as the lines it returns
        message = todo_message(value, tb)
        if message is not None:
            value._render_traceback_ = lambda: [message]
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)

    shell.set_custom_exc((NotImplementedError,), handler)
