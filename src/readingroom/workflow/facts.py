"""The plain facts the router decides on: sites, readers, their load, and the case.

These are frozen dataclasses, not database rows or Pydantic models, so the
same routing code runs in the server (a later step maps rows onto them), in
the simulator (synthetic readers and time) and in tests, and so a decision
costs no validation. Anything expensive to derive (expiry instants, shifts
indexed by weekday) is derived once, when the facts are built, because a
reader's facts are reused for many decisions while only their load changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from types import MappingProxyType
from zoneinfo import ZoneInfo

from readingroom.workflow.enums import Priority, SiteKind
from readingroom.workflow.shifts import Shift, index_by_weekday

Expiry = date | datetime | None
"""When a licence or credential lapses: ``None`` never; a date is valid through that whole day (UTC)."""

NEVER = float("inf")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def expiry_timestamp(expiry: Expiry) -> float:
    """POSIX time from which a licence or credential is no longer valid."""
    if expiry is None:
        return NEVER
    if isinstance(expiry, datetime):
        return _aware(expiry).timestamp()
    return datetime.combine(expiry + timedelta(days=1), time(0), tzinfo=UTC).timestamp()


def _frozen(values: Iterable[str] | None, fold: str = "") -> frozenset[str]:
    """A frozenset of stripped strings, upper- or lower-cased when ``fold`` says so (tags compare exactly)."""
    if values is None:
        return frozenset()
    if isinstance(values, str):
        values = [values]
    out = (v.strip() for v in values if v and v.strip())
    if fold == "upper":
        return frozenset(v.upper() for v in out)
    if fold == "lower":
        return frozenset(v.lower() for v in out)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class SiteFacts:
    """A site as routing sees it: where its patients' data may go and who may read them.

    ``jurisdiction`` is the licensing authority for its patients (e.g. ``US-PA``);
    ``residency_tag``, when set, is the data-residency zone its studies must stay
    in: only readers whose ``residency_tags`` include it may be routed its cases.
    """

    code: str
    timezone: str = "UTC"
    jurisdiction: str = ""
    kind: SiteKind = SiteKind.SPOKE
    residency_tag: str = ""

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)
        object.__setattr__(self, "kind", SiteKind(self.kind))
        object.__setattr__(self, "jurisdiction", self.jurisdiction.strip().upper())
        object.__setattr__(self, "residency_tag", self.residency_tag.strip().upper())


@dataclass(frozen=True, slots=True)
class ReaderFacts:
    """What a reader is allowed and rostered to read; their live load is :class:`ReaderLoad`.

    ``licences`` maps jurisdiction -> expiry and ``credentials`` maps site code ->
    expiry (``None``: no expiry). ``shifts`` are local to ``timezone``.
    ``on_call`` readers are eligible off shift for the priorities the rules
    document lists under ``on_call_priorities``. ``aliases`` are other
    identifiers of the same person (NPI, HL7 XCN id) so an order's ordering
    physician can be recognised as a conflict.
    """

    username: str
    home_site: str | None = None
    timezone: str = "UTC"
    subspecialties: frozenset[str] = frozenset()
    qualifications: frozenset[str] = frozenset()
    licences: Mapping[str, Expiry] = field(default_factory=dict)
    credentials: Mapping[str, Expiry] = field(default_factory=dict)
    shifts: tuple[Shift, ...] = ()
    capacity_rvu_per_hour: float | None = None
    on_call: bool = False
    residency_tags: frozenset[str] = frozenset()
    aliases: frozenset[str] = frozenset()
    licence_until: Mapping[str, float] = field(init=False, repr=False, compare=False)
    credential_until: Mapping[str, float] = field(init=False, repr=False, compare=False)
    shifts_by_weekday: tuple[tuple[Shift, ...], ...] = field(init=False, repr=False, compare=False)
    identities: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)
        setter = object.__setattr__
        setter(self, "subspecialties", _frozen(self.subspecialties, "lower"))
        setter(self, "qualifications", _frozen(self.qualifications, "upper"))
        setter(self, "residency_tags", _frozen(self.residency_tags, "upper"))
        setter(self, "aliases", _frozen(self.aliases))
        licences = {k.strip().upper(): v for k, v in self.licences.items()}
        setter(self, "licences", MappingProxyType(licences))
        setter(self, "credentials", MappingProxyType(dict(self.credentials)))
        setter(self, "licence_until", MappingProxyType({k: expiry_timestamp(v) for k, v in licences.items()}))
        setter(
            self,
            "credential_until",
            MappingProxyType({k: expiry_timestamp(v) for k, v in self.credentials.items()}),
        )
        shifts = tuple(Shift.parse(s) if isinstance(s, str) else s for s in self.shifts)
        setter(self, "shifts", shifts)
        setter(self, "shifts_by_weekday", index_by_weekday(shifts))
        setter(self, "identities", frozenset(x.casefold() for x in (self.username, *self.aliases)))


@dataclass(frozen=True, slots=True)
class ReaderLoad:
    """A reader's live load, kept apart from :class:`ReaderFacts` because it changes every minute.

    ``outstanding_rvu`` is the work assigned or claimed but not yet reported;
    ``idle_since`` is when they last finished a read while holding nothing
    (``None``: busy or unknown, so they sort after idle readers).
    """

    outstanding_rvu: float = 0.0
    assigned_count: int = 0
    idle_since: datetime | None = None


NO_LOAD = ReaderLoad()


@dataclass(frozen=True, slots=True)
class CaseFacts:
    """One case to route: the study's facts plus its order's, if it has one.

    ``priority`` is the order's priority when there is an order; leave it
    ``None`` and the rules document decides (patient class, modality,
    description). ``ready_at`` is when the study became readable (exam
    complete): the SLA clock and the hub-overflow wait both count from it.
    ``pool_widened`` is set once an escalation step has widened the pool.
    ``conflicted_readers`` lists usernames or aliases that must not read this
    case besides the ordering physician (e.g. the patient is a colleague).
    """

    case_id: str
    site: str
    modality: str
    ready_at: datetime
    body_part: str = ""
    description: str = ""
    priority: Priority | None = None
    patient_class: str = ""
    patient_age_years: float | None = None
    flags: frozenset[str] = frozenset()
    order: Mapping[str, str] = field(default_factory=dict)
    ordering_physician: str = ""
    conflicted_readers: frozenset[str] = frozenset()
    rvu: float = 1.0
    pool_widened: bool = False
    #: A child read's request (consult, second opinion, peer review): subspecialties required on top of
    #: the rules', a named expert who alone may take it (push), and its own SLA in minutes.
    required_subspecialties: frozenset[str] = frozenset()
    named_readers: frozenset[str] = frozenset()
    sla_minutes: float | None = None
    #: The canonical procedure code (metadata normalisation maps each site's names onto it); '' = unmapped.
    procedure: str = ""

    def __post_init__(self) -> None:
        setter = object.__setattr__
        setter(self, "case_id", str(self.case_id))
        setter(self, "procedure", self.procedure.strip().upper())
        setter(self, "modality", self.modality.strip().upper())
        setter(self, "body_part", self.body_part.strip().upper())
        setter(self, "patient_class", self.patient_class.strip().upper())
        setter(self, "flags", _frozen(self.flags, "upper"))
        setter(self, "ready_at", _aware(self.ready_at))
        setter(self, "order", MappingProxyType({str(k): str(v) for k, v in self.order.items()}))
        if self.priority is not None:
            setter(self, "priority", Priority(self.priority))
        setter(self, "ordering_physician", self.ordering_physician.strip())
        setter(self, "conflicted_readers", frozenset(x.casefold() for x in _frozen(self.conflicted_readers)))
        setter(self, "required_subspecialties", _frozen(self.required_subspecialties, "lower"))
        setter(self, "named_readers", _frozen(self.named_readers))
