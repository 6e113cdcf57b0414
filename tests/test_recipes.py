"""util/recipes.py: the per-task presets reach train.py's defaults, and flags still win."""
import pytest

import train
from util.recipes import PRESETS, TASK_PRESETS, preset, schedule


def test_task_overrides_apply_to_their_task_only():
    pose, det = preset("small_dla", "pose"), preset("small_dla", "det")
    assert det == PRESETS["small_dla"] and preset("small_dla") == PRESETS["small_dla"]
    assert pose == {**PRESETS["small_dla"], **TASK_PRESETS["small_dla", "pose"]} != det
    assert schedule("small_dla", None, None, None, "pose") == (pose["epochs"], pose["lr_steps"])
    # --epochs scales the task preset's steps, as it does the architecture's
    e = 2 * pose["epochs"]
    assert schedule("small_dla", None, e, None, "pose")[1] == [2 * s for s in pose["lr_steps"]]


@pytest.mark.parametrize("task", ["pose", "det"])
def test_train_defaults_are_the_task_preset_and_flags_win(task, tmp_path):
    data = ["--ann", str(tmp_path / "a.json"), "--images", str(tmp_path), "--arch", "small_dla", "--task", task]
    _, cfg = train.config_from_args(train.parse_args(data + ["--out", str(tmp_path / "r")]))
    want = preset("small_dla", task)
    assert (cfg.batch_size, cfg.epochs, cfg.lr_steps, cfg.lr, cfg.ema, cfg.optimizer) == (
        want["batch_size"], want["epochs"], want["lr_steps"], want["lr"], want.get("ema", 0.0),
        want.get("optimizer", "adam"))
    other = {"adam": "muon", "muon": "adam"}[cfg.optimizer]
    _, cfg = train.config_from_args(train.parse_args(data + ["--out", str(tmp_path / "r"), "--batch-size", "4",
                                                            "--ema", "0", "--epochs", "3", "--lr-steps", "2",
                                                            "--optimizer", other]))
    assert (cfg.batch_size, cfg.ema, cfg.epochs, cfg.lr_steps, cfg.optimizer) == (4, 0.0, 3, [2], other)


def test_the_pose_demo_trains_with_muon_and_the_paper_presets_with_adam():
    assert preset("small_dla", "pose")["optimizer"] == "muon"
    assert all(preset(arch, task).get("optimizer", "adam") == "adam"
               for arch in PRESETS for task in ("det", "pose") if (arch, task) != ("small_dla", "pose"))


def test_gate_grad_flag_reaches_the_loss_weights_for_the_mixture_only(tmp_path):
    data = ["--ann", str(tmp_path / "a.json"), "--images", str(tmp_path), "--arch", "small_dla", "--task", "pose",
            "--out", str(tmp_path / "r")]
    _, cfg = train.config_from_args(train.parse_args(data + ["--m", "3", "--gate-grad", "10"]))
    assert cfg.loss_weights == {"gate_grad": 10.0}
    _, cfg = train.config_from_args(train.parse_args(data + ["--m", "3"]))
    assert "gate_grad" not in cfg.loss_weights             # the paper's loss unless asked
    with pytest.raises(SystemExit, match="--gate-grad is for the mixture"):
        train.config_from_args(train.parse_args(data + ["--m", "0", "--gate-grad", "10"]))
