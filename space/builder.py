"""Genotype -> ``torch.nn.Module``. Pure: no I/O, no device choice, no Optuna.

The network is a stem (3x3 conv, norm, activation), the stages in order (each an optional
downsampling layer and its blocks), a closing norm (and activation) where the last stage leaves
its output un-normalised, global pooling, dropout and the classifier. The blocks live in
``space.blocks``: ``BLOCKS`` maps a block-type name to its class, so a new block is a new class
and a table row there, not a new builder.

The norm is the genotype's (BatchNorm or a channels-first LayerNorm), and so is the activation.
Shapes in comments are (N, C, H, W).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from space.blocks import (
    BLOCKS,
    BasicBlock,
    Bottleneck,
    ConvNeXtBlock,
    Layers,
    MBConv,
    PatchMerge,
    PreActBlock,
    conv3x3,
    inner_width,
)
from space.genotype import Genotype

__all__ = [
    "BLOCKS",
    "BasicBlock",
    "Bottleneck",
    "ConvNeXtBlock",
    "GlobalPool",
    "MBConv",
    "Network",
    "PreActBlock",
    "build",
    "closing_layers",
    "inner_width",
]


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
        layers = Layers(norm=g.norm, activation=g.activation, shortcut=g.shortcut)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, g.stem_width, 3, padding=1, bias=g.stem_bias),
            layers.make_norm(g.stem_width),
            layers.make_act(inplace=True),
        )
        stages: list[nn.Module] = []
        c = g.stem_width
        for stage in g.stages:
            stage_layers: list[nn.Module] = []
            stride = 1
            if stage.downsample:
                if g.downsample == "stride":
                    stride = 2
                elif g.downsample == "maxpool":
                    stage_layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                elif g.downsample == "avgpool":
                    stage_layers.append(nn.AvgPool2d(2, stride=2, ceil_mode=True))
                elif g.downsample == "conv":  # a 3x3 stride-2 conv, norm, act; sets the width
                    stage_layers += [
                        conv3x3(c, stage.width, stride=2),
                        layers.make_norm(stage.width),
                        layers.make_act(inplace=True),
                    ]
                    c = stage.width
                else:  # "patch": ConvNeXt's norm + 2x2 stride-2 conv; sets the width
                    stage_layers.append(PatchMerge(c, stage.width, layers))
                    c = stage.width
            block = BLOCKS[stage.block]
            for i in range(stage.depth):
                stage_layers.append(block(c, stage.width, stride if i == 0 else 1, stage, layers))
                c = stage.width
            stages.append(nn.Sequential(*stage_layers))
        self.stages = nn.Sequential(*stages)
        self.final = closing_layers(g, c, layers)
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


def closing_layers(genotype: Genotype, channels: int, layers: Layers) -> nn.Module:
    """What closes the trunk before pooling. Pre-activation blocks leave their output
    un-normalised: norm + act (He et al. 2016b). ConvNeXt blocks add an un-normalised branch
    to an un-normalised stream: a norm (ConvNeXt's head norm, here per pixel). Others: none."""
    last = genotype.stages[-1].block
    if last == "preact":
        return nn.Sequential(layers.make_norm(channels), layers.make_act(inplace=True))
    if last == "convnext":
        return layers.make_norm(channels)
    return nn.Identity()


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if m.groups == 1:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                # He init by the fan-out of one group's filters: torch's fan-out counts all
                # out_channels, which would make a depthwise conv's weights sqrt(C) too small.
                fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # Zero the last norm of each residual branch so every block starts as the identity
    # (Goyal et al. 2017): deep nets train stably from the first step with a high learning rate.
    # (ConvNeXt blocks do the same with their layer scale, set to 1e-6.)
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        elif isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, MBConv):
            nn.init.zeros_(m.project[1].weight)
