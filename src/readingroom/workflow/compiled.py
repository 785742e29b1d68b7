"""Rules compiled for speed, and the holder of the active rules.

A routing decision must stay well under 2 ms with 100 rules and 200 readers,
and the simulator makes millions of them, so validation happens once, at
load: here each rule becomes sets, precompiled regexes and second-of-day
windows, and each combination of matched rules is merged with the defaults
once and cached. No Pydantic validation runs per decision.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from readingroom.workflow.enums import Mode, Priority, SiteKind
from readingroom.workflow.facts import CaseFacts, SiteFacts
from readingroom.workflow.rules import (
    Actions,
    AgingStep,
    EscalationStep,
    Match,
    Overflow,
    RulesDocument,
    RulesError,
    load_rules,
)


def _upper(values: Iterable[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(v.upper() for v in values)


def _lower(values: Iterable[str] | None) -> frozenset[str]:
    return frozenset(v.lower() for v in values or ())


@dataclass(frozen=True, slots=True)
class CompiledMatch:
    """A :class:`~readingroom.workflow.rules.Match` as sets, compiled regexes and second-of-day bounds."""

    modality: frozenset[str] | None
    body_part: frozenset[str] | None
    description: re.Pattern[str] | None
    procedure: frozenset[str] | None
    site: frozenset[str] | None
    site_kind: frozenset[SiteKind] | None
    priority: frozenset[Priority] | None
    patient_class: frozenset[str] | None
    age_at_least: float | None
    age_under: float | None
    order: tuple[tuple[str, re.Pattern[str]], ...]
    flags_any: frozenset[str] | None
    flags_none: frozenset[str] | None
    window: tuple[int, int] | None
    days: frozenset[int] | None

    @classmethod
    def from_model(cls, m: Match) -> CompiledMatch:
        window = None
        if m.time_of_day is not None:
            t0, t1 = m.time_of_day.start, m.time_of_day.end
            window = (t0.hour * 3600 + t0.minute * 60 + t0.second, t1.hour * 3600 + t1.minute * 60 + t1.second)
        age = m.patient_age
        return cls(
            modality=_upper(m.modality),
            body_part=_upper(m.body_part),
            description=re.compile(m.description, re.IGNORECASE) if m.description else None,
            procedure=_upper(m.procedure),
            site=frozenset(m.site) if m.site is not None else None,
            site_kind=frozenset(m.site_kind) if m.site_kind is not None else None,
            priority=frozenset(m.priority) if m.priority is not None else None,
            patient_class=_upper(m.patient_class),
            age_at_least=age.at_least if age else None,
            age_under=age.under if age else None,
            order=tuple((k, re.compile(v, re.IGNORECASE)) for k, v in (m.order or {}).items()),
            flags_any=_upper(m.flags_any),
            flags_none=_upper(m.flags_none),
            window=window,
            days=m.days,
        )

    def mismatch(self, case: CaseFacts, site: SiteFacts, priority: Priority, local: datetime) -> str | None:
        """The first condition that fails (its field name), or ``None`` when the case matches."""
        if self.modality is not None and case.modality not in self.modality:
            return "modality"
        if self.site is not None and case.site not in self.site:
            return "site"
        if self.priority is not None and priority not in self.priority:
            return "priority"
        if self.patient_class is not None and case.patient_class not in self.patient_class:
            return "patient_class"
        if self.body_part is not None and case.body_part not in self.body_part:
            return "body_part"
        if self.procedure is not None and case.procedure not in self.procedure:
            return "procedure"
        if self.site_kind is not None and site.kind not in self.site_kind:
            return "site_kind"
        if self.flags_any is not None and not (case.flags & self.flags_any):
            return "flags_any"
        if self.flags_none is not None and case.flags & self.flags_none:
            return "flags_none"
        if self.age_at_least is not None or self.age_under is not None:
            age = case.patient_age_years
            if age is None or (self.age_at_least is not None and age < self.age_at_least):
                return "patient_age"
            if self.age_under is not None and age >= self.age_under:
                return "patient_age"
        if self.days is not None and local.weekday() not in self.days:
            return "days"
        if self.window is not None:
            second = local.hour * 3600 + local.minute * 60 + local.second
            start, end = self.window
            inside = start <= second < end if start < end else (second >= start or second < end)
            if not inside:
                return "time_of_day"
        if self.description is not None and not self.description.search(case.description):
            return "description"
        for key, pattern in self.order:
            value = case.order.get(key)
            if value is None or not pattern.search(value):
                return f"order.{key}"
        return None


@dataclass(frozen=True, slots=True)
class CompiledPool:
    """A pool definition as sets; membership is the union of its selectors."""

    name: str
    readers: frozenset[str] = frozenset()
    home_sites: frozenset[str] = frozenset()
    site_kinds: frozenset[SiteKind] = frozenset()
    subspecialties: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ActionSet:
    """The effective actions for a case: defaults with every matched rule applied in order."""

    mode: Mode
    subspecialties: frozenset[str]
    prefer_subspecialties: tuple[str, ...]
    qualifications: frozenset[str]
    pools: tuple[str, ...]
    sites_allowed: frozenset[str] | None
    overflow: Overflow | None
    sla_minutes: Mapping[Priority, int]
    escalation: tuple[EscalationStep, ...]
    second_reader: bool


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One rule ready to evaluate."""

    id: str
    description: str
    match: CompiledMatch
    actions: Actions
    stop: bool


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of rule evaluation for one case."""

    rule_id: str | None
    matched: tuple[str, ...]
    actions: ActionSet
    priority: Priority
    raised_by: tuple[str, ...]
    trace: tuple[dict[str, Any], ...] | None = None


class CompiledRules:
    """A validated rules document in the form the router evaluates; immutable once built."""

    def __init__(self, document: RulesDocument) -> None:
        self.document = document
        self.version = document.version
        self.name = document.name
        d = document.defaults
        self.defaults = d
        self.rules = tuple(
            CompiledRule(r.id, r.description, CompiledMatch.from_model(r.match), r.actions, r.stop)
            for r in document.rules
        )
        self.priority_rules = tuple(
            (p.id, CompiledMatch.from_model(p.match), p.priority) for p in document.priority_rules
        )
        self.pools: Mapping[str, CompiledPool] = MappingProxyType(
            {
                name: CompiledPool(
                    name,
                    frozenset(p.readers),
                    frozenset(p.home_sites),
                    frozenset(p.site_kinds),
                    _lower(p.subspecialties),
                )
                for name, p in document.pools.items()
            }
        )
        aging: dict[Priority, AgingStep] = {}
        for step in d.aging:
            aging.setdefault(step.priority, step)
        self.aging: Mapping[Priority, AgingStep] = MappingProxyType(aging)
        self.on_call_priorities = frozenset(d.on_call_priorities)
        self.capacity_horizon_hours = d.capacity_horizon_hours
        self.max_assigned_per_reader = d.max_assigned_per_reader
        self._merged: dict[tuple[int, ...], ActionSet] = {}

    def _merge(self, indices: tuple[int, ...]) -> ActionSet:
        cached = self._merged.get(indices)
        if cached is not None:
            return cached
        d = self.defaults
        values: dict[str, Any] = {
            name: getattr(d, name)
            for name in (
                "mode",
                "subspecialty",
                "prefer_subspecialty",
                "qualifications",
                "pools",
                "sites_allowed",
                "overflow",
                "escalation",
                "second_reader",
            )
        }
        sla = dict(d.sla_minutes)
        for index in indices:
            actions = self.rules[index].actions
            for name in actions.model_fields_set:
                if name == "raise_priority":
                    continue
                value = getattr(actions, name)
                if name == "sla_minutes":
                    sla.update(value or {})
                elif name == "mode" and value is None:
                    values[name] = d.mode
                else:
                    values[name] = value
        merged = ActionSet(
            mode=values["mode"],
            subspecialties=_lower(values["subspecialty"]),
            prefer_subspecialties=tuple(dict.fromkeys(v.lower() for v in values["prefer_subspecialty"] or ())),
            qualifications=frozenset(q.upper() for q in values["qualifications"] or ()),
            pools=tuple(values["pools"] or ("all",)),
            sites_allowed=frozenset(values["sites_allowed"]) if values["sites_allowed"] is not None else None,
            overflow=values["overflow"],
            sla_minutes=MappingProxyType(sla),
            escalation=tuple(values["escalation"] or ()),
            second_reader=bool(values["second_reader"]),
        )
        self._merged[indices] = merged  # a race only computes the same value twice
        return merged

    def priority_for(self, case: CaseFacts, site: SiteFacts, local: datetime) -> tuple[Priority, str]:
        """Priority of a case without an order priority, and where it came from."""
        for rule_id, match, priority in self.priority_rules:
            if match.mismatch(case, site, self.defaults.priority, local) is None:
                return priority, f"priority rule {rule_id}"
        return self.defaults.priority, "defaults.priority"

    def select(
        self, case: CaseFacts, site: SiteFacts, priority: Priority, local: datetime, *, trace: bool = False
    ) -> Selection:
        """Evaluate the rules in order; ``local`` is now in the case site's time zone."""
        matched: list[int] = []
        raised_by: list[str] = []
        steps: list[dict[str, Any]] | None = [] if trace else None
        for index, rule in enumerate(self.rules):
            failed = rule.match.mismatch(case, site, priority, local)
            if steps is not None:
                steps.append({"rule": rule.id, "matched": failed is None, "failed": failed})
            if failed is not None:
                continue
            matched.append(index)
            floor = rule.actions.raise_priority
            if floor is not None and floor.rank < priority.rank:
                priority = floor
                raised_by.append(rule.id)
            if rule.stop:
                break
        key = tuple(matched)
        return Selection(
            rule_id=self.rules[matched[-1]].id if matched else None,
            matched=tuple(self.rules[i].id for i in matched),
            actions=self._merge(key),
            priority=priority,
            raised_by=tuple(raised_by),
            trace=tuple(steps) if steps is not None else None,
        )


def compile_rules(document: RulesDocument) -> CompiledRules:
    """The evaluable form of a validated document."""
    return CompiledRules(document)


def priority_from_rules(rules: CompiledRules, case: CaseFacts, site: SiteFacts, now: datetime) -> tuple[Priority, str]:
    """A case's priority: the order's when it has one, else the first matching priority rule's.

    Case creation calls this before routing, so the stored priority and the
    routed one agree; the second element says where it came from.
    """
    if case.priority is not None:
        return case.priority, "order"
    return rules.priority_for(case, site, now.astimezone(ZoneInfo(site.timezone)))


class RuleBook:
    """The active rules of a process: replaced all at once, or not at all.

    A rejected document raises :class:`RulesError` and the previous rules stay
    active; a replacement must carry a higher ``version`` so that two admins'
    edits cannot silently undo each other.
    """

    def __init__(self, initial: CompiledRules | None = None) -> None:
        self._active = initial
        self._lock = threading.Lock()

    @property
    def active(self) -> CompiledRules | None:
        return self._active

    def replace(self, text: str | bytes, *, known_sites: Iterable[str] | None = None) -> CompiledRules:
        """Validate, compile and activate ``text``; on any error the active rules are untouched."""
        compiled = compile_rules(load_rules(text, known_sites=known_sites))
        with self._lock:
            current = self._active
            if current is not None and compiled.version <= current.version:
                raise RulesError(
                    [
                        {
                            "loc": ["version"],
                            "type": "version",
                            "msg": f"version {compiled.version} must be above the active {current.version}",
                        }
                    ]
                )
            self._active = compiled
        return compiled
