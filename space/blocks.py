"""The residual blocks, one class per block family, and the layers they share.

``BLOCKS`` maps a genotype's block name to its class (timm's byobnet style): each class takes
``(c_in, c_out, stride, stage, layers)``, where ``stage`` is the genotype's ``Stage`` (kernel,
expansion, squeeze-excitation, dropout) and ``layers`` the genotype-wide choices (norm,
activation, shortcut). ``space.builder`` composes them into a network; ``space._budget`` counts
them in closed form and must change with them.

Conventions: a convolution followed by a norm has no bias (BatchNorm would cancel it); one with
no norm after it has one (the 1x1 MLP of convnext, squeeze-excitation). Shapes are (N, C, H, W);
every op works on either memory layout (contiguous or channels_last).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from space.genotype import Activation, Norm, Shortcut, Stage

LAYER_SCALE_INIT = 1e-6  # ConvNeXt's: each convnext block starts as (almost) the identity


# -- shared layers ------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels at each pixel ("channels-first", as in ConvNeXt).

    Permuted to (N, H, W, C) for ``F.layer_norm`` and back: on a channels_last tensor both
    permutes are free views, on a contiguous one the norm makes its own copy.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class Layers:
    """The genotype-wide layer choices every block is built with."""

    norm: Norm = "batch"
    activation: Activation = "relu"
    shortcut: Shortcut = "conv_bn"

    def make_norm(self, channels: int) -> nn.Module:
        """2 x ``channels`` parameters either way (scale and shift)."""
        if self.norm == "batch":
            return nn.BatchNorm2d(channels)
        return LayerNorm2d(channels)

    def make_act(self, *, inplace: bool = False) -> nn.Module:
        if self.activation == "gelu":
            return nn.GELU()  # has no in-place form
        return _ACTIVATIONS[self.activation](inplace=inplace)


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, *, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution padded by ``kernel // 2``: output side ceil(side / stride)."""
    return nn.Conv2d(
        c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False
    )


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return conv(c_in, c_out, 3, stride)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


def make_shortcut(layers: Layers, c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity when the shape is kept, else the genotype's projection (the "bn" of its name is
    the genotype's norm)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if layers.shortcut == "conv_bn":
        return nn.Sequential(conv1x1(c_in, c_out, stride), layers.make_norm(c_out))
    if layers.shortcut == "conv":
        return conv1x1(c_in, c_out, stride)
    # ResNet-D: average 2x2 windows instead of skipping 3 of every 4 pixels with a strided 1x1.
    pool = (
        nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
        if stride > 1
        else nn.Identity()
    )
    return nn.Sequential(pool, conv1x1(c_in, c_out), layers.make_norm(c_out))


def se_width(width: int, ratio: float) -> int:
    """Channels squeeze-excitation squeezes to, in a block of output width ``width``."""
    return max(1, int(width * ratio))


class SqueezeExcite(nn.Module):
    """Scale each channel by a gate from the global average (Hu et al. 2018): mean over H, W,
    1x1 conv down to ``squeezed``, activation, 1x1 conv back up, sigmoid. Both convs have a
    bias; the gate costs 2 x channels x squeezed + squeezed + channels parameters."""

    def __init__(self, channels: int, squeezed: int, layers: Layers) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = layers.make_act()
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True))))  # (N, C, 1, 1)
        return x * torch.sigmoid(gate)


def make_se(channels: int, stage: Stage, layers: Layers) -> nn.Module:
    if not stage.se:
        return nn.Identity()
    return SqueezeExcite(channels, se_width(stage.width, stage.se), layers)


class LayerScale(nn.Module):
    """A learned per-channel factor (Touvron et al. 2021; ConvNeXt's gamma)."""

    def __init__(self, channels: int, init: float = LAYER_SCALE_INIT) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class PatchMerge(nn.Module):
    """ConvNeXt's downsampling layer: norm, then a 2x2 stride-2 conv (with a bias: no norm
    follows it) that also sets the width. An odd side is padded by one row or column first,
    so the output side is ceil(side / 2) as with every other way to downsample."""

    def __init__(self, c_in: int, c_out: int, layers: Layers) -> None:
        super().__init__()
        self.norm = layers.make_norm(c_in)
        self.conv = nn.Conv2d(c_in, c_out, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        return self.conv(x)


# -- the block families -------------------------------------------------------------------------
# Attribute names of the three ResNet blocks are those of the first release: model files made
# then still load.


class BasicBlock(nn.Module):
    """conv-norm-act-[dropout]-conv-norm-[SE], plus shortcut, then act (He et al. 2016).
    Both convs are kxk (3x3 in ResNet)."""

    def __init__(self, c_in: int, c_out: int, stride: int, stage: Stage, layers: Layers) -> None:
        super().__init__()
        k = stage.kernel
        self.conv1 = conv(c_in, c_out, k, stride)
        self.bn1 = layers.make_norm(c_out)
        self.act = layers.make_act()
        self.drop = nn.Dropout(stage.dropout) if stage.dropout else nn.Identity()
        self.conv2 = conv(c_out, c_out, k)
        self.bn2 = layers.make_norm(c_out)
        self.se = make_se(c_out, stage, layers)
        self.shortcut = make_shortcut(layers, c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(self.drop(out))))
        return self.act(out + self.shortcut(x))


def inner_width(width: int, expansion: int = 4) -> int:
    """Channels inside a bottleneck block of output width ``width``."""
    return max(1, width // expansion)


class Bottleneck(nn.Module):
    """conv1x1-norm-act-convkxk-norm-act-[dropout]-conv1x1-norm-[SE], plus shortcut, then act.

    The inner width is the output width / ``expansion`` (ResNet-50's 4), at least 1.
    The stride sits on the kxk conv (ResNet v1.5).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, stage: Stage, layers: Layers) -> None:
        super().__init__()
        mid = inner_width(c_out, stage.expansion)
        self.conv1 = conv1x1(c_in, mid)
        self.bn1 = layers.make_norm(mid)
        self.conv2 = conv(mid, mid, stage.kernel, stride)
        self.bn2 = layers.make_norm(mid)
        self.act = layers.make_act()
        self.drop = nn.Dropout(stage.dropout) if stage.dropout else nn.Identity()
        self.conv3 = conv1x1(mid, c_out)
        self.bn3 = layers.make_norm(c_out)
        self.se = make_se(c_out, stage, layers)
        self.shortcut = make_shortcut(layers, c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(self.drop(out))))
        return self.act(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """norm-act-conv-norm-act-[dropout]-conv-[SE], plus shortcut of the raw input (He et al.
    2016b). No activation after the sum: the next block (or the final norm-act) does it."""

    def __init__(self, c_in: int, c_out: int, stride: int, stage: Stage, layers: Layers) -> None:
        super().__init__()
        k = stage.kernel
        self.bn1 = layers.make_norm(c_in)
        self.act = layers.make_act()
        self.conv1 = conv(c_in, c_out, k, stride)
        self.bn2 = layers.make_norm(c_out)
        self.drop = nn.Dropout(stage.dropout) if stage.dropout else nn.Identity()
        self.conv2 = conv(c_out, c_out, k)
        self.se = make_se(c_out, stage, layers)
        self.shortcut = make_shortcut(layers, c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act(self.bn1(x)))
        out = self.se(self.conv2(self.drop(self.act(self.bn2(out)))))
        return out + self.shortcut(x)


class MBConv(nn.Module):
    """Inverted residual (MobileNetV2, EfficientNet's MBConv): conv1x1 up to c_in x expansion,
    norm, act; kxk depthwise (the stride sits here), norm, act; [SE]; [dropout]; conv1x1 down
    to c_out, norm, and no activation (the "linear bottleneck"); plus shortcut, no activation
    after the sum. Expansion 1 has no 1x1 up (MobileNetV2's first block)."""

    def __init__(self, c_in: int, c_out: int, stride: int, stage: Stage, layers: Layers) -> None:
        super().__init__()
        hidden = c_in * stage.expansion
        self.expand = (
            nn.Sequential(conv1x1(c_in, hidden), layers.make_norm(hidden), layers.make_act())
            if stage.expansion > 1
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            conv(hidden, hidden, stage.kernel, stride, groups=hidden),
            layers.make_norm(hidden),
            layers.make_act(),
        )
        self.se = make_se(hidden, stage, layers)
        self.drop = nn.Dropout(stage.dropout) if stage.dropout else nn.Identity()
        self.project = nn.Sequential(conv1x1(hidden, c_out), layers.make_norm(c_out))
        self.shortcut = make_shortcut(layers, c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.se(self.depthwise(self.expand(x)))
        return self.project(self.drop(out)) + self.shortcut(x)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block (Liu et al. 2022): kxk depthwise on c_in (the stride sits here), norm,
    conv1x1 up to c_out x expansion, act, [dropout], conv1x1 down to c_out, [SE], layer scale;
    plus shortcut, no activation after the sum. The two 1x1 convs are ConvNeXt's MLP, with
    biases. Its own downsampling layer is the genotype's ``downsample = "patch"``."""

    def __init__(self, c_in: int, c_out: int, stride: int, stage: Stage, layers: Layers) -> None:
        super().__init__()
        hidden = c_out * stage.expansion
        self.depthwise = conv(c_in, c_in, stage.kernel, stride, groups=c_in)
        self.norm = layers.make_norm(c_in)
        self.mlp_in = nn.Conv2d(c_in, hidden, 1)
        self.act = layers.make_act()
        self.drop = nn.Dropout(stage.dropout) if stage.dropout else nn.Identity()
        self.mlp_out = nn.Conv2d(hidden, c_out, 1)
        self.se = make_se(c_out, stage, layers)
        self.layer_scale = LayerScale(c_out)
        self.shortcut = make_shortcut(layers, c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.mlp_in(self.norm(self.depthwise(x))))
        out = self.layer_scale(self.se(self.mlp_out(self.drop(out))))
        return out + self.shortcut(x)


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact": PreActBlock,
    "mbconv": MBConv,
    "convnext": ConvNeXtBlock,
}
