"""Where and with what a result was made: versions, host, device, time."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import sys
from importlib import metadata

import torch

import search


def versions() -> dict[str, str]:
    # From the installed metadata: importing torchvision just to read its version costs seconds.
    return {
        "budget_nas": search.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _installed("torchvision"),
        "optuna": _installed("optuna"),
    }


def _installed(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def device_name(device: torch.device) -> str:
    """'cpu (8 threads)' or the GPU's marketing name, 'NVIDIA H100 80GB HBM3' say."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def machine(device: str = "auto") -> str:
    """The machine in words, for a result's README: CPU model and cores, memory, and the GPU
    when ``device`` may use one: 'AMD EPYC 7B13, 2 cores, 23 GB; no GPU used'."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = f", {kib / 2**20:.0f} GB"
    except (OSError, StopIteration, ValueError):
        pass
    text = f"{cpu}, {os.cpu_count()} cores{memory}"
    if device != "cpu" and torch.cuda.is_available():
        return f"{text}; GPU {torch.cuda.get_device_name(0)}"
    return f"{text}; no GPU used"


def host() -> str:
    return socket.gethostname()


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    """How this process was started, with any database password replaced by ***."""
    from search.storage import redact

    words = [sys.executable.rsplit("/", 1)[-1], *sys.argv]
    return " ".join(redact(w) if "://" in w else w for w in words)
