"""Turnaround per handoff stage, duplicate reads, queue depth and reader balance, by SQL aggregation.

Every figure is one SQL statement over ``case_events`` (principle 1): a
``firsts`` CTE pivots each case's first timestamp per event kind
(``MIN(CASE WHEN kind IN (...) THEN at END)`` grouped by case), a
``durations`` CTE turns them into minutes, and percentiles are nearest-rank
with ``ROW_NUMBER()`` / ``COUNT(*)`` windows per slice. Python only shapes the
(few) aggregated rows. The functions take a SQLAlchemy session (or
connection), so the simulator can call them on its own database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from readingroom.analytics.stages import FINAL, Stage, get_stage
from readingroom.db import UTCDateTime

#: Slice name -> SQL expression (``c`` = cases, ``st`` = sites, ``u`` = claiming user; ``d.s_at`` = stage start).
SLICES = ("none", "priority", "modality", "site", "reader", "subspecialty", "procedure", "patient_class", "hour",
          "weekday")
PERCENTILES = (50, 90, 99)


class AnalyticsError(ValueError):
    """A bad parameter (unknown stage or slice ...), with a readable reason."""


@dataclass(frozen=True)
class Filters:
    """Which cases count: stage start in [start, end), site code, priority, modality, case kind."""

    start: datetime | None = None
    end: datetime | None = None
    site: str | None = None
    priority: str | None = None
    modality: str | None = None
    kind: str | None = "read"
    #: Site ids the caller may see (None: every site) — the API passes ``policy.sites_where``.
    site_ids: Iterable[int] | None = None


def _dialect(session: Session | Connection) -> str:
    bind = session.get_bind() if isinstance(session, Session) else session
    return bind.dialect.name


def _minutes(dialect: str, start: str, end: str) -> str:
    if dialect == "sqlite":
        return f"ROUND((julianday({end}) - julianday({start})) * 1440.0, 4)"
    return f"ROUND(CAST(EXTRACT(EPOCH FROM ({end} - {start})) AS NUMERIC) / 60.0, 4)"


def _slice_expr(dialect: str, by: str, start: str) -> str:
    sqlite = dialect == "sqlite"
    exprs = {
        "none": "'all'",
        "priority": "c.priority",
        "modality": "c.modality",
        "site": "COALESCE(st.code, '')",
        "reader": "COALESCE(u.username, '')",
        "subspecialty": "c.required_subspecialty",
        "procedure": "c.procedure_code",
        "patient_class": "c.patient_class",
        # hour of day and weekday (0 = Sunday ... 6 = Saturday) of the stage start, in UTC
        "hour": (f"CAST(strftime('%H', {start}) AS INTEGER)" if sqlite
                 else f"CAST(EXTRACT(HOUR FROM {start}) AS INTEGER)"),
        "weekday": (f"CAST(strftime('%w', {start}) AS INTEGER)" if sqlite
                    else f"CAST(EXTRACT(DOW FROM {start}) AS INTEGER)"),
    }
    if by not in exprs:
        raise AnalyticsError(f"unknown slice {by!r}; slices are {', '.join(SLICES)}")
    return exprs[by]


def _in_list(name: str, values: Iterable[str], params: dict[str, Any]) -> str:
    names = []
    for i, value in enumerate(values):
        params[f"{name}{i}"] = value
        names.append(f":{name}{i}")
    return ", ".join(names)


def _case_filters(f: Filters, params: dict[str, Any], at: str | None) -> tuple[list[str], list[Any]]:
    """WHERE conditions on ``c`` (cases), ``st`` (sites) and the stage start ``at``; typed bind params."""
    where: list[str] = []
    binds: list[Any] = []
    if f.kind:
        where.append("c.kind = :kind")
        params["kind"] = f.kind
    if f.site:
        where.append("st.code = :site")
        params["site"] = f.site
    if f.priority:
        where.append("c.priority = :priority")
        params["priority"] = f.priority
    if f.modality:
        where.append("c.modality = :modality")
        params["modality"] = f.modality
    if f.site_ids is not None:
        ids = sorted(set(f.site_ids))
        if not ids:
            where.append("1 = 0")
        else:
            where.append("c.site_id IN :site_ids")
            params["site_ids"] = ids
            binds.append(bindparam("site_ids", expanding=True))
    if at is not None and f.start is not None:
        where.append(f"{at} >= :t_from")
        params["t_from"] = f.start
        binds.append(bindparam("t_from", type_=UTCDateTime()))
    if at is not None and f.end is not None:
        where.append(f"{at} < :t_to")
        params["t_to"] = f.end
        binds.append(bindparam("t_to", type_=UTCDateTime()))
    return where, binds


def _firsts_cte(stage: Stage, params: dict[str, Any]) -> str:
    """The pivot: per case, the first timestamp of the stage's start kinds and of its end kinds."""
    kinds = [*stage.start, *stage.end]
    cols = []
    if stage.start:
        cols.append(f"MIN(CASE WHEN e.kind IN ({_in_list('sk', stage.start, params)}) THEN e.at END) AS s_ev")
    if stage.end:
        cols.append(f"MIN(CASE WHEN e.kind IN ({_in_list('ek', stage.end, params)}) THEN e.at END) AS e_ev")
    return (f"firsts AS (SELECT e.case_id, {', '.join(cols)} FROM case_events e "
            f"WHERE e.kind IN ({_in_list('kk', kinds, params)}) GROUP BY e.case_id)")


def turnaround(session: Session | Connection, stage: str | Stage, by: str = "none",
               filters: Filters | None = None) -> list[dict[str, Any]]:
    """Per slice of ``by``: count, p50/p90/p99 (nearest rank), mean and max minutes, SLA breaches.

    ``breach_rate`` is the share of the slice's cases *with a deadline* whose
    stage ended after ``Case.deadline`` (None for stages that do not end in a
    report, or when no case of the slice has a deadline).
    """
    stage = get_stage(stage) if isinstance(stage, str) else stage
    f = filters or Filters()
    dialect = _dialect(session)
    params: dict[str, Any] = {}
    s_at = f"sy.{stage.start_study}" if stage.start_study else "fi.s_ev"
    e_at = f"sy.{stage.end_study}" if stage.end_study else "fi.e_ev"
    slice_sql = _slice_expr(dialect, by, s_at)
    where, binds = _case_filters(f, params, s_at)
    where += [f"{s_at} IS NOT NULL", f"{e_at} IS NOT NULL", f"{e_at} >= {s_at}"]
    study_join = "JOIN studies sy ON sy.id = c.study_pk" if (stage.start_study or stage.end_study) else ""
    if stage.start or stage.end:
        source = f"firsts fi JOIN cases c ON c.id = fi.case_id {study_join}"
        ctes = [_firsts_cte(stage, params)]
    else:
        source = f"cases c {study_join}"
        ctes = []
    breach = f"CASE WHEN c.deadline IS NULL THEN NULL WHEN {e_at} > c.deadline THEN 1 ELSE 0 END"
    ctes.append(
        f"durations AS (SELECT {slice_sql} AS slice, {_minutes(dialect, s_at, e_at)} AS minutes, "
        f"{breach if stage.sla else 'CAST(NULL AS INTEGER)'} AS breached "
        f"FROM {source} LEFT JOIN sites st ON st.id = c.site_id LEFT JOIN users u ON u.id = c.claimed_by "
        f"WHERE {' AND '.join(where)})")
    ctes.append("ranked AS (SELECT slice, minutes, breached, "
                "ROW_NUMBER() OVER (PARTITION BY slice ORDER BY minutes) AS rn, "
                "COUNT(*) OVER (PARTITION BY slice) AS n FROM durations)")
    pcts = ", ".join(f"MAX(CASE WHEN rn = ({p} * n + 99) / 100 THEN minutes END) AS p{p}" for p in PERCENTILES)
    sql = (f"WITH {', '.join(ctes)} SELECT slice, COUNT(*) AS count, {pcts}, AVG(minutes) AS mean, "
           f"MAX(minutes) AS max, SUM(breached) AS breaches, COUNT(breached) AS with_deadline "
           f"FROM ranked GROUP BY slice ORDER BY slice")
    rows = session.execute(text(sql).bindparams(*binds), params).mappings().all()
    out = []
    for r in rows:
        with_deadline = int(r["with_deadline"] or 0)
        breaches = int(r["breaches"] or 0)
        out.append({"stage": stage.name, "by": by, "slice": r["slice"], "count": int(r["count"]),
                    **{f"p{p}": _num(r[f"p{p}"]) for p in PERCENTILES}, "mean": _num(r["mean"]),
                    "max": _num(r["max"]), "breaches": breaches if stage.sla else None,
                    "breach_rate": (breaches / with_deadline) if stage.sla and with_deadline else None})
    return out


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 4)


def repeats(session: Session | Connection, filters: Filters | None = None) -> dict[str, Any]:
    """Duplicate reads (cases finalised more than once) and repeated transfers (claimed more than once)."""
    f = filters or Filters()
    params: dict[str, Any] = {}
    finals = _in_list("fk", FINAL, params)
    where, binds = _case_filters(f, params, None)
    sql = (f"WITH per_case AS (SELECT e.case_id, "
           f"SUM(CASE WHEN e.kind IN ({finals}) THEN 1 ELSE 0 END) AS finals, "
           f"SUM(CASE WHEN e.kind = 'claimed' THEN 1 ELSE 0 END) AS claims FROM case_events e "
           f"WHERE e.kind IN ({_in_list('rk', (*FINAL, 'claimed'), params)}) GROUP BY e.case_id) "
           f"SELECT COUNT(*) AS cases, SUM(CASE WHEN p.finals > 1 THEN 1 ELSE 0 END) AS duplicate_reads, "
           f"SUM(CASE WHEN p.claims > 1 THEN 1 ELSE 0 END) AS repeated_transfers, "
           f"SUM(CASE WHEN p.claims > 1 THEN p.claims - 1 ELSE 0 END) AS extra_claims "
           f"FROM per_case p JOIN cases c ON c.id = p.case_id LEFT JOIN sites st ON st.id = c.site_id"
           + (f" WHERE {' AND '.join(where)}" if where else ""))
    r = session.execute(text(sql).bindparams(*binds), params).mappings().one()
    cases = int(r["cases"] or 0)
    dup, rep = int(r["duplicate_reads"] or 0), int(r["repeated_transfers"] or 0)
    return {"cases": cases, "duplicate_reads": dup, "repeated_transfers": rep,
            "extra_claims": int(r["extra_claims"] or 0),
            "duplicate_rate": dup / cases if cases else None, "transfer_rate": rep / cases if cases else None}


def _hour_floor_plus_one(dialect: str, col: str) -> str:
    if dialect == "sqlite":
        return f"datetime(strftime('%Y-%m-%d %H:00:00', {col}), '+1 hour')"
    return f"(date_trunc('hour', {col}) + INTERVAL '1 hour')"


def _as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


MAX_HOURS = 24 * 400


def queue_depth(session: Session | Connection, start: datetime, end: datetime,
                filters: Filters | None = None) -> list[dict[str, Any]]:
    """Cases waiting in a worklist at each top of the hour H in [start, end] (UTC).

    A case waits at H when it was first routed before H and its first
    ``claimed``, ``cancelled`` or final event (if any) is at or after H. SQL
    groups +1 (routed) and -1 (left the queue) by the next hour boundary and
    takes the running sum; Python only spreads the sums over the hours.
    """
    if end < start:
        raise AnalyticsError("'to' is before 'from'")
    start = _as_utc(start).replace(minute=0, second=0, microsecond=0)
    end = _as_utc(end)
    hours = int((end - start) / timedelta(hours=1)) + 1
    if hours > MAX_HOURS:
        raise AnalyticsError(f"at most {MAX_HOURS} hours per series")
    f = filters or Filters()
    dialect = _dialect(session)
    params: dict[str, Any] = {}
    left = _in_list("lk", ("claimed", "cancelled", *FINAL), params)
    where, binds = _case_filters(f, params, None)
    where.append("fi.s_ev IS NOT NULL")
    params["h_to"] = end
    binds.append(bindparam("h_to", type_=UTCDateTime()))
    sql = (f"WITH firsts AS (SELECT e.case_id, MIN(CASE WHEN e.kind = 'routed' THEN e.at END) AS s_ev, "
           f"MIN(CASE WHEN e.kind IN ({left}) THEN e.at END) AS e_ev FROM case_events e "
           f"WHERE e.kind IN ('routed', {left}) GROUP BY e.case_id), "
           f"waits AS (SELECT fi.s_ev, CASE WHEN fi.e_ev >= fi.s_ev THEN fi.e_ev "
           f"WHEN fi.e_ev IS NOT NULL THEN fi.s_ev END AS e_ev FROM firsts fi JOIN cases c ON c.id = fi.case_id "
           f"LEFT JOIN sites st ON st.id = c.site_id WHERE {' AND '.join(where)}), "
           f"deltas AS (SELECT {_hour_floor_plus_one(dialect, 's_ev')} AS h, 1 AS d FROM waits WHERE s_ev < :h_to "
           f"UNION ALL SELECT {_hour_floor_plus_one(dialect, 'e_ev')} AS h, -1 AS d FROM waits "
           f"WHERE e_ev IS NOT NULL AND e_ev < :h_to), "
           f"grouped AS (SELECT h, SUM(d) AS d FROM deltas GROUP BY h) "
           f"SELECT h, SUM(d) OVER (ORDER BY h) AS depth FROM grouped ORDER BY h")
    steps = [(_as_utc(r[0]), int(r[1])) for r in session.execute(text(sql).bindparams(*binds), params).all()]
    series, depth, i = [], 0, 0
    for k in range(hours):
        hour = start + timedelta(hours=k)
        while i < len(steps) and steps[i][0] <= hour:
            depth = steps[i][1]
            i += 1
        series.append({"hour": hour, "depth": depth})
    return series


def readers(session: Session | Connection, filters: Filters | None = None) -> dict[str, Any]:
    """Reads finalised per reader (claimer), their mean claim -> final minutes, and the balance (CV)."""
    f = filters or Filters()
    dialect = _dialect(session)
    params: dict[str, Any] = {}
    finals = _in_list("fk", FINAL, params)
    where, binds = _case_filters(f, params, "fi.e_ev")
    where += ["fi.e_ev IS NOT NULL", "c.claimed_by IS NOT NULL"]
    sql = (f"WITH firsts AS (SELECT e.case_id, MIN(CASE WHEN e.kind = 'claimed' THEN e.at END) AS s_ev, "
           f"MIN(CASE WHEN e.kind IN ({finals}) THEN e.at END) AS e_ev FROM case_events e "
           f"WHERE e.kind IN ('claimed', {finals}) GROUP BY e.case_id) "
           f"SELECT u.username AS reader, COUNT(*) AS reads, "
           f"AVG(CASE WHEN fi.s_ev IS NOT NULL AND fi.e_ev >= fi.s_ev THEN {_minutes(dialect, 'fi.s_ev', 'fi.e_ev')} "
           f"END) AS mean_read_minutes FROM firsts fi JOIN cases c ON c.id = fi.case_id "
           f"JOIN users u ON u.id = c.claimed_by LEFT JOIN sites st ON st.id = c.site_id "
           f"WHERE {' AND '.join(where)} GROUP BY u.username ORDER BY u.username")
    rows = [{"reader": r["reader"], "reads": int(r["reads"]), "mean_read_minutes": _num(r["mean_read_minutes"])}
            for r in session.execute(text(sql).bindparams(*binds), params).mappings()]
    counts = [r["reads"] for r in rows]
    mean = sum(counts) / len(counts) if counts else 0.0
    cv = None
    if counts and mean:
        cv = round((sum((c - mean) ** 2 for c in counts) / len(counts)) ** 0.5 / mean, 4)
    total = sum(counts)
    for r in rows:
        r["share"] = round(r["reads"] / total, 4) if total else None
    return {"readers": rows, "total_reads": total, "mean_reads": round(mean, 4), "cv": cv}
