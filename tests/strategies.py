"""Hypothesis strategies shared by the tests: random valid genotypes."""

from __future__ import annotations

from hypothesis import strategies as st

from space.genotype import (
    AUTO_AUGMENTS,
    BLOCK_TYPES,
    DOWNSAMPLES,
    HEADS,
    POOLS,
    SHORTCUTS,
    Augment,
    Genotype,
    Stage,
)

probabilities = st.sampled_from([0.0, 0.1, 0.25, 0.5])


def stages(max_depth: int = 4, max_width: int = 48) -> st.SearchStrategy[Stage]:
    return st.builds(
        Stage,
        depth=st.integers(1, max_depth),
        width=st.integers(1, max_width),
        block=st.sampled_from(BLOCK_TYPES),
        downsample=st.booleans(),
        dropout=probabilities,
    )


augments = st.builds(
    Augment,
    crop_padding=st.integers(0, 8),
    flip=st.booleans(),
    cutout=st.integers(0, 16),
    auto=st.sampled_from(AUTO_AUGMENTS),
    auto_magnitude=st.integers(0, 30),
    mixup_alpha=st.sampled_from([0.0, 0.2, 1.0]),
    cutmix_alpha=st.sampled_from([0.0, 1.0]),
    label_smoothing=st.sampled_from([0.0, 0.1, 1e-05]),
)


def genotypes(max_depth: int = 4, max_width: int = 48) -> st.SearchStrategy[Genotype]:
    return st.builds(
        Genotype,
        stages=st.lists(stages(max_depth, max_width), min_size=1, max_size=4).map(tuple),
        stem_width=st.integers(1, max_width),
        stem_bias=st.booleans(),
        downsample=st.sampled_from(DOWNSAMPLES),
        shortcut=st.sampled_from(SHORTCUTS),
        pool=st.sampled_from(POOLS),
        head=st.sampled_from(HEADS),
        head_dropout=probabilities,
        augment=augments,
    )
