"""One training function, read top to bottom, and evaluation with test-time augmentation.

``fit`` trains a model with SGD (Nesterov momentum, weight decay on conv and linear weights only),
a per-step linear warmup then cosine decay, label smoothing, mixup/cutmix and cutout as the
genotype's ``Augment`` says, bf16 autocast and channels-last on CUDA, and an optional EMA of the
weights. The training split lives on the device as uint8 and every batch is augmented there.

The search enters through ``on_epoch``: it reports and prunes; whatever it raises stops training
and propagates. A loss that becomes NaN or inf raises ``TrainingDiverged`` with the epoch and step.
With ``checkpoint``, every epoch ends by writing the full state atomically, and a later call with
the same arguments resumes after the last finished epoch and ends with the same weights.

Nothing here imports Optuna.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from search.augment import Normalization, augmented_batches, mix
from search.checkpoint import load_weights
from search.data import ImageSet
from space._io import write_atomic
from space.errors import UserError
from space.genotype import Augment

# How often (in steps) the host reads the running loss: to catch NaN early and refresh the
# progress bar, without a GPU sync on every step.
SYNC_EVERY = 25


class TrainConfigError(UserError, ValueError):
    """A training setting out of its range."""


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe, apart from the augmentation that comes with the genotype."""

    epochs: int = 30
    batch_size: int = 512
    lr: float = 0.4  # peak learning rate, as given: not rescaled when batch_size changes
    # (0.4 at 512 is the linear rule's 0.1 per 128 images; scale both together)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on conv and linear weights; none on BN weights and biases
    warmup_epochs: float = 1.0  # linear warmup to lr (at most half the run), cosine decay to 0
    ema_decay: float = 0.0  # EMA of the weights per step (0.999, say); 0 = off
    tta_views: int = 6  # evaluation views: 1 plain, 2 + flip, then +-shift translations (<= 10)
    tta_shift: int = 2  # pixels of the TTA translations
    eval_batch_size: int = 1024
    seed: int = 0
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on CPU)
    channels_last: bool = True  # NHWC memory layout (CUDA and CPU: faster convolutions on both)
    compile: bool = False  # torch.compile the model on CUDA (worth it for long runs only)
    # Capture the model's forward and backward in a CUDA graph once, then replay it every step:
    # one launch instead of hundreds, for small networks bound by kernel launches (CUDA only;
    # the loss, optimizer step and augmentation stay eager).
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("eval_batch_size", self.eval_batch_size)
        for name in ("lr", "weight_decay", "warmup_epochs", "momentum"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise TrainConfigError(f"{name} must be a number >= 0, but got {value!r}")
        if not 0 <= self.ema_decay < 1:
            raise TrainConfigError(f"ema_decay must be in [0, 1), but got {self.ema_decay!r}")
        if not 1 <= self.tta_views <= len(TTA_VIEWS):
            raise TrainConfigError(
                f"tta_views must be in [1, {len(TTA_VIEWS)}], but got {self.tta_views!r}"
            )
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed < 2**63
        ):
            raise TrainConfigError(f"seed must be an integer in [0, 2**63), but got {self.seed!r}")
        if not 0 <= self.tta_shift <= 8:
            raise TrainConfigError(f"tta_shift must be in [0, 8], but got {self.tta_shift!r}")
        if self.compile and self.cuda_graph:
            raise TrainConfigError(
                "compile and cuda_graph cannot both be true: choose one way to cut launch overhead"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**data)

    @classmethod
    def with_new_defaults(cls, recorded: dict[str, Any]) -> dict[str, Any]:
        """A recorded ``to_dict()`` with the settings added since at their defaults (what that
        run used), so that a study, run folder or checkpoint of an older version still
        compares equal and resumes."""
        return {**{k: v for k, v in cls().to_dict().items() if k not in recorded}, **recorded}


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrainConfigError(f"{name} must be an integer >= 1, but got {value!r}")


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did. Accuracies are fractions in [0, 1]."""

    epoch: int  # 1-based
    lr: float  # learning rate of the epoch's last step
    train_loss: float  # mean loss over the epoch's batches (against the mixed soft targets)
    train_acc: float  # share of augmented images whose argmax matches their dominant target
    eval_acc: float | None  # plain accuracy on the evaluation split, if one was given
    images_per_s: float  # training throughput, augmentation included, evaluation excluded
    seconds: float  # wall time of the epoch, evaluation included


@dataclass
class History:
    """Every finished epoch, in order."""

    epochs: list[EpochStats] = field(default_factory=list)

    @property
    def curve(self) -> list[float]:
        """Evaluation accuracy per epoch (the search's learning curve)."""
        return [e.eval_acc for e in self.epochs if e.eval_acc is not None]

    @property
    def train_seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(e) for e in self.epochs]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training on would only waste time."""


def lr_at(step: int, *, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Learning rate of (0-based) ``step``: linear warmup to ``peak`` over ``warmup_steps``
    (reaching it on the last warmup step), then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv and linear weights (ndim > 1); none on BN parameters and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def fit(
    model: nn.Module,
    train: ImageSet,
    *,
    augment: Augment,
    normalization: Normalization,
    num_classes: int,
    config: TrainConfig,
    device: torch.device,
    eval_set: ImageSet | None = None,
    eval_epochs: Container[int] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint: Path | None = None,
    history: History | None = None,
    progress: bool = False,
    desc: str = "train",
    stop: threading.Event | None = None,
) -> History:
    """Train ``model`` in place on ``train``; return the history of every epoch (``history``,
    when given, is filled in place: resumed epochs first, then each epoch as it ends).

    After each epoch in ``eval_epochs`` (1-based; every epoch when None) the model is evaluated
    on ``eval_set`` (plain view, EMA weights when EMA is on), then ``on_epoch`` is called with
    the epoch's figures (``eval_acc`` None where it was not evaluated); an exception from it stops
    training and propagates.
    Once ``stop`` is set (by a signal handler, say), the next step raises KeyboardInterrupt:
    a place where nothing else is half done, unlike wherever an asynchronous one would land.
    With EMA, the model holds the EMA weights when ``fit`` returns.
    """
    cuda = device.type == "cuda"
    torch.manual_seed(config.seed)  # dropout and anything else drawing from the global RNG
    # Every random choice of the data (order, augmentation, mixing) comes from this generator.
    generator = torch.Generator(device=device).manual_seed(config.seed)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = _Ema(model, config.ema_decay) if config.ema_decay else None
    optimizer = torch.optim.SGD(
        parameter_groups(model, config.weight_decay),
        lr=0.0,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
    )
    images = train.images.to(device)
    labels = train.labels.to(device)
    if eval_set is not None:  # on the device once, not copied batch by batch every epoch
        eval_set = eval_set.to(device)
    steps_per_epoch = max(1, len(train) // config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    # At most half the run: a 5-epoch warmup in a 3-epoch run would never reach the decay.
    warmup_steps = min(total_steps // 2, round(config.warmup_epochs * steps_per_epoch))
    history = History() if history is None else history  # a caller's, to read as it grows

    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = _load_state(checkpoint, config)
        load_weights(model, state["model"], where=checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        history.epochs = [EpochStats(**e) for e in state["history"]]
        start_epoch = len(history.epochs)

    step_model = torch.compile(model) if cuda and config.compile else model
    graph = cuda and config.cuda_graph and len(train) >= config.batch_size  # one batch shape
    # A graphed callable must run under autocast without its weight-cast cache.
    autocast = torch.autocast(
        "cuda", dtype=torch.bfloat16, enabled=cuda and config.bf16, cache_enabled=not graph
    )

    captured = False  # whether model.forward is the graphed one
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            seen = 0
            bar = tqdm(
                total=steps_per_epoch,
                desc=f"{desc} {epoch + 1}/{config.epochs}",
                unit="step",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            lr = 0.0
            try:
                order = torch.randperm(len(train), generator=generator, device=device)
                loader = augmented_batches(
                    images,
                    labels,
                    order,
                    batch_size=config.batch_size,
                    augment=augment,
                    normalization=normalization,
                    generator=generator,
                )
                for i, (x, y) in enumerate(loader):
                    if stop is not None and stop.is_set():
                        raise KeyboardInterrupt
                    step = epoch * steps_per_epoch + i
                    lr = lr_at(
                        step, total_steps=total_steps, warmup_steps=warmup_steps, peak=config.lr
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    x, targets = mix(x, y, augment, num_classes, generator)
                    if config.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    if graph and not captured:  # the first step: capture, once per run
                        graph = captured = _capture_graph(model, x, autocast)
                    with autocast:
                        logits = step_model(x)
                        loss = F.cross_entropy(logits.float(), targets)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if ema is not None:
                        ema.update(model)
                    loss_sum += loss.detach()
                    correct += (logits.argmax(1) == targets.argmax(1)).sum()
                    seen += x.shape[0]
                    bar.update(1)
                    if (i + 1) % SYNC_EVERY == 0:  # one host sync for both running figures
                        figures = torch.stack([loss_sum, correct.float()]).tolist()
                        total_loss, total_correct = figures
                        mean_loss = total_loss / (i + 1)
                        _check_finite(mean_loss, epoch, i)
                        bar.set_postfix(
                            loss=f"{mean_loss:.3f}",
                            acc=f"{total_correct / seen:.3f}",
                            img_s=f"{seen / (time.perf_counter() - started):.0f}",
                            lr=f"{lr:.3g}",
                        )
                mean_loss = loss_sum.item() / steps_per_epoch  # waits for the GPU: end of the epoch
                _check_finite(mean_loss, epoch, steps_per_epoch - 1)
                train_seconds = time.perf_counter() - started
                eval_model = ema.model if ema is not None else model
                eval_acc = (
                    evaluate(
                        eval_model,
                        eval_set,
                        normalization=normalization,
                        config=config,
                        device=device,
                        views=1,
                    )[0]
                    if eval_set is not None and (eval_epochs is None or epoch + 1 in eval_epochs)
                    else None
                )
                stats = EpochStats(
                    epoch=epoch + 1,
                    lr=lr,
                    train_loss=mean_loss,
                    train_acc=correct.item() / seen,
                    eval_acc=eval_acc,
                    images_per_s=seen / train_seconds,
                    seconds=time.perf_counter() - started,
                )
                bar.set_postfix(
                    loss=f"{stats.train_loss:.3f}",
                    acc=f"{stats.train_acc:.3f}",
                    **({"val": f"{eval_acc:.3f}"} if eval_acc is not None else {}),
                    img_s=f"{stats.images_per_s:.0f}",
                )
            finally:
                bar.close()
            history.epochs.append(stats)
            if checkpoint is not None:
                _save_state(
                    checkpoint, config, model, optimizer, ema, generator, history, cuda, device
                )
            if on_epoch is not None:
                on_epoch(stats)

    finally:
        if captured:
            # The graphed forward (an attribute of the instance) holds the graph and a reference
            # back to the model: drop it, so the model's class forward is back and nothing
            # keeps the trial's memory alive once the caller lets the model go.
            vars(model).pop("forward", None)
    if ema is not None:
        model.load_state_dict(ema.model.state_dict())
    return history


def _capture_graph(model: nn.Module, x: torch.Tensor, autocast: torch.autocast) -> bool:
    """Replace ``model``'s training forward (and its backward) by a CUDA graph captured for
    inputs shaped like ``x`` (``torch.cuda.make_graphed_callables`` patches ``model.forward``;
    eval mode still runs eagerly). True when captured; on failure (a network the capture cannot
    take) one line says so and training goes on eagerly.

    The capture's warm-up passes run the model in training mode on ``x``, which would move the
    BatchNorm running statistics: they are put back, so capturing changes no state.
    """
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        with autocast:
            torch.cuda.make_graphed_callables(model, (x,))
        captured = True
    except Exception as exc:  # an op the capture cannot take; eager training still works
        vars(model).pop("forward", None)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        tqdm.write(f"cuda_graph: capture failed ({first}); training eagerly", file=sys.stderr)
        captured = False
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
    return captured


def _check_finite(mean_loss: float, epoch: int, step: int) -> None:
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"training loss became {mean_loss} in epoch {epoch + 1} by step {step + 1}; "
            "try a lower learning rate"
        )


class _Ema:
    """Exponential moving average of a model's weights; BN statistics are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        torch._foreach_copy_(list(self.model.buffers()), list(model.buffers()))


def _save_state(
    path: Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: _Ema | None,
    generator: torch.Generator,
    history: History,
    cuda: bool,
    device: torch.device,
) -> None:
    state = {
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.model.state_dict() if ema is not None else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if cuda else None,
        "history": history.to_dicts(),
    }
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(
            f"{path}: cannot read the training checkpoint ({exc}); delete it to start over"
        ) from None
    recorded = state.get("config")
    if not isinstance(recorded, dict) or config.with_new_defaults(recorded) != config.to_dict():
        raise UserError(
            f"{path}: this checkpoint was written with another training config; "
            "delete it to start over, or run with the same settings to resume"
        )
    return state


# -- evaluation -----------------------------------------------------------------------------

# (flip, rows shifted, columns shifted) in units of the TTA shift: view 1 is the plain image,
# view 2 its mirror, then translations by one shift in the four diagonal directions, each with
# its mirror.
TTA_VIEWS: tuple[tuple[bool, int, int], ...] = (
    (False, 0, 0),
    (True, 0, 0),
    (False, 1, 1),
    (True, 1, 1),
    (False, -1, -1),
    (True, -1, -1),
    (False, 1, -1),
    (True, 1, -1),
    (False, -1, 1),
    (True, -1, 1),
)


def view(x: torch.Tensor, flip: bool, dy: int, dx: int) -> torch.Tensor:
    """(N, C, H, W) mirrored and/or translated by (dy, dx) pixels, the border reflected."""
    if flip:
        x = x.flip(3)
    if dy or dx:
        p = max(abs(dy), abs(dx))
        h, w = x.shape[2:]
        mode = "reflect" if p < min(h, w) else "replicate"  # reflect needs p < side
        padded = F.pad(x, (p, p, p, p), mode=mode)
        x = padded[:, :, p - dy : p - dy + h, p - dx : p - dx + w]
    return x


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    normalization: Normalization,
    config: TrainConfig,
    device: torch.device,
    views: int,
) -> torch.Tensor:
    """(views, N, classes) float32 logits of uint8 (N, C, H, W) ``images``, one per TTA view.

    On CUDA every batch has the same size (the last one padded with blank images whose logits
    are dropped; the model is in eval mode, so images do not affect each other): cuDNN picks its
    kernels for one shape, not two.
    """
    cuda = device.type == "cuda"
    model.eval()
    out = []
    n = images.shape[0]
    batch = min(config.eval_batch_size, n)
    for start in range(0, n, batch):
        chunk = images[start : start + batch].to(device)
        real = chunk.shape[0]
        if cuda and real < batch:
            chunk = torch.cat([chunk, chunk.new_zeros((batch - real, *chunk.shape[1:]))])
        x = normalization.apply(chunk.float() / 255)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        per_view = []
        for flip, dy, dx in TTA_VIEWS[:views]:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and config.bf16):
                logits = model(view(x, flip, dy * config.tta_shift, dx * config.tta_shift))
            per_view.append(logits[:real].float())
        out.append(torch.stack(per_view))
    return torch.cat(out, dim=1)


def evaluate(
    model: nn.Module,
    data: ImageSet,
    *,
    normalization: Normalization,
    config: TrainConfig,
    device: torch.device,
    views: int | None = None,
) -> tuple[float, float]:
    """(plain accuracy, accuracy of the mean logits over ``views`` TTA views) on ``data``.

    ``views`` defaults to ``config.tta_views``; with 1 view both numbers are the plain score.
    """
    views = config.tta_views if views is None else views
    logits = predict_logits(
        model, data.images, normalization=normalization, config=config, device=device, views=views
    )
    labels = data.labels.to(logits.device)
    n = labels.shape[0]
    plain = (logits[0].argmax(1) == labels).sum().item() / n
    tta = (logits.mean(0).argmax(1) == labels).sum().item() / n
    return plain, tta
