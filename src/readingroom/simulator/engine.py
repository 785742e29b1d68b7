"""The discrete-event run: studies arrive, policies decide, readers read (SimPy).

Time is in minutes from the start of the warm-up day. Each reader is a SimPy
process that, while on shift, asks the policy for its next study, reads it
(transfer, then the base read time scaled by the reader's speed and the
workload's effects) and asks again; an idle reader sleeps until a study
arrives or is re-queued, or its shift ends. Policies (``policies.py``) own the
queues; the engine owns time, readers and the records. The process-wide clock
(``readingroom.clock``) follows simulated time, so code that asks "now" sees
the simulated instant.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import simpy

from readingroom.clock import FrozenClock, get_clock, set_clock
from readingroom.simulator.arrivals import Draws, Study
from readingroom.simulator.network import licensed
from readingroom.simulator.records import CASE_COLUMNS, PRIORITIES, READER_COLUMNS, RunRecords, columns
from readingroom.simulator.workload import Reader, Workload

if TYPE_CHECKING:
    from readingroom.simulator.policies import Policy

QUEUE_STEP = 15.0
RANK = {p: i + 1 for i, p in enumerate(PRIORITIES)}


@dataclass(eq=False)
class Item:
    """A study in flight: where it is queued, how it was routed, and what happened to it."""

    study: Study
    rank: int
    deadline: float
    flags: frozenset[str] = frozenset()
    assigned_to: str | None = None
    eligible: frozenset[str] = frozenset()
    pool_widened: bool = False
    started: float | None = None
    reader: str = ""
    transfer: float = 0.0
    read: float = 0.0
    finished: float | None = None
    reroutes: int = 0
    routings: int = 0
    escalations: int = 0
    escalation_step: int = 0
    overflowed: bool = False
    explained: bool = True
    deviated: bool = False
    plan: tuple[Any, ...] = ()

    @property
    def waiting(self) -> bool:
        return self.started is None

    def sort_key(self) -> tuple[int, float, float]:
        return self.rank, self.deadline, self.study.ready


@dataclass(eq=False)
class ReaderState:
    """A reader during the run: their roster, speed, what they hold and what they have done."""

    spec: Reader
    speed: float
    tz: ZoneInfo
    personal: list[Item] = field(default_factory=list)
    current: Item | None = None
    idle_since: float | None = 0.0
    wake: simpy.Event | None = None
    sites_read: Counter[str] = field(default_factory=Counter)
    busy: float = 0.0
    reads: int = 0

    @property
    def id(self) -> str:
        return self.spec.id

    def on_shift(self, minute: float, sim_start_hour: float = 0.0) -> bool:
        start, end = self.spec.shift
        hour = ((minute / 60.0) + sim_start_hour) % 24
        return (start <= hour < end) if start < end else (hour >= start or hour < end)

    def shift_end(self, minute: float) -> float:
        """Minutes from ``minute`` (on shift) to the end of this shift."""
        _, end = self.spec.shift
        hour = (minute / 60.0) % 24
        return ((end - hour) % 24 or 24) * 60.0

    def next_start(self, minute: float) -> float:
        """Minutes from ``minute`` (off shift) to the next shift start."""
        start, _ = self.spec.shift
        hour = (minute / 60.0) % 24
        return ((start - hour) % 24 or 24) * 60.0


class Simulation:
    """One policy on one replication's draws."""

    def __init__(self, workload: Workload, draws: Draws, policy: Policy, replication: int, seed: int = 0) -> None:
        self.workload = workload
        self.seed = seed
        self.draws = draws
        self.policy = policy
        self.replication = replication
        self.env = simpy.Environment()
        self.sim_start = draws.sim_start
        if self.sim_start.hour or self.sim_start.minute:
            raise ValueError("the simulation starts at 00:00 UTC (shifts are given in UTC hours)")
        self.readers: dict[str, ReaderState] = {
            r.id: ReaderState(r, draws.speed[r.id], ZoneInfo(r.tz or workload.sites.get(r.home, _utc_site).tz))
            for r in workload.readers}
        self.items: list[Item] = []
        self.unread: set[Item] = set()  # ready and not yet started: what the queue-depth samples count
        self.queue_samples: list[dict[str, Any]] = []
        self.backlog_0700: list[int] = []
        self.clock = FrozenClock(self.sim_start)
        policy.bind(self)

    # --- time ---------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return float(self.env.now)

    def instant(self, minute: float) -> datetime:
        return self.sim_start + timedelta(minutes=minute)

    def at(self, minute: float, action: Callable[[], None]) -> None:
        """Run ``action`` at simulated ``minute`` (now if that has passed)."""
        self.env.process(self._later(max(0.0, minute - self.now), action))

    def _later(self, delay: float, action: Callable[[], None]) -> Iterator[simpy.Event]:
        yield self.env.timeout(delay)
        self.clock.set(self.instant(self.now))
        action()

    # --- readers ------------------------------------------------------------------------------------
    def wake_idle(self, only: str | None = None) -> None:
        """Tell idle readers there is work (``only``: just that reader)."""
        for state in ([self.readers[only]] if only else self.readers.values()):
            if state.wake is not None and not state.wake.triggered:
                state.wake.succeed()

    def read_minutes(self, state: ReaderState, item: Item) -> float:
        """The reader's time for this study: base read x speed x the workload's effects, then interruptions."""
        s, fx = item.study, self.workload.effects
        minutes = s.base_read * state.speed
        if s.exam.tag not in state.spec.sub and s.exam.tag != "general":
            minutes *= fx.mismatch
        if s.site != state.spec.home and state.sites_read[s.site] < fx.familiarity_reads and self.policy.familiarity:
            minutes *= fx.familiarity
        if 2 <= self.instant(self.now).astimezone(state.tz).hour < 7:
            minutes *= fx.night_fatigue
        if s.peds and "peds" not in state.spec.sub:
            minutes *= fx.peds_nonpeds
        if item.deviated:
            minutes *= fx.discretion
        minutes += s.call_time
        productive = fx.productive_remote if state.spec.remote else fx.productive_onsite
        return minutes / productive

    def transfer_minutes(self, state: ReaderState, study: Study) -> float:
        if not self.policy.transfers:
            return 0.0
        if state.spec.remote:
            return self.workload.transfer.get("remote", 0.0)
        key = "same_site" if state.spec.home == study.site else "cross_site"
        return self.workload.transfer.get(key, 0.0)

    def _reader(self, state: ReaderState) -> Iterator[simpy.Event]:
        env = self.env
        while True:
            if not state.on_shift(self.now):
                state.idle_since = None
                yield env.timeout(state.next_start(self.now))
                state.idle_since = self.now
                self.policy.shift_started(state)
                continue
            self.clock.set(self.instant(self.now))
            item = self.policy.pick(state)
            if item is None:
                state.wake = env.event()
                yield state.wake | env.timeout(state.shift_end(self.now))
                state.wake = None
                continue
            yield from self._read(state, item)

    def _read(self, state: ReaderState, item: Item) -> Iterator[simpy.Event]:
        item.started, item.reader = self.now, state.id
        self.unread.discard(item)
        state.current, state.idle_since = item, None
        item.transfer = self.transfer_minutes(state, item.study)
        item.read = self.read_minutes(state, item)
        yield self.env.timeout(item.transfer + item.read)
        item.finished = self.now
        state.sites_read[item.study.site] += 1
        state.current = None
        state.reads += 1
        state.busy += self._measured(item.started, item.finished)
        if not state.personal:
            state.idle_since = self.now
        self.policy.finished(state, item)

    def _measured(self, start: float, end: float) -> float:
        return max(0.0, min(end, self.draws.horizon) - max(start, self.draws.measured_from))

    # --- arrivals and sampling ----------------------------------------------------------------------
    def _arrivals(self) -> Iterator[simpy.Event]:
        sla = self.workload.sla
        for study in self.draws.studies:
            if study.ready > self.now:
                yield self.env.timeout(study.ready - self.now)
            self.clock.set(self.instant(self.now))
            item = Item(study, RANK[study.priority], study.ready + sla[study.priority])
            self.items.append(item)
            self.unread.add(item)
            self.policy.arrive(item)
            if study.ai_flag and self.policy.uses_ai:
                self.at(study.ready + self.workload.ai_latency, lambda item=item: self._ai_result(item))

    def _ai_result(self, item: Item) -> None:
        item.flags = frozenset({item.study.ai_flag})
        if item.waiting:
            self.policy.ai_result(item)

    def _sampler(self) -> Iterator[simpy.Event]:
        sevens = {code: 7 for code in self.workload.sites}
        while self.now < self.draws.horizon:
            waiting = Counter(i.study.priority for i in self.unread)
            self.queue_samples.append({"time": self.now, "utc_hour": int(self.now // 60) % 24,
                                       **{p: waiting.get(p, 0) for p in PRIORITIES}})
            if self.now >= self.draws.measured_from:
                moment = self.instant(self.now)
                for code, site in self.workload.sites.items():
                    local = moment.astimezone(ZoneInfo(site.tz))
                    if local.hour == sevens[code] and local.minute < QUEUE_STEP:
                        self.backlog_0700.append(sum(1 for i in self.unread if i.study.site == code
                                                     and i.study.priority in ("P3", "P4")))
            yield self.env.timeout(QUEUE_STEP)

    # --- run ----------------------------------------------------------------------------------------
    def run(self) -> RunRecords:
        previous = set_clock(self.clock)
        try:
            self.env.process(self._arrivals())
            self.env.process(self._sampler())
            for state in self.readers.values():
                self.env.process(self._reader(state))
            self.policy.start()
            self.env.run(until=self.draws.horizon)
        finally:
            set_clock(previous if previous is not self.clock else get_clock())
        return self.records()

    def records(self) -> RunRecords:
        """The run's columns, over the measured period (studies ready after the warm-up)."""
        horizon = self.draws.horizon
        rows = [self._case_row(item, horizon) for item in self.items if item.study.measured]
        span = horizon - self.draws.measured_from
        reader_rows = [{"reader": s.id, "home": s.spec.home, "on_shift": self._shift_minutes(s.spec, span),
                        "busy": s.busy, "reads": s.reads} for s in self.readers.values()]
        decisions = sum(i.routings for i in self.items if i.study.measured)
        cases = columns(rows, CASE_COLUMNS)
        counters = {
            "decisions": float(decisions),
            "explained": float(sum(i.routings for i in self.items if i.study.measured and i.explained)),
            "reroutes": float(cases["reroutes"].sum()) if rows else 0.0,
            "escalations": float(cases["escalations"].sum()) if rows else 0.0,
            "overflows": float(cases["overflowed"].sum()) if rows else 0.0,
            "violations": float(cases["violation"].sum()) if rows else 0.0,
            "backlog_0700": float(np.mean(self.backlog_0700)) if self.backlog_0700 else 0.0,
            "measured_from": self.draws.measured_from, "measured_to": horizon,
        }
        queue = columns([q for q in self.queue_samples if q["time"] >= self.draws.measured_from],
                        {"time": "", "utc_hour": "", **{p: "" for p in PRIORITIES}})
        return RunRecords(self.policy.name, self.replication, cases, columns(reader_rows, READER_COLUMNS), queue,
                          counters)

    @staticmethod
    def _shift_minutes(reader: Reader, span: float) -> float:
        start, end = reader.shift
        hours = (end - start) % 24 or 24
        return hours * 60.0 * span / 1440.0

    def _case_row(self, item: Item, horizon: float) -> dict[str, Any]:
        s = item.study
        sla = self.workload.sla[s.priority]
        # P1/P2: the first actionable report ends the clock; P3/P4: the final, which a consult holds back.
        consult = s.consult if s.priority in ("P3", "P4") else 0.0
        end = None if item.finished is None else item.finished + consult
        done = end is not None and end <= horizon
        reader = self.readers.get(item.reader)
        remote = reader is not None and (reader.spec.remote or reader.spec.home != s.site)
        violation = (reader is not None and self.policy.audited and not licensed(self.workload, reader.spec, s.site))
        started = item.started if item.started is not None else horizon
        return {
            "study": s.id, "priority": s.priority, "modality": s.modality, "exam": s.exam.name,
            "subspecialty": s.exam.tag, "site": s.site, "patient_class": s.patient_class,
            "local_hour": s.local_hour, "ready": s.ready, "done": done,
            "tat": (end if done else horizon) - s.ready,  # type: ignore[operator]
            "transfer": item.transfer, "wait": max(0.0, started - s.ready), "read": item.read, "consult": consult,
            "sla": sla, "ai": s.ai, "reader": item.reader,
            "subspecialty_match": reader is not None and (s.exam.tag in reader.spec.sub or s.exam.tag == "general"),
            "remote": remote, "reroutes": item.reroutes, "escalations": item.escalations,
            "overflowed": item.overflowed, "violation": violation, "explained": item.explained,
        }


class _UtcSite:
    tz = "UTC"


_utc_site: Any = _UtcSite()
