"""Search for the most accurate classifier under a parameter budget.

    python -m search.run --budget 5e6 --data cifar10
    python -m search.run --config configs/budget-400k.toml --data data/cifar10-jpeg

Runs (or resumes) one Optuna study in ``--storage`` (default ``sqlite:///results/<study>.db``).
Running the same command again continues the same study: finished trials stay, numbering goes
on, and ``--trials`` is the study's total. Exit 0 when done, 1 when trials kept failing or the
disk is full (one line; finished trials kept), 2 on bad input (one line on stderr, nothing
created), 130 when interrupted (the running trial is marked
failed; run the command again to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search.artifacts import artifact_dir, upload_trial_artifacts
from search.config import DataConfig, configure_torch, load_sections, merge, resolve_device
from search.data import Dataset, Decoded, decode, save_cache, split_as_configured
from search.live import LiveFront
from search.stages import claim_stages, release_stages, story
from search.stages.race import (
    choice_of,
    choose,
    race_folder,
    record_choice,
    run_race,
)
from search.stages.recipe import describe_augment, run_recipe_stage
from search.stages.references import (
    reference_path,
    resolve_references,
    seed_study,
    train_yardsticks,
)
from search.storage import (
    ClaimLock,
    StorageSpec,
    check_storage_location,
    inspect_storage,
    open_storage,
    parse_storage,
    repair_journal,
)
from search.study import (
    MAX_STUDY_NAME,
    RACE_LENGTH,
    RECIPES,
    STOP,
    Context,
    SearchConfig,
    SearchSettings,
    budget_label,
    check_sampler,
    count_active,
    dataset_label,
    fail_stale_trials,
    fingerprint,
    make_sampler,
    no_result_line,
    open_study,
    recorded_settings,
    resolve_recipe,
    resolve_space,
    summarize,
    trial_line,
    work,
)
from search.training import TrainConfig
from space import Genotype, format_count, parse_budget
from space._cli import ArgumentParser
from space._io import check_writable_folder, disk_full_message
from space.errors import UserError
from space.searchspace import SearchSpace, smallest_macs, smallest_network

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m search.run",
        description=(
            "Search ResNet-family classifiers under a parameter budget with Optuna (TPE, "
            "Hyperband pruning). Running the same command again resumes the same study."
        ),
    )
    p.add_argument("--budget", help="parameter budget: 400k, 400_000, 4e5, 5M, 5e6 (default 5M)")
    p.add_argument(
        "--max-macs",
        help="compute budget beside it: multiply-accumulates per image, e.g. 300M or 1G "
        "(default: none)",
    )
    p.add_argument(
        "--trials",
        type=int,
        help="total trials of the study, counting those of earlier runs (default 100)",
    )
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    p.add_argument("--epochs", type=int, help="maximum epochs of one trial (default 30)")
    p.add_argument("--data", help="cifar10, cifar100, an image folder or a .tar/.tar.gz of one")
    p.add_argument("--config", type=Path, help="TOML preset: [search], [data], [train] tables")
    p.add_argument(
        "--storage",
        help="sqlite:///FILE.db, journal:///FILE.journal or postgresql+psycopg://... "
        "(default sqlite:///results/<study>.db)",
    )
    p.add_argument("--study-name", help="default <dataset>-<budget>, e.g. cifar10-400k")
    p.add_argument("--space", help="search-space preset name or TOML file (default 'default')")
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial (default 0)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--workers",
        type=int,
        help="processes on this machine (default 1); more than one needs a journal or "
        "PostgreSQL storage; with several GPUs each worker gets one, round robin",
    )
    p.add_argument("--subset", type=int, help="keep the first N training images per class")
    p.add_argument("--val-size", type=int, help="validation images carved from train")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate at the batch size")
    p.add_argument("--results", help="results folder (default results)")
    p.add_argument(
        "--recipe",
        help="how trials train: standard (one recipe for all: the search ranks architectures, "
        "then searches the recipe of the chosen one), joint (the recipe drawn with each "
        "architecture) or an architecture file whose [augment] recipe all train with "
        "(default: the study's, else standard)",
    )
    p.add_argument("--sampler", help="tpe (default), random, nsga2 or gp (needs scipy)")
    p.add_argument(
        "--reference",
        action="append",
        dest="references",
        help="a hand-designed network of the budget (a name in configs/reference/ or a TOML "
        "file; repeatable; default: those filling half to all of the budget)",
    )
    p.add_argument(
        "--race-top",
        type=int,
        help="leaders raced at a longer setting before choosing (default 6; 0: no race)",
    )
    p.add_argument("--race-epochs", type=int, help="the race's length (default 2x the trial's)")
    p.add_argument(
        "--concurrency",
        type=int,
        help="trainings at once in the stages beside the trials: yardsticks, race, recipe "
        "stage (per GPU on CUDA; default 1)",
    )
    p.add_argument(
        "--recipe-trials", type=int, help="recipes tried for the chosen network (default 8)"
    )
    p.add_argument("--no-progress", action="store_true", help="log lines only, no bars")
    # Set by --workers on the processes it starts: run trials quietly, the parent reports.
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    return p


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a run needs, resolved and checked before anything is created."""

    search: SearchConfig
    data: DataConfig
    train: TrainConfig
    budget: int
    space: SearchSpace
    study_name: str
    storage_url: str
    device: torch.device


PRESET_TABLES = {"search": SearchConfig, "data": DataConfig, "train": TrainConfig}


def resolve(args: argparse.Namespace, presets: Mapping[str, Mapping] | None = None) -> Plan:
    """Check every setting and resolve the plan, creating nothing. ``presets`` (tables of a
    preset already read, as ``search.campaign`` makes them) replaces ``--config``."""
    if presets is None:
        presets = load_sections(args.config, PRESET_TABLES) if args.config else {}
    search_flags = {
        "budget": args.budget,
        "max_macs": args.max_macs,
        "trials": args.trials,
        "timeout": args.timeout,
        "storage": args.storage,
        "study_name": args.study_name,
        "space": args.space,
        "seed": args.seed,
        "device": args.device,
        "workers": args.workers,
        "results": args.results,
        "recipe": args.recipe,
        "sampler": args.sampler,
        "references": tuple(args.references) if args.references else None,
        "race_top": args.race_top,
        "race_epochs": args.race_epochs,
        "recipe_trials": args.recipe_trials,
        "concurrency": args.concurrency,
    }
    if args.budget is not None:
        parse_budget(args.budget)  # the flag's own message, not the config's
    search = merge(SearchConfig, presets.get("search", {}), search_flags, where="search settings")
    data = merge(
        DataConfig,
        presets.get("data", {}),
        {"source": args.data, "subset": args.subset, "val_size": args.val_size},
        where="data settings",
    )
    train = merge(
        TrainConfig,
        presets.get("train", {}),
        {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr},
        where="training settings",
    )
    if search.min_epochs > train.epochs:
        raise UserError(
            f"min_epochs ({search.min_epochs}) must be at most the epochs of a trial "
            f"({train.epochs}): Hyperband prunes between the two"
        )
    if data.val_size is not None and data.val_size < 1:
        raise UserError("the search ranks trials on a validation split: val_size must be >= 1")
    budget = search.budget_params
    space_path = resolve_space(search.space)
    space = SearchSpace.load(space_path)
    smallest = smallest_network(space)
    if budget < smallest:
        raise UserError(
            f"budget {budget:,} is below every network of search space {space.name!r} (the "
            f"smallest has about {smallest:,} parameters): every candidate would be rejected; "
            "raise --budget or use a space of smaller networks"
        )
    device = resolve_device(search.device)
    name = search.study_name or f"{dataset_label(data.source)}-{budget_label(budget)}"
    if len(name) > MAX_STUDY_NAME:
        raise UserError(
            f"the study name {name[:40]!r}... (from the data's name) is {len(name)} characters "
            f"long; at most {MAX_STUDY_NAME}: give a shorter --study-name"
        )
    results = Path(search.results)
    storage_url = search.storage or f"sqlite:///{results / name}.db"
    spec = parse_storage(storage_url)
    if search.workers > 1 and not spec.parallel_safe:
        raise UserError(
            f"SQLite takes one writer at a time, and --workers {search.workers} would write at "
            f"once: use --storage journal:///{results / name}.journal (one machine) or "
            "postgresql+psycopg://... (several machines)"
        )
    check_writable_folder(results)
    check_storage_location(spec)
    check_sampler(search.sampler)
    for reference in search.references or ():
        reference_path(reference)
    if search.recipe not in (None, *RECIPES):
        resolve_recipe(search.recipe, None)  # the file must hold a genotype
    return Plan(search, data, train, budget, space, name, spec.url, device)


def check_macs_floor(plan: Plan, image_size: tuple[int, int]) -> None:
    """A MACs budget below every network of the space would reject every candidate."""
    macs = plan.search.budget_macs
    if macs is None:
        return
    floor = smallest_macs(plan.space, image_size=image_size)
    if macs < floor:
        raise UserError(
            f"max_macs {macs:,} is below every network of search space {plan.space.name!r} at "
            f"{image_size[0]}x{image_size[1]} that a search for the smallest finds (about "
            f"{floor:,} MACs): every candidate would be rejected; raise --max-macs"
        )


def split_for_search(
    decoded: Decoded, config: DataConfig, recorded: dict | None
) -> tuple[DataConfig, Dataset]:
    """The validation split the search ranks on, and the data settings with its size resolved:
    ``--val-size``, else the size the study being resumed recorded, else the default."""
    recorded_val = ((recorded or {}).get("data") or {}).get("val_size")
    data, dataset = split_as_configured(decoded, config, recorded_val_size=recorded_val)
    if dataset.val is None:
        raise UserError(
            f"data {decoded.source}: a class has a single training image, and the search needs "
            "one more of every class to rank trials on (--val-size); add images"
        )
    return data, dataset


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except Exception as exc:  # a full disk while the study is opened: one line
        full = disk_full_message(exc, "the study's storage")
        if full is None:
            raise
        print(f"error: {full}; free some space and run the same command again", file=sys.stderr)
        return 1


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # Our own line per trial says how each ended; Optuna's warnings would repeat it with a
    # traceback (an out-of-memory trial, say).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    child = args.worker_index is not None
    progress = not args.no_progress and not child
    try:
        plan = resolve(args)
        configure_torch(plan.device, cudnn_benchmark=plan.search.cudnn_benchmark)
        # Nothing is written (no cache, no database, no record) until the run is known to go
        # ahead: the data is decoded into memory, an existing storage only read.
        decoded = decode(plan.data.source, image_size=plan.data.image_size, progress=progress)
        check_macs_floor(plan, tuple(decoded.train.images.shape[2:]))
        spec = parse_storage(plan.storage_url)
        storage = None
        if inspect_storage(spec) == "optuna":  # opening Optuna's own records writes nothing
            storage = open_storage(spec, heartbeat=plan.search.heartbeat, grace=plan.search.grace)
        recorded = recorded_settings(storage, plan.study_name)
        data, dataset = split_for_search(decoded, plan.data, recorded)
        recipe = resolve_recipe(plan.search.recipe, recorded)
        references = resolve_references(
            plan.search.references,
            budget=plan.budget,
            max_macs=plan.search.budget_macs,
            num_classes=dataset.num_classes,
            in_channels=dataset.in_channels,
            image_size=dataset.image_size,
            recipe=recipe,
        )
        if storage is None:
            storage = open_storage(spec, heartbeat=plan.search.heartbeat, grace=plan.search.grace)
        settings = SearchSettings(
            budget=plan.budget,
            space=plan.space if recipe is None else plan.space.with_recipe(recipe),
            data=data,
            dataset=fingerprint(dataset),
            train=plan.train,
            min_epochs=plan.search.min_epochs,
            reduction_factor=plan.search.reduction_factor,
            max_macs=plan.search.budget_macs,
            recipe=recipe,
        )
        study = open_study(storage, plan.study_name, settings, dataset)
        # Going ahead: a damaged journal, only read so far, is repaired now, before any claim
        # lock holds the file that the repair replaces.
        repair_journal(storage)
        save_cache(decoded)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted before the search started: nothing was trained", file=sys.stderr)
        return 130

    STOP.clear()
    on_signal = functools.partial(_first_interrupt, announce=not child)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    deadline = time.time() + plan.search.timeout if plan.search.timeout else None
    if not child:
        # Where this machine keeps the trials' artifacts, for search.report and search.dashboard
        # run from another folder.
        artifacts = artifact_dir(Path(plan.search.results), plan.study_name).resolve()
        if study.user_attrs.get("artifact_dir") != str(artifacts):
            study.set_user_attr("artifact_dir", str(artifacts))
        lock = ClaimLock(spec, storage, plan.study_name)
        lock.acquire()  # as the workers do: a trial being claimed is never taken for stale
        try:
            stale = fail_stale_trials(study, grace=plan.search.grace)
            # The references the space can express become the study's first trials (once).
            seed_study(
                study,
                settings.space,
                references,
                budget=plan.budget,
                max_macs=plan.search.budget_macs,
                dataset=dataset,
            )
        finally:
            lock.close()
        print(f"study   {plan.study_name} in {spec.display}")
        macs = plan.search.budget_macs
        print(
            f"budget  {plan.budget:,} parameters"
            + (f", at most {macs:,} MACs per image" if macs is not None else "")
            + f"; space {plan.space.name!r}"
        )
        print(f"data    {dataset.describe()}")
        print(
            f"device  {plan.device}; {plan.search.workers} worker(s); "
            f"up to {plan.train.epochs} epochs a trial; "
            + (
                "every trial with the recipe: " + describe_augment(recipe)
                if recipe is not None
                else "the recipe drawn with each architecture (joint)"
            )
        )
        record = study.user_attrs.get("references") or {}
        if record.get("enqueued") or record.get("yardsticks"):
            print(
                "refs    "
                + "; ".join(
                    part
                    for part in (
                        "first trials: " + ", ".join(record["enqueued"])
                        if record.get("enqueued")
                        else "",
                        "yardsticks beside the search: " + ", ".join(record["yardsticks"])
                        if record.get("yardsticks")
                        else "",
                    )
                    if part
                )
            )
        if stale:
            print(
                f"found {len(stale)} trial(s) left running by a stopped run: "
                f"marked failed and queued once for retry ({', '.join(map(str, stale))})"
            )
    started = time.time()
    before = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    # The Pareto figure and note in optuna-dashboard, kept current by the reporting process.
    front = (
        None if child else LiveFront(study, journal=spec.path if spec.kind == "journal" else None)
    )
    # A run that ended its trials on the timeout, then was stopped in the stages after them,
    # goes on with those stages: another timeout's worth of trials would change the leaders.
    ended = study.user_attrs.get("trials_ended")
    resume_stages = (
        not child
        and isinstance(ended, dict)
        and ended.get("why") == "timeout"
        and "choice" not in study.user_attrs
    )
    try:
        if resume_stages:
            print(
                "the trials ended on the timeout in an earlier run: going on with the stages "
                "after them"
            )
            stopped = "timeout"
        elif not child:
            lock = ClaimLock(spec, storage, plan.study_name)
            try:
                train_yardsticks(
                    study,
                    settings,
                    dataset,
                    references,
                    seed=plan.search.seed,
                    device=plan.device,
                    concurrency=plan.search.concurrency,
                    folder=Path(plan.search.results) / plan.study_name / "yardsticks",
                    lock=lock,
                    progress=progress,
                    stop=STOP,
                    mps=plan.search.mps,
                )
            finally:
                lock.close()
        if resume_stages:
            pass
        elif plan.search.workers > 1 and not child:
            stopped = _supervise(
                plan, argv, study, progress=progress, deadline=deadline, front=front
            )
        else:
            stopped = _run_worker(
                plan,
                settings,
                study,
                spec,
                storage,
                dataset,
                index=args.worker_index or 0,
                progress=progress,
                deadline=deadline,
                quiet=child,
                front=front,
            )
    except KeyboardInterrupt:
        if not child:
            print(
                "interrupted: a trial cut short is marked failed; run the same command "
                "again to continue",
                file=sys.stderr,
            )
            front.finish()  # type: ignore[union-attr]
            _print_summary(plan, study, before, started)
        return 130
    except Exception as exc:  # a full disk: one line, and every finished trial is kept
        full = disk_full_message(exc, spec.path or Path(plan.search.results))
        if full is None:
            raise
        print(
            f"error: {full}; every finished trial is kept: free some space and run the same "
            "command again",
            file=sys.stderr,
        )
        return 1
    if child:
        return 0 if stopped in ("done", "timeout") else 1
    if stopped in ("done", "timeout"):
        try:
            if not resume_stages:  # how the trials ended, for a run that resumes the stages
                study.set_user_attr("trials_ended", {"why": stopped, "trials": count_active(study)})
            _after_trials(plan, settings, study, storage, spec, dataset, progress=progress)
        except UserError as exc:  # a run folder of other settings, say: one line
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                "interrupted: finished epochs are kept; run the same command again to continue",
                file=sys.stderr,
            )
            front.finish()  # type: ignore[union-attr]
            _print_summary(plan, study, before, started)
            return 130
        except Exception as exc:  # a full disk: one line, and everything finished is kept
            full = disk_full_message(exc, Path(plan.search.results))
            if full is None:
                raise
            print(f"error: {full}; free some space and run the same command again", file=sys.stderr)
            return 1
    front.finish()  # type: ignore[union-attr]
    _print_summary(plan, study, before, started)
    if stopped not in ("done", "timeout"):
        print(f"stopped early: {stopped}", file=sys.stderr)
    return 0 if stopped in ("done", "timeout") else 1


def _after_trials(
    plan: Plan,
    settings: SearchSettings,
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    spec: StorageSpec,
    dataset: Dataset,
    *,
    progress: bool,
) -> None:
    """The race of the leaders, the recipe stage of the chosen network, and the choice: in one
    process at a time (several machines may share a study; the first to get here runs them)."""
    search = plan.search
    results = Path(search.results) / plan.study_name
    race_epochs = search.race_epochs or RACE_LENGTH * plan.train.epochs
    lock = ClaimLock(spec, storage, plan.study_name)
    holder = claim_stages(study, lock)
    if holder is not None:
        lock.close()
        print(
            f"\nthe race and the recipe stage run in another process ({holder}); its summary "
            "will show the choice"
        )
        return
    try:
        race = None
        if search.race_top > 0:
            print(
                f"\nrace: the {search.race_top} best searched architectures and the best "
                f"reference, {race_epochs} epochs, {search.race_seeds} seed(s) each"
            )
            race = run_race(
                study,
                settings,
                dataset,
                top=search.race_top,
                seeds=search.race_seeds,
                epochs=race_epochs,
                seed=search.seed,
                device=plan.device,
                concurrency=search.concurrency,
                folder=race_folder(Path(search.results), plan.study_name, race_epochs),
                lock=lock,
                progress=progress,
                stop=STOP,
                mps=search.mps,
            )
        chosen = choose(study, plan.budget, race)
        if chosen is None:
            return
        recipe = None
        # The recipe stage where the trials shared one recipe and the space has others.
        if settings.recipe is not None and search.recipe_trials > 0 and plan.space.draws_recipe:
            recipe_epochs = search.recipe_epochs or race_epochs
            print(
                f"\nrecipe stage: {search.recipe_trials} recipes for {chosen['name']}, "
                f"{recipe_epochs} epochs each"
            )
            recipe = run_recipe_stage(
                storage,
                study,
                settings,
                dataset,
                space=plan.space,
                trial=chosen["trial"],
                genotype=Genotype.from_dict(chosen["genotype"]),
                trials=search.recipe_trials,
                epochs=recipe_epochs,
                seed=search.seed,
                device=plan.device,
                concurrency=search.concurrency,
                folder=results,
                lock=lock,
                progress=progress,
                stop=STOP,
                mps=search.mps,
            )
        record_choice(study, chosen, recipe, lock=lock)
    finally:
        release_stages(study, lock)
        lock.close()


def _run_worker(
    plan: Plan,
    settings: SearchSettings,
    study: optuna.Study,
    spec: StorageSpec,
    storage: optuna.storages.BaseStorage,
    dataset: Dataset,
    *,
    index: int,
    progress: bool,
    deadline: float | None,
    quiet: bool,
    front: LiveFront | None = None,
) -> str:
    """Run trials in this process; returns why it stopped."""
    study.sampler = make_sampler(plan.search, existing=len(study.trials), worker=index)
    on_device = dataclasses.replace(
        dataset,
        train=dataset.train.to(plan.device),
        val=dataset.val.to(plan.device) if dataset.val is not None else None,
    )
    ctx = Context(
        study=study,
        settings=settings,
        dataset=on_device,
        device=plan.device,
        seed=plan.search.seed,
        progress=progress,
        eval_every_epoch=plan.search.eval_every_epoch,
    )
    lock = ClaimLock(spec, storage, plan.study_name)
    bar = _trial_bar(plan, study, disable=quiet or not progress)

    artifacts = artifact_dir(Path(plan.search.results), plan.study_name)

    def on_trial(t: FrozenTrial) -> None:
        try:  # the learning curve and network summary that optuna-dashboard shows per trial
            upload_trial_artifacts(
                study,
                t,
                artifact_dir=artifacts,
                num_classes=dataset.num_classes,
                image_size=dataset.image_size,
                in_channels=dataset.in_channels,
            )
        except Exception as exc:  # a figure must not stop a search; search.report adds it later
            print(
                f"trial {t.number}: artifacts not saved ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )
        if quiet:
            return
        line = trial_line(t, plan.budget)
        (tqdm.write if progress else print)(line)
        _update_bar(bar, plan, study)
        if front is not None:
            front.trial_finished()

    try:
        report = work(
            ctx,
            lock,
            trials=plan.search.trials,
            deadline=deadline,
            grace=plan.search.grace,
            on_trial=on_trial,
        )
    finally:
        bar.close()
        lock.close()
    return report.stopped


def _trial_bar(plan: Plan, study: optuna.Study, *, disable: bool) -> tqdm:
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    bar = tqdm(
        total=plan.search.trials,
        initial=min(done, plan.search.trials),
        desc="search",
        unit="trial",
        disable=disable,
        dynamic_ncols=True,
    )
    _update_bar(bar, plan, study)
    return bar


def _update_bar(bar: tqdm, plan: Plan, study: optuna.Study) -> None:
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    bar.n = min(done, plan.search.trials)
    best = summarize(study, plan.budget, top=1).best
    if best:
        bar.set_postfix(
            best=f"{best[0].value:.4f}", params=format_count(best[0].user_attrs["params"])
        )
    bar.refresh()


def _supervise(
    plan: Plan,
    argv: list[str],
    study: optuna.Study,
    *,
    progress: bool,
    deadline: float | None,
    front: LiveFront | None = None,
) -> str:
    """Start ``workers`` child processes on the study, show their progress, wait for them."""
    gpus = _visible_gpus() if plan.device.type == "cuda" else []
    children = []
    for i in range(plan.search.workers):
        env = worker_env(i, plan.search.workers, gpus, os.environ, os.cpu_count() or 1)
        cmd = [
            sys.executable,
            "-m",
            "search.run",
            *argv,
            "--workers",
            "1",
            "--worker-index",
            str(i),
            "--no-progress",
        ]
        if plan.device.type == "cuda":
            cmd += ["--device", "cuda"]  # each child sees its one GPU as cuda:0
        # Own session: a Ctrl-C at the terminal reaches this process only, which forwards one
        # SIGINT to each worker, so no worker mistakes it for a second Ctrl-C.
        children.append(
            subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        )
    bar = _trial_bar(plan, study, disable=not progress)
    seen = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}
    try:
        while True:
            running = [c for c in children if c.poll() is None]
            for t in study.get_trials(deepcopy=False, states=FINISHED):
                if t.number not in seen:
                    seen.add(t.number)
                    (tqdm.write if progress else print)(trial_line(t, plan.budget))
                    if front is not None:
                        front.trial_finished()
            _update_bar(bar, plan, study)
            if not running:
                break
            if STOP.wait(1.0):  # Ctrl-C: set by the handler, which raises nothing itself
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        # A second Ctrl-C kills the workers outright; their trials are cleaned up next start.
        signal.signal(signal.SIGINT, lambda *_: _kill_all(children))
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGINT)
        for c in children:
            try:
                c.wait(timeout=60)
            except subprocess.TimeoutExpired:
                c.kill()
        raise
    finally:
        bar.close()
    codes = [c.returncode for c in children]
    if any(code == 2 for code in codes):
        return "a worker rejected its input (see above)"
    if count_active(study) >= plan.search.trials:
        return "done"
    if deadline is not None and time.time() >= deadline:
        return "timeout"
    return f"workers exited with codes {codes}"


def _die_with_parent() -> None:
    """In a worker, before exec: get SIGTERM when the supervising process dies (Linux), so a
    killed search leaves no orphan workers behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_all(children: list[subprocess.Popen]) -> None:
    for c in children:
        c.kill()
    os._exit(130)


def _first_interrupt(signum: int, frame: object, *, announce: bool = True) -> None:
    """Ctrl-C (or SIGTERM from a scheduler): stop cleanly, the running trial marked failed.

    Only sets STOP: the worker raises KeyboardInterrupt itself at its next training step or
    claim, never in the middle of a database write. From now on a second one exits at once.
    """
    signal.signal(signal.SIGINT, _exit_now)
    signal.signal(signal.SIGTERM, _exit_now)
    STOP.set()
    if announce:  # os.write: print() here could re-enter a write the main code is in
        os.write(2, b"\nstopping after the current step (Ctrl-C again to quit at once)\n")


def _exit_now(signum: int, frame: object) -> None:
    os._exit(130)


def worker_env(
    index: int, workers: int, gpus: Sequence[str], environ: Mapping[str, str], cpus: int
) -> dict[str, str]:
    """The environment of worker ``index``: one GPU each, round-robin over ``gpus``; on CPU a
    share of the cores, since oversubscribed OpenMP threads spin and crawl."""
    env = dict(environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    elif "OMP_NUM_THREADS" not in environ:
        env["OMP_NUM_THREADS"] = str(max(1, cpus // workers))
    return env


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _print_summary(plan: Plan, study: optuna.Study, before: set[int], started: float) -> None:
    s = summarize(study, plan.budget, top=5)
    trials = study.get_trials(deepcopy=False)
    this_run = [t for t in trials if t.state in FINISHED and t.number not in before]
    hours = (time.time() - started) / 3600
    print()
    print(
        f"study {plan.study_name}: {s.total} trials ({s.complete} complete, {s.pruned} pruned, "
        f"{s.rejected} rejected over budget, {s.failed} failed"
        + (f", {s.running} running" if s.running else "")
        + (f", {s.waiting} waiting to run" if s.waiting else "")
        + ")"
    )
    print(
        f"budget use: {s.half_budget_share:.0%} of candidates fit and use at least half of "
        f"the {format_count(plan.budget)} budget; {s.rejected_share:.0%} were rejected over it"
    )
    if this_run and hours > 0:
        overhead = _overhead_share(this_run)
        print(
            f"this run: {len(this_run)} trials in {hours * 60:.1f} min = "
            f"{len(this_run) / hours:.0f} trials/hour"
            + (f"; {overhead:.1%} of trial time outside training" if overhead is not None else "")
        )
    if not s.best:
        print(no_result_line(s))
    if s.best:
        print("\ntop trials (validation accuracy, feasible):")
        print(
            f"  {'trial':>5}  {'val acc':>7}  {'params':>7}  {'budget':>6}  {'MACs':>7}  "
            f"{'min':>5}  genotype"
        )
        for t in s.best:
            minutes = t.user_attrs.get("train_seconds", 0) / 60
            print(
                f"  {t.number:>5}  {t.value:7.4f}  {format_count(t.user_attrs['params']):>7}  "
                f"{t.user_attrs['budget_share']:6.1%}  "
                f"{format_count(t.user_attrs.get('macs', 0)):>7}  {minutes:5.1f}  "
                f"{t.user_attrs['key']}"
                + (
                    f"  (reference {t.user_attrs['reference']})"
                    if "reference" in t.user_attrs
                    else ""
                )
            )
    told = story(study.get_trials(deepcopy=False), study.user_attrs, plan.budget)
    if told:
        print()
        for line in told:
            print(line)
    chosen = choice_of(study)
    spec = parse_storage(plan.storage_url)
    artifacts = artifact_dir(Path(plan.search.results), plan.study_name)
    print(f"\nstudy stored in {spec.display}; trial artifacts in {artifacts}")
    print(f"dashboard: optuna-dashboard {spec.dashboard_target} --artifact-dir {artifacts}")
    print(
        f"retrain the {'choice' if chosen else 'best'}: python -m search.retrain --storage "
        f"{spec.display} --study-name {plan.study_name} --top {1 if chosen else 3}"
    )


def _overhead_share(trials: list[FrozenTrial]) -> float | None:
    """Share of trial wall time spent outside the training epochs (sampling, budget check,
    storage, model build); rejected and duplicate trials, which train nothing, count whole."""
    wall = train = 0.0
    for t in trials:
        if t.datetime_start and t.datetime_complete:
            wall += (t.datetime_complete - t.datetime_start).total_seconds()
            train += t.user_attrs.get("train_seconds", 0.0)
    return (wall - train) / wall if wall > 0 else None


if __name__ == "__main__":
    sys.exit(main())
