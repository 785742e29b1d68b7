"""Periodic background jobs inside ``serve`` (study stability now, SLA timers later).

Jobs must be safe to run in several processes at once: each one claims its
work with conditional updates, so the scheduler itself needs no leader.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    interval: float
    run: Callable[[], object]


class Scheduler:
    """Runs each job every ``interval`` seconds on one daemon thread."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, interval: float, run: Callable[[], object]) -> None:
        self.jobs.append(Job(name, interval, run))

    def run_once(self) -> None:
        """Run every job now (tests and the CLI use this)."""
        for job in self.jobs:
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            job.run()
        except Exception:
            log.exception("scheduled job %s failed", job.name)

    def _loop(self) -> None:
        import time

        next_due = {job.name: 0.0 for job in self.jobs}
        while not self._stop.is_set():
            now = time.monotonic()
            for job in self.jobs:
                if now >= next_due[job.name]:
                    self._run(job)
                    next_due[job.name] = time.monotonic() + job.interval
            wait = min((d - time.monotonic() for d in next_due.values()), default=1.0)
            self._stop.wait(max(0.05, min(wait, 1.0)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="readingroom-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
