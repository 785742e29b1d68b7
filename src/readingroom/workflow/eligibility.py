"""Whether one reader may read one case now, and if not, every reason why.

Each check is a hard constraint that must never be violated (licence for
the patient site's jurisdiction, credentials at that site, subspecialty,
qualification, shift, capacity, conflict of interest, data residency, pool
and allowed sites). All failing checks are reported, not just the first,
because the explanation is what an administrator reads when a case sits in
the exception queue: "off shift" alone would hide that the licence had also
lapsed. A site without a jurisdiction fails the licence check for everyone
(deny by default): better a visible exception than an unlicensed read.

Most readers of a large network are excluded from any one case, mostly for
the same few reasons, so an :class:`Assessor` builds each distinct reason
once per decision and shares it; formatting 200 sentences per decision
would otherwise cost more than the checks themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from readingroom.workflow.compiled import CompiledPool
from readingroom.workflow.enums import Priority, Reason, SiteKind
from readingroom.workflow.facts import ReaderFacts, ReaderLoad, SiteFacts
from readingroom.workflow.shifts import covers, local_date


@dataclass(frozen=True, slots=True)
class Exclusion:
    """One reason a reader cannot take a case: a stable code and a sentence for people.

    ``json`` is the form stored in explanations; it is shared between the
    readers excluded for the same reason, so treat it as read-only.
    """

    code: Reason
    detail: str
    json: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "json", {"code": self.code.value, "detail": self.detail})

    def as_dict(self) -> dict[str, str]:
        return dict(self.json)


@dataclass(frozen=True, slots=True)
class Needs:
    """What a case requires of its reader, resolved once per decision rather than once per reader."""

    site: SiteFacts
    priority: Priority
    subspecialties: frozenset[str]
    qualifications: frozenset[str]
    sites_allowed: frozenset[str] | None
    ordering_physician: str
    conflicted: frozenset[str]
    rvu: float
    capacity_horizon_hours: float
    max_assigned: int | None
    on_call_priorities: frozenset[Priority]


def _fmt_expiry(value: object) -> str:
    return value.isoformat() if isinstance(value, date | datetime) else str(value)


def _names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


class Assessor:
    """Checks readers against one case's needs at one instant, memoising the reasons it gives."""

    __slots__ = (
        "_cache",
        "_conflicted",
        "_dates",
        "_no_credential",
        "_no_licence",
        "_ordering",
        "moment",
        "needs",
        "on_call",
        "ts",
    )

    def __init__(self, needs: Needs, moment: datetime) -> None:
        self.needs = needs
        self.moment = moment
        self.ts = moment.timestamp()
        self._dates: dict[str, date] = {}
        self._cache: dict[tuple[Any, ...], Exclusion] = {}
        self.on_call: set[str] = set()
        """Readers whose shift check passed only because they are on call."""
        site = needs.site
        if site.jurisdiction:
            self._no_licence = Exclusion(Reason.NO_LICENCE, f"no licence for {site.jurisdiction} (site {site.code})")
        else:
            self._no_licence = Exclusion(Reason.NO_LICENCE, f"site {site.code} has no jurisdiction configured")
        self._no_credential = Exclusion(Reason.NOT_CREDENTIALED, f"not credentialed at {site.code}")
        self._ordering = Exclusion(Reason.CONFLICT, "is the ordering physician")
        self._conflicted = Exclusion(Reason.CONFLICT, "listed as conflicted for this case")

    def today(self, tz: str) -> date:
        """The local date in ``tz``, computed once per zone per decision."""
        found = self._dates.get(tz)
        if found is None:
            found = self._dates[tz] = local_date(tz, self.moment)
        return found

    def _keep(self, key: tuple[Any, ...], code: Reason, detail: str) -> Exclusion:
        made = self._cache[key] = Exclusion(code, detail)
        return made

    def check(self, reader: ReaderFacts, load: ReaderLoad) -> list[Exclusion]:
        """Every failed constraint except pool membership (empty: the reader may read the case).

        A reader who is off shift but on call for this priority passes the shift
        check and is remembered in :attr:`on_call`.
        """
        out: list[Exclusion] = []
        needs = self.needs
        site = needs.site
        jurisdiction = site.jurisdiction
        until = reader.licence_until.get(jurisdiction) if jurisdiction else None
        if until is None:
            out.append(self._no_licence)
        elif self.ts >= until:
            expiry = reader.licences[jurisdiction]
            key = (Reason.LICENCE_EXPIRED, expiry)
            out.append(
                self._cache.get(key)
                or self._keep(key, Reason.LICENCE_EXPIRED, f"licence for {jurisdiction} expired {_fmt_expiry(expiry)}")
            )
        until = reader.credential_until.get(site.code)
        if until is None:
            out.append(self._no_credential)
        elif self.ts >= until:
            expiry = reader.credentials[site.code]
            key = (Reason.CREDENTIAL_EXPIRED, expiry)
            out.append(
                self._cache.get(key)
                or self._keep(
                    key, Reason.CREDENTIAL_EXPIRED, f"credentials at {site.code} expired {_fmt_expiry(expiry)}"
                )
            )
        if needs.subspecialties and not (needs.subspecialties & reader.subspecialties):
            key = (Reason.SUBSPECIALTY, reader.subspecialties)
            out.append(
                self._cache.get(key)
                or self._keep(
                    key,
                    Reason.SUBSPECIALTY,
                    f"needs {' or '.join(sorted(needs.subspecialties))}; reads {_names(reader.subspecialties)}",
                )
            )
        if needs.qualifications and not needs.qualifications <= reader.qualifications:
            key = (Reason.QUALIFICATION, reader.qualifications)
            missing = needs.qualifications - reader.qualifications
            out.append(self._cache.get(key) or self._keep(key, Reason.QUALIFICATION, f"lacks {_names(missing)}"))
        if not covers(reader.shifts_by_weekday, reader.timezone, self.ts, self.today(reader.timezone)):
            if reader.on_call and needs.priority in needs.on_call_priorities:
                self.on_call.add(reader.username)
            else:
                out.append(self._off_shift(reader))
        if needs.max_assigned is not None and load.assigned_count >= needs.max_assigned:
            key = (Reason.OVER_CAPACITY, load.assigned_count)
            out.append(
                self._cache.get(key)
                or self._keep(
                    key,
                    Reason.OVER_CAPACITY,
                    f"holds {load.assigned_count} assigned cases (limit {needs.max_assigned})",
                )
            )
        elif reader.capacity_rvu_per_hour is not None and load.outstanding_rvu > 0:
            limit = reader.capacity_rvu_per_hour * needs.capacity_horizon_hours
            if load.outstanding_rvu + needs.rvu > limit:
                key = (Reason.OVER_CAPACITY, load.outstanding_rvu, limit)
                out.append(
                    self._cache.get(key)
                    or self._keep(
                        key,
                        Reason.OVER_CAPACITY,
                        f"outstanding {load.outstanding_rvu:g} + {needs.rvu:g} RVU exceeds capacity {limit:g} RVU",
                    )
                )
        if needs.ordering_physician and needs.ordering_physician in reader.identities:
            out.append(self._ordering)
        elif needs.conflicted and needs.conflicted & reader.identities:
            out.append(self._conflicted)
        if site.residency_tag and site.residency_tag not in reader.residency_tags:
            key = (Reason.RESIDENCY, reader.residency_tags)
            out.append(
                self._cache.get(key)
                or self._keep(
                    key,
                    Reason.RESIDENCY,
                    f"site {site.code} data must stay in {site.residency_tag}; "
                    f"reader may hold {_names(reader.residency_tags)}",
                )
            )
        if needs.sites_allowed is not None and reader.home_site not in needs.sites_allowed:
            key = (Reason.SITE_NOT_ALLOWED, reader.home_site)
            out.append(
                self._cache.get(key)
                or self._keep(
                    key,
                    Reason.SITE_NOT_ALLOWED,
                    f"home site {reader.home_site or 'none'} not among allowed {_names(needs.sites_allowed)}",
                )
            )
        return out

    def _off_shift(self, reader: ReaderFacts) -> Exclusion:
        key = (Reason.OFF_SHIFT, reader.timezone, reader.on_call)
        found = self._cache.get(key)
        if found is None:
            local = self.moment.astimezone(ZoneInfo(reader.timezone))
            note = ""
            if reader.on_call:
                note = " (on call covers " + "/".join(sorted(self.needs.on_call_priorities)) + " only)"
            found = self._keep(key, Reason.OFF_SHIFT, f"off shift at {local:%a %H:%M} {reader.timezone}{note}")
        return found


@dataclass(frozen=True, slots=True)
class PoolCheck:
    """Membership of a union of pools, flattened to three sets for one case."""

    everyone: bool
    usernames: frozenset[str]
    home_sites: frozenset[str]
    subspecialties: frozenset[str]

    @classmethod
    def build(
        cls,
        names: Iterable[str],
        case_site: str,
        pools: Mapping[str, CompiledPool],
        sites: Mapping[str, SiteFacts],
    ) -> PoolCheck:
        """Resolve built-in (``all``, ``local``, ``hub``) and defined pools against this case's site."""
        everyone = False
        usernames: set[str] = set()
        homes: set[str] = set()
        subspecialties: set[str] = set()
        for name in names:
            if name == "all":
                everyone = True
            elif name == "local":
                homes.add(case_site)
            elif name == "hub":
                homes.update(code for code, s in sites.items() if s.kind is SiteKind.HUB)
            elif (pool := pools.get(name)) is not None:
                usernames |= pool.readers
                homes |= pool.home_sites
                homes.update(code for code, s in sites.items() if s.kind in pool.site_kinds)
                subspecialties |= pool.subspecialties
        return cls(everyone, frozenset(usernames), frozenset(homes), frozenset(subspecialties))

    def admits(self, reader: ReaderFacts) -> bool:
        return (
            self.everyone
            or reader.username in self.usernames
            or reader.home_site in self.home_sites
            or bool(self.subspecialties and self.subspecialties & reader.subspecialties)
        )
