"""util/ema.py and train.py --ema: the average's arithmetic, and that a run evaluates, saves and
resumes the average (the checkpoint's "model") apart from the trained weights."""
import pytest
import torch

import evaluate
import train
from synthetic_coco import make_dataset
from util.ema import WeightAverage


def test_update_is_the_ramped_exponential_average():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(net, decay=0.9)
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked += 5
    avg.update(net)
    d = 2 / 11                                   # the ramp's first decay, below 0.9
    assert torch.allclose(avg.model[0].weight, d * w0 + (1 - d) * net[0].weight)
    assert avg.model[1].num_batches_tracked == 5  # integer buffers are copied, not averaged
    for _ in range(200):                          # the ramp ends at the decay: a fixed point
        avg.update(net)
    assert torch.allclose(avg.model[0].weight, net[0].weight, atol=1e-6)
    assert not avg.model[0].weight.requires_grad and not avg.model.training


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(torch.nn.Linear(1, 1), decay)


@pytest.fixture(scope="module")
def tiny_pose(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), "pose", "train", 16)


def args_for(data, out, *extra):
    ann, images = data
    return ["--task", "pose", "--m", "2", "--ann", ann, "--images", images, "--arch", "small_dla", "--ema", "0.5",
            "--batch-size", "8", "--input-size", "64", "--lr-steps", "--out", str(out), *extra]


def test_a_run_evaluates_saves_and_resumes_the_average(tiny_pose, tmp_path):
    full = train.main(args_for(tiny_pose, tmp_path / "a", "--epochs", "2"))
    ckpt = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    assert ckpt["train_config"]["ema"] == 0.5 and ckpt["ema"]["updates"] == 4   # 2 epochs of 2 steps
    name = next(k for k, v in ckpt["model"].items() if v.dtype.is_floating_point and v.dim() == 4)
    assert not torch.equal(ckpt["model"][name], ckpt["train_model"][name])       # the average, not the last
    again = evaluate.main(["--checkpoint", str(tmp_path / "a" / "ckpt.pt"), "--ann", tiny_pose[0],
                           "--images", tiny_pose[1], "--out", str(tmp_path / "eval")])
    assert again["All"] == pytest.approx(full["All"])                             # evaluate.py reads the average
    train.main(args_for(tiny_pose, tmp_path / "b", "--epochs", "1"))
    train.main(args_for(tiny_pose, tmp_path / "b", "--epochs", "2", "--resume"))
    b = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    for key in ("model", "train_model"):
        for k, v in ckpt[key].items():
            assert torch.equal(v, b[key][k]), (key, k)
