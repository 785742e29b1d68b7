"""Turnaround analytics from the case event log: exact percentiles, slices, filters, SLA, queue depth, API."""

from __future__ import annotations

import csv
import io
import statistics
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from readingroom.analytics import turnaround as ta
from readingroom.app import create_app
from readingroom.archive.models import Patient, Study
from readingroom.governance.models import User
from readingroom.governance.sites import create_site
from readingroom.governance.users import create_token, create_user
from readingroom.workflow.models import Case, CaseEvent

BASE = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)  # a Monday
LKS_ROUTED = datetime(2026, 1, 5, 10, 30, tzinfo=UTC)


def _case(s: Any, site_id: int, events: list[tuple[str, datetime]], *, priority: str = "routine",
          modality: str = "CT", claimed_by: int | None = None, deadline: datetime | None = None,
          study_pk: int | None = None, kind: str = "read") -> int:
    case = Case(site_id=site_id, priority=priority, modality=modality, claimed_by=claimed_by, deadline=deadline,
                study_pk=study_pk, kind=kind, state="final", required_subspecialty="neuro" if modality == "MR" else "",
                created_at=events[0][1], updated_at=events[-1][1])
    s.add(case)
    s.flush()
    s.add_all(CaseEvent(case_id=case.id, at=at, kind=k, actor="t") for k, at in events)
    return case.id


@pytest.fixture()
def world(rt) -> dict[str, Any]:
    """HUB: 100 reads routed at BASE+i min, final i min later (odd i stat, even routine; ann i <= 30, bob else;
    deadline 60 min after routing). LKS: 10 reads routed 10:30, claimed 12:15 by cat, final 1000 min after
    routing; one cancelled at 11:30; one routed at 12:30 still waiting. One HUB study with acquisition times."""
    with rt.db.session() as s:
        hub = create_site(s, "HUB", "Hub")
        lks = create_site(s, "LKS", "Lakeshore")
        users = {name: create_user(s, name, password="pw", role=role, site_id=site)
                 for name, role, site in (("ann", "radiologist", hub.id), ("bob", "radiologist", hub.id),
                                          ("cat", "radiologist", lks.id), ("boss", "admin", None),
                                          ("lksadmin", "site_admin", lks.id))}
        s.flush()
        for i in range(1, 101):
            routed = BASE + timedelta(minutes=i)
            events = [("routed", routed), ("claimed", routed), ("report.final", routed + timedelta(minutes=i))]
            if i == 1:  # released and claimed again: a repeated transfer
                events[2:2] = [("released", routed), ("claimed", routed)]
            if i == 2:  # finalised twice: a duplicate read (the first final counts for turnaround)
                events.append(("report.final", routed + timedelta(minutes=500)))
            _case(s, hub.id, events, priority="stat" if i % 2 else "routine", modality="MR" if i <= 10 else "CT",
                  claimed_by=users["ann" if i <= 30 else "bob"].id, deadline=routed + timedelta(minutes=60))
        claimed = datetime(2026, 1, 5, 12, 15, tzinfo=UTC)
        for _ in range(10):
            _case(s, lks.id, [("routed", LKS_ROUTED), ("claimed", claimed),
                              ("report.final", LKS_ROUTED + timedelta(minutes=1000))], claimed_by=users["cat"].id)
        _case(s, lks.id, [("routed", LKS_ROUTED), ("cancelled", datetime(2026, 1, 5, 11, 30, tzinfo=UTC))])
        _case(s, lks.id, [("routed", datetime(2026, 1, 5, 12, 30, tzinfo=UTC))])
        patient = Patient(patient_id="P1", created_at=BASE, updated_at=BASE)
        s.add(patient)
        s.flush()
        study = Study(study_uid="1.2.3", patient_pk=patient.id, site_id=hub.id,
                      first_received_at=BASE - timedelta(hours=2), last_received_at=BASE - timedelta(hours=2),
                      complete_at=BASE - timedelta(hours=2) + timedelta(minutes=10), state="complete")
        s.add(study)
        s.flush()
        _case(s, hub.id, [("routed", BASE - timedelta(hours=2) + timedelta(minutes=12))], study_pk=study.id)
        # a consult child read: not counted with kind='read'
        _case(s, hub.id, [("routed", BASE), ("report.final", BASE + timedelta(minutes=5))], kind="consult")
    with rt.db.session() as s:
        headers = {u.username: {"Authorization": f"Bearer {create_token(s, u, name='t')[1]}"}
                   for u in s.scalars(select(User))}
    return {"rt": rt, "h": headers, "client": TestClient(create_app(rt))}


def _run(world: dict[str, Any], fn: Any, *args: Any, **kwargs: Any) -> Any:
    with world["rt"].db.read_session() as s:
        return fn(s, *args, **kwargs)


def test_nearest_rank_percentiles_of_1_to_100_minutes(world):
    [row] = _run(world, ta.turnaround, "available_to_final", filters=ta.Filters(site="HUB"))
    assert row["count"] == 100
    assert (row["p50"], row["p90"], row["p99"], row["max"], row["mean"]) == (50, 90, 99, 100, 50.5)
    assert row["breaches"] == 40 and row["breach_rate"] == pytest.approx(0.4)  # 61..100 > deadline (+60)


def test_slices_priority_site_reader_hour_weekday(world):
    by_priority = {r["slice"]: r for r in _run(world, ta.turnaround, "available_to_final", "priority",
                                               filters=ta.Filters(site="HUB"))}
    assert (by_priority["stat"]["count"], by_priority["stat"]["p50"], by_priority["stat"]["p90"],
            by_priority["stat"]["p99"]) == (50, 49, 89, 99)
    assert (by_priority["routine"]["p50"], by_priority["routine"]["p90"], by_priority["routine"]["p99"]) == \
        (50, 90, 100)
    by_site = {r["slice"]: r for r in _run(world, ta.turnaround, "available_to_final", "site")}
    assert by_site["HUB"]["count"] == 100
    assert (by_site["LKS"]["count"], by_site["LKS"]["p50"], by_site["LKS"]["breach_rate"]) == (10, 1000, None)
    by_reader = {r["slice"]: r["count"] for r in _run(world, ta.turnaround, "available_to_final", "reader")}
    assert by_reader == {"ann": 30, "bob": 70, "cat": 10}
    by_hour = {r["slice"]: r["count"] for r in _run(world, ta.turnaround, "available_to_final", "hour")}
    assert by_hour == {8: 59, 9: 41, 10: 10}
    by_weekday = {r["slice"]: r["count"] for r in _run(world, ta.turnaround, "available_to_final", "weekday")}
    assert by_weekday == {1: 110}
    by_sub = {r["slice"]: r["count"] for r in _run(world, ta.turnaround, "available_to_final", "subspecialty")}
    assert by_sub == {"": 100, "neuro": 10}


def test_filters_time_window_modality_priority_kind(world):
    window = ta.Filters(start=BASE + timedelta(minutes=51), end=BASE + timedelta(minutes=61), site="HUB")
    [row] = _run(world, ta.turnaround, "available_to_final", filters=window)
    assert (row["count"], row["p50"], row["max"]) == (10, 55, 60)  # starts 51..60
    [mr] = _run(world, ta.turnaround, "available_to_final", filters=ta.Filters(modality="MR"))
    assert (mr["count"], mr["p99"]) == (10, 10)
    [stat] = _run(world, ta.turnaround, "available_to_final", filters=ta.Filters(priority="stat", site="HUB"))
    assert stat["count"] == 50
    [consult] = _run(world, ta.turnaround, "available_to_final", filters=ta.Filters(kind="consult"))
    assert (consult["count"], consult["p50"]) == (1, 5)
    assert _run(world, ta.turnaround, "available_to_final", filters=ta.Filters(site_ids=[])) == []


def test_stages_from_study_timestamps_and_first_claim(world):
    [acq] = _run(world, ta.turnaround, "acquired_to_complete")
    assert (acq["count"], acq["p50"]) == (1, 10)
    [avail] = _run(world, ta.turnaround, "complete_to_available")
    assert (avail["count"], avail["p50"], avail["breach_rate"]) == (1, 2, None)
    claims = {r["slice"]: r for r in _run(world, ta.turnaround, "available_to_claim", "site")}
    assert (claims["HUB"]["count"], claims["HUB"]["max"]) == (100, 0)
    assert (claims["LKS"]["count"], claims["LKS"]["p50"]) == (10, 105)
    with pytest.raises(ta.AnalyticsError):
        _run(world, ta.turnaround, "available_to_final", "colour")


def test_repeats_and_readers(world):
    rep = _run(world, ta.repeats)
    assert (rep["duplicate_reads"], rep["repeated_transfers"], rep["extra_claims"]) == (1, 1, 1)
    out = _run(world, ta.readers)
    assert {r["reader"]: r["reads"] for r in out["readers"]} == {"ann": 30, "bob": 70, "cat": 10}
    assert out["cv"] == pytest.approx(statistics.pstdev([30, 70, 10]) / statistics.mean([30, 70, 10]), abs=1e-4)
    cat = next(r for r in out["readers"] if r["reader"] == "cat")
    assert cat["mean_read_minutes"] == 1000 - 105


def test_queue_depth_hourly(world):
    series = _run(world, ta.queue_depth, datetime(2026, 1, 5, 10, tzinfo=UTC), datetime(2026, 1, 5, 14, tzinfo=UTC))
    # the HUB study's case routed at 06:12 and never claimed waits all along
    assert [(p["hour"].hour, p["depth"]) for p in series] == [(10, 1), (11, 12), (12, 11), (13, 2), (14, 2)]
    hub = _run(world, ta.queue_depth, datetime(2026, 1, 5, 10, tzinfo=UTC), datetime(2026, 1, 5, 12, tzinfo=UTC),
               ta.Filters(site="HUB"))
    assert [p["depth"] for p in hub] == [1, 1, 1]


def test_api_scoping_and_authorisation(world):
    c, h = world["client"], world["h"]
    stages = c.get("/api/v1/analytics/stages", headers=h["boss"]).json()
    assert "available_to_final" in [st["name"] for st in stages]
    admin = c.get("/api/v1/analytics/turnaround", params={"by": "site"}, headers=h["boss"])
    assert admin.status_code == 200 and {r["slice"] for r in admin.json()} == {"HUB", "LKS"}
    mine = c.get("/api/v1/analytics/turnaround", params={"by": "site"}, headers=h["lksadmin"]).json()
    assert [(r["slice"], r["count"]) for r in mine] == [("LKS", 10)]
    other = c.get("/api/v1/analytics/turnaround", params={"site": "HUB"}, headers=h["lksadmin"]).json()
    assert other == []
    readers = c.get("/api/v1/analytics/readers", headers=h["lksadmin"]).json()
    assert [r["reader"] for r in readers["readers"]] == ["cat"]
    depth = c.get("/api/v1/analytics/queue-depth", headers=h["lksadmin"],
                  params={"from": "2026-01-05T10:00:00Z", "to": "2026-01-05T12:00:00"}).json()
    assert [p["depth"] for p in depth] == [0, 11, 10]
    assert c.get("/api/v1/analytics/turnaround", headers=h["ann"]).status_code == 403
    assert c.get("/api/v1/analytics/turnaround").status_code == 401
    windowed = c.get("/api/v1/analytics/turnaround", headers=h["boss"],
                     params={"from": "2026-01-05T08:51:00Z", "to": "2026-01-05T09:01:00Z"}).json()
    assert windowed[0]["count"] == 10


def test_bad_parameters_are_422_with_a_reason(world):
    c, h = world["client"], world["h"]["boss"]
    for url, params, words in (("/api/v1/analytics/turnaround", {"stage": "nope"}, "unknown stage"),
                               ("/api/v1/analytics/turnaround", {"by": "colour"}, "unknown slice"),
                               ("/api/v1/analytics/export", {"format": "xml"}, "unknown format"),
                               ("/api/v1/analytics/turnaround", {"from": "2026-02-01", "to": "2026-01-01"},
                                "before"),
                               ("/api/v1/analytics/queue-depth", {"from": "2020-01-01", "to": "2026-01-01"},
                                "hours")):
        r = c.get(url, params=params, headers=h)
        assert r.status_code == 422, (url, params, r.text)
        assert words in r.text
    assert c.get("/api/v1/analytics/turnaround", params={"from": "yesterday"}, headers=h).status_code == 422


def test_csv_and_parquet_export(world):
    c, h = world["client"], world["h"]["boss"]
    r = c.get("/api/v1/analytics/export", params={"format": "csv", "by": "priority", "site": "HUB"}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["slice"], x["count"], x["p50"], x["p90"], x["p99"]) for x in rows] == [
        ("routine", "50", "50.0", "90.0", "100.0"), ("stat", "50", "49.0", "89.0", "99.0")]
    pq = pytest.importorskip("pyarrow.parquet")
    r = c.get("/api/v1/analytics/export", params={"format": "parquet", "site": "HUB"}, headers=h)
    assert r.status_code == 200
    table = pq.read_table(io.BytesIO(r.content)).to_pylist()
    assert (table[0]["count"], table[0]["p90"], table[0]["breach_rate"]) == (100, 90.0, 0.4)
