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
