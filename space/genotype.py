"""The genotype: one candidate architecture, with the training choices that travel with it.

A genotype is frozen, hashable plain data. It is validated when built, so an invalid one cannot
exist; it round-trips through a dict (``to_dict``/``from_dict``), a TOML file and a short canonical
string (``key``/``from_key``), so a trial, a checkpoint or a results table can rebuild the exact
network without the code that chose it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from space._io import write_text_atomic
from space._toml import dumps_toml, load_toml
from space.errors import UserError

BlockType = Literal["basic", "bottleneck", "preact", "mbconv", "convnext"]
Downsample = Literal["stride", "maxpool", "avgpool", "conv", "patch"]
Shortcut = Literal["conv_bn", "conv", "avgpool_conv_bn"]
Pool = Literal["avg", "max", "avgmax"]
Head = Literal["linear", "conv"]
AutoAugment = Literal["none", "randaugment", "trivialaugment"]
Activation = Literal["relu", "silu", "gelu"]
Norm = Literal["batch", "layer"]

BLOCK_TYPES: tuple[str, ...] = get_args(BlockType)
DOWNSAMPLES: tuple[str, ...] = get_args(Downsample)
SHORTCUTS: tuple[str, ...] = get_args(Shortcut)
POOLS: tuple[str, ...] = get_args(Pool)
HEADS: tuple[str, ...] = get_args(Head)
AUTO_AUGMENTS: tuple[str, ...] = get_args(AutoAugment)
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
NORMS: tuple[str, ...] = get_args(Norm)
KERNELS: tuple[int, ...] = (3, 5, 7)
# Blocks with a wide and a narrow width whose ratio is ``expansion``; the others have none.
EXPANDING_BLOCKS: tuple[str, ...] = ("bottleneck", "mbconv", "convnext")
MAX_EXPANSION = 8

MAX_STAGES = 4
MAX_DEPTH = 64  # blocks per stage; deeper than any CIFAR ResNet in the literature
MAX_WIDTH = 8192  # channels
MAX_AUTO_MAGNITUDE = 30  # torchvision's RandAugment has 31 magnitude bins, 0..30


class GenotypeError(UserError, ValueError):
    """An invalid genotype field: the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class Stage:
    """A run of residual blocks of one family at one resolution (``space.blocks`` builds them).

    The fields after ``dropout`` came later; their defaults are the networks built before them,
    so an older genotype (file, dict or key) means the same network.
    """

    depth: int  # number of residual blocks, >= 1
    width: int  # output channels of every block in the stage
    # basic: two kxk convs; bottleneck: 1x1-kxk-1x1 at width/expansion; preact: basic with the
    # norm and activation first; mbconv: inverted residual, 1x1 up by expansion, kxk depthwise,
    # 1x1 down; convnext: kxk depthwise, norm, 1x1 up by expansion, 1x1 down, layer scale
    block: BlockType = "basic"
    downsample: bool = False  # halve the resolution when entering this stage
    dropout: float = 0.0  # dropout probability between the convolutions of each block
    kernel: int = 3  # side of the spatial convolutions (the depthwise one in mbconv, convnext)
    # wide width / narrow width: bottleneck's inner width is width // expansion (ResNet's 4),
    # mbconv's hidden width input channels x expansion, convnext's hidden width width x expansion.
    # basic and preact blocks have none and keep the default.
    expansion: int = 4
    se: float = 0.0  # squeeze-excitation: squeeze to se x width channels; 0 = off

    def _validate(self, where: str) -> None:
        _check_int(f"{where}.depth", self.depth, 1, MAX_DEPTH)
        _check_int(f"{where}.width", self.width, 1, MAX_WIDTH)
        _check_choice(f"{where}.block", self.block, BLOCK_TYPES)
        _check_bool(f"{where}.downsample", self.downsample)
        _check_prob(f"{where}.dropout", self.dropout)
        if (
            isinstance(self.kernel, bool)
            or not isinstance(self.kernel, int)
            or (self.kernel not in KERNELS)
        ):
            raise GenotypeError(
                f"{where}.kernel must be one of {', '.join(map(str, KERNELS))}, "
                f"but got {self.kernel!r}"
            )
        _check_int(f"{where}.expansion", self.expansion, 1, MAX_EXPANSION)
        if self.block not in EXPANDING_BLOCKS and self.expansion != _DEFAULT_EXPANSION:
            # Refused rather than ignored: two genotypes that build the same network must be
            # equal, or duplicates go unnoticed.
            raise GenotypeError(
                f"{where}.expansion must be {_DEFAULT_EXPANSION} (unused) for a {self.block} "
                f"block, which has no expansion, but got {self.expansion!r}; only "
                f"{', '.join(EXPANDING_BLOCKS)} blocks take one"
            )
        _check_float(f"{where}.se", self.se, 0.0, 1.0)


@dataclass(frozen=True)
class Augment:
    """Data augmentation and regularisation of the training recipe that a candidate carries."""

    crop_padding: int = 4  # pad by this many pixels and crop back at a random offset; 0 = off
    flip: bool = True  # random horizontal flip
    cutout: int = 0  # side in pixels of one square set to zero per image; 0 = off
    auto: AutoAugment = "none"  # per-image automatic augmentation policy
    auto_magnitude: int = 9  # RandAugment magnitude in 0..30 (TrivialAugment draws its own)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of image pairs; 0 = off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) pasted-box mixing; 0 = off
    label_smoothing: float = 0.0  # share of the target spread evenly over all classes

    def _validate(self, where: str) -> None:
        _check_int(f"{where}.crop_padding", self.crop_padding, 0, 64)
        _check_bool(f"{where}.flip", self.flip)
        _check_int(f"{where}.cutout", self.cutout, 0, 1024)
        _check_choice(f"{where}.auto", self.auto, AUTO_AUGMENTS)
        _check_int(f"{where}.auto_magnitude", self.auto_magnitude, 0, MAX_AUTO_MAGNITUDE)
        _check_float(f"{where}.mixup_alpha", self.mixup_alpha, 0.0, 10.0)
        _check_float(f"{where}.cutmix_alpha", self.cutmix_alpha, 0.0, 10.0)
        _check_float(f"{where}.label_smoothing", self.label_smoothing, 0.0, 0.5)


@dataclass(frozen=True)
class Genotype:
    """A ResNet-family classifier for small images, plus its augmentation choices.

    The number of classes and the input size are not part of the genotype: the builder and the
    counters take them, so one genotype serves CIFAR-10, CIFAR-100 or any image folder.
    """

    stages: tuple[Stage, ...]  # 1 to 4 stages, in order
    stem_width: int = 16  # channels of the 3x3 stem convolution
    stem_bias: bool = False  # stem convolution with a bias (the BN after it makes it redundant)
    downsample: Downsample = "stride"  # how resolution halves at a downsampling stage
    shortcut: Shortcut = "conv_bn"  # projection shortcut where a block changes shape
    pool: Pool = "avg"  # global pooling; avgmax concatenates both (twice the features)
    head: Head = "linear"  # classifier: linear layer, or 1x1 conv with bias
    head_dropout: float = 0.0  # dropout probability before the classifier
    augment: Augment = field(default_factory=Augment)
    activation: Activation = "relu"  # every activation of the network, SE's inner one included
    # every norm: BatchNorm, or LayerNorm over the channels at each pixel ("channels-first")
    norm: Norm = "batch"

    def __post_init__(self) -> None:
        # Accept any sequence of stages (a list from a config, say); store a tuple so the
        # genotype stays hashable.
        if isinstance(self.stages, list):
            object.__setattr__(self, "stages", tuple(self.stages))
        if not isinstance(self.stages, tuple) or not all(isinstance(s, Stage) for s in self.stages):
            raise GenotypeError(f"stages must be a sequence of Stage, but got {self.stages!r}")
        if not 1 <= len(self.stages) <= MAX_STAGES:
            raise GenotypeError(
                f"stages must hold 1 to {MAX_STAGES} stages, but got {len(self.stages)}"
            )
        for i, stage in enumerate(self.stages):
            stage._validate(f"stages[{i}]")
        _check_int("stem_width", self.stem_width, 1, MAX_WIDTH)
        _check_bool("stem_bias", self.stem_bias)
        _check_choice("downsample", self.downsample, DOWNSAMPLES)
        _check_choice("shortcut", self.shortcut, SHORTCUTS)
        _check_choice("pool", self.pool, POOLS)
        _check_choice("head", self.head, HEADS)
        _check_prob("head_dropout", self.head_dropout)
        if not isinstance(self.augment, Augment):
            raise GenotypeError(f"augment must be an Augment, but got {self.augment!r}")
        self.augment._validate("augment")
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("norm", self.norm, NORMS)

    # -- dict and TOML ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str, int, float, bool, lists, dicts) that ``from_dict`` turns back.

        Fields added after the first release are left out at their defaults, so an older
        genotype's dict (and the TOML and model files made from it) stays as it was.
        """
        out = dataclasses.asdict(self)
        out["stages"] = [_without_defaults(dict(s), _NEW_STAGE_FIELDS) for s in out["stages"]]
        return _without_defaults(out, _NEW_GENOTYPE_FIELDS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Genotype:
        """Build a genotype from plain data; unknown keys and wrong types are errors.

        Fields left out take their defaults, except ``stages``, which is required.
        """
        if not isinstance(data, Mapping):
            raise GenotypeError(f"a genotype must be a table of fields, but got {data!r}")
        _check_keys("genotype", data, cls)
        if "stages" not in data:
            raise GenotypeError("genotype has no 'stages': give 1 to 4 [[stages]] tables")
        raw_stages = data["stages"]
        if not isinstance(raw_stages, (list, tuple)):
            raise GenotypeError(f"stages must be a list of tables, but got {raw_stages!r}")
        stages = []
        for i, raw in enumerate(raw_stages):
            if not isinstance(raw, Mapping):
                raise GenotypeError(f"stages[{i}] must be a table, but got {raw!r}")
            _check_keys(f"stages[{i}]", raw, Stage)
            missing = [name for name in ("depth", "width") if name not in raw]
            if missing:
                raise GenotypeError(
                    f"stages[{i}] has no {' or '.join(missing)}: every stage needs a depth "
                    "(blocks) and a width (channels)"
                )
            stages.append(Stage(**raw))
        raw_aug = data.get("augment", {})
        if not isinstance(raw_aug, Mapping):
            raise GenotypeError(f"augment must be a table, but got {raw_aug!r}")
        _check_keys("augment", raw_aug, Augment)
        top = {k: v for k, v in data.items() if k not in ("stages", "augment")}
        return cls(stages=tuple(stages), augment=Augment(**raw_aug), **top)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def save(self, path: str | Path, *, header: str = "") -> None:
        """Write the genotype as a TOML architecture file (atomically)."""
        comment = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
        write_text_atomic(Path(path), comment + self.to_toml())

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """Read a TOML architecture file (see ``configs/reference/``)."""
        data = load_toml(Path(path))
        try:
            return cls.from_dict(data)
        except GenotypeError as exc:
            # Named, as a syntax error is: a campaign or a retraining reads several such files.
            raise GenotypeError(f"{path}: {exc}") from None

    # -- canonical string ---------------------------------------------------------------------

    def key(self) -> str:
        """A short canonical string: equal genotypes give equal keys, and ``from_key`` inverts it.

        Layout: ``<stem>_<stage>_<stage>...~<layout>~<augment>``; ResNet-20 is
        ``S16_B3x16_B3x32s_B3x64s~stride_cbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0``.
        A stage token is the block letter (B basic, N bottleneck, P pre-activation, M mbconv,
        C convnext), depth x width, ``s`` when it downsamples, then only where they differ from
        their defaults ``-k<kernel>``, ``-e<expansion>`` and ``-se<ratio>``, and last ``@p`` for
        in-block dropout p: ``M2x24s-k5-e6-se0.25``. The layout part ends with the activation
        (``silu``, ``gelu``) and ``ln`` for LayerNorm, again only where they are not the default
        (ReLU, BatchNorm). So a genotype without the later fields keeps the key it always had.
        Fields are joined with ``_`` and parts with ``~``, characters that no number's text
        contains.
        """
        stem = f"S{self.stem_width}{'b' if self.stem_bias else ''}"
        stages = []
        for s in self.stages:
            token = f"{_BLOCK_LETTER[s.block]}{s.depth}x{s.width}{'s' if s.downsample else ''}"
            if s.kernel != _DEFAULT_KERNEL:
                token += f"-k{s.kernel}"
            if s.expansion != _DEFAULT_EXPANSION:
                token += f"-e{s.expansion}"
            if s.se:
                token += f"-se{_num(s.se)}"
            if s.dropout:
                token += f"@{_num(s.dropout)}"
            stages.append(token)
        layout = [
            self.downsample,
            _SHORTCUT_CODE[self.shortcut],
            self.pool,
            _HEAD_CODE[self.head],
            f"h{_num(self.head_dropout)}",
        ]
        if self.activation != "relu":
            layout.append(self.activation)
        if self.norm != "batch":
            layout.append(_NORM_CODE[self.norm])
        a = self.augment
        aug = [
            f"p{a.crop_padding}",
            f"f{int(a.flip)}",
            f"c{a.cutout}",
            a.auto,
            f"m{a.auto_magnitude}",
            f"x{_num(a.mixup_alpha)}",
            f"k{_num(a.cutmix_alpha)}",
            f"l{_num(a.label_smoothing)}",
        ]
        return "~".join(["_".join([stem, *stages]), "_".join(layout), "_".join(aug)])

    @classmethod
    def from_key(cls, key: str) -> Genotype:
        """Parse a string made by ``key``."""
        try:
            arch, layout, aug = key.split("~")
            stem, *stage_tokens = arch.split("_")
            if not stem.startswith("S"):
                raise ValueError(stem)
            stem_bias = stem.endswith("b")
            stages = []
            for token in stage_tokens:
                match = _STAGE_TOKEN.fullmatch(token)
                if match is None:
                    raise ValueError(token)
                letter, depth, width, ds_flag, kernel, expansion, se, dropout = match.groups()
                stages.append(
                    Stage(
                        depth=int(depth),
                        width=int(width),
                        block=_LETTER_BLOCK[letter],  # type: ignore[arg-type]
                        downsample=bool(ds_flag),
                        dropout=float(dropout) if dropout else 0.0,
                        kernel=int(kernel) if kernel else _DEFAULT_KERNEL,
                        expansion=int(expansion) if expansion else _DEFAULT_EXPANSION,
                        se=float(se) if se else 0.0,
                    )
                )
            ds, sc, pool, head, hd, *extra = layout.split("_")
            activation, norm = "relu", "batch"
            for token in extra:  # at most one of each, in key order
                if token in _NON_DEFAULT_ACTIVATIONS and (activation, norm) == ("relu", "batch"):
                    activation = token
                elif token in _CODE_NORM and norm == "batch":
                    norm = _CODE_NORM[token]
                else:
                    raise ValueError(token)
            p, f, c, auto, m, x, k, ls = aug.split("_")
            if (hd[0], p[0], f[0], c[0], m[0], x[0], k[0], ls[0]) != tuple("hpfcmxkl"):
                raise ValueError(aug)
            return cls(
                stages=tuple(stages),
                stem_width=int(stem[1:-1] if stem_bias else stem[1:]),
                stem_bias=stem_bias,
                downsample=ds,  # type: ignore[arg-type]
                shortcut=_CODE_SHORTCUT[sc],  # type: ignore[arg-type]
                pool=pool,  # type: ignore[arg-type]
                head=_CODE_HEAD[head],  # type: ignore[arg-type]
                head_dropout=float(hd[1:]),
                augment=Augment(
                    crop_padding=int(p[1:]),
                    flip=bool(int(f[1:])),
                    cutout=int(c[1:]),
                    auto=auto,  # type: ignore[arg-type]
                    auto_magnitude=int(m[1:]),
                    mixup_alpha=float(x[1:]),
                    cutmix_alpha=float(k[1:]),
                    label_smoothing=float(ls[1:]),
                ),
                activation=activation,  # type: ignore[arg-type]
                norm=norm,  # type: ignore[arg-type]
            )
        except GenotypeError:
            raise
        except (ValueError, KeyError, IndexError):
            raise GenotypeError(
                f"not a genotype key: {key!r} (expected the form Genotype.key() makes, e.g. "
                "'S16_B3x16_B3x32s~stride_cbn_avg_lin_h0~p4_f1_c0_none_m9_x0_k0_l0')"
            ) from None

    def replace(self, **changes: Any) -> Genotype:
        return dataclasses.replace(self, **changes)


_BLOCK_LETTER = {"basic": "B", "bottleneck": "N", "preact": "P", "mbconv": "M", "convnext": "C"}
_LETTER_BLOCK = {v: k for k, v in _BLOCK_LETTER.items()}
# letter, depth, width, "s", then the optional -k, -e, -se and @ fields (see Genotype.key)
_STAGE_TOKEN = re.compile(
    r"([A-Z])([0-9]+)x([0-9]+)(s?)(?:-k([0-9]+))?(?:-e([0-9]+))?(?:-se([^@]+))?(?:@(.+))?"
)
_NORM_CODE = {"batch": "bn", "layer": "ln"}
_CODE_NORM = {"ln": "layer"}  # the default, BatchNorm, has no token
_NON_DEFAULT_ACTIVATIONS = ("silu", "gelu")
_DEFAULT_KERNEL = 3
_DEFAULT_EXPANSION = 4
# Fields added after the first release: left out of to_dict at their defaults.
_NEW_STAGE_FIELDS = {"kernel": _DEFAULT_KERNEL, "expansion": _DEFAULT_EXPANSION, "se": 0.0}
_NEW_GENOTYPE_FIELDS = {"activation": "relu", "norm": "batch"}
_SHORTCUT_CODE = {"conv_bn": "cbn", "conv": "c", "avgpool_conv_bn": "acbn"}
_CODE_SHORTCUT = {v: k for k, v in _SHORTCUT_CODE.items()}
_HEAD_CODE = {"linear": "lin", "conv": "conv"}
_CODE_HEAD = {v: k for k, v in _HEAD_CODE.items()}


def _without_defaults(data: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in defaults and v == defaults[k])}


def _num(value: float) -> str:
    """Shortest round-tripping text of a float: 0.1 -> '0.1', 1.0 -> '1', 0.0 -> '0'."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


# -- validation helpers -------------------------------------------------------------------------


def _check_keys(where: str, data: Mapping[str, Any], cls: type) -> None:
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in allowed:
            raise GenotypeError(
                f"unknown key {key!r} in {where}; allowed keys: {', '.join(allowed)}"
            )


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GenotypeError(f"{name} must be an integer in [{low}, {high}], but got {value!r}")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise GenotypeError(f"{name} must be a number in [{low}, {high}], but got {value!r}")


def _check_prob(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0.0 <= value < 1.0
    ):
        raise GenotypeError(f"{name} must be a probability in [0, 1), but got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise GenotypeError(f"{name} must be true or false, but got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise GenotypeError(f"{name} must be one of {', '.join(allowed)}, but got {value!r}")
