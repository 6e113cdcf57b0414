"""The grader's guard: the conftest.py that assignments.py writes into every grading run.

assignments.grade copies this file to <run>/work/conftest.py, next to the student's modules
and the instructor's tests, and starts pytest there. pytest loads it before any test module,
so it is in place before the first line of student code runs. It reads its settings from
grader.json beside it (the grader writes them) and then

  * keeps the results itself: one JSON line per test phase, in a file outside the folders
    the tests may write to (no pytest JUnit file a test could overwrite), so a process that
    dies (os._exit, a crash) leaves the results it had and no "finished" line;
  * installs an audit hook (PEP 578, it cannot be removed): no file under the reference
    tree or the student's own folder may be opened (the modules run from their copies only),
    nothing may be written outside the run's scratch folder (the tests and this guard stay
    as written; no sitecustomize is planted for later runs), no process may be started and
    no tracer installed;
  * after collection and after every test checks that each project module was imported from
    the run's copy, that each graded function's code comes from that module's file, that
    pytest's own machinery (the functions that run a test and report it, the hook
    implementations, the import hooks that rewrite asserts) is what it was before student
    code ran, and that each test function is the one in its test file.

Any breach is written as a "violation" line; the grader then gives 0 points for the whole
run and says why. A canary test the grader writes (one must fail, one must pass) catches
tampering that these checks do not name. This is a fence against the shortcuts a student
can take from inside the graded modules, not a sandbox: native code (ctypes, C extensions)
can get around an audit hook, and code that digs this module's objects out of memory (its
open results file) can write a report. Grade untrusted code in a container as well.
"""
import builtins
import functools
import inspect
import json
import os
import re
import sys
from pathlib import Path

import pluggy
import pytest
import _pytest.python
import _pytest.reports
import _pytest.runner

import ctypes  # noqa: F401  imported before the hook: its own dlopen(None) is allowed once

SETTINGS = json.loads((Path(__file__).parent / "grader.json").read_text())
WORK = os.path.realpath(SETTINGS["work"])
SCRATCH = os.path.realpath(SETTINGS["scratch"])
FORBIDDEN = tuple(os.path.realpath(p) for p in SETTINGS["forbidden"])
ALLOWED = tuple(os.path.realpath(p) for p in SETTINGS["allowed"])  # e.g. a venv inside the reference tree
_results = open(SETTINGS["results"], "a", buffering=1)  # opened before the hook forbids it


def _under(path, roots):
    return any(path == r or path.startswith(r + os.sep) for r in roots)


def _record(**line):
    _results.write(json.dumps(line) + "\n")


def _violation(message):
    _record(kind="violation", message=message)


# ----------------------------------------------------------------------------- audit hook
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
PATH_EVENTS = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.symlink", "os.link",
               "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree"}
SPAWN_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                "os.fork", "os.forkpty", "pty.spawn", "os.startfile"}


def _where(path):
    try:
        return os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return None


def _audit(event, args):
    if event == "open":
        path, _, flags = args
        p = None if isinstance(path, int) or path is None else _where(path)
        if p is None or p == os.devnull:
            return
        if _under(p, FORBIDDEN) and not _under(p, ALLOWED):
            _violation(f"opened {p}: graded code may read neither the reference solution "
                       "nor the student's folder (it runs from its own copy)")
            raise PermissionError(f"grader: {p} may not be opened during grading")
        if isinstance(flags, int) and flags & WRITE_FLAGS and not _under(p, (SCRATCH,)):
            _violation(f"opened {p} for writing: graded code may write only to its temporary "
                       "folders (tmp_path, tempfile)")
            raise PermissionError(f"grader: {p} may not be written during grading")
    elif event in PATH_EVENTS:
        for p in (_where(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            if p is not None and not _under(p, (SCRATCH,)):
                _violation(f"{event} on {p}: graded code may change files only in its temporary folders")
                raise PermissionError(f"grader: {event} on {p} is not allowed during grading")
    elif event in SPAWN_EVENTS:
        _violation(f"{event}: graded code may not start processes")
        raise PermissionError(f"grader: {event} is not allowed during grading")
    elif event in ("sys.settrace", "sys.setprofile"):
        _violation(f"{event}: graded code may not install a tracer")
        raise PermissionError(f"grader: {event} is not allowed during grading")
    elif event == "ctypes.dlopen" and (args[0] is None or "libc." in os.fsdecode(args[0])):
        _violation("ctypes.dlopen of the C library: graded code may not call libc directly")
        raise PermissionError("grader: loading libc with ctypes is not allowed during grading")


sys.addaudithook(_audit)


# ----------------------------------------------------------------------------- checks
WATCHED = [(_pytest.python, "Function.runtest"), (_pytest.python, "pytest_pyfunc_call"),
           (_pytest.runner, "runtestprotocol"), (_pytest.runner, "call_and_report"),
           (_pytest.runner, "CallInfo.from_call"), (_pytest.reports, "TestReport.from_item_and_call"),
           (pluggy, "HookCaller.__call__"), (pluggy, "PluginManager._hookexec"),
           (pytest, "raises"), (pytest, "approx")]


def _pytest_machinery():
    """The objects that run a test and turn its outcome into a report (those this pytest has)."""
    out = {}
    for module, dotted in WATCHED:
        obj = module
        for part in dotted.split("."):  # static: a classmethod is one object, not a new bound method
            obj = inspect.getattr_static(obj, part, None)
        if obj is not None:
            out[f"{module.__name__}.{dotted}"] = obj
    return out


MACHINERY = _pytest_machinery()
IMPORT_SYSTEM = (builtins.__import__, list(sys.meta_path), list(sys.path_hooks))  # e.g. assertion rewriting
HOOK_HOMES = (os.path.dirname(_pytest.python.__file__), os.path.dirname(pluggy.__file__),
              os.path.join(WORK, "conftest.py"), os.path.join(WORK, "tests"))


_seen = {}  # module name -> (id, __file__) of the module found there at the last check


@functools.lru_cache(maxsize=None)
def _real(path):
    """realpath, cached: the checks below run after every test over every loaded module."""
    return os.path.realpath(path)


def _check(config, items=()):
    """Every breach found now, as messages."""
    out = [f"pytest's {name} was replaced" for name, obj in _pytest_machinery().items()
           if obj is not MACHINERY[name]]
    if builtins.__import__ is not IMPORT_SYSTEM[0]:
        out.append("builtins.__import__ was replaced")
    for now, before, name in ((sys.meta_path, IMPORT_SYSTEM[1], "sys.meta_path"),
                              (sys.path_hooks, IMPORT_SYSTEM[2], "sys.path_hooks")):
        out += [f"an import hook ({type(h).__name__}) was added to {name}" for h in now
                if not any(h is b for b in before)]
    for caller in vars(config.hook).values():
        for impl in getattr(caller, "get_hookimpls", lambda: [])():
            code = getattr(impl.function, "__code__", None)
            where = _real(code.co_filename) if code else "?"
            if not _under(where, HOOK_HOMES):
                out.append(f"a pytest hook ({caller.name}) was registered from {where}")
    for name, module in list(sys.modules.items()):
        f = getattr(module, "__file__", None)
        if _seen.get(name) == (id(module), f):
            continue  # checked before, unchanged
        _seen[name] = (id(module), f)
        if isinstance(f, str) and _under(_real(f), FORBIDDEN) and not _under(_real(f), ALLOWED):
            out.append(f"module {name} was imported from {_real(f)}")
    for rel, functions in SETTINGS["modules"].items():
        module = sys.modules.get(rel[:-3])
        if module is None:
            continue
        f = os.path.realpath(getattr(module, "__file__", "") or "?")
        if f != os.path.join(WORK, rel):
            out.append(f"{rel[:-3]} was imported from {f}, not from the student's copy")
            continue
        for fn in functions:
            obj = getattr(module, fn, None)
            code = getattr(inspect.unwrap(obj) if callable(obj) else obj, "__code__", None)  # through @no_grad
            if code is not None and _real(code.co_filename) != f:
                out.append(f"{rel[:-3]}.{fn} is code from {code.co_filename}, not from {rel}")
    for item in items:
        code = getattr(getattr(item, "function", None), "__code__", None)
        if code is not None and os.path.realpath(code.co_filename) != os.path.realpath(item.path):
            out.append(f"test {item.nodeid} runs code from {code.co_filename}")
    return out


def _report_breaches(config, items=()):
    for message in _check(config, items):
        _violation(message)


# ----------------------------------------------------------------------------- hooks
def _first_line(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
        text = str(report.longrepr[2])
    else:  # a collection error: the last "E" line, and where in the student's files it happened
        lines = [l[1:].strip() for l in report.longreprtext.splitlines() if l.startswith("E ")]
        text = lines[-1] if lines else report.longreprtext
        places = re.findall(r'File "([^"]+)", line (\d+)', report.longreprtext)
        if places and _under(_real(places[-1][0]), (WORK,)):
            text += f" ({os.path.relpath(places[-1][0], WORK)} line {places[-1][1]})"
    return next((l.strip() for l in text.splitlines() if l.strip()), report.outcome)


def pytest_collection_modifyitems(config, items):
    """Run the graded tests only (the grader passes whole files, so that a graded test that
    has moved or been renamed shows as "not found" instead of stopping the run)."""
    graded = set(SETTINGS["tests"])
    keep = [i.nodeid.split("[")[0] in graded or i.nodeid.startswith(SETTINGS["canary"]) for i in items]
    config.hook.pytest_deselected(items=[i for i, k in zip(items, keep) if not k])
    items[:] = [i for i, k in zip(items, keep) if k]


def pytest_collection_finish(session):
    _report_breaches(session.config, session.items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call":
        _report_breaches(item.config, [item])
    return report


def pytest_runtest_logreport(report):
    line = dict(kind="test", nodeid=report.nodeid, when=report.when, outcome=report.outcome)
    if not report.passed:
        line["message"] = _first_line(report)
    _record(**line)


def pytest_collectreport(report):
    if report.failed:
        _record(kind="collect", nodeid=report.nodeid, message=_first_line(report))


def pytest_sessionfinish(session, exitstatus):
    _report_breaches(session.config)
    _record(kind="finished", exitstatus=int(exitstatus))
