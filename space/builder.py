"""Genotype -> ``torch.nn.Module``. Pure: no I/O, no device choice, no Optuna.

The network is a stem (3x3 conv, BN, ReLU), the stages in order, an optional BN-ReLU when the
last stage is pre-activation, global pooling, dropout and the classifier. ``BLOCKS`` maps a
block-type name to its class, so a new block is a new table row, not a new builder.

Every convolution is followed by BN (pre-activation blocks put the BN before it) and has no bias,
except the stem when ``stem_bias`` is set. Shapes in comments are (N, C, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from space.genotype import Genotype, Shortcut


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


def make_shortcut(kind: Shortcut, c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity when the shape is kept, else the genotype's projection."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if kind == "conv_bn":
        return nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
    if kind == "conv":
        return conv1x1(c_in, c_out, stride)
    # ResNet-D: average 2x2 windows instead of skipping 3 of every 4 pixels with a strided 1x1.
    pool = (
        nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
        if stride > 1
        else nn.Identity()
    )
    return nn.Sequential(pool, conv1x1(c_in, c_out), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-[dropout]-conv3x3-BN, plus shortcut, then ReLU (He et al. 2016)."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, shortcut: Shortcut, dropout: float
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.drop(out)))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv1x1-BN, plus shortcut, then ReLU.

    The inner width is a quarter of the output width (ResNet-50's expansion of 4), at least 1.
    The stride sits on the 3x3 conv (ResNet v1.5).
    """

    expansion = 4

    def __init__(
        self, c_in: int, c_out: int, stride: int, shortcut: Shortcut, dropout: float
    ) -> None:
        super().__init__()
        mid = inner_width(c_out)
        self.conv1 = conv1x1(c_in, mid)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = conv3x3(mid, mid, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv3 = conv1x1(mid, c_out)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.drop(out)))
        return torch.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3, plus shortcut of the raw input (He et al. 2016b).

    No ReLU after the sum: the next block (or the final BN-ReLU) normalises and activates.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, shortcut: Shortcut, dropout: float
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = conv3x3(c_out, c_out)
        self.shortcut = make_shortcut(shortcut, c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.bn1(x)))
        out = self.conv2(self.drop(torch.relu(self.bn2(out))))
        return out + self.shortcut(x)


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact": PreActBlock,
}


def inner_width(width: int) -> int:
    """Channels inside a bottleneck block of output width ``width``."""
    return max(1, width // Bottleneck.expansion)


class GlobalPool(nn.Module):
    """(N, C, H, W) -> (N, C, 1, 1), or (N, 2C, 1, 1) for average and max concatenated."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return x.mean((2, 3), keepdim=True)
        if self.kind == "max":
            return x.amax((2, 3), keepdim=True)
        return torch.cat([x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)], dim=1)


class Network(nn.Module):
    """The classifier of a genotype: (N, in_channels, H, W) -> (N, num_classes) logits."""

    def __init__(self, genotype: Genotype, *, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        g = genotype
        self.genotype = g
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, g.stem_width, 3, padding=1, bias=g.stem_bias),
            nn.BatchNorm2d(g.stem_width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c = g.stem_width
        for stage in g.stages:
            layers: list[nn.Module] = []
            stride = 1
            if stage.downsample:
                if g.downsample == "stride":
                    stride = 2
                elif g.downsample == "maxpool":
                    layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                elif g.downsample == "avgpool":
                    layers.append(nn.AvgPool2d(2, stride=2, ceil_mode=True))
                else:  # "conv": a separate 3x3 stride-2 conv + BN + ReLU that also sets the width
                    layers += [
                        conv3x3(c, stage.width, stride=2),
                        nn.BatchNorm2d(stage.width),
                        nn.ReLU(inplace=True),
                    ]
                    c = stage.width
            block = BLOCKS[stage.block]
            for i in range(stage.depth):
                layers.append(
                    block(c, stage.width, stride if i == 0 else 1, g.shortcut, stage.dropout)
                )
                c = stage.width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        # Pre-activation blocks leave their output un-normalised; close the trunk with BN-ReLU.
        self.final = (
            nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
            if g.stages[-1].block == "preact"
            else nn.Identity()
        )
        self.pool = GlobalPool(g.pool)
        features = 2 * c if g.pool == "avgmax" else c
        self.dropout = nn.Dropout(g.head_dropout) if g.head_dropout else nn.Identity()
        self.head: nn.Module = (
            nn.Linear(features, num_classes)
            if g.head == "linear"
            else nn.Conv2d(features, num_classes, 1, bias=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.stages(self.stem(x)))
        x = self.dropout(self.pool(x))  # (N, features, 1, 1)
        if isinstance(self.head, nn.Linear):
            return self.head(x.flatten(1))
        return self.head(x).flatten(1)


def build(genotype: Genotype, *, num_classes: int, in_channels: int = 3) -> Network:
    """The network of ``genotype`` with freshly initialised weights, on the default device.

    Build under ``torch.device("meta")`` to get the structure without allocating weights.
    The input size is free: every downsampling rounds up (ceil), so any H, W >= 1 works.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, but got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, but got {in_channels!r}")
    model = Network(genotype, num_classes=num_classes, in_channels=in_channels)
    _init_weights(model)
    return model


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # Zero the last BN of each residual branch so every block starts as the identity
    # (Goyal et al. 2017): deep nets train stably from the first step with a high learning rate.
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        elif isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
