"""Where a search's time goes: trials/hour and the seconds a trial spends outside training.

    python scripts/bench_search.py                          # cpu-smoke preset (8 trials), SQLite
    python scripts/bench_search.py --storage-kind journal --trials 8
    python scripts/bench_search.py --device cuda --preset configs/budget-400k.toml --trials 20

Runs a real search (``search.run.main``, in this process, in a temporary working folder) with a
preset, then reads the study back with Optuna. A trial's wall time is Optuna's
``datetime_start`` to ``datetime_complete``; its training time is the ``train_seconds`` user
attribute (fit's epochs, the per-epoch validation included), zero for trials that trained
nothing (rejected over budget, or a duplicate reusing an earlier trial's result: those carry
the twin's figure, not their own). The rest is overhead, and its parts are timed from the inside:
for the run's duration the functions the objective calls (``sample``, ``count``, ``find_twin``,
``build``, ``fit`` in ``search.study``), the sampler's methods and the study's storage methods
are wrapped by timers that count exclusive wall time (a nested timed call is subtracted from its
caller), and each call is charged to the trial whose time window it starts in, or to the time
between trials.

Two micro-benchmarks separate the costs from the run's noise: ``sample`` + ``count`` (the
sampling and budget check) on an in-memory study with the run's TPE sampler, per trial, and the
storage round trips (ask, user attribute, epoch report, tell, reading all trials) on a fresh
SQLite file and a fresh journal file. Figures land in ``results/bench/search-<...>.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import itertools
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

import search.run
import search.study
from search import provenance
from search.config import DataConfig, load_sections, merge, resolve_device
from search.storage import open_storage, parse_storage
from search.study import SearchConfig, make_sampler, resolve_space
from search.training import TrainConfig
from space import count
from space._cli import ArgumentParser
from space._io import write_json_atomic
from space.errors import UserError
from space.searchspace import SearchSpace, sample

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRESET = ROOT / "configs" / "cpu-smoke.toml"
DEFAULT_DATA = ROOT / "data" / "cifar10-jpeg"
STUDY = "bench"

# Timed categories, in the order of the breakdown table.
TRAIN = "training (fit's epochs, validation included)"
FIT_REST = "fit outside its epochs (set-up, pruning callback)"
CATEGORIES = {
    "fit": FIT_REST,
    "build": "model build",
    "sampler": "TPE sampler",
    "sample": "space sampling (widths fitted to the budget)",
    "count": "budget check (params + MACs)",
    "find_twin": "duplicate check",
    "storage": "storage round trips",
    "stale": "stale-trial check + trial count",
    "report": "log line + progress summary",
}


# -- timing from the inside ------------------------------------------------------------------


@dataclass
class Call:
    """One timed call: where it started (wall clock, for the trial windows) and how long it ran
    without its timed sub-calls."""

    category: str
    start: float  # time.time(), seconds since the epoch
    seconds: float  # exclusive wall time
    method: str  # the storage or sampler method, else the function's name


@dataclass
class Profiler:
    """Exclusive wall time of wrapped functions, on the main thread only (Optuna's heartbeat
    thread calls the storage too; those calls run untimed)."""

    calls: list[Call] = field(default_factory=list)
    _children: list[float] = field(default_factory=list)  # time of timed sub-calls, per level
    _inside: list[str] = field(default_factory=list)  # categories of the open calls
    _thread: int = field(default_factory=threading.get_ident)

    def wrap(self, category: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        method = getattr(fn, "__name__", category)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            # A storage method calling another is one round trip, not two.
            if threading.get_ident() != self._thread or (
                category == "storage" and self._inside and self._inside[-1] == "storage"
            ):
                return fn(*args, **kwargs)
            start, began = time.time(), time.perf_counter()
            self._children.append(0.0)
            self._inside.append(category)
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - began
                self._inside.pop()
                nested = self._children.pop()
                if self._children:
                    self._children[-1] += elapsed
                self.calls.append(Call(category, start, elapsed - nested, method))

        return timed

    def wrap_methods(self, obj: object, names: list[str], category: str) -> None:
        for name in names:
            method = getattr(obj, name, None)
            if callable(method):
                setattr(obj, name, self.wrap(category, method))


@contextlib.contextmanager
def instrumented(profiler: Profiler) -> Iterator[None]:
    """Wrap what a trial calls for the duration of the run, then put everything back."""
    storage_methods = [n for n in dir(BaseStorage) if not n.startswith("_")]
    sampler_methods = [
        "before_trial",
        "infer_relative_search_space",
        "sample_relative",
        "sample_independent",
        "after_trial",
    ]
    real_open_study, real_make_sampler = search.run.open_study, search.run.make_sampler

    def open_study(*args: Any, **kwargs: Any) -> optuna.Study:
        study = real_open_study(*args, **kwargs)
        profiler.wrap_methods(study._storage, storage_methods, "storage")
        return study

    def make_sampler_timed(*args: Any, **kwargs: Any) -> optuna.samplers.BaseSampler:
        sampler = real_make_sampler(*args, **kwargs)
        profiler.wrap_methods(sampler, sampler_methods, "sampler")
        return sampler

    # (module, name, category): the names the objective and the worker loop look up at call
    # time. A name the modules no longer have is left out of the breakdown, with a note.
    targets = [(search.study, name, name) for name in ("sample", "count", "find_twin", "build")]
    targets += [
        (search.study, "fit", "fit"),
        (search.study, "fail_stale_trials", "stale"),
        (search.study, "count_active", "stale"),
        (search.run, "_update_bar", "report"),
    ]
    patches = [
        (search.run, "open_study", open_study),
        (search.run, "make_sampler", make_sampler_timed),
    ]
    for module, name, category in targets:
        fn = getattr(module, name, None)
        if fn is None:
            print(f"note: {module.__name__}.{name} is gone; its time counts as other")
            continue
        patches.append((module, name, profiler.wrap(category, fn)))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


# -- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The benchmark's resolved settings."""

    preset: Path
    trials: int | None  # None: the preset's
    storage_kind: str  # sqlite or journal
    device: str | None  # as search.run takes it; None keeps the preset's
    data: Path | None  # None: generated images
    seed: int
    sampling_trials: int  # trials of the in-memory sampling micro-benchmark
    storage_trials: int  # trials of the storage micro-benchmark
    out: Path


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python scripts/bench_search.py",
        description="Run a short real search and report trials/hour and the time a trial spends "
        "outside training, broken down; writes JSON.",
    )
    p.add_argument("--preset", type=Path, default=DEFAULT_PRESET, help="search preset TOML")
    p.add_argument("--trials", type=int, help="trials of the search (default: the preset's)")
    p.add_argument("--storage-kind", choices=("sqlite", "journal"), default="sqlite")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the preset's)")
    p.add_argument(
        "--data",
        help=f"image folder or tarball, or 'generated' for generated 32x32 images of 10 classes "
        f"(default {DEFAULT_DATA.relative_to(ROOT)} when it exists, else generated)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    p.add_argument(
        "--sampling-trials",
        type=int,
        default=40,
        help="trials of the in-memory sample + count micro-benchmark (default 40; 0 skips)",
    )
    p.add_argument(
        "--storage-trials",
        type=int,
        default=20,
        help="trials of the SQLite vs journal round-trip micro-benchmark (default 20; 0 skips)",
    )
    p.add_argument("--out", type=Path, default=Path("results") / "bench", help="JSON folder")
    return p


def resolve(argv: list[str] | None) -> Settings:
    args = build_parser().parse_args(argv)
    if not args.preset.is_file():
        raise UserError(f"--preset {str(args.preset)!r}: no such file")
    for name in ("trials", "sampling_trials", "storage_trials"):
        least = 1 if name == "trials" else 0
        value = getattr(args, name)
        if value is not None and value < least:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be an integer >= {least}, but got {value}")
    if args.device is not None:
        resolve_device(args.device)  # its own message for a bad value or a missing GPU
    data = None if args.data == "generated" else Path(args.data) if args.data else None
    if args.data is None and DEFAULT_DATA.is_dir():
        data = DEFAULT_DATA
    if data is not None and not data.exists():
        raise UserError(f"--data {str(data)!r}: no such file or folder (or 'generated')")
    return Settings(
        preset=args.preset.resolve(),
        trials=args.trials,
        storage_kind=args.storage_kind,
        device=args.device,
        data=data.resolve() if data is not None else None,
        seed=args.seed,
        sampling_trials=args.sampling_trials,
        storage_trials=args.storage_trials,
        out=args.out.resolve(),
    )


def generate_images(root: Path, data: DataConfig) -> Path:
    """A CIFAR-shaped image folder big enough for the preset: 10 classes of 32x32 PNGs, each
    class noise around a colour of its own (learnable, so Hyperband has curves to compare)."""
    rng = np.random.default_rng(0)
    classes = 10
    per_class = (data.subset or 60) + -(-data.val_size // classes)  # train + val, rounded up
    for split, n in (("train", per_class), ("test", 10)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = rng.integers(0, 256, 3)
            for i in range(n):
                pixels = (colour + rng.normal(0, 40, (32, 32, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def run_search(s: Settings, work: Path, profiler: Profiler) -> tuple[optuna.Study, dict[str, Any]]:
    """The search, in ``work``; returns the study and the run's wall-clock marks."""
    presets = load_sections(
        s.preset, {"search": SearchConfig, "data": DataConfig, "train": TrainConfig}
    )
    data_config = merge(DataConfig, presets["data"], where="data settings")
    data = s.data if s.data is not None else generate_images(work / "images", data_config)
    suffix = "db" if s.storage_kind == "sqlite" else "journal"
    storage = f"{s.storage_kind}:///{work / 'results' / STUDY}.{suffix}"
    argv = [
        "--config", str(s.preset),
        "--data", str(data),
        "--storage", storage,
        "--study-name", STUDY,
        "--seed", str(s.seed),
        "--results", str(work / "results"),
        "--no-progress",
    ]  # fmt: skip
    if s.trials is not None:
        argv += ["--trials", str(s.trials)]
    if s.device is not None:
        argv += ["--device", s.device]
    print(f"$ python -m search.run {' '.join(argv)}\n")
    cwd = Path.cwd()
    on_sigterm = signal.getsignal(signal.SIGTERM)  # search.run.main installs its own
    os.chdir(work)
    started = time.time()
    try:
        with instrumented(profiler):
            code = search.run.main(argv)
    finally:
        os.chdir(cwd)
        signal.signal(signal.SIGTERM, on_sigterm)
    finished = time.time()
    if code != 0:
        raise UserError(f"the search exited with code {code} (see above)")
    spec = parse_storage(storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.load_study(
            study_name=STUDY, storage=open_storage(spec, heartbeat=60, grace=120)
        )
    return study, {"started": started, "finished": finished, "data": str(data), "storage": storage}


# -- what the study says ---------------------------------------------------------------------


def trained_seconds(t: FrozenTrial) -> float:
    """Seconds this trial itself trained: none for rejects and for duplicates (which copy their
    twin's ``train_seconds``)."""
    if "duplicate_of" in t.user_attrs:
        return 0.0
    return float(t.user_attrs.get("train_seconds", 0.0))


def window(t: FrozenTrial) -> tuple[float, float]:
    assert t.datetime_start is not None and t.datetime_complete is not None
    return t.datetime_start.timestamp(), t.datetime_complete.timestamp()


def analyse(study: optuna.Study, marks: dict[str, Any], profiler: Profiler) -> dict[str, Any]:
    trials = [
        t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete
    ]
    trials.sort(key=lambda t: t.datetime_start)  # type: ignore[arg-type, return-value]
    windows = [window(t) for t in trials]
    per_trial: list[dict[str, Any]] = []
    inside: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(trials))
    storage_calls = [0] * len(trials)
    methods: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])  # storage: [calls, seconds]
    between: dict[str, float] = defaultdict(float)
    for call in profiler.calls:
        k = next((i for i, (a, b) in enumerate(windows) if a <= call.start <= b), None)
        if k is None:
            if windows and windows[0][0] <= call.start <= windows[-1][1]:
                between[call.category] += call.seconds
            continue
        inside[call.category][k] += call.seconds
        if call.category == "storage":
            storage_calls[k] += 1
            methods[call.method][0] += 1
            methods[call.method][1] += call.seconds
    for k, t in enumerate(trials):
        wall = windows[k][1] - windows[k][0]
        train = trained_seconds(t)
        parts = {CATEGORIES[c]: inside[c][k] for c in CATEGORIES if c in inside}
        if FIT_REST in parts:
            parts[FIT_REST] -= train  # fit's exclusive time holds the epochs
        parts["other (Optuna bookkeeping, attributes, Python)"] = wall - train - sum(parts.values())
        per_trial.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "status": t.user_attrs.get("status", ""),
                "params": t.user_attrs.get("params"),
                "epochs_run": t.user_attrs.get("epochs_run", 0),
                "wall_seconds": wall,
                "train_seconds": train,
                "outside_seconds": wall - train,
                "storage_calls": storage_calls[k],
                "parts": parts,
            }
        )
    n = len(per_trial)
    run_wall = marks["finished"] - marks["started"]
    startup = windows[0][0] - marks["started"] if windows else run_wall
    tail = marks["finished"] - windows[-1][1] if windows else 0.0
    gaps = sum(b[0] - a[1] for a, b in itertools.pairwise(windows))
    wall_sum = sum(p["wall_seconds"] for p in per_trial)
    outside_sum = sum(p["outside_seconds"] for p in per_trial)
    part_names = list(dict.fromkeys(name for p in per_trial for name in p["parts"]))
    return {
        "trials": per_trial,
        "count": n,
        "states": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
        "run_wall_seconds": run_wall,
        "startup_seconds": startup,  # data load, study creation, until the first trial starts
        "tail_seconds": tail,  # after the last trial: the summary
        "between_trials_seconds": gaps,  # claim lock, stale check, count, ask, log line
        "between_trials_parts": {CATEGORIES[c]: v for c, v in between.items()},
        "trials_per_hour": n / run_wall * 3600,
        "trials_per_hour_steady": n / (run_wall - startup - tail) * 3600 if n else 0.0,
        "mean_trial_seconds": wall_sum / n if n else 0.0,
        "mean_train_seconds": sum(p["train_seconds"] for p in per_trial) / n if n else 0.0,
        "mean_outside_seconds": outside_sum / n if n else 0.0,
        "outside_share": outside_sum / wall_sum if wall_sum else 0.0,
        "mean_between_seconds": gaps / max(1, n - 1),
        "mean_parts": {
            name: sum(p["parts"].get(name, 0.0) for p in per_trial) / n for name in part_names
        },
        "mean_storage_calls": sum(storage_calls) / n if n else 0.0,
        "storage_methods_per_trial": {  # inside trial windows, most time first
            name: {"calls": calls / n, "ms": seconds / n * 1e3}
            for name, (calls, seconds) in sorted(methods.items(), key=lambda kv: -kv[1][1])
        },
    }


# -- micro-benchmarks ------------------------------------------------------------------------


def bench_sampling(s: Settings) -> dict[str, Any]:
    """Per trial: ask, ``sample`` and ``count`` on an in-memory study with the run's sampler."""
    presets = load_sections(
        s.preset, {"search": SearchConfig, "data": DataConfig, "train": TrainConfig}
    )
    config = merge(SearchConfig, presets["search"], {"seed": s.seed}, where="search settings")
    space = SearchSpace.load(resolve_space(config.space))
    budget = config.budget_params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            direction="maximize", sampler=make_sampler(config, existing=0, worker=0)
        )
        rng = np.random.default_rng(0)
        rows = []
        for _ in range(s.sampling_trials):
            began = time.perf_counter()
            trial = study.ask()
            asked = time.perf_counter()
            drawn = sample(trial, space, budget=budget, num_classes=10, in_channels=3)
            sampled = time.perf_counter()
            params, _ = count(drawn.genotype, num_classes=10, in_channels=3, image_size=32)
            counted = time.perf_counter()
            trial.set_constraint("params_over_budget", params - budget)
            if params > budget:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, float(rng.uniform(0.1, 0.9)))
            rows.append(
                (asked - began, sampled - asked, counted - sampled, time.perf_counter() - counted)
            )
    startup = config.startup_trials

    def mean_ms(part: list[tuple[float, ...]], i: int) -> float | None:
        return statistics.fmean(r[i] for r in part) * 1e3 if part else None

    phases = {"random (startup)": rows[:startup], "TPE": rows[startup:], "TPE, last 10": rows[-10:]}
    return {
        "trials": len(rows),
        "startup_trials": startup,
        "ms": {
            phase: {
                "ask": mean_ms(part, 0),
                "sample": mean_ms(part, 1),
                "count": mean_ms(part, 2),
                "tell": mean_ms(part, 3),
            }
            for phase, part in phases.items()
            if part and (phase != "TPE, last 10" or len(rows) > startup + 10)
        },
    }


def bench_storage(s: Settings, work: Path) -> dict[str, Any]:
    """Mean milliseconds of each storage round trip a trial makes, SQLite against journal, over
    ``storage_trials`` trials written the way the objective writes them."""
    out = {}
    for kind in ("sqlite", "journal"):
        suffix = "db" if kind == "sqlite" else "journal"
        out[kind] = round_trips(f"{kind}:///{work / 'micro'}-{kind}.{suffix}", s.storage_trials)
    return {"trials": s.storage_trials, "ms": out}


def round_trips(url: str, trials: int) -> dict[str, float]:
    """Mean milliseconds per call of each operation on a fresh storage at ``url``."""
    genotype = {"stages": [{"depth": 3, "width": 64, "block": "basic"}] * 3, "stem_width": 32}
    times: dict[str, list[float]] = defaultdict(list)

    def timed(op: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        result = fn(*args, **kwargs)
        times[op].append(time.perf_counter() - began)
        return result

    with warnings.catch_warnings():
        # Optuna warns that heartbeats belong to Study.optimize; here ask and tell are timed.
        warnings.simplefilter("ignore")
        storage = open_storage(parse_storage(url), heartbeat=60, grace=120)
        study = optuna.create_study(
            storage=storage,
            study_name="micro",
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=0),  # no model of the history: I/O only
        )
        for k in range(trials):
            trial = timed("ask (new trial)", study.ask)
            timed("suggest (one parameter)", trial.suggest_int, "depth", 1, 8)
            for name, value in (("genotype", genotype), ("key", f"k{k}"), ("params", 90_000)):
                timed("set_user_attr", trial.set_user_attr, name, value)
            for epoch in (1, 2):
                timed("report (an epoch)", trial.report, 0.1 * epoch, epoch)
            timed("get_trials (whole study)", study.get_trials, deepcopy=False)
            timed("tell", study.tell, trial, 0.5)
    return {op: statistics.fmean(v) * 1e3 for op, v in times.items()}


# -- output ----------------------------------------------------------------------------------


def print_report(
    result: dict[str, Any], sampling: dict[str, Any] | None, storage: dict[str, Any] | None
) -> None:
    r = result
    print(f"\n{'=' * 100}")
    print(
        f"run: {r['count']} trials ({', '.join(f'{v} {k}' for k, v in r['states'].items() if v)})"
        f" in {r['run_wall_seconds']:.1f} s: startup {r['startup_seconds']:.1f} s (data, study), "
        f"between trials {r['between_trials_seconds']:.1f} s, summary {r['tail_seconds']:.1f} s"
    )
    print(
        f"trials/hour: {r['trials_per_hour']:.0f} over the whole run, "
        f"{r['trials_per_hour_steady']:.0f} without start-up and summary"
    )
    print(
        f"mean trial: {r['mean_trial_seconds']:.2f} s, of which training "
        f"{r['mean_train_seconds']:.2f} s and outside training {r['mean_outside_seconds']:.3f} s "
        f"= {r['outside_share']:.2%} of trial time"
    )
    print(f"\n{'trial':>5} {'state':<9} {'params':>7} {'epochs':>6} {'wall s':>8} "
          f"{'train s':>8} {'outside s':>9} {'outside':>8} {'storage calls':>13}")  # fmt: skip
    for t in r["trials"]:
        share = t["outside_seconds"] / t["wall_seconds"] if t["wall_seconds"] else 0.0
        params = f"{t['params'] / 1e3:.1f}k" if t["params"] else "-"
        print(
            f"{t['number']:>5} {t['state']:<9} {params:>7} {t['epochs_run']:>6} "
            f"{t['wall_seconds']:>8.2f} {t['train_seconds']:>8.2f} {t['outside_seconds']:>9.3f} "
            f"{share:>8.2%} {t['storage_calls']:>13}"
        )
    print(f"\noutside training, mean per trial ({r['mean_storage_calls']:.0f} storage calls):")
    mean_wall = r["mean_trial_seconds"]
    for name, seconds in r["mean_parts"].items():
        share = seconds / mean_wall if mean_wall else 0.0
        print(f"  {name:<52} {seconds * 1e3:>10.2f} ms {share:>8.2%} of trial time")
    print("  storage calls by method, per trial:")
    for name, m in r["storage_methods_per_trial"].items():
        print(f"    {name:<34} {m['calls']:>6.1f} calls {m['ms']:>10.2f} ms")
    if r["between_trials_parts"]:
        gaps = max(1, r["count"] - 1)
        print(
            f"between trials, mean per gap {r['mean_between_seconds'] * 1e3:.1f} ms "
            "(claim lock, ask, tell and the parts below):"
        )
        for name, seconds in r["between_trials_parts"].items():
            print(f"  {name:<52} {seconds / gaps * 1e3:>10.2f} ms")
    if sampling:
        print(
            f"\nsampling on an in-memory study, {sampling['trials']} trials "
            f"({sampling['startup_trials']} random, then TPE), mean ms per trial:"
        )
        print(f"  {'phase':<20} {'ask':>8} {'sample':>8} {'count':>8} {'tell':>8}")
        for phase, ms in sampling["ms"].items():
            cells = " ".join(f"{ms[k]:>8.2f}" for k in ("ask", "sample", "count", "tell"))
            print(f"  {phase:<20} {cells}")
    if storage:
        print(f"\nstorage round trips, mean ms per call over {storage['trials']} trials:")
        print(f"  {'operation':<28} {'sqlite':>8} {'journal':>8}")
        for op in storage["ms"]["sqlite"]:
            sqlite, journal = storage["ms"]["sqlite"][op], storage["ms"]["journal"][op]
            print(f"  {op:<28} {sqlite:>8.2f} {journal:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    try:
        s = resolve(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > cores / 2:
        print(
            f"load average {load:.1f} on {cores} cores before the start: other processes share "
            "the CPU, so training is slower and the overhead share lower than on an idle machine\n"
        )
    profiler = Profiler()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = Path(tmp)
        try:
            study, marks = run_search(s, work, profiler)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        result = analyse(study, marks, profiler)
        device = next(
            (str(t.user_attrs["device"]) for t in study.trials if "device" in t.user_attrs), ""
        )
        sampling = bench_sampling(s) if s.sampling_trials else None
        storage = bench_storage(s, work) if s.storage_trials else None
    print_report(result, sampling, storage)
    slug = re.sub(r"[^a-z0-9]+", "-", (device or "unknown").lower()).strip("-")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = s.out / f"search-{slug}-{s.storage_kind}-{stamp}.json"
    record = {
        "benchmark": "search",
        "created": provenance.now(),
        "device": device,
        "host": provenance.host(),
        "versions": provenance.versions(),
        "load_average_at_start": load,
        "cpu_count": cores,
        "command": provenance.command_line(),
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()
        },
        "data": marks["data"],
        "storage": s.storage_kind,
        "search": result,
        "sampling": sampling,
        "storage_round_trips": storage,
    }
    write_json_atomic(path, record)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
