"""One architecture trained end to end into a folder that explains itself.

``run_experiment`` is what ``python -m search.train`` and the retraining of the best trials
share. The folder holds:

- ``config.json``: the settings (genotype, data, training), versions, device, host, command;
- ``state.pt``: the full training state after the last finished epoch, while training runs
  (a killed run restarts from it; removed once the run is finished);
- ``history.csv``: one row per finished epoch, rewritten after every epoch;
- ``model.safetensors`` + ``genotype.toml``: the trained weights with the architecture, enough to
  rebuild without this project's search code;
- ``metrics.json``: final accuracies with and without TTA, parameters, MACs, time, throughput.

A finished folder is not trained again (its metrics are returned) unless ``fresh``; a folder of a
run with other settings is an error rather than silently mixed.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from search import provenance
from search.augment import Normalization
from search.checkpoint import ModelInfo, save_model
from search.config import DataConfig, first_difference
from search.data import Dataset
from search.training import EpochStats, History, TrainConfig, evaluate, fit
from space import Genotype, build, count
from space._io import remove_stale_temporaries, write_json_atomic, write_text_atomic
from space.errors import UserError


@dataclass(frozen=True)
class Experiment:
    """What to train: an architecture, its data and its recipe."""

    name: str  # folder-friendly name: the architecture file's stem, or trial-17 say
    genotype: Genotype
    data: DataConfig
    train: TrainConfig
    eval_each_epoch: bool = True  # evaluate on the validation split after every epoch
    # With eval_each_epoch, evaluate only after these (1-based) epochs; None = every epoch.
    eval_epochs: tuple[int, ...] | None = None
    test: bool = True  # end with the test split (the search's own runs never touch it)

    def settings(self) -> dict[str, Any]:
        """What must match for a folder to be resumed or reused. The later fields are recorded
        only away from their defaults, so a folder of an older version still resumes."""
        return {
            "name": self.name,
            "genotype": self.genotype.to_dict(),
            "key": self.genotype.key(),
            "data": asdict(self.data),
            "train": self.train.to_dict(),
            "eval_each_epoch": self.eval_each_epoch,
            **({"eval_epochs": list(self.eval_epochs)} if self.eval_epochs is not None else {}),
            **({} if self.test else {"test": False}),
        }


# What a run folder holds (see the module's docstring), and the exports made beside the model.
RUN_FILES = frozenset(
    {
        "config.json",
        "state.pt",
        "history.csv",
        "model.safetensors",
        "genotype.toml",
        "metrics.json",
        "model.torchscript.pt",
        "model.onnx",
        "model.onnx.data",
    }
)


def _check_discardable(out: Path, fresh_flag: str) -> None:
    """A folder that ``fresh`` may delete: a run folder, nothing else, so that a mistyped
    ``--out`` cannot delete a user's files."""
    if not out.is_dir():
        raise UserError(f"{out} is a file, not a run folder")
    # A temporary file of an interrupted atomic write is ".<name>.<writer>.<random>.tmp".
    foreign = sorted(
        p.name
        for p in out.iterdir()
        if p.name not in RUN_FILES and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"{out} holds files that are not a training run's ({shown}); {fresh_flag} deletes "
            "only a run folder: choose another output folder"
        )


def check_run_folder(
    experiment: Experiment, out: Path, *, fresh: bool = False, fresh_flag: str = "--fresh"
) -> None:
    """Refuse, changing nothing, what ``run_experiment`` would refuse: a folder of a run with
    other settings, a training state without its config, a ``fresh`` start over a folder that
    is not a run's. A command calls it before it decodes data or writes anything."""
    if fresh:
        if out.exists():
            _check_discardable(out, fresh_flag)
        return
    config_path = out / "config.json"
    if config_path.exists():
        recorded = _read_json(config_path, fresh_flag).get("settings")
        if isinstance(recorded, dict) and isinstance(recorded.get("train"), dict):
            # Training settings added since the run was recorded ran at their defaults.
            recorded = {**recorded, "train": TrainConfig.with_new_defaults(recorded["train"])}
        settings = experiment.settings()
        if recorded != settings:
            key, there, now = first_difference(recorded, settings)
            raise UserError(
                f"{out} holds a run with other settings ({key}: {there!r} there, {now!r} now); "
                f"pass {fresh_flag} to start it over, or choose another output folder"
            )
    elif (out / "state.pt").exists():
        raise UserError(
            f"{out} holds a training state (state.pt) without the config.json that explains it; "
            f"pass {fresh_flag} to start over, or choose another output folder"
        )


def recorded_settings(out: Path) -> dict[str, Any] | None:
    """The settings a run folder recorded (``Experiment.settings``), or None when it has none
    (or an unreadable config.json, which ``check_run_folder`` reports)."""
    try:
        recorded = json.loads((out / "config.json").read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def run_experiment(
    experiment: Experiment,
    dataset: Dataset,
    out: Path,
    *,
    device: torch.device,
    fresh: bool = False,
    progress: bool = False,
    extra: dict[str, Any] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    fresh_flag: str = "--fresh",
    on_start: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Train ``experiment`` on ``dataset`` into ``out`` (or resume it); return its metrics.
    ``fresh_flag`` is how the command's user asks for ``fresh``, for the messages.
    ``on_start`` is called once the folder is known to be usable, before anything is written
    (a command writes its data cache there, say). Once ``stop`` is set, the next training step
    raises KeyboardInterrupt (finished epochs are in the checkpoint)."""
    settings = experiment.settings()
    config_path, metrics_path = out / "config.json", out / "metrics.json"
    check_run_folder(experiment, out, fresh=fresh, fresh_flag=fresh_flag)
    if on_start is not None:
        on_start()
    if fresh and out.exists():
        shutil.rmtree(out)
    if config_path.exists() and metrics_path.exists():
        return _read_json(metrics_path, fresh_flag)
    if out.is_dir():
        remove_stale_temporaries(out)  # a checkpoint a killed run was writing, say
    g = experiment.genotype
    params, macs = count(
        g,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
    )
    if not config_path.exists():  # written once, at the first start; a resume keeps it
        write_json_atomic(
            config_path,
            {
                "settings": settings,
                "params": params,
                "macs": macs,
                "dataset": dataset.describe(),
                "classes": list(dataset.classes),
                "device": provenance.device_name(device),
                "host": provenance.host(),
                "versions": provenance.versions(),
                "command": provenance.command_line(),
                "started": provenance.now(),
                **(extra or {}),
            },
        )

    torch.manual_seed(experiment.train.seed)  # the initial weights
    model = build(g, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    normalization = Normalization(dataset.mean, dataset.std)
    # fit fills it, the epochs a killed run finished first (from its checkpoint): history.csv is
    # rewritten whole after every epoch, so a kill between the checkpoint and the file loses no
    # row, whatever the file held.
    history = History()

    def after_epoch(stats: EpochStats) -> None:
        _write_history(out / "history.csv", history.epochs)
        if on_epoch is not None:
            on_epoch(stats)

    fit(
        model,
        dataset.train,
        augment=g.augment,
        normalization=normalization,
        num_classes=dataset.num_classes,
        config=experiment.train,
        device=device,
        eval_set=dataset.val if experiment.eval_each_epoch else None,
        eval_epochs=experiment.eval_epochs,
        on_epoch=after_epoch,
        checkpoint=out / "state.pt",
        history=history,
        progress=progress,
        desc=experiment.name,
        stop=stop,
    )
    # Once more: a run killed after its last checkpoint trains no epoch when resumed.
    _write_history(out / "history.csv", history.epochs)

    metrics: dict[str, Any] = {
        "name": experiment.name,
        "key": g.key(),
        "params": params,
        "macs": macs,
        "epochs": len(history.epochs),
        "seed": experiment.train.seed,
        "tta_views": experiment.train.tta_views,
        "train_images": len(dataset.train),
        "test_images": len(dataset.test) if experiment.test else 0,
    }
    finals = (("val", dataset.val), ("test", dataset.test if experiment.test else None))
    for split, images in finals:
        if images is None or len(images) == 0:
            continue
        plain, tta = evaluate(
            model, images, normalization=normalization, config=experiment.train, device=device
        )
        metrics[f"{split}_acc"], metrics[f"{split}_acc_tta"] = plain, tta
    curve = [[e.epoch, e.eval_acc] for e in history.epochs if e.eval_acc is not None]
    if curve:  # validation accuracy at every epoch it was read
        metrics["val_curve"] = curve
    metrics.update(
        train_seconds=history.train_seconds,
        train_minutes=history.train_seconds / 60,
        images_per_s=statistics.fmean(e.images_per_s for e in history.epochs),
        device=provenance.device_name(device),
        finished=provenance.now(),
    )
    info = ModelInfo(
        genotype=g,
        classes=dataset.classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
        mean=dataset.mean,
        std=dataset.std,
        train_config=experiment.train.to_dict(),
        extra={"name": experiment.name, "metrics": metrics, **(extra or {})},
    )
    save_model(out / "model.safetensors", model, info)
    g.save(out / "genotype.toml", header=f"{experiment.name}: {params:,} parameters")
    write_json_atomic(metrics_path, metrics)  # last: its presence marks the run finished
    (out / "state.pt").unlink(missing_ok=True)
    return metrics


HISTORY_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "eval_acc", "images_per_s", "seconds")


def _write_history(path: Path, epochs: list[EpochStats]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    for e in epochs:
        writer.writerow(asdict(e))
    write_text_atomic(path, buffer.getvalue())


def _read_json(path: Path, fresh_flag: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(
            f"{path}: cannot be read ({exc}); pass {fresh_flag} to start over"
        ) from None
