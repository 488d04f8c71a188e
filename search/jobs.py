"""Many trainings at once: a list of run folders trained side by side on one device.

The race of the leaders, the fidelity measurement and the campaign's retraining each hand over a
list of ``Job`` s (an ``Experiment`` and its run folder); ``run_jobs`` trains them, resuming what
a killed run left, and returns their metrics in the order given.

- ``concurrency`` 1 trains one job after another in this process.
- ``concurrency`` N > 1 trains up to N jobs at once, each in a worker process of its own
  (spawned, so CUDA starts clean in each), longest first so that the last ones to finish are
  short. On CUDA the N workers share each visible GPU (N per GPU, round robin); on a CPU they
  share the cores, ``cores // N`` threads each. Several processes on one GPU time-slice it;
  with ``mps=True`` the NVIDIA Multi-Process Service runs while the jobs do (started here when
  ``nvidia-cuda-mps-control`` exists and no daemon runs yet, stopped afterwards), which lets
  kernels of different processes run at the same time.

A job's result does not depend on how it ran: each seeds its own weights, order and
augmentation, so a job trained beside others ends with the weights a serial run gives (bit for
bit on a CPU with the same number of threads; within bf16 nondeterminism on a GPU).
Ctrl-C (or SIGTERM, which a caller turns into KeyboardInterrupt) stops every worker at once;
the epochs each job finished are in its checkpoint, and the same call resumes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from search.config import DataConfig
from search.data import Dataset, decode, split
from search.experiment import Experiment, check_run_folder, run_experiment
from search.training import EpochStats, TrainingDiverged
from space import count


@dataclass(frozen=True)
class Job:
    """One training into one run folder."""

    experiment: Experiment
    out: Path  # the run folder (see search.experiment)
    label: str = ""  # how progress lines name it; default the experiment's name and seed
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in config.json

    @property
    def name(self) -> str:
        return self.label or f"{self.experiment.name} seed {self.experiment.train.seed}"


@dataclass
class Outcome:
    """How one job ended: its metrics, or why it has none."""

    job: Job
    metrics: dict[str, Any] | None = None
    error: str | None = None  # "diverged: ..." for a training whose loss became nan or inf

    @property
    def ok(self) -> bool:
        return self.metrics is not None


def job_cost(job: Job, dataset: Dataset) -> float:
    """Relative cost of a job, to start the longest first: multiply-accumulates of a training
    image times the images it trains on."""
    e = job.experiment
    _, macs = count(
        e.genotype,
        num_classes=dataset.num_classes,
        in_channels=dataset.in_channels,
        image_size=dataset.image_size,
    )
    return float(macs) * e.train.epochs * len(dataset.train)


def check_jobs(jobs: Sequence[Job]) -> None:
    """Refuse, before anything is trained, a run folder that holds a run with other settings."""
    for job in jobs:
        check_run_folder(job.experiment, job.out)


def finished_metrics(job: Job) -> dict[str, Any] | None:
    """The metrics of a job whose folder holds a finished run of the same settings."""
    import json

    from search.experiment import recorded_settings

    path = job.out / "metrics.json"
    if not path.is_file() or recorded_settings(job.out) is None:
        return None
    try:
        check_run_folder(job.experiment, job.out)
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_jobs(
    jobs: Sequence[Job],
    *,
    datasets: Callable[[DataConfig], Dataset] | None = None,
    device: torch.device,
    concurrency: int = 1,
    mps: bool = False,
    progress: bool = True,
    desc: str = "train",
    on_done: Callable[[Outcome], None] | None = None,
    stop: threading.Event | None = None,
) -> list[Outcome]:
    """Train ``jobs`` (finished ones are read back, not trained again); outcomes in job order.

    ``datasets`` gives the dataset of a ``DataConfig`` in this process (a cached loader; the
    default decodes from the data cache). ``on_done`` is called in this process as each job
    ends, in the order they end. Once ``stop`` is set (by a signal handler that raises
    nothing itself), training stops at the next step with KeyboardInterrupt.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, but got {concurrency}")
    load = datasets or DatasetCache()
    outcomes: dict[int, Outcome] = {}
    todo: list[int] = []
    for i, job in enumerate(jobs):
        metrics = finished_metrics(job)
        if metrics is not None:
            outcomes[i] = Outcome(job, metrics)
        else:
            todo.append(i)
    total = sum(jobs[i].experiment.train.epochs for i in todo)
    bar = tqdm(
        total=total,
        desc=desc,
        unit="epoch",
        disable=not progress or not todo,
        dynamic_ncols=True,
    )
    view = _Progress(bar, jobs, todo)

    def finish(i: int, outcome: Outcome) -> None:
        outcomes[i] = outcome
        view.done(i, outcome)
        if on_done is not None:
            on_done(outcome)

    for i in sorted(outcomes):  # finished in an earlier run
        if on_done is not None:
            on_done(outcomes[i])
    try:
        if concurrency == 1 or len(todo) <= 1:
            for i in todo:
                job, data = jobs[i], load(jobs[i].experiment.data)
                finish(i, _train(job, data, device, view.epoch(i), stop))
        else:
            costs = {i: job_cost(jobs[i], load(jobs[i].experiment.data)) for i in todo}
            order = sorted(todo, key=lambda i: -costs[i])
            with mps_daemon(enabled=mps and device.type == "cuda"):
                _run_pool(jobs, order, device, concurrency, view, finish, stop)
    finally:
        bar.close()
    return [outcomes[i] for i in range(len(jobs))]


def _train(
    job: Job,
    dataset: Dataset,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None],
    stop: threading.Event | None = None,
) -> Outcome:
    try:
        metrics = run_experiment(
            job.experiment,
            dataset,
            job.out,
            device=device,
            extra=job.extra,
            on_epoch=on_epoch,
            stop=stop,
        )
    except TrainingDiverged as exc:
        return Outcome(job, error=f"diverged: {exc}")
    except torch.cuda.OutOfMemoryError as exc:  # too many trainings on one GPU, say
        first = (str(exc).strip().splitlines() or ["out of memory"])[0][:200]
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return Outcome(job, error=f"CUDA out of memory: {first}")
    return Outcome(job, metrics)


class DatasetCache:
    """Datasets by their ``DataConfig``, each decoded (from the data cache) and split once."""

    def __init__(self, preloaded: dict[DataConfig, Dataset] | None = None) -> None:
        self._loaded: dict[DataConfig, Dataset] = dict(preloaded or {})

    def __call__(self, config: DataConfig) -> Dataset:
        if config not in self._loaded:
            decoded = decode(config.source, image_size=config.image_size)
            self._loaded[config] = split(
                decoded, val_size=config.val_size, subset=config.subset, seed=config.split_seed
            )
        return self._loaded[config]


class _Progress:
    """One bar over every epoch of the jobs to train, and a line as each job ends."""

    def __init__(self, bar: tqdm, jobs: Sequence[Job], todo: list[int]) -> None:
        self.bar, self.jobs = bar, jobs
        self.epochs = dict.fromkeys(todo, 0)
        self.running: set[int] = set()
        self.finished: set[int] = set()
        self.lock = threading.Lock()

    def epoch(self, i: int) -> Callable[[EpochStats], None]:
        def on_epoch(stats: EpochStats) -> None:
            self.seen(i, stats.epoch)

        return on_epoch

    def seen(self, i: int, epoch: int) -> None:
        with self.lock:
            if i in self.finished:  # an epoch event that arrived after its job's end
                return
            self.running.add(i)
            self.epochs[i] = epoch
            self.bar.n = sum(self.epochs.values())
            self.bar.set_postfix(running=len(self.running), refresh=False)
            self.bar.refresh()

    def done(self, i: int, outcome: Outcome) -> None:
        with self.lock:
            self.running.discard(i)
            self.finished.add(i)
            if i in self.epochs:
                self.epochs[i] = self.jobs[i].experiment.train.epochs
                self.bar.n = sum(self.epochs.values())
                self.bar.refresh()
        m = outcome.metrics
        if m is None:
            line = f"{outcome.job.name}: {outcome.error}"
        else:
            acc = m.get("val_acc", m.get("test_acc"))
            split_name = "val" if "val_acc" in m else "test"
            line = (
                f"{outcome.job.name}: {split_name} {acc:.4f}, {m['epochs']} epochs in "
                f"{m['train_minutes']:.1f} min"
            )
        if self.bar.disable:
            print(line, flush=True)
        else:
            tqdm.write(line)


# -- worker processes ---------------------------------------------------------------------------


def _run_pool(
    jobs: Sequence[Job],
    order: list[int],
    device: torch.device,
    concurrency: int,
    view: _Progress,
    finish: Callable[[int, Outcome], None],
    stop: threading.Event | None,
) -> None:
    context = mp.get_context("spawn")
    events = context.Queue()
    counter = context.Value("i", 0)
    gpus = _visible_gpus() if device.type == "cuda" else []
    if gpus and device.index is not None:  # cuda:N: the jobs share that one GPU
        gpus = [gpus[device.index]]
    workers = min(concurrency * max(1, len(gpus)), len(order))
    threads = max(1, (os.cpu_count() or 1) // workers)
    executor = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(events, counter, gpus, threads),
    )
    read_done = threading.Event()
    reader = threading.Thread(target=_read_events, args=(events, view, read_done), daemon=True)
    reader.start()
    pending: dict[Future, int] = {}
    try:
        worker_device = "cuda" if gpus else str(device)
        for i in order:
            pending[executor.submit(_work, i, jobs[i], worker_device)] = i
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            if stop is not None and stop.is_set():
                raise KeyboardInterrupt
            for future in done:
                i = pending.pop(future)
                finish(i, future.result())
    except BaseException:
        # Ctrl-C, a bug or a worker killed: stop every worker now; finished epochs are in the
        # run folders' checkpoints.
        for process in list(getattr(executor, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    else:
        executor.shutdown(wait=True)
    finally:
        read_done.set()
        reader.join(timeout=5)


def _read_events(events: Any, view: _Progress, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            i, epoch = events.get(timeout=0.2)
        except queue.Empty:
            continue
        except (EOFError, OSError):
            return
        view.seen(i, epoch)


_WORKER: dict[str, Any] = {}


def _init_worker(events: Any, counter: Any, gpus: list[str], threads: int) -> None:
    """In each worker: its GPU (round robin), its share of the cores, no Ctrl-C of its own (the
    parent stops it), and its end when the parent dies (Linux)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    torch.set_num_threads(threads)
    _WORKER.update(events=events, datasets=DatasetCache())
    from search.config import configure_torch

    if gpus:
        configure_torch(torch.device("cuda"))


def _work(i: int, job: Job, device: str) -> Outcome:
    events = _WORKER["events"]

    def on_epoch(stats: EpochStats) -> None:
        events.put((i, stats.epoch))

    return _train(job, _WORKER["datasets"](job.experiment.data), torch.device(device), on_epoch)


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v.strip() for v in visible.split(",") if v.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


# -- CUDA MPS -----------------------------------------------------------------------------------


def mps_available() -> bool:
    """Whether this machine has NVIDIA's MPS control program."""
    return shutil.which("nvidia-cuda-mps-control") is not None


@contextlib.contextmanager
def mps_daemon(*, enabled: bool) -> Iterator[str]:
    """Run the CUDA Multi-Process Service while the block runs; yields what was done, in words.

    Started only when ``enabled``, the control program exists and no daemon already answers
    (a machine's own MPS is used as it is, never stopped). The daemon's pipe and log folders are
    private to this run (environment variables that the worker processes inherit), and it is
    told to quit afterwards, whatever happened.
    """
    if not enabled:
        yield "off"
        return
    if not mps_available():
        print("mps: nvidia-cuda-mps-control not found; jobs share the GPU by time-slicing")
        yield "unavailable"
        return
    if _mps_answers():  # this machine's own daemon (its pipe folder, or the default one)
        yield "already running"
        return
    if torch.cuda.is_initialized():
        print(
            "mps: this process already holds a CUDA context, which stays outside MPS; the "
            "trainings it starts now run under it"
        )
    folder = Path(tempfile.mkdtemp(prefix="nas-mps-"))
    saved = {k: os.environ.get(k) for k in ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")}
    os.environ["CUDA_MPS_PIPE_DIRECTORY"] = str(folder / "pipe")
    os.environ["CUDA_MPS_LOG_DIRECTORY"] = str(folder / "log")
    (folder / "pipe").mkdir()
    (folder / "log").mkdir()
    started = subprocess.run(
        ["nvidia-cuda-mps-control", "-d"], capture_output=True, text=True, timeout=30
    )
    if started.returncode != 0:
        print(f"mps: could not start ({started.stderr.strip()[:200]}); time-slicing instead")
        _restore(saved)
        shutil.rmtree(folder, ignore_errors=True)
        yield "failed to start"
        return
    try:
        yield "started"
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                ["nvidia-cuda-mps-control"], input="quit\n", text=True, timeout=30, check=False
            )
        time.sleep(0.5)
        _restore(saved)
        shutil.rmtree(folder, ignore_errors=True)


def _mps_answers() -> bool:
    pipe = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    if not Path(pipe).exists():
        return False
    with contextlib.suppress(Exception):
        done = subprocess.run(
            ["nvidia-cuda-mps-control"],
            input="get_server_list\n",
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.returncode == 0
    return False


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


__all__ = [
    "DatasetCache",
    "Job",
    "Outcome",
    "check_jobs",
    "job_cost",
    "mps_available",
    "mps_daemon",
    "run_jobs",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("search.jobs is a library; see search.campaign, search.race and search.fidelity")
