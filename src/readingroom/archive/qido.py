"""QIDO-RS request parsing and result shaping (PS3.18 8.3.4 and 10.6).

Turns the query string of a search into the arguments of
:func:`readingroom.archive.query.search` (which owns all matching), and
trims the answers to what ``includefield`` asks for. Kept apart from the
route so the rules (keywords or tags, sequence paths, repeated keys,
paging bounds) are testable without HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from readingroom.archive import attributes as A
from readingroom.archive.query import COMPUTED, QueryError, keyword_to_tag, search

#: Parameters that are not matching keys (``accept``/``charset``: PS3.18 8.3.3.1 query overrides).
IGNORED_PARAMS = frozenset({"accept", "charset"})
#: The most one answer carries when the client sets no (or a larger) limit; more -> Warning header.
MAX_RESULTS = 10_000
_LEVEL_UIDS = {"0020000D", "0020000E", "00080018", A.AVAILABLE_TRANSFER_SYNTAX}
_DEFAULT_TAGS = frozenset(A.STUDY_TAGS + A.SERIES_TAGS + A.INSTANCE_TAGS) | COMPUTED | _LEVEL_UIDS


@dataclass
class QidoRequest:
    """A parsed search: matching keys (8-hex tags, dotted for sequences) and controls."""

    filters: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0

    @property
    def capped(self) -> bool:
        """Whether the server, not the client, bounds the number of results."""
        return self.limit is None or self.limit > MAX_RESULTS

    @property
    def effective_limit(self) -> int:
        return MAX_RESULTS if self.capped else int(self.limit or 0)


def attribute_path(key: str) -> str:
    """``PatientName`` / ``00100010`` / ``RequestAttributesSequence.ScheduledProcedureStepID`` -> tag path."""
    try:
        return ".".join(keyword_to_tag(part) for part in key.split("."))
    except ValueError as exc:
        raise QueryError(f"unknown query parameter or attribute {key!r}") from exc


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}") from exc
    if number < 0:
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}")
    return number


def parse_query(items: list[tuple[str, str]]) -> QidoRequest:
    """Parse ``(name, value)`` query pairs; QueryError (-> 400) names the offending one."""
    req = QidoRequest()
    for name, value in items:
        lname = name.lower()
        if lname == "includefield":
            for part in value.split(","):
                part = part.strip()
                if not part:
                    continue
                if part.lower() == "all":
                    req.include_all = True
                else:
                    req.include.add(attribute_path(part))
        elif lname == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise QueryError(f"fuzzymatching must be true or false, not {value!r}")
            req.fuzzy = value.lower() == "true"
        elif lname in IGNORED_PARAMS:
            continue
        elif lname == "limit":
            req.limit = _non_negative("limit", value)
        elif lname == "offset":
            req.offset = _non_negative("offset", value)
        else:
            tag = attribute_path(name)
            if tag in req.filters and value:
                # A repeated key is a list of values (UID lists: PS3.18 8.3.4.1).
                req.filters[tag] = f"{req.filters[tag]}\\{value}" if req.filters[tag] else value
            else:
                req.filters[tag] = value
    return req


def needs_all(req: QidoRequest, level: str) -> bool:
    """Whether the search must load every attribute (``all``, or a field outside the default set)."""
    if req.include_all:
        return True
    return level == "IMAGE" and any(t.split(".")[0] not in _DEFAULT_TAGS for t in req.include)


def run(session: Any, level: str, req: QidoRequest, study_uid: str | None = None,
        series_uid: str | None = None, scope: Any = None) -> tuple[list[dict[str, Any]], bool]:
    """Run a parsed search: (results shaped for the answer, whether the server cut the list short)."""
    results = search(session, level, req.filters, study_uid=study_uid, series_uid=series_uid, fuzzy=req.fuzzy,
                     limit=req.effective_limit + (1 if req.capped else 0), offset=req.offset,
                     include_all=needs_all(req, level), scope=scope)
    more = req.capped and len(results) > MAX_RESULTS
    return shape(results[:MAX_RESULTS] if more else results, req, level), more


def shape(results: list[dict[str, Any]], req: QidoRequest, level: str) -> list[dict[str, Any]]:
    """Trim results loaded with every attribute back to defaults + includefield + matching keys."""
    if req.include_all or not needs_all(req, level):
        return results
    keep = _DEFAULT_TAGS | {t.split(".")[0] for t in req.include} | {t.split(".")[0] for t in req.filters}
    return [{k: v for k, v in item.items() if k in keep} for item in results]
