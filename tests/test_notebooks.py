"""The notebooks are part of the test suite.

Every notebooks/*.ipynb is picked up automatically and
  1. is committed WITH the outputs of a full run, so that a reader sees the plots (on GitHub,
     say): `python notebooks/run_all.py` executes all of them in full mode and writes them
     in place. The stored outputs must hold no error, every code cell must have run, in one
     kernel from the top, and the setup cell's first line must say "full run (MDN_SMOKE=0)"
     with the date and the machine (lab.run_record). Until that run, these tests fail and say so;
  2. must run top to bottom in smoke mode: the kernel gets MDN_SMOKE=1 (the setup cell reads
     it and each notebook shrinks data and steps) and MPLBACKEND=Agg, and starts in
     notebooks/ as Jupyter would. The run is in memory: the file is never written. A failing
     cell fails the test with that cell's error.
"""
import importlib.util
import re
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from notebooks import lab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SMOKE_ENV = "MDN_SMOKE"
CELL_TIMEOUT_S = 300  # per cell; a smoke notebook should take well under a minute in all
RUN_ALL = "python notebooks/run_all.py"
FULL_RUN = re.compile(r"^full run \(MDN_SMOKE=0\) on \d{4}-\d\d-\d\d \d\d:\d\d\b.*\d+ CPUs", re.M)
BLANKED = re.compile(r"raise NotImplementedError\(\"\w+: your code here")  # a cell the student copy blanked


def committed_run_problems(nb):
    """What keeps nb's stored outputs from being a clean full run: [(cell index, problem)].
    A cell the student copy blanked (assignments.blank_notebook strips it) may be unexecuted."""
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not any(c.get("outputs") for _, c in code):
        return [(None, f"no outputs stored: run `{RUN_ALL}` (all notebooks, full mode, written in place)")]
    problems = [(i, f"error output {o.get('ename')}: {o.get('evalue')}")
                for i, c in code for o in c.get("outputs", []) if o.output_type == "error"]
    counts = [(i, c.get("execution_count")) for i, c in code if not BLANKED.search(c.source)]
    problems += [(i, "not executed") for i, n in counts if n is None]
    ran = [n for _, n in counts if n is not None]
    if ran != sorted(set(ran)) or (ran and ran[0] != 1):
        problems.append((None, f"execution counts {ran}: not one kernel run from the top"))
    first = code[0][1] if code else None
    shown = "".join(o.get("text", "") for o in first.get("outputs", []) if o.output_type == "stream") if first else ""
    if not FULL_RUN.search(shown):
        problems.append((code[0][0] if code else None, "the setup cell does not print 'full run (MDN_SMOKE=0) on "
                         f"DATE ...: MACHINE, N CPUs' (a smoke run, or an old one?); it printed {shown[:200]!r}"))
    return problems


def run_notebook(path, timeout=CELL_TIMEOUT_S):
    """Execute a notebook in memory (the file is not written) with the kernel's cwd set to the
    notebook's folder. Raises CellExecutionError, which names the failing cell and its error."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(path).parent)}})
    client.execute()
    return nb


def test_notebooks_exist():
    # Parametrizing over an empty list would only skip: an empty folder must fail.
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_hold_no_error(path):
    problems = committed_run_problems(nbformat.read(path, as_version=4))
    errors = [p for p in problems if "no outputs" in p[1] or "error output" in p[1]]
    assert not errors, f"{path.name}: " + "; ".join(f"cell {i}: {why}" if i is not None else why for i, why in errors)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_come_from_a_full_run(path):
    problems = committed_run_problems(nbformat.read(path, as_version=4))
    assert not problems, (f"{path.name}: " + "; ".join(f"cell {i}: {why}" if i is not None else why for i, why in problems)
                          + f". Re-run it with `{RUN_ALL} {path.name[:2]}`")


def test_committed_run_check_can_fail():
    setup = "import lab\nprint(lab.run_record(SMOKE))"
    full = lab.run_record(smoke=False) + "\n"           # the line a full run's setup cell prints
    stream = lambda text: [nbformat.v4.new_output("stream", text=text)]

    def notebook(first_line, second=None, count2=2):
        return nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_markdown_cell("# title"),
            nbformat.v4.new_code_cell(setup, execution_count=1, outputs=stream(first_line)),
            second or nbformat.v4.new_code_cell("x = 1", execution_count=count2)])

    assert committed_run_problems(notebook(full)) == []
    assert "no outputs stored" in committed_run_problems(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(setup)]))[0][1]
    assert committed_run_problems(notebook(full.replace("full run (MDN_SMOKE=0)", "smoke run (MDN_SMOKE=1)")))[0][0] == 1
    error = nbformat.v4.new_code_cell("1 / 0", execution_count=2, outputs=[
        nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])])
    assert committed_run_problems(notebook(full, error)) == [(2, "error output ZeroDivisionError: division by zero")]
    assert committed_run_problems(notebook(full, count2=None)) == [(2, "not executed")]
    assert "not one kernel run" in committed_run_problems(notebook(full, count2=1))[0][1]  # a cell run again
    blanked = nbformat.v4.new_code_cell('def f():\n    raise NotImplementedError("f: your code here (see ...)")')
    assert committed_run_problems(notebook(full, blanked)) == []  # the student copy strips such a cell


def commented_markdown(nb):
    """Markdown cells whose every line starts with "#" (a percent-format script's comment
    block pasted as markdown): each line would render as a heading. [cell index]"""
    found = []
    for i, cell in enumerate(nb.cells):
        lines = [l for l in cell.source.splitlines() if l.strip()]
        if cell.cell_type == "markdown" and len(lines) > 1 and all(l.startswith("#") for l in lines):
            found.append(i)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_is_not_commented_code(path):
    assert not commented_markdown(nbformat.read(path, as_version=4)), path.name


def test_commented_markdown_check_can_fail():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Title\n\nText with *emphasis*."),
                                         nbformat.v4.new_markdown_cell("# # Title\n#\n# text")])
    assert commented_markdown(nb) == [1]


@pytest.fixture
def smoke_env(monkeypatch):
    # Set before the kernel starts: the kernel inherits this process's environment.
    monkeypatch.setenv(SMOKE_ENV, "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, smoke_env):
    stored = path.read_bytes()
    start = time.perf_counter()
    try:
        run_notebook(path)
    except CellExecutionError as err:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # drop IPython's terminal colours
        pytest.fail(f"{path.name} failed in smoke mode:\n{plain}", pytrace=False)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s in smoke mode")
    assert path.read_bytes() == stored, f"the smoke run changed {path.name}: it must run in memory"


def test_notebook_05_without_real_photos_says_why_it_skips(smoke_env, monkeypatch):
    # A reader with only the repository: no ../shared/coco_sample, no COCO_ROOT, no MDN_IMAGES.
    monkeypatch.setenv("MDN_COCO_SAMPLE", "/nonexistent/coco_sample")
    for name in ("COCO_ROOT", "MDN_IMAGES"):
        monkeypatch.delenv(name, raising=False)
    path = next(p for p in NOTEBOOKS if p.name.startswith("05_"))
    nb = run_notebook(path)
    said = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any("skipped: no real COCO photos here" in o.get("text", "") for o in c.outputs)]
    needs_photos = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "print(SKIP" in c.source]
    assert said == needs_photos and len(said) >= 7, (said, needs_photos)
    assert "https://cocodataset.org/#download" in "".join(o.get("text", "") for o in nb.cells[said[0]].outputs)


def test_runner_reports_a_failing_cell(tmp_path, smoke_env):
    # The harness itself: the env var reaches the kernel, the cwd is the notebook's folder,
    # and a failing cell surfaces as an error carrying the cell's exception.
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"import os\nassert os.environ['{SMOKE_ENV}'] == '1'\n"
                                  f"assert os.path.basename(os.getcwd()) == '{tmp_path.name}'"),
        nbformat.v4.new_code_cell("raise ValueError('boom from cell 2')")])
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(CellExecutionError, match="boom from cell 2"):
        run_notebook(path, timeout=60)


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", NOTEBOOK_DIR / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_all_executes_in_full_mode_and_writes_in_place(tmp_path, smoke_env, capsys):
    # smoke_env sets MDN_SMOKE=1: run_all must override it; a failing notebook keeps its file
    run_all = load_run_all()
    assert [p.name for p in run_all.pick([])] == [p.name for p in NOTEBOOKS]
    assert [p.name for p in run_all.pick(["05", "02_dense_mixture.ipynb"])] == [NOTEBOOKS[4].name, NOTEBOOKS[1].name]
    with pytest.raises(SystemExit, match="names 0 notebooks"):
        run_all.pick(["7"])
    ok, broken = tmp_path / "ok.ipynb", tmp_path / "broken.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nprint(os.environ['MDN_SMOKE'], os.path.basename(os.getcwd()))")]), ok)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('boom')")]), broken)
    before = broken.read_bytes()
    run_all.NOTEBOOKS = [ok, broken]
    assert run_all.main(["--timeout", "60"]) == 1
    cell = nbformat.read(ok, as_version=4).cells[0]
    assert cell.execution_count == 1 and cell.outputs[0].text == f"0 {tmp_path.name}\n"
    assert "execution" not in cell.metadata  # no timing noise in the diff
    assert broken.read_bytes() == before
    out = capsys.readouterr().out
    assert "ok.ipynb: " in out and " MB" in out and "broken.ipynb: FAILED" in out and "boom" in out


# ----------------------------------------------------------------------------- the setup cell
def first_code_cell(path):
    return next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def test_every_notebook_starts_with_the_same_setup_cell():
    setups = {path.name: first_code_cell(path) for path in NOTEBOOKS}
    reference = setups[NOTEBOOKS[0].name]
    assert 'REPO_URL = "https://github.com/<you>/' in reference and "lab.run_record(SMOKE)" in reference
    assert [name for name, src in setups.items() if src != reference] == [], (
        f"the first code cell differs from {NOTEBOOKS[0].name}'s: keep the setup cells identical")


def setup_notebook(folder, repo_url=None, then="from notebooks import lab\nprint(lab.__file__)"):
    """A notebook in folder: the shared setup cell (REPO_URL replaced when given), then `then`."""
    setup = first_code_cell(NOTEBOOKS[0])
    if repo_url is not None:
        setup = re.sub(r'^REPO_URL = ".*?"', f"REPO_URL = {str(repo_url)!r}", setup, count=1, flags=re.M)
    path = folder / "setup.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup),
                                                   nbformat.v4.new_code_cell(then)]), path)
    return path


def test_setup_outside_the_repository_needs_repo_url(tmp_path, smoke_env):
    with pytest.raises(CellExecutionError, match="REPO_URL is still the placeholder"):
        run_notebook(setup_notebook(tmp_path), timeout=120)
    assert not (tmp_path / "mixture-dense-regression").exists()


def test_setup_outside_the_repository_clones_it_once(tmp_path, smoke_env):
    # Colab's case without the network: REPO_URL is a local git repository holding this tree's
    # tracked files as they are now; pip finds requirements.txt already satisfied.
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    source = tmp_path / "origin"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, source / rel)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + cmd, cwd=source, check=True)
    work = tmp_path / "colab"
    work.mkdir()
    nb = run_notebook(setup_notebook(work, f"file://{source}"), timeout=300)
    clone = work / "mixture-dense-regression"
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.outputs)
    assert f"cloning file://{source} into {clone}" in printed and "smoke run (MDN_SMOKE=1) on " in printed
    assert printed.rstrip().endswith(str(clone / "notebooks" / "lab.py"))
    nb = run_notebook(setup_notebook(work, f"file://{source}"), timeout=300)  # the second time: no clone
    assert "cloning" not in "".join(o.get("text", "") for c in nb.cells for o in c.outputs)
