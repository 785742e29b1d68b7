"""The routing rules document: what an administrator writes, and its validation.

Routing is data (architecture principle 2): rules live in one versioned
YAML or JSON document. Every model here forbids unknown fields, so a typo
(``subspeciality:``) is a field-level error rather than a rule that
silently never applies; regexes are compiled, priorities and SLA minutes
checked, and pool references resolved at load time, so a bad document is
rejected whole with the location of every problem and the active rules
stay in force (:class:`readingroom.workflow.compiled.RuleBook`).

Semantics, in one place:

* ``rules`` are tried in order. A matching rule applies its actions on top of
  ``defaults``; with ``stop: true`` (the default) evaluation ends there, with
  ``stop: false`` it continues and later matches override field by field
  (setting a field to ``null`` clears the default). ``raise_priority`` takes
  effect at once, so later rules see the raised priority.
* Within a match every given field must hold (AND); a list means any of its
  values (OR). Text regexes are case-insensitive searches. ``procedure`` is
  the canonical procedure code, the same whatever the site calls the exam. Time of day and
  days of the week are in the case site's local time.
* ``priority_rules`` give a case without an order priority its priority
  (first match wins, else ``defaults.priority``).
* Pools ``all``, ``local`` (readers whose home site is the case's site) and
  ``hub`` (readers whose home site is a hub) are built in; defined pools are
  the union of their selectors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import time
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from readingroom.workflow.enums import EscalationAction, Mode, Priority, SiteKind
from readingroom.workflow.shifts import parse_weekdays

BUILTIN_POOLS: Mapping[str, str] = {
    "all": "every reader",
    "local": "readers whose home site is the case's site",
    "hub": "readers whose home site is a hub site",
}
REFERENCE_SLA_MINUTES: Mapping[Priority, int] = {
    Priority.CRITICAL: 30,
    Priority.STAT: 60,
    Priority.URGENT: 360,
    Priority.ROUTINE: 1440,
}


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_regex(value: str) -> str:
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value


def _wall_time(value: Any) -> Any:
    if isinstance(value, str) and value.strip() in ("24:00", "24:00:00"):
        return time(0)
    return value


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Names = Annotated[list[Name], BeforeValidator(_one_or_many)]
Regex = Annotated[str, StringConstraints(min_length=1), AfterValidator(_check_regex)]
Days = Annotated[frozenset[int], BeforeValidator(parse_weekdays)]
WallTime = Annotated[time, BeforeValidator(_wall_time)]
RuleId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$", max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeWindow(_Model):
    """[start, end) in local wall-clock time; an end at or before the start wraps past midnight."""

    start: WallTime
    end: WallTime

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty")
        return self


class AgeRange(_Model):
    """Patient age in years: ``at_least`` <= age < ``under``."""

    at_least: float | None = Field(default=None, ge=0)
    under: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> AgeRange:
        if self.at_least is None and self.under is None:
            raise ValueError("give at_least, under or both")
        if self.at_least is not None and self.under is not None and self.at_least >= self.under:
            raise ValueError("at_least must be below under")
        return self


class Match(_Model):
    """Conditions on a case; an empty match matches every case."""

    modality: Names | None = None
    body_part: Names | None = None
    description: Regex | None = None
    #: canonical procedure code(s) (interop procedure mapping); an unmapped case matches none
    procedure: Names | None = None
    site: Names | None = None
    site_kind: list[SiteKind] | None = None
    priority: list[Priority] | None = None
    patient_class: Names | None = None
    patient_age: AgeRange | None = None
    order: dict[Name, Regex] | None = None
    flags_any: Names | None = None
    flags_none: Names | None = None
    time_of_day: TimeWindow | None = None
    days: Days | None = None

    @field_validator("priority", "site_kind", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _one_or_many(value)


class Overflow(_Model):
    """Hub-and-spoke overflow: widen the pool when the case waits unclaimed."""

    after_minutes: float = Field(ge=0)
    pools: Names = Field(default_factory=lambda: ["hub"], min_length=1)
    when_pool_empty: bool = Field(
        default=True, description="widen at once when nobody in the pools is eligible (waiting would not help)"
    )


class EscalationStep(_Model):
    """One rung of the SLA ladder, at a percentage of the SLA time."""

    at_percent: float = Field(gt=0, le=1000)
    action: EscalationAction
    notify: Names = Field(default_factory=list)


def _ascending(steps: list[EscalationStep] | None) -> list[EscalationStep] | None:
    if steps:
        percents = [s.at_percent for s in steps]
        if percents != sorted(percents):
            raise ValueError(f"steps must be in ascending at_percent order, got {percents}")
    return steps


def _all_priorities(sla: dict[Priority, int]) -> dict[Priority, int]:
    missing = [p.value for p in Priority if p not in sla]
    if missing:
        raise ValueError(f"defaults must give an SLA for every priority; missing: {', '.join(missing)}")
    return sla


SlaMinutes = dict[Priority, Annotated[int, Field(gt=0)]]
Ladder = Annotated[list[EscalationStep], AfterValidator(_ascending)]


class AgingStep(_Model):
    """Raise a waiting case's sort priority (not its SLA) so strict priority cannot starve it."""

    priority: Priority
    after_minutes: float = Field(gt=0)
    becomes: Priority

    @model_validator(mode="after")
    def _raises(self) -> AgingStep:
        if self.becomes.rank >= self.priority.rank:
            raise ValueError(f"aging must raise the priority: {self.priority} -> {self.becomes} does not")
        return self


class Actions(_Model):
    """What a matching rule decides; only the fields given override the defaults."""

    mode: Mode | None = None
    subspecialty: Names | None = Field(default=None, description="reader must hold one of these")
    prefer_subspecialty: Names | None = Field(default=None, description="push tries these first, in order")
    qualifications: Names | None = Field(default=None, description="reader must hold all of these")
    pools: Names | None = None
    sites_allowed: Names | None = Field(default=None, description="home sites of readers who may read")
    overflow: Overflow | None = None
    sla_minutes: SlaMinutes | None = None
    escalation: Ladder | None = None
    second_reader: bool | None = None
    raise_priority: Priority | None = None


class Defaults(_Model):
    """What applies when no rule says otherwise, and network-wide knobs."""

    mode: Mode = Mode.PULL
    priority: Priority = Priority.ROUTINE
    subspecialty: Names | None = None
    prefer_subspecialty: Names | None = None
    qualifications: Names | None = None
    pools: Names = Field(default_factory=lambda: ["all"], min_length=1)
    sites_allowed: Names | None = None
    overflow: Overflow | None = None
    sla_minutes: Annotated[SlaMinutes, AfterValidator(_all_priorities)] = Field(
        default_factory=lambda: dict(REFERENCE_SLA_MINUTES)
    )
    escalation: Ladder = Field(default_factory=list)
    second_reader: bool = False
    aging: list[AgingStep] = Field(default_factory=list)
    capacity_horizon_hours: float = Field(default=1.0, gt=0)
    max_assigned_per_reader: int | None = Field(default=None, gt=0)
    on_call_priorities: list[Priority] = Field(default_factory=lambda: [Priority.CRITICAL, Priority.STAT])


class PoolDef(_Model):
    """A named reader pool: every reader matching any selector belongs to it."""

    description: str = ""
    readers: Names = Field(default_factory=list)
    home_sites: Names = Field(default_factory=list)
    site_kinds: list[SiteKind] = Field(default_factory=list)
    subspecialties: Names = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_selector(self) -> PoolDef:
        if not (self.readers or self.home_sites or self.site_kinds or self.subspecialties):
            raise ValueError("a pool needs readers, home_sites, site_kinds or subspecialties")
        return self


class PriorityRule(_Model):
    """Priority for a case that has no order priority."""

    id: RuleId
    description: str = ""
    match: Match = Field(default_factory=Match)
    priority: Priority

    @field_validator("match")
    @classmethod
    def _not_circular(cls, match: Match) -> Match:
        if match.priority is not None:
            raise ValueError("a priority rule cannot match on the priority it decides")
        return match


class Rule(_Model):
    """One routing rule: when ``match`` holds, apply ``actions``."""

    id: RuleId
    description: str = ""
    match: Match = Field(default_factory=Match)
    actions: Actions = Field(default_factory=Actions)
    stop: bool = True


class RulesDocument(_Model):
    """A complete, versioned routing rules document."""

    version: int = Field(gt=0, description="revision; a replacement must carry a higher one")
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    description: str = ""
    defaults: Defaults = Field(default_factory=Defaults)
    pools: dict[Name, PoolDef] = Field(default_factory=dict)
    priority_rules: list[PriorityRule] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)


class RulesError(ValueError):
    """A rejected rules document, with every problem as ``{"loc": [...], "msg": ..., "type": ...}``."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        lines = [f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}" for e in errors]
        super().__init__("invalid routing rules:\n  " + "\n  ".join(lines))


class _RulesLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: ``22:00`` stays a time string, ``NO`` a country code."""


_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_RulesLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RulesLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_RulesLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789"))
_RulesLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$|^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_text(text: str | bytes) -> Any:
    """The data of a YAML or JSON document (JSON when it starts with ``{``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        if text.lstrip().startswith("{"):
            return json.loads(text)
        return yaml.load(text, Loader=_RulesLoader)  # a SafeLoader subclass: no arbitrary objects
    except json.JSONDecodeError as exc:
        raise RulesError([{"loc": [], "msg": f"invalid JSON: {exc}", "type": "syntax"}]) from exc
    except yaml.YAMLError as exc:
        raise RulesError([{"loc": [], "msg": f"invalid YAML: {exc}", "type": "syntax"}]) from exc


def _reference_errors(doc: RulesDocument, known_sites: frozenset[str] | None) -> list[dict[str, Any]]:
    """Problems that span fields: duplicate ids, unknown or reserved pool names, unknown sites."""
    errors: list[dict[str, Any]] = []

    def err(loc: list[str | int], msg: str, kind: str = "reference") -> None:
        errors.append({"loc": loc, "msg": msg, "type": kind})

    for name in doc.pools:
        if name in BUILTIN_POOLS:
            err(["pools", name], f"'{name}' is a built-in pool ({BUILTIN_POOLS[name]}); choose another name")
    known_pools = set(doc.pools) | set(BUILTIN_POOLS)

    def check_pools(loc: list[str | int], names: Iterable[str] | None) -> None:
        for i, name in enumerate(names or ()):
            if name not in known_pools:
                err([*loc, i], f"unknown pool '{name}' (defined: {', '.join(sorted(known_pools))})")

    def check_sites(loc: list[str | int], match: Match) -> None:
        if known_sites is not None:
            for i, code in enumerate(match.site or ()):
                if code not in known_sites:
                    err([*loc, "site", i], f"unknown site '{code}'")

    check_pools(["defaults", "pools"], doc.defaults.pools)
    if doc.defaults.overflow:
        check_pools(["defaults", "overflow", "pools"], doc.defaults.overflow.pools)
    for kind, items in (("priority_rules", doc.priority_rules), ("rules", doc.rules)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.id in seen:
                err([kind, i, "id"], f"duplicate id '{item.id}' (also {kind}[{seen[item.id]}])", "duplicate")
            seen.setdefault(item.id, i)
            check_sites([kind, i, "match"], item.match)
    for i, rule in enumerate(doc.rules):
        check_pools(["rules", i, "actions", "pools"], rule.actions.pools)
        if rule.actions.overflow:
            check_pools(["rules", i, "actions", "overflow", "pools"], rule.actions.overflow.pools)
    return errors


def validate_rules(data: Any, *, known_sites: Iterable[str] | None = None) -> RulesDocument:
    """A validated :class:`RulesDocument` from parsed data, or :class:`RulesError` listing every problem."""
    if not isinstance(data, Mapping):
        raise RulesError(
            [{"loc": [], "msg": "a rules document is a mapping (version, name, rules, ...)", "type": "document"}]
        )
    try:
        doc = RulesDocument.model_validate(data)
    except ValidationError as exc:
        raise RulesError(
            [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False)]
        ) from exc
    errors = _reference_errors(doc, frozenset(known_sites) if known_sites is not None else None)
    if errors:
        raise RulesError(errors)
    return doc


def load_rules(text: str | bytes, *, known_sites: Iterable[str] | None = None) -> RulesDocument:
    """Parse and validate a YAML or JSON rules document; ``known_sites`` also checks site codes."""
    return validate_rules(parse_text(text), known_sites=known_sites)
