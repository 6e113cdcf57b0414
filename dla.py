"""DLA-34 with an up-sampling neck, the paper's second detection backbone (§4, Table 2).

Deep Layer Aggregation (Yu, Wang, Shelhamer & Darrell, CVPR 2018): a ResNet-like
ImageNet network whose stages are trees of BasicBlocks merged by aggregation nodes
("roots"), with levels [1, 1, 1, 2, 2, 1] and channels [16, 32, 64, 128, 256, 512]
for DLA-34 (strides 1, 2, 4, 8, 16, 32). CenterNet ("Objects as Points") adds a neck
that brings stride 32 back to stride 4 with 64 channels: DLAUp (iterative deep
aggregation from the coarsest level down) followed by one more IDAUp over strides
4, 8, 16. This file replaces CenterNet's `pose_dla_dcn.py`.

How it differs from CenterNet's networks:
  * pose_dla_dcn.py (the official model, ~20M parameters with its unused 1000-way
    classifier): every projection / aggregation node of the neck is a 3x3 *modulated
    deformable* conv (DCNv2, a CUDA extension) + BN + ReLU. Here it is a plain 3x3 conv
    (no bias, BN follows) + BN + ReLU: no offset/mask branch, nothing to compile, runs on
    CPU, exports to ONNX. The topology is the same: DLAUp then IDAUp, nodes merge by
    sum, upsampling by learned depthwise transposed convs initialised to bilinear.
    Not built: the classifier, and the `project` conv of each two-level tree, whose
    output the official code computes and never uses (its sub-tree projects again).
  * dlav0.py (CenterNet's plain-conv variant): projects with 1x1 convs (identity when
    the channels match), merges by concatenation and a 3x3 conv over 2C channels, and
    has no final IDAUp (the heads read DLAUp's output). This file keeps the DCN model's
    neck and only swaps the convolution.

`width` scales every channel count, so the small CPU-demo network (`dla_small`) is
the same code. Input sides must be multiples of 32 (five stride-2 steps).

Shapes: B batch, C channels, H, W input size; the output is (B, 64 * width, H/4, W/4).
This file is the backbone alone (torch, and util/weights.py to read weight files); model.py adds the heads.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from util.weights import read_state_dict


LEVELS = (1, 1, 1, 2, 2, 1)
CHANNELS = (16, 32, 64, 128, 256, 512)


class StemBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters, same state_dict keys) that normalises a CPU
    channels_last map of at most 8 channels in the contiguous layout. PyTorch's CPU
    channels_last kernel is slow and inexact there: on `dla_small`'s full-resolution stem
    (16 x 4 x 128 x 128, 2 threads, torch 2.13) forward + backward takes 2-3x as long as
    with the two layout copies to the contiguous kernel, and its output is 1.3e-4 from a
    float64 batch norm against 4e-7 (16 x 8 x 64 x 64: the same time, 9e-6 against 8e-7;
    `python -m checks.stem_norm`). From 16 channels on channels_last is faster; DLA-34's
    narrowest map has 16 channels, so only the small network's first three layers take this
    path."""

    def forward(self, x):
        if (x.device.type == "cpu" and x.dim() == 4 and x.shape[1] <= 8 and not x.is_contiguous()
                and x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def conv_bn_relu(in_channels, out_channels, kernel_size=3, stride=1):
    """conv (no bias: BN follows), BN, ReLU as a flat Sequential (keys 0, 1 as in the
    ImageNet checkpoint)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        StemBatchNorm2d(out_channels), nn.ReLU(inplace=True))


def conv_level(in_channels, out_channels, convs, stride=1):
    """`convs` 3x3 conv-BN-ReLU, the first one strided, in one flat Sequential."""
    layers = []
    for i in range(convs):
        layers += conv_bn_relu(in_channels if i == 0 else out_channels, out_channels,
                               stride=stride if i == 0 else 1)
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block. The residual comes from outside when the tree has projected it."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x, residual=None):
        residual = x if residual is None else residual
        y = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H/stride, W/stride)
        y = self.bn2(self.conv2(y))
        return F.relu(y + residual)


class Root(nn.Module):
    """Aggregation node: 1x1 conv-BN-ReLU over the concatenated children."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, *children):
        return F.relu(self.bn(self.conv(torch.cat(children, 1))))  # (B, C_out, H, W)


class Tree(nn.Module):
    """Hierarchical deep aggregation (HDA) of the DLA paper, defined recursively.

    A tree of `levels` 1 is two blocks merged by a root. A deeper tree is two sub-trees,
    and the root of its last sub-tree also receives the first one's output: every
    intermediate result reaches an aggregation node. `level_root`: the stage's
    (downsampled) input is aggregated too. `root_channels` counts what reaches the root
    from above (the caller's extra children).
    """

    def __init__(self, levels, in_channels, out_channels, stride=1, level_root=False,
                 root_channels=0):
        super().__init__()
        self.levels, self.level_root = levels, level_root
        root_channels = root_channels or 2 * out_channels
        if level_root:
            root_channels += in_channels
        self.downsample = nn.MaxPool2d(stride, stride) if stride > 1 else nn.Identity()
        if levels == 1:
            self.tree1 = BasicBlock(in_channels, out_channels, stride)
            self.tree2 = BasicBlock(out_channels, out_channels)
            self.root = Root(root_channels, out_channels)
            # The first block's residual: the pooled input, projected when channels change.
            if in_channels != out_channels:
                self.project = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                             nn.BatchNorm2d(out_channels))
            else:
                self.project = nn.Identity()
        else:
            self.tree1 = Tree(levels - 1, in_channels, out_channels, stride)
            self.tree2 = Tree(levels - 1, out_channels, out_channels,
                              root_channels=root_channels + out_channels)

    def forward(self, x, children=()):
        children = list(children)
        bottom = self.downsample(x)                             # (B, C_in, H/s, W/s)
        if self.level_root:
            children.append(bottom)
        if self.levels == 1:
            x1 = self.tree1(x, self.project(bottom))            # (B, C_out, H/s, W/s)
            x2 = self.tree2(x1)
            return self.root(x2, x1, *children)
        x1 = self.tree1(x)                                      # (B, C_out, H/s, W/s)
        return self.tree2(x1, children + [x1])


class DLA(nn.Module):
    """The DLA ImageNet backbone without its classifier: forward(x (B, 3, H, W)) returns
    the six levels, level i with channels[i] at stride 2**i. Parameter names match the
    official ImageNet checkpoint (see load_imagenet_weights)."""

    def __init__(self, levels=LEVELS, channels=CHANNELS):
        super().__init__()
        self.channels = list(channels)
        self.base_layer = conv_bn_relu(3, channels[0], 7)
        self.level0 = conv_level(channels[0], channels[0], levels[0])
        self.level1 = conv_level(channels[0], channels[1], levels[1], stride=2)
        self.level2 = Tree(levels[2], channels[1], channels[2], 2, level_root=False)
        self.level3 = Tree(levels[3], channels[2], channels[3], 2, level_root=True)
        self.level4 = Tree(levels[4], channels[3], channels[4], 2, level_root=True)
        self.level5 = Tree(levels[5], channels[4], channels[5], 2, level_root=True)

    def forward(self, x):
        x = self.base_layer(x)                                  # (B, C0, H, W)
        features = []
        for level in (self.level0, self.level1, self.level2, self.level3, self.level4, self.level5):
            x = level(x)                                        # (B, C_i, H / 2**i, W / 2**i)
            features.append(x)
        return features


def bilinear_(up):
    """Set a depthwise ConvTranspose2d (kernel 2f, stride f) to bilinear x f upsampling."""
    k = up.kernel_size[0]
    f = math.ceil(k / 2)
    centre = (2 * f - 1 - f % 2) / (2 * f)
    t = 1 - (torch.arange(k, dtype=torch.float32) / f - centre).abs()
    with torch.no_grad():
        up.weight.copy_((t[:, None] * t[None, :]).expand_as(up.weight))


class IDAUp(nn.Module):
    """Iterative deep aggregation (IDA): fold coarser maps one by one into the finest.

    forward(layers): layers[0] (B, C, H, W); layers[i] has in_channels[i-1] channels at
    H / up_factors[i-1]. Each one is projected to C (3x3 conv-BN-ReLU; DCN in the
    official model), upsampled, added to the running result and passed through a node
    (3x3 conv-BN-ReLU). Returns the running results, each (B, C, H, W).
    """

    def __init__(self, channels, in_channels, up_factors):
        super().__init__()
        self.proj = nn.ModuleList(conv_bn_relu(c, channels) for c in in_channels)
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels, channels, 2 * f, stride=f, padding=f // 2,
                                                   groups=channels, bias=False) for f in up_factors)
        for up in self.up:
            bilinear_(up)
        self.node = nn.ModuleList(conv_bn_relu(channels, channels) for _ in in_channels)

    def forward(self, layers):
        x, outs = layers[0], []
        for layer, proj, up, node in zip(layers[1:], self.proj, self.up, self.node):
            x = node(up(proj(layer)) + x)                      # (B, C, H, W)
            outs.append(x)
        return outs


class DLAUp(nn.Module):
    """Bring levels [2, 5] back to stride 4 by IDAs from the coarsest pair downwards.

    Step i aggregates level 4 - i (its own channels and stride) with the i + 1 maps that
    the previous step left at level 5 - i, each upsampled x2. forward(features at
    strides 4, 8, 16, 32) returns the last map of each step, finest first:
    [(B, c2, H/4, W/4), (B, c3, H/8, W/8), (B, c4, H/16, W/16), (B, c5, H/32, W/32)].
    """

    def __init__(self, channels):
        super().__init__()
        n = len(channels)
        self.idas = nn.ModuleList(IDAUp(channels[n - 2 - i], [channels[n - 1 - i]] * (i + 1), [2] * (i + 1))
                                  for i in range(n - 1))

    def forward(self, features):
        features = list(features)
        outs = [features[-1]]
        for i, ida in enumerate(self.idas):
            j = len(features) - 2 - i
            features[j + 1:] = ida(features[j:])
            outs.insert(0, features[-1])
        return outs


class DLANet(nn.Module):
    """DLA backbone + DLAUp + IDAUp: forward(x (B, 3, H, W)) returns a one-element list
    [(B, out_channels, H/4, W/4)], like the hourglass's list of stacks."""

    stride = 4
    size_multiple = 32
    stacks = 1

    def __init__(self, width=1.0, levels=LEVELS):
        super().__init__()
        channels = [max(1, round(c * width)) for c in CHANNELS]
        self.base = DLA(levels, channels)
        self.dla_up = DLAUp(channels[2:])
        self.ida_up = IDAUp(channels[2], channels[3:5], [2, 4])
        self.out_channels = channels[2]

    def forward(self, x):
        features = self.base(x)[2:]                             # strides 4, 8, 16, 32
        up = self.dla_up(features)                              # strides 4, 8, 16, 32
        y = self.ida_up(up[:3])[-1]                             # (B, c2, H/4, W/4)
        return [y]


def load_imagenet_weights(backbone, path):
    """Load DLA ImageNet weights into a DLA backbone, strictly: the official
    dla34-ba72cf86.pth, timm's dla34.in1k (model.safetensors or pytorch_model.bin) or any
    file with the same keys. A file that does not fit is a one-line ValueError naming it,
    with the missing keys, unexpected keys and shape mismatches. Ignored on purpose: the
    classifier `fc.*` and the unused `project` of two-level trees (in the official file,
    not built here nor in timm). BN `num_batches_tracked` may be absent. Returns the number
    of tensors loaded."""
    state = read_state_dict(path)
    dead = tuple(f"{name}.project." for name, m in backbone.named_modules()
                 if isinstance(m, Tree) and m.levels > 1)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.",) + dead)}
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        few = lambda keys: keys if len(keys) <= 4 else keys[:4] + [f"... {len(keys) - 4} more"]
        raise ValueError(f"{path} does not fit the DLA-34 backbone (ImageNet weights need width 1): "
                         f"missing keys: {few(missing)}; unexpected keys: {few(unexpected)}; "
                         f"shape mismatches: {few(mismatched)}")
    backbone.load_state_dict(state, strict=False)  # strictness checked above
    return len(state)


def dla34(width=1.0, weights=None):
    """DLA-34 with CenterNet's neck (plain convs). weights: optional path to ImageNet
    weights for the backbone (see load_imagenet_weights; the official download URL is
    dead, timm keeps the same weights as dla34.in1k; train.py's --backbone-weights)."""
    model = DLANet(width=width)
    if weights is not None:
        load_imagenet_weights(model.base, weights)
    return model


def dla_small(width=0.25):
    """The same DLA-34 at a quarter of the width, for CPU demos (16 channels at stride 4)."""
    return dla34(width=width)
