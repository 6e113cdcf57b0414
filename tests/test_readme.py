"""The README's test command is what CI runs, and the README names only files that exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    line = next(l.split("#")[0].strip() for l in block.splitlines() if "pytest" in l and not l.startswith("#"))
    test_cmd = line.split("&&")[-1].strip()                   # after the installs of the same line
    ci_lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "python3 " + test_cmd.removeprefix("python ") in ci_lines or test_cmd in ci_lines


def test_readme_tour_names_existing_files():
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## A tour of the files")[1].split("\n## ")[0]
    for name in re.findall(r"^\| `([^`]+)`", tour, re.M):
        assert (ROOT / name.rstrip("/")).exists(), name


def github_anchor(heading):
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_in_page_links_of_readme_and_results_resolve():
    """Every [text](#anchor) in README.md and RESULTS.md names a heading of the same file (a
    section once vanished while the contents still listed it)."""
    for name in ("README.md", "RESULTS.md"):
        text = (ROOT / name).read_text()
        anchors = {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}
        missing = sorted(set(re.findall(r"\]\(#([^)]+)\)", text)) - anchors)
        assert not missing, f"{name}: links to no heading: {missing}"
