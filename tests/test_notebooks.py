"""The notebooks are part of the test suite.

Every notebooks/*.ipynb is picked up automatically and
  1. must be committed without outputs (we commit stripped notebooks, so diffs stay readable
     and a stale plot never contradicts the code), and
  2. must run top to bottom in smoke mode: the kernel gets MDN_SMOKE=1 (each notebook's first
     cell reads it and shrinks data and steps) and MPLBACKEND=Agg, and starts in notebooks/
     as Jupyter would. A failing cell fails the test with that cell's error.

Strip a notebook before committing with
    jupyter nbconvert --clear-output --inplace notebooks/NAME.ipynb
or with nbformat: clear every code cell's outputs and set its execution_count to None.
"""
import re
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SMOKE_ENV = "MDN_SMOKE"
CELL_TIMEOUT_S = 300  # per cell; a smoke notebook should take well under a minute in all


def stored_outputs(nb):
    """Cells that carry outputs or an execution count: [(cell index, what is stored)]."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            found.append((i, f"{len(cell.outputs)} output(s)"))
        if cell.get("execution_count") is not None:
            found.append((i, f"execution_count {cell.execution_count}"))
    return found


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
def test_notebook_is_committed_without_outputs(path):
    found = stored_outputs(nbformat.read(path, as_version=4))
    cells = sorted({i for i, _ in found})
    assert not found, (f"{path.name}: cells {cells} store outputs or execution counts; strip it with "
                       f"`jupyter nbconvert --clear-output --inplace notebooks/{path.name}`")


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


def test_stored_outputs_check_can_fail():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("text"),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("print(1)", execution_count=3,
                                  outputs=[nbformat.v4.new_output("stream", text="1\n")])])
    assert stored_outputs(nb) == [(2, "1 output(s)"), (2, "execution_count 3")]


@pytest.fixture
def smoke_env(monkeypatch):
    # Set before the kernel starts: the kernel inherits this process's environment.
    monkeypatch.setenv(SMOKE_ENV, "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, smoke_env):
    start = time.perf_counter()
    try:
        run_notebook(path)
    except CellExecutionError as err:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # drop IPython's terminal colours
        pytest.fail(f"{path.name} failed in smoke mode:\n{plain}", pytrace=False)
    print(f"{path.name}: {time.perf_counter() - start:.1f} s in smoke mode")


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


# ----------------------------------------------------------------------------- the setup cell
def first_code_cell(path):
    return next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")


def test_every_notebook_starts_with_the_same_setup_cell():
    setups = {path.name: first_code_cell(path) for path in NOTEBOOKS}
    reference = setups[NOTEBOOKS[0].name]
    assert 'REPO_URL = "https://github.com/<you>/' in reference and "lab.run_record(SMOKE)" in reference
    assert [name for name, src in setups.items() if src != reference] == [], (
        f"the first code cell differs from {NOTEBOOKS[0].name}'s: keep the setup cells identical")


def setup_notebook(folder, repo_url=None, then="import lab\nprint(lab.__file__)"):
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
    assert printed.rstrip().endswith(str(clone / "lab.py"))
    nb = run_notebook(setup_notebook(work, f"file://{source}"), timeout=300)  # the second time: no clone
    assert "cloning" not in "".join(o.get("text", "") for c in nb.cells for o in c.outputs)
