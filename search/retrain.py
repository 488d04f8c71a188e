"""Retrain the best trials of a study at full length, beside reference architectures.

    python -m search.retrain --storage sqlite:///results/cifar10-400k.db \\
        --study-name cifar10-400k --top 3 --arch configs/reference/resnet20.toml

The search ranks candidates on short, pruned runs; this step decides the accuracy a user keeps.
Each chosen trial is rebuilt from its recorded genotype (no search code involved) and trained on
the whole training set (training and validation images merged) with the full recipe: linear
warmup then cosine decay, label smoothing and the trial's own augmentation, optional EMA, for
``--epochs`` epochs and ``--seeds`` seeds; then evaluated on the test split with and without
test-time augmentation. ``--arch`` files (the reference architectures) are trained with the
same recipe, epochs and data, for a side-by-side comparison.

Outputs under ``<out>/retrain/<trial-N or arch name>/seed-<s>/`` (see ``search.experiment``),
a ``summary.json`` per model (mean and spread over seeds), and ``<out>/leaderboard.csv``, one row
per retrained model. ``<out>`` defaults to ``results/<study>``. Test accuracies are recorded in
the study (the ``retrained`` study attribute, keyed by trial number: Optuna keeps finished trials
read-only) and as a note on each trial in optuna-dashboard. A killed retrain resumes from its last
finished epoch; a finished one is not trained again unless ``--force``.
Exit 0 on success, 1 when a training diverged or the disk is full, 2 on bad input, 130 when
interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from search.config import DataConfig, configure_torch, load_sections, merge, resolve_device
from search.data import Dataset, check_split_arguments, decode, save_cache, split
from search.experiment import Experiment, check_run_folder
from search.export import TOLERANCE, export_all, onnx_available
from search.jobs import DatasetCache, Job, Outcome, run_jobs
from search.provenance import locate
from search.storage import ClaimLock, open_existing_storage
from search.training import TrainConfig, TrainingDiverged
from space import Genotype, format_count, parse_budget
from space._cli import ArgumentParser
from space._io import (
    check_path,
    check_writable_folder,
    disk_full_message,
    write_atomic,
    write_json_atomic,
)
from space.errors import UserError

# The recipe of a final training run, where a preset or a flag does not say otherwise.
RETRAIN_DEFAULTS = {"epochs": 200, "warmup_epochs": 5.0, "tta_views": 6}
# What a retrain takes over from the study's own training settings: the optimiser suited to its
# data (a smoke study's batch of 64, say). Length, warmup and evaluation are the retrain's.
STUDY_RECIPE = ("batch_size", "lr", "momentum", "nesterov", "weight_decay", "bf16", "channels_last")
LEADERBOARD_COLUMNS = [
    "budget",
    "source",
    "name",
    "trial",
    "params",
    "fits_budget",
    "macs",
    "val_acc",
    "test_acc",
    "test_acc_std",
    "test_acc_tta",
    "test_acc_tta_std",
    "epochs",
    "seeds",
    "train_minutes",
    "gpu_minutes",
    "device",
    "key",
]


@dataclass(frozen=True)
class Candidate:
    """A model to retrain: a trial of the study, or a reference architecture file."""

    name: str  # trial-17, or the architecture file's stem
    source: str  # "search" or "reference"
    genotype: Genotype
    trial: int | None = None
    val_acc: float | None = None  # validation accuracy in the search


def select_trials(study: optuna.Study, budget: int, top: int) -> list[Candidate]:
    """The ``top`` searched networks to retrain, one per genotype, the search's choice first.

    Where the search made a choice (study attribute ``choice``: the race's winner, with the
    recipe the recipe stage found), it comes first, with that recipe; then the race's other
    searched entries by their race accuracy; then the other feasible complete trials by
    validation accuracy. The references the study holds as trials are never among them.
    """
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
        and "genotype" in t.user_attrs
        and t.user_attrs.get("params", budget + 1) <= budget
        and "reference" not in t.user_attrs
    ]
    trials.sort(key=lambda t: (-t.value, t.number))  # type: ignore[operator]
    by_number = {t.number: t for t in trials}
    race = study.user_attrs.get("race") or {}
    raced = [
        e["trial"]
        for e in race.get("entries", [])
        if e.get("source") == "search" and e.get("race_val_acc") is not None
    ]
    order = [by_number[n] for n in raced if n in by_number]
    order += [t for t in trials if t.number not in raced]
    choice = study.user_attrs.get("choice") or {}
    chosen: list[Candidate] = []
    if choice.get("trial") in by_number:
        t = by_number[choice["trial"]]
        g = Genotype.from_dict(choice["genotype"])
        chosen.append(Candidate(f"trial-{t.number}", "search", g, t.number, t.value))
        order = [x for x in order if x.number != t.number]
    keys = {Genotype.from_dict(by_number[c.trial].user_attrs["genotype"]).key() for c in chosen}  # type: ignore[index]
    for t in order:
        if len(chosen) >= top:
            break
        g = Genotype.from_dict(t.user_attrs["genotype"])
        if g.key() in keys:
            continue
        keys.add(g.key())
        chosen.append(Candidate(f"trial-{t.number}", "search", g, t.number, t.value))
    return chosen[:top]


def retrain_jobs(
    candidates: Sequence[Candidate],
    *,
    data: DataConfig,
    train: TrainConfig,
    seeds: int,
    out: Path,
    budget: int | None,
    provenance: dict[str, Any],
) -> list[Job]:
    """One job per model and seed: ``<out>/retrain/<name>/seed-<s>/``, seeds ``train.seed``
    and on, the same seeds for every model."""
    jobs = []
    for candidate in candidates:
        for i in range(seeds):
            seed = train.seed + i
            experiment = Experiment(
                name=candidate.name,
                genotype=candidate.genotype,
                data=data,
                train=dataclasses.replace(train, seed=seed),
                eval_each_epoch=False,  # no validation split: it was merged into training
            )
            jobs.append(
                Job(
                    experiment,
                    out / "retrain" / candidate.name / f"seed-{seed}",
                    extra={
                        "source": candidate.source,
                        "trial": candidate.trial,
                        "budget": budget,
                        **provenance,
                    },
                )
            )
    return jobs


def retrain_all(
    candidates: Sequence[Candidate],
    dataset: Dataset,
    *,
    data: DataConfig,
    train: TrainConfig,
    seeds: int,
    out: Path,
    device: torch.device,
    budget: int | None,
    force: bool,
    progress: bool,
    export: bool,
    provenance: dict[str, Any],
    concurrency: int = 1,
    mps: bool = False,
    on_summary: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every candidate for every seed (``concurrency`` at a time, the longest first;
    resuming what exists); write each candidate's summary as its last seed ends (and pass it
    to ``on_summary``); return them in order. A training that diverged raises
    ``TrainingDiverged`` once the others are done."""
    jobs = retrain_jobs(
        candidates,
        data=data,
        train=train,
        seeds=seeds,
        out=out,
        budget=budget,
        provenance=provenance,
    )
    if force:
        for job in jobs:
            if job.out.exists():
                _discard(job.out)
    done: dict[int, Any] = {}
    summaries: dict[int, dict[str, Any]] = {}
    diverged: list[str] = []
    index = {job.out: k // seeds for k, job in enumerate(jobs)}

    def finished(outcome: Outcome) -> None:
        # As soon as every seed of a model has ended: its exports and summary, at once, so an
        # interrupted retrain leaves the finished models summarised.
        k = index[outcome.job.out]
        done.setdefault(k, []).append(outcome)
        if outcome.error:
            diverged.append(f"{outcome.job.name}: {outcome.error}")
        runs = done[k]
        if len(runs) < seeds or any(o.metrics is None for o in runs):
            return
        runs.sort(key=lambda o: o.job.experiment.train.seed)
        if export:
            for o in runs:
                _export(o.job.out, where=o.job.name)
        candidate = candidates[k]
        summary = summarize_runs(
            candidate,
            [o.metrics for o in runs],  # type: ignore[misc]
            budget=budget,
            device=device,
        )
        write_json_atomic(out / "retrain" / candidate.name / "summary.json", summary)
        summaries[k] = summary
        if on_summary is not None:
            on_summary(summary)

    run_jobs(
        jobs,
        datasets=DatasetCache({data: dataset}),
        device=device,
        concurrency=concurrency,
        mps=mps,
        progress=progress,
        desc="retrain",
        on_done=finished,
    )
    if diverged:
        raise TrainingDiverged("; ".join(diverged))
    return [summaries[k] for k in sorted(summaries)]


def _discard(folder: Path) -> None:
    """``--force``: a run folder, and nothing else, is started over."""
    import shutil

    from search.experiment import _check_discardable

    _check_discardable(folder, "--force")
    shutil.rmtree(folder)


def _export(run_dir: Path, *, where: str) -> None:
    """TorchScript and ONNX beside the model, those not made yet. A failed export or check is
    reported in a line and the retrain goes on: the trained weights are what matter."""
    try:
        results = export_all(
            run_dir / "model.safetensors", run_dir, onnx=onnx_available(), missing_only=True
        )
    except Exception as exc:  # an exporter's limit; the next run tries the missing file again
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        tqdm.write(f"{where}: export failed ({type(exc).__name__}: {first})", file=sys.stderr)
        return
    for r in results:
        if not r.ok:
            tqdm.write(
                f"{where}: {r.path.name} differs from PyTorch by {r.max_abs_diff:.2e} "
                f"(tolerance {TOLERANCE:g}): removed; the next run exports it again",
                file=sys.stderr,
            )


def summarize_runs(
    candidate: Candidate, runs: list[dict[str, Any]], *, budget: int | None, device: torch.device
) -> dict[str, Any]:
    """Mean and spread over seeds of one model's runs."""

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in runs)

    def spread(key: str) -> float:
        return statistics.stdev(r[key] for r in runs) if len(runs) > 1 else 0.0

    minutes = sum(r["train_minutes"] for r in runs)
    return {
        "budget": budget,
        "source": candidate.source,
        "name": candidate.name,
        "trial": candidate.trial,
        "key": candidate.genotype.key(),
        "params": runs[0]["params"],
        "fits_budget": None if budget is None else runs[0]["params"] <= budget,
        "macs": runs[0]["macs"],
        "val_acc": candidate.val_acc,
        "test_acc": mean("test_acc"),
        "test_acc_std": spread("test_acc"),
        "test_acc_tta": mean("test_acc_tta"),
        "test_acc_tta_std": spread("test_acc_tta"),
        "tta_views": runs[0]["tta_views"],
        "epochs": runs[0]["epochs"],
        "seeds": [r["seed"] for r in runs],
        "train_minutes": minutes,
        "gpu_minutes": minutes if device.type == "cuda" else None,
        "device": runs[0]["device"],
        "runs": runs,
    }


def write_leaderboard(out: Path) -> pd.DataFrame:
    """``leaderboard.csv``: one row per retrained model found under ``out/retrain``."""
    rows = []
    for path in sorted((out / "retrain").glob("*/summary.json")):
        summary = json.loads(path.read_text())
        row = {c: summary.get(c) for c in LEADERBOARD_COLUMNS}
        row["seeds"] = len(summary["seeds"])
        rows.append(row)
    frame = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    frame["trial"] = frame["trial"].astype("Int64")  # empty for references, not 4.0 for trials
    if not frame.empty:
        frame = frame.sort_values(["budget", "test_acc_tta"], ascending=[True, False])
    write_atomic(out / "leaderboard.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return frame


def record_in_study(study: optuna.Study, lock: ClaimLock, summaries: list[dict[str, Any]]) -> None:
    """Store test accuracies in the study (attribute ``retrained``) and as dashboard notes."""
    import optuna_dashboard

    searched = [s for s in summaries if s["trial"] is not None]
    if not searched:
        return
    lock.acquire()  # read-modify-write of one study attribute; other retrains may run
    try:
        record = dict(study.user_attrs.get("retrained", {}))
        for s in searched:
            record[str(s["trial"])] = {
                k: s[k]
                for k in (
                    "test_acc",
                    "test_acc_std",
                    "test_acc_tta",
                    "test_acc_tta_std",
                    "tta_views",
                    "epochs",
                    "seeds",
                    "train_minutes",
                    "device",
                )
            }
        study.set_user_attr("retrained", record)
    finally:
        lock.release()
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for s in searched:
        seeds = len(s["seeds"])
        spread = f" ± {s['test_acc_std']:.4f}" if seeds > 1 else ""
        note = (
            f"## Retrained: {s['epochs']} epochs, {seeds} seed(s)\n\n"
            f"- test accuracy: **{s['test_acc']:.4f}**{spread}\n"
            f"- with TTA ({s['tta_views']} views): **{s['test_acc_tta']:.4f}**\n"
            f"- validation accuracy in the search: {s['val_acc']:.4f}\n"
            f"- {s['train_minutes']:.1f} training minutes on {s['device']}\n"
        )
        trial = optuna.trial.Trial(study, by_number[s["trial"]]._trial_id)
        if optuna_dashboard.get_note(trial) != note:  # a rerun that trained nothing adds none
            optuna_dashboard.save_note(trial, note)


def retrained_results(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Test accuracies of the retrained trials of ``study``, by trial number."""
    return {int(k): v for k, v in study.user_attrs.get("retrained", {}).items()}


# -- command line ---------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.retrain",
        description="Retrain the best trials of a study, and reference architectures, at full "
        "length; evaluate on the test split with and without TTA.",
    )
    p.add_argument(
        "--storage", help="the study's storage URL (default sqlite:///results/<study>.db)"
    )
    p.add_argument("--study-name", help="the study whose best trials to retrain")
    p.add_argument("--top", type=int, default=1, help="how many of the best trials (default 1)")
    p.add_argument(
        "--arch",
        type=Path,
        action="append",
        default=[],
        help="also retrain this architecture file (repeatable), with the same recipe",
    )
    p.add_argument("--data", help="override the study's data source (or give one for --arch)")
    p.add_argument("--subset", type=int, help="keep the first N training images per class")
    p.add_argument("--budget", help="budget for the leaderboard when no study is given")
    p.add_argument("--config", type=Path, help="TOML preset with [data] and [train] tables")
    p.add_argument("--epochs", type=int, help=f"default {RETRAIN_DEFAULTS['epochs']}")
    p.add_argument("--seeds", type=int, default=1, help="seeds per model (default 1)")
    p.add_argument("--seed", type=int, help="first seed (default 0)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate at the batch size")
    p.add_argument("--ema", type=float, dest="ema_decay", help="EMA decay per step; 0 = off")
    p.add_argument("--tta-views", type=int, help=f"default {RETRAIN_DEFAULTS['tta_views']}")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile on CUDA")
    p.add_argument("--out", type=Path, help="output folder (default results/<study>)")
    p.add_argument("--force", action="store_true", help="train again what is already finished")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="trainings at once, the longest first (per GPU on CUDA; default 1)",
    )
    p.add_argument(
        "--mps",
        action="store_true",
        help="with --concurrency on CUDA: run NVIDIA's Multi-Process Service meanwhile "
        "(started and stopped here when available), so trainings share the GPU at once",
    )
    p.add_argument("--no-export", action="store_true", help="skip TorchScript/ONNX exports")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    progress = not args.no_progress
    try:
        if args.top < 1:
            raise UserError(f"--top must be an integer >= 1, but got {args.top}")
        if args.seeds < 1:
            raise UserError(f"--seeds must be an integer >= 1, but got {args.seeds}")
        if args.concurrency < 1:
            raise UserError(f"--concurrency must be an integer >= 1, but got {args.concurrency}")
        if args.study_name is None and not args.arch:
            raise UserError(
                "nothing to retrain: give --study-name (and --storage) for the best trials of a "
                "study, and/or --arch FILE for an architecture file"
            )
        for path in args.arch:
            check_path(path, what=f"--arch {str(path)[:80]!r}")
        references = [Candidate(path.stem, "reference", Genotype.load(path)) for path in args.arch]
        names = [c.name for c in references]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(
                f"--arch files share a name ({', '.join(twice)}): each model trains into "
                "retrain/<file name>/; rename one of them"
            )
        presets = (
            load_sections(args.config, {"data": DataConfig, "train": TrainConfig})
            if args.config
            else {}
        )
        study = lock = None
        budget = parse_budget(args.budget) if args.budget is not None else None
        data_recorded: dict[str, Any] = {}
        recipe_recorded: dict[str, Any] = {}
        candidates: list[Candidate] = []
        classes: list[str] | None = None
        if args.study_name is not None:
            storage_url = args.storage or f"sqlite:///results/{args.study_name}.db"
            study, lock = load_existing_study(storage_url, args.study_name)
            settings = study.user_attrs.get("settings", {})
            if "budget" not in study.user_attrs or "data" not in settings:
                raise UserError(
                    f"study {args.study_name!r} was not made by python -m search.run (it has "
                    "no budget and settings record); retrain its networks with --arch FILE"
                )
            budget = int(study.user_attrs["budget"])
            if args.budget is not None and parse_budget(args.budget) != budget:
                raise UserError(
                    f"--budget {args.budget} differs from the study's budget of {budget:,}; "
                    "leave --budget out with --study-name"
                )
            searched_on = study.user_attrs.get("dataset", {})
            # Where the first run found the data (relative to the project root when it was
            # inside it); --data points elsewhere on another machine. Not its subset: a retrain
            # trains on the whole training set unless --subset says.
            source = searched_on.get("source")
            data_recorded = {
                **{k: v for k, v in settings["data"].items() if k != "subset"},
                "source": locate(source) if isinstance(source, str) else source,
            }
            recipe_recorded = {
                k: v for k, v in settings.get("train", {}).items() if k in STUDY_RECIPE
            }
            classes = searched_on.get("classes")
            candidates = select_trials(study, budget, args.top)
            if not candidates:
                raise UserError(
                    f"study {args.study_name!r} has no complete trial within its budget of "
                    f"{budget:,} parameters yet; run the search first"
                )
        data = merge(
            DataConfig,
            data_recorded,
            presets.get("data", {}),
            {"source": args.data, "subset": args.subset, "val_size": 0},
            where="data settings",
        )
        if args.study_name is None and args.data is None and "data" not in presets:
            raise UserError("--arch without a study needs --data (cifar10, a folder or a tarball)")
        train = merge(
            TrainConfig,
            {**recipe_recorded, **RETRAIN_DEFAULTS},
            presets.get("train", {}),
            {
                "epochs": args.epochs,
                "seed": args.seed,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "ema_decay": args.ema_decay,
                "tta_views": args.tta_views,
                "compile": args.compile,
            },
            where="training settings",
        )
        device = resolve_device(args.device)
        out = args.out or (
            Path("results") / (args.study_name or f"references-{Path(data.source).name}")
        )
        check_writable_folder(out)
        check_split_arguments(val_size=0, subset=data.subset)
        check_run_folders(candidates + references, data, train, args.seeds, out, args.force)
        decoded = decode(data.source, image_size=data.image_size, progress=progress)
        dataset = split(decoded, val_size=0, subset=data.subset, seed=data.split_seed)
        if classes is not None and list(dataset.classes) != classes:
            raise UserError(
                f"data {data.source!r} has the classes {list(dataset.classes)}, but the study was "
                f"searched on {classes}"
            )
        save_cache(decoded)  # the run goes ahead
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    configure_torch(device)
    print(f"data    {dataset.describe()} (validation merged into training)")
    warmup = min(train.warmup_epochs, train.epochs / 2)  # fit caps it at half the run
    print(
        f"recipe  {train.epochs} epochs, batch {train.batch_size}, lr {train.lr}"
        + (" (the study's)" if _same(recipe_recorded, train, ("batch_size", "lr")) else "")
        + f", warmup {warmup:g} epochs, EMA {train.ema_decay or 'off'}, {args.seeds} seed(s), "
        f"TTA {train.tta_views} views, on {device}"
    )
    summaries: list[dict[str, Any]] = []

    def summarised(summary: dict[str, Any]) -> None:
        summaries.append(summary)
        write_leaderboard(out)

    try:
        retrain_all(
            candidates + references,
            dataset,
            data=data,
            train=train,
            seeds=args.seeds,
            out=out,
            device=device,
            budget=budget,
            force=args.force,
            progress=progress,
            export=not args.no_export,
            provenance={"study": args.study_name},
            concurrency=args.concurrency,
            mps=args.mps,
            on_summary=summarised,
        )
        write_leaderboard(out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a full disk: one line; anything else is a bug of ours
        full = disk_full_message(exc, out)
        if full is None:
            raise
        print(
            f"error: {full}; finished epochs and models are kept: free some space and run the "
            "same command again",
            file=sys.stderr,
        )
        return 1
    finally:
        if study is not None and lock is not None:
            try:
                record_in_study(study, lock, summaries)
            except Exception as exc:  # the results are in the files; the study note can wait
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                print(
                    f"test accuracies not recorded in the study ({type(exc).__name__}: {first}); "
                    "the leaderboard and run folders hold them, and the next retrain records them",
                    file=sys.stderr,
                )
            lock.close()
    print_table(summaries)
    print(f"\nleaderboard: {out / 'leaderboard.csv'}")
    return 0


def check_run_folders(
    candidates: list[Candidate],
    data: DataConfig,
    train: TrainConfig,
    seeds: int,
    out: Path,
    force: bool,
) -> None:
    """Refuse before any training (and before the data is cached) a run folder that ``retrain``
    would refuse midway, hours later: one of a run with other settings, say."""
    for candidate in candidates:
        for i in range(seeds):
            experiment = Experiment(
                name=candidate.name,
                genotype=candidate.genotype,
                data=data,
                train=dataclasses.replace(train, seed=train.seed + i),
                eval_each_epoch=False,
            )
            folder = out / "retrain" / candidate.name / f"seed-{train.seed + i}"
            check_run_folder(experiment, folder, fresh=force, fresh_flag="--force")


def _same(recorded: dict[str, Any], train: TrainConfig, keys: tuple[str, ...]) -> bool:
    return bool(recorded) and all(recorded.get(k) == getattr(train, k) for k in keys)


def load_existing_study(url: str, name: str) -> tuple[optuna.Study, ClaimLock]:
    """Load a study that must exist; creates nothing (no empty database for a typo)."""
    spec, storage = open_existing_storage(url)
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise UserError(
            f"no study {name!r} in {spec.display}; studies there: {', '.join(names) or 'none'}"
        )
    study = optuna.load_study(study_name=name, storage=storage)
    return study, ClaimLock(spec, storage, name)


def print_table(summaries: list[dict[str, Any]]) -> None:
    if not summaries:
        return
    print(
        f"\n{'model':<22} {'source':<9} {'params':>7} {'test acc':>15} {'TTA':>7} "
        f"{'epochs':>6} {'seeds':>5} {'minutes':>7}"
    )
    for s in sorted(summaries, key=lambda s: -s["test_acc_tta"]):
        seeds = len(s["seeds"])
        acc = f"{s['test_acc']:.4f}" + (f" ±{s['test_acc_std']:.4f}" if seeds > 1 else "")
        print(
            f"{s['name']:<22} {s['source']:<9} {format_count(s['params']):>7} {acc:>15} "
            f"{s['test_acc_tta']:7.4f} {s['epochs']:>6} {seeds:>5} {s['train_minutes']:7.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
