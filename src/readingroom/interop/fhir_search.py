"""FHIR search mechanics shared by every resource: parameters, dates, tokens, paging bundles, outcomes.

A FHIR client pages through results by following the ``next`` link of a
``searchset`` Bundle, so the links here carry everything the next page
needs (the caller's own parameters plus ``_offset``). Unknown parameters
are handled the way the client asks with ``Prefer: handling=strict|lenient``
(FHIR R4 3.1.1.4.1): lenient (the default) ignores them and says so in an
OperationOutcome entry (``search.mode = outcome``), strict refuses with 400.
Nothing here touches the database: ``fhir_queries`` turns a parsed
:class:`SearchRequest` into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from pydantic import ValidationError
from sqlalchemy import ColumnElement

FHIR_JSON = "application/fhir+json"
DEFAULT_COUNT = 20
MAX_COUNT = 200
#: Parameters every search accepts besides its resource's own (``_format`` is accepted and ignored: always JSON).
COMMON_PARAMS = frozenset({"_count", "_offset", "_lastUpdated", "_id", "_format"})


class FhirError(Exception):
    """A refusal answered as an OperationOutcome: HTTP status, FHIR issue code, readable reason, where."""

    def __init__(self, status: int, diagnostics: str, code: str = "processing",
                 expression: list[str] | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code
        self.expression = expression or []


def validation_error(exc: ValidationError, resource_type: str) -> FhirError:
    """A model's validation errors as one 400 naming each failing element's path (FHIRPath-like)."""
    problems, paths = [], []
    for err in exc.errors()[:10]:
        path = ".".join([resource_type, *(str(p) for p in err.get("loc", ()) if p != "__root__")])
        paths.append(path)
        problems.append(f"{path}: {err.get('msg', 'invalid')}")
    return FhirError(400, "invalid resource: " + "; ".join(problems), "structure", paths)


def outcome(diagnostics: str, *, severity: str = "error", code: str = "processing",
            expression: list[str] | None = None) -> dict[str, Any]:
    """One-issue OperationOutcome as JSON (validated by the model)."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": [issue]}).model_dump(
        mode="json", exclude_none=True)


# -- parameters ------------------------------------------------------------------------------------------------


@dataclass
class SearchRequest:
    """A parsed search: its parameters (name -> values, repeats kept), paging, and what was ignored."""

    params: dict[str, list[str]]
    count: int = DEFAULT_COUNT
    offset: int = 0
    ignored: list[str] = field(default_factory=list)

    def first(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return self.params.get(name, [])


def _int(name: str, value: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FhirError(400, f"{name} must be a whole number, not {value!r}", "invalid", [name]) from None
    if number < low or (high is not None and number > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise FhirError(400, f"{name} must be {bounds}, not {number}", "invalid", [name])
    return number


def parse_search(items: list[tuple[str, str]], supported: frozenset[str], *, strict: bool) -> SearchRequest:
    """Parse query items against the resource's supported parameters (modifiers such as ``:exact`` refused)."""
    params: dict[str, list[str]] = {}
    ignored: list[str] = []
    for name, value in items:
        if name in supported or name in COMMON_PARAMS:
            params.setdefault(name, []).append(value)
        elif name.split(":", 1)[0] in supported | COMMON_PARAMS:
            raise FhirError(400, f"search modifier {name!r} is not supported", "not-supported", [name])
        else:
            if strict:
                raise FhirError(400, f"unknown search parameter {name!r} (supported: "
                                     f"{', '.join(sorted(supported | COMMON_PARAMS))})", "not-supported", [name])
            if name not in ignored:
                ignored.append(name)
    count = _int("_count", params["_count"][-1], 0, MAX_COUNT) if "_count" in params else DEFAULT_COUNT
    offset = _int("_offset", params["_offset"][-1], 0) if "_offset" in params else 0
    return SearchRequest(params=params, count=count, offset=offset, ignored=ignored)


def prefers_strict(prefer_header: str | None) -> bool:
    """``Prefer: handling=strict`` (FHIR R4 search handling); lenient otherwise."""
    return bool(prefer_header) and "handling=strict" in prefer_header.replace(" ", "").lower()


def token(value: str) -> tuple[str | None, str]:
    """A token parameter ``[system]|[code]`` or ``code``: (system or None for "any system", code)."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


def reference_id(value: str, resource_type: str, name: str) -> str:
    """The id of a reference parameter: ``Patient/12``, ``12`` or an absolute URL ending in ``Patient/12``."""
    head, _, ident = value.rstrip("/").rpartition("/")
    if head and head.rsplit("/", 1)[-1] != resource_type:
        raise FhirError(400, f"{name} must reference a {resource_type}, not {value!r}", "invalid", [name])
    if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", ident):
        raise FhirError(400, f"{name}: {value!r} is not a {resource_type} id", "invalid", [name])
    return ident


def int_id(value: str) -> int | None:
    """A numeric resource id, or None when it cannot be one of ours (the caller answers 404)."""
    if not value.isdigit() or len(value) > 18:
        return None
    return int(value)


# -- dates -----------------------------------------------------------------------------------------------------

_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def date_range(value: str, name: str) -> tuple[datetime, datetime]:
    """The interval ``[start, end)`` a FHIR date/dateTime of any precision stands for (UTC when no zone)."""
    m = _DATE.match(value)
    if not m:
        raise FhirError(400, f"{name}: {value!r} is not a FHIR date or dateTime", "invalid", [name])
    year, month, day, hour, minute, second, zone = m.groups()
    try:
        tz = UTC
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        if hour is not None:
            start = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), tzinfo=tz)
            end = start + (timedelta(seconds=1) if second is not None else timedelta(minutes=1))
        elif day is not None:
            start = datetime(int(year), int(month), int(day), tzinfo=UTC)
            end = start + timedelta(days=1)
        elif month is not None:
            start = datetime(int(year), int(month), 1, tzinfo=UTC)
            end = datetime(int(year) + int(month) // 12, int(month) % 12 + 1, 1, tzinfo=UTC)
        else:
            start = datetime(int(year), 1, 1, tzinfo=UTC)
            end = datetime(int(year) + 1, 1, 1, tzinfo=UTC)
    except ValueError as exc:
        raise FhirError(400, f"{name}: {value!r} is not a valid date ({exc})", "invalid", [name]) from None
    return start.astimezone(UTC), end.astimezone(UTC)


def date_clauses(column: Any, values: list[str], name: str = "_lastUpdated") -> list[ColumnElement[bool]]:
    """SQL conditions for date parameters with prefixes (``ge2025-01-01``, ``lt2025-02``); repeats are ANDed.

    The value's precision is an interval (FHIR R4 3.1.1.4.2): ``eq2025-01``
    is all of January, ``gt2025-01`` starts in February, ``le2025-01`` ends
    with January.
    """
    clauses: list[ColumnElement[bool]] = []
    for raw in values:
        prefix, value = (raw[:2], raw[2:]) if raw[:2] in _PREFIXES else ("eq", raw)
        start, end = date_range(value, name)
        if prefix == "eq":
            clauses += [column >= start, column < end]
        elif prefix == "ge":
            clauses.append(column >= start)
        elif prefix == "gt":
            clauses.append(column >= end)
        elif prefix == "le":
            clauses.append(column < end)
        elif prefix == "lt":
            clauses.append(column < start)
        else:
            raise FhirError(400, f"{name}: prefix {prefix!r} is not supported (eq, ge, gt, le, lt)",
                            "not-supported", [name])
    return clauses


def instant(value: datetime | None) -> str | None:
    """A stored UTC datetime as a FHIR instant."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


# -- bundles ---------------------------------------------------------------------------------------------------


def _link(base: str, resource_type: str, search: SearchRequest, offset: int) -> str:
    items = [(k, v) for k, values in search.params.items() if k not in ("_count", "_offset") for v in values]
    items += [("_count", str(search.count)), ("_offset", str(offset))]
    return f"{base}/{resource_type}?{urlencode(items)}"


def searchset(base: str, resource_type: str, search: SearchRequest, resources: list[dict[str, Any]],
              total: int) -> dict[str, Any]:
    """A ``searchset`` Bundle of one page: total, self/next/previous links, fullUrl per entry, ignored params."""
    links = [{"relation": "self", "url": _link(base, resource_type, search, search.offset)}]
    if search.count and search.offset + search.count < total:
        links.append({"relation": "next", "url": _link(base, resource_type, search, search.offset + search.count)})
    if search.offset > 0:
        links.append({"relation": "previous",
                      "url": _link(base, resource_type, search, max(0, search.offset - search.count))})
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in resources]
    if search.ignored:
        entries.append({"resource": outcome(f"ignored unknown search parameter(s): {', '.join(search.ignored)}",
                                            severity="warning", code="not-supported"),
                        "search": {"mode": "outcome"}})
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}
    return Bundle.model_validate(bundle).model_dump(mode="json", exclude_none=True)
