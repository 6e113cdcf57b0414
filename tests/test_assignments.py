"""The assignment tooling: the student copy blanks every solution and gets its own README,
the grader runs the instructor's tests against the student's modules (and is not fooled by
the shortcuts below), and each typical mistake costs the points of its own function only."""
import runpy
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import json

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course import assignments as asg

INDEPENDENT = ["tests/test_mdn_dense.py::test_focal_loss_matches_slow_loop",
               "tests/test_model.py::test_official_sigma_floor_per_backbone",
               "tests/test_coco_data.py::test_affine_round_trip_and_flip_twice",
               "tests/test_synthetic_coco.py", "tests/test_readme.py"]
STOLEN = ("sigma_activation", "mdn_nll", "select_component")  # the graded functions of mdn_dense.py


def rows(grades):
    return {a.name: got for a, _, got in grades.rows}


def pytest_in(folder, *args):
    """pytest run the naive way, inside a student's folder."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=folder, capture_output=True, text=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One student copy for the whole file; tests copy it before changing it."""
    student = tmp_path_factory.mktemp("built") / "student"
    return student, asg.build(student)


@pytest.fixture
def student(built, tmp_path):
    shutil.copytree(built[0], tmp_path / "student")
    return tmp_path / "student"


# ----------------------------------------------------------------------------- building
def test_blank_source_keeps_hints_and_names_the_function():
    src = ("def f(x):\n    \"\"\"doc\"\"\"\n    y = 1\n    ### BEGIN SOLUTION\n    # HINT: use x\n"
           "    return x + y\n    ### END SOLUTION\n\n\ndef g():\n    return 2\n")
    out, n = asg.blank_source(src)
    assert n == 1 and "return x + y" not in out and "# HINT: use x" in out
    assert 'raise NotImplementedError("f: your code here' in out and "def g():\n    return 2" in out
    namespace = {}
    exec(out, namespace)
    with pytest.raises(NotImplementedError, match="^f: "):
        namespace["f"](1)
    assert namespace["g"]() == 2


@pytest.mark.parametrize("bad", ["### BEGIN SOLUTION\nx\n", "### END SOLUTION\n",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n"])
def test_unbalanced_markers_are_errors(bad):
    with pytest.raises(ValueError, match="SOLUTION"):
        asg.blank_source(bad, "m.py")


def test_build_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        asg.build(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_student_copy_fails_blanked_tests_and_passes_after_restoring(built, student):
    blanked = built[1]
    assert blanked["mdn_dense.py"] >= 3 and blanked["decode.py"] >= 4 and blanked["coco_data.py"] >= 1
    assert "### BEGIN SOLUTION" not in (student / "mdn_dense.py").read_text()
    readme = (student / "README.md").read_text()
    assert readme == (asg.HERE / asg.STUDENT_README).read_text() and not (student / asg.STUDENT_README).exists()
    assert "for instructors" not in readme and "reference solution" not in readme
    assert len(readme.splitlines()) <= 50
    grades = asg.grade(student)
    assert grades.total == 0 and not grades.problems, asg.format_grades(grades)
    # the feedback names each failing test, the function it grades and the first line of why
    report = asg.format_grades(grades)
    assert "[mdn_nll] tests/test_mdn_dense.py::test_mdn_nll_gradcheck" in report
    assert "NotImplementedError: mdn_nll: your code here" in report
    assert len(grades.failures) == sum(len(a.tests) for a in asg.ASSIGNMENTS)
    proc = pytest_in(student, *INDEPENDENT)  # the rest of the suite still runs
    assert proc.returncode == 0, proc.stdout[-2000:]
    for rel in blanked:  # restore the reference solutions
        shutil.copy2(asg.ROOT / rel, student / rel)
    grades = asg.grade(student)
    assert grades.total == 100 and not grades.failures and not grades.problems, asg.format_grades(grades)


def test_blank_notebook_strips_the_outputs_of_blanked_cells_only():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(1)", execution_count=1, outputs=[nbformat.v4.new_output("stream", text="1\n")]),
        nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION\nprint(f())",
                                  execution_count=2, outputs=[nbformat.v4.new_output("stream", text="42\n")])])
    text, n = asg.blank_notebook(nbformat.writes(nb), "nb.ipynb")
    kept, blanked = json.loads(text)["cells"]
    assert n == 1 and "return 42" not in "".join(blanked["source"])
    assert blanked["outputs"] == [] and blanked["execution_count"] is None
    assert "".join(kept["outputs"][0]["text"]) == "1\n" and kept["execution_count"] == 1


def test_student_notebook_01_stops_at_its_first_function_to_write(built, monkeypatch):
    """The student copy's notebook 01 runs up to the first call of a blanked function (mdn_nll,
    in the cell that checks it against torch.distributions) and stops there with one line
    naming it, not a NotImplementedError traceback; nothing after that cell runs."""
    student = built[0]
    for key, value in (("MDN_SMOKE", "1"), ("MPLBACKEND", "Agg"), ("PYTHONDONTWRITEBYTECODE", "1")):
        monkeypatch.setenv(key, value)
    path = student / "notebooks" / "01_bimodal_toy.ipynb"
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:   # the reference's committed outputs: clear them to see what this run does
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with pytest.raises(CellExecutionError):
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    stop = next(i for i, c in enumerate(code) if "md.mdn_nll(" in c.source)
    errors = [(i, o) for i, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert [i for i, _ in errors] == [stop], f"errors in code cells {[i for i, _ in errors]}, expected only {stop}"
    shown = "\n".join(errors[0][1].traceback)  # what Jupyter displays for the error
    assert shown.startswith("Stopped: mdn_dense.mdn_nll is yours to write. Implement mdn_dense.mdn_nll"), shown
    assert "Traceback" not in shown and "NotImplementedError" not in shown and len(shown.splitlines()) == 1
    assert all(c.outputs for c in code[1:stop]) and not any(c.outputs for c in code[stop + 1:])


# ----------------------------------------------------------------------------- attacks
def test_a_conftest_in_the_students_tests_changes_nothing(student):
    """Attack 1: a conftest.py (and a pytest.ini) in the student's folder that makes every
    test a no-op. It fools pytest run there; the grader never reads the student's tests."""
    (student / "tests" / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.hookimpl(tryfirst=True)\ndef pytest_pyfunc_call(pyfuncitem):\n"
        "    return True  # 'ran it': no test body ever runs\n")
    (student / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    proc = pytest_in(student, asg.ASSIGNMENTS[1].tests[0])
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-1000:]  # the attack works there
    grades = asg.grade(student)
    assert grades.total == 0, asg.format_grades(grades)


def test_student_code_cannot_read_the_reference(student):
    """Attack 2: the student's mdn_dense.py takes the reference's functions from the
    instructor's checkout (by absolute path: the grader's copy is elsewhere), by import,
    by a subprocess or by os.open. The guard forbids all three and voids the run."""
    ref = str(asg.ROOT / "mdn_dense.py")
    (student / "mdn_dense.py").write_text((student / "mdn_dense.py").read_text() + f"""
import importlib.util as _u, os as _os, subprocess as _sp
def _import():
    spec = _u.spec_from_file_location("_instructor", {ref!r})
    module = _u.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)
def _run(source):
    namespace = {{"__name__": "_instructor"}}
    exec(compile(source, "_instructor", "exec"), namespace)
    return namespace
_ways = [_import, lambda: _run(_sp.run(["cat", {ref!r}], capture_output=True, text=True, check=True).stdout),
         lambda: _run(_os.read(_os.open({ref!r}, _os.O_RDONLY), 1 << 20).decode())]
for _way in _ways:
    try:
        _ref = _way()
        globals().update({{n: _ref[n] for n in {STOLEN!r}}})
        break
    except Exception:
        pass
""")
    stolen = runpy.run_path(str(student / "mdn_dense.py"))  # the attack works outside the grader
    assert stolen["sigma_activation"](torch.zeros(1), 1.0).item() == 2.0
    grades = asg.grade(student)
    assert grades.total == 0, asg.format_grades(grades)
    report = asg.format_grades(grades)
    for way in (f"opened {ref}", "subprocess.Popen"):
        assert way in report, report


def test_a_link_to_the_reference_is_refused(tmp_path):
    """Attack 2, by the file system: a student module that is a link to the reference's."""
    (tmp_path / "sym").mkdir()
    (tmp_path / "sym" / "mdn_dense.py").symlink_to(asg.ROOT / "mdn_dense.py")
    with pytest.raises(SystemExit, match="mdn_dense.py is not a plain file"):
        asg.grade(tmp_path / "sym")
    (tmp_path / "hard").mkdir()
    try:
        (tmp_path / "hard" / "mdn_dense.py").hardlink_to(asg.ROOT / "mdn_dense.py")
    except OSError:
        pytest.skip("no hard links across these folders")
    with pytest.raises(SystemExit, match="the reference's own file"):
        asg.grade(tmp_path / "hard")


def test_student_code_cannot_switch_off_the_tests(student):
    """Attack 3: the student's mdn_dense.py, imported by the tests, replaces pytest's
    Function.runtest so that no test body runs. The guard sees pytest's machinery change
    (and the canary test that must fail pass) and voids the run."""
    (student / "mdn_dense.py").write_text((student / "mdn_dense.py").read_text() + """
import sys as _sys
if "_pytest.python" in _sys.modules:
    _sys.modules["_pytest.python"].Function.runtest = lambda self: None
""")
    proc = pytest_in(student, *asg.ASSIGNMENTS[1].tests)
    assert proc.returncode == 0 and "12 passed" in proc.stdout, proc.stdout[-1000:]  # the attack works there
    grades = asg.grade(student)
    assert grades.total == 0, asg.format_grades(grades)
    report = asg.format_grades(grades)
    assert "Function.runtest was replaced" in report and "canary" in report, report


def test_a_forged_report_and_os_exit_score_nothing(student):
    """Attack 3, second form: write a report that says every test passed (pytest's JUnit
    file, or the guard's results file named in grader.json), then os._exit(0) so that
    pytest never writes the true one. The results file is out of the run's reach, and
    tests without a result count as failed."""
    (student / "mdn_dense.py").write_text((student / "mdn_dense.py").read_text() + """
import json as _json, os as _os, sys as _sys
if "pytest" in _sys.modules:
    try:
        _settings = _json.load(open(_os.path.join(_os.getcwd(), "grader.json")))
        with open(_settings["results"], "a") as _f:
            for _t in _settings["tests"]:
                _f.write(_json.dumps(dict(kind="test", nodeid=_t, when="call", outcome="passed")) + "\\n")
            _f.write(_json.dumps(dict(kind="finished", exitstatus=0)) + "\\n")
    except Exception:
        pass
    _os._exit(0)
""")
    proc = pytest_in(student, *asg.ASSIGNMENTS[1].tests)
    assert proc.returncode == 0, proc.stdout[-1000:]  # "exit status 0" would fool a naive grader
    grades = asg.grade(student)
    assert grades.total == 0, asg.format_grades(grades)
    report = asg.format_grades(grades)
    assert "opened" in report and "for writing" in report and "stopped before the end" in report, report


# ----------------------------------------------------------------------------- points where the mistake is
PHI = "- 0.5 * math.log(2 * math.pi))).sum(-1)"
MUTANTS = [  # (function, the mistake, text in its solution region, the wrong version)
    ("sigma_activation", "exp instead of ELU + 1", "F.elu(x) + 1.0 + floor", "torch.exp(x) + floor"),
    ("sigma_activation", "softplus instead of ELU + 1", "F.elu(x) + 1.0 + floor", "F.softplus(x) + floor"),
    ("sigma_activation", "no floor", "F.elu(x) + 1.0 + floor", "F.elu(x) + 1.0"),
    ("sigma_activation", "no clamp", "(F.elu(x) + 1.0 + floor).clamp_min(1e-4)", "F.elu(x) + 1.0 + floor"),
    ("mdn_nll", "no mask", "mask = torch.ones_like(t) if mask is None else mask.to(dtype)", "mask = torch.ones_like(t)"),
    ("mdn_nll", "no keypoint scale", "std = std * k.repeat_interleave(2)", "std = std"),
    ("mdn_nll", "c counts masked dims", PHI, "+ 0)).sum(-1) - 0.5 * D * math.log(2 * math.pi)"),
    ("mdn_nll", "mean instead of log-sum-exp", "-torch.logsumexp(log_alpha + log_phi, dim=1)",
     "-(log_alpha + log_phi).mean(dim=1)"),
    ("mdn_nll", "no -sum log k_j", "- torch.log(std)", "- torch.log(_expand_axes(sigma, D))"),
]


def plant(text, func, old, new):
    """Replace `old` by `new` inside func's solution region (exactly once)."""
    start = text.index(asg.BEGIN, text.index(f"def {func}("))
    end = text.index(asg.END, start)
    region = text[start:end]
    assert region.count(old) == 1, f"{func}'s solution region no longer contains {old!r} once"
    return text[:start] + region.replace(old, new) + text[end:]


def test_each_typical_mistake_costs_its_own_function_only(tmp_path):
    source = (asg.ROOT / "mdn_dense.py").read_text()
    folders = []
    for i, (func, _, old, new) in enumerate(MUTANTS):
        folder = tmp_path / f"mutant{i}"
        folder.mkdir()
        for module in asg.ROOT.glob("*.py"):
            shutil.copyfile(module, folder / module.name)
        (folder / "mdn_dense.py").write_text(plant(source, func, old, new))
        folders.append(folder)
    with ThreadPoolExecutor(2) as pool:  # each grade is a pytest process; two cores
        results = list(pool.map(asg.grade, folders))
    full = {a.name: a.points for a in asg.ASSIGNMENTS}
    for (func, mistake, _, _), g in zip(MUTANTS, results):  # the table that -s shows
        others = sum(full.values()) - full[func] - (g.total - rows(g)[func])
        print(f"{func:<17} {mistake:<28} lost {full[func] - rows(g)[func]}/{full[func]}, the others {others}")
    for (func, mistake, _, _), grades in zip(MUTANTS, results):
        got = rows(grades)
        assert got[func] == 0, f"{mistake}: {func} keeps its points\n" + asg.format_grades(grades)
        assert {n: p for n, p in got.items() if n != func} == {n: p for n, p in full.items() if n != func}, (
            f"{mistake} in {func} costs another function points\n" + asg.format_grades(grades))
        assert {name for name, _, _ in grades.failures} == {func} and not grades.problems, asg.format_grades(grades)
    # the feedback says where: the failing test, its function and the first line of its message
    report = asg.format_grades(results[3], verbose=True)
    assert "[sigma_activation] tests/test_mdn_dense.py::test_sigma_activation_clamps_at_1e_4_for_floor_zero" in report
    assert "clamp it from below at 1e-4" in report and "pytest output" in report
    assert [name for name, _, _ in results[3].failures] == ["sigma_activation"]  # only the clamp test fails
