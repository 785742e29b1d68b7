"""Procedure mappings: which site's description or code means which canonical procedure.

The table behind :func:`readingroom.interop.procedures.resolve`: create and
delete mappings (scoped to a site's code or ``*``, site admins only for
their own sites), re-apply them to the cases that were waiting, and list
what is still unmapped so an admin knows what to map next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.models import Site
from readingroom.interop.models import Order, Procedure, ProcedureMapping
from readingroom.interop.procedures import (
    ALL_SITES,
    CODE,
    DESCRIPTION,
    REAPPLY_BATCH,
    SOURCES,
    ProcedureConflict,
    ProcedureError,
    ProcedureNotFound,
    ScopeForbidden,
    Scopes,
    get_procedure,
    normalise,
    resolve,
    site_code_of,
)
from readingroom.workflow.models import Case

# -- mappings -------------------------------------------------------------------------------------------------


def site_codes(session: Session, site_ids: Iterable[int]) -> frozenset[str]:
    """The codes of these sites (a caller's administrable sites as mapping scopes)."""
    ids = sorted(set(site_ids))
    return frozenset(session.scalars(select(Site.code).where(Site.id.in_(ids)))) if ids else frozenset()


def check_scope(session: Session, scope: str, allowed: Scopes) -> str:
    """The scope if it exists and the caller may manage it; ScopeForbidden / ProcedureError otherwise."""
    scope = scope.strip() or ALL_SITES
    if allowed is not None and scope not in allowed:
        where = "every site ('*')" if scope == ALL_SITES else f"site {scope}"
        raise ScopeForbidden(f"you may not manage mappings for {where}; you administer "
                             f"{', '.join(sorted(allowed)) or 'no site'}")
    if scope != ALL_SITES and session.scalar(select(Site.id).where(Site.code == scope)) is None:
        raise ProcedureError(f"scope {scope!r}: no such site (use a site code or '*')")
    return scope


@dataclass(frozen=True)
class MappingInput:
    scope: str
    source: str
    value: str
    procedure_code: str


def clean_mapping(session: Session, data: MappingInput, allowed: Scopes) -> tuple[str, str, str, Procedure]:
    """(scope, source, normalised value, procedure) of a valid mapping, or ProcedureError with the reason."""
    source = data.source.strip().lower() or DESCRIPTION
    if source not in SOURCES:
        raise ProcedureError(f"source {data.source!r}: 'description' or 'code'")
    value = normalise(data.value)
    if not value:
        raise ProcedureError("value: a description or code with at least one letter or digit")
    scope = check_scope(session, data.scope, allowed)
    try:
        procedure = get_procedure(session, data.procedure_code)
    except ProcedureNotFound as exc:  # a bad reference in the request body (422), not a missing resource (404)
        raise ProcedureError(str(exc)) from None
    return scope, source, value, procedure


def list_mappings(session: Session, *, visible: Scopes = None, scope: str = "", procedure_code: str = "",
                  limit: int = 5000) -> list[tuple[ProcedureMapping, str]]:
    """Mappings with their procedure's code; ``visible`` limits them to ``*`` and those sites."""
    query = select(ProcedureMapping, Procedure.code).join(Procedure, Procedure.id == ProcedureMapping.procedure_id)
    if visible is not None:
        query = query.where(ProcedureMapping.scope.in_(sorted(visible | {ALL_SITES})))
    if scope:
        query = query.where(ProcedureMapping.scope == scope)
    if procedure_code:
        query = query.where(Procedure.code == procedure_code.strip().upper())
    query = query.order_by(ProcedureMapping.scope, ProcedureMapping.source, ProcedureMapping.value).limit(limit)
    return [(m, c) for m, c in session.execute(query).all()]


def find_mapping(session: Session, scope: str, source: str, value: str) -> ProcedureMapping | None:
    return session.scalar(select(ProcedureMapping).where(
        ProcedureMapping.scope == scope, ProcedureMapping.source == source, ProcedureMapping.value == value))


def create_mapping(session: Session, data: MappingInput, *, actor: str, allowed: Scopes = None,
                   reapply_now: bool = True) -> tuple[ProcedureMapping, int]:
    """A new mapping and how many waiting cases it classified; ProcedureConflict if it exists."""
    scope, source, value, procedure = clean_mapping(session, data, allowed)
    if find_mapping(session, scope, source, value) is not None:
        raise ProcedureConflict(f"{scope} {source} {value!r} is mapped already; delete that mapping first")
    row = ProcedureMapping(scope=scope, source=source, value=value, procedure_id=procedure.id,
                           created_at=utcnow(), created_by=actor[:128])
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError as exc:
        raise ProcedureConflict(f"{scope} {source} {value!r} is mapped already") from exc
    applied = reapply(session, scope=scope, source=source, value=value) if reapply_now else 0
    audit.record(session, actor=actor, action="procedure_mapping.created", resource_type="procedure_mapping",
                 resource_id=str(row.id), detail={"scope": scope, "source": source, "value": value,
                                                  "procedure": procedure.code, "cases_classified": applied})
    return row, applied


def delete_mapping(session: Session, mapping_id: int, *, actor: str, allowed: Scopes = None) -> None:
    """Remove a mapping (cases already classified keep their procedure)."""
    row = session.get(ProcedureMapping, mapping_id)
    if row is None or (allowed is not None and row.scope not in allowed | {ALL_SITES}):
        raise ProcedureNotFound(f"no procedure mapping {mapping_id}")  # another site's: not the caller's to know
    check_scope(session, row.scope, allowed)  # a network-wide one is visible to site admins, not theirs to delete
    detail = {"scope": row.scope, "source": row.source, "value": row.value}
    session.delete(row)
    session.flush()
    audit.record(session, actor=actor, action="procedure_mapping.deleted", resource_type="procedure_mapping",
                 resource_id=str(mapping_id), detail=detail)


# -- re-applying mappings and the unmapped list ---------------------------------------------------------------


def _case_code(order_fields: dict[str, Any] | None) -> str:
    return str((order_fields or {}).get("procedure_code") or "")


def reapply(session: Session, *, scope: str = ALL_SITES, source: str = "", value: str = "",
            limit: int = REAPPLY_BATCH) -> int:
    """Classify cases still without a procedure that the mappings now cover; returns how many changed.

    With ``source`` and ``value`` only the cases with that (normalised)
    description or code are looked at (a new mapping); without them every
    unclassified case is (``readingroom procedures reapply``). At most
    ``limit`` cases, newest first, are examined per call. Closed cases are
    classified too: their history does not change, only the label analytics
    groups them by. Each case gets what :func:`resolve` answers for it, so a
    more specific mapping still wins over the one just added, and the UPDATE
    only touches rows whose procedure is still empty (a concurrent
    classification is never overwritten).
    """
    query = select(Case.id, Case.site_id, Case.description, Case.order_fields).where(Case.procedure_code == "")
    if scope != ALL_SITES:
        site_id = session.scalar(select(Site.id).where(Site.code == scope))
        if site_id is None:
            return 0
        query = query.where(Case.site_id == site_id)
    codes: dict[int | None, str] = {}
    by_procedure: dict[str, list[int]] = {}
    cache: dict[tuple[int | None, str, str], str] = {}
    for case_id, site_id, description, order_fields in session.execute(query.order_by(Case.id.desc())
                                                                       .limit(limit)).all():
        code = _case_code(order_fields)
        if source == DESCRIPTION and normalise(description) != value:
            continue
        if source == CODE and normalise(code) != value:
            continue
        key = (site_id, normalise(code), normalise(description))
        if key not in cache:
            if site_id not in codes:
                codes[site_id] = site_code_of(session, site_id)
            found = resolve(session, codes[site_id], code, description)
            cache[key] = found.code if found is not None else ""
        if cache[key]:
            by_procedure.setdefault(cache[key], []).append(case_id)
    changed = 0
    for procedure_code, ids in by_procedure.items():
        for start in range(0, len(ids), 500):
            changed += session.execute(
                update(Case).where(Case.id.in_(ids[start:start + 500]), Case.procedure_code == "")
                .values(procedure_code=procedure_code).execution_options(synchronize_session=False)).rowcount
    return changed


@dataclass(frozen=True)
class Unmapped:
    """A site's description / code that no mapping covers, with how often and how lately it was seen."""

    site: str
    description: str
    code: str
    cases: int
    orders: int
    last_seen: datetime | None


def unmapped(session: Session, *, site_ids: Iterable[int] | None = None, limit: int = 200) -> list[Unmapped]:
    """What an admin should map next: unclassified cases (and active orders), grouped, most frequent first.

    Grouped in SQL by site, description and code; variants that
    :func:`normalise` makes equal are then merged, so one row stands for one
    mapping to create. Orders count through their procedure text and code
    (an order with a mapped procedure has a classified case).
    """
    code = Case.order_fields["procedure_code"].as_string()
    cases_q = (select(Case.site_id, Case.description, code, func.count(), func.max(Case.created_at))
               .where(Case.procedure_code == "").group_by(Case.site_id, Case.description, code))
    orders_q = (select(Order.site_id, Order.procedure_text, Order.procedure_code, func.count(),
                       func.max(Order.updated_at))
                .join(Case, Case.id == Order.case_id).where(Case.procedure_code == "", Order.status == "active")
                .group_by(Order.site_id, Order.procedure_text, Order.procedure_code))
    if site_ids is not None:
        ids = sorted(set(site_ids))
        cases_q = cases_q.where(Case.site_id.in_(ids))
        orders_q = orders_q.where(Order.site_id.in_(ids))
    sites = dict(session.execute(select(Site.id, Site.code)).all())
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for kind, query in (("cases", cases_q), ("orders", orders_q)):
        for site_id, description, raw_code, count, last in session.execute(query.limit(20_000)).all():
            desc_n, code_n = normalise(description or ""), normalise(raw_code or "")
            if not desc_n and not code_n:
                continue
            key = (sites.get(site_id, ""), desc_n, code_n)
            entry = merged.setdefault(key, {"cases": 0, "orders": 0, "last": None})
            entry[kind] += int(count)
            if last is not None and (entry["last"] is None or last > entry["last"]):
                entry["last"] = last
    rows = [Unmapped(site=k[0], description=k[1], code=k[2], cases=v["cases"], orders=v["orders"],
                     last_seen=v["last"]) for k, v in merged.items()]
    rows.sort(key=lambda u: (-u.cases - u.orders, u.site, u.description, u.code))
    return rows[:limit]
