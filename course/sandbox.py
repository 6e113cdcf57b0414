"""The grader's sandbox: run course/child.py on the student's modules in a process that sees
only what it needs.

With bubblewrap (`bwrap`, the sandbox Flatpak uses; `apt-get install bubblewrap`) the child
gets its own mount, pid, network, IPC and UTS namespaces with every capability dropped, and
sees a read-only /usr, a read-only Python (the interpreter and its site-packages), the
student's modules and the grader's inputs read-only, an empty /tmp and one writable folder
for its answers: not the instructor's tree, not the reference, not the expected values
(those never leave the parent's memory). Without bwrap the child is a plain process in a
temporary folder, which can read whatever the user running the grader can: `isolation()`
says so and the grader prints it at the top of the table.

Either way the child has a CPU-time and address-space limit (set by child.py before the
student's module is imported) and a wall-clock limit (the parent kills its process group).
"""
import os
import shutil
import signal
import site
import subprocess
import sys
from pathlib import Path

BWRAP = "bubblewrap"
NONE = "none"
DESCRIBE = {
    BWRAP: "bubblewrap: the student's code saw its own modules, the grader's inputs and a "
           "read-only Python; no network, no other files",
    NONE: "NONE: bubblewrap (bwrap) was not found or does not work here, so the student's code "
          "ran as a plain process that can read every file this user can (the reference "
          "included): do not trust this grade",
}
OUTPUT_LIMIT = 20000  # characters of the child's stdout + stderr kept for the student


def python_roots():
    """The folders outside /usr that the child's Python needs, read-only."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable)), *site.getsitepackages()}
    roots = {os.path.realpath(r) for r in roots if os.path.isdir(r)}
    roots = {r for r in roots if not (r == "/usr" or r.startswith("/usr/"))}
    return sorted(r for r in roots if not any(r != o and r.startswith(o + os.sep) for o in roots))


def _bwrap_argv(student, grader, out):
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    for root in python_roots():
        argv += ["--ro-bind", root, root]
    return argv + ["--ro-bind", str(student), "/sandbox/student", "--ro-bind", str(grader), "/sandbox/grader",
                   "--bind", str(out), "/sandbox/out", "--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc",
                   "--chdir", "/tmp", "--clearenv", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
                   "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "OMP_NUM_THREADS", "1",
                   "--setenv", "MPLBACKEND", "Agg"]


def check_roots(*trees):
    """Refuse to grade when a folder the child would see read-only holds one of trees (the
    reference, the student's folder), e.g. a Python installed inside the repository."""
    for root in python_roots():
        for tree in trees:
            tree = os.path.realpath(tree)
            if tree == root or tree.startswith(root + os.sep):
                raise SystemExit(f"the Python at {root} contains {tree}: the sandbox would show it to the "
                                 "student's code; grade with a Python installed elsewhere")


_ISOLATION = None


def isolation():
    """BWRAP when a bwrap sandbox starts the Python here, else NONE (probed once)."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = NONE
        if shutil.which("bwrap"):
            probe = Path(os.path.realpath(__import__("tempfile").mkdtemp(prefix="mdn-probe-")))
            try:
                argv = _bwrap_argv(probe, probe, probe) + [sys.executable, "-I", "-c", "import torch"]
                if subprocess.run(argv, capture_output=True, timeout=120).returncode == 0:
                    _ISOLATION = BWRAP
            except (OSError, subprocess.TimeoutExpired):
                pass
            finally:
                shutil.rmtree(probe, ignore_errors=True)
    return _ISOLATION


def run_child(student, grader, out, cpu_seconds, memory_mb, wall_seconds, mode):
    """Run child.py (in grader/, with grader/calls.pt) on the modules in student/, answers in out/.

    Returns (how it ended in words or None when it exited 0, its stdout + stderr)."""
    if mode == BWRAP:
        paths = ["/sandbox/student", "/sandbox/grader/calls.pt", "/sandbox/out"]
        argv = _bwrap_argv(student, grader, out) + [sys.executable, "-I", "/sandbox/grader/child.py"]
        env, cwd = {}, None
    else:
        paths = [str(student), str(grader / "calls.pt"), str(out)]
        argv = [sys.executable, "-I", str(grader / "child.py")]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(out), "TMPDIR": str(out),
               "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        cwd = out
    argv += [*paths, str(cpu_seconds), str(memory_mb)]
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=wall_seconds)
        ended = None if proc.returncode == 0 else _ended(proc.returncode, cpu_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        ended = f"stopped after {wall_seconds:g} s of wall-clock time (the time limit)"
    text = output.decode(errors="replace")
    if len(text) > OUTPUT_LIMIT:
        text = text[:OUTPUT_LIMIT] + f"\n... ({len(text) - OUTPUT_LIMIT} more characters cut)"
    return ended, text


def _ended(code, cpu_seconds):
    """How the child ended, in words; bwrap reports a signal as status 128 + its number."""
    number = -code if code < 0 else code - 128 if code > 128 else None
    if number in {s.value for s in signal.Signals}:
        sig = signal.Signals(number).name
        extra = f" (the {cpu_seconds} s CPU-time limit)" if sig in ("SIGXCPU", "SIGKILL") else ""
        return f"was killed by {sig}{extra}"
    return f"exited with status {code}"
