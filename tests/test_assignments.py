"""The assignment tooling: the student copy blanks every solution and leaks none, the grader
scores the reference 100 and a blank copy 0, and each typical mistake costs its own function
only (tests/test_assignments_attacks.py: what a student's code can try in its child).

Instructor-only: the student copy leaves these files and course/ out (they need the reference).
"""
import ast
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import json

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course import assignments as asg
from course import grader, sandbox

FAST = grader.Limits(cpu_seconds=20, memory_mb=4096, wall_seconds=120)
SANDBOX = pytest.mark.skipif(sandbox.isolation() != sandbox.BWRAP,
                             reason="bubblewrap is not installed or does not work here (.ci/run installs it)")


def rows(grades):
    return {a.name: got for a, _, _, got in grades.rows}


def full():
    return {a.name: a.points for a in asg.ASSIGNMENTS}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One student copy for the whole file; tests copy it before changing it."""
    student = tmp_path_factory.mktemp("built") / "student"
    return student, asg.build(student)


@pytest.fixture
def student(built, tmp_path):
    shutil.copytree(built[0], tmp_path / "student")
    return tmp_path / "student"


def reference_copy(folder):
    """The reference's top-level modules in a new folder (a perfect student)."""
    folder.mkdir()
    for module in asg.ROOT.glob("*.py"):
        shutil.copyfile(module, folder / module.name)
    return folder


def solution_lines(text):
    """The lines (20 characters or more, comments aside) inside the solution regions of text."""
    out, inside = set(), False
    for line in text.splitlines():
        s = line.strip().strip('",').replace("\\n", "").strip()
        if s.startswith(asg.BEGIN) or s.startswith(asg.END):
            inside = s.startswith(asg.BEGIN)
        elif inside and len(s) >= 20 and not s.startswith("#"):
            out.add(s.split("  #")[0].strip())
    return out


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


def test_student_copy_holds_no_solution(built):
    """No line of a graded module's solution region appears anywhere in the copy (calibration, tests and
    mutants call the graded functions or stay out), the grader and its tests stay out, and
    the copy's README is STUDENT_README.md."""
    student, blanked = built
    assert blanked["mdn_dense.py"] >= 4 and blanked["decode.py"] >= 4 and blanked["coco_data.py"] >= 2
    assert not (student / "course").exists() and not list((student / "tests").glob("test_assignments*"))
    readme = (student / "README.md").read_text()
    assert readme == (asg.HERE / asg.STUDENT_README).read_text() and "reference solution" not in readme
    # the graded modules' solutions (a notebook exercise's region is one API call its text names)
    secret = set().union(*(solution_lines((asg.ROOT / rel).read_text()) for rel in blanked if rel.endswith(".py")))
    assert len(secret) > 20 and "std = std * k.repeat_interleave(2)" in secret
    for path in student.rglob("*"):
        if path.is_file() and path.suffix in (".py", ".ipynb", ".md", ".txt"):
            text = path.read_text()
            leaked = [line for line in secret if line in text]
            assert not leaked, f"{path.relative_to(student)} holds solution lines: {leaked[:3]}"


def test_a_student_copy_cannot_serve_as_the_reference(built, monkeypatch):
    """The grader's answers come from the reference: in a copy without solutions it refuses."""
    monkeypatch.setattr(grader, "ROOT", built[0])
    with pytest.raises(SystemExit, match="no solution regions: this is a student copy"):
        grader.reference_module("mdn_dense")


def test_blank_copy_scores_0_and_the_reference_100_then_its_pytest_passes(built, student):
    grades = asg.grade(student, limits=FAST)
    report = asg.format_grades(grades)
    assert grades.total == 0 and all(p == 0 for p in rows(grades).values()), report
    # feedback per failing check: the function, the input in words, what came back
    assert "[mdn_nll] 6 pose instances (K = 4 joints, M = 3, float64)" in report
    assert "raised NotImplementedError: mdn_nll: your code here" in report
    assert f"isolation: {sandbox.DESCRIBE[grades.isolation]}" in report
    for rel in built[1]:  # the student writes every function: the reference's, here
        shutil.copy2(asg.ROOT / rel, student / rel)
    grades = asg.grade(student, limits=FAST)
    assert grades.total == 100 and not grades.failures, asg.format_grades(grades)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           "tests/test_mdn_dense.py", "tests/test_decode.py", "tests/test_calibration.py",
                           "tests/test_coco_data.py", "tests/test_readme.py", "-k", "not real_coco"],
                          cwd=student, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


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


# ----------------------------------------------------------------------------- points where the mistake is
def sub(pattern, repl):
    def plant(region):
        new, n = re.subn(pattern, repl, region)
        assert n == 1, f"{pattern!r} matches {n} times in the solution region"
        return new
    return plant


def after(name, line):
    """Insert line (the planted mistake) after the statement that assigns name."""
    def plant(region):
        tree = ast.parse("if True:\n" + region)
        hits = [s for s in ast.walk(tree) if isinstance(s, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in s.targets)]
        assert len(hits) == 1, f"{name} is assigned {len(hits)} times in the solution region"
        lines = region.splitlines(keepends=True)
        end, first = hits[0].end_lineno - 1, lines[hits[0].lineno - 2]
        return "".join(lines[:end] + [first[:len(first) - len(first.lstrip())] + line + "\n"] + lines[end:])
    return plant


def before_all(line):
    def plant(region):
        indent = region[:len(region) - len(region.lstrip())].split("\n")[-1]
        return indent + line + "\n" + region
    return plant


# (row that must lose its points, the function whose region is changed, the mistake, how to plant it),
# each a transformation of the reference's region, so no solution line is written here
MUTANTS = [
    ("sigma_activation", "sigma_activation", "exp instead of ELU + 1", sub(r"F\.elu\((\w+)\)", r"(torch.exp(\1) - 1.0)")),
    ("sigma_activation", "sigma_activation", "softplus instead of ELU + 1",
     sub(r"F\.elu\((\w+)\)", r"(F.softplus(\1) - 1.0)")),
    ("sigma_activation", "sigma_activation", "no floor", sub(r"\s*\+\s*floor\b", "")),
    ("sigma_activation", "sigma_activation", "no clamp", sub(r"\.clamp_min\([^)]*\)", "")),
    ("mdn_nll", "mdn_nll", "no mask", before_all("mask = None")),
    ("mdn_nll", "per_dim_std", "no keypoint scale", before_all("kpt_scale = None")),
    ("mdn_nll", "mdn_nll", "c counts masked dims",
     after("log_phi", "log_phi = log_phi - 0.5 * (D - mask.sum(1))[:, None] * math.log(2 * math.pi)")),
    ("mdn_nll", "mdn_nll", "mean instead of log-sum-exp", sub(r"torch\.logsumexp\(", "torch.mean(")),
    ("mdn_nll", "mdn_nll", "no -sum log k_j", after("z", "std = _expand_axes(sigma, D)")),
]


def plant(text, func, transform):
    """Apply transform to func's solution region (the text between its markers)."""
    start = text.index("\n", text.index(asg.BEGIN, text.index(f"def {func}("))) + 1
    end = text.rindex("\n", 0, text.index(asg.END, start)) + 1
    new = text[:start] + transform(text[start:end]) + text[end:]
    assert new != text
    compile(new, "mutant", "exec")
    return new


def test_each_typical_mistake_costs_its_own_function_only(tmp_path):
    source = (asg.ROOT / "mdn_dense.py").read_text()
    folders = []
    for i, (_, func, _, transform) in enumerate(MUTANTS):
        folder = reference_copy(tmp_path / f"mutant{i}")
        (folder / "mdn_dense.py").write_text(plant(source, func, transform))
        folders.append(folder)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda f: asg.grade(f, limits=FAST), folders))
    points = full()
    for (row, _, mistake, _), g in zip(MUTANTS, results):  # the table that -s shows
        print(f"{row:<17} {mistake:<28} lost {points[row] - rows(g)[row]}/{points[row]}, "
              f"the others {sum(points.values()) - points[row] - (g.total - rows(g)[row])}")
    for (row, _, mistake, _), grades in zip(MUTANTS, results):
        report = asg.format_grades(grades)
        assert rows(grades)[row] == 0, f"{mistake}: {row} keeps its points\n" + report
        assert {n: p for n, p in rows(grades).items() if n != row} == {n: p for n, p in points.items() if n != row}, (
            f"{mistake} in {row} costs another function points\n" + report)
        assert {name for name, _, _ in grades.failures} == {row}, report
    # the feedback says where: the function, the input in words, expected vs got
    report = asg.format_grades(results[3])
    assert "[sigma_activation] floor = 0, x = [-10000.0, -1000.0, -200.0, -20.0]: the clamp at 1e-4" in report, report
    assert "expected every entry >= 0.0001" in report, report


def test_links_to_the_reference_are_refused(tmp_path):
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
