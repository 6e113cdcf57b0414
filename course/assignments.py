"""Course assignments: a student copy of the project, and a grader that runs the student's
functions in a sandbox and judges them against this reference (paper §3.1-3.3, §4.2).

    python -m course.assignments build student/        # the project with every solution blanked
    python -m course.assignments grade student/        # per-function points, and why each check failed
    python -m course.assignments grade student/ --verbose   # ... and, before the table, what the code printed
    python -m course.assignments grade                 # the reference solution (this tree): 100/100

Solution regions are marked with nbgrader's comments, `### BEGIN SOLUTION` and
`### END SOLUTION`, in the modules (and in notebook code cells). The markers are plain
comments: the project runs unchanged. `build` copies every file git tracks except the
grader (course/) and its tests (data, runs and checkpoints stay behind), replaces each
region by `raise NotImplementedError(...)` keeping the region's `# HINT:` comment lines (a
notebook cell it blanks also loses its stored outputs; the notebooks' setup cell turns that
error into one line naming the function, see lab.explain_todos), and writes
STUDENT_README.md as the copy's README.md (the instructor's README describes the reference).

`grade` (course/grader.py) never imports the student's modules: each assignment's
functions run in a sandboxed child process on inputs the grader builds (course/checks.py),
and this process compares their answers with the reference's. Points go to a function only
when all of its checks pass.
"""
import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

from course import grader
from course.checks import ASSIGNMENTS  # noqa: F401  the table the grader fills, by row

ROOT = Path(__file__).resolve().parents[1]   # the repository
HERE = Path(__file__).resolve().parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUDENT_README = "STUDENT_README.md"
# The grader and its tests: they need the reference solution, so the student copy leaves them out.
INSTRUCTOR_ONLY = ("course/", "tests/test_assignments")  # test_assignments.py, test_assignments_attacks.py
grade, format_grades = grader.grade, grader.format_grades


# ----------------------------------------------------------------------------- blanking
def blank_source(text, where="source"):
    """Replace every solution region by a NotImplementedError naming its function.

    Returns (new text, number of regions). Raises ValueError on unbalanced markers.
    """
    out, inside, count, func = [], False, 0, "this function"
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        stripped = line.strip()
        m = re.match(r"\s*def (\w+)", line)
        if m and not inside:
            func = m.group(1)
        if stripped.startswith(BEGIN):
            if inside:
                raise ValueError(f"{where}:{n}: {BEGIN} inside another solution region")
            inside, count = True, count + 1
            indent = line[:len(line) - len(line.lstrip())]
            out.append(f"{indent}raise NotImplementedError(\"{func}: your code here "
                       f"(see its docstring and the paper equations it cites)\")\n")
        elif stripped.startswith(END):
            if not inside:
                raise ValueError(f"{where}:{n}: {END} without {BEGIN}")
            inside = False
        elif inside:
            if stripped.startswith("# HINT:"):
                out.insert(len(out) - 1, line)  # keep hints above the raise
        else:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} is never closed")
    return "".join(out), count


def blank_notebook(text, where):
    """blank_source on every code cell; a blanked cell also loses its stored outputs (the
    reference's answer) and execution count. Other cells keep theirs (the full run's plots)."""
    nb = json.loads(text)
    count = 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"])
            if BEGIN in src:
                new, n = blank_source(src, where)
                cell["source"] = new.splitlines(keepends=True)
                cell["outputs"], cell["execution_count"] = [], None
                count += n
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n", count


def tracked_files(root):
    out = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{root} is not a git checkout: the student copy is built from the files git tracks")
    return [p for p in out.stdout.splitlines() if (root / p).is_file()]


def build(dest, root=ROOT):
    """Write the student copy to dest; returns {file: regions blanked}."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} exists and is not empty: choose a new folder")
    blanked = {}
    for rel in tracked_files(root):
        if rel == "README.md" or rel.startswith(INSTRUCTOR_ONLY):
            continue  # the student copy's README is STUDENT_README.md, written below
        src, dst = root / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not rel.endswith((".py", ".ipynb")):
            shutil.copy2(src, dst)
            continue
        text = src.read_text()
        new, n = (blank_notebook if rel.endswith(".ipynb") else blank_source)(text, rel)
        dst.write_text(new)
        if n:
            blanked[rel] = n
    shutil.copy2(HERE / STUDENT_README, dest / "README.md")
    return blanked


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the student copy (solutions blanked) to a new folder")
    b.add_argument("dest", help="the folder to create, e.g. student/")
    g = sub.add_parser("grade", help="print the per-function points and why each failing check failed")
    g.add_argument("root", nargs="?", default=str(ROOT), help="the copy to grade (default: this reference copy)")
    g.add_argument("--verbose", action="store_true",
                   help="also print what the student's code printed (before the table, never after it)")
    g.add_argument("--require-sandbox", action="store_true",
                   help="refuse to grade when no sandbox (bubblewrap) works here")
    g.add_argument("--cpu-seconds", type=int, default=grader.Limits.cpu_seconds,
                   help="CPU-time limit of one assignment's child process")
    g.add_argument("--memory-mb", type=int, default=grader.Limits.memory_mb,
                   help="address-space limit of one assignment's child process, in MB")
    g.add_argument("--wall-seconds", type=float, default=grader.Limits.wall_seconds,
                   help="wall-clock limit of one assignment's child process")
    args = p.parse_args(argv)
    if args.cmd == "build":
        blanked = build(args.dest)
        for rel, n in blanked.items():
            print(f"{rel}: {n} solution region(s) blanked")
        print(f"student copy written to {args.dest}; grade it with: python -m course.assignments grade {args.dest}")
        return None
    for flag in ("cpu_seconds", "memory_mb", "wall_seconds"):
        if getattr(args, flag) <= 0:
            raise SystemExit(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    grades = grade(Path(args.root), limits=grader.Limits(args.cpu_seconds, args.memory_mb, args.wall_seconds),
                   require_sandbox=args.require_sandbox)
    print(format_grades(grades, verbose=args.verbose))
    return grades


if __name__ == "__main__":
    main()
