"""The wider space: mbconv and convnext blocks, kernel, expansion, squeeze-excitation,
activation and norm; the mixed preset; MACs limits; and that nothing older changed."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import time
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from space import (
    Genotype,
    GenotypeError,
    Stage,
    UserError,
    build,
    count,
    fit_to_budget,
    scale_widths,
)
from space._toml import load_toml, tomllib
from space.blocks import (
    BLOCKS,
    BasicBlock,
    Bottleneck,
    ConvNeXtBlock,
    LayerNorm2d,
    LayerScale,
    MBConv,
    PatchMerge,
    PreActBlock,
    SqueezeExcite,
)
from space.builder import Network
from space.genotype import ACTIVATIONS, BLOCK_TYPES, DOWNSAMPLES, NORMS, SHORTCUTS, Augment
from space.searchspace import SearchSpace, sample, smallest_macs, smallest_network
from tests.conftest import ROOT
from tests.space.test_budget import hooked_macs, numel
from tests.strategies import augments

MIXED = ROOT / "configs" / "space" / "mixed.toml"
DEFAULT = ROOT / "configs" / "space" / "default.toml"
NEW_REFERENCES = ["mobilenetv2-cifar", "convnext-cifar", "dwnext-100k"]


def wide_stages(max_depth: int = 3, max_width: int = 40) -> st.SearchStrategy[Stage]:
    @st.composite
    def draw(d: st.DrawFn) -> Stage:
        block = d(st.sampled_from(BLOCK_TYPES))
        expanding = block in ("bottleneck", "mbconv", "convnext")
        return Stage(
            depth=d(st.integers(1, max_depth)),
            width=d(st.integers(1, max_width)),
            block=block,
            downsample=d(st.booleans()),
            dropout=d(st.sampled_from([0.0, 0.1])),
            kernel=d(st.sampled_from([3, 5, 7])),
            expansion=d(st.integers(1, 8)) if expanding else 4,
            se=d(st.sampled_from([0.0, 0.25, 0.5, 1e-05])),
        )

    return draw()


def wide_genotypes(max_depth: int = 3, max_width: int = 40) -> st.SearchStrategy[Genotype]:
    return st.builds(
        Genotype,
        stages=st.lists(wide_stages(max_depth, max_width), min_size=1, max_size=4).map(tuple),
        stem_width=st.integers(1, max_width),
        stem_bias=st.booleans(),
        downsample=st.sampled_from(DOWNSAMPLES),
        shortcut=st.sampled_from(SHORTCUTS),
        pool=st.sampled_from(["avg", "max", "avgmax"]),
        head=st.sampled_from(["linear", "conv"]),
        head_dropout=st.sampled_from([0.0, 0.1]),
        augment=augments,
        activation=st.sampled_from(ACTIVATIONS),
        norm=st.sampled_from(NORMS),
    )


class SeededTrial:
    """A trial that draws from ``random.Random``: thousands of draws per second, and the same
    draws on every Python and Optuna version."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False):
        self.params[name] = self.rng.randrange(low, high + 1, step)
        return self.params[name]

    def suggest_float(self, name: str, low: float, high: float, *, step=None, log: bool = False):
        self.params[name] = self.rng.uniform(low, high)
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.params[name] = self.rng.choice(list(choices))
        return self.params[name]


def meta_network(g: Genotype, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """The network ``build`` makes, on the meta device, without any weight initialisation
    (which changes no shape, and is most of a meta build's time: torch's init functions run
    slowly there)."""

    def skip(self: nn.Module) -> None:
        pass

    with contextlib.ExitStack() as stack:
        for cls in (nn.Conv2d, nn.Linear, nn.modules.batchnorm._NormBase):
            stack.enter_context(mock.patch.object(cls, "reset_parameters", skip))
        with torch.device("meta"):
            return Network(g, num_classes=num_classes, in_channels=in_channels)


# -- old genotypes, keys, presets and studies are unchanged --------------------------------------

# Made by the first release (before these fields existed) from the default preset with
# random.Random(17) as the trial, budgets 400k and 5M in turn; with its counts (params, MACs).
FIRST_RELEASE_DRAWS = [
    (
        "S24_N5x32s_B5x24s_P7x24s_P6x40s@0.1~maxpool_c_avgmax_lin_h0.3"
        "~p2_f1_c0_trivialaugment_m9_x0_k0_l0",
        (305202, 7547936),
    ),
    (
        "S48_P2x48s_P3x88s_B6x152s~stride_c_avg_lin_h0.3~p4_f1_c0_randaugment_m15_x0.2_k0_l0.1",
        (2904954, 86895088),
    ),
    (
        "S48_N1x56s_P4x72s@0.1~avgpool_c_avg_conv_h0~p4_f1_c12_trivialaugment_m9_x0_k1_l0.2",
        (376374, 26322640),
    ),
    (
        "S32_B6x48s_N1x80s@0.1_P8x120s_N4x240s~conv_c_avgmax_conv_h0"
        "~p4_f1_c12_none_m9_x0.2_k0_l0.2",
        (2982842, 107352512),
    ),
    (
        "S40_B2x56_N5x112s_N3x112s~maxpool_cbn_avgmax_conv_h0.3"
        "~p2_f1_c8_trivialaugment_m9_x0.2_k1_l0",
        (225282, 131572928),
    ),
    (
        "S24_P8x40_P4x72s_B8x128s~conv_cbn_max_lin_h0.3~p0_f1_c8_none_m9_x0.2_k0_l0.1",
        (3075970, 490169600),
    ),
    (
        "S40_B3x32s_N6x56s@0.1_P2x56s~maxpool_acbn_avgmax_conv_h0.1~p4_f1_c12_none_m9_x0_k1_l0.1",
        (197642, 19359328),
    ),
    (
        "S144_N1x136_B4x200s_B1x200s~maxpool_acbn_avg_conv_h0~p4_f1_c8_randaugment_m12_x0_k0_l0",
        (3562774, 805271504),
    ),
]

# SearchSpace.load("configs/space/default.toml").to_dict() as the first release recorded it in
# every study (search.study.SearchSettings.record compares it when a study resumes).
FIRST_RELEASE_DEFAULT_RECORD = (
    '{"description": "ResNet family for 32x32 images: 2-4 stages, basic/bottleneck/pre-activation '
    'blocks, four ways to downsample, three shortcuts, augmentation recipe", "fit_to_budget": '
    'true, "width_multiple": 8, "params": {"num_stages": [2, 3, 4], "depth": {"low": 1, "high": '
    '8}, "block": ["basic", "bottleneck", "preact"], "width_growth": [1.0, 1.5, 2.0], '
    '"block_dropout": [0.0, 0.0, 0.1], "base_width": [64], "stem_ratio": [0.5, 1.0], '
    '"stem_bias": [false], "first_downsample": [false, true], "later_downsample": [true], '
    '"downsample": ["stride", "maxpool", "avgpool", "conv"], "shortcut": ["conv_bn", "conv", '
    '"avgpool_conv_bn"], "pool": ["avg", "max", "avgmax"], "head": ["linear", "conv"], '
    '"head_dropout": [0.0, 0.1, 0.3], "budget_fill": {"low": 0.5, "high": 1.0}, "crop_padding": '
    '[0, 2, 4], "flip": [true], "cutout": [0, 8, 12], "auto_augment": ["none", "randaugment", '
    '"trivialaugment"], "auto_magnitude": {"low": 3, "high": 15}, "mixup_alpha": [0.0, 0.2], '
    '"cutmix_alpha": [0.0, 1.0], "label_smoothing": [0.0, 0.1, 0.2]}}'
)


def test_the_default_preset_draws_and_records_as_the_first_release_did() -> None:
    space = SearchSpace.load(DEFAULT)
    assert json.dumps(space.to_dict()) == FIRST_RELEASE_DEFAULT_RECORD
    rng = random.Random(17)
    for i, (key, counts) in enumerate(FIRST_RELEASE_DRAWS):
        trial = SeededTrial(rng)
        drawn = sample(trial, space, budget=400_000 if i % 2 == 0 else 5_000_000, num_classes=10)
        assert drawn.genotype.key() == key
        assert count(drawn.genotype, num_classes=10) == counts
        assert not any(re.search(r"kernel|expansion|_se$|activation|norm", n) for n in trial.params)


def test_old_genotype_dicts_keep_their_fields() -> None:
    first_release_stage = {"depth", "width", "block", "downsample", "dropout"}
    first_release_top = {
        "stages",
        "stem_width",
        "stem_bias",
        "downsample",
        "shortcut",
        "pool",
        "head",
        "head_dropout",
        "augment",
    }
    for key, _ in FIRST_RELEASE_DRAWS:
        data = Genotype.from_key(key).to_dict()
        assert set(data) == first_release_top
        assert all(set(s) == first_release_stage for s in data["stages"])
        # and a dict without the later fields gives the genotype with their defaults
        g = Genotype.from_dict(data)
        assert all((s.kernel, s.expansion, s.se) == (3, 4, 0.0) for s in g.stages)
        assert (g.activation, g.norm) == ("relu", "batch")


# -- genotype: fields, keys and refusals ---------------------------------------------------------


@given(wide_genotypes())
@settings(max_examples=300, deadline=None)
def test_wide_genotypes_round_trip(g: Genotype) -> None:
    assert Genotype.from_dict(g.to_dict()) == g
    assert Genotype.from_key(g.key()) == g
    assert Genotype.from_dict(tomllib.loads(g.to_toml())) == g


@given(wide_genotypes(), wide_genotypes())
@settings(max_examples=200, deadline=None)
def test_wide_keys_are_canonical(a: Genotype, b: Genotype) -> None:
    assert (a.key() == b.key()) == (a == b)


def test_key_tokens_of_the_new_fields() -> None:
    g = Genotype.from_key(
        "S8_M2x24s-k5-e6-se0.25@0.1_C1x32-k7_N1x32s-e2_B1x32-se0.5"
        "~patch_cbn_avg_lin_h0_gelu_ln~p4_f1_c0_none_m9_x0_k0_l0"
    )
    assert g == Genotype(
        stages=(
            Stage(2, 24, "mbconv", True, 0.1, kernel=5, expansion=6, se=0.25),
            Stage(1, 32, "convnext", kernel=7),
            Stage(1, 32, "bottleneck", True, expansion=2),
            Stage(1, 32, "basic", se=0.5),
        ),
        stem_width=8,
        downsample="patch",
        activation="gelu",
        norm="layer",
    )
    assert Genotype.from_key(g.replace(activation="relu").key()).norm == "layer"
    assert g.replace(norm="batch").key().split("~")[1] == "patch_cbn_avg_lin_h0_gelu"
    assert g.replace(activation="relu").key().split("~")[1] == "patch_cbn_avg_lin_h0_ln"


@pytest.mark.parametrize(
    "layout",
    [
        "stride_cbn_avg_lin_h0_ln_gelu",  # out of order
        "stride_cbn_avg_lin_h0_relu",  # the default has no token
        "stride_cbn_avg_lin_h0_bn",
        "stride_cbn_avg_lin_h0_gelu_gelu",
        "stride_cbn_avg_lin_h0_tanh",
    ],
)
def test_bad_layout_tokens_rejected(layout: str) -> None:
    with pytest.raises(GenotypeError, match="not a genotype key"):
        Genotype.from_key(f"S8_B1x8~{layout}~p4_f1_c0_none_m9_x0_k0_l0")


@pytest.mark.parametrize("stage", ["M1x8-k", "M1x8-e6-k5", "M1x8-q2", "M1x8-sex", "Z1x8"])
def test_bad_stage_tokens_rejected(stage: str) -> None:
    with pytest.raises(GenotypeError, match="not a genotype key"):
        Genotype.from_key(f"S8_{stage}~stride_cbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0")


BASE = Genotype(stages=(Stage(1, 16), Stage(1, 32, "mbconv", True)))


@pytest.mark.parametrize(
    ("change", "field", "value", "allowed"),
    [
        (lambda d: d["stages"][0].update(expansion=6), "stages[0].expansion", "6", "must be 4"),
        (
            lambda d: d["stages"][0].update(block="preact", expansion=2),
            "stages[0].expansion",
            "2",
            "bottleneck, mbconv, convnext",
        ),
        (lambda d: d["stages"][1].update(expansion=0), "stages[1].expansion", "0", "[1, 8]"),
        (lambda d: d["stages"][1].update(expansion=9), "stages[1].expansion", "9", "[1, 8]"),
        (lambda d: d["stages"][1].update(expansion=2.0), "stages[1].expansion", "2.0", "[1, 8]"),
        (lambda d: d["stages"][1].update(kernel=4), "stages[1].kernel", "4", "3, 5, 7"),
        (lambda d: d["stages"][1].update(kernel=3.0), "stages[1].kernel", "3.0", "3, 5, 7"),
        (lambda d: d["stages"][1].update(kernel=True), "stages[1].kernel", "True", "3, 5, 7"),
        (lambda d: d["stages"][1].update(se=1.5), "stages[1].se", "1.5", "[0.0, 1.0]"),
        (lambda d: d["stages"][1].update(se=-0.25), "stages[1].se", "-0.25", "[0.0, 1.0]"),
        (lambda d: d.update(activation="tanh"), "activation", "'tanh'", "relu, silu, gelu"),
        (lambda d: d.update(norm="group"), "norm", "'group'", "batch, layer"),
        (lambda d: d.update(downsample="convnext"), "downsample", "'convnext'", "patch"),
        (lambda d: d["stages"][1].update(block="dense"), "stages[1].block", "'dense'", "mbconv"),
    ],
)
def test_nonsense_is_refused_naming_field_value_and_what_is_allowed(
    change, field: str, value: str, allowed: str
) -> None:
    data = BASE.to_dict()
    change(data)
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(data)
    message = str(info.value)
    assert field in message and value in message and allowed in message and "must" in message


# -- the blocks ----------------------------------------------------------------------------------


def test_block_table_and_structure() -> None:
    assert set(BLOCKS) == set(BLOCK_TYPES)
    resnets = build(
        Genotype.from_key(
            "S16_B1x16-k5_N1x32s-e2_P1x32-k7~stride_cbn_avg_lin_h0_silu_ln~p4_f1_c0_none_m9_x0_k0_l0"
        ),
        num_classes=10,
    )
    depthwise = build(
        Genotype.from_key(
            "S16_M2x24-e6-se0.25_M1x24-e1_C2x48s-k7-e3"
            "~patch_cbn_avg_lin_h0_silu_ln~p4_f1_c0_none_m9_x0_k0_l0"
        ),
        num_classes=10,
    )
    blocks = [
        m for net in (resnets, depthwise) for m in net.modules() if type(m) in BLOCKS.values()
    ]
    assert [type(m) for m in blocks] == [
        BasicBlock,
        Bottleneck,
        PreActBlock,
        MBConv,
        MBConv,
        MBConv,
        ConvNeXtBlock,
        ConvNeXtBlock,
    ]
    basic, bottleneck, preact, mb1, _, mb_e1, cnx, _ = blocks
    assert basic.conv1.kernel_size == (5, 5) and preact.conv2.kernel_size == (7, 7)
    assert bottleneck.conv2.out_channels == 32 // 2
    # mbconv: 1x1 up to c_in x 6, depthwise over every hidden channel, SE to 0.25 x width
    assert mb1.expand[0].out_channels == 16 * 6
    assert mb1.depthwise[0].groups == mb1.depthwise[0].in_channels == 16 * 6
    assert isinstance(mb1.se, SqueezeExcite) and mb1.se.reduce.out_channels == 24 // 4
    assert isinstance(mb_e1.expand, nn.Identity) and mb_e1.depthwise[0].groups == 24
    # convnext: 7x7 depthwise, MLP to 3 x width, layer scale; entered through the patch layer
    assert cnx.depthwise.kernel_size == (7, 7) and cnx.depthwise.groups == 48
    assert cnx.mlp_in.out_channels == 48 * 3 and isinstance(cnx.layer_scale, LayerScale)
    assert isinstance(depthwise.stages[-1][0], PatchMerge)
    assert isinstance(depthwise.final, LayerNorm2d)  # the trunk ends in convnext blocks
    assert isinstance(resnets.final[0], LayerNorm2d)  # and here in pre-activation blocks
    for model in (resnets, depthwise):  # every norm is LayerNorm, every activation SiLU
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert not any(isinstance(m, (nn.ReLU, nn.GELU)) for m in model.modules())
        assert any(isinstance(m, nn.SiLU) for m in model.modules())


@pytest.mark.parametrize("channels_last", [False, True])
def test_layernorm2d_is_layernorm_over_channels(channels_last: bool) -> None:
    torch.manual_seed(0)
    norm = LayerNorm2d(6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    reference = nn.LayerNorm(6, eps=norm.eps)
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(norm(x), expected, atol=1e-5)


FAMILY_GENOTYPES = {
    "mbconv": "S16_M1x16-e1_M2x24s-k5-e6-se0.25~stride_cbn_avg_lin_h0_silu"
    "~p4_f1_c0_none_m9_x0_k0_l0",
    "convnext": "S16_C2x16-k7_C2x32s-k7~patch_cbn_avg_lin_h0_gelu_ln~p4_f1_c0_none_m9_x0_k0_l0",
    "resnet-wide": "S16_B1x16-k5-se0.25_N1x32s-e2_P1x32-k7~conv_acbn_avgmax_conv_h0_gelu_ln"
    "~p4_f1_c0_none_m9_x0_k0_l0",
}


@pytest.mark.parametrize("name", list(FAMILY_GENOTYPES))
def test_channels_last_gives_the_same_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build(Genotype.from_key(FAMILY_GENOTYPES[name]), num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(FAMILY_GENOTYPES))
def test_channels_last_bf16_trains_on_cuda(name: str) -> None:
    # As search.training runs it: channels_last model and input, bf16 autocast, a backward.
    torch.manual_seed(0)
    g = Genotype.from_key(FAMILY_GENOTYPES[name])
    model = build(g, num_classes=10).cuda()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.no_grad():
        expected = model.eval()(x)
    model = model.train().to(memory_format=torch.channels_last)
    xl = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(xl).float().logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        got = model.eval()(xl)
    assert torch.allclose(got, expected, atol=1e-4)


def test_patch_downsampling_rounds_odd_sides_up() -> None:
    g = Genotype.from_key(
        "S8_C1x8s_C1x16s_C1x16s~patch_cbn_avg_lin_h0_gelu_ln~p4_f1_c0_none_m9_x0_k0_l0"
    )
    model = build(g, num_classes=10)
    x = model.stem(torch.randn(1, 3, 7, 12))
    sides = []
    for stage in model.stages:
        x = stage(x)
        sides.append(tuple(x.shape[-2:]))
    assert sides == [(4, 6), (2, 3), (1, 2)]


def test_new_blocks_start_as_the_identity() -> None:
    # mbconv's last norm starts at zero (as basic's and bottleneck's); convnext's layer scale
    # at 1e-6. A block that keeps the shape is then the identity at initialisation.
    torch.manual_seed(0)
    g = Genotype.from_key("S16_M2x16-e6_C2x16-k7~stride_cbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0")
    model = build(g, num_classes=10).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        for stage in model.stages:
            for block in stage:
                assert torch.allclose(block(x), x, atol=1e-4)


def test_depthwise_init_is_he_init_of_one_filter() -> None:
    # torch's fan-out of a depthwise conv counts all channels; He init wants one filter's k*k.
    torch.manual_seed(0)
    g = Genotype.from_key("S16_C1x512-k7~stride_cbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0")
    weight = build(g, num_classes=10).stages[0][0].depthwise.weight
    assert weight.std().item() == pytest.approx((2 / 49) ** 0.5, rel=0.05)


@given(wide_genotypes(max_depth=2, max_width=16))
@settings(max_examples=60, deadline=None)
def test_wide_genotypes_forward_and_backward(g: Genotype) -> None:
    torch.manual_seed(0)
    model = build(g, num_classes=7)
    out = model(torch.randn(2, 3, 20, 20))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# -- counts --------------------------------------------------------------------------------------


@given(wide_genotypes(max_depth=4, max_width=200), st.integers(2, 1000), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_wide_count_params_equals_built_numel(g: Genotype, classes: int, channels: int) -> None:
    model = meta_network(g, classes, channels)
    assert count(g, num_classes=classes, in_channels=channels)[0] == numel(model)


@given(
    wide_genotypes(max_depth=2, max_width=48),
    st.sampled_from([(32, 32), (28, 28), (7, 12), (1, 1)]),
)
@settings(max_examples=50, deadline=None)
def test_wide_count_macs_equals_forward_hooks(g: Genotype, size: tuple[int, int]) -> None:
    assert count(g, num_classes=10, image_size=size)[1] == hooked_macs(meta_network(g), size)


def per_module_macs(model: nn.Module, size: tuple[int, int], in_channels: int) -> dict:
    """Forward hooks, as ``hooked_macs``, but kept per conv and linear module."""
    macs: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs[module] = output[0].numel() * module.in_channels // module.groups * kh * kw
        else:
            macs[module] = module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    model.eval()(torch.empty(1, in_channels, *size, device="meta"))
    for h in handles:
        h.remove()
    return macs


@pytest.mark.slow
def test_counts_over_5000_draws_of_the_mixed_preset() -> None:
    # 2,500 draws fitted to 400k and 2,500 to 5M, in turn, with random class and channel
    # counts: the closed form against the built network's parameters, and on every tenth
    # draw (500) its MACs against forward hooks, at 32x32 or an odd size.
    # For speed (a meta build of a 30-block network takes ~15 ms of Python) each stage is
    # built with at most two blocks: the blocks after the first in a stage are alike (width
    # in and out, stride 1, same resolution), so the full network's parameters and MACs are
    # the shallow one's plus (depth - 2) times those of its stage's second block. The
    # hypothesis tests above build every block.
    space = SearchSpace.load(MIXED)
    rng = random.Random(2024)
    start = time.perf_counter()
    blocks: set[str] = set()
    for i in range(5000):
        budget = 400_000 if i % 2 == 0 else 5_000_000
        classes, channels = rng.choice([2, 10, 100]), rng.choice([1, 3])
        drawn = sample(
            SeededTrial(rng), space, budget=budget, num_classes=classes, in_channels=channels
        )
        g = drawn.genotype
        blocks.update(s.block for s in g.stages)
        shallow = g.replace(
            stages=tuple(dataclasses.replace(s, depth=min(s.depth, 2)) for s in g.stages)
        )
        model = meta_network(shallow, classes, channels)
        repeats = [
            (s.depth - 2, stage[-1])
            for s, stage in zip(g.stages, model.stages, strict=True)
            if s.depth > 2
        ]
        params = numel(model) + sum(n * numel(block) for n, block in repeats)
        assert drawn.params == params <= budget, g.key()
        if i % 100 == 0:  # and the shortcut against the whole network, now and then
            assert params == numel(meta_network(g, classes, channels))
        if i % 10 == 0:
            size = (32, 32) if i % 20 == 0 else rng.choice([(28, 28), (15, 9)])
            per_module = per_module_macs(model, size, channels)
            macs = sum(per_module.values()) + sum(
                n * sum(per_module.get(m, 0) for m in block.modules()) for n, block in repeats
            )
            expected = count(g, num_classes=classes, in_channels=channels, image_size=size)[1]
            assert expected == macs, g.key()
    assert blocks == set(BLOCK_TYPES)
    print(f"5,000 draws in {time.perf_counter() - start:.1f} s")


@pytest.mark.parametrize("name", NEW_REFERENCES)
def test_new_references_state_their_exact_counts(name: str) -> None:
    path = ROOT / "configs" / "reference" / f"{name}.toml"
    g = Genotype.load(path)
    model = meta_network(g)
    params = numel(model)
    header = " ".join(
        line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#")
    )
    stated = int(re.search(r"([\d,]+)\s+parameters", header).group(1).replace(",", ""))
    assert stated == params
    macs = hooked_macs(model, (32, 32))
    assert f"{macs / 1e6:.1f}M MACs" in header
    low, high = (90_000, 110_000) if name == "dwnext-100k" else (350_000, 400_000)
    assert low <= params <= high
    # The standard CIFAR recipe, exactly as resnet20's
    assert g.augment == Genotype.load(ROOT / "configs/reference/resnet20.toml").augment
    assert g.augment == Augment(label_smoothing=0.1)


# -- fitting to a parameter and a MACs budget ----------------------------------------------------


@given(
    wide_genotypes(max_depth=3, max_width=64),
    st.sampled_from([20_000, 400_000, 5_000_000]),
    st.sampled_from([None, 2_000_000, 30_000_000, 300_000_000]),
)
@settings(max_examples=120, deadline=None)
def test_fit_keeps_within_both_limits(g: Genotype, budget: int, max_macs: int | None) -> None:
    def counts(x: Genotype) -> tuple[int, int]:
        return count(x, num_classes=10, image_size=32)

    def fits(x: Genotype) -> bool:
        params, macs = counts(x)
        return params <= budget and (max_macs is None or macs <= max_macs)

    fitted = fit_to_budget(g, budget, num_classes=10, max_macs=max_macs, image_size=32)
    if fitted is None:
        assert not fits(scale_widths(g, 0.0))
        return
    assert fits(fitted)
    assert [(s.depth, s.block, s.kernel, s.expansion) for s in fitted.stages] == [
        (s.depth, s.block, s.kernel, s.expansion) for s in g.stages
    ]
    # At least as large as the largest single multiplier of the original widths that keeps
    # within both: a fine sweep (1% steps) until the parameters pass four times the budget.
    m, best_single = 0.01, 0
    while m < 1e4:
        candidate = scale_widths(g, m)
        params, _ = counts(candidate)
        if params > 4 * budget:
            break
        if fits(candidate):
            best_single = max(best_single, params)
        m *= 1.01
    assert counts(fitted)[0] >= best_single


def test_fit_without_macs_limit_is_the_parameter_fit() -> None:
    rng = random.Random(5)
    space = SearchSpace.load(MIXED)
    for _ in range(40):
        g = sample(SeededTrial(rng), space, budget=None, num_classes=10).genotype
        plain = fit_to_budget(g, 400_000, num_classes=10)
        assert fit_to_budget(g, 400_000, num_classes=10, max_macs=10**15) == plain


def test_sample_respects_a_macs_limit() -> None:
    space = SearchSpace.load(MIXED)
    rng = random.Random(7)
    limited = 0
    for _ in range(150):
        state = rng.getstate()
        drawn = sample(SeededTrial(rng), space, budget=400_000, num_classes=10, max_macs=20_000_000)
        params, macs = count(drawn.genotype, num_classes=10, image_size=32)
        assert (drawn.params, drawn.macs) == (params, macs)
        if drawn.fitted:
            assert params <= 400_000 and macs <= 20_000_000
        else:
            assert macs > 20_000_000 or params > 400_000
        # The same draws without the limit: the same shape, and on some the limit binds.
        rng.setstate(state)
        free = sample(SeededTrial(rng), space, budget=400_000, num_classes=10)
        assert [(s.depth, s.block) for s in free.genotype.stages] == [
            (s.depth, s.block) for s in drawn.genotype.stages
        ]
        limited += free.macs > 20_000_000 and drawn.fitted
    assert limited > 10


# -- the mixed preset ----------------------------------------------------------------------------


def test_mixed_preset_draws_every_choice() -> None:
    space = SearchSpace.load(MIXED)
    rng = random.Random(3)
    seen: dict[str, set[Any]] = {k: set() for k in ("block", "kernel", "expansion", "se")}
    seen.update(activation=set(), norm=set(), downsample=set())
    for _ in range(300):
        g = sample(SeededTrial(rng), space, budget=400_000, num_classes=10).genotype
        for s in g.stages:
            for k in ("block", "kernel", "se"):
                seen[k].add(getattr(s, k))
            if s.block in ("bottleneck", "mbconv", "convnext"):
                seen["expansion"].add(s.expansion)
            else:
                assert s.expansion == 4
        seen["activation"].add(g.activation)
        seen["norm"].add(g.norm)
        seen["downsample"].add(g.downsample)
    assert seen == {
        "block": set(BLOCK_TYPES),
        "kernel": {3, 5, 7},
        "expansion": {2, 3, 4, 6},
        "se": {0.0, 0.25},
        "activation": set(ACTIVATIONS),
        "norm": set(NORMS),
        "downsample": set(DOWNSAMPLES),
    }


@pytest.mark.parametrize("budget", [400_000, 5_000_000])
def test_mixed_samples_fill_the_budget(budget: int) -> None:
    space = SearchSpace.load(MIXED)
    rng = random.Random(11)
    fills = []
    for _ in range(200):
        drawn = sample(SeededTrial(rng), space, budget=budget, num_classes=10)
        assert drawn.fitted
        assert drawn.params == count(drawn.genotype, num_classes=10)[0] <= drawn.target <= budget
        assert all(s.width % 8 == 0 for s in drawn.genotype.stages)
        fills.append(drawn.params / drawn.target)
    fills.sort()
    # Widths step by 8 channels, and a 7x7 basic block at 8 -> 16 channels quadruples: at 400k
    # a few shapes land well below their target; the median is close to it.
    assert fills[len(fills) // 2] > 0.9
    assert fills[0] > (0.35 if budget == 400_000 else 0.7)


def test_mixed_trial_params_rebuild_the_same_genotype() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace.load(MIXED)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    for _ in range(20):
        trial = study.ask()
        drawn = sample(trial, space, budget=400_000, num_classes=10)
        study.tell(trial, 0.0)
        again = sample(optuna.trial.FixedTrial(trial.params), space, budget=400_000, num_classes=10)
        assert again.genotype == drawn.genotype


def test_mixed_round_trip_and_optional_choices() -> None:
    space = SearchSpace.load(MIXED)
    assert SearchSpace.from_dict(space.to_dict(), name=space.name) == space
    assert list(space.to_dict()["params"])[-5:] == [
        "kernel",
        "expansion",
        "se",
        "activation",
        "norm",
    ]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["params"].update(kernel=[3, 4]), "params.kernel must hold one of 3, 5, 7"),
        (lambda d: d["params"].update(kernel={"low": 3, "high": 7}), "not a range"),
        (lambda d: d["params"].update(kernel=[True]), "params.kernel must hold"),
        (lambda d: d["params"].update(expansion=[9]), "params.expansion must hold"),
        (lambda d: d["params"].update(se=[2.0]), "params.se must hold"),
        (lambda d: d["params"].update(activation=["tanh"]), "params.activation must hold one of"),
        (lambda d: d["params"].update(norm=["group"]), "params.norm must hold one of"),
        (lambda d: d["params"].update(block=["mlp"]), "params.block must hold one of"),
    ],
)
def test_bad_optional_choices_are_user_errors(change, fragment: str) -> None:
    raw = load_toml(MIXED)
    change(raw)
    with pytest.raises(UserError) as info:
        SearchSpace.from_dict(raw, name="t")
    assert fragment in str(info.value)


@pytest.mark.parametrize("preset", [DEFAULT, MIXED], ids=["default", "mixed"])
def test_floors_are_no_larger_than_any_drawn_network(preset) -> None:
    # Against brute force, as smallest_network's own test: the narrowest version of 1,500
    # random draws, counted for 2 classes and 1 channel; none may undercut either floor.
    raw = load_toml(preset)
    raw["params"]["base_width"] = {"low": 8, "high": 64}
    space = SearchSpace.from_dict(raw)
    floor_params = smallest_network(space)
    floor_macs = smallest_macs(space, image_size=32)
    rng = random.Random(9)
    params, macs = [], []
    for _ in range(1500):
        g = sample(SeededTrial(rng), space, budget=None, num_classes=2, in_channels=1).genotype
        g = scale_widths(g, 0.0, multiple=space.width_multiple)
        p, m = count(g, num_classes=2, in_channels=1, image_size=32)
        params.append(p)
        macs.append(m)
    assert floor_params <= min(params) and floor_macs <= min(macs)
    if preset == DEFAULT:  # random draws come close; in the mixed space, with its many more
        # choices, the descent finds networks far smaller than 1,500 random draws do
        assert floor_params >= 0.5 * min(params) and floor_macs >= 0.5 * min(macs)
    assert smallest_macs(space, image_size=64) > floor_macs  # MACs grow with the image
