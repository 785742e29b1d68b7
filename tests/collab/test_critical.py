"""Critical results: the closed loop (notify, acknowledge, escalate on time) through the API and the job.

Time is the replaceable clock (FrozenClock); the escalation job is called as
the scheduler calls it. The webhook channel posts to a real HTTP receiver.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from readingroom.app import create_app
from readingroom.clock import FrozenClock, set_clock, utcnow
from readingroom.collab import critical
from readingroom.collab.critical_models import CriticalNotification, CriticalResult
from readingroom.governance.models import AccessGrant, User
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.workflow.cases import case_events
from tests.support.servers import free_port
from tests.workflow.conftest import make_case, network  # noqa: F401  (fixture)

CLINICIAN = "Hartmann^Anna"


@pytest.fixture()
def clock() -> Iterator[FrozenClock]:
    frozen = FrozenClock(utcnow().replace(microsecond=0))
    previous = set_clock(frozen)
    yield frozen
    set_clock(previous)


@pytest.fixture()
def world(network, tmp_path: Path, clock: FrozenClock) -> dict[str, Any]:  # noqa: F811
    """A HUB case routed to ann and bob, ordered by Dr Hartmann (ref), her colleague (deleg), a HUB site admin."""
    rt = network
    case_id = make_case(rt, tmp_path / "case", PatientID="P-CRIT", ReferringPhysicianName="HARTMANN^ANNA^^Dr.")
    headers: dict[str, dict[str, str]] = {}
    with rt.db.session() as s:
        hub = get_user(s, "ann").site_id
        ref = create_user(s, "ref", password="pw", role="referring_clinician", site_id=hub)
        ref.physician_name = CLINICIAN
        create_user(s, "deleg", password="pw", role="referring_clinician", site_id=hub)
        create_user(s, "other_ref", password="pw", role="referring_clinician", site_id=hub)
        create_user(s, "sadm", password="pw", role="site_admin", site_id=hub)
        for user in s.scalars(select(User)):
            headers[user.username] = {"Authorization": f"Bearer {create_token(s, user, name='t')[1]}"}
    client = TestClient(create_app(rt))
    return {"rt": rt, "case": case_id, "h": headers, "client": client}


def _flag(w: dict[str, Any], level: str = "1", who: str = "ann") -> dict[str, Any]:
    r = w["client"].post(f"/api/v1/cases/{w['case']}/critical-results", headers=w["h"][who],
                         json={"category": "pneumothorax", "level": level,
                               "finding": "Large right tension pneumothorax with mediastinal shift."})
    assert r.status_code == 201, r.text
    return r.json()


def _record(w: dict[str, Any], result_id: int, who: str = "ann") -> dict[str, Any]:
    r = w["client"].get(f"/api/v1/critical-results/{result_id}", headers=w["h"][who])
    assert r.status_code == 200, r.text
    return r.json()


def _kinds(w: dict[str, Any]) -> list[str]:
    with w["rt"].db.read_session() as s:
        return [e.kind for e in case_events(s, w["case"]) if e.kind.startswith("critical.")]


def test_flag_tells_the_ordering_clinician_and_records_it(world, clock) -> None:
    out = _flag(world)
    assert out["clinician"] == "ref" and out["clinician_name"] == "HARTMANN^ANNA^^Dr."
    assert out["state"] == "open" and out["level_name"] == "critical"
    assert out["ack_deadline"].startswith((clock.now() + timedelta(minutes=60)).isoformat()[:19])
    told = [(n["step"], n["role"], n["channel"], n["recipient"], n["outcome"]) for n in out["notifications"]]
    assert told == [(0, "clinician", "live", "ref", "not_connected"), (0, "clinician", "log", "ref", "logged")]
    assert _kinds(world) == ["critical.sent"]
    mine = world["client"].get("/api/v1/critical-results", headers=world["h"]["ref"]).json()
    assert [r["id"] for r in mine] == [out["id"]]
    assert world["client"].get("/api/v1/critical-results", headers=world["h"]["other_ref"]).json() == []


def test_unacknowledged_result_escalates_exactly_at_its_deadline(world, clock) -> None:
    rt = world["rt"]
    r = world["client"].put("/api/v1/me/critical-delegate", headers=world["h"]["ref"],
                            json={"delegate": "deleg", "reason": "on leave"})
    assert r.status_code == 200 and r.json()["active"], r.text
    start = clock.now()
    out = _flag(world)

    clock.set(start + timedelta(minutes=60) - timedelta(seconds=1))
    assert critical.escalate_due(rt) == 0  # one second early: nothing happens
    assert _kinds(world) == ["critical.sent"]

    clock.set(start + timedelta(minutes=60))
    assert critical.escalate_due(rt) == 1  # at the deadline: the delegate is told
    assert critical.escalate_due(rt) == 0  # at most once per step
    record = _record(world, out["id"])
    assert record["escalation_step"] == 1 and record["overdue"] is False
    step1 = [(n["role"], n["channel"], n["recipient"]) for n in record["notifications"] if n["step"] == 1]
    assert step1 == [("delegate", "live", "deleg"), ("delegate", "log", "deleg")]
    with rt.db.read_session() as s:  # the delegate may now open the case
        deleg = get_user(s, "deleg")
        assert s.scalar(select(func.count()).select_from(AccessGrant).where(
            AccessGrant.user_id == deleg.id, AccessGrant.case_id == world["case"])) == 1
    assert world["client"].get(f"/api/v1/cases/{world['case']}", headers=world["h"]["deleg"]).status_code == 200

    clock.set(start + timedelta(minutes=120))
    assert critical.escalate_due(rt) == 1  # one more window: the site's supervisors
    record = _record(world, out["id"])
    assert [(n["role"], n["recipient"]) for n in record["notifications"] if n["step"] == 2] == [
        ("supervisor", "sadm"), ("supervisor", "sadm")]
    assert record["next_escalation_at"] is None and record["overdue"] is True
    clock.advance(timedelta(days=10))
    assert critical.escalate_due(rt) == 0  # the ladder ends there
    assert _kinds(world) == ["critical.sent", "critical.escalated", "critical.escalated"]


def test_acknowledgement_closes_the_loop_and_stops_escalation(world, clock) -> None:
    start = clock.now()
    out = _flag(world, level="2")
    clock.advance(timedelta(minutes=30))
    r = world["client"].post(f"/api/v1/critical-results/{out['id']}/acknowledge", headers=world["h"]["ref"],
                             json={"note": "patient called back to ED"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "acknowledged" and r.json()["acknowledged_by"] == "ref"
    clock.set(start + timedelta(minutes=241))
    assert critical.escalate_due(world["rt"]) == 0
    again = world["client"].post(f"/api/v1/critical-results/{out['id']}/acknowledge", headers=world["h"]["ref"])
    assert again.status_code == 409 and "acknowledged by ref" in again.json()["detail"]
    record = _record(world, out["id"], who="ref")
    assert record["acknowledged_at"].startswith((start + timedelta(minutes=30)).isoformat()[:19])
    assert record["ack_note"] == "patient called back to ED"
    assert _kinds(world) == ["critical.sent", "critical.acknowledged"]
    with world["rt"].db.read_session() as s:
        ack = next(e for e in case_events(s, world["case"]) if e.kind == "critical.acknowledged")
        assert ack.actor == "ref" and ack.data["within_deadline"] is True and ack.data["minutes"] == 30.0


def test_only_recipients_acknowledge(world, clock) -> None:
    out = _flag(world)
    url = f"/api/v1/critical-results/{out['id']}/acknowledge"
    assert world["client"].post(url, headers=world["h"]["bob"]).status_code == 403  # reader: no critical.ack
    assert world["client"].post(url, headers=world["h"]["other_ref"]).status_code == 403  # not told, no relation
    assert world["client"].get(f"/api/v1/critical-results/{out['id']}",
                               headers=world["h"]["other_ref"]).status_code == 403
    # A delegate acts for the clinician even before the ladder reaches them.
    assert world["client"].put("/api/v1/me/critical-delegate", headers=world["h"]["ref"],
                               json={"delegate": "deleg"}).status_code == 200
    r = world["client"].post(url, headers=world["h"]["deleg"])
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "deleg"


def test_no_clinician_account_goes_straight_to_supervisors(world, clock) -> None:
    with world["rt"].db.session() as s:
        get_user(s, "ref").physician_name = "Someone^Else"
    out = _flag(world)
    assert out["clinician"] is None and out["escalation_step"] == 2
    steps = [(n["step"], n["channel"], n["outcome"]) for n in out["notifications"]]
    assert steps[:2] == [(0, "none", "no_recipient"), (1, "none", "no_recipient")]
    assert {(n["recipient"], n["role"]) for n in out["notifications"][2:]} == {("sadm", "supervisor")}
    assert _kinds(world) == ["critical.sent", "critical.escalated", "critical.escalated"]


def test_bad_input_and_strangers_change_nothing(world, clock) -> None:
    url = f"/api/v1/cases/{world['case']}/critical-results"
    body = {"category": "pneumothorax", "level": "9", "finding": "x"}
    r = world["client"].post(url, headers=world["h"]["ann"], json=body)
    assert r.status_code == 422 and "unknown level" in r.json()["detail"]
    assert world["client"].post(url, headers=world["h"]["ann"],
                                json={**body, "level": "1", "finding": "   "}).status_code == 422
    assert world["client"].post(url, headers=world["h"]["cat"], json={**body, "level": "1"}).status_code == 403
    assert world["client"].post(url, headers=world["h"]["ref"], json={**body, "level": "1"}).status_code == 403
    assert world["client"].get(url, headers=world["h"]["cat"]).status_code == 403
    assert world["client"].post("/api/v1/cases/999999/critical-results", headers=world["h"]["ann"],
                                json={**body, "level": "1"}).status_code == 404
    bad = world["client"].put("/api/v1/me/critical-delegate", headers=world["h"]["ref"], json={"delegate": "bob"})
    assert bad.status_code == 422 and "may not acknowledge" in bad.json()["detail"]
    with world["rt"].db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(CriticalResult)) == 0
    assert _kinds(world) == []
    levels = world["client"].get("/api/v1/critical-levels", headers=world["h"]["ref"]).json()
    assert [(v["code"], v["ack_minutes"]) for v in levels] == [("1", 60.0), ("2", 240.0), ("3", 4320.0)]


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status = 204

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_channel_records_delivery_and_failure(world, clock) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        world["rt"].settings.notify_webhook_url = f"http://127.0.0.1:{server.server_port}/hook"
        out = _flag(world)
        hooks = [n for n in out["notifications"] if n["channel"] == "webhook"]
        assert [(n["recipient"], n["outcome"]) for n in hooks] == [("ref", "sent")]
        assert _Receiver.received[-1]["kind"] == "critical.sent"
        assert _Receiver.received[-1]["data"]["critical_id"] == out["id"]
        assert "pneumothorax" in _Receiver.received[-1]["subject"]
        world["rt"].settings.notify_webhook_url = f"http://127.0.0.1:{free_port()}/nobody-listens"
        failed = _flag(world)
        assert [n["outcome"] for n in failed["notifications"] if n["channel"] == "webhook"] == ["failed"]
    finally:
        server.shutdown()
        world["rt"].settings.notify_webhook_url = None
    with world["rt"].db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(CriticalNotification).where(
            CriticalNotification.outcome == "pending")) == 0


def test_concurrent_escalation_jobs_take_each_step_once(world, clock) -> None:
    """Several scheduler processes run the job at the same moment: the conditional UPDATE lets one win."""
    start = clock.now()
    out = _flag(world)
    clock.set(start + timedelta(minutes=60))
    results: list[int] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        results.append(critical.escalate_due(world["rt"]))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 0, 0, 1]
    # No delegate: step 1 is recorded as nobody to tell and the same run passes on to the supervisors.
    assert _kinds(world) == ["critical.sent", "critical.escalated", "critical.escalated"]
    record = _record(world, out["id"])
    assert record["escalation_step"] == 2
    assert [(n["step"], n["outcome"]) for n in record["notifications"] if n["step"] > 0] == [
        (1, "no_recipient"), (2, "not_connected"), (2, "logged")]
