"""Training and evaluation throughput of the real pipeline, against the model's own ceiling.

    python scripts/bench_train.py                                  # short CPU run, random images
    python scripts/bench_train.py --device cuda --data data/cifar10-jpeg
    python scripts/bench_train.py --device cuda --compile --models resnet20 res3-66
    python scripts/bench_train.py --device cuda --modes       # eager vs CUDA graph vs compile

For each architecture (names in configs/reference/ or TOML paths; default resnet20, ~0.3M
parameters, and res4-32, ~4.8M: of the two 5M references it has the channel widths a search
draws, multiples of 8 that suit tensor cores, where res3-66's 66/132/264 do not; res3-66 has
2.8x the MACs and is the slower bound, ``--models res3-66``) it times, on one batch size:

- fit: ``search.training.fit`` itself, the training split resident on the device as uint8, the
  architecture's own augmentation; each round trains a fresh model two epochs and takes fit's
  own images/s of the second (the first warms up: cudnn autotuning, torch.compile, the
  allocator);
- step: fit's per-step code without its epoch bookkeeping: gather a batch from the uint8 split,
  ``augment_batch``, ``mix``, forward/backward/SGD step under the same autocast and channels_last,
  loss and accuracy accumulated on the device, the periodic loss read every ``SYNC_EVERY`` steps;
  once with the architecture's recipe and once with a heavier one (TrivialAugment + cutmix);
- augment only: the gather, augmentation and mixing of the step, no model (the data side alone);
- ceiling: the same model, optimizer and step fed one pre-made on-device batch again and again;
- evaluation: ``predict_logits`` on held-out images, one view and ``TrainConfig.tta_views`` views.

The table gives images/s, the ratio to the ceiling and how long a CIFAR-10 epoch would take
(45,000 images: the search's split; 50,000: a retrain on the full training set); a last line per
model gives the two goal figures (ratio >= 0.9; the 5M model's epoch in a few seconds on an H100).
Each row is timed in ``--repeats`` rounds, the rows taking turns so that a change of the
machine's load hits them alike, and the fastest round counts (3 rounds on CPU, where other
processes make single timings noisy). On CUDA every timed region is bracketed by
``torch.cuda.synchronize()``, and one extra step of each row runs under
``torch.cuda.set_sync_debug_mode("warn")`` to count the host syncs per step (column ``syncs``;
the ideal is 0).
Without ``--data`` the images are random uint8 of CIFAR shape, so the script runs anywhere.
Figures land in ``results/bench/train-<device>-<timestamp>.json``.

``--modes`` compares, instead of the rows above, the ways ``fit`` can run the model (default
models resnet20, mobilenetv2-cifar and res3-66): eager, ``cuda_graph`` (``TrainConfig``'s
captured forward and backward), optionally ``compile`` (``TrainConfig.compile``: plain
``torch.compile``) and ``reduce-overhead`` (``torch.compile(mode="reduce-overhead")``: Inductor's
own CUDA graphs). Each mode is timed as the fit row is (a fresh two-epoch fit, the second epoch
timed; the modes taking turns), and checked against eager: the same seed, weights and batches
trained ``--check-steps`` steps (one step per epoch of one batch, so fit's history gives the loss
of every step), the largest loss difference within ``LOSS_RTOL`` of eager's loss. On the CPU only
eager runs; the other rows say "n/a on cpu". A line per model recommends ``cuda_graph`` on or
off: on where the graph's losses agree with eager and it is at least ``GRAPH_MIN_GAIN`` faster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import itertools
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search import provenance
from search.augment import (
    Normalization,
    augment_batch,
    augmented_batches,
    batches_per_chunk,
    mix,
)
from search.config import configure_torch, resolve_device
from search.data import ImageSet, load_dataset
from search.opcount import counting_aten_ops
from search.training import (
    SYNC_EVERY,
    History,
    TrainConfig,
    TrainingDiverged,
    fit,
    lr_at,
    parameter_groups,
    predict_logits,
)
from space import Augment, Genotype, build, count
from space._cli import ArgumentParser
from space._io import write_json_atomic
from space.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ("resnet20", "res4-32")
SEARCH_EPOCH = 45_000  # images of one search epoch: CIFAR-10's training set less 5,000 for val
FULL_EPOCH = 50_000  # images of one retraining epoch on CIFAR-10's whole training set
GENERATED = (45_000, 10_000)  # generated train and held-out images, as CIFAR-10 after the split
GOAL_RATIO = 0.9  # pipeline images/s over ceiling images/s, on a GPU
MODE_MODELS = ("resnet20", "mobilenetv2-cifar", "res3-66")  # --modes without --models
MODES = ("eager", "cuda_graph", "reduce-overhead")  # --modes without names
MODE_CHOICES = ("eager", "cuda_graph", "compile", "reduce-overhead")
# A mode agrees with eager when every step's loss is within this fraction of eager's. bf16
# autocast rounds to 8 significant bits (0.4%), and cuDNN's autotuned kernels and atomic adds
# differ run to run, so a few steps of the same training on a GPU are expected to differ by
# well under 1% (the eager row's difference, from a second eager run, shows the real floor); a
# graph that replays stale inputs or loses the BatchNorm update moves the loss by far more.
# On the CPU (fp32, the same threads) a rerun is exact.
LOSS_RTOL = 0.02
# Graphs go on only when they are at least this much faster: below it a gain is within the
# run-to-run noise of one timed epoch, and a capture costs memory and a moment per trial.
GRAPH_MIN_GAIN = 0.05
DEFAULT_RULE = (
    f"on where the graph's losses agree with eager and it is at least {GRAPH_MIN_GAIN:.0%} faster"
)


@dataclass(frozen=True)
class Settings:
    """The benchmark's resolved settings."""

    device: torch.device
    batch_size: int  # training images per step
    steps: int  # timed steps per training row; also the length of a fit epoch
    warmup: int  # untimed steps before each timed training row
    repeats: int  # timed rounds per row, the rows taking turns; the fastest round counts
    fit: bool  # time search.training.fit itself
    eval_images: int  # held-out images per evaluation row
    compile: bool  # torch.compile the model on CUDA, as TrainConfig.compile does
    channels_last: bool  # NHWC tensors, as TrainConfig.channels_last (default on)
    models: tuple[Path, ...]
    modes: tuple[str, ...]  # --modes: the execution modes to compare, eager first; () = off
    check_steps: int  # --modes: steps of the loss-agreement check
    data: str | None  # None: generated random images
    out: Path  # folder of the JSON file


@dataclass(frozen=True)
class Data:
    """What every architecture is timed on; the splits already on the device."""

    description: str
    train: ImageSet  # uint8 (N, C, H, W), on the device
    held_out: ImageSet  # uint8, on the device: the evaluation images
    normalization: Normalization
    num_classes: int


@dataclass(frozen=True)
class Row:
    """One timed row of the table."""

    name: str
    images_per_s: float
    seconds_per_step: float | None  # None for evaluation rows
    ratio: float | None  # images/s over the ceiling's; None where it means nothing
    flop_per_s: float | None  # 2 FLOP per MAC; training counted as 3 forward passes
    syncs_per_step: int | None  # host syncs caught by the sync debug mode; None off CUDA

    def epoch_seconds(self, images: int) -> float:
        return images / self.images_per_s


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python scripts/bench_train.py",
        description="Training and evaluation images/s of the real pipeline against the ceiling "
        "of the same step fed one pre-made batch; prints a table per model, writes JSON.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        help="architectures: names in configs/reference/ or TOML paths "
        f"(default {' '.join(DEFAULT_MODELS)}; with --modes {' '.join(MODE_MODELS)})",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--data",
        help="cifar10, an image folder or a .tar.gz of one (default: random uint8 images, "
        f"{GENERATED[0]:,} train + {GENERATED[1]:,} held out, 3x32x32, 10 classes)",
    )
    p.add_argument("--batch-size", type=int, help="training batch (default 512 CUDA, 16 CPU)")
    p.add_argument(
        "--steps",
        type=int,
        help="timed steps per training row, also the steps of one fit epoch "
        "(default: one epoch of the training split on CUDA, 2 on CPU)",
    )
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10 CUDA, 1 CPU)")
    p.add_argument(
        "--repeats",
        type=int,
        help="rounds per row, the rows taking turns; the fastest round counts "
        "(default 1 CUDA, 3 CPU, where other processes make single timings noisy)",
    )
    p.add_argument("--no-fit", action="store_true", help="skip the row that times fit itself")
    p.add_argument(
        "--eval-images",
        type=int,
        help="held-out images per evaluation row (default 10,000 CUDA, 64 CPU)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    p.add_argument(
        "--contiguous",
        action="store_true",
        help="NCHW tensors instead of the trainer's default channels_last (to compare layouts)",
    )
    p.add_argument(
        "--modes",
        nargs="*",
        choices=MODE_CHOICES,
        metavar="MODE",
        help="instead of the pipeline rows, time fit in each execution mode and check its losses "
        f"against eager: {', '.join(MODE_CHOICES)} (no names: {' '.join(MODES)}); "
        "on CPU only eager runs",
    )
    p.add_argument(
        "--check-steps",
        type=int,
        help="--modes: training steps whose losses must agree with eager's (default 8 CUDA, 3 CPU)",
    )
    p.add_argument("--out", type=Path, default=Path("results") / "bench", help="JSON folder")
    return p


def resolve(argv: Sequence[str] | None) -> Settings:
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    for name in ("batch_size", "steps", "warmup", "repeats", "eval_images", "check_steps"):
        value = getattr(args, name)
        least = 0 if name == "warmup" else 1
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be an integer >= {least}, but got {value}")
    modes = () if args.modes is None else comparison_modes(args.modes)
    if modes and args.compile:
        raise UserError(
            "--compile and --modes cannot be combined: --modes times compile as a mode of its own "
            "(--modes eager compile reduce-overhead, say)"
        )
    batch_size = args.batch_size or (TrainConfig().batch_size if cuda else 16)
    steps = args.steps or (SEARCH_EPOCH // batch_size if cuda else 2)
    return Settings(
        device=device,
        batch_size=batch_size,
        steps=steps,
        warmup=args.warmup if args.warmup is not None else (10 if cuda else 1),
        repeats=args.repeats or (1 if cuda else 3),
        fit=not args.no_fit,
        eval_images=args.eval_images or (10_000 if cuda else 64),
        compile=args.compile,
        channels_last=not args.contiguous,
        models=tuple(
            model_path(m) for m in args.models or (MODE_MODELS if modes else DEFAULT_MODELS)
        ),
        modes=modes,
        check_steps=args.check_steps or (8 if cuda else 3),
        data=args.data,
        out=args.out,
    )


def comparison_modes(names: Sequence[str]) -> tuple[str, ...]:
    """The modes to compare in a fixed order, eager (the reference) always first."""
    chosen = set(names) | {"eager"} if names else set(MODES)
    return tuple(m for m in MODE_CHOICES if m in chosen)


def model_path(name: str) -> Path:
    """A TOML path as given, or a name in configs/reference/."""
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise UserError(f"--models: no such architecture file {name!r}")
        return path
    candidate = ROOT / "configs" / "reference" / f"{name}.toml"
    if not candidate.is_file():
        names = sorted(p.stem for p in (ROOT / "configs" / "reference").glob("*.toml"))
        raise UserError(
            f"--models: no reference architecture {name!r} (names: {', '.join(names)}; "
            "or give a path to a .toml file)"
        )
    return candidate


def load_data(source: str | None, device: torch.device) -> Data:
    if source is None:
        gen = torch.Generator().manual_seed(0)
        splits = [
            ImageSet(
                torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
                torch.randint(0, 10, (n,), generator=gen),
            )
            for n in GENERATED
        ]
        # Uniform bytes: mean 0.5, standard deviation 1/sqrt(12) in [0, 1] units.
        norm = Normalization((0.5,) * 3, ((1 / 12) ** 0.5,) * 3)
        description = (
            f"generated: {GENERATED[0]:,} train + {GENERATED[1]:,} held-out random uint8 images, "
            "3x32x32, 10 classes"
        )
        return Data(description, splits[0].to(device), splits[1].to(device), norm, 10)
    dataset = load_dataset(source)
    return Data(
        dataset.describe() + " (evaluation rows on test)",
        dataset.train.to(device),
        dataset.test.to(device),
        Normalization(dataset.mean, dataset.std),
        dataset.num_classes,
    )


# -- timing ----------------------------------------------------------------------------------


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Timed:
    """A row to time: ``warm`` runs it untimed, ``measure`` times one round and returns
    images/s."""

    name: str
    warm: Callable[[], None]
    measure: Callable[[], float]


def stepped(
    name: str,
    step: Callable[[int], object],
    *,
    steps: int,
    warmup: int,
    images_per_step: int,
    sync: Callable[[], None],
) -> tuple[Timed, Callable[[], int]]:
    """A row of ``steps`` calls of ``step`` per round, and the next step index (the index runs
    on across warm-up and rounds, so periodic work keeps its cadence)."""
    index = itertools.count()

    def warm() -> None:
        for _ in range(warmup):
            step(next(index))

    def measure() -> float:
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            step(next(index))
        sync()
        return steps * images_per_step / (time.perf_counter() - started)

    return Timed(name, warm, measure), lambda: next(index)


def fastest(rows: list[Timed], repeats: int) -> dict[str, float]:
    """Images/s of each row: the fastest of ``repeats`` rounds. The rows take turns round by
    round, so a change in the machine's load mid-run hits them alike."""
    for row in rows:
        row.warm()
    best = dict.fromkeys((row.name for row in rows), 0.0)
    for _ in range(repeats):
        for row in rows:
            best[row.name] = max(best[row.name], row.measure())
    return best


def count_syncs(step: Callable[[int], object], i: int, device: torch.device) -> int | None:
    """Host syncs in one call ``step(i)`` (CUDA only): what ``set_sync_debug_mode`` flags."""
    if device.type != "cuda":
        return None
    if (i + 1) % SYNC_EVERY == 0:
        i += 1  # not the step that reads the loss on purpose
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(i)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def endless_batches(
    data: Data, augment: Augment, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Augmented batches of shuffled epochs, one after another, as fit's loader makes them
    (chunks of several batches augmented at once)."""
    while True:
        order = torch.randperm(len(data.train), generator=generator, device=generator.device)
        yield from augmented_batches(
            data.train.images,
            data.train.labels,
            order,
            batch_size=batch_size,
            augment=augment,
            normalization=data.normalization,
            generator=generator,
        )


@dataclass
class Stepper:
    """The model side of fit's step, built once per architecture: the same optimizer, learning
    rate schedule, autocast and memory format as ``fit``."""

    model: nn.Module
    step_model: nn.Module  # the compiled model when asked (CUDA), else ``model``
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    cuda: bool
    total_steps: int
    warmup_steps: int

    @classmethod
    def make(
        cls, model: nn.Module, config: TrainConfig, device: torch.device, total: int
    ) -> Stepper:
        cuda = device.type == "cuda"
        model.to(device).train()
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(
            parameter_groups(model, config.weight_decay),
            lr=0.0,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
        )
        step_model = torch.compile(model) if cuda and config.compile else model
        return cls(model, step_model, optimizer, config, cuda, total, max(1, total // 4))

    def step(
        self, i: int, x: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on normalised float (N, C, H, W) ``x``; returns (loss, logits)."""
        lr = lr_at(
            i, total_steps=self.total_steps, warmup_steps=self.warmup_steps, peak=self.config.lr
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and self.config.bf16):
            logits = self.step_model(x)
            loss = F.cross_entropy(logits.float(), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits


def pipeline_step(
    stepper: Stepper | None, data: Data, augment: Augment, batch_size: int, device: torch.device
) -> Callable[[int], object]:
    """fit's step from the uint8 split: gather, augment, mix, then the model step with the loss
    and accuracy summed on the device and read every SYNC_EVERY steps; without ``stepper``, the
    data side alone."""
    generator = torch.Generator(device=device).manual_seed(0)
    loader = endless_batches(data, augment, batch_size, generator)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)

    def step(i: int) -> object:
        nonlocal loss_sum, correct
        x, y = next(loader)
        x, targets = mix(x, y, augment, data.num_classes, generator)
        if stepper is None:
            return x
        loss, logits = stepper.step(i, x, targets)
        loss_sum += loss.detach()
        correct += (logits.argmax(1) == targets.argmax(1)).sum()
        if (i + 1) % SYNC_EVERY == 0:
            loss_sum.item()  # fit reads the running loss here to catch NaN
        return loss

    return step


# The recipe of the issue's goal (at most 80 ATen operations per batch): the heaviest per-image
# work the default space draws, TrivialAugment with cutout and cutmix.
GOAL_RECIPE = Augment(crop_padding=4, cutout=8, auto="trivialaugment", cutmix_alpha=1.0)
GOAL_OPS = 80


def aten_ops_per_batch(data: Data, augment: Augment, batch_size: int) -> float:
    """ATen operations the data side of fit dispatches per training batch: one chunk of the
    loader (gather, crop, flip, auto-augmentation, normalisation and cutout, once per chunk)
    and the mixing of each of its batches, over the chunk's batches. Views count (see
    search.opcount); on a GPU each non-view operation is about one kernel launch."""
    device = data.train.images.device
    per_chunk = batches_per_chunk(data.train.images, batch_size)

    def one_chunk() -> tuple[int, int]:
        generator = torch.Generator(device=device).manual_seed(0)
        order = torch.randperm(len(data.train), generator=generator, device=device)
        loader = augmented_batches(
            data.train.images,
            data.train.labels,
            order,
            batch_size=batch_size,
            augment=augment,
            normalization=data.normalization,
            generator=generator,
        )
        batches = 0
        with counting_aten_ops() as counts:
            for x, y in itertools.islice(loader, per_chunk):
                mix(x, y, augment, data.num_classes, generator)
                batches += 1
        return sum(counts.values()), batches

    one_chunk()  # builds the cached tables of the augmentation ops
    ops, batches = one_chunk()
    return ops / batches


def ceiling_step(
    stepper: Stepper, data: Data, augment: Augment, batch_size: int, device: torch.device
) -> Callable[[int], object]:
    """The same model step on one batch made once, already on the device and normalised."""
    generator = torch.Generator(device=device).manual_seed(1)
    index = torch.arange(batch_size, device=device) % len(data.train)
    x = augment_batch(data.train.images[index], augment, data.normalization, generator)
    x, targets = mix(x, data.train.labels[index], augment, data.num_classes, generator)
    if stepper.config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return lambda i: stepper.step(i, x, targets)


# -- one architecture ------------------------------------------------------------------------


def recipe_label(a: Augment) -> str:
    """crop4+flip+TA+cutmix, say."""
    parts = [f"crop{a.crop_padding}"] if a.crop_padding else []
    parts += ["flip"] if a.flip else []
    parts += [f"cutout{a.cutout}"] if a.cutout else []
    parts += {"none": [], "randaugment": [f"RA{a.auto_magnitude}"], "trivialaugment": ["TA"]}[
        a.auto
    ]
    parts += ["mixup"] if a.mixup_alpha else []
    parts += ["cutmix"] if a.cutmix_alpha else []
    return "+".join(parts) or "none"


def train_config(s: Settings) -> TrainConfig:
    """fit's defaults at the benchmark's batch size and compile setting."""
    base = TrainConfig()
    return TrainConfig(
        batch_size=s.batch_size,
        lr=base.lr * s.batch_size / base.batch_size,  # the default peak, per image
        compile=s.compile,
        channels_last=s.channels_last,
        epochs=2,  # the fit row: one epoch to warm up, one timed
    )


def bench_model(path: Path, data: Data, s: Settings) -> dict[str, Any]:
    g = Genotype.load(path)
    num_classes = data.num_classes
    in_channels = data.train.images.shape[1]
    image_size = tuple(data.train.images.shape[2:])
    params, macs = count(g, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    config = train_config(s)
    heavy = dataclasses.replace(g.augment, auto="trivialaugment", cutmix_alpha=1.0)
    train_flop = 3 * 2 * macs  # FLOP per training image: forward + backward ~ 3 forwards
    eval_views = (1, config.tta_views)
    per_step = {
        "steps": s.steps,
        "warmup": s.warmup,
        "images_per_step": s.batch_size,
        "sync": synchronizer(s.device),
    }
    print(
        f"\n{path.stem}: {params:,} parameters, {macs / 1e6:,.1f}M MACs per image  "
        f"({path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})"
    )

    torch.manual_seed(0)
    stepper = Stepper.make(
        build(g, num_classes=num_classes, in_channels=in_channels),
        config,
        s.device,
        total=s.warmup + s.repeats * s.steps + 2,
    )
    timed: list[Timed] = [fit_row(g, data, s, config)] if s.fit else []
    probes = {}  # row name -> (step, next index): one more step of each, to count its syncs
    kinds = [(f"step ({recipe_label(a)})", stepper, a) for a in (g.augment, heavy)]
    kinds += [(f"augment only ({recipe_label(a)})", None, a) for a in (g.augment, heavy)]
    for name, model_side, recipe in kinds:
        step = pipeline_step(model_side, data, recipe, s.batch_size, s.device)
        row, index = stepped(name, step, **per_step)
        timed.append(row)
        probes[name] = (step, index)
    ceiling_name = "ceiling (one pre-made batch)"
    step = ceiling_step(stepper, data, g.augment, s.batch_size, s.device)
    row, index = stepped(ceiling_name, step, **per_step)
    timed.append(row)
    probes[ceiling_name] = (step, index)
    best = fastest(timed, s.repeats)

    ceiling = best[ceiling_name]  # images/s
    rows = []
    for name, ips in best.items():
        model = not name.startswith("augment only")
        step_index = probes.get(name)
        rows.append(
            Row(
                name,
                ips,
                s.batch_size / ips,
                ips / ceiling if model else None,
                ips * train_flop if model else None,
                count_syncs(step_index[0], step_index[1](), s.device) if step_index else None,
            )
        )

    held_out = data.held_out.images[: s.eval_images]
    eval_best = fastest(
        [eval_row(stepper.model, held_out, data.normalization, config, s, v) for v in eval_views],
        s.repeats,
    )
    eval_rows = [
        Row(name, ips, None, None, ips * views * 2 * macs, None)
        for (name, ips), views in zip(eval_best.items(), eval_views, strict=True)
    ]
    pipeline = rows[0]
    ops = {
        recipe_label(a): aten_ops_per_batch(data, a, s.batch_size)
        for a in (g.augment, heavy, GOAL_RECIPE)
    }
    summary = {
        "pipeline_row": pipeline.name,
        "pipeline_images_per_s": pipeline.images_per_s,
        "ceiling_images_per_s": ceiling,
        "ratio": pipeline.images_per_s / ceiling,
        "ratio_goal": GOAL_RATIO,
        "epoch_seconds": {
            str(SEARCH_EPOCH): pipeline.epoch_seconds(SEARCH_EPOCH),
            str(FULL_EPOCH): pipeline.epoch_seconds(FULL_EPOCH),
        },
        "eval_images_per_s": eval_rows[0].images_per_s,
        "eval_tta_images_per_s": eval_rows[1].images_per_s,
        "aten_ops_per_batch": ops,
        "aten_ops_goal": {recipe_label(GOAL_RECIPE): GOAL_OPS},
    }
    print_tables(rows, eval_rows, s, config, summary, path.stem, len(held_out))
    return {
        "name": path.stem,
        "path": str(path),
        "key": g.key(),
        "params": params,
        "macs": macs,
        "recipe": recipe_label(g.augment),
        "heavy_recipe": recipe_label(heavy),
        "train": [dataclasses.asdict(r) for r in rows],
        "eval": [dataclasses.asdict(r) for r in eval_rows],
        "summary": summary,
    }


def fit_row(g: Genotype, data: Data, s: Settings, config: TrainConfig) -> Timed:
    """``fit`` itself on the first ``steps`` batches of the split (all of it when that is an
    epoch): each round trains a fresh model for two epochs and reports fit's own images/s of
    the second (the first warms up)."""
    n = min(len(data.train), s.steps * s.batch_size)
    split = data.train.take(torch.arange(n, device=s.device)) if n < len(data.train) else data.train

    def measure() -> float:
        torch.manual_seed(0)
        model = build(g, num_classes=data.num_classes, in_channels=split.images.shape[1])
        history = fit(
            model,
            split,
            augment=g.augment,
            normalization=data.normalization,
            num_classes=data.num_classes,
            config=config,
            device=s.device,
        )
        return history.epochs[-1].images_per_s

    return Timed(f"fit ({recipe_label(g.augment)})", lambda: None, measure)


def eval_row(
    model: nn.Module,
    images: torch.Tensor,
    normalization: Normalization,
    config: TrainConfig,
    s: Settings,
    views: int,
) -> Timed:
    """``predict_logits`` over ``images`` with ``views`` TTA views (the uncompiled model, as fit
    evaluates); one untimed pass first, so cudnn.benchmark has met every batch shape."""
    kwargs = {"normalization": normalization, "config": config, "device": s.device, "views": views}
    sync = synchronizer(s.device)

    def warm() -> None:
        predict_logits(model, images, **kwargs)

    def measure() -> float:
        sync()
        started = time.perf_counter()
        predict_logits(model, images, **kwargs)
        sync()
        return images.shape[0] / (time.perf_counter() - started)

    name = "plain (1 view)" if views == 1 else f"TTA ({views} views)"
    return Timed(name, warm, measure)


# -- execution modes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeRow:
    """One execution mode of one model: its speed and whether it trains as eager does."""

    model: str
    mode: str
    images_per_s: float | None  # fit's second epoch, best round; None where it did not run
    seconds_per_step: float | None
    speedup: float | None  # images/s over eager's
    setup_seconds: float | None  # first epoch's time over the timed one's (the 1st round):
    # cuDNN autotuning, and the graph capture or compilation of the mode
    agrees: bool | None  # every checked step's loss within LOSS_RTOL of eager's
    max_loss_difference: float | None  # largest |loss - eager's loss| over the checked steps;
    # on the eager row, a second eager run's: the noise floor
    note: str  # why a row did not run ("n/a on cpu"), or what went wrong


def loss_agreement(
    reference: Sequence[float], losses: Sequence[float], *, rtol: float = LOSS_RTOL
) -> tuple[bool, float]:
    """(whether every loss is within ``rtol`` of the reference's, the largest absolute
    difference); a non-finite loss never agrees."""
    if len(reference) != len(losses) or not reference:
        raise ValueError(
            f"two loss trajectories of the same nonzero length are needed, but got "
            f"{len(reference)} and {len(losses)} steps"
        )
    differences = [abs(a - b) for a, b in zip(reference, losses, strict=True)]
    finite = all(math.isfinite(v) for v in (*reference, *losses))
    worst = max(differences) if finite else math.inf
    agree = finite and all(d <= rtol * abs(r) for d, r in zip(differences, reference, strict=True))
    return agree, worst


def recommend_cuda_graph(
    eager: ModeRow, graph: ModeRow | None, *, min_gain: float = GRAPH_MIN_GAIN
) -> str:
    """'on' where the graph agrees with eager and is at least ``min_gain`` faster, 'off'
    otherwise, 'n/a' where either was not measured (a CPU, or no cuda_graph row)."""
    if graph is None or graph.images_per_s is None or eager.images_per_s is None:
        return "n/a"
    faster = graph.images_per_s >= (1 + min_gain) * eager.images_per_s
    return "on" if graph.agrees and faster else "off"


def default_cuda_graph(recommendations: dict[str, str]) -> str:
    """One default from the per-model recommendations: 'on' or 'off' where they all say so,
    'mixed' where they differ, 'n/a' where none was measured."""
    measured = {r for r in recommendations.values() if r != "n/a"}
    if not measured:
        return "n/a"
    return measured.pop() if len(measured) == 1 else "mixed"


def in_mode(model: nn.Module, config: TrainConfig, mode: str) -> tuple[nn.Module, TrainConfig]:
    """The model and config that make ``fit`` run ``mode``. TrainConfig.compile is plain
    ``torch.compile``; reduce-overhead is compiled here and handed to fit as the model (fit's
    parameters, .to() and train() reach the original through the wrapper), so TrainConfig gains
    no field until the figures say the mode is worth one."""
    if mode == "cuda_graph":
        return model, dataclasses.replace(config, cuda_graph=True)
    if mode == "compile":
        return model, dataclasses.replace(config, compile=True)
    if mode == "reduce-overhead":
        return torch.compile(model, mode="reduce-overhead"), config
    return model, config


def cudagraph_skips() -> int:
    """How often Inductor has declined its CUDA graphs in this process (a private counter: 0
    where this torch has none)."""
    with contextlib.suppress(Exception):
        from torch._dynamo.utils import counters

        return int(counters["inductor"]["cudagraph_skips"])
    return 0


def fit_in_mode(
    g: Genotype, split: ImageSet, data: Data, config: TrainConfig, mode: str, s: Settings
) -> tuple[History, list[str]]:
    """A fresh model (seed 0) trained by ``fit`` in ``mode``; its history, and notes on what
    the mode did not do (a failed capture trains eagerly and says so on stderr)."""
    torch.manual_seed(0)
    model = build(g, num_classes=data.num_classes, in_channels=split.images.shape[1])
    model, config = in_mode(model, config, mode)
    skips = cudagraph_skips()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            history = fit(
                model,
                split,
                augment=g.augment,
                normalization=data.normalization,
                num_classes=data.num_classes,
                config=config,
                device=s.device,
            )
    finally:
        sys.stderr.write(stderr.getvalue())
    notes = []
    if "cuda_graph: capture failed" in stderr.getvalue():
        notes.append("capture failed, trained eagerly")
    if cudagraph_skips() > skips:
        notes.append(f"Inductor skipped its CUDA graphs {cudagraph_skips() - skips}x")
    return history, notes


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def compare_modes(path: Path, data: Data, s: Settings) -> dict[str, Any]:
    """Every mode of ``s.modes`` on one architecture: timed as the fit row, then its losses
    checked against eager's; prints the table and the recommendation, returns them."""
    g = Genotype.load(path)
    in_channels = data.train.images.shape[1]
    image_size = tuple(data.train.images.shape[2:])
    params, macs = count(
        g, num_classes=data.num_classes, in_channels=in_channels, image_size=image_size
    )
    print(f"\n{path.stem}: {params:,} parameters, {macs / 1e6:,.1f}M MACs per image")
    config = train_config(s)
    cuda = s.device.type == "cuda"
    # Graphs (fit's and Inductor's) are CUDA only, and fit ignores compile on a CPU.
    runnable = [m for m in s.modes if cuda or m == "eager"]
    n = min(len(data.train), s.steps * s.batch_size)
    split = data.train.take(torch.arange(n, device=s.device)) if n < len(data.train) else data.train

    best: dict[str, float] = {}
    setup: dict[str, float] = {}
    notes: dict[str, list[str]] = {m: [] if m in runnable else ["n/a on cpu"] for m in s.modes}
    for _ in range(s.repeats):
        for mode in runnable:
            if mode != "eager" and mode not in best and notes[mode]:
                continue  # failed in an earlier round
            try:
                history, said = fit_in_mode(g, split, data, config, mode, s)
            except Exception as exc:  # a mode the device cannot run; eager failing is a bug
                if mode == "eager":
                    raise
                notes[mode].append(f"failed: {first_line(exc)}")
                continue
            first, timed = history.epochs[0], history.epochs[-1]
            best[mode] = max(best.get(mode, 0.0), timed.images_per_s)
            setup.setdefault(mode, max(0.0, first.seconds - timed.seconds))
            notes[mode] += [note for note in said if note not in notes[mode]]

    # The loss check: one batch, so each epoch is one step and fit's history holds every
    # step's loss; the warmup over the first half, as a real run starts.
    batch = data.train.take(torch.arange(min(len(data.train), s.batch_size), device=s.device))
    check = dataclasses.replace(
        config, epochs=s.check_steps, warmup_epochs=max(1.0, s.check_steps / 2)
    )

    def losses(mode: str) -> list[float] | None:
        try:
            history, _ = fit_in_mode(g, batch, data, check, mode, s)
        except TrainingDiverged:
            return [math.nan] * s.check_steps
        except Exception as exc:
            if mode == "eager":
                raise
            notes[mode].append(f"loss check failed: {first_line(exc)}")
            return None
        return [e.train_loss for e in history.epochs]

    reference = losses("eager")
    assert reference is not None
    agreement: dict[str, tuple[bool, float]] = {}
    for mode in runnable:
        if mode in best:
            trajectory = losses(mode)  # eager again: the noise floor
            if trajectory is not None:
                agreement[mode] = loss_agreement(reference, trajectory)
    torch.compiler.reset()  # drop the compiled graphs and their memory pools

    rows = []
    for mode in s.modes:
        ips = best.get(mode)
        agree, worst = agreement.get(mode, (None, None))
        rows.append(
            ModeRow(
                model=path.stem,
                mode=mode,
                images_per_s=ips,
                seconds_per_step=s.batch_size / ips if ips else None,
                speedup=ips / best["eager"] if ips else None,
                setup_seconds=setup.get(mode),
                agrees=agree,
                max_loss_difference=worst,
                note="; ".join(notes[mode]),
            )
        )
    by_mode = {r.mode: r for r in rows}
    recommendation = recommend_cuda_graph(by_mode["eager"], by_mode.get("cuda_graph"))
    line = recommendation_line(rows, recommendation)
    print_mode_table(rows, s)
    print(f"  => {path.stem}: {line}")
    return {
        "name": path.stem,
        "path": str(path),
        "key": g.key(),
        "params": params,
        "macs": macs,
        "loss_reference": reference,
        "rows": [dataclasses.asdict(r) for r in rows],
        "cuda_graph": recommendation,
        "recommendation": line,
    }


def recommendation_line(rows: list[ModeRow], recommendation: str) -> str:
    """'cuda_graph: on (1.42x eager, losses agree; reduce-overhead 1.30x)', say."""
    by_mode = {r.mode: r for r in rows}
    graph = by_mode.get("cuda_graph")
    others = ", ".join(
        f"{r.mode} {r.speedup:.2f}x" + ("" if r.agrees else " (losses differ)")
        for r in rows
        if r.mode not in ("eager", "cuda_graph") and r.speedup is not None
    )
    if recommendation == "n/a":
        why = "n/a on cpu" if graph is not None and graph.note == "n/a on cpu" else "not measured"
        return f"cuda_graph: n/a ({why}: graphs are CUDA only)"
    assert graph is not None and graph.speedup is not None
    agree = "losses agree" if graph.agrees else "losses differ from eager"
    text = f"cuda_graph: {recommendation} ({graph.speedup:.2f}x eager, {agree}"
    text += f"; {others})" if others else ")"
    return text


def print_mode_table(rows: list[ModeRow], s: Settings) -> None:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(
        f"  modes: fit, batch {s.batch_size}, best of {s.repeats} fresh 2-epoch trainings, the 2nd "
        f"epoch ({s.steps} steps) timed; losses of {s.check_steps} steps on one batch from seed 0 "
        f"agree within {LOSS_RTOL:.0%} of eager's"
    )
    print(
        f"  {'model':<18} {'mode':<16} {'img/s':>9} {'ms/step':>8} {'x eager':>7} "
        f"{'set-up s':>8} {'agrees':>6} {'max dloss':>9}  note"
    )
    for r in rows:
        agrees = "-" if r.agrees is None else ("yes" if r.agrees else "no")
        note = r.note or ("reference; dloss: a 2nd eager run" if r.mode == "eager" else "")
        print(
            f"  {r.model:<18} {r.mode:<16} {num(r.images_per_s, ',.1f'):>9} "
            f"{num(r.seconds_per_step and r.seconds_per_step * 1e3, ',.1f'):>8} "
            f"{num(r.speedup, '.2f'):>7} {num(r.setup_seconds, '.1f'):>8} {agrees:>6} "
            f"{num(r.max_loss_difference, '.2e'):>9}  {note}"
        )


# -- output ----------------------------------------------------------------------------------


def print_tables(
    rows: list[Row],
    eval_rows: list[Row],
    s: Settings,
    config: TrainConfig,
    summary: dict[str, Any],
    name: str,
    eval_images: int,
) -> None:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(
        f"  training: batch {s.batch_size}, best of {s.repeats} rounds x {s.steps} steps after "
        f"{s.warmup} warm-up, rows taking turns; fit: its 2nd epoch of {s.steps} steps"
    )
    print(
        f"  {'row':<36} {'img/s':>9} {'ms/step':>9} {'/ceiling':>8} {'GFLOP/s':>9} "
        f"{'45k ep s':>9} {'50k ep s':>9} {'syncs':>5}"
    )
    for r in rows:
        model = r.flop_per_s is not None
        cells = [
            num(r.seconds_per_step and r.seconds_per_step * 1e3, ",.1f"),
            num(r.ratio, ".2f"),
            num(r.flop_per_s and r.flop_per_s / 1e9, ",.1f"),
            num(r.epoch_seconds(SEARCH_EPOCH) if model else None, ",.1f"),
            num(r.epoch_seconds(FULL_EPOCH) if model else None, ",.1f"),
            num(r.syncs_per_step, "d"),
        ]
        widths = (9, 8, 9, 9, 9, 5)
        row = " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        print(f"  {r.name:<36} {r.images_per_s:>9,.1f} {row}")
    print(
        f"  evaluation: predict_logits, {eval_images:,} images, eval batch {config.eval_batch_size}"
    )
    print(f"  {'row':<36} {'img/s':>9} {'GFLOP/s':>9} {'10k test s':>10}")
    for r in eval_rows:
        gflops = num(r.flop_per_s and r.flop_per_s / 1e9, ",.1f")
        print(
            f"  {r.name:<36} {r.images_per_s:>9,.1f} {gflops:>9} {10_000 / r.images_per_s:>10,.2f}"
        )
    ratio = summary["ratio"]
    met = "met" if ratio >= GOAL_RATIO else "not met"
    where = "" if s.device.type == "cuda" else "; this run is on the CPU"
    seconds = summary["epoch_seconds"]
    print(
        f"  => {name}: pipeline/ceiling {ratio:.2f} "
        f"(goal >= {GOAL_RATIO} on a GPU: {met}{where}; pipeline = {summary['pipeline_row']})"
    )
    print(
        f"     full CIFAR-10 epoch through the pipeline: {seconds[str(FULL_EPOCH)]:,.1f} s for "
        f"{FULL_EPOCH:,} images, {seconds[str(SEARCH_EPOCH)]:,.1f} s for {SEARCH_EPOCH:,}"
    )
    ops = ", ".join(f"{recipe} {n:,.0f}" for recipe, n in summary["aten_ops_per_batch"].items())
    goal = recipe_label(GOAL_RECIPE)
    print(
        f"     ATen operations per batch on the data side (augmentation and mixing): {ops} "
        f"(goal for {goal}: at most {GOAL_OPS})"
    )


def device_slug(device: torch.device) -> str:
    """'cpu', or the GPU's name as a file-name word: 'nvidia-h100-80gb-hbm3'."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    try:
        s = resolve(argv)
        configure_torch(s.device)
        load = os.getloadavg()[0]
        cores = os.cpu_count() or 1
        print(
            f"device  {provenance.device_name(s.device)}; torch {torch.__version__}; "
            f"bf16 autocast {'on' if s.device.type == 'cuda' else 'off (CPU)'}; "
            f"channels_last {'on' if s.channels_last else 'off'}; "
            f"compile {'on' if s.compile and s.device.type == 'cuda' else 'off'}"
        )
        if s.compile and s.device.type != "cuda":
            print("        (--compile is ignored on CPU, as fit ignores it)")
        if load > cores / 2:
            print(
                f"        load average {load:.1f} on {cores} cores before the start: other "
                "processes share the CPU, so these figures are low"
            )
        data = load_data(s.data, s.device)
        print(f"data    {data.description}")
        if s.modes:
            models = []
            compared = [compare_modes(path, data, s) for path in s.models]
            default = default_cuda_graph({m["name"]: m["cuda_graph"] for m in compared})
            print(f"\n=> cuda_graph as the CUDA default: {default} ({DEFAULT_RULE})")
            modes = {
                "modes": list(s.modes),
                "check_steps": s.check_steps,
                "loss_rtol": LOSS_RTOL,
                "graph_min_gain": GRAPH_MIN_GAIN,
                "rule": DEFAULT_RULE,
                "cuda_graph_default": default,
                "models": compared,
            }
        else:
            models = [bench_model(path, data, s) for path in s.models]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = s.out / f"train-{device_slug(s.device)}-{stamp}.json"
    record = {
        "benchmark": "train",
        "created": provenance.now(),
        "device": provenance.device_name(s.device),
        "host": provenance.host(),
        "versions": provenance.versions(),
        "load_average_at_start": load,
        "cpu_count": cores,
        "command": provenance.command_line(),
        "settings": {
            "device": str(s.device),
            "batch_size": s.batch_size,
            "steps": s.steps,
            "warmup": s.warmup,
            "repeats": s.repeats,
            "fit": s.fit,
            "eval_images": s.eval_images,
            "compile": s.compile,
            "modes": list(s.modes),
            "bf16": s.device.type == "cuda" and TrainConfig().bf16,
            "channels_last": s.channels_last,
            "sync_every": SYNC_EVERY,
            "train_config": train_config(s).to_dict(),
        },
        "data": data.description,
        "goals": {"ratio": GOAL_RATIO, "epoch_images": [SEARCH_EPOCH, FULL_EPOCH]},
        "models": models,
    }
    if s.modes:
        record["mode_comparison"] = modes
    write_json_atomic(path, record)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
