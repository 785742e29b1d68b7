"""Conferences: attendees reach exactly the session's cases, only around the session; decisions are case events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from readingroom.app import create_app
from readingroom.archive.models import Study
from readingroom.clock import FrozenClock, set_clock
from readingroom.collab.conference_access import open_windows
from readingroom.governance import audit, policy
from readingroom.governance.models import AccessGrant, AuditRecord
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.workflow.models import Case, CaseEvent
from tests.workflow.conftest import make_case, network  # noqa: F401  (fixture)

START = datetime.now(UTC).replace(microsecond=0) + timedelta(days=5)


@pytest.fixture()
def clock() -> Iterator[FrozenClock]:
    frozen = FrozenClock(datetime.now(UTC))
    previous = set_clock(frozen)
    yield frozen
    set_clock(previous)
    policy.forget_decisions()


@pytest.fixture()
def board(network, tmp_path: Path, clock: FrozenClock) -> Iterator[dict[str, Any]]:  # noqa: F811
    """Three cases at HUB; ann (radiologist) organises and chairs; an external oncologist and bob attend."""
    rt = network
    cases = [make_case(rt, tmp_path / f"c{i}", PatientID=f"P-BOARD-{i}") for i in range(3)]
    with rt.db.session() as s:
        create_user(s, "onc", password="pw", role="consultant", full_name="External Oncologist")
        create_user(s, "nosy", password="pw", role="consultant")
        headers = {name: {"Authorization": f"Bearer {create_token(s, get_user(s, name), name='t')[1]}"}
                   for name in ("ann", "bob", "onc", "nosy", "boss")}
        uids = {c: s.scalar(select(Study.study_uid).join(Case, Case.study_pk == Study.id).where(Case.id == c))
                for c in cases}
    client = TestClient(create_app(rt))
    yield {"rt": rt, "cases": cases, "uids": uids, "h": headers, "c": client, "clock": clock}
    audit.flush(rt.db)  # queued read audits are written before the database goes away


def _studies(b: dict[str, Any], who: str) -> set[str]:
    policy.forget_decisions()
    r = b["c"].get("/dicomweb/studies", headers=b["h"][who])
    assert r.status_code in (200, 204), r.text
    return {x["0020000D"]["Value"][0] for x in (r.json() if r.content else [])}


def _schedule(b: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {"title": "Thoracic tumour board", "site": "HUB", "kind": "tumour_board",
            "scheduled_start": START.isoformat(), "scheduled_end": (START + timedelta(hours=2)).isoformat(),
            **changes}
    return b["c"].post("/api/v1/conferences", json=body, headers=b["h"]["ann"])


def _board_with_cases(b: dict[str, Any]) -> int:
    r = _schedule(b)
    assert r.status_code == 201, r.text
    conf = r.json()
    assert conf["chair"] == "ann" and conf["organiser"] == "ann"
    for case_id in b["cases"][:2]:
        r = b["c"].post(f"/api/v1/conferences/{conf['id']}/cases", headers=b["h"]["ann"],
                        json={"case_id": case_id, "question": "Resectable? Nodal status?"})
        assert r.status_code == 201, r.text
    for name in ("onc", "bob"):
        r = b["c"].post(f"/api/v1/conferences/{conf['id']}/attendees", headers=b["h"]["ann"],
                        json={"username": name})
        assert r.status_code == 201, r.text
    return conf["id"]


def test_attendees_reach_exactly_the_sessions_cases_inside_the_window(board) -> None:
    b, c = board, board["c"]
    conf_id = _board_with_cases(b)
    listed, other = b["cases"][:2], b["cases"][2]
    # A week ahead: the list is shared, but no case opens yet.
    detail = c.get(f"/api/v1/conferences/{conf_id}", headers=b["h"]["onc"]).json()
    assert [x["case_id"] for x in detail["cases"]] == listed
    assert not any(x["visible"] for x in detail["cases"]) and detail["cases"][0]["patient_id"] is None
    assert _studies(b, "onc") == set()
    assert c.get(f"/api/v1/cases/{listed[0]}", headers=b["h"]["onc"]).status_code in (403, 404)
    # The window opens 48 hours before the start: the scheduler job makes the grants, once.
    b["clock"].set(START - timedelta(hours=47))
    assert open_windows(b["rt"]) == 6  # ann (the chair), onc and bob x two cases
    assert open_windows(b["rt"]) == 0
    assert _studies(b, "onc") == {b["uids"][x] for x in listed}
    assert c.get(f"/api/v1/cases/{listed[0]}", headers=b["h"]["onc"]).status_code == 200
    assert c.get(f"/api/v1/cases/{other}", headers=b["h"]["onc"]).status_code in (403, 404)
    detail = c.get(f"/api/v1/conferences/{conf_id}", headers=b["h"]["onc"]).json()
    assert all(x["visible"] for x in detail["cases"]) and detail["cases"][1]["patient_id"] == "P-BOARD-1"
    # Someone not attending learns nothing of the session.
    assert c.get(f"/api/v1/conferences/{conf_id}", headers=b["h"]["nosy"]).status_code == 404
    assert c.get("/api/v1/conferences", headers=b["h"]["nosy"]).json() == []
    assert [x["id"] for x in c.get("/api/v1/conferences", headers=b["h"]["onc"]).json()] == [conf_id]
    assert _studies(b, "nosy") == set()
    # After the window (24 h after the scheduled end) the access is gone.
    b["clock"].set(START + timedelta(hours=2, minutes=1) + timedelta(hours=24))
    assert _studies(b, "onc") == set()
    assert c.get(f"/api/v1/cases/{listed[0]}", headers=b["h"]["onc"]).status_code in (403, 404)
    with b["rt"].db.read_session() as s:
        grants = s.scalars(select(AccessGrant).where(AccessGrant.kind == "conference")).all()
        assert {g.case_id for g in grants} == set(listed)
        assert all(g.include_priors and g.expires_at == START + timedelta(hours=26) for g in grants)


def test_a_case_added_inside_the_window_opens_at_once(board) -> None:
    b, c = board, board["c"]
    conf_id = _board_with_cases(b)
    b["clock"].set(START - timedelta(hours=1))
    r = c.post(f"/api/v1/conferences/{conf_id}/cases", headers=b["h"]["ann"],
               json={"case_id": b["cases"][2], "question": "Progression?"})
    assert r.status_code == 201 and r.json()["position"] == 3
    assert b["uids"][b["cases"][2]] in _studies(b, "onc")


def test_checkin_presentation_and_decisions_are_recorded_as_case_events(board) -> None:
    b, c = board, board["c"]
    conf_id = _board_with_cases(b)
    first = b["cases"][0]
    url = f"/api/v1/conferences/{conf_id}"
    decision = {"outcome": "surgery", "text": "Lobectomy after mediastinal staging."}
    # Too early for check-in and decisions.
    assert c.post(f"{url}/check-in", headers=b["h"]["onc"]).status_code == 409
    assert c.post(f"{url}/cases/{first}/decision", headers=b["h"]["ann"], json=decision).status_code == 409
    b["clock"].set(START + timedelta(minutes=5))
    r = c.post(f"{url}/check-in", headers=b["h"]["onc"])
    assert r.status_code == 200 and r.json()["external"] is True
    checked = r.json()["checked_in_at"]
    b["clock"].advance(60)
    assert c.post(f"{url}/check-in", headers=b["h"]["onc"]).json()["checked_in_at"] == checked  # first counts
    assert c.post(f"{url}/check-in", headers=b["h"]["nosy"]).status_code == 404
    # Only the chair records; an attendee who may organise boards elsewhere is refused, a consultant too.
    assert c.post(f"{url}/cases/{first}/decision", headers=b["h"]["bob"], json=decision).status_code == 403
    assert c.post(f"{url}/cases/{first}/decision", headers=b["h"]["onc"], json=decision).status_code == 403
    assert c.post(f"{url}/cases/{first}/decision", headers=b["h"]["ann"],
                  json={"outcome": "amputate", "text": "x"}).status_code == 422
    assert c.post(f"{url}/cases/{b['cases'][2]}/decision", headers=b["h"]["ann"], json=decision).status_code == 404
    r = c.post(f"{url}/cases/{first}/presented", headers=b["h"]["ann"])
    assert r.status_code == 200 and r.json()["presented_at"]
    r = c.post(f"{url}/cases/{first}/decision", headers=b["h"]["ann"], json=decision)
    assert r.status_code == 200, r.text
    assert r.json()["decision_outcome"] == "surgery" and r.json()["decided_by"] == "ann"
    # A decision without an explicit "presented" marks it presented too.
    second = b["cases"][1]
    assert c.post(f"{url}/cases/{second}/decision", headers=b["h"]["ann"],
                  json={"outcome": "surveillance", "text": "CT in 3 months."}).status_code == 200
    detail = c.get(url, headers=b["h"]["bob"]).json()
    assert [(x["decision_outcome"], bool(x["presented_at"])) for x in detail["cases"]] == [
        ("surgery", True), ("surveillance", True)]
    attendance = {a["username"]: a["checked_in_at"] for a in detail["attendees"]}
    assert attendance["onc"] == checked and attendance["bob"] is None and "ann" in attendance
    with b["rt"].db.read_session() as s:
        events = s.execute(select(CaseEvent.case_id, CaseEvent.kind, CaseEvent.actor, CaseEvent.data)
                           .where(CaseEvent.kind.like("conference.%")).order_by(CaseEvent.id)).all()
        kinds = [(e.case_id, e.kind) for e in events]
        assert kinds == [(first, "conference.listed"), (second, "conference.listed"),
                         (first, "conference.presented"), (first, "conference.decision"),
                         (second, "conference.presented"), (second, "conference.decision")]
        assert events[3].data["text"] == decision["text"] and events[3].actor == "ann"
        audited = s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action == "case.conference.decision"))
        assert audited == 2
    # Attendees (and everyone who can see the case) are told live; the event carries ids, not the text.
    from readingroom.collab import live

    decided = [e for e in live.hub(b["rt"]).since(0) if e.kind == "conference.decision"]
    with b["rt"].db.read_session() as s:
        onc = get_user(s, "onc").id
    assert [e.case_id for e in decided] == [first, second] and all(onc in e.user_ids for e in decided)
    assert all("text" not in e.data for e in decided)
    # The case's own timeline shows the decision to everyone who can see the case.
    timeline = c.get(f"/api/v1/cases/{first}", headers=b["h"]["ann"]).json()["events"]
    assert "conference.decision" in [e["kind"] for e in timeline]


def test_bad_input_and_refusals_store_nothing(board) -> None:
    b, c = board, board["c"]
    assert _schedule(b, scheduled_end=(START - timedelta(hours=1)).isoformat()).status_code == 422
    assert _schedule(b, site="NOPE").status_code == 422
    assert _schedule(b, scheduled_start="2030-01-01T10:00:00").status_code == 422  # no time zone
    assert _schedule(b, chair="ghost").status_code == 422
    assert c.post("/api/v1/conferences", headers=b["h"]["onc"], json={
        "title": "x", "site": "HUB", "scheduled_start": START.isoformat(),
        "scheduled_end": (START + timedelta(hours=1)).isoformat()}).status_code == 403
    conf_id = _board_with_cases(b)
    url = f"/api/v1/conferences/{conf_id}"
    assert c.post(f"{url}/cases", headers=b["h"]["ann"],
                  json={"case_id": b["cases"][0], "question": "again"}).status_code == 409
    assert c.post(f"{url}/cases", headers=b["h"]["ann"], json={"case_id": 999999, "question": "?"}).status_code == 404
    assert c.post(f"{url}/cases", headers=b["h"]["bob"],  # an attendee, not the organiser
                  json={"case_id": b["cases"][2], "question": "?"}).status_code == 403
    assert c.post(f"{url}/attendees", headers=b["h"]["ann"], json={"username": "onc"}).status_code == 409
    assert c.post(f"{url}/attendees", headers=b["h"]["ann"], json={"username": "ghost"}).status_code == 422
    with b["rt"].db.read_session() as s:
        from readingroom.collab.conferences_models import Conference, ConferenceAttendee, ConferenceCase

        assert s.scalar(select(func.count()).select_from(Conference)) == 1
        assert s.scalar(select(func.count()).select_from(ConferenceCase)) == 2
        assert s.scalar(select(func.count()).select_from(ConferenceAttendee)) == 3
