from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from space import Genotype, build
from space.builder import BasicBlock, Bottleneck, PreActBlock
from tests.conftest import REFERENCES
from tests.strategies import genotypes


@pytest.mark.parametrize("path", REFERENCES, ids=[p.stem for p in REFERENCES])
def test_every_reference_forwards(path) -> None:
    torch.manual_seed(0)
    model = build(Genotype.load(path), num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@given(genotypes(max_depth=2, max_width=16))
@settings(max_examples=60, deadline=None)
def test_random_genotypes_forward_and_backward(g: Genotype) -> None:
    torch.manual_seed(0)
    model = build(g, num_classes=7)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("classes", "channels", "size"), [(100, 3, 32), (2, 1, 28), (5, 3, (9, 13))]
)
def test_classes_channels_and_input_size_are_inputs(classes, channels, size) -> None:
    g = Genotype.load(next(p for p in REFERENCES if p.stem == "resnet18-cifar"))
    h, w = (size, size) if isinstance(size, int) else size
    model = build(g, num_classes=classes, in_channels=channels).eval()
    with torch.no_grad():
        assert model(torch.randn(3, channels, h, w)).shape == (3, classes)


def test_block_table_matches_genotype() -> None:
    g = Genotype.from_key("S8_B1x8_N1x16s_P1x16s~stride_cbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0")
    model = build(g, num_classes=10)
    kinds = [
        type(m) for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck, PreActBlock))
    ]
    assert kinds == [BasicBlock, Bottleneck, PreActBlock]
    # A pre-activation last stage is closed by BN + ReLU before pooling.
    assert isinstance(model.final[0], torch.nn.BatchNorm2d)


def test_downsampling_halves_resolution() -> None:
    for mode in ("stride", "maxpool", "avgpool", "conv"):
        g = Genotype.from_key(
            f"S8_B1x8s_B1x16s_B1x16_B1x32s~{mode}_acbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0"
        )
        model = build(g, num_classes=10)
        x = model.stem(torch.randn(1, 3, 32, 32))
        sides = []
        for stage in model.stages:
            x = stage(x)
            sides.append(x.shape[-1])
        assert sides == [16, 8, 8, 4], mode


def test_build_is_pure_and_meta_builds_allocate_nothing() -> None:
    g = Genotype.load(next(p for p in REFERENCES if p.stem == "res3-66"))
    with torch.device("meta"):
        model = build(g, num_classes=10)
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("bad", [1, 0, True, 2.0])
def test_bad_num_classes(bad) -> None:
    g = Genotype.from_key("S8_B1x8~stride_cbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0")
    with pytest.raises(ValueError, match="num_classes"):
        build(g, num_classes=bad)
