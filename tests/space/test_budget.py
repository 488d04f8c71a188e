from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
import torchinfo
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from space import (
    BudgetError,
    Genotype,
    Stage,
    build,
    check,
    count,
    count_macs,
    count_params,
    fit_to_budget,
    parse_budget,
    scale_widths,
)
from space.budget import main as budget_main
from tests.conftest import REFERENCES, ROOT
from tests.strategies import genotypes


def meta_model(g: Genotype, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    with torch.device("meta"):
        return build(g, num_classes=num_classes, in_channels=in_channels)


def numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def hooked_macs(model: nn.Module, size: tuple[int, int], in_channels: int = 3) -> int:
    """Reference MACs: read every conv's and linear's real output shape during a forward."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_output = module.in_channels // module.groups * kh * kw
            total += output[0].numel() * per_output
        else:
            total += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    model.eval()(torch.empty(1, in_channels, *size, device="meta"))
    for h in handles:
        h.remove()
    return total


@given(genotypes(max_depth=6, max_width=300), st.integers(2, 1000), st.integers(1, 4))
@settings(max_examples=400, deadline=None)
def test_count_params_equals_built_numel(g: Genotype, classes: int, channels: int) -> None:
    model = meta_model(g, classes, channels)
    assert count_params(g, num_classes=classes, in_channels=channels) == numel(model)


@given(genotypes(max_depth=3, max_width=64), st.sampled_from([(32, 32), (28, 28), (7, 12), (1, 1)]))
@settings(max_examples=150, deadline=None)
def test_count_macs_equals_forward_hooks(g: Genotype, size: tuple[int, int]) -> None:
    assert count_macs(g, num_classes=10, image_size=size) == hooked_macs(meta_model(g), size)


@pytest.mark.parametrize("path", REFERENCES, ids=[p.stem for p in REFERENCES])
def test_references_agree_with_torchinfo(path) -> None:
    g = Genotype.load(path)
    model = meta_model(g)
    stats = torchinfo.summary(model, input_size=(1, 3, 32, 32), device="meta", verbose=0)
    params, macs = count(g, num_classes=10)
    assert params == stats.trainable_params == numel(model)
    assert macs == hooked_macs(model, (32, 32))
    print(f"{path.stem:>18}: {params:>10,} params {macs / 1e6:8.1f}M MACs")


def test_reference_counts_match_their_published_structure() -> None:
    # Independent arithmetic for ResNet-20 with 1x1 conv + BN projections (option B):
    # stem 3*16*9 + BN 32; stage 1: 3 blocks of two 16->16 3x3 convs + 2 BN;
    # stages 2, 3: first conv c->2c, then 5 convs 2c->2c, 6 BNs, projection c*2c + BN; head.
    def stage(c_in: int, c: int) -> int:
        convs = 9 * c_in * c + 5 * 9 * c * c
        projection = c_in * c + 2 * c if c_in != c else 0
        return convs + 6 * 2 * c + projection

    expected = 3 * 16 * 9 + 32 + stage(16, 16) + stage(16, 32) + stage(32, 64) + 64 * 10 + 10
    g = Genotype.load(ROOT / "configs/reference/resnet20.toml")
    assert count_params(g, num_classes=10) == expected == 272_474


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("400k", 400_000),
        ("400_000", 400_000),
        ("4e5", 400_000),
        ("5M", 5_000_000),
        ("5m", 5_000_000),
        ("5e6", 5_000_000),
        ("0.4M", 400_000),
        ("1.5k", 1500),
        (" 250000 ", 250_000),
        ("1e10", 10**10),
        (123, 123),
    ],
)
def test_parse_budget(text, value) -> None:
    assert parse_budget(text) == value


@pytest.mark.parametrize(
    "text", ["abc", "", "0", "-5", "-5M", "1e30", "1.1e10", "nan", "inf", "1.5", "5MB", "k", True]
)
def test_parse_budget_rejects(text) -> None:
    with pytest.raises(BudgetError, match="budget must be"):
        parse_budget(text)


def test_over_budget_message_has_count_budget_and_excess() -> None:
    g = Genotype.load(ROOT / "configs/reference/resnet18-cifar.toml")
    verdict = check(g, 5_000_000, num_classes=10)
    assert not verdict.fits
    assert verdict.excess == verdict.params - 5_000_000 > 0
    message = verdict.message()
    assert f"{verdict.params:,}" in message and "5,000,000" in message
    assert f"{verdict.excess:,}" in message


# Found by CI: rounding both widths to 48 removes the projection shortcut, so the count is not
# monotone in the multiplier and a bisection stopped short of the largest fitting network.
_PROJECTION_VANISHES = Genotype(stages=(Stage(depth=1, width=49, block="basic"),), stem_width=48)


@given(genotypes(max_depth=4, max_width=64), st.sampled_from([20_000, 400_000, 5_000_000]))
@example(_PROJECTION_VANISHES, 5_000_000)
@settings(max_examples=100, deadline=None)
def test_fit_to_budget_fits_and_keeps_the_shape(g: Genotype, budget: int) -> None:
    fitted = fit_to_budget(g, budget, num_classes=10)
    narrowest = scale_widths(g, 0.0)
    if fitted is None:
        assert count_params(narrowest, num_classes=10) > budget
        return
    params = count_params(fitted, num_classes=10)
    assert params <= budget
    assert [(s.depth, s.block, s.downsample) for s in fitted.stages] == [
        (s.depth, s.block, s.downsample) for s in g.stages
    ]
    assert all(s.width % 8 == 0 for s in fitted.stages) and fitted.stem_width % 8 == 0
    # At least as large as the largest single multiplier of the original widths that fits:
    # sweep multipliers finely (geometric steps of 1%) until a count passes the budget.
    m, best_single = 0.01, 0
    while (candidate := count_params(scale_widths(g, m), num_classes=10)) <= budget and m < 1e4:
        best_single = max(best_single, candidate)
        m *= 1.01
    assert params >= best_single


def test_fit_to_budget_fills_the_budget_for_references() -> None:
    for path in REFERENCES:
        g = Genotype.load(path)
        for budget in (400_000, 5_000_000):
            params = count_params(fit_to_budget(g, budget, num_classes=10), num_classes=10)
            assert 0.9 * budget <= params <= budget, (path.stem, budget, params)


def test_fit_to_budget_none_when_nothing_fits() -> None:
    g = Genotype.load(ROOT / "configs/reference/resnet56.toml")
    assert fit_to_budget(g, 5_000, num_classes=10) is None


def test_scale_widths_is_monotone() -> None:
    g = Genotype.load(ROOT / "configs/reference/res4-32.toml")
    counts = [count_params(scale_widths(g, m / 10), num_classes=10) for m in range(1, 40)]
    assert counts == sorted(counts)


# -- the command ------------------------------------------------------------------------------


def test_cli_agrees_with_builder_for_every_reference(capsys) -> None:
    for path in REFERENCES:
        code = budget_main([str(path), "--budget", "5M"])
        out = capsys.readouterr().out
        params = int(re.search(r"params\s+([\d,]+)", out).group(1).replace(",", ""))
        assert params == numel(meta_model(Genotype.load(path)))
        assert code == (1 if path.stem == "resnet18-cifar" else 0)
        assert ("over budget" in out) == (code == 1)


def test_cli_exit_codes_and_one_line_errors(tmp_path, capsys) -> None:
    resnet20 = str(ROOT / "configs/reference/resnet20.toml")
    assert budget_main([resnet20, "--budget", "400k"]) == 0
    assert budget_main([resnet20, "--budget", "200k"]) == 1
    bad_syntax = tmp_path / "bad.toml"
    bad_syntax.write_text("stem_width = [\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text((ROOT / "configs/reference/resnet20.toml").read_text() + "\ncolour = 1\n")
    invalid = tmp_path / "invalid.toml"
    invalid.write_text(
        (ROOT / "configs/reference/resnet20.toml").read_text().replace("depth = 3", "depth = 0", 1)
    )
    capsys.readouterr()
    cases = [
        ([str(tmp_path / "missing.toml"), "--budget", "5M"], "no such file"),
        ([str(bad_syntax), "--budget", "5M"], "TOML syntax error"),
        ([str(unknown), "--budget", "5M"], "unknown key 'colour'"),
        ([str(invalid), "--budget", "5M"], "stages[0].depth must be an integer"),
        ([resnet20, "--budget", "abc"], "budget must be"),
        ([resnet20, "--budget", "0"], "budget must be"),
        ([resnet20, "--budget", "1e30"], "at most 1e10"),
        ([resnet20, "--budget", "5M", "--classes", "1"], "num_classes must be"),
    ]
    for argv, fragment in cases:
        code = budget_main(argv)
        err = capsys.readouterr().err
        assert code == 2, argv
        assert fragment in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


def test_cli_as_a_module_prints_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "space.budget", "nope.toml", "--budget", "-5"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    proc = subprocess.run(
        [sys.executable, "-m", "space.budget", "--budget"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
