"""Stacked hourglass network (Hourglass-104), the paper's main backbone (§4, Tables 1-3, 7).

The hourglass of Newell et al. ("Stacked Hourglass Networks for Human Pose Estimation",
ECCV 2016) in the large variant of CornerNet (Law & Deng, ECCV 2018) that CenterNet
("Objects as Points") and the paper's code use for detection and pose. This file
replaces CenterNet's `large_hourglass.py`; the numbers follow it:

  stem      7x7 conv stride 2 (3 -> 128), residual stride 2 (128 -> 256): input / 4
  stack     recursive hourglass, depth 5, dims [256, 256, 384, 384, 384, 512],
            residual counts [2, 2, 2, 2, 2, 4]; down by a stride-2 residual (no max-pool),
            up by nearest x2 and a sum with the skip branch
  per stack 3x3 conv-BN-ReLU; model.py puts every head on each stack's features
            (intermediate supervision: the loss averages over stacks, inference reads the last)
  between   relu(1x1 conv-BN(stack input) + 1x1 conv-BN(stack features)), then a residual

About 187.7M backbone parameters. This file is the backbone alone (it imports only
torch); the heads (model.Heads) are added by model.py.

The same code gives small hourglasses for CPU demos (`hourglass_small`): fewer stacks,
lower depth, narrower dims. The input sides must be multiples of 4 * 2**depth
(128 for Hourglass-104) so that every down/up pair restores the exact size.

Shapes: B batch, C channels, H, W input size; each stack returns (B, C, H/4, W/4).
"""
import torch.nn as nn
import torch.nn.functional as F



class ConvBNReLU(nn.Sequential):
    """k x k conv (no bias: BN follows), BN, ReLU. CornerNet's `convolution`."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class Residual(nn.Module):
    """Two 3x3 conv-BN with a (projected, if shape changes) skip: the hourglass's only block.

    With stride 2 it is also the hourglass's downsampling (CornerNet replaced the max-pool
    of Newell et al. by this strided residual).
    """

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                      nn.BatchNorm2d(out_channels))
        else:
            self.skip = nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H/stride, W/stride)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x))


def residuals(in_channels, out_channels, count, stride=1):
    """`count` residuals; the first changes channels and resolution, the rest keep them."""
    return nn.Sequential(Residual(in_channels, out_channels, stride),
                         *[Residual(out_channels, out_channels) for _ in range(count - 1)])


class Hourglass(nn.Module):
    """One hourglass of depth len(dims) - 1, defined recursively as in Newell et al.'s figure.

    At resolution H x W with dims[0] channels: an upper branch keeps the resolution
    (counts[0] residuals); a lower branch halves it (stride-2 residual, dims[0] -> dims[1]),
    runs a smaller hourglass on dims[1:] (or, at the bottom, counts[1] residuals), comes
    back to dims[0] and is upsampled x2; the two branches are summed.
    """

    def __init__(self, dims, counts):
        super().__init__()
        if len(dims) != len(counts) or len(dims) < 2:
            raise ValueError(f"need len(dims) == len(counts) >= 2, got {dims} and {counts}")
        c, c_low = dims[0], dims[1]
        self.upper = residuals(c, c, counts[0])
        self.down = residuals(c, c_low, counts[0], stride=2)
        self.inner = (Hourglass(dims[1:], counts[1:]) if len(dims) > 2
                      else residuals(c_low, c_low, counts[1]))
        # Mirror of `down`: keep c_low for counts[0] - 1 residuals, then go back to c.
        self.up = nn.Sequential(*[Residual(c_low, c_low) for _ in range(counts[0] - 1)],
                                Residual(c_low, c))

    def forward(self, x):
        low = self.up(self.inner(self.down(x)))                  # (B, C, H/2, W/2)
        low = F.interpolate(low, scale_factor=2, mode="nearest")  # (B, C, H, W)
        return self.upper(x) + low


class StackedHourglass(nn.Module):
    """Stem + `stacks` hourglasses: forward(x (B, 3, H, W)) returns a list of `stacks`
    feature maps (B, dims[0], H/4, W/4), the last one for inference.

    dims / counts: per hourglass level, from the stem's resolution down; stem_channels:
    output of the 7x7 conv (default dims[0] // 2, 128 for Hourglass-104).
    """

    stride = 4  # output map = input / 4

    def __init__(self, stacks=2, dims=(256, 256, 384, 384, 384, 512),
                 counts=(2, 2, 2, 2, 2, 4), stem_channels=None):
        super().__init__()
        if stacks < 1:
            raise ValueError(f"need at least one stack, got {stacks}")
        c = dims[0]
        stem_channels = stem_channels or c // 2
        self.depth, self.out_channels, self.stacks = len(dims) - 1, c, stacks
        self.size_multiple = self.stride * 2 ** self.depth  # every level halves once more
        self.stem = nn.Sequential(ConvBNReLU(3, stem_channels, 7, stride=2),
                                  Residual(stem_channels, c, stride=2))
        self.hourglasses = nn.ModuleList(Hourglass(dims, counts) for _ in range(stacks))
        self.features = nn.ModuleList(ConvBNReLU(c, c) for _ in range(stacks))
        # The next stack starts from this stack's input plus its features (CornerNet's form
        # of Newell et al.'s remapping of intermediate predictions): it refines, not restarts.
        self.merge_input = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)) for _ in range(stacks - 1))
        self.merge_features = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)) for _ in range(stacks - 1))
        self.merge_residual = nn.ModuleList(Residual(c, c) for _ in range(stacks - 1))

    def forward(self, x):
        x = self.stem(x)                                          # (B, C, H/4, W/4)
        outputs = []
        for i, hourglass in enumerate(self.hourglasses):
            y = self.features[i](hourglass(x))                   # (B, C, H/4, W/4)
            outputs.append(y)
            if i + 1 < len(self.hourglasses):
                x = F.relu(self.merge_input[i](x) + self.merge_features[i](y))
                x = self.merge_residual[i](x)
        return outputs


def hourglass104():
    """Hourglass-104 of CornerNet / CenterNet: 2 stacks, depth 5; inputs multiple of 128."""
    return StackedHourglass(stacks=2, dims=(256, 256, 384, 384, 384, 512), counts=(2, 2, 2, 2, 2, 4))


def hourglass_small(stacks=2):
    """A real (two-stack, depth-3) hourglass for CPU demos, ~1.8M backbone parameters;
    inputs multiple of 32. stacks=1 halves the time and drops intermediate supervision."""
    return StackedHourglass(stacks=stacks, dims=(32, 48, 64, 96), counts=(1, 1, 1, 2), stem_channels=16)
