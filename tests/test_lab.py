"""lab.py, the notebooks' helper, on a tiny synthetic set (16 images, 1 epoch at 64 px):
a finished run is reused, a changed setting, an unreadable checkpoint or a fresh start moves
it aside (nothing is deleted), an unfinished one is resumed, evaluation rows are the Table 1 layout, annotations skip crowds."""
import json
import shutil

import numpy as np
import pytest
import torch

from notebooks import lab
import train
from coco_data import CocoDataset
from synthetic_coco import make_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), "det", "train", 16)


def args_for(data, *extra, epochs=1):
    ann, images = data
    return ["--ann", ann, "--images", images, "--arch", "small_dla", "--batch-size", "8",
            "--input-size", "64", "--epochs", str(epochs), "--lr-steps", *extra]


@pytest.fixture(scope="module")
def finished(shapes, tmp_path_factory):
    """A finished MDN_3 detection run: (runs folder, its ckpt.pt)."""
    runs = tmp_path_factory.mktemp("runs")
    ckpt = lab.train_run(runs, "det", 3, args_for(shapes))
    return runs, ckpt


@pytest.fixture
def spy(monkeypatch):
    """Replace train.main by a recorder: lab.train_run's decision, without training."""
    calls = []
    monkeypatch.setattr(train, "main", lambda argv: calls.append(list(argv)))
    return calls


def copy_run(finished, tmp_path):
    runs, ckpt = finished
    shutil.copytree(ckpt.parent, tmp_path / ckpt.parent.name)
    return tmp_path, tmp_path / ckpt.parent.name / "ckpt.pt"


def test_train_run_trains_then_reuses(finished, shapes, spy):
    runs, ckpt = finished
    assert ckpt == runs / "det_m3" / "ckpt.pt" and ckpt.is_file()
    assert len(lab.read_log(ckpt)) == 1 == len(lab.read_log(ckpt.parent))
    assert "AP" in lab.read_log(ckpt)[0]
    before = ckpt.stat().st_mtime_ns
    assert lab.train_run(runs, "det", 3, args_for(shapes)) == ckpt
    assert spy == [] and ckpt.stat().st_mtime_ns == before  # reused, not retrained


def test_changed_setting_moves_the_run_aside(finished, shapes, spy, tmp_path, capsys):
    runs, ckpt = copy_run(finished, tmp_path)
    state = torch.load(ckpt, weights_only=True)
    assert lab.changed_settings(state, ["--task", "det", "--m", "3", "--out", str(ckpt.parent),
                                        *args_for(shapes)]) == {}
    lab.train_run(runs, "det", 3, args_for(shapes, "--lr", "1e-3"))
    assert "train.lr" in capsys.readouterr().out
    assert (runs / "det_m3_stale" / "ckpt.pt").is_file() and not ckpt.exists()
    assert len(spy) == 1 and "--resume" not in spy[0] and spy[0][spy[0].index("--lr") + 1] == "1e-3"


def test_model_setting_and_data_fields(finished, shapes):
    state = torch.load(finished[1], weights_only=True)
    argv = ["--task", "det", "--m", "3", "--out", str(finished[1].parent), *args_for(shapes)]
    assert state["model_config"]["num_classes"] == 5  # read from the data: not a setting
    assert lab.changed_settings(state, argv + ["--sigma-floor", "2"]) == {"model.sigma_floor": (1.0, 2.0)}
    assert set(lab.changed_settings(state, [a if a != "3" else "2" for a in argv])) == {"model.m"}


def test_unreadable_checkpoint_moves_the_run_aside(finished, shapes, spy, tmp_path):
    runs, ckpt = copy_run(finished, tmp_path)
    ckpt.write_bytes(b"not a checkpoint")
    lab.train_run(runs, "det", 3, args_for(shapes))
    assert (runs / "det_m3_stale").is_dir() and len(spy) == 1 and "--resume" not in spy[0]


def test_unfinished_run_is_resumed(finished, shapes, spy, tmp_path):
    runs, ckpt = copy_run(finished, tmp_path)
    state = torch.load(ckpt, weights_only=True)
    state["train_config"]["epochs"] = 2          # as if stopped after epoch 1 of 2
    torch.save(state, ckpt)
    lab.train_run(runs, "det", 3, args_for(shapes, epochs=2))
    assert len(spy) == 1 and spy[0][-1] == "--resume" and not (runs / "det_m3_stale").exists()


def test_fresh_moves_the_run_aside_first(finished, shapes, spy, tmp_path, capsys):
    runs, ckpt = copy_run(finished, tmp_path)
    before = ckpt.read_bytes()
    lab.train_run(runs, "det", 3, args_for(shapes), fresh=True)
    assert not ckpt.parent.exists() and len(spy) == 1 and "--resume" not in spy[0]
    assert (runs / "det_m3_old" / "ckpt.pt").read_bytes() == before and "moved" in capsys.readouterr().out


def test_nothing_deletes_a_finished_run(finished, shapes, spy, tmp_path):
    """Two changes of settings in a row: both older runs are kept (the second move does not
    replace the first), and so are two fresh restarts."""
    runs, ckpt = copy_run(finished, tmp_path)
    before = ckpt.read_bytes()
    lab.train_run(runs, "det", 3, args_for(shapes, "--lr", "1e-3"))
    shutil.copytree(runs / "det_m3_stale", runs / "det_m3")             # as if that run had been trained
    lab.train_run(runs, "det", 3, args_for(shapes, "--lr", "2e-3"))
    assert [(runs / f"det_m3_{s}" / "ckpt.pt").read_bytes() == before for s in ("stale", "stale_2")] == [True, True]
    for _ in range(2):
        shutil.copytree(runs / "det_m3_stale", runs / "det_m3")
        lab.train_run(runs, "det", 3, args_for(shapes), fresh=True)
    assert (runs / "det_m3_old" / "ckpt.pt").is_file() and (runs / "det_m3_old_2" / "ckpt.pt").is_file()


def test_a_fresh_run_replaces_only_its_own_scratch_run(shapes, tmp_path):
    """The notebooks' smoke runs (fresh=True) do not pile up: the next fresh call replaces
    the run the last one marked as scratch, and nothing else."""
    first = lab.train_run(tmp_path, "det", 0, args_for(shapes), fresh=True)
    assert (first.parent / lab.SCRATCH).exists()
    before = first.stat().st_mtime_ns
    again = lab.train_run(tmp_path, "det", 0, args_for(shapes), fresh=True)
    assert again == first and first.stat().st_mtime_ns != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det_m0"]


def test_evaluate_run_rows(finished, shapes):
    run = lab.evaluate_run(finished[1], extra_rules=("mean",))
    assert list(run["stats"]) == ["All", "1", "2", "3", "mean"]
    assert set(run["results"]) == {"max", 0, 1, 2, "mean"}
    assert all(len(s) == 12 for s in run["stats"].values())
    assert run["cfg"].m == 3 and run["train"].input_size == 64 and len(run["ds"]) == 16
    assert not run["model"].training
    # train.py evaluated the same model on the same split at its end
    assert run["stats"]["All"][0] == pytest.approx(lab.read_log(finished[1])[-1]["AP"])
    assert {r["component"] for r in run["results"][1]} <= {1}
    only = lab.evaluate_run(finished[1], rows={"All": "max"}, flip=True)
    assert list(only["stats"]) == ["All"] and list(only["results"]) == ["max"]


def test_annotations_skip_crowds_and_other_categories(shapes, tmp_path):
    data = json.loads(open(shapes[0]).read())
    first = data["images"][0]["id"]
    mine = [a for a in data["annotations"] if a["image_id"] == first]
    assert len(mine) >= 2
    mine[0]["iscrowd"] = 1
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDataset(str(ann), shapes[1], "det")
    assert [a["id"] for a in lab.annotations(ds, first)] == [a["id"] for a in mine[1:]]
    assert lab.annotations(ds, 10 ** 6) == []
    # the run's split, as training cut it
    cfg = train.TrainConfig(ann=str(ann), images=shapes[1], val_ann=str(ann), val_images=shapes[1],
                            input_size=64, max_images=3)
    assert lab.run_dataset(cfg, "det").image_ids == ds.image_ids[:3]


def test_skeleton_lines_only_annotated_edges():
    kps = np.zeros((17, 3))
    kps[[5, 7, 9], :] = [[1, 2, 2], [3, 4, 1], [5, 6, 2]]   # left shoulder, elbow, wrist
    lines = lab.skeleton_lines(kps.ravel())
    assert [(xs.tolist(), ys.tolist()) for xs, ys in lines] == [([1, 3], [2, 4]), ([3, 5], [4, 6])]
    assert (5, 7) in lab.SKELETON and (7, 9) in lab.SKELETON and len(lab.SKELETON) == 19
    assert lab.skeleton_lines(np.zeros(51)) == []


# ----------------------------------------------------------------------------- notebook sessions
def test_run_record_names_the_mode_date_and_machine():
    full, smoke = lab.run_record(False), lab.run_record(True)
    assert full.startswith("full run (MDN_SMOKE=0) on 2") and smoke.startswith("smoke run (MDN_SMOKE=1) on 2")
    assert "CPUs" in full and f"torch {torch.__version__}" in full


def blanked(name, module):
    """A function as the student copy blanks it, defined in a module of that name."""
    namespace = {"__name__": module}
    exec(f'def {name}(x):\n    raise NotImplementedError("{name}: your code here (see its docstring)")\n', namespace)
    return namespace[name]


def error_of(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001 - the error itself is the result
        return e


def test_todo_message_names_the_module_function_or_the_exercise():
    message = lab.todo_message(error_of(lambda: blanked("mdn_nll", "mdn_dense")(1)))
    assert message.startswith("Stopped: mdn_dense.mdn_nll is yours to write. Implement mdn_dense.mdn_nll (mdn_dense.py")
    assert "restart the kernel" in message
    exercise = lab.todo_message(error_of(lambda: blanked("my_peak_mask", "__main__")(1)))
    assert exercise.startswith("Stopped: my_peak_mask is yours to write") and "in the cell above" in exercise
    # other errors keep their traceback: a plain NotImplementedError, another error, a message that
    # does not come from the function that raised it
    assert lab.todo_message(error_of(lambda: [][1])) is None
    assert lab.todo_message(NotImplementedError("flip for this task")) is None

    def wrapper():
        raise NotImplementedError("mdn_nll: your code here")
    assert lab.todo_message(error_of(wrapper)) is None


def test_explain_todos_replaces_only_the_todo_traceback():
    class Shell:  # what explain_todos uses of IPython's InteractiveShell
        def set_custom_exc(self, exc_tuple, handler):
            self.exc_tuple, self.handler = exc_tuple, handler

        def showtraceback(self, exc_tuple, tb_offset=None):  # IPython draws _render_traceback_ if there is one
            etype, value, tb = exc_tuple
            render = getattr(value, "_render_traceback_", None)
            self.shown = render() if render else ["Traceback (most recent call last):", f"{etype.__name__}: {value}"]

    shell = Shell()
    lab.explain_todos(shell)
    lab.explain_todos(None)  # outside IPython: nothing to do
    assert shell.exc_tuple == (NotImplementedError,)
    todo = error_of(lambda: blanked("sigma_activation", "mdn_dense")(1))
    shell.handler(shell, NotImplementedError, todo, todo.__traceback__)
    assert shell.shown == [lab.todo_message(todo)]
    shell.handler(shell, NotImplementedError, NotImplementedError("not for this task"), None)
    assert shell.shown[0].startswith("Traceback")
