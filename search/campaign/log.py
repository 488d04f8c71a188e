"""Wall time of every session and stage of a long run (a campaign, a fidelity measurement), kept
in a JSON file beside its work, so that a run made in several sessions reports its whole time."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search import provenance
from space._io import write_json_atomic


@dataclass
class Log:
    """Wall time of every session and stage of a campaign, kept in ``<work>/log.json`` so that a
    campaign run in several sessions reports its whole time.

    A running stage is written down every ``heartbeat`` seconds (as the session's ``running``
    entry), so a session killed outright (SIGKILL, a machine taken back) still counts up to its
    last beat: its time goes into the totals and the session is reported as cut short.
    """

    path: Path
    sessions: list[dict[str, Any]]
    machine: str = ""  # of this session: CPU, cores, memory, GPU
    heartbeat: float = 30.0  # seconds between writes of a running stage (a few ms each)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, path: Path) -> Log:
        try:
            sessions = json.loads(path.read_text())["sessions"]
        except (OSError, ValueError, KeyError, TypeError):
            sessions = []
        return cls(path, sessions)

    def start(self) -> None:
        self.sessions.append(
            {
                "started": provenance.now(),
                "host": provenance.host(),
                "command": provenance.command_line(),
                "machine": self.machine,
                "versions": provenance.versions(),
                "seconds": 0.0,
                "stages": [],
            }
        )
        self._t0 = time.time()
        self.save()

    @contextlib.contextmanager
    def running(self, stage: str, budget: str) -> Iterator[None]:
        """Beat while ``stage`` runs: the session's ``running`` entry and seconds, on disk."""
        session = self.sessions[-1]
        started = time.time()
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.heartbeat):
                now = time.time()
                with self._lock:
                    session["running"] = {
                        "stage": stage,
                        "budget": budget,
                        "seconds": round(now - started, 1),
                    }
                    session["seconds"] = round(now - self._t0, 1)
                with contextlib.suppress(OSError):  # a full disk: the next beat tries again
                    self.save()

        thread = threading.Thread(target=beat, name="campaign-log", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def stage(
        self, stage: str, budget: str, seconds: float, code: int, settings: str | None = None
    ) -> None:
        with self._lock:
            session = self.sessions[-1]
            session.pop("running", None)
            session["stages"].append(
                {
                    "stage": stage,
                    "budget": budget,
                    "seconds": round(seconds, 1),
                    "exit": code,
                    **({"settings": settings} if settings else {}),
                }
            )
            session["seconds"] = round(time.time() - self._t0, 1)
        self.save()

    def save(self) -> None:
        with self._lock:
            write_json_atomic(self.path, {"sessions": self.sessions})

    def cut_short(self) -> int:
        """Sessions killed in the middle of a stage (counted up to their last beat)."""
        return sum("running" in s for s in self.sessions)

    def finished(self, stage: str, budget: str, settings: str) -> bool:
        """Whether an earlier session ran ``stage`` of ``budget`` to the end with ``settings``."""
        return any(
            (x["stage"], x["budget"], x["exit"], x.get("settings")) == (stage, budget, 0, settings)
            for s in self.sessions
            for x in s["stages"]
        )

    def seconds(self, stage: str | None = None) -> float:
        if stage is None:
            return sum(s["seconds"] for s in self.sessions)
        done = sum(x["seconds"] for s in self.sessions for x in s["stages"] if x["stage"] == stage)
        killed = sum(
            s["running"]["seconds"]
            for s in self.sessions
            if s.get("running", {}).get("stage") == stage
        )
        return done + killed
