"""--backbone-weights: DLA-34 from ImageNet weights (the official code's pretrained=True, §4).

Nothing is downloaded: the files are random tensors in timm's dla34 layout (the fixture
read from timm itself) and in the official dla34-ba72cf86.pth layout, which has two
more, unused, `project` layers. A file that does not fit is a one-line error naming it."""
import json
import sys
from pathlib import Path

import pytest
import torch

import train
from dla import DLA, load_imagenet_weights
from model import ModelConfig, build_model, load_backbone_weights, load_model
from synthetic_coco import make_dataset
from util import weights as uw

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT.parent / "shared" / "fixtures" / "timm_dla34_layout.json"
# The official file's unused projections of the two-level trees (conv + BN): level3 64 -> 128,
# level4 128 -> 256 (the channels of DLA-34's levels 2-4).
OFFICIAL_EXTRA = {f"level{i}.project.{k}": shape for i, (cin, cout) in ((3, (64, 128)), (4, (128, 256)))
                  for k, shape in (("0.weight", (cout, cin, 1, 1)), ("1.weight", (cout,)), ("1.bias", (cout,)),
                                   ("1.running_mean", (cout,)), ("1.running_var", (cout,)))}


def timm_state(seed=0):
    """Random tensors with the names, dtypes and shapes timm's dla34 state dict has."""
    if not LAYOUT.is_file():
        pytest.skip(f"{LAYOUT} is absent (the shared fixtures are not checked out beside the repo)")
    layout = json.loads(LAYOUT.read_text())["tensors"]
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(shape, generator=g) if dtype == "float32" else torch.randint(0, 100, shape, generator=g))
            for k, (dtype, shape) in layout.items()}


def assert_loaded(backbone, state):
    own = backbone.state_dict()
    loaded = [k for k in state if k in own]
    assert set(own) - set(loaded) <= {k for k in own if k.endswith("num_batches_tracked")}, "missing keys"
    for k in loaded:
        assert torch.equal(own[k], state[k]), k


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_timm_layout_loads_with_no_missing_key(tmp_path, fmt):
    state = timm_state()
    if fmt == "safetensors":
        save_file = pytest.importorskip("safetensors.torch", reason="pip install -r requirements-hub.txt").save_file
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save(state, path)
    backbone = DLA()
    assert load_imagenet_weights(backbone, path) == len(state) - 2   # all but the classifier fc
    assert_loaded(backbone, state)


def test_official_layout_loads_with_its_unused_projections(tmp_path):
    state = {k: v for k, v in timm_state(1).items() if not k.endswith("num_batches_tracked")}  # an old file
    g = torch.Generator().manual_seed(2)
    state.update({k: torch.randn(shape, generator=g) for k, shape in OFFICIAL_EXTRA.items()})
    torch.save(state, tmp_path / "dla34-ba72cf86.pth")
    model = build_model(ModelConfig(task="det", m=3, arch="dla34", backbone_weights=str(tmp_path / "dla34-ba72cf86.pth")))
    path, n = load_backbone_weights(model)
    assert path == tmp_path / "dla34-ba72cf86.pth" and n == len(state) - 2 - len(OFFICIAL_EXTRA)
    assert_loaded(model.backbone.base, state)


def test_a_file_that_does_not_fit_is_one_line_naming_it(tmp_path):
    state = timm_state()
    state["level5.root.conv.weight"] = torch.zeros(512, 1, 1, 1)   # another network's shape
    del state["level2.root.conv.weight"]
    torch.save(state, tmp_path / "dla60.bin")
    (tmp_path / "notes.json").write_text("{}")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"kind": "mdn_dense checkpoint", "model_config": {}, "model": {}}, ckpt)
    for path, words in [(tmp_path / "dla60.bin", ["missing keys: ['level2.root.conv.weight']",
                                                  "level5.root.conv.weight: file (512, 1, 1, 1) vs model (512, 1280, 1, 1)"]),
                        (tmp_path / "notes.json", ["not a readable weights file"]),
                        (ckpt, ["use --init"])]:
        with pytest.raises(ValueError) as err:
            load_imagenet_weights(DLA(), path)
        msg = str(err.value)
        assert msg.startswith(str(path)) and "\n" not in msg, msg
        for w in words:
            assert w in msg, msg


def test_hub_name_offline_or_without_the_client_says_what_to_download(monkeypatch):
    assert uw.is_hub_name("timm/dla34.in1k") and not uw.is_hub_name("weights/dla34.pth")
    url = "https://huggingface.co/timm/dla34.in1k/resolve/main/model.safetensors"
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)    # the optional extra not installed
    with pytest.raises(RuntimeError) as err:
        uw.resolve("timm/dla34.in1k")
    assert "requirements-hub.txt" in str(err.value) and url in str(err.value) and "\n" not in str(err.value)
    monkeypatch.delitem(sys.modules, "huggingface_hub")
    hub = pytest.importorskip("huggingface_hub", reason="pip install -r requirements-hub.txt")

    def offline(repo_id, filename, **_):
        raise ConnectionError("no network")
    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(RuntimeError) as err:
        uw.resolve("timm/dla34.in1k")
    assert "could not fetch timm/dla34.in1k (ConnectionError)" in str(err.value) and url in str(err.value)
    assert "\n" not in str(err.value)


def test_flag_is_checked_before_any_work(tmp_path):
    data = ["--task", "det", "--ann", "a.json", "--images", "img"]
    weights = tmp_path / "dla34.pth"          # a file that exists without ../shared: the arch is refused first
    weights.write_bytes(b"")
    for extra, words in [(["--arch", "small_dla", "--backbone-weights", str(weights)], "small_dla has no ImageNet weights"),
                         (["--arch", "dla34", "--backbone-weights", str(tmp_path / "none.pth")], "none.pth: no such file"),
                         (["--arch", "dla34", "--backbone-weights", "timm/dla34.in1k", "--init", "x/ckpt.pt"], "give one")]:
        with pytest.raises(SystemExit, match=words):
            train.config_from_args(train.parse_args(data + extra))


def test_train_starts_from_the_weights_and_the_checkpoint_says_so(tmp_path, capsys):
    state = timm_state(3)
    torch.save(state, tmp_path / "pytorch_model.bin")
    ann, images = make_dataset(tmp_path / "data", "det", "train", 2)
    out = tmp_path / "run"
    flags = ["--task", "det", "--m", "3", "--arch", "dla34", "--ann", ann, "--images", images, "--input-size", "64",
             "--batch-size", "2", "--lr", "1e-4", "--lr-steps", "--out", str(out),
             "--backbone-weights", str(tmp_path / "pytorch_model.bin")]
    train.main(flags + ["--epochs", "1"])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"--backbone-weights {tmp_path / 'pytorch_model.bin'}: 222 ImageNet tensors"), first
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["model_config"]["backbone_weights"] == str(tmp_path / "pytorch_model.bin")
    # One Adam step of lr 1e-4 moves each weight by about 1e-4: the trained backbone is
    # still the file's, far from a fresh initialisation (the random file values are N(0, 1)).
    for k in ("base_layer.0.weight", "level3.tree1.tree1.conv1.weight", "level5.root.conv.weight"):
        trained = ckpt["model"][f"backbone.base.{k}"]
        assert (trained - state[k]).abs().max() < 1e-3, k
    # The checkpoint carries the weights: evaluation and --resume need the file no more.
    (tmp_path / "pytorch_model.bin").unlink()
    model, _ = load_model(out / "ckpt.pt")
    assert model.cfg.backbone_weights == str(tmp_path / "pytorch_model.bin")
    with pytest.raises(SystemExit, match="backbone_weights"):     # another start is another model
        train.main(flags[:-2] + ["--epochs", "2", "--resume"])
    train.main(flags + ["--epochs", "2", "--resume"])
    assert torch.load(out / "ckpt.pt", weights_only=True)["epoch"] == 1
