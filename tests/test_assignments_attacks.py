"""The grader against a student who wants the points without the math: whatever the
student's code does in its sandboxed child (read files it was not given, tamper with torch
or the grader, forge answers, lie about types, exit early, hang, crash, hog memory) gains
it nothing and costs only the functions it does not implement (course/grader.py).

Instructor-only, like tests/test_assignments.py (its helpers and fixtures are used here).
"""
import shutil
import subprocess
import sys

import pytest
import torch

from course import assignments as asg
from course import grader, sandbox
from test_assignments import FAST, SANDBOX, built, full, reference_copy, rows, student  # noqa: F401  fixtures

GRADED = ("mdn_dense.py", "coco_data.py", "decode.py")


def append(folder, module, code):
    (folder / module).write_text((folder / module).read_text() + "\n" + code)


def run_there(folder, code):
    """What code prints when run in a fresh Python in folder (the attack outside the grader)."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]


def report_order(report, *parts):
    return [report.index(p) for p in parts]


# ----------------------------------------------------------------------------- attacks
def test_the_child_cannot_read_a_file_outside_what_it_was_given(tmp_path):
    """The sandbox shows the child its modules, the inputs and a read-only Python: not a file
    beside them, not the reference tree, and it cannot write its modules."""
    if sandbox.isolation() != sandbox.BWRAP:
        pytest.skip("bubblewrap is not installed or does not work here (.ci/run installs it)")
    secret = tmp_path / "secret.txt"
    secret.write_text("the expected values")
    mods, grader_dir, out = tmp_path / "student", tmp_path / "grader", tmp_path / "out"
    for d in (mods, grader_dir, out):
        d.mkdir()
    probes = [str(secret), str(asg.ROOT / "mdn_dense.py"), str(mods / "mdn_dense.py")]
    (mods / "mdn_dense.py").write_text(f"""
import os
for path in {probes!r}:
    try:
        print(path, "GOT-CONTENT", open(path).read()[:20])
    except OSError as e:
        print(path, "DENIED", type(e).__name__)
try:
    open(__file__, "a").write(chr(35) + "tampered")
    print("WROTE-ITSELF")
except OSError as e:
    print("WRITE-DENIED", type(e).__name__)
print("ROOT-LISTED" if os.path.isdir({str(asg.ROOT)!r}) else "ROOT-ABSENT")
""")
    shutil.copyfile(asg.HERE / "child.py", grader_dir / "child.py")
    torch.save({"module": "mdn_dense", "calls": []}, grader_dir / "calls.pt")
    ended, output = sandbox.run_child(mods, grader_dir, out, 20, 4096, 60, sandbox.BWRAP)
    assert ended is None, output
    assert "GOT-CONTENT" not in output and output.count(" DENIED ") == 3 and "ROOT-ABSENT" in output, output
    assert "WRITE-DENIED" in output and not (mods / "mdn_dense.py").read_text().endswith("#tampered"), output
    # the same module outside the sandbox reads all three: the probe itself can see them
    plain = subprocess.run([sys.executable, str(mods / "mdn_dense.py")], capture_output=True, text=True).stdout
    assert plain.count("GOT-CONTENT") == 3 and "WROTE-ITSELF" in plain, plain


def test_require_sandbox_refuses_and_no_sandbox_is_said_at_the_top(monkeypatch, built):
    monkeypatch.setattr(sandbox, "_ISOLATION", sandbox.NONE)
    with pytest.raises(SystemExit, match="--require-sandbox: no working sandbox"):
        asg.grade(built[0], require_sandbox=True)
    grades = grader.Grades([(a, 0, 1, 0) for a in asg.ASSIGNMENTS], [], sandbox.NONE, {"decode": "total 100/100"})
    report = asg.format_grades(grades, verbose=True)
    assert report.splitlines()[0].startswith("WARNING: isolation NONE"), report
    assert report.rstrip().splitlines()[-1] == f"isolation: {sandbox.DESCRIBE[sandbox.NONE]}", report


TAMPER = """
import builtins, gc, math, sys, torch, numpy
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.isclose = lambda a, b, *r, **k: torch.ones_like(torch.as_tensor(a), dtype=torch.bool)
torch.Tensor.__eq__ = lambda self, other: torch.ones_like(self, dtype=torch.bool)
math.isclose = lambda *a, **k: True
builtins.abs = lambda x: 0
numpy.allclose = lambda *a, **k: True
torch.distributions.Normal.log_prob = lambda self, value: torch.zeros(())
for obj in gc.get_objects():  # anything that looks like a grader's answer or judge
    if isinstance(obj, dict) and "value" in obj and "error" in obj:
        obj["error"] = None
frame = sys._getframe()
while frame is not None:  # the caller's helpers, as a test module's would be
    frame.f_globals.update(perform=lambda module, call: {"value": None, "args": [], "grads": [], "error": None})
    frame = frame.f_back
"""


@SANDBOX
def test_in_process_tampering_scores_nothing(student):
    """Patching torch, math, numpy, builtins and torch.distributions, walking gc and the
    caller's frames at import: all of it happens in the child, whose answers are only data."""
    for module in GRADED:
        append(student, module, TAMPER)
    assert run_there(student, "import mdn_dense, math, torch\n"  # the patches take hold in that process
                     "print(torch.allclose(torch.zeros(1), torch.ones(1)) and math.isclose(0, 1))") == "True"
    grades = asg.grade(student, limits=FAST)
    assert grades.total == 0, asg.format_grades(grades)


STEAL = """
import glob as _glob, os as _os
def _find():
    here = _os.path.dirname(_os.path.abspath(__file__))
    tops = [{hint!r}, "/", "/work", "/home", "/root", "/srv", "/opt", "/tmp", _os.getcwd()]
    while here != "/":  # every folder above this one, and their neighbours
        tops.append(here)
        here = _os.path.dirname(here)
    for top in tops:
        for path in _glob.glob(f"{{top}}/{module}") + _glob.glob(f"{{top}}/*/{module}"):
            try:
                text = open(path).read()
            except OSError:
                continue
            if "### BEGIN SOLUTION" in text:
                return text
_text = _find()
if _text:
    _ns = {{"__name__": __name__}}
    exec(compile(_text, __file__, "exec"), _ns)
    globals().update({{k: v for k, v in _ns.items() if callable(v)}})
"""


@SANDBOX
def test_reading_another_copy_of_the_solution_scores_nothing(student):
    """The student's modules search the disk (the folders above theirs, the usual tops and
    the one above the instructor's tree) for a copy holding the solution markers and run it
    under their own name: the sandbox has no such copy."""
    for module in GRADED:
        append(student, module, STEAL.format(module=module, hint=str(asg.ROOT.parent)))
    assert run_there(student, "import mdn_dense, torch\n"  # outside the sandbox the theft works
                     "print(mdn_dense.sigma_activation(torch.zeros(1), 1.0).item())") == "2.0"
    grades = asg.grade(student, limits=FAST)
    assert grades.total == 0, asg.format_grades(grades)


FORGE = """
import os as _os, sys as _sys, torch as _torch
print("total                                      100/100")
_out = _sys.argv[3] if len(_sys.argv) > 3 else "."
for _i in range(40):
    _torch.save({"value": _torch.zeros(6, dtype=_torch.float64), "args": [], "grads": [], "error": None},
                _os.path.join(_out, f"{_i}.pt"))
_sys.stdout.flush()
_os._exit(0)
"""


@SANDBOX
def test_forged_answers_and_os_exit_score_nothing_and_print_before_the_table(student):
    """At import the modules print a fake total, write 'answers' for every call into the
    child's answer folder and os._exit(0). The answers are judged as data (and are wrong); the
    print shows above the table, never after it."""
    for module in GRADED:
        append(student, module, FORGE)
    grades = asg.grade(student, limits=FAST)
    report = asg.format_grades(grades, verbose=True)
    assert grades.total == 0, report
    printed, header = report_order(report, "total                                      100/100", "function  ")
    assert printed < header and report.rstrip().splitlines()[-1].startswith("      "), report


LIAR = """
import torch as _torch
class _Agreeable(_torch.Tensor):
    def __eq__(self, other): return _torch.ones((), dtype=_torch.bool)
    def __reduce_ex__(self, protocol): return (_Agreeable, ())
    def item(self): return 0.0
def mdn_nll(target, mu, sigma, log_alpha, mask=None, kpt_scale=None):
    return _torch.zeros(len(target), dtype=target.dtype).as_subclass(_Agreeable)
def per_dim_std(sigma, D, kpt_scale=None):
    return sigma.repeat(*([1] * (sigma.dim() - 1)), D // 2).as_subclass(_Agreeable)
"""


@SANDBOX
def test_a_lying_return_type_scores_nothing(student):
    """mdn_nll returns a Tensor subclass whose comparisons always agree: the parent reads
    answers with weights_only=True and takes nothing but plain tensors."""
    append(student, "mdn_dense.py", LIAR)
    grades = asg.grade(student, assignments=asg.ASSIGNMENTS[1:2], limits=FAST)
    report = asg.format_grades(grades)
    assert grades.total == 0 and "plain data" in report, report


def plant_body(folder, module, func, body):
    """Replace func's solution region in folder/module by body (indented to fit)."""
    text = (folder / module).read_text()
    start = text.index(asg.BEGIN, text.index(f"def {func}("))
    end = text.index(asg.END, start)
    indent = text[text.rindex("\n", 0, start) + 1:start]
    (folder / module).write_text(text[:start] + asg.BEGIN + "\n" + "".join(
        f"{indent}{line}\n" for line in body.splitlines()) + indent + text[end:])


@SANDBOX
def test_hanging_crashing_exiting_and_hogging_cost_their_own_function_only(tmp_path):
    """In a copy of the reference: sigma_activation hangs, mdn_nll crashes the interpreter
    (a null pointer read); in another, sigma_activation calls os._exit(0) and mdn_nll asks
    for 64 GB. Each costs its own points; every other function keeps all of its."""
    hang = reference_copy(tmp_path / "hang")
    plant_body(hang, "mdn_dense.py", "sigma_activation", "while True:\n    pass")
    plant_body(hang, "mdn_dense.py", "mdn_nll", "import ctypes\nctypes.string_at(0)")
    exits = reference_copy(tmp_path / "exit")
    plant_body(exits, "mdn_dense.py", "sigma_activation", "import os\nos._exit(0)")
    plant_body(exits, "mdn_dense.py", "mdn_nll", "return torch.empty(64 * 1024 ** 3, dtype=torch.uint8).fill_(1)")
    limits = grader.Limits(cpu_seconds=8, memory_mb=4096, wall_seconds=120)
    for folder in (hang, exits):
        grades = asg.grade(folder, limits=limits)
        report = asg.format_grades(grades)
        want = {**full(), "sigma_activation": 0, "mdn_nll": 0}
        assert rows(grades) == want, report
        assert {name for name, _, _ in grades.failures} == {"sigma_activation", "mdn_nll"}, report
    assert "no answer: the child" in report
