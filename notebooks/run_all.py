"""Re-execute the tutorial notebooks in full mode and write them back with their outputs.

    python notebooks/run_all.py             # all of them, in order: 01 02 03 04 05
    python notebooks/run_all.py 02 05       # some of them, by number or file name
    OMP_NUM_THREADS=1 python notebooks/run_all.py   # on a CPU shared with other jobs

The notebooks are committed with the outputs of a full run, so that a reader sees the plots
on GitHub; tests/test_notebooks.py checks that the stored outputs hold no error and come
from a full run (the setup cell's first line: "full run (MDN_SMOKE=0) on DATE: MACHINE").
Each notebook runs in a fresh kernel started in notebooks/, as Jupyter starts it, with
MDN_SMOKE=0 whatever the environment says, top to bottom. A notebook is written back only
when every cell ran; a failing one keeps its file, its error is printed, and the script
goes on with the next and exits with status 1. Order matters once: notebook 05 uses
notebook 04's trained network (runs/nb04/pose_m3) when it is there. Notebooks 03 and 04
train two networks each (the longest part: RESULTS.md records how long); a second run
reuses the finished runs in runs/nb03 and runs/nb04 (lab.train_run).

Size: the outputs are mostly figures, and every full re-run adds them to git's history
again, so keep the five small: the default figure dpi, no figures in loops, JPEG where a
figure shows images (03, 04 and 05 set InlineBackend.figure_formats = ["jpeg"]: their image
grids were several MB each as PNG). The script prints each file's size, about 1 MB each.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
WARN_MB = 5.0  # a notebook above this gets a warning: the repository should stay small


def pick(names):
    """The notebooks named by number ("03") or file name, in the given order; all when none."""
    if not names:
        return NOTEBOOKS
    chosen = []
    for name in names:
        hits = [p for p in NOTEBOOKS if p.name == name or p.name == Path(name).name or p.name.startswith(f"{name}_")]
        if len(hits) != 1:
            raise SystemExit(f"{name!r} names {len(hits)} notebooks; choose among {[p.name for p in NOTEBOOKS]}")
        chosen.append(hits[0])
    return chosen


def run_notebook(path, timeout):
    """Execute path in full mode with the kernel in its folder and write it back with its
    outputs. Raises CellExecutionError (the file untouched) when a cell fails."""
    os.environ["MDN_SMOKE"] = "0"  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    # record_timing=False: no per-cell timestamps in the metadata, so a re-run's diff shows outputs only
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    nbformat.write(nb, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", help="numbers or file names (default: all, in order)")
    p.add_argument("--timeout", type=float, default=3 * 3600,
                   help="seconds one cell may run before the notebook counts as failed (default 3 hours: "
                        "the training cells of 03 and 04 take about 10 minutes each on 2 CPU cores)")
    args = p.parse_args(argv)
    failed = []
    for path in pick(args.notebooks):
        print(f"{path.name}: running in full mode ...", flush=True)
        start = time.perf_counter()
        try:
            run_notebook(path, args.timeout)
        except CellExecutionError as err:
            failed.append(path.name)
            print(f"{path.name}: FAILED after {time.perf_counter() - start:.0f} s, file left as it was:\n{err}",
                  flush=True)
            continue
        mb = path.stat().st_size / 1e6
        print(f"{path.name}: {time.perf_counter() - start:.0f} s, written with outputs, {mb:.2f} MB"
              + (f"  (warning: over {WARN_MB:g} MB)" if mb > WARN_MB else ""), flush=True)
    if failed:
        print(f"failed: {' '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
