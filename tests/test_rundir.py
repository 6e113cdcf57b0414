"""rundir.py and train.py against the ways a run goes silently wrong: divergence, a full
disk, two runs in one folder, a kill between log and checkpoint, zero training steps,
flags that are 0, negative or missing their partner, foreign or mismatched checkpoints,
another run's files in --out, SIGINT / SIGTERM, a lock whose pid was reused, an interrupted
final evaluation, resuming with data-loader workers, a folder that cannot be written."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import model as model_module
import train
from util.muon import MuonAdam
from model import read_checkpoint
from util.rundir import RunLock, _start_time, next_run_folder, non_finite, read_log, run_name, set_aside, write_log
from synthetic_coco import make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), "pose", "train", 8)


def argv(data, out, *extra):
    ann, images = data
    return ["--task", "pose", "--m", "2", "--ann", ann, "--images", images, "--arch", "small_dla", "--batch-size", "4",
            "--input-size", "64", "--out", str(out), *extra]


def all_finite(path):
    state = read_checkpoint(path)
    return all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ----------------------------------------------------------------------------- divergence
def test_divergence_stops_without_saving_and_the_named_checkpoint_is_good(tiny, tmp_path):
    run = tmp_path / "run"
    train.main(argv(tiny, run, "--epochs", "1", "--optimizer", "adam"))   # Adam at lr 1e8 diverges; Muon's steps are bounded
    with pytest.raises(SystemExit, match=r"(not finite|non-finite loss).*Last good checkpoint: .*ckpt.pt \(after epoch 1\)"):
        train.main(argv(tiny, run, "--epochs", "6", "--lr", "1e8", "--resume", "--optimizer", "adam"))
    assert all_finite(run / "ckpt.pt") and read_checkpoint(run / "ckpt.pt")["epoch"] == 0


def test_non_finite_weights_are_found_in_model_and_optimizer():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert non_finite(net, opt) == []
    with torch.no_grad():
        net.bias[0] = float("nan")
    opt.state[net.weight]["exp_avg"][0, 0] = float("inf")
    assert non_finite(net, opt) == ["bias", "optimizer.state[0].exp_avg"]


def test_non_finite_finds_muons_momentum():
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 2, 1))
    opt = MuonAdam(net, lr=1e-3)
    net(torch.ones(1, 4, 5, 5)).sum().backward()
    opt.step()
    assert non_finite(net, opt) == []
    opt.muon.state[net[0].weight]["momentum_buffer"][0, 0] = float("nan")
    assert non_finite(net, opt) == ["optimizer.state[0].momentum_buffer"]


# ----------------------------------------------------------------------------- disk
def test_full_disk_names_the_folder_leaves_no_temp_file_and_resume_works(tiny, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train.main(argv(tiny, run, "--epochs", "1"))
    before = (run / "ckpt.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")
    monkeypatch.setattr(model_module.torch, "save", full_disk)
    with pytest.raises(SystemExit, match=rf"could not write the checkpoint in {run}.*needs about \d+ MiB.*--resume"):
        train.main(argv(tiny, run, "--epochs", "2", "--resume"))
    assert (run / "ckpt.pt").read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if "tmp" in p.name) == []
    monkeypatch.setattr(model_module.torch, "save", real_save)
    train.main(argv(tiny, run, "--epochs", "2", "--resume"))
    assert read_checkpoint(run / "ckpt.pt")["epoch"] == 1


def test_log_is_rewritten_from_the_history_never_duplicated(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"epoch": 0}\n{"epoch": 0}\n')   # a kill between log and checkpoint
    write_log(tmp_path, [{"epoch": 0}, {"epoch": 1}])
    assert [json.loads(l)["epoch"] for l in (tmp_path / "log.jsonl").read_text().splitlines()] == [0, 1]


# ----------------------------------------------------------------------------- one run per folder
def lock_of(pid, **fields):
    return json.dumps({**dict(run="elsewhere", host=socket.gethostname(), pid=pid, started=_start_time(pid)), **fields})


def test_a_live_lock_refuses_a_second_run_and_a_stale_one_is_taken(tiny, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    parent = os.getppid()                                   # a live process that is not us
    for text in (lock_of(parent), str(parent)):            # the lock's record, and a bare pid
        (run / ".lock").write_text(text)
        with pytest.raises(SystemExit, match=rf"{run} is in use by another run \(process {parent} on "):
            train.main(argv(tiny, run, "--epochs", "1"))
        assert not (run / "ckpt.pt").exists() and (run / ".lock").read_text() == text
    (run / ".lock").write_text(lock_of(parent, host="another-host"))   # cannot be checked from here: live
    with pytest.raises(SystemExit, match="process .* on another-host"):
        train.main(argv(tiny, run, "--epochs", "1"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(dead.stdout.strip())        # its process has exited: stale
    train.main(argv(tiny, run, "--epochs", "1"))
    assert (run / "ckpt.pt").exists() and not (run / ".lock").exists()


def test_a_reused_pid_is_not_taken_for_the_lock_owner(tiny, tmp_path):
    """The lock's pid is alive but started at another time: a later process given the same
    pid (pid 1 in a fresh container), so the lock is stale."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(lock_of(os.getppid(), started=_start_time(os.getppid()) - 1))
    train.main(argv(tiny, run, "--epochs", "1"))
    assert (run / "ckpt.pt").exists() and not (run / ".lock").exists()
    with RunLock(tmp_path / "x") as lock:                   # what a lock records
        record = json.loads(lock.path.read_text())
    assert record == dict(run=str((tmp_path / "x").resolve()), host=socket.gethostname(), pid=os.getpid(),
                          started=_start_time(os.getpid())) and record["started"] is not None


def test_lock_is_released_when_the_run_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with RunLock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
            raise RuntimeError("boom")
    assert not (tmp_path / ".lock").exists()


# ----------------------------------------------------------------------------- zero steps
def test_fewer_images_than_a_batch_is_an_error(tiny, tmp_path):
    with pytest.raises(SystemExit, match=r"no training step: .*: 8 images < batch size 64"):
        train.main(argv(tiny, tmp_path / "run", "--epochs", "1", "--batch-size", "64"))


def test_an_all_crowd_split_is_an_error(tiny, tmp_path):
    data = json.loads(open(tiny[0]).read())
    for a in data["annotations"]:
        a["iscrowd"] = 1
    (tmp_path / "crowd.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match=r"no training step: .*crowd.json: cannot train pose: no usable object"):
        train.main(argv((str(tmp_path / "crowd.json"), tiny[1]), tmp_path / "run", "--epochs", "1"))


def test_a_split_without_usable_images_is_an_error(tmp_path):
    ann = tmp_path / "empty.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "person", "keypoints": ["nose"], "skeleton": []}]}))
    with pytest.raises(SystemExit, match=r"no training step: .*empty.json: cannot train pose: the file lists no images"):
        train.main(argv((str(ann), str(tmp_path)), tmp_path / "run", "--epochs", "1", "--oks-sigmas", "0.05"))


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flag,value,message", [
    ("--epochs", "0", "argument --epochs: must be > 0, got 0"),
    ("--batch-size", "0", "argument --batch-size: must be > 0, got 0"),
    ("--lr", "0", "argument --lr: must be > 0, got 0"),
    ("--input-size", "-128", "argument --input-size: must be > 0, got -128"),
    ("--epochs", "-1", "argument --epochs: must be > 0, got -1"),
    ("--flip-prob", "2", "argument --flip-prob: must be between 0 and 1, got 2"),
    ("--m", "-1", "argument --m/--mdn: must be >= 0, got -1"),
    ("--workers", "-2", "argument --workers: must be >= 0, got -2"),
])
def test_bad_flag_values_are_refused_at_parse_time(flag, value, message, capsys):
    with pytest.raises(SystemExit, match="^2$"):      # argparse's usage-error status; its message goes to stderr
        train.parse_args([flag, value])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--input-size", "100"], "--input-size 100: small_dla needs a multiple of 32"),
    (["--schedule", "2x"], "--schedule is for --arch hourglass104"),
    (["--val-ann", "x.json"], "--val-ann / --val-images need --ann"),
    (["--m", "0", "--sigma-floor", "3"], "--sigma-floor is for the mixture"),
    (["--init", "a.pt", "--resume"], "--init starts a new run"),
    (["--m", "100000"], "--m must be an integer in 0..64, got 100000"),
])
def test_flag_combinations_are_checked(extra, message, tiny, monkeypatch):
    import synthetic_coco
    monkeypatch.setattr(synthetic_coco, "ensure_demo_dataset", lambda task: {"train": tiny, "val": tiny, "test": tiny})
    with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
        train.config_from_args(train.parse_args(extra))


def test_lr_steps_follow_the_epochs(tiny, monkeypatch):
    import synthetic_coco
    monkeypatch.setattr(synthetic_coco, "ensure_demo_dataset", lambda task: {"train": tiny, "val": tiny, "test": tiny})
    cfg = lambda *a: train.config_from_args(train.parse_args(list(a)))[1]
    # the pose demo preset: 12 epochs, x0.1 at 9; other epoch counts scale the step (9 * 4 / 12 = 3)
    assert cfg().lr_steps == [9] and cfg("--epochs", "4").lr_steps == [3] and cfg("--epochs", "20").lr_steps == [15]
    assert cfg("--epochs", "4", "--lr-steps").lr_steps == [] and cfg("--lr-steps", "2", "5").lr_steps == [2, 5]


# ----------------------------------------------------------------------------- checkpoints
def test_resume_from_another_model_or_a_finished_run(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    train.main(argv(tiny, run, "--epochs", "1"))
    other = argv(tiny, run, "--epochs", "2", "--resume")
    other[other.index("--m") + 1] = "3"
    with pytest.raises(SystemExit, match=r"the checkpoint is another model: m 2 \(checkpoint\) vs 3"):
        train.main(other)
    assert train.main(argv(tiny, run, "--epochs", "1", "--resume")) is None
    assert "already finished its 1 epochs" in capsys.readouterr().out
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04junk")
    junk = argv(tiny, tmp_path / "junk", "--epochs", "1", "--init", str(tmp_path / "junk.pt"))
    with pytest.raises(SystemExit, match=r"--init: .*junk.pt: not a readable checkpoint"):
        train.main(junk)


def test_a_second_run_gets_the_next_numbered_folder(tmp_path):
    base = tmp_path / "runs" / "pose_m3"
    assert next_run_folder(base) == base
    base.mkdir(parents=True)
    assert next_run_folder(base) == base                         # an empty folder is not a run
    (base / "ckpt.pt").write_bytes(b"x")
    assert next_run_folder(base) == base.with_name("pose_m3_2")
    for n in (2, 3):
        base.with_name(f"pose_m3_{n}").mkdir()
        (base.with_name(f"pose_m3_{n}") / "log.jsonl").write_text("")
    (base.with_name("pose_m3_3") / "ckpt.pt").write_bytes(b"x")
    assert next_run_folder(base) == base.with_name("pose_m3_4")
    assert next_run_folder(base, resume=True) == base.with_name("pose_m3_3")   # the newest checkpoint
    assert next_run_folder(tmp_path / "none", resume=True) == tmp_path / "none"


# ----------------------------------------------------------------------------- the user's files
@pytest.mark.parametrize("files", [{"config.json": "{}", "log.jsonl": '{"epoch": 0}\n'}, {"notes.txt": "mine"},
                                   {"ckpt.pt": "precious"}])
def test_a_folder_holding_other_files_is_refused_unless_resume(tiny, tmp_path, files):
    run = tmp_path / "run"
    run.mkdir()
    for name, text in files.items():
        (run / name).write_text(text)
    with pytest.raises(SystemExit, match=rf"{run} already holds .*pass --resume .*nothing is overwritten"):
        train.main(argv(tiny, run, "--epochs", "1"))
    assert {p.name: p.read_text() for p in run.iterdir()} == files
    if "ckpt.pt" not in files:
        with pytest.raises(SystemExit, match=rf"--resume: no checkpoint at {run / 'ckpt.pt'}"):
            train.main(argv(tiny, run, "--epochs", "1", "--resume"))
        assert {p.name: p.read_text() for p in run.iterdir()} == files
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit, match="is a file, not a folder|cannot create the run folder"):
        train.main(argv(tiny, tmp_path / "file", "--epochs", "1"))
    assert (tmp_path / "file").read_text() == "mine"


def test_a_folder_that_cannot_be_written_is_one_line(tiny, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(SystemExit, match=r"cannot create the run folder .*file/run .*pass --out a folder you can write"):
        train.main(argv(tiny, tmp_path / "file" / "run", "--epochs", "1"))
    import synthetic_coco

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "data/synthetic")
    monkeypatch.setattr(synthetic_coco, "make_dataset", read_only)   # a read-only clone: the generator cannot write
    with pytest.raises(SystemExit, match=r"cannot write the synthetic demo set .*Permission denied.*--ann / --images"):
        train.config_from_args(train.parse_args([]))


def test_one_naming_rule_and_one_log_reader(tiny, tmp_path, monkeypatch):
    import synthetic_coco
    monkeypatch.setattr(synthetic_coco, "ensure_demo_dataset", lambda task: {"train": tiny, "val": tiny, "test": tiny})
    monkeypatch.chdir(tmp_path)
    assert train.config_from_args(train.parse_args(["--m", "2"]))[1].out == str(Path("runs") / run_name("pose", 2))
    run = tmp_path / "run"
    train.main(argv(tiny, run, "--epochs", "1"))
    assert read_log(run) == read_log(run / "ckpt.pt") == read_checkpoint(run / "ckpt.pt")["history"]
    assert set_aside(run) == tmp_path / "run_stale"
    run.mkdir()
    assert set_aside(run) == tmp_path / "run_stale_2"
    assert (tmp_path / "run_stale" / "ckpt.pt").is_file()


# ----------------------------------------------------------------------------- interruptions
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_with_one_line_and_releases_the_lock(tiny, tmp_path, sig):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "train.py", *argv(tiny, run, "--epochs", "200", "--lr-steps")],
                            cwd=Path(train.__file__).parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (run / "log.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (run / "log.jsonl").exists(), "no epoch finished"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"{run}: stopped by {sig.name}. Last good checkpoint: {run / 'ckpt.pt'} (after epoch ")
    assert not (run / ".lock").exists()
    epochs = len(read_log(run))
    assert f"(after epoch {epochs})" in err and read_checkpoint(run / "ckpt.pt")["epoch"] == epochs - 1
    assert train.main(argv(tiny, run, "--epochs", str(epochs + 1), "--lr-steps", "--resume")) is not None


def test_an_interrupted_final_evaluation_is_finished_by_resume(tiny, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real = train.evaluate_model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("SIGTERM")
    monkeypatch.setattr(train, "evaluate_model", interrupted)
    with pytest.raises(SystemExit, match=rf"stopped by SIGTERM. Last good checkpoint: {run / 'ckpt.pt'} \(after epoch 1\)"):
        train.main(argv(tiny, run, "--epochs", "1"))
    assert "AP" not in read_log(run)[-1] and not (run / ".lock").exists()
    monkeypatch.setattr(train, "evaluate_model", real)
    stats = train.main(argv(tiny, run, "--epochs", "1", "--resume"))
    assert "final evaluation was interrupted" in capsys.readouterr().out
    assert stats is not None and read_log(run)[-1]["AP"] == pytest.approx(float(stats["All"][0]))
    assert read_checkpoint(run / "ckpt.pt")["history"][-1]["AP"] == read_log(run)[-1]["AP"]


def test_resume_with_workers_matches_an_uninterrupted_run(tiny, tmp_path):
    """Augmentations come from each worker's RNG: workers restarted each epoch from the
    per-epoch seed draw the same ones in a resumed run (persistent workers did not)."""
    common = ("--workers", "2", "--lr-steps", "--eval-every", "0")
    train.main(argv(tiny, tmp_path / "a", "--epochs", "2", *common))
    train.main(argv(tiny, tmp_path / "b", "--epochs", "1", *common))
    train.main(argv(tiny, tmp_path / "b", "--epochs", "2", "--resume", *common))
    a, b = (read_checkpoint(tmp_path / r / "ckpt.pt") for r in "ab")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert [h["total"] for h in a["history"]] == [h["total"] for h in b["history"]]


def test_a_missing_image_stops_training_with_one_line(tiny, tmp_path):
    ann, images = tiny
    shutil.copytree(images, tmp_path / "images")
    (tmp_path / "images" / "000003.jpg").unlink()
    for workers in ("0", "1"):           # a worker re-raises it inside its own traceback
        with pytest.raises(SystemExit, match=r"^image id 4: file not found: .*000003.jpg. Last good checkpoint: "
                                             r"none yet; fix or remove the image"):
            train.main(argv((ann, str(tmp_path / "images")), tmp_path / f"run{workers}", "--epochs", "1",
                            "--workers", workers))


def test_a_detection_file_without_categories_is_one_line(tmp_path):
    ann = tmp_path / "nocats.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                               "annotations": [], "categories": []}))
    args = ["--task", "det", "--ann", str(ann), "--images", str(tmp_path), "--arch", "small_dla", "--batch-size", "1",
            "--input-size", "64", "--epochs", "1", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match=rf"^{ann}: num_classes must be an integer in 1..10000, got 0$"):
        train.main(args)
