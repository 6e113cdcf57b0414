"""The assignment tooling: the student copy blanks every solution, its tests fail
readably, the rest still runs, and restoring the reference makes everything pass."""
import shutil
import subprocess
import sys

import pytest

import assignments as asg

INDEPENDENT = ["tests/test_mdn_dense.py::test_focal_loss_matches_slow_loop",
               "tests/test_model.py::test_official_sigma_floor_per_backbone",
               "tests/test_coco_data.py::test_affine_round_trip_and_flip_twice",
               "tests/test_synthetic_coco.py"]


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


def test_student_copy_fails_blanked_tests_and_passes_after_restoring(tmp_path):
    student = tmp_path / "student"
    blanked = asg.build(student)
    assert blanked["mdn_dense.py"] >= 3 and blanked["decode.py"] >= 4 and blanked["coco_data.py"] >= 1
    assert "### BEGIN SOLUTION" not in (student / "mdn_dense.py").read_text()
    rows = asg.grade(student, quiet=True)
    assert all(passed == 0 for _, passed, _, _, _ in rows), asg.format_grades(rows)
    # the failure a student sees names the function to write
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           asg.ASSIGNMENTS[1][3][0]], cwd=student, capture_output=True, text=True)
    assert "NotImplementedError: mdn_nll: your code here" in proc.stdout
    # the rest of the suite still runs
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *INDEPENDENT],
                          cwd=student, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:]
    for rel in blanked:  # restore the reference solutions
        shutil.copy2(asg.ROOT / rel, student / rel)
    rows = asg.grade(student, quiet=True)
    assert all(got == full for _, _, _, got, full in rows), asg.format_grades(rows)


def test_build_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty"):
        asg.build(tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"
