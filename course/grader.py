"""The grader: a trusted parent that never imports the student's modules, and one sandboxed
child per assignment that runs them (paper functions of §3.1-3.3, §4.2; course/checks.py).

For each assignment the parent builds the inputs (course/checks.py), computes the
reference's answers in its own memory from this repository's modules, writes only the
inputs to the child's folder, and runs course/child.py on a copy of the student's project
modules in the sandbox (course/sandbox.py). The child hands back plain data, one file per
call; the parent reads each with torch.load(weights_only=True), refuses anything that is
not plain data, and judges it (course/judge.py). Whatever the student's code does inside
its child (patching torch, forging answer files, exiting early, hanging, crashing) stays in
that child and can cost only that assignment's points.
"""
import importlib
import io
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from course import checks, sandbox
from course.child import encode_value, perform
from course.judge import NotPlain, plain

ROOT = Path(__file__).resolve().parents[1]   # the repository: the reference solution
HERE = Path(__file__).resolve().parent
BEGIN = "### BEGIN SOLUTION"
ANSWER_BYTES = 64 * 1024 * 1024  # an answer file larger than this is refused unread


@dataclass
class Limits:
    cpu_seconds: int = 60    # CPU time of one assignment's child
    memory_mb: int = 4096    # its address space
    wall_seconds: float = 180  # its wall-clock time (sleeping or blocked children)


@dataclass
class Grades:
    rows: list        # [(Assignment, cases passed, cases, points)]
    failures: list    # [(assignment name, the input in words, what was expected and what came back)]
    isolation: str    # sandbox.BWRAP or sandbox.NONE
    output: dict = field(default_factory=dict)  # assignment name -> the child's stdout + stderr

    @property
    def total(self):
        return sum(got for *_, got in self.rows)


def reference_module(name):
    """This repository's module (the reference), never one from elsewhere on sys.path."""
    path = ROOT / f"{name}.py"
    if not path.is_file() or BEGIN not in path.read_text():
        raise SystemExit(f"{path} holds no solution regions: this is a student copy, and the grader needs "
                         "the reference; grade from the instructor's tree")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(name)
    if Path(module.__file__).resolve() != path.resolve():
        raise SystemExit(f"the reference module {name} was imported from {module.__file__}, not {path}: "
                         f"run the grader from {ROOT}")
    return module


def copy_student_modules(student, dest):
    """The student's version of every top-level module of this repository (plain files only);
    nothing else from the student's folder reaches the child."""
    dest.mkdir()
    for name in sorted(p.name for p in ROOT.glob("*.py")):
        src = student / name
        if not src.exists() and not src.is_symlink():
            continue
        if src.is_symlink() or not src.is_file():
            raise SystemExit(f"{src} is not a plain file: hand in the module itself")
        if student != ROOT and os.path.samefile(src, ROOT / name):
            raise SystemExit(f"{src} is the reference's own file (a hard link): hand in your copy")
        shutil.copyfile(src, dest / name)


def through_transport(answer):
    """The reference's answer in the very form the student's takes: saved, loaded with
    weights_only=True, made plain."""
    buffer = io.BytesIO()
    torch.save({k: encode_value(v) for k, v in answer.items()}, buffer)
    buffer.seek(0)
    return plain(torch.load(buffer, weights_only=True))


def read_answer(path):
    """The child's answer to one call, or a string saying why there is none."""
    if path.is_symlink():
        return "the answer is a link, not a file the child wrote"
    if not path.is_file():
        return None
    if path.stat().st_size > ANSWER_BYTES:
        return f"the answer file is over {ANSWER_BYTES >> 20} MB"
    try:
        answer = plain(torch.load(path, map_location="cpu", weights_only=True))
    except NotPlain as e:
        return f"the answer is not plain data: {e}"
    except Exception as e:  # anything torch.load refuses: a pickled object, a Tensor subclass, junk
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = f"it holds a {found.group(1)}" if found else f"{type(e).__name__}: {str(e).strip()[:120]}"
        return f"the answer is not plain data: torch.load(weights_only=True) refused it ({why})"
    error = answer.get("error") if type(answer) is dict else None
    if (type(answer) is not dict or set(answer) != {"value", "args", "grads", "error"}
            or type(answer["args"]) is not list or type(answer["grads"]) is not list
            or not (error is None or (type(error) is dict and type(error.get("types")) is list
                                      and all(type(t) is str for t in error["types"])
                                      and type(error.get("message")) is str))):
        return "the answer is not in the grader's format"
    return answer


def _prepare(a):
    """One assignment's cases and the reference's answers to them, computed here."""
    module = reference_module(a.module)
    cases = a.cases()
    wants = [through_transport(perform(module, c.call)) for c in cases]
    for case, want in zip(cases, wants):
        if (why := case.judge(want, want)) is not None:  # the checks' own sanity: the reference passes
            raise RuntimeError(f"the reference fails its own check [{a.name}] {case.words}: {why}")
    return cases, wants


def _run_assignment(a, cases, wants, folder, student_dir, limits, mode):
    """The student's answers from a child, judged. Returns (passed cases, cases, failures,
    the child's output)."""
    grader, out = folder / "grader", folder / "out"
    grader.mkdir(parents=True)
    out.mkdir()
    shutil.copyfile(HERE / "child.py", grader / "child.py")
    torch.save({"module": a.module, "calls": [c.call for c in cases]}, grader / "calls.pt")
    ended, output = sandbox.run_child(student_dir, grader, out, limits.cpu_seconds, limits.memory_mb,
                                      limits.wall_seconds, mode)
    passed, failures = 0, []
    for i, (case, want) in enumerate(zip(cases, wants)):
        got = read_answer(out / f"{i}.pt")
        if got is None:
            why = f"no answer: the child {ended or 'ended'} before this call"
        elif isinstance(got, str):
            why = got
        else:
            why = case.judge(got, want)
        if why is None:
            passed += 1
        else:
            failures.append((a.name, case.words, why))
    return passed, len(cases), failures, output


def grade(student=ROOT, assignments=None, limits=None, require_sandbox=False, workers=2):
    """Grade the student's copy at `student` against this repository's reference."""
    assignments = checks.ASSIGNMENTS if assignments is None else assignments
    limits = limits or Limits()
    student = Path(student).resolve()
    if not student.is_dir():
        raise SystemExit(f"{student} is not a folder: give the student's copy")
    mode = sandbox.isolation()
    if mode == sandbox.NONE and require_sandbox:
        raise SystemExit("--require-sandbox: no working sandbox here (install bubblewrap: apt-get install "
                         "bubblewrap); nothing was graded")
    if mode == sandbox.BWRAP:
        sandbox.check_roots(ROOT, student)
    prepared = [_prepare(a) for a in assignments]  # the reference's answers, before any student code runs
    run = Path(tempfile.mkdtemp(prefix="mdn-grade-")).resolve()
    try:
        if any(run == t or t in run.parents for t in (ROOT, student)):
            raise SystemExit(f"the grading folder {run} lies inside {ROOT} or {student}: set TMPDIR elsewhere")
        copy_student_modules(student, run / "student")
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = list(pool.map(lambda i: _run_assignment(
                assignments[i], *prepared[i], run / f"a{i}", run / "student", limits, mode), range(len(assignments))))
    finally:
        shutil.rmtree(run, ignore_errors=True)
    rows, failures, output = [], [], {}
    for a, (passed, n, fails, text) in zip(assignments, results):
        rows.append((a, passed, n, a.points if passed == n else 0))
        failures += fails
        if text.strip():
            output[a.name] = text
    return Grades(rows, failures, mode, output)


def format_grades(grades, verbose=False):
    """The report. Top to bottom: a warning when no sandbox was in force; with verbose, what
    the student's code printed (never after the verdict); the table with the isolation line;
    each failing case with its function, its input in words, and expected vs got."""
    lines = []
    if grades.isolation == sandbox.NONE:
        lines += [f"WARNING: isolation {sandbox.DESCRIBE[sandbox.NONE]}.", ""]
    if grades.output:
        if verbose:
            lines.append("What your code printed (shown before the grade; it is not part of it):")
            for name, text in grades.output.items():
                lines += [f"--- {name}", text.rstrip()]
            lines.append("--- end of your code's output")
        else:
            lines.append(f"Your code printed output while graded ({', '.join(grades.output)}): --verbose shows it.")
        lines.append("")
    lines.append(f"{'function':<32}{'checks':>8}{'points':>10}")
    for a, passed, n, got in grades.rows:
        lines.append(f"{a.name:<32}{f'{passed}/{n}':>8}{f'{got}/{a.points}':>10}  {'PASS' if got == a.points else 'FAIL'}")
    lines.append(f"{'total':<32}{'':>8}{f'{grades.total}/{sum(a.points for a, *_ in grades.rows)}':>10}")
    lines.append(f"isolation: {sandbox.DESCRIBE[grades.isolation]}")
    if grades.failures:
        lines += ["", "Failing checks (a function scores its points when all of its checks pass):"]
        for name, words, why in grades.failures:
            lines += [f"  [{name}] {words}", f"      {why}"]
    return "\n".join(lines)
