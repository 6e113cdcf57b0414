"""train.py end to end on a tiny synthetic set: train -> checkpoint -> evaluate, resume
equivalence, non-finite loss handling, a 2-process torchrun (gloo) run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import coco_data as cd
import transforms as tf
import evaluate
import mdn_dense as md
from util import rundir
import train
from model import ModelConfig, build_model
from synthetic_coco import make_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_pose(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_dataset(root, "pose", "train", 16)


def args_for(data, out, *extra, m_flag="--m"):
    ann, images = data
    return ["--task", "pose", m_flag, "2", "--ann", ann, "--images", images, "--arch", "small_dla",
            "--batch-size", "8", "--input-size", "64", "--lr-steps", "--out", str(out), *extra]


def test_train_checkpoint_evaluate(tiny_pose, tmp_path, capsys):
    stats = train.main(args_for(tiny_pose, tmp_path / "run", "--epochs", "1", "--test-ann", tiny_pose[0],
                                "--test-images", tiny_pose[1]))
    assert list(stats) == ["All", "All+ref", "1", "2"]  # pose adds the hm_hp-refined max row
    run = tmp_path / "run"
    lines = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and {"hm", "hps", "total", "lr", "time", "AP"} <= set(lines[0])
    # the test split (here the same images) gives the metric only, the same numbers as val
    assert (lines[0]["AP_test"], lines[0]["AP_test_refined"]) == (lines[0]["AP"], lines[0]["AP_refined"])
    out = capsys.readouterr().out
    test_table = out.split("held-out test split")[1].splitlines()[2:]
    assert [row.split()[0] for row in test_table if row.strip() and not row.endswith("s in all")] == ["All", "All+ref"]
    assert (run / "curves.png").stat().st_size > 0 and json.loads((run / "config.json").read_text())["model"]["m"] == 2
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)  # plain dict configs: loadable safely
    assert ckpt["epoch"] == 0 and ckpt["model_config"]["task"] == "pose" and ckpt["train_config"]["input_size"] == 64
    assert "Comp." in out and "All" in out
    again = evaluate.main(["--checkpoint", str(run / "ckpt.pt"), "--ann", tiny_pose[0],
                           "--images", tiny_pose[1], "--out", str(tmp_path / "eval")])
    assert again["All"] == pytest.approx(stats["All"])  # same model, same split, same AP
    refined = evaluate.main(["--checkpoint", str(run / "ckpt.pt"), "--ann", tiny_pose[0], "--refine",
                             "--images", tiny_pose[1], "--out", str(tmp_path / "eval_refined")])
    assert refined["All"] == pytest.approx(stats["All+ref"])
    assert lines[0]["AP_refined"] == pytest.approx(stats["All+ref"][0])
    assert (tmp_path / "eval" / "results.json").exists()


def test_shared_mdn_head_trains_and_evaluate_rebuilds_it(tiny_pose, tmp_path):
    """--mdn-head shared is stored in the checkpoint's config, so evaluate.py builds the
    same network and loads its weights (strict load: a wrong layout would raise)."""
    run = tmp_path / "run"
    stats = train.main(args_for(tiny_pose, run, "--epochs", "1", "--mdn-head", "shared"))
    ckpt = torch.load(run / "ckpt.pt", weights_only=True)
    assert ckpt["model_config"]["mdn_head"] == "shared" and "heads.0.mdn.0.weight" in ckpt["model"]
    assert not any(k.startswith(("heads.0.hps.", "heads.0.mdn_sigma.")) for k in ckpt["model"])
    again = evaluate.main(["--checkpoint", str(run / "ckpt.pt"), "--ann", tiny_pose[0],
                           "--images", tiny_pose[1], "--out", str(tmp_path / "eval")])
    assert again["All"] == pytest.approx(stats["All"])


def test_flip_is_off_by_default_only_on_the_synthetic_figures(tiny_pose, monkeypatch):
    """The synthetic figures colour-code their sides, so their mirror image is not a figure
    the generator draws: flip defaults to 0 there, to CenterNet's 0.5 everywhere else."""
    import synthetic_coco
    monkeypatch.setattr(synthetic_coco, "ensure_demo_dataset", lambda task: {"train": tiny_pose, "val": tiny_pose, "test": tiny_pose})
    cfg = lambda *argv: train.config_from_args(train.parse_args(list(argv)))[1]
    assert cfg("--task", "pose").flip_prob == 0.0
    assert cfg("--task", "det").flip_prob == 0.5
    assert cfg("--task", "pose", "--ann", tiny_pose[0], "--images", tiny_pose[1]).flip_prob == 0.5
    chosen = cfg("--task", "pose", "--flip-prob", "0.25")
    assert chosen.flip_prob == 0.25 and train.datasets(chosen, "pose")[0].flip_prob == 0.25
    with pytest.raises(SystemExit, match="2"):
        cfg("--flip-prob", "2")


def test_held_images_give_the_same_samples_without_the_files(tiny_pose, tmp_path, monkeypatch):
    """--hold-images (on for the synthetic demo, off for given data) decodes the training
    images once: every augmented sample is bit for bit the one read from the files, and
    the files are not read again."""
    import shutil
    import synthetic_coco
    monkeypatch.setattr(synthetic_coco, "ensure_demo_dataset", lambda task: {"train": tiny_pose, "val": tiny_pose, "test": tiny_pose})
    cfg = lambda *argv: train.config_from_args(train.parse_args(list(argv)))[1]
    assert cfg("--task", "pose").hold_images and not cfg("--task", "pose", "--no-hold-images").hold_images
    given = ["--task", "pose", "--ann", tiny_pose[0], "--images", tiny_pose[1]]
    assert not cfg(*given).hold_images and cfg(*given, "--hold-images").hold_images
    images = tmp_path / "images"
    shutil.copytree(tiny_pose[1], images)
    argv = ["--task", "pose", "--ann", tiny_pose[0], "--images", str(images), "--arch", "small_dla", "--input-size", "64"]
    files = train.datasets(cfg(*argv), "pose")[0]
    held = train.datasets(cfg(*argv, "--hold-images"), "pose")[0]
    read = []
    for i in range(len(files)):
        torch.manual_seed(i)
        read.append(files[i])
    shutil.rmtree(images)
    with pytest.raises(tf.BadImageError, match="not found"):
        files[0]
    for i, b in enumerate(read):
        torch.manual_seed(i)
        a = held[i]
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k])), i


def test_no_augment_trains_on_exactly_the_evaluated_inputs(tiny_pose):
    """--no-augment (the overfit check): each training item equals the validation item of the
    same image, input and every target, whatever the RNG; with augmentation they differ."""
    argv = ["--task", "pose", "--ann", tiny_pose[0], "--images", tiny_pose[1], "--arch", "small_dla", "--input-size", "64"]
    for augment in (False, True):
        cfg = train.config_from_args(train.parse_args(argv + ([] if augment else ["--no-augment"])))[1]
        assert cfg.augment is augment
        tr, va = train.datasets(cfg, "pose")[:2]
        torch.manual_seed(1)
        same = []
        for i in range(4):
            a, b = tr[i], va[va.image_ids.index(tr.image_ids[i])]
            same.append(all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k])))
        assert all(same) if not augment else not any(same), (augment, same)


def test_a_flipped_figure_contradicts_its_colour_coded_sides(tmp_path):
    """Why train.py does not flip-augment the synthetic figures by default: read through the
    training pipeline (CocoDataset's input and hps targets), the forearm labelled left is
    warm without the flip and cool with it, a figure the generator never draws."""
    ann_file, image_dir = make_dataset(tmp_path, "figures", "train", 16, people=(1, 1),
                                       truncate_fraction=0.0, cue_free_fraction=0.0)
    warm_left = {}
    for flip_prob in (0.0, 1.0):
        ds = cd.CocoDataset(ann_file, image_dir, "pose", train=True, input_size=128, scales=(1.0,),
                            random_center=False, flip_prob=flip_prob, color_aug=False)
        W, votes = ds.out_size, []
        for i in range(len(ds)):
            s = ds.sample(i, np.random.default_rng(i))
            hps, vis = s["hps"][0].view(17, 2), s["hps_mask"][0].view(17, 2)
            if not (s["mask"][0] and vis[7].all() and vis[9].all()):  # left elbow, left wrist
                continue
            centre = torch.tensor([s["ind"][0] % W, s["ind"][0] // W], dtype=torch.float32)
            x, y = ((centre + (hps[7] + hps[9]) / 2) * cd.STRIDE).long()   # left forearm, input pixels
            r, _, b = s["input"][:, y, x].numpy() * tf.STD_RGB + tf.MEAN_RGB
            votes.append(r > b)
        assert len(votes) >= 10
        warm_left[flip_prob] = np.mean(votes)
    assert warm_left[0.0] >= 0.8 and warm_left[1.0] <= 0.2, warm_left


def test_existing_run_is_not_overwritten(tiny_pose, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"precious")
    with pytest.raises(SystemExit, match="--resume"):
        train.main(args_for(tiny_pose, out, "--epochs", "1"))
    assert (out / "ckpt.pt").read_bytes() == b"precious"


def test_resume_matches_uninterrupted_run(tiny_pose, tmp_path):
    full = train.main(args_for(tiny_pose, tmp_path / "a", "--epochs", "2"))
    train.main(args_for(tiny_pose, tmp_path / "b", "--epochs", "1"))          # interrupted after epoch 1
    resumed = train.main(args_for(tiny_pose, tmp_path / "b", "--epochs", "2", "--resume"))
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert resumed["All"] == pytest.approx(full["All"])
    assert [h["total"] for h in a["history"]] == [h["total"] for h in b["history"]]


def test_muon_run_resumes_exactly_and_refuses_another_optimizer(tiny_pose, tmp_path):
    muon = ("--optimizer", "muon")
    train.main(args_for(tiny_pose, tmp_path / "a", "--epochs", "2", *muon))
    train.main(args_for(tiny_pose, tmp_path / "b", "--epochs", "1", *muon))
    with pytest.raises(SystemExit, match=r"trained with --optimizer muon, not adam"):
        train.main(args_for(tiny_pose, tmp_path / "b", "--epochs", "2", "--resume", "--optimizer", "adam"))
    train.main(args_for(tiny_pose, tmp_path / "b", "--epochs", "2", "--resume", *muon))
    a = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    train.main(args_for(tiny_pose, tmp_path / "c", "--epochs", "1", "--optimizer", "adam"))
    c = torch.load(tmp_path / "c" / "ckpt.pt", weights_only=True)
    assert a["train_config"]["optimizer"] == "muon" and c["train_config"]["optimizer"] == "adam"
    assert len(a["optimizer"]["param_groups"]) == 2 and len(c["optimizer"]["param_groups"]) == 1


def test_non_finite_loss_stops_with_a_clear_message(tiny_pose, tmp_path, monkeypatch):
    def exploding(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        return loss * float("nan"), parts
    real = md.total_loss
    monkeypatch.setattr(md, "total_loss", exploding)
    with pytest.raises(SystemExit, match=r"non-finite loss .* epoch 1, step 0 .*Last good checkpoint: none"):
        train.main(args_for(tiny_pose, tmp_path / "run", "--epochs", "1"))


def test_unknown_arch_and_missing_images_flag(tiny_pose, tmp_path):
    with pytest.raises(SystemExit, match="--ann and --images go together"):
        train.main(["--ann", tiny_pose[0], "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="unknown arch"):
        ModelConfig(arch="resnet")


def test_torchrun_two_processes_gloo(tiny_pose, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *args_for(tiny_pose, tmp_path / "ddp", "--epochs", "1", m_flag="--mdn")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Comp.") == 1  # rank 0 alone prints the table
    lines = (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "AP" in json.loads(lines[0])
    assert torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)["epoch"] == 0


def test_init_from_a_base_run_copies_the_shared_weights(tiny_pose, tmp_path, capsys):
    argv = args_for(tiny_pose, tmp_path / "base", "--epochs", "1")
    argv[argv.index("--m") + 1] = "0"                           # the single-mode base
    train.main(argv)
    base = torch.load(tmp_path / "base" / "ckpt.pt", weights_only=True)["model"]
    model = build_model(ModelConfig(task="pose", m=2))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    copied, skipped = rundir.init_from(model, tmp_path / "base" / "ckpt.pt")
    own = model.state_dict()
    assert copied and all(torch.equal(own[k], base[k]) for k in copied)
    # the mixture heads and the 2x wider hps output layer cannot come from the base
    assert {"heads.0.mdn_sigma.0.weight", "heads.0.mdn_logits.2.bias", "heads.0.hps.2.weight"} <= set(skipped)
    assert "heads.0.hps.0.weight" in copied                        # same shape: the hidden conv is copied
    assert all(torch.equal(own[k], fresh[k]) for k in skipped)
    train.main(args_for(tiny_pose, tmp_path / "mdn", "--epochs", "1", "--init", str(tmp_path / "base" / "ckpt.pt")))
    assert "heads.0.mdn_sigma.0" in capsys.readouterr().out


def test_init_from_an_unrelated_file_fails_clearly(tmp_path):
    model = build_model(ModelConfig(task="pose", m=2))
    torch.save({"model": {"not.a.layer": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="--init: .*other.pt: not a checkpoint of this project"):
        rundir.init_from(model, tmp_path / "other.pt")
    other = build_model(ModelConfig(task="det", m=0))
    torch.save({"kind": "mdn_dense checkpoint", "version": 2, "model_config": {},
                "model": {"x." + k: v for k, v in other.state_dict().items()}}, tmp_path / "renamed.pt")
    with pytest.raises(SystemExit, match="no tensor matches"):
        rundir.init_from(model, tmp_path / "renamed.pt")


# ----------------------------------------------------------------------------- custom keypoints
FIVE = [0, 5, 6, 9, 10]   # nose, shoulders, wrists of COCO's 17
FIVE_NAMES = ["head", "shoulder_L", "shoulder_R", "LeftHand", "RightHand"]


def five_joint_set(data, path, sigmas=None):
    """The synthetic figures cut to 5 joints under names COCO does not use."""
    coco = json.loads(open(data[0]).read())
    cat = coco["categories"][0]
    cat.update(keypoints=FIVE_NAMES, skeleton=[[1, 2], [1, 3], [2, 4], [3, 5]])
    if sigmas:
        cat["sigmas"] = sigmas
    for a in coco["annotations"]:
        kp = np.array(a["keypoints"]).reshape(17, 3)[FIVE]
        a["keypoints"], a["num_keypoints"] = kp.ravel().tolist(), int((kp[:, 2] > 0).sum())
    path.write_text(json.dumps(coco))
    return str(path), data[1]


def test_a_five_joint_set_trains_and_evaluates_end_to_end(tiny_pose, tmp_path, capsys):
    bare = five_joint_set(tiny_pose, tmp_path / "five.json")
    with pytest.raises(SystemExit, match=r"five.json: its 5 keypoints are not COCO's 17 .*--oks-sigmas with 5 values"):
        train.main(args_for(bare, tmp_path / "no_sigmas", "--epochs", "1"))
    assert train.parse_args(["--oks-sigmas", "0.03", "0.07"]).oks_sigmas == [0.03, 0.07]
    sigmas = [0.026, 0.079, 0.079, 0.062, 0.062]
    data = five_joint_set(tiny_pose, tmp_path / "five_sigmas.json", sigmas)
    run = tmp_path / "run"
    stats = train.main(args_for(data, run, "--epochs", "1"))
    assert list(stats) == ["All", "All+ref", "1", "2"] and all(np.isfinite(s).all() for s in stats.values())
    ds = cd.CocoDataset(*data, "pose")
    assert ds.flip_idx == [0, 2, 1, 4, 3] and ds.oks_sigmas.tolist() == sigmas
    again = evaluate.main(["--checkpoint", str(run / "ckpt.pt"), "--ann", bare[0], "--images", bare[1],
                           "--oks-sigmas", *map(str, sigmas), "--out", str(tmp_path / "eval")])
    assert again["All"] == pytest.approx(stats["All"])      # the flag and the field give the same OKS
    with pytest.raises(SystemExit, match="predicts 1 classes / 5 joints"):
        evaluate.main(["--checkpoint", str(run / "ckpt.pt"), "--ann", tiny_pose[0], "--images", tiny_pose[1]])
