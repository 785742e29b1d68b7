"""REST edge of the analytics: turnaround per stage, stages, queue depth, readers, exports."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response

from readingroom.analytics import turnaround as ta
from readingroom.analytics.stages import BY_NAME, STAGES
from readingroom.governance import policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal

router = APIRouter(prefix="/analytics", tags=["analytics"])
Analyst = Annotated[Principal, Depends(require(policy.ANALYTICS_READ))]
BAD = {422: {"description": "A bad parameter (unknown stage, slice or format; 'to' before 'from' ...)"}}

StageQ = Annotated[str, Query(description=f"One of: {', '.join(BY_NAME)}")]
ByQ = Annotated[str, Query(description=f"Slice by: {', '.join(ta.SLICES)} (hour and weekday in UTC, 0 = Sunday)")]
FromQ = Annotated[datetime | None, Query(alias="from", description="Stage start at or after (UTC if naive)")]
ToQ = Annotated[datetime | None, Query(alias="to", description="Stage start before (UTC if naive)")]
SiteQ = Annotated[str | None, Query(description="Site code")]
TextQ = Annotated[str | None, Query()]
KindQ = Annotated[str, Query(description="Case kind: read (default), consult, second_opinion, ...; empty for all")]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _filters(p: Principal, start: datetime | None, end: datetime | None, site: str | None,
             priority: str | None = None, modality: str | None = None, kind: str = "read") -> ta.Filters:
    start, end = _utc(start), _utc(end)
    if start and end and end < start:
        raise HTTPException(422, "'to' is before 'from'")
    return ta.Filters(start=start, end=end, site=site or None, priority=priority or None,
                      modality=modality or None, kind=kind or None,
                      site_ids=policy.sites_where(p, policy.ANALYTICS_READ))


def _turnaround(rt: Any, stage: str, by: str, filters: ta.Filters) -> list[dict[str, Any]]:
    if stage not in BY_NAME:
        raise HTTPException(422, f"unknown stage {stage!r}; stages are {', '.join(BY_NAME)}")
    if by not in ta.SLICES:
        raise HTTPException(422, f"unknown slice {by!r}; slices are {', '.join(ta.SLICES)}")
    with rt.db.read_session() as s:
        return ta.turnaround(s, stage, by, filters)


@router.get("/stages")
def stages(p: Analyst) -> list[dict[str, Any]]:
    """The handoff stages: name, start and end (event kinds or study timestamps), whether SLA applies."""
    return [stage.as_dict() for stage in STAGES]


@router.get("/turnaround", responses=BAD)
def turnaround(rt: RuntimeDep, p: Analyst, stage: StageQ = "available_to_final", by: ByQ = "none",
               start: FromQ = None, end: ToQ = None, site: SiteQ = None, priority: TextQ = None,
               modality: TextQ = None, kind: KindQ = "read") -> list[dict[str, Any]]:
    """Per slice: count, p50/p90/p99 (nearest rank), mean and max minutes, SLA breaches and breach rate."""
    return _turnaround(rt, stage, by, _filters(p, start, end, site, priority, modality, kind))


@router.get("/queue-depth", responses=BAD)
def queue_depth(rt: RuntimeDep, p: Analyst, start: FromQ = None, end: ToQ = None,
                site: SiteQ = None) -> list[dict[str, Any]]:
    """Cases routed and not yet claimed at each top of the hour (UTC); the last 24 hours by default."""
    end = _utc(end) or datetime.now(UTC)
    start = _utc(start) or end - timedelta(hours=24)
    filters = _filters(p, start, end, site)
    try:
        with rt.db.read_session() as s:
            return ta.queue_depth(s, start, end, filters)
    except ta.AnalyticsError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.get("/readers", responses=BAD)
def readers(rt: RuntimeDep, p: Analyst, start: FromQ = None, end: ToQ = None, site: SiteQ = None,
            ) -> dict[str, Any]:
    """Reads finalised per reader (final in [from, to)), mean reading minutes, shares and the CV of reads."""
    filters = _filters(p, start, end, site)
    with rt.db.read_session() as s:
        out = ta.readers(s, filters)
        out["repeats"] = ta.repeats(s, _filters(p, None, None, site))
        return out


@router.get("/export", responses={**BAD, 415: {"description": "Parquet asked but pyarrow is not installed"},
                                   200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}})
def export(rt: RuntimeDep, p: Analyst, format: Annotated[str, Query(description="csv or parquet")] = "csv",
           stage: StageQ = "available_to_final", by: ByQ = "none", start: FromQ = None, end: ToQ = None,
           site: SiteQ = None, priority: TextQ = None, modality: TextQ = None, kind: KindQ = "read") -> Response:
    """The turnaround rows as a CSV or Parquet file."""
    if format not in ("csv", "parquet"):
        raise HTTPException(422, f"unknown format {format!r}; formats are csv, parquet")
    rows = _turnaround(rt, stage, by, _filters(p, start, end, site, priority, modality, kind))
    columns = ["stage", "by", "slice", "count", *(f"p{q}" for q in ta.PERCENTILES), "mean", "max", "breaches",
               "breach_rate"]
    name = f"turnaround-{stage}-{by}"
    if format == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise HTTPException(415, "Parquet export needs pyarrow, which is not installed; use format=csv") from None
        table = pa.table({c: [("" if r[c] is None else str(r[c])) if c == "slice" else r[c] for r in rows]
                          for c in columns})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": f'attachment; filename="{name}.parquet"'})
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
