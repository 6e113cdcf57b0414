"""model.py: the --m ladder of heads, the shared mixture head, sigma leaving the heads above
its floor, the official floor per backbone, and checkpoints that say what they are."""
import pytest
import torch

import mdn_dense as md
from model import (ModelConfig, Heads, build_model, default_sigma_floor, head_channels, load_model,
                   read_checkpoint, save_checkpoint)


def test_head_channels_ladder():
    assert head_channels(ModelConfig(task="det", m=0, num_classes=80)) == {"hm": 80, "reg": 2, "wh": 2}
    assert head_channels(ModelConfig(task="det", m=3, num_classes=80)) == {
        "hm": 80, "reg": 2, "wh": 6, "mdn_sigma": 6, "mdn_logits": 3}
    pose = head_channels(ModelConfig(task="pose", m=3, num_joints=17))
    assert pose["hps"] == 102 and pose["hm_hp"] == 17 and pose["mdn_logits"] == 3
    assert "hm_hp" not in head_channels(ModelConfig(task="pose", m=1, refine_heads=False))
    heads = Heads(pose, in_channels=8, head_conv=16, sigma_floor=9.0)
    out = heads(torch.zeros(2, 8, 5, 7))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, c, 5, 7) for k, c in pose.items()}
    assert torch.all(heads["hm"][-1].bias == -2.19) and torch.all(heads["hps"][-1].bias == 0)


def test_heads_emit_sigma_above_the_models_floor():
    """The floor is fixed when the model is built: sigma leaves the heads as sigma
    (float32), = ELU(0) + 1 + floor for a zero input."""
    torch.manual_seed(0)
    heads = Heads(head_channels(ModelConfig(task="det", m=2, num_classes=1)), 8, 16, sigma_floor=4.0)
    for p in heads["mdn_sigma"].parameters():
        torch.nn.init.zeros_(p)
    out = heads(torch.randn(1, 8, 3, 3))
    assert out["mdn_sigma"].dtype == torch.float32 and torch.all(out["mdn_sigma"] == 5.0)
    nn_out = heads(torch.randn(1, 8, 3, 3) * 1e3)
    assert (nn_out["mdn_sigma"] > 4.0).all()


@pytest.mark.parametrize("task", ["det", "pose"])
def test_shared_mdn_head_splits_one_output_into_the_separate_names(task):
    """--mdn-head shared: one head's output, split in the order mu, sigma, logits, gives
    the same names and shapes as the official separate heads."""
    cfg = ModelConfig(task=task, m=3, num_classes=4, num_joints=17)
    separate = head_channels(cfg)
    shared = head_channels(ModelConfig(task=task, m=3, num_classes=4, num_joints=17, mdn_head="shared"))
    key = md.REGRESSION_KEY[task]
    assert shared["mdn"] == {key: separate[key], "mdn_sigma": 6, "mdn_logits": 3}
    assert key not in shared and "mdn_sigma" not in shared
    torch.manual_seed(0)
    heads, x = Heads(shared, in_channels=8, head_conv=16, sigma_floor=0.0), torch.randn(2, 8, 5, 7)
    out = heads(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, c, 5, 7) for k, c in separate.items()}
    whole = heads["mdn"](x)                                   # the one head, unsplit
    assert torch.equal(out[key], whole[:, :separate[key]])
    assert torch.equal(out["mdn_logits"], whole[:, -3:])
    assert torch.equal(out["mdn_sigma"], md.sigma_activation(whole[:, separate[key]:separate[key] + 6], 0.0))
    assert head_channels(ModelConfig(task=task, m=0, mdn_head="shared")) == head_channels(ModelConfig(task=task, m=0))
    with pytest.raises(ValueError, match="mdn_head"):
        ModelConfig(task=task, mdn_head="light")


def test_official_sigma_floor_per_backbone():
    # official mdn_min_sigma: 1 hourglass det, 2 DLA det, 10 pose (floor = mdn_min_sigma - 1)
    assert default_sigma_floor("det", "hourglass104") == 0.0
    assert default_sigma_floor("det", "dla34") == 1.0
    assert default_sigma_floor("pose", "hourglass104") == default_sigma_floor("pose", "dla34") == 9.0


@pytest.mark.parametrize("bad,match", [(dict(task="seg"), "task"), (dict(m=-1), "--m"),
                                       (dict(arch="resnet"), "unknown arch"), (dict(sigma_floor=-1), "floor")])
def test_model_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**bad)


def test_checkpoint_round_trip_rebuilds_the_model_from_its_own_config(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(task="det", m=2, num_classes=3, sigma_floor=0.5))
    save_checkpoint(tmp_path / "ckpt.pt", model, epoch=4)
    loaded, state = load_model(tmp_path / "ckpt.pt")
    assert loaded.cfg == model.cfg and state["epoch"] == 4 and not loaded.training
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        for name, v in model(x)[-1].items():
            assert torch.equal(v, loaded(x)[-1][name]), name
    assert not list(tmp_path.glob("*.tmp"))


def test_foreign_files_are_one_clear_error(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    torch.save({"kind": "mdn_dense checkpoint", "version": 1}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"garbage.pt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(ValueError, match=r"other.pt: not a checkpoint of this project"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"old.pt: checkpoint version 1"):
        read_checkpoint(tmp_path / "old.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- stored configs
def _stored(path, **edits):
    """A small pose checkpoint as train.py writes it, with edits applied to its stored
    config: {"model_config.m": 100000, "data.flip_idx": [...], ...}."""
    from annotations import COCO_PERSON_KEYPOINTS, COCO_PERSON_SIGMAS, flip_index
    torch.manual_seed(0)
    model = build_model(ModelConfig(task="pose", m=2, num_joints=17))
    data = dict(task="pose", cat_ids=[1], class_names=["person"], keypoint_names=list(COCO_PERSON_KEYPOINTS),
                flip_idx=flip_index(COCO_PERSON_KEYPOINTS), skeleton=[[15, 13], [13, 11], [5, 6]],
                oks_sigmas=COCO_PERSON_SIGMAS.tolist())
    save_checkpoint(path, model, data=data, train_config=dict(input_size=64))
    state = torch.load(path, weights_only=True)
    for key, value in edits.items():
        part, field = key.split(".")
        state[part][field] = value
    torch.save(state, path)
    return path


BAD_STORED = [
    ({"train_config.input_size": -32}, r"train_config.input_size must be a multiple of 32"),
    ({"train_config.input_size": 100}, r"train_config.input_size must be a multiple of 32"),
    ({"data.skeleton": [[0, 17]]}, r"data.skeleton must be 0-based \[i, j\] pairs of joints in 0..16"),
    ({"data.flip_idx": [1, 0] + list(range(2, 16)) + [99]}, r"data.flip_idx must be each of the 17 joints' mirror"),
    ({"data.flip_idx": [1, 2, 0] + list(range(3, 17))}, r"data.flip_idx must be .*flipping twice the identity"),
    ({"data.cat_ids": ["person"]}, r"data.cat_ids must be 1 integer COCO category ids"),
    ({"data.cat_ids": [1, 2]}, r"data.cat_ids must be 1 integer"),
    ({"data.keypoint_names": ["nose"]}, r"data.keypoint_names must be 17 names"),
    ({"data.oks_sigmas": [float("nan")] * 17}, r"data.oks_sigmas must be 17 finite numbers > 0"),
    ({"model_config.sigma_floor": float("nan")}, r"sigma floor must be a finite number >= 0, got nan"),
    ({"model_config.sigma_floor": float("inf")}, r"sigma floor must be a finite number"),
    ({"model_config.m": 100000}, r"--m must be an integer in 0..64, got 100000"),
    ({"model_config.m": 2.5}, r"--m must be an integer in 0..64, got 2.5"),
    ({"model_config.num_joints": 0}, r"num_joints must be an integer in 1..1000"),
    ({"model_config.num_classes": 10 ** 9}, r"num_classes must be an integer in 1..10000"),
]


@pytest.mark.parametrize("case", range(len(BAD_STORED)))
def test_a_stored_config_is_checked_before_the_network_is_built(tmp_path, case, monkeypatch):
    import model as model_module
    edits, message = BAD_STORED[case]
    path = _stored(tmp_path / "ckpt.pt", **edits)

    def never(cfg):
        raise AssertionError("the network was built before the config was checked")
    monkeypatch.setattr(model_module, "build_model", never)
    with pytest.raises(ValueError, match=rf"^{path}: .*{message}"):
        load_model(path)


def test_a_bad_stored_config_is_one_line_in_every_command(tmp_path):
    import evaluate
    import predict
    path = _stored(tmp_path / "ckpt.pt", **{"data.flip_idx": [0] * 17})
    for main, argv in ((predict.main, ["--source", str(tmp_path)]), (evaluate.main, [])):
        with pytest.raises(SystemExit, match=rf"--checkpoint: {path}: stored data.flip_idx must be"):
            main(["--checkpoint", str(path), *argv])
    good = _stored(tmp_path / "good.pt")
    assert load_model(good)[0].cfg.m == 2
    state = torch.load(good, weights_only=True)
    name = next(k for k, t in state["model"].items() if t.is_floating_point())
    state["model"][name][0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=rf"nan.pt: 1 weight tensors hold NaN or inf \(first: {name}\)"):
        load_model(tmp_path / "nan.pt")
