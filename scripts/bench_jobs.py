"""Aggregate training images/s of several trainings at once on one device: plain processes
(time-slicing the GPU) and, with ``--mps``, the same under NVIDIA's Multi-Process Service.

    python scripts/bench_jobs.py --device cpu --jobs 1 2 --steps 3 --batch-size 8   # dry run
    python scripts/bench_jobs.py --device cuda --mps                                 # 1 2 4 8 jobs

For each N of ``--jobs`` (default 1 2 4 8) it spawns N worker processes (spawned, not forked:
each starts CUDA clean, as ``search.jobs`` does) that each train the same architecture (default
resnet20) on the same uint8 images with ``search.training.fit``: one epoch of ``--steps`` steps
to warm up (cuDNN autotuning, the allocator, a CUDA graph's capture), then every worker waits at
a barrier, then one more epoch of ``--steps`` steps, timed. Per N:

- aggregate images/s: every job's timed images over the span from the barrier to the end of the
  last job (what the GPU did for all of them together);
- per-job images/s: each job's own timed epoch (fit's figure), the mean and the slowest;
- the ratio of the aggregate to one job alone (the plain N = 1 row).

With ``--mps`` the rows are measured once more with the MPS daemon running
(``search.jobs.mps_daemon`` starts it and stops it afterwards; "unavailable" where
``nvidia-cuda-mps-control`` is missing, and a daemon already running is used as it is).
Each worker has ``cores // N`` CPU threads. Without ``--data`` the images are random uint8 of
CIFAR shape, made on the device by each worker from the same seed. Figures land in
``results/bench/jobs-<device>-<timestamp>.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import multiprocessing as mp
import os
import queue
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search import provenance
from search.augment import Normalization
from search.config import configure_torch, resolve_device
from search.data import ImageSet, load_dataset
from search.jobs import mps_daemon
from search.training import EpochStats, TrainConfig, fit
from space import Genotype, build
from space._cli import ArgumentParser
from space._io import write_json_atomic
from space.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JOBS = (1, 2, 4, 8)
BARRIER_SECONDS = 900.0  # the longest a worker waits for the others to finish warming up
RESULT_SECONDS = 3600.0  # the longest the parent waits for a worker's figures
USER_ERROR = "user error: "  # how a worker's report marks a mistake of the user's


@dataclass(frozen=True)
class Settings:
    """The benchmark's resolved settings (plain data: the workers receive it pickled)."""

    device: str  # "cpu", "cuda" or "cuda:N": a string, so that the parent never touches CUDA
    model: Path
    jobs: tuple[int, ...]
    batch_size: int  # training images per step, per job
    steps: int  # steps per epoch: one epoch warms up, one is timed
    mps: bool  # measure the rows again under MPS
    cuda_graph: bool  # TrainConfig.cuda_graph in every job
    data: str | None  # None: generated random images
    out: Path  # folder of the JSON file


@dataclass(frozen=True)
class JobTiming:
    """What one worker measured; times are ``time.monotonic()``, one clock for all processes."""

    started: float  # when it left the barrier
    ended: float  # when its timed epoch ended (fit synchronises at an epoch's end)
    images: int  # images of the timed epoch
    images_per_s: float  # fit's own figure of the timed epoch


@dataclass(frozen=True)
class Row:
    """One (sharing, N) row of the table."""

    sharing: str  # "processes" or "mps"
    jobs: int
    state: str  # "ok", or why there are no figures: "unavailable", "n/a on cpu", "error: ..."
    aggregate_images_per_s: float | None = None
    per_job_images_per_s: float | None = None  # mean over the jobs
    slowest_job_images_per_s: float | None = None
    ratio: float | None = None  # aggregate over one job alone (plain processes, N = 1)
    span_s: float | None = None  # from the first job leaving the barrier to the last one's end
    start_skew_s: float | None = None  # last job's start after the first's
    peak_memory_mib: float | None = None  # largest peak of allocated GPU memory among the jobs


def aggregate(timings: Sequence[JobTiming]) -> tuple[float, float, float, float, float]:
    """(aggregate images/s, mean per-job images/s, slowest job's images/s, span seconds, start
    skew seconds) of jobs that ran together: the aggregate is all their images over the span
    from the first start to the last end."""
    if not timings:
        raise ValueError("no job timings to aggregate")
    span = max(t.ended for t in timings) - min(t.started for t in timings)
    total = sum(t.images for t in timings)
    per_job = [t.images_per_s for t in timings]
    skew = max(t.started for t in timings) - min(t.started for t in timings)
    return total / span, sum(per_job) / len(per_job), min(per_job), span, skew


def with_ratios(rows: Sequence[Row]) -> list[Row]:
    """The rows with ``ratio`` set against the plain one-job row's aggregate (None without
    one)."""
    alone = next(
        (r for r in rows if r.sharing == "processes" and r.jobs == 1 and r.state == "ok"), None
    )
    base = alone.aggregate_images_per_s if alone else None
    return [
        dataclasses.replace(r, ratio=r.aggregate_images_per_s / base)
        if base and r.aggregate_images_per_s is not None
        else r
        for r in rows
    ]


# -- command line ------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python scripts/bench_jobs.py",
        description="Aggregate training images/s of 1, 2, 4 and 8 trainings at once on one "
        "device, as plain processes and (--mps) under CUDA MPS; prints a table, writes JSON.",
    )
    p.add_argument(
        "--model", default="resnet20", help="a name in configs/reference/ or a TOML path"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--jobs",
        nargs="+",
        type=int,
        default=list(DEFAULT_JOBS),
        help="numbers of trainings at once (default 1 2 4 8)",
    )
    p.add_argument("--batch-size", type=int, help="batch per job (default 512 CUDA, 8 CPU)")
    p.add_argument(
        "--steps",
        type=int,
        help="steps of the warm-up epoch and of the timed one (default 100 CUDA, 3 CPU)",
    )
    p.add_argument(
        "--mps",
        action="store_true",
        help="measure every N again under NVIDIA MPS, started and stopped here (CUDA only)",
    )
    p.add_argument("--cuda-graph", action="store_true", help="TrainConfig.cuda_graph in each job")
    p.add_argument(
        "--data",
        help="cifar10, an image folder or a .tar.gz of one (default: random uint8 images)",
    )
    p.add_argument("--out", type=Path, default=Path("results") / "bench", help="JSON folder")
    return p


def resolve(argv: Sequence[str] | None) -> Settings:
    args = build_parser().parse_args(argv)
    device = parse_device(args.device)
    cuda = device.startswith("cuda")
    for name in ("batch_size", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be an integer >= 1, but got {value}")
    if any(n < 1 for n in args.jobs):
        raise UserError(f"--jobs must be integers >= 1, but got {' '.join(map(str, args.jobs))}")
    return Settings(
        device=device,
        model=model_path(args.model),
        jobs=tuple(dict.fromkeys(args.jobs)),
        batch_size=args.batch_size or (TrainConfig().batch_size if cuda else 8),
        steps=args.steps or (100 if cuda else 3),
        mps=args.mps,
        cuda_graph=args.cuda_graph,
        data=args.data,
        out=args.out,
    )


def parse_device(text: str) -> str:
    """The device as text, checked without initialising CUDA here (the workers check it):
    ``torch.cuda.device_count()`` asks NVML, not the CUDA driver, where NVML is present."""
    text = text.strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.device_count() > 0 else "cpu"
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise UserError(f"--device must be auto, cpu, cuda or cuda:N, but got {text!r}")


def model_path(name: str) -> Path:
    """A TOML path as given, or a name in configs/reference/."""
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise UserError(f"--model: no such architecture file {name!r}")
        return path
    candidate = ROOT / "configs" / "reference" / f"{name}.toml"
    if not candidate.is_file():
        names = sorted(p.stem for p in (ROOT / "configs" / "reference").glob("*.toml"))
        raise UserError(
            f"--model: no reference architecture {name!r} (names: {', '.join(names)}; "
            "or give a path to a .toml file)"
        )
    return candidate


# -- one worker --------------------------------------------------------------------------------


def train_config(s: Settings) -> TrainConfig:
    """fit's defaults at the benchmark's batch size: two epochs, the first to warm up."""
    base = TrainConfig()
    return TrainConfig(
        epochs=2,
        batch_size=s.batch_size,
        lr=base.lr * s.batch_size / base.batch_size,  # the default peak, per image
        cuda_graph=s.cuda_graph,
    )


def job_data(s: Settings, device: torch.device) -> tuple[ImageSet, Normalization, int]:
    """One epoch's images (``steps * batch_size``) on the device, the same in every worker."""
    n = s.steps * s.batch_size
    if s.data is None:
        gen = torch.Generator(device=device).manual_seed(0)
        images = torch.randint(
            0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen, device=device
        )
        labels = torch.randint(0, 10, (n,), generator=gen, device=device)
        # Uniform bytes: mean 0.5, standard deviation 1/sqrt(12) in [0, 1] units.
        return ImageSet(images, labels), Normalization((0.5,) * 3, ((1 / 12) ** 0.5,) * 3), 10
    dataset = load_dataset(s.data)  # the parent decoded it once: this reads the cache
    index = torch.arange(n) % len(dataset.train)
    split = dataset.train.take(index).to(device)
    return split, Normalization(dataset.mean, dataset.std), dataset.num_classes


def work(index: int, jobs: int, s: Settings, barrier: Any, results: Any) -> None:
    """One worker: warm up for an epoch, wait at the barrier, train one timed epoch, put its
    figures (or its error) on ``results``. A worker that fails breaks the barrier, so the
    others stop waiting."""
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
        device = resolve_device(s.device)
        configure_torch(device)
        split, normalization, num_classes = job_data(s, device)
        g = Genotype.load(s.model)
        torch.manual_seed(0)
        model = build(g, num_classes=num_classes, in_channels=split.images.shape[1])
        marks: dict[str, float] = {}

        def on_epoch(stats: EpochStats) -> None:
            if stats.epoch == 1:  # warmed up: wait for the others, then go together
                barrier.wait(timeout=BARRIER_SECONDS)
                marks["started"] = time.monotonic()
            else:
                marks["ended"] = time.monotonic()

        history = fit(
            model,
            split,
            augment=g.augment,
            normalization=normalization,
            num_classes=num_classes,
            config=train_config(s),
            device=device,
            on_epoch=on_epoch,
        )
        cuda = device.type == "cuda"
        timing = JobTiming(
            started=marks["started"],
            ended=marks["ended"],
            images=s.steps * s.batch_size,
            images_per_s=history.epochs[-1].images_per_s,
        )
        results.put(
            {
                "index": index,
                "timing": dataclasses.asdict(timing),
                "device_name": provenance.device_name(device),
                "threads": torch.get_num_threads(),
                "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20
                if cuda
                else None,
            }
        )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        kind = USER_ERROR if isinstance(exc, UserError) else f"{type(exc).__name__}: "
        results.put({"index": index, "error": f"{kind}{exc}".strip()[:500]})


# -- the parent --------------------------------------------------------------------------------


def run_together(s: Settings, jobs: int) -> tuple[list[JobTiming], list[dict[str, Any]]]:
    """Start ``jobs`` workers, wait for their figures; raises RuntimeError with the first
    worker's error when one fails."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(jobs)
    results = context.Queue()
    workers = [
        context.Process(target=work, args=(i, jobs, s, barrier, results), daemon=True)
        for i in range(jobs)
    ]
    reports: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + RESULT_SECONDS
    try:
        for w in workers:
            w.start()
        while len(reports) < jobs:
            try:
                report = results.get(timeout=1.0)
                reports[report["index"]] = report
                continue
            except queue.Empty:
                pass
            silent = [w for i, w in enumerate(workers) if i not in reports and not w.is_alive()]
            if silent or time.monotonic() > deadline:
                with contextlib.suppress(Exception):
                    barrier.abort()
                code = silent[0].exitcode if silent else None
                raise RuntimeError(
                    f"a worker ended without figures (exit code {code})"
                    if silent
                    else f"no figures after {RESULT_SECONDS:.0f} s"
                )
        for w in workers:
            w.join(timeout=60)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
                w.join(timeout=10)
    errors = [r["error"] for _, r in sorted(reports.items()) if "error" in r]
    real = [e for e in errors if not e.startswith("BrokenBarrierError")]
    if real and real[0].startswith(USER_ERROR):  # --device cuda without a GPU, say
        raise UserError(real[0].removeprefix(USER_ERROR))
    if errors:
        raise RuntimeError((real or errors)[0])
    ordered = [reports[i] for i in range(jobs)]
    return [JobTiming(**r["timing"]) for r in ordered], ordered


def measure(s: Settings, sharing: str) -> tuple[list[Row], list[dict[str, Any]]]:
    """One row per N of ``s.jobs``; and every worker's own figures."""
    rows, raw = [], []
    for jobs in s.jobs:
        print(f"  {sharing}: {jobs} job{'s' if jobs > 1 else ''} ...", flush=True)
        try:
            timings, reports = run_together(s, jobs)
        except RuntimeError as exc:
            rows.append(Row(sharing, jobs, f"error: {exc}"))
            continue
        total, per_job, slowest, span, skew = aggregate(timings)
        peaks = [r["peak_memory_mib"] for r in reports if r["peak_memory_mib"] is not None]
        rows.append(
            Row(
                sharing,
                jobs,
                "ok",
                aggregate_images_per_s=total,
                per_job_images_per_s=per_job,
                slowest_job_images_per_s=slowest,
                span_s=span,
                start_skew_s=skew,
                peak_memory_mib=max(peaks) if peaks else None,
            )
        )
        raw.append({"sharing": sharing, "jobs": jobs, "workers": reports})
    return rows, raw


def print_table(rows: Sequence[Row], s: Settings) -> None:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(
        f"\n{s.model.stem}, batch {s.batch_size} per job, {s.steps} timed steps after a warm-up "
        f"epoch of as many; ratio = aggregate over one job alone (plain processes)"
    )
    print(
        f"  {'sharing':<10} {'jobs':>4} {'agg img/s':>10} {'per job':>9} {'slowest':>9} "
        f"{'x one':>6} {'span s':>7} {'skew s':>6} {'peak MiB':>8}"
    )
    for r in rows:
        if r.state != "ok":
            print(f"  {r.sharing:<10} {r.jobs:>4} {r.state}")
            continue
        cells = [
            num(r.aggregate_images_per_s, ",.1f").rjust(10),
            num(r.per_job_images_per_s, ",.1f").rjust(9),
            num(r.slowest_job_images_per_s, ",.1f").rjust(9),
            num(r.ratio, ".2f").rjust(6),
            num(r.span_s, ".2f").rjust(7),
            num(r.start_skew_s, ".3f").rjust(6),
            num(r.peak_memory_mib, ",.0f").rjust(8),
        ]
        print(f"  {r.sharing:<10} {r.jobs:>4} {' '.join(cells)}")
    best = max(
        (r for r in rows if r.aggregate_images_per_s is not None),
        key=lambda r: r.aggregate_images_per_s or 0.0,
        default=None,
    )
    if best is not None and best.ratio is not None:
        print(
            f"  => most images/s: {best.jobs} job{'s' if best.jobs > 1 else ''} as {best.sharing}, "
            f"{best.ratio:.2f}x one job alone"
        )


def device_slug(name: str) -> str:
    """'cpu', or a GPU's name as a file-name word: 'nvidia-h200'."""
    if name.startswith("cpu"):
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def main(argv: list[str] | None = None) -> int:
    load = os.getloadavg()[0]
    try:
        s = resolve(argv)
        if s.data is not None:
            load_dataset(s.data)  # a user error here, not in N workers; fills the data cache
        rows, raw, mps_state = measure_all(s)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(rows, s)
    names = [w["device_name"] for run in raw for w in run["workers"]]
    device_name = names[0] if names else s.device
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = s.out / f"jobs-{device_slug(device_name)}-{stamp}.json"
    record = {
        "benchmark": "jobs",
        "created": provenance.now(),
        "device": device_name,
        "host": provenance.host(),
        "versions": provenance.versions(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load,
        "command": provenance.command_line(),
        "settings": {
            **{k: v for k, v in dataclasses.asdict(s).items() if k not in ("model", "out")},
            "model": str(s.model),
            "train_config": train_config(s).to_dict(),
        },
        "data": s.data or "generated random uint8 images, 3x32x32, 10 classes",
        "model": s.model.stem,
        "mps": mps_state,
        "rows": [dataclasses.asdict(r) for r in rows],
        "workers": raw,
    }
    write_json_atomic(path, record)
    print(f"\nwrote {path}")
    return 1 if any(r.state.startswith("error") for r in rows) else 0


def measure_all(s: Settings) -> tuple[list[Row], list[dict[str, Any]], str]:
    """Every row: plain processes, then under MPS when asked; each worker's figures; what
    became of MPS, in words."""
    cuda = s.device.startswith("cuda")
    # The parent never initialises CUDA: a process that has a CUDA context when the MPS daemon
    # starts stays outside MPS and holds the GPU as an ordinary client beside the MPS server
    # (on a GPU in exclusive-process mode it even keeps the server out), and its context would
    # cost memory the jobs could use. Only the spawned workers touch the GPU; each one connects
    # to whatever daemon runs when its CUDA starts.
    if torch.cuda.is_initialized():
        raise RuntimeError("bug: CUDA was initialised in the parent before the jobs started")
    print(
        f"device  {s.device} (each job: {s.model.stem}, batch {s.batch_size}, cuda_graph "
        f"{'on' if s.cuda_graph else 'off'}, {os.cpu_count()} cores // N threads); torch "
        f"{torch.__version__}"
    )
    rows, raw = measure(s, "processes")
    mps_state = "not asked (--mps)"
    if s.mps and not cuda:
        mps_state = "n/a on cpu"
        rows += [Row("mps", n, "n/a on cpu") for n in s.jobs]
    elif s.mps:
        with mps_daemon(enabled=True) as mps_state:
            if mps_state in ("started", "already running"):
                mps_rows, mps_raw = measure(s, "mps")
                rows += mps_rows
                raw += mps_raw
            else:
                rows += [Row("mps", n, mps_state) for n in s.jobs]
    return with_ratios(rows), raw, mps_state


if __name__ == "__main__":
    sys.exit(main())
