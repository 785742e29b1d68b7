"""Referrals: partners see only their own, the receiving site answers within its SLA, accepted ones become cases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from readingroom.analytics.turnaround import turnaround
from readingroom.app import create_app
from readingroom.archive.ingest import ingest_path
from readingroom.archive.stability import complete_stable_studies
from readingroom.clock import FrozenClock, set_clock
from readingroom.collab.referrals import flag_overdue
from readingroom.collab.referrals_models import Referral, ReferralEvent
from readingroom.governance import audit, policy
from readingroom.governance.models import AuditRecord, Site
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.workflow import jobs
from readingroom.workflow.cases import Actor, claim, transition
from readingroom.workflow.models import Case, CaseCandidate, CaseEvent, ExceptionItem
from tests.support.dicom import new_study
from tests.workflow.conftest import network  # noqa: F401  (fixture)

PATIENT = {"patient_id": "EXT-991", "issuer_of_patient_id": "PARTNER-A", "patient_name": "Doe^Jane",
           "birth_date": "1961-04-02", "sex": "F"}


@pytest.fixture()
def clock() -> Iterator[FrozenClock]:
    frozen = FrozenClock(datetime.now(UTC))
    previous = set_clock(frozen)
    yield frozen
    set_clock(previous)
    policy.forget_decisions()


@pytest.fixture()
def portal(network, clock: FrozenClock) -> Iterator[dict[str, Any]]:  # noqa: F811
    """Partners pa and pb (two organisations); site admins of HUB (receiving) and LKS."""
    rt = network
    with rt.db.session() as s:
        hub = s.scalar(select(Site.id).where(Site.code == "HUB"))
        lks = s.scalar(select(Site.id).where(Site.code == "LKS"))
        create_user(s, "pa", password="pw", role="partner", full_name="Partner A clinic")
        create_user(s, "pb", password="pw", role="partner", full_name="Partner B clinic")
        create_user(s, "hubadm", password="pw", role="site_admin", site_id=hub)
        create_user(s, "lksadm", password="pw", role="site_admin", site_id=lks)
        headers = {n: {"Authorization": f"Bearer {create_token(s, get_user(s, n), name='t')[1]}"}
                   for n in ("pa", "pb", "hubadm", "lksadm", "ann")}
    yield {"rt": rt, "c": TestClient(create_app(rt)), "h": headers, "clock": clock}
    audit.flush(rt.db)  # queued read audits are written before the database goes away


def _refer(p: dict[str, Any], who: str = "pa", **changes: Any) -> dict[str, Any]:
    body = {"receiving_site": "HUB", **PATIENT, "clinical_question": "Staging of a lung mass?",
            "priority": "urgent", "requested_procedure": "CT chest with contrast", "modality": "CT",
            "body_part": "CHEST", "images": "to_follow", "referring_physician": "Meyer^Tom", **changes}
    r = p["c"].post("/api/v1/referrals", json=body, headers=p["h"][who])
    assert r.status_code == 201, r.text
    return r.json()


def _send_images(p: dict[str, Any], tmp_path: Path, accession: str) -> None:
    """The partner's images arrive (as over STOW/DIMSE) with the referral's accession number, then intake."""
    paths = new_study("CT_small.dcm", tmp_path / accession, 2, AccessionNumber=accession, PatientID="EXT-991",
                      InstitutionName="Riverside University Medical Center")
    for path in paths:
        assert ingest_path(p["rt"], path, actor="partner").ok
    assert complete_stable_studies(p["rt"], stable_age=0)
    jobs.intake(p["rt"])


def _status(p: dict[str, Any], referral_id: int, who: str = "pa") -> dict[str, Any]:
    r = p["c"].get(f"/api/v1/referrals/{referral_id}", headers=p["h"][who])
    assert r.status_code == 200, r.text
    return r.json()


def test_a_partner_cannot_see_another_partners_referrals(portal) -> None:
    p, c = portal, portal["c"]
    mine = _refer(p, "pa")
    theirs = _refer(p, "pb", patient_id="EXT-B1")
    assert mine["accession_number"] != theirs["accession_number"]
    assert c.get(f"/api/v1/referrals/{theirs['id']}", headers=p["h"]["pa"]).status_code == 404
    assert c.get(f"/api/v1/referrals/{mine['id']}", headers=p["h"]["pb"]).status_code == 404
    assert [r["id"] for r in c.get("/api/v1/referrals", headers=p["h"]["pa"]).json()] == [mine["id"]]
    assert [r["id"] for r in c.get("/api/v1/referrals", headers=p["h"]["pb"]).json()] == [theirs["id"]]
    # The receiving site sees both; another site's administrator sees neither.
    assert {r["id"] for r in c.get("/api/v1/referrals", headers=p["h"]["hubadm"]).json()} == {mine["id"],
                                                                                               theirs["id"]}
    assert c.get("/api/v1/referrals", headers=p["h"]["lksadm"]).json() == []
    assert c.get(f"/api/v1/referrals/{mine['id']}", headers=p["h"]["lksadm"]).status_code == 404
    assert c.post(f"/api/v1/referrals/{mine['id']}/accept", headers=p["h"]["lksadm"]).status_code == 404
    # Partners cannot answer referrals, and radiologists cannot submit them.
    assert c.post(f"/api/v1/referrals/{mine['id']}/accept", headers=p["h"]["pa"]).status_code == 403
    assert c.get("/api/v1/referrals", headers=p["h"]["ann"]).status_code == 403


def test_accept_creates_a_case_and_the_partner_follows_it_to_the_report(portal, tmp_path: Path) -> None:
    p, c = portal, portal["c"]
    referral = _refer(p)
    assert referral["status"] == "received" and referral["state"] == "received"
    p["clock"].advance(300)  # the receiving site answers five minutes later
    r = c.post(f"/api/v1/referrals/{referral['id']}/accept", headers=p["h"]["hubadm"])
    assert r.status_code == 200, r.text
    case_id = r.json()["case_id"]
    assert c.post(f"/api/v1/referrals/{referral['id']}/accept", headers=p["h"]["hubadm"]).status_code == 409
    with p["rt"].db.read_session() as s:
        [stage] = turnaround(s, "referral_received_to_accepted")
        assert (stage["count"], stage["p50"]) == (1, 5.0)
    with p["rt"].db.read_session() as s:
        case = s.get(Case, case_id)
        assert (case.state, case.accession_number, case.priority) == ("waiting", referral["accession_number"],
                                                                      "urgent")
        assert case.order_fields["patient_id"] == "EXT-991"
    assert _status(p, referral["id"])["status"] == "accepted"
    # The partner may follow the case (a referral grant), the other partner may not.
    assert c.get(f"/api/v1/cases/{case_id}", headers=p["h"]["pa"]).status_code == 200
    assert c.get(f"/api/v1/cases/{case_id}", headers=p["h"]["pb"]).status_code in (403, 404)

    _send_images(p, tmp_path, referral["accession_number"])
    with p["rt"].db.read_session() as s:
        case = s.get(Case, case_id)
        assert case.study_pk is not None and case.state in ("available", "new", "exception")
        assert s.scalar(select(func.count()).select_from(Case)) == 1  # attached, no second case
    assert _status(p, referral["id"])["status"] == "images_available"
    policy.forget_decisions()
    found = c.get("/dicomweb/studies", headers=p["h"]["pa"]).json()
    assert [x["00080050"]["Value"][0] for x in found] == [referral["accession_number"]]
    other = c.get("/dicomweb/studies", headers=p["h"]["pb"])
    assert other.status_code == 204 or other.json() == []

    with p["rt"].db.session() as s:
        reader = s.scalar(select(CaseCandidate.user_id).where(CaseCandidate.case_id == case_id).limit(1))
        assert reader is not None, "the referral's case was not routed"
        name = s.get(type(get_user(s, "ann")), reader).username
        claim(s, case_id, Actor(name, reader))
    p["clock"].advance(600)
    assert _status(p, referral["id"])["status"] == "in_reading"
    with p["rt"].db.session() as s:
        transition(s, case_id, "completed", Actor(name, reader))
    final = _status(p, referral["id"])
    assert final["status"] == "reported"
    assert [x["status"] for x in final["timeline"]] == ["received", "accepted", "images_available", "in_reading",
                                                        "reported"]
    assert final["report"]["link"] == f"/api/v1/cases/{case_id}/report" and final["report"]["kind"] == "final"
    with p["rt"].db.read_session() as s:
        kinds = [k for (k,) in s.execute(select(CaseEvent.kind).where(CaseEvent.case_id == case_id)
                                         .order_by(CaseEvent.id))]
        assert kinds[:4] == ["ordered", "referral.received", "referral.accepted", "images_arrived"]
        assert [k for (k,) in s.execute(select(ReferralEvent.kind).order_by(ReferralEvent.id))] == [
            "received", "accepted"]


def test_the_partner_receives_the_signed_report_text(portal, tmp_path: Path) -> None:
    reports = pytest.importorskip("readingroom.collab.reports")
    p, c = portal, portal["c"]
    referral = _refer(p)
    case_id = c.post(f"/api/v1/referrals/{referral['id']}/accept", headers=p["h"]["hubadm"]).json()["case_id"]
    _send_images(p, tmp_path, referral["accession_number"])
    with p["rt"].db.session() as s:
        reader = s.scalar(select(CaseCandidate.user_id).where(CaseCandidate.case_id == case_id).limit(1))
        actor = Actor(s.get(type(get_user(s, "ann")), reader).username, reader)
        case = claim(s, case_id, actor)
        report = reports.save_draft(s, case, actor, 0, {"findings": "A 2 cm spiculated mass, right upper lobe.",
                                                        "impression": "Suspicious for malignancy."})
        report = report[0] if isinstance(report, tuple) else report
        reports.sign(s, s.get(Case, case_id), actor, report.version, "final")
    final = _status(p, referral["id"])
    assert final["status"] == "reported"
    assert final["report"]["kind"] == "final" and "spiculated mass" in final["report"]["text"]
    assert "Suspicious for malignancy." in final["report"]["text"]


def test_decline_with_a_reason(portal) -> None:
    p, c = portal, portal["c"]
    referral = _refer(p, images="scan_requested")
    url = f"/api/v1/referrals/{referral['id']}"
    assert c.post(f"{url}/decline", headers=p["h"]["hubadm"], json={"reason": "no"}).status_code == 422
    assert c.post(f"{url}/decline", headers=p["h"]["hubadm"], json={}).status_code == 422
    assert _status(p, referral["id"])["state"] == "received"
    r = c.post(f"{url}/decline", headers=p["h"]["hubadm"], json={"reason": "No PET-CT capacity this month."})
    assert r.status_code == 200 and r.json()["state"] == "declined"
    seen = _status(p, referral["id"])
    assert seen["status"] == "declined" and seen["decline_reason"] == "No PET-CT capacity this month."
    last = seen["timeline"][-1]
    assert (last["status"], last["detail"]) == ("declined", {"reason": "No PET-CT capacity this month."})
    assert [x["status"] for x in seen["timeline"]] == ["received", "declined"]
    assert seen["case_id"] is None and seen["report"] is None
    audit.flush(p["rt"].db)
    with p["rt"].db.read_session() as s:  # reading a referral (patient data) is audited
        reads = s.scalars(select(AuditRecord.actor).where(AuditRecord.action == "referral.read",
                                                          AuditRecord.resource_id == str(referral["id"]))).all()
        assert set(reads) == {"pa"} and s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action == "referral.decline")) == 1
    assert c.post(f"{url}/accept", headers=p["h"]["hubadm"]).status_code == 409
    with p["rt"].db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == 0


def test_unanswered_past_the_sla_goes_to_the_exception_queue_once(portal) -> None:
    p, c = portal, portal["c"]
    start = p["clock"].now()
    routine = _refer(p, priority="routine")  # 72 h
    stat = _refer(p, priority="stat", patient_id="EXT-2")  # 4 h
    assert flag_overdue(p["rt"]) == 0
    p["clock"].set(start + timedelta(hours=4, seconds=1))
    assert flag_overdue(p["rt"]) == 1
    assert flag_overdue(p["rt"]) == 0
    p["clock"].set(start + timedelta(hours=80))
    assert flag_overdue(p["rt"]) == 1
    assert flag_overdue(p["rt"]) == 0
    with p["rt"].db.read_session() as s:
        items = s.scalars(select(ExceptionItem).where(ExceptionItem.kind == "referral_overdue")
                          .order_by(ExceptionItem.id)).all()
        assert len(items) == 2 and f"referral #{stat['id']}" in items[0].reason
        assert [r.sla_breached_at is not None for r in s.scalars(select(Referral).order_by(Referral.id))] == [
            True, True]
    # Answering the referral closes its exception item.
    assert c.post(f"/api/v1/referrals/{routine['id']}/accept", headers=p["h"]["hubadm"]).status_code == 200
    with p["rt"].db.read_session() as s:
        states = [i.state for i in s.scalars(select(ExceptionItem).where(ExceptionItem.kind == "referral_overdue")
                                             .order_by(ExceptionItem.id))]
        assert states == ["open", "resolved"]


def test_images_sent_before_the_acceptance_are_adopted(portal, tmp_path: Path) -> None:
    p, c = portal, portal["c"]
    referral = _refer(p)
    _send_images(p, tmp_path, referral["accession_number"])
    with p["rt"].db.read_session() as s:
        early = s.scalar(select(Case.id).where(Case.accession_number == referral["accession_number"]))
    assert early is not None
    r = c.post(f"/api/v1/referrals/{referral['id']}/accept", headers=p["h"]["hubadm"])
    assert r.status_code == 200 and r.json()["case_id"] == early
    assert _status(p, referral["id"])["status"] == "images_available"


def test_bad_referrals_are_refused_and_store_nothing(portal) -> None:
    p, c = portal, portal["c"]
    base = {"receiving_site": "HUB", **PATIENT, "clinical_question": "Staging?", "priority": "urgent",
            "requested_procedure": "CT chest", "modality": "CT", "images": "to_follow"}
    for change in ({"receiving_site": "NOPE"}, {"sex": "X"}, {"birth_date": "2999-01-01"},
                   {"images": "by_post"}, {"priority": "whenever"}, {"clinical_question": "   "},
                   {"modality": "C T"}, {"birth_date": "1961-02-30"}):
        r = c.post("/api/v1/referrals", json={**base, **change}, headers=p["h"]["pa"])
        assert r.status_code == 422, (change, r.status_code, r.text)
    assert c.post("/api/v1/referrals", json=base, headers=p["h"]["hubadm"]).status_code == 403
    with p["rt"].db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Referral)) == 0
