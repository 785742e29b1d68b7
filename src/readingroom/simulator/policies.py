"""The collaboration models compared by the simulator (``../shared/workload/README.md``).

* **B0** site-local: a queue per site, strict priority then FIFO, readers read their home site; at night
  (22:00-07:00 site-local) the site's night-contract readers also read its P1/P2. ``B0-fifo``: no priority.
* **B1** one shared pick-list, readers choose: P1 and P2 waiting over 10 minutes first, otherwise with
  probability q the best work-units-per-minute study among the top 20 (cherry-picking), else the top.
* **B2 / B3** ReadingRoom routing-rules documents run by the production router
  (:func:`readingroom.workflow.routing.route`): push with late binding (``max_assigned_per_reader``),
  hub-and-spoke overflow, follow-the-sun through shifts and licences; B3 adds the AI-flag raise, the SLA
  escalation ladder and aging caps. Any rules file can be a policy the same way.
* **B4** the ideal pool: everyone reads everything, no transfer, no familiarity penalty. A bound, not a policy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from readingroom.simulator.engine import Item, ReaderState
from readingroom.simulator.network import case_facts, hard_ok, reader_facts, site_facts
from readingroom.workflow.compiled import CompiledRules, compile_rules
from readingroom.workflow.enums import EscalationAction, Mode, Reason
from readingroom.workflow.facts import ReaderLoad
from readingroom.workflow.routing import route
from readingroom.workflow.rules import RulesDocument, parse_text, validate_rules

if TYPE_CHECKING:
    from readingroom.simulator.engine import Simulation

BUILTIN = ("B0", "B0-fifo", "B1", "B2", "B3", "B4")
#: Exclusions that only say "busy right now": a reader held back by them may still take the study later.
_LOAD_ONLY = frozenset({Reason.OVER_CAPACITY})


class Policy:
    """Owns the queues; the engine asks it what a free reader reads next."""

    name = "policy"
    uses_ai = False  # studies carry AI flags into routing
    transfers = True  # cross-site and remote reads pay the transfer latency
    familiarity = True  # unfamiliar sites slow the first reads there
    audited = True  # reads are checked for licence and privilege (not for the B4 bound)

    def bind(self, sim: Simulation) -> None:
        self.sim = sim
        self.workload = sim.workload
        self.waiting: list[Item] = []

    def start(self) -> None:
        """Called once before the run (schedule periodic work here)."""

    def arrive(self, item: Item) -> None:
        item.routings += 1
        self.waiting.append(item)
        self.sim.wake_idle()

    def pick(self, reader: ReaderState) -> Item | None:
        raise NotImplementedError

    def take(self, item: Item) -> Item:
        self.waiting.remove(item)
        return item

    def finished(self, reader: ReaderState, item: Item) -> None:
        """A read ended (push policies refill here)."""

    def shift_started(self, reader: ReaderState) -> None:
        """A reader came on shift."""

    def ai_result(self, item: Item) -> None:
        """An AI result arrived for a waiting study."""

    def allowed(self, reader: ReaderState, item: Item) -> bool:
        s = item.study
        return hard_ok(self.workload, reader.spec, s.site, s.exam, s.priority)


class SiteLocal(Policy):
    """B0: every site reads its own work; overnight only its night-contract readers help with P1/P2."""

    def __init__(self, fifo: bool = False) -> None:
        self.fifo = fifo
        self.name = "B0-fifo" if fifo else "B0"

    def _night(self, site: str) -> bool:
        from zoneinfo import ZoneInfo

        hour = self.sim.instant(self.sim.now).astimezone(ZoneInfo(self.workload.sites[site].tz)).hour
        return hour >= 22 or hour < 7

    def pick(self, reader: ReaderState) -> Item | None:
        contracts = [site for site, names in self.workload.night_contracts.items() if reader.id in names]
        best: Item | None = None
        for item in self.waiting:
            s = item.study
            if s.site == reader.spec.home:
                ok = True
            elif s.site in contracts and s.priority in ("P1", "P2") and self._night(s.site):
                ok = True
            else:
                continue
            if ok and self.allowed(reader, item) and (
                    best is None or (item.study.ready if self.fifo else item.sort_key()) <
                    (best.study.ready if self.fifo else best.sort_key())):
                best = item
        return self.take(best) if best is not None else None


class SharedList(Policy):
    """B1: one pick-list; readers self-select, and some cherry-pick the best work units per minute."""

    name = "B1"

    def __init__(self, q: float = 0.3, top: int = 20, stat_after: float = 10.0) -> None:
        self.q, self.top, self.stat_after = q, top, stat_after

    def bind(self, sim: Simulation) -> None:
        super().bind(sim)
        from readingroom.simulator.arrivals import streams

        self.rng: np.random.Generator = streams(sim.seed, sim.replication)[2]

    def pick(self, reader: ReaderState) -> Item | None:
        now = self.sim.now
        mine = sorted((i for i in self.waiting if self.allowed(reader, i)), key=Item.sort_key)
        if not mine:
            return None
        urgent = [i for i in mine if i.study.priority == "P1" or (
            i.study.priority == "P2" and now - i.study.ready > self.stat_after)]
        if urgent:
            return self.take(urgent[0])
        if self.rng.random() < self.q:
            head = mine[: self.top]
            best = max(head, key=lambda i: i.study.exam.wrvu / max(i.study.exam.mean, 0.1))
            best.deviated = best is not mine[0]
            return self.take(best)
        return self.take(mine[0])


class IdealPool(Policy):
    """B4: every reader on shift is eligible for everything; strict priority, no handoff delay."""

    name = "B4"
    transfers = False
    familiarity = False
    audited = False

    def pick(self, reader: ReaderState) -> Item | None:
        if not self.waiting:
            return None
        return self.take(min(self.waiting, key=Item.sort_key))


class RulesPolicy(Policy):
    """Routing by a ReadingRoom rules document through the production router, as the server routes."""

    uses_ai = True

    def __init__(self, name: str, document: RulesDocument) -> None:
        self.name = name
        self.document = document
        self.rules: CompiledRules = compile_rules(document)

    def bind(self, sim: Simulation) -> None:
        super().bind(sim)
        self.sites = site_facts(self.workload)
        self.reader_facts = reader_facts(self.workload)
        self._load_version = 0
        self._load_key: tuple[float, int] | None = None
        self._load_cache: dict[str, ReaderLoad] = {}

    # --- routing ------------------------------------------------------------------------------------
    def _loads(self) -> dict[str, ReaderLoad]:
        """Each reader's live load, rebuilt at most once per simulated instant (loads change only on events)."""
        key = (self.sim.now, self._load_version)
        if self._load_key == key:
            return self._load_cache
        out = {}
        for state in self.sim.readers.values():
            held = state.personal + ([state.current] if state.current is not None else [])
            idle = None if state.idle_since is None else self.sim.instant(state.idle_since)
            out[state.id] = ReaderLoad(sum(i.study.exam.wrvu for i in held), len(held), idle)
        self._load_key, self._load_cache = key, out
        return out

    def _route(self, item: Item) -> None:
        s, sim = item.study, self.sim
        facts = case_facts(s.id, s.site, s.patient_class, s.exam, s.priority, sim.instant(s.ready), s.peds,
                           item.flags, item.pool_widened)
        decision = route(facts, self.reader_facts, self.sites, self.rules, sim.instant(sim.now), self._loads())
        item.routings += 1
        item.explained = item.explained and bool(decision.explanation)
        item.rank = min(decision.sort_priority.rank, item.rank) if item.escalation_step else \
            decision.sort_priority.rank
        item.deadline = (decision.sla_deadline - sim.sim_start).total_seconds() / 60
        item.overflowed = item.overflowed or decision.overflowed
        later = {name for name, reasons in decision.excluded.items()
                 if all(r.code in _LOAD_ONLY for r in reasons)}
        item.eligible = frozenset(decision.eligible) | frozenset(later)
        if not item.plan:
            aging = self.rules.aging.get(decision.priority)
            if aging is not None:
                self.sim.at(s.ready + aging.after_minutes, lambda item=item: self._aged(item))
            item.plan = decision.escalation
            for step, point in enumerate(decision.escalation):
                minute = (point.at - sim.sim_start).total_seconds() / 60
                sim.at(minute, lambda item=item, step=step: self._escalate(item, step))
        # Late binding: a pushed study waits with its reader only if they can start it now; otherwise it
        # stays unassigned and goes to the first eligible reader who frees up (the personal cap still holds).
        reader = self.sim.readers.get(decision.assignee or "")
        if decision.mode is Mode.PUSH and reader is not None and reader.current is None and not reader.personal:
            self._assign(item, reader.id)
        else:
            self.sim.wake_idle()

    def _assign(self, item: Item, username: str) -> None:
        if item in self.waiting:
            self.waiting.remove(item)
        item.assigned_to = username
        self._load_version += 1
        self.sim.readers[username].personal.append(item)
        self.sim.wake_idle(username)

    def _unassign(self, item: Item) -> None:
        if item.assigned_to is not None:
            self.sim.readers[item.assigned_to].personal.remove(item)
            item.assigned_to = None
            self.waiting.append(item)

    def arrive(self, item: Item) -> None:
        self.waiting.append(item)
        self._route(item)

    def reroute(self, item: Item) -> None:
        if not item.waiting:
            return
        self._unassign(item)
        item.reroutes += 1
        self._route(item)

    def start(self) -> None:
        self.sim.env.process(self._refresh())

    def _refresh(self) -> Any:
        """Re-route unassigned studies when time changes their facts (overflow waits, shifts, aging).

        Every 5 minutes for studies in their first hour that have not overflowed (the pool widens after
        a rule's ``after_minutes``); at every hour on which some reader's shift begins, all of them (new
        eligible readers); aging is scheduled per study at its threshold (``_route``). Routing every study
        every minute would reach the same decisions at many times the cost.
        """
        env, step = self.sim.env, 5.0
        starts = {int(r.shift[0]) % 24 for r in self.workload.readers}
        while True:
            yield env.timeout(step)
            self.sim.clock.set(self.sim.instant(self.sim.now))
            minute = self.sim.now % 1440
            shift_change = minute % 60 < step / 2 and int(minute // 60) in starts
            for item in list(self.waiting):
                if item.waiting and item.assigned_to is None and (shift_change or (
                        not item.overflowed and self.sim.now - item.study.ready < 60)):
                    self._route(item)

    def ai_result(self, item: Item) -> None:
        self.reroute(item)

    def _aged(self, item: Item) -> None:
        if item.waiting and item.assigned_to is None:
            self._route(item)

    def _escalate(self, item: Item, step: int) -> None:
        """The SLA scheduler's ladder (``workflow.jobs``), step by step, for a study still unread."""
        if not item.waiting or step != item.escalation_step:
            return
        item.escalation_step = step + 1
        item.escalations += 1
        action = item.plan[step].action
        if action is EscalationAction.RAISE_SORT_KEY and item.rank > 1:
            item.rank -= 1
        elif action is EscalationAction.WIDEN_POOL:
            item.pool_widened = True
            self.reroute(item)

    # --- reading ------------------------------------------------------------------------------------
    def pick(self, reader: ReaderState) -> Item | None:
        self._load_version += 1
        if reader.personal:
            item = min(reader.personal, key=Item.sort_key)
            reader.personal.remove(item)
            item.assigned_to = None
            return item
        best = None
        for item in self.waiting:
            if item.assigned_to is None and reader.id in item.eligible and (
                    best is None or item.sort_key() < best.sort_key()):
                best = item
        return self.take(best) if best is not None else None

    def shift_started(self, reader: ReaderState) -> None:
        self._load_version += 1
        self.sim.wake_idle(reader.id)

    def finished(self, reader: ReaderState, item: Item) -> None:
        self._load_version += 1


def builtin_document(name: str) -> RulesDocument:
    """B3 (the reference network's rules) or B2 (the same without AI rules, escalation and aging)."""
    text = resources.files("readingroom.simulator").joinpath("rules/B3.yaml").read_text()
    document = validate_rules(parse_text(text))
    if name == "B3":
        return document
    data: dict[str, Any] = copy.deepcopy(document.model_dump(mode="json", exclude_none=True))
    data["name"] = f"{document.name} (B2)"
    data["rules"] = [r for r in data["rules"] if not r["id"].startswith("ai-")]
    data["defaults"]["escalation"] = []
    data["defaults"]["aging"] = []
    return validate_rules(data)


def make_policy(spec: str) -> Policy:
    """A built-in policy by id (``B0``..``B4``, ``B0-fifo``, ``B1:q=0.15``) or a rules file (``name=path.yaml``)."""
    if spec in ("B0", "B0-fifo"):
        return SiteLocal(fifo=spec == "B0-fifo")
    if spec == "B1" or spec.startswith("B1:q="):
        q = float(spec.split("=", 1)[1]) if "=" in spec else 0.3
        policy = SharedList(q=q)
        policy.name = spec
        return policy
    if spec in ("B2", "B3"):
        return RulesPolicy(spec, builtin_document(spec))
    if spec == "B4":
        return IdealPool()
    name, _, path = spec.rpartition("=")
    file = Path(path)
    if file.suffix in (".yaml", ".yml") and file.exists():
        return RulesPolicy(name or file.stem, validate_rules(parse_text(file.read_bytes())))
    raise ValueError(f"unknown policy {spec!r}: use {', '.join(BUILTIN)}, B1:q=0.15 or a rules file "
                     "(path.yaml or name=path.yaml)")


def policy_names(specs: Iterable[str]) -> list[str]:
    return [make_policy(s).name for s in specs]
