"""Course assignments: a student copy of the project, and a grader that runs the
instructor's tests against the student's code.

    python assignments.py build student/        # the project with every solution blanked
    python assignments.py grade student/        # per-function points, and why each test failed
    python assignments.py grade student/ --verbose   # ... and pytest's full output
    python assignments.py grade                 # the reference solution (this folder): 100/100

Solution regions are marked with nbgrader's comments, `### BEGIN SOLUTION` and
`### END SOLUTION`, in the modules (and in notebook code cells). The markers are plain
comments: the project runs unchanged. `build` copies every file git tracks (data,
runs and checkpoints stay behind), replaces each region by `raise NotImplementedError(...)`
keeping the region's `# HINT:` comment lines (a notebook cell it blanks also loses its stored
outputs; the notebooks' setup cell turns that error into one line naming the function, see
lab.explain_todos), and writes STUDENT_README.md as the copy's README.md (the instructor's
README describes the reference solution).

`grade` never runs anything from the student's tests/ folder and never lets the student's
code see the reference: it builds a temporary folder holding the instructor's graded test
files (from this tree's tests/), a copy of the student's project modules, a pytest.ini
and the guard conftest (grader_guard.py), and runs pytest there with PYTHONPATH set to
that folder alone. The guard keeps the results, forbids reading the reference or the
student's folder, and reports any tampering with the modules or with pytest; a breach
gives 0 points for the run. Points go to a function only when all of its tests pass; each
function's tests fail for its own typical mistakes and not for another function's
(tests/test_assignments.py plants those mistakes and checks where the points go).
"""
import argparse
import configparser
import json
import os
import re
import secrets
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]   # the repository
HERE = Path(__file__).resolve().parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
TOOLING = ("course/assignments.py", "course/grader_guard.py")  # never copied into a grading run as student code
STUDENT_README = "STUDENT_README.md"


@dataclass(frozen=True)
class Assignment:
    name: str         # the row of the grading table
    module: str       # the file that holds its solution regions
    functions: tuple  # the functions it grades (the guard checks where their code comes from)
    points: int       # all or nothing: every test must pass
    tests: tuple      # node ids in the reference tree, without [parameters]


MDN, DATA, DEC = "tests/test_mdn_dense.py", "tests/test_coco_data.py", "tests/test_decode.py"
# In the suggested order: toy MDN -> dense loss -> targets -> decoding (then a training run).
# When a function or its tests move to another file, change its row here and nothing else.
ASSIGNMENTS = [
    Assignment("sigma_activation", "mdn_dense.py", ("sigma_activation",), 5, tuple(
        f"{MDN}::test_sigma_activation_{t}" for t in (
            "matches_elu_plus_one_plus_floor", "stays_above_floor", "clamps_at_1e_4_for_floor_zero"))),
    Assignment("mdn_nll", "mdn_dense.py", ("mdn_nll",), 30, tuple(
        f"{MDN}::test_mdn_nll_{t}" for t in (
            "matches_torch_distributions", "detection_shape_without_mask_or_scale",
            "ignores_masked_dims", "counts_only_visible_dims_in_c",
            "divides_residuals_by_sigma_times_kpt_scale", "keeps_log_kpt_scale_term",
            "combines_components_with_log_sum_exp", "single_component_is_a_gaussian_nll",
            "gradcheck", "is_finite_for_extreme_inputs", "kpt_scale_wrong_length_is_a_clear_error"))),
    Assignment("draw_gaussian", "coco_data.py", ("_gaussian_kernel", "draw_gaussian"), 15, (
        f"{DATA}::test_draw_gaussian_peak_sigma_clip_and_max",
        f"{DATA}::test_render_targets_det_clip_skip_and_cap",
        f"{DATA}::test_render_targets_pose_offsets_masks_and_zero_keypoints")),
    Assignment("peak extraction", "decode.py", ("max_filter3x3", "peak_mask", "topk_peaks"), 15, (
        f"{DEC}::test_max_filter_equals_max_pool", f"{DEC}::test_peak_mask_and_topk_peaks")),
    Assignment("select_component", "mdn_dense.py", ("select_component",), 10, (
        f"{MDN}::test_select_component_rules_on_one_mixture",)),
    Assignment("decode", "decode.py", ("decode",), 15, (
        f"{DEC}::test_decode_returns_planted_peaks_boxes_and_components",
        f"{DEC}::test_decode_pose_joints_from_integer_peak",
        f"{DEC}::test_base_model_decodes_as_one_component")),
    Assignment("round trip (all of the above)", "coco_data.py", (), 10, (
        f"{DATA}::test_round_trip_synthetic_coco",)),
]


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
        if rel in ("README.md", "course/" + STUDENT_README):
            continue  # the student copy's README is STUDENT_README.md, written below
        src, dst = root / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in TOOLING or not rel.endswith((".py", ".ipynb")):
            shutil.copy2(src, dst)
            continue
        text = src.read_text()
        new, n = (blank_notebook if rel.endswith(".ipynb") else blank_source)(text, rel)
        dst.write_text(new)
        if n:
            blanked[rel] = n
    shutil.copy2(HERE / STUDENT_README, dest / "README.md")
    return blanked


# ----------------------------------------------------------------------------- grading
@dataclass
class Grades:
    rows: list        # [(Assignment, tests passed, points)]
    failures: list    # [(assignment name, node id, first line of the reason)]
    problems: list = field(default_factory=list)  # the run itself went wrong (breaches first)
    output: str = ""  # pytest's stdout and stderr

    @property
    def total(self):
        return sum(got for _, _, got in self.rows)


def _copy_student_modules(student, reference, work):
    """Copy the student's version of every project module (the reference tree's top-level
    .py files, less the tooling): nothing else from the student's folder enters the run."""
    for name in sorted(p.name for p in reference.glob("*.py") if p.name not in TOOLING):
        src = student / name
        if not src.exists():
            continue
        if src.is_symlink() or not src.is_file():
            raise SystemExit(f"{src} is not a plain file: hand in the module itself")
        if (reference / name).exists() and os.path.samefile(src, reference / name) and student != reference:
            raise SystemExit(f"{src} is the reference's own file (a hard link): hand in your copy")
        shutil.copyfile(src, work / name)


def _pytest_ini(reference):
    """The run's pytest.ini: only the reference's warning filters and markers."""
    ini = configparser.ConfigParser()
    ini.read(reference / "pytest.ini")
    lines = ["[pytest]", "addopts = -p no:cacheprovider"]
    for key in ("filterwarnings", "markers"):
        if ini.has_option("pytest", key):
            lines.append(f"{key} =" + ini.get("pytest", key).replace("\n", "\n    "))
    return "\n".join(lines) + "\n"


def _canary():
    """A test file with random names: one test must fail, one must pass. A run in which the
    failing one passes has had its test machinery tampered with."""
    fail, ok, x = f"test_{secrets.token_hex(6)}", f"test_{secrets.token_hex(6)}", secrets.randbelow(10 ** 6)
    tests = [f"def {fail}():\n    assert {x} == {x + 1}, 'grader canary: must fail'\n",
             f"def {ok}():\n    assert {x} == {x}\n"]
    secrets.SystemRandom().shuffle(tests)
    return fail, ok, '"""Written by the grader."""\n\n\n' + "\n\n".join(tests)


def _outcomes(lines, ids):
    """{base node id: (passed, reason)} from the guard's JSON lines."""
    phases, collect = {}, {}
    for line in lines:
        if line["kind"] == "test":
            phases.setdefault(line["nodeid"], []).append(line)
        elif line["kind"] == "collect":
            collect[line["nodeid"]] = line["message"]
    finished = any(line["kind"] == "finished" for line in lines)
    out = {}
    for base in ids:
        runs = {n: p for n, p in phases.items() if n.split("[")[0] == base}
        reason = None
        for nodeid, p in runs.items():
            bad = next((l for l in p if l["outcome"] != "passed"), None)
            if bad is not None:
                what = {"call": "", "setup": "error in setup: "}.get(bad["when"], f"error in {bad['when']}: ")
                reason = f"{bad['outcome']}: {what}{bad.get('message', '')}" if bad["outcome"] == "skipped" \
                    else what + bad.get("message", "")
            elif not any(l["when"] == "call" for l in p):
                reason = "no result: the test process stopped during this test (os._exit, a crash or a timeout)"
            if reason:
                break
        if not runs:
            file = base.split("::")[0]
            reason = (f"not run: collecting {file} failed: {collect[file]}" if file in collect else
                      "not run: the test process stopped before this test" if not finished else
                      "not found: no such test in the graded files")
        out[base] = (reason is None, reason)
    return out


def _prepare(run, student, reference, assignments, ids):
    """Fill the run folder; returns (pytest command, environment, results file, canary names).

    run/work      the student's modules, tests/ (the reference's graded files, helpers and the
                  canary), pytest.ini, conftest.py (the guard) and grader.json (its settings)
    run/scratch   the only place the tests may write: basetemp, TMPDIR, MPLCONFIGDIR
    run/results.jsonl  the guard's results, out of the tests' reach
    """
    work, scratch, results = run / "work", run / "scratch", run / "results.jsonl"
    (work / "tests").mkdir(parents=True)
    for sub in ("basetemp", "tmp", "mpl"):
        (scratch / sub).mkdir(parents=True)
    _copy_student_modules(student, reference, work)
    files = list(dict.fromkeys(t.split("::")[0] for t in ids))
    for src in sorted((reference / "tests").glob("*.py")):
        rel = f"tests/{src.name}"
        if rel in files or not src.name.startswith("test_"):  # graded files, conftest, helpers
            shutil.copyfile(src, work / rel)
    fail, ok, canary = _canary()
    (work / "tests" / "test_grader_canary.py").write_text(canary)
    (work / "pytest.ini").write_text(_pytest_ini(reference))
    shutil.copyfile(HERE / "grader_guard.py", work / "conftest.py")
    modules = {p.name: [] for p in work.glob("*.py") if p.name != "conftest.py"}
    for a in assignments:
        modules.setdefault(a.module, []).extend(a.functions)
    forbidden = [reference, student]
    venvs = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages()}
    (work / "grader.json").write_text(json.dumps(dict(
        work=str(work), scratch=str(scratch), results=str(results), modules=modules, tests=ids,
        canary="tests/test_grader_canary.py::", forbidden=[str(f) for f in forbidden],
        allowed=[v for v in venvs if any(Path(v).resolve().is_relative_to(f) for f in forbidden)])))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PYTEST_")) and k not in ("PWD", "OLDPWD")}
    env.update(PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1",
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", TMPDIR=str(scratch / "tmp"),
               MPLCONFIGDIR=str(scratch / "mpl"), MPLBACKEND="Agg")
    cmd = [sys.executable, "-s", "-m", "pytest", "-c", str(work / "pytest.ini"), "--rootdir", str(work),
           "--confcutdir", str(work), "-p", "no:cacheprovider", f"--basetemp={scratch / 'basetemp'}",
           "--continue-on-collection-errors",  # a broken coco_data.py must not cost mdn_dense's points
           "-q", *files, "tests/test_grader_canary.py"]
    return cmd, env, results, (fail, ok)


def _read_results(path):
    """The guard's JSON lines; a line cut short by a dying process is dropped."""
    lines = []
    for text in path.read_text().splitlines() if path.exists() else []:
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            pass
    return lines


def grade(student=ROOT, reference=ROOT, assignments=ASSIGNMENTS, timeout=600):
    """Run the reference tree's tests for `assignments` against the student's modules."""
    student, reference = Path(student).resolve(), Path(reference).resolve()
    ids = list(dict.fromkeys(t for a in assignments for t in a.tests))
    run = Path(tempfile.mkdtemp(prefix="mdn-grade-")).resolve()
    problems, status, output = [], None, ""
    try:
        if any(run == f or f in run.parents for f in (reference, student)):
            raise SystemExit(f"the grading folder {run} lies inside {reference} or {student}: set TMPDIR elsewhere")
        cmd, env, results, (fail, ok) = _prepare(run, student, reference, assignments, ids)
        try:
            proc = subprocess.run(cmd, cwd=run / "work", env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
            output, status = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            problems.append(f"pytest ran past {timeout} s and was stopped")
        lines = _read_results(results)
    finally:
        shutil.rmtree(run, ignore_errors=True)
    violations = list(dict.fromkeys(l["message"] for l in lines if l["kind"] == "violation"))
    finished = [l["exitstatus"] for l in lines if l["kind"] == "finished"]
    if not finished and not problems:
        problems.append(f"pytest stopped before the end of the run (exit status {status}): "
                        "os._exit, a crash or a hang in the graded code; tests without a result count as failed")
    elif finished and finished[0] not in (0, 1):  # 2 interrupted (pytest.exit), 3 internal error, 4 usage
        problems.append(f"pytest ended with exit status {finished[0]}: tests without a result count as failed")
    calls = {t: [l["outcome"] for l in lines if l.get("nodeid", "").endswith(f"::{t}") and l.get("when") == "call"]
             for t in (fail, ok)}
    if "passed" in calls[fail] or any(o != "passed" for o in calls[ok]):
        violations.append("the grader's canary test gave the wrong outcome: the test machinery was tampered with")
    problems = [f"integrity: {v}" for v in violations] + problems
    outcomes = _outcomes(lines, ids)
    rows, failures = [], []
    for a in assignments:
        passed = [t for t in a.tests if outcomes[t][0]]
        rows.append((a, len(passed), a.points if len(passed) == len(a.tests) and not violations else 0))
        failures += [(a.name, t, outcomes[t][1]) for t in a.tests if not outcomes[t][0]]
    return Grades(rows, failures, problems, output)


def format_grades(grades, verbose=False):
    """The table, then every failing test with the function it grades and the first line of
    why it failed; verbose adds pytest's full output."""
    lines = [f"{'function':<32}{'tests':>8}{'points':>10}"]
    for a, passed, got in grades.rows:
        lines.append(f"{a.name:<32}{f'{passed}/{len(a.tests)}':>8}{f'{got}/{a.points}':>10}  "
                     f"{'PASS' if got == a.points else 'FAIL'}")
    lines.append(f"{'total':<32}{'':>8}{f'{grades.total}/{sum(a.points for a, _, _ in grades.rows)}':>10}")
    if grades.problems:
        lines += ["", "The run itself went wrong" + (" (0 points for the whole run):" if any(
            p.startswith("integrity") for p in grades.problems) else ":")]
        lines += [f"  {p}" for p in grades.problems]
    if grades.failures:
        lines += ["", "Failing tests (python assignments.py grade DIR --verbose shows pytest's output):"]
        for name, nodeid, reason in grades.failures:
            lines += [f"  [{name}] {nodeid}", f"      {reason}"]
    if verbose:
        lines += ["", "pytest output (the grader's canary file has one test that fails on purpose):", grades.output]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the student copy (solutions blanked) to a new folder")
    b.add_argument("dest", help="the folder to create, e.g. student/")
    g = sub.add_parser("grade", help="print the per-function points and why each failing test failed")
    g.add_argument("root", nargs="?", default=str(ROOT), help="the copy to grade (default: this reference copy)")
    g.add_argument("--verbose", action="store_true", help="also print pytest's full output")
    g.add_argument("--timeout", type=float, default=600, help="seconds before the test run is stopped")
    args = p.parse_args(argv)
    if args.cmd == "build":
        blanked = build(args.dest)
        for rel, n in blanked.items():
            print(f"{rel}: {n} solution region(s) blanked")
        print(f"student copy written to {args.dest}; grade it with: python assignments.py grade {args.dest}")
    else:
        grades = grade(Path(args.root), timeout=args.timeout)
        print(format_grades(grades, verbose=args.verbose))
        return grades


if __name__ == "__main__":
    main()
