"""Course assignments: a student copy of the project, and a grader built on its tests.

    python assignments.py build student/        # the project with every solution blanked
    python assignments.py grade student/        # per-function pass/fail table with points
    python assignments.py grade                 # the reference solution (this folder)

Solution regions are marked with nbgrader's comments, `### BEGIN SOLUTION` and
`### END SOLUTION`, in the modules (and in notebook code cells). The markers are plain
comments: the project runs unchanged. `build` copies every file git tracks (data,
runs and checkpoints stay behind) and replaces each region by
`raise NotImplementedError(...)`, keeping the region's `# HINT:` comment lines. The grader
runs the tests listed in ASSIGNMENTS for each function: they fail until it is right.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
MDN, DATA = "tests/test_mdn_dense.py", "tests/test_coco_data.py"

# In the suggested order: toy MDN -> dense loss -> targets -> decoding (then a training run).
ASSIGNMENTS = [
    ("sigma_activation", "mdn_dense.py", 5, [f"{MDN}::test_sigma_activation_{t}" for t in (
        "matches_elu_plus_one_plus_floor", "stays_above_floor", "clamps_at_1e_4_for_floor_zero")]),
    ("mdn_nll", "mdn_dense.py", 30, [f"{MDN}::test_mdn_nll_{t}" for t in (
        "matches_torch_distributions", "detection_shape_without_mask_or_scale",
        "ignores_masked_dims", "counts_only_visible_dims_in_c",
        "divides_residuals_by_sigma_times_kpt_scale", "keeps_log_kpt_scale_term",
        "combines_components_with_log_sum_exp", "single_component_is_a_gaussian_nll",
        "gradcheck", "is_finite_for_extreme_inputs", "kpt_scale_wrong_length_is_a_clear_error")]),
    ("draw_gaussian", "coco_data.py", 15, [f"{DATA}::test_draw_gaussian_peak_sigma_clip_and_max",
                                           f"{DATA}::test_render_targets_det_clip_skip_and_cap",
                                           f"{DATA}::test_render_targets_pose_offsets_masks_and_zero_keypoints"]),
    ("peak extraction", "mdn_dense.py", 15, [f"{MDN}::test_max_filter_equals_max_pool",
                                             f"{MDN}::test_peak_mask_and_topk_peaks"]),
    ("select_component", "mdn_dense.py", 10, [f"{MDN}::test_select_component_rules_on_one_mixture"]),
    ("decode", "mdn_dense.py", 15, [f"{MDN}::test_decode_returns_planted_peaks_boxes_and_components",
                                    f"{MDN}::test_decode_pose_joints_from_integer_peak",
                                    f"{MDN}::test_base_model_decodes_as_one_component"]),
    ("round trip (all of the above)", "coco_data.py", 10, [f"{DATA}::test_round_trip_synthetic_coco"]),
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
    nb = json.loads(text)
    count = 0
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"])
            if BEGIN in src:
                new, n = blank_source(src, where)
                cell["source"] = new.splitlines(keepends=True)
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
        src, dst = root / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel == Path(__file__).name or not rel.endswith((".py", ".ipynb")):
            shutil.copy2(src, dst)
            continue
        text = src.read_text()
        new, n = (blank_notebook if rel.endswith(".ipynb") else blank_source)(text, rel)
        dst.write_text(new)
        if n:
            blanked[rel] = n
    return blanked


# ----------------------------------------------------------------------------- grading
def grade(root=ROOT, quiet=False):
    """Run each assignment's tests in root; returns [(name, passed, total, points, max)]."""
    ids = [t for _, _, _, tests in ASSIGNMENTS for t in tests]
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "report.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", *ids], cwd=root,
                       capture_output=quiet, text=True)
        outcome = {}
        for case in ET.parse(xml).iter("testcase"):
            name = case.get("classname").replace(".", "/") + ".py::" + case.get("name")
            outcome[name.split("[")[0]] = outcome.get(name.split("[")[0], True) and not any(
                case.find(tag) is not None for tag in ("failure", "error", "skipped"))
    rows = []
    for name, _, points, tests in ASSIGNMENTS:
        passed = sum(outcome.get(t, False) for t in tests)
        rows.append((name, passed, len(tests), points if passed == len(tests) else 0, points))
    return rows


def format_grades(rows):
    lines = [f"{'function':<32}{'tests':>8}{'points':>10}"]
    for name, passed, total, got, full in rows:
        lines.append(f"{name:<32}{f'{passed}/{total}':>8}{f'{got}/{full}':>10}  {'PASS' if got == full else 'FAIL'}")
    got, full = sum(r[3] for r in rows), sum(r[4] for r in rows)
    lines.append(f"{'total':<32}{'':>8}{f'{got}/{full}':>10}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the student copy (solutions blanked) to a new folder")
    b.add_argument("dest", help="the folder to create, e.g. student/")
    g = sub.add_parser("grade", help="print the per-function pass/fail table with points")
    g.add_argument("root", nargs="?", default=str(ROOT), help="the copy to grade (default: this reference copy)")
    args = p.parse_args(argv)
    if args.cmd == "build":
        blanked = build(args.dest)
        for rel, n in blanked.items():
            print(f"{rel}: {n} solution region(s) blanked")
        print(f"student copy written to {args.dest}; grade it with: python assignments.py grade {args.dest}")
    else:
        rows = grade(Path(args.root), quiet=True)
        print(format_grades(rows))
        return rows


if __name__ == "__main__":
    main()
