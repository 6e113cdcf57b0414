"""The network: a backbone, CenterNet's heads with the mixture heads, and its checkpoint.

One class, MixtureCenterNet, is what train.py, evaluate.py, predict.py, bench.py and the
notebooks build (as nanoGPT's train.py and sample.py both take theirs from model.py):

  backbone   hourglass.py (Hourglass-104, §4) or dla.py (DLA-34, Table 2): stride-4
             features, one map per hourglass stack
  heads      per stack, CenterNet's 3x3 conv + ReLU + 1x1 conv heads hm, reg, wh
             (+ hps, hm_hp, hp_offset for pose) and, for MDN_M, the mixture heads
             mdn_sigma (2M: sigma per component and axis, §3.2 Eq. (4)) and mdn_logits (M)
  sigma      the heads apply §4.2's ELU-plus-one activation with the model's floor, so
             every consumer reads sigma itself and no function downstream takes the floor

ModelConfig is the model's own config: the checkpoint stores it, and loading a model
reads only that. The --m ladder: 0 = the single-mode CenterNet base (L1 regression, no
mixture heads), M >= 1 = MDN_M. Shapes as in mdn_dense.py's legend.
"""
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

import mdn_dense as md
from dla import dla34, dla_small, load_imagenet_weights
from hourglass import hourglass104, hourglass_small
from util.weights import resolve

HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ~= 0.1: the focal loss prior of CornerNet/CenterNet
# name -> (backbone builder, hidden channels of every head, input side multiple): the
# paper's two networks and their CPU-demo versions (same code, narrower).
ARCHS = {"hourglass104": (hourglass104, 256, 128), "dla34": (dla34, 256, 32),
         "small_hourglass": (hourglass_small, 64, 32), "small_dla": (dla_small, 64, 32)}
# Backbones with ImageNet weights to start from (the official code's pretrained=True; the
# hourglass tables train from scratch). Their normalisation: RGB / 255 with ImageNet's mean
# (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
IMAGENET_ARCHS = ("dla34",)
CHECKPOINT_KIND, CHECKPOINT_VERSION = "mdn_dense checkpoint", 2
# Bounds checked before a network is built: a config (a corrupted or hand-edited checkpoint)
# asking for more would allocate gigabytes before failing. The paper uses M <= 5.
MAX_COMPONENTS, MAX_CLASSES, MAX_JOINTS = 64, 10_000, 1_000


def default_sigma_floor(task, arch):
    """The official floor (mdn_min_sigma - 1, §4.2): 9 for pose; for detection 0 on
    Hourglass-104 (mdn_min_sigma 1) and 1 on DLA-34 (mdn_min_sigma 2, the paper's 'minimum
    value one'). The CPU demos use 1 for detection, as DLA-34."""
    if task == "pose":
        return 9.0
    return 0.0 if arch == "hourglass104" else 1.0


@dataclass
class ModelConfig:
    """What the network is; stored in every checkpoint."""
    task: str = "pose"            # det | pose
    m: int = 3                    # 0 = L1 base, M >= 1 = MDN_M
    arch: str = "small_dla"       # a key of ARCHS
    num_classes: int = 1          # C of the centre heatmap
    num_joints: int = 17          # K (pose)
    sigma_floor: float = 9.0      # sigma > floor (§4.2)
    mdn_head: str = "separate"    # separate (the paper's) | shared (one hidden layer)
    refine_heads: bool = True     # pose: hm_hp and hp_offset heads (CenterNet's refinement)
    backbone_weights: str = ""    # the ImageNet weights the backbone started from ("" = from scratch)

    def __post_init__(self):
        if self.task not in md.REGRESSION_KEY:
            raise ValueError(f"task must be 'det' or 'pose', got {self.task!r}")
        for name, top in (("m", MAX_COMPONENTS), ("num_classes", MAX_CLASSES), ("num_joints", MAX_JOINTS)):
            value, low = getattr(self, name), 0 if name == "m" else 1
            if type(value) is not int or not low <= value <= top:
                raise ValueError(f"{'--m' if name == 'm' else name} must be an integer in {low}..{top}, got {value!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if not isinstance(self.sigma_floor, (int, float)) or not math.isfinite(self.sigma_floor) \
                or self.sigma_floor < 0:
            raise ValueError(f"sigma floor must be a finite number >= 0, got {self.sigma_floor!r}")
        if self.mdn_head not in ("separate", "shared"):
            raise ValueError(f"mdn_head must be 'separate' or 'shared', got {self.mdn_head!r}")
        if self.backbone_weights and self.arch not in IMAGENET_ARCHS:
            raise ValueError(f"--backbone-weights: {self.arch} has no ImageNet weights "
                             f"(only {', '.join(IMAGENET_ARCHS)}); it trains from scratch")


def head_channels(cfg):
    """Head name -> output channels for a ModelConfig. Names follow CenterNet: hm, reg,
    wh, hps, hm_hp, hp_offset. mdn_head "shared" (not the paper's) groups the mixture's
    three heads under "mdn": {name: channels}, one head whose hidden layer feeds all three."""
    M = max(cfg.m, 1)
    if cfg.task == "det":
        heads = {"hm": cfg.num_classes, "reg": 2, "wh": 2 * M}
    else:
        heads = {"hm": 1, "reg": 2, "wh": 2, "hps": 2 * cfg.num_joints * M}
        if cfg.refine_heads:
            heads.update(hm_hp=cfg.num_joints, hp_offset=2)
    if cfg.m >= 1:
        heads.update(mdn_sigma=2 * cfg.m, mdn_logits=cfg.m)
        if cfg.mdn_head == "shared":
            heads["mdn"] = {k: heads.pop(k) for k in (md.REGRESSION_KEY[cfg.task], "mdn_sigma", "mdn_logits")}
    return heads


class Head(nn.Sequential):
    """3x3 conv + ReLU + 1x1 conv, as every CenterNet head."""

    def __init__(self, in_channels, out_channels, head_conv=256, prior_bias=None):
        super().__init__(nn.Conv2d(in_channels, head_conv, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(head_conv, out_channels, 1))
        if prior_bias is None:
            nn.init.zeros_(self[-1].bias)  # CenterNet's fill_fc_weights for non-heatmap heads
        else:
            nn.init.constant_(self[-1].bias, prior_bias)


class Heads(nn.ModuleDict):
    """All heads on one feature map: forward(x (B, in, H, W)) -> {name: (B, ch, H, W)}.

    A group {name: ch} is one head whose output channels are split among its names, so
    the rest of the code sees the same outputs whichever mdn_head built them. mdn_sigma
    leaves as sigma itself (float32: in bf16 a sigma near 10 would keep 3 significant digits).
    """

    def __init__(self, heads, in_channels, head_conv, sigma_floor):
        width = lambda ch: sum(ch.values()) if isinstance(ch, dict) else ch
        super().__init__({name: Head(in_channels, width(ch), head_conv,
                                     HEATMAP_PRIOR_BIAS if name in ("hm", "hm_hp") else None)
                          for name, ch in heads.items()})
        self.groups = {name: ch for name, ch in heads.items() if isinstance(ch, dict)}
        self.sigma_floor = sigma_floor

    def forward(self, x):
        out = {}
        for name, head in self.items():
            hidden = head[1](head[0](x))                               # (B, head_conv, H, W)
            # The last 1x1 conv in float32 even under bf16 autocast: the joint offsets feed
            # the NLL with per-joint stds of a fraction of a pixel (sigma * k_j), and bf16
            # keeps 8 bits of an offset of ~30 px (steps of 0.125 px).
            with torch.autocast(x.device.type, enabled=False):
                y = head[2](hidden.float())                            # (B, ch, H, W)
            if name in self.groups:
                out.update(zip(self.groups[name], y.split(list(self.groups[name].values()), 1)))
            else:
                out[name] = y
        if "mdn_sigma" in out:
            out["mdn_sigma"] = md.sigma_activation(out["mdn_sigma"].float(), self.sigma_floor)  # §4.2
        return out


class MixtureCenterNet(nn.Module):
    """Backbone + heads on every stack: forward(x (B, 3, H, W)) -> a list with one dict of
    outputs (B, ch, H/4, W/4) per stack (the last one is the prediction)."""

    stride = 4  # output map = input / 4

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        build, head_conv, self.size_multiple = ARCHS[cfg.arch]
        self.backbone = build()
        assert self.backbone.size_multiple == self.size_multiple, cfg.arch
        self.heads = nn.ModuleList(Heads(head_channels(cfg), self.backbone.out_channels, head_conv,
                                         cfg.sigma_floor)
                                   for _ in range(self.backbone.stacks))

    def forward(self, x):
        check_input(x, self.size_multiple)
        return [heads(f) for heads, f in zip(self.heads, self.backbone(x))]

    def backbone_parameters(self):
        """Parameters outside the heads (what the 187.7M of Hourglass-104 counts)."""
        return list(self.backbone.parameters())


def check_input(x, multiple):
    """Raise a ValueError unless x is (B, 3, H, W) with H, W multiples of `multiple` (the
    backbones' requirement for an exact stride-4 output)."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"input of shape {tuple(x.shape)}: expected (B, 3, H, W) with H and W "
                         f"multiples of {multiple}")


def build_model(cfg):
    """ModelConfig -> MixtureCenterNet, freshly initialised (cfg.backbone_weights records
    how a run started; load_backbone_weights applies it, so a checkpoint loads without the file)."""
    return MixtureCenterNet(cfg)


def load_backbone_weights(model):
    """Load the ImageNet weights that model.cfg.backbone_weights names (a file or a hub name
    such as timm/dla34.in1k) into the backbone. Returns (the local file, tensors loaded)."""
    path = resolve(model.cfg.backbone_weights)
    return path, load_imagenet_weights(model.backbone.base, path)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, **extra):
    """The model's config and weights plus anything the caller adds (optimiser, history),
    with a kind and version so that loading anything else fails with one clear line.
    Written to a temporary file and renamed: a crash leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {"kind": CHECKPOINT_KIND, "version": CHECKPOINT_VERSION,
             "model_config": dataclasses.asdict(model.cfg), "model": model.state_dict(), **extra}
    try:
        torch.save(state, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path):
    """A checkpoint written by save_checkpoint, as a dict (on the CPU). Anything else, an
    older version included, is a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch's own errors: all mean "not ours"
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path}: not a checkpoint of this project (no kind {CHECKPOINT_KIND!r})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')}, this code reads "
                         f"version {CHECKPOINT_VERSION} (older runs must be retrained)")
    return state


def model_config_of(stored):
    """A stored model config dict -> ModelConfig; a field this code does not know is an error."""
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ValueError(f"model config has fields this model.py does not know: {', '.join(unknown)} "
                         f"(written by a newer version?)")
    return ModelConfig(**stored)


def check_stored(state, cfg):
    """What predict.py, evaluate.py and export.py read from a checkpoint besides the weights,
    checked against its ModelConfig cfg: the training input size, and the data's names
    (category ids, class names; pose: keypoint names, skeleton, flip_idx, OKS sigmas).
    Raises ValueError naming the field."""
    size = state.get("train_config", {}).get("input_size")
    multiple = ARCHS[cfg.arch][2]
    if size is not None and not (type(size) is int and 0 < size <= 8192 and size % multiple == 0):
        raise ValueError(f"stored train_config.input_size must be a multiple of {multiple} in "
                         f"{multiple}..8192 for {cfg.arch}, got {size!r}")
    data = state.get("data")
    if data is None:
        return
    ints = lambda v, n, top=None: (isinstance(v, list) and len(v) == n and all(
        type(i) is int and (top is None or 0 <= i < top) for i in v))
    names = lambda v, n: isinstance(v, list) and len(v) == n and all(isinstance(x, str) for x in v)
    K = cfg.num_joints
    checks = [("cat_ids", ints(data.get("cat_ids"), cfg.num_classes), f"{cfg.num_classes} integer COCO category ids"),
              ("class_names", names(data.get("class_names"), cfg.num_classes), f"{cfg.num_classes} names")]
    if cfg.task == "pose":
        flip, sigmas, skeleton = data.get("flip_idx"), data.get("oks_sigmas"), data.get("skeleton", [])
        checks += [("keypoint_names", names(data.get("keypoint_names"), K), f"{K} names"),
                   ("flip_idx", ints(flip, K, K) and all(flip[j] == i for i, j in enumerate(flip)),
                    f"each of the {K} joints' mirror joint in 0..{K - 1}, flipping twice the identity"),
                   ("skeleton", isinstance(skeleton, list) and all(ints(e, 2, K) for e in skeleton),
                    f"0-based [i, j] pairs of joints in 0..{K - 1}"),
                   ("oks_sigmas", sigmas is None or (isinstance(sigmas, list) and len(sigmas) == K and all(
                       isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in sigmas)),
                    f"{K} finite numbers > 0")]
    for field, ok, rule in checks:
        if not ok:
            raise ValueError(f"stored data.{field} must be {rule}, got {data.get(field)!r}")


def load_model(path, device="cpu"):
    """(model in eval mode on device, the checkpoint dict) from a checkpoint file, its stored
    config checked (ModelConfig, check_stored) before the network is built."""
    state = read_checkpoint(path)
    try:
        cfg = model_config_of(state["model_config"])
        check_stored(state, cfg)
        bad = [k for k, t in state["model"].items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:   # NaN scores would reach predictions.json as NaN, which is not JSON
            raise ValueError(f"{len(bad)} weight tensors hold NaN or inf (first: {', '.join(bad[:3])})")
        model = build_model(cfg)
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), state
