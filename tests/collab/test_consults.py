"""Consults and second opinions: routed by the worklist engine, scoped access for the consultant, answers on record."""

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
from readingroom.collab import after_final
from readingroom.collab.consults_models import Consult
from readingroom.governance import policy
from readingroom.governance.models import AccessGrant
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.workflow.cases import Actor, claim
from readingroom.workflow.models import Case, CaseEvent
from readingroom.workflow.readers import set_reader
from tests.support.dicom import new_study
from tests.workflow.conftest import ALWAYS, make_case, network  # noqa: F401  (fixture)

HUB_NAME = "Riverside University Medical Center"


@pytest.fixture()
def clock() -> Iterator[FrozenClock]:
    frozen = FrozenClock(datetime.now(UTC))
    previous = set_clock(frozen)
    yield frozen
    set_clock(previous)
    policy.forget_decisions()


@pytest.fixture()
def ward(network, tmp_path: Path, clock: FrozenClock) -> dict[str, Any]:  # noqa: F811
    """A HUB case (with a prior of the same patient) claimed by bob; another HUB case; an external consultant."""
    from readingroom.archive.ingest import ingest_path
    from readingroom.archive.stability import complete_stable_studies
    from readingroom.workflow import jobs

    rt = network
    prior = new_study("CT_small.dcm", tmp_path / "prior", 1, InstitutionName=HUB_NAME, PatientID="P-CONSULT",
                      StudyDate="20190101")
    assert ingest_path(rt, prior[0], actor="t").ok
    assert complete_stable_studies(rt, stable_age=0) and jobs.intake(rt)  # read long ago
    case_id = make_case(rt, tmp_path / "c1", PatientID="P-CONSULT")
    other_id = make_case(rt, tmp_path / "c2", PatientID="P-OTHER")
    with rt.db.session() as s:
        create_user(s, "drx", password="pw", role="consultant", full_name="External neuroradiologist")
        create_user(s, "nosy", password="pw", role="consultant")
        set_reader(s, "drx", timezone="UTC", subspecialties=["neuro"], shifts=ALWAYS, licences={"US-NY": None},
                   credentials={"HUB": None})
        claim(s, case_id, Actor("bob", get_user(s, "bob").id))
        headers = {n: {"Authorization": f"Bearer {create_token(s, get_user(s, n), name='t')[1]}"}
                   for n in ("ann", "bob", "cat", "boss", "drx", "nosy")}
        uids = {c: s.scalar(select(Study.study_uid).join(Case, Case.study_pk == Study.id).where(Case.id == c))
                for c in (case_id, other_id)}
        prior_uid = s.scalar(select(Study.study_uid).where(Study.study_date == "20190101"))
    return {"rt": rt, "case": case_id, "other": other_id, "uids": uids, "prior": prior_uid, "h": headers,
            "c": TestClient(create_app(rt)), "clock": clock}


def _ask(w: dict[str, Any], who: str = "bob", **body: Any) -> Any:
    return w["c"].post(f"/api/v1/cases/{w['case']}/consults", headers=w["h"][who],
                       json={"question": "Is this a cavernoma?", **body})


def _studies(w: dict[str, Any], who: str) -> set[str]:
    policy.forget_decisions()
    r = w["c"].get("/dicomweb/studies", headers=w["h"][who])
    assert r.status_code in (200, 204), r.text
    return {x["0020000D"]["Value"][0] for x in (r.json() if r.content else [])}


def _wado(w: dict[str, Any], who: str, uid: str) -> int:
    policy.forget_decisions()
    return w["c"].get(f"/dicomweb/studies/{uid}/metadata", headers=w["h"][who]).status_code


def test_consult_is_routed_by_subspecialty_with_an_explanation(ward: dict[str, Any]) -> None:
    r = _ask(ward, subspecialty="neuro", priority="stat")
    assert r.status_code == 201, r.text
    consult = r.json()
    assert consult["state"] == "open" and consult["case_state"] == "available" and consult["priority"] == "stat"
    with ward["rt"].db.read_session() as s:
        child = s.get(Case, consult["case_id"])
        assert (child.kind, child.parent_case_id, child.required_subspecialty) == ("consult", ward["case"], "neuro")
        routed = s.scalars(select(CaseEvent).where(CaseEvent.case_id == child.id, CaseEvent.kind == "routed")).one()
        kinds = list(s.scalars(select(CaseEvent.kind).where(CaseEvent.case_id == ward["case"])))
    why = routed.data
    assert why["requires"]["subspecialty"] == ["neuro"]
    assert "ann" in why["eligible"] and "bob" not in why["eligible"] and "drx" in why["eligible"]
    assert {e["code"] for e in why["excluded"]["bob"]} >= {"CONFLICT", "SUBSPECIALTY"}  # asked it; reads body
    assert why["sla"]["deadline"] and why["priority"]["value"] == "stat"
    assert "consult.requested" in kinds
    # On ann's worklist; she takes it and answers; the answer is listed on the parent case.
    listed = ward["c"].get("/api/v1/worklist", headers=ward["h"]["ann"]).json()
    assert consult["case_id"] in {row["id"] for row in listed}
    assert ward["c"].post(f"/api/v1/consults/{consult['case_id']}/accept", headers=ward["h"]["ann"]).status_code == 200
    r = ward["c"].post(f"/api/v1/consults/{consult['case_id']}/answer", headers=ward["h"]["ann"],
                       json={"text": "Yes: popcorn lesion with haemosiderin rim."})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "answered" and r.json()["case_state"] == "final"
    on_case = ward["c"].get(f"/api/v1/cases/{ward['case']}/consults", headers=ward["h"]["bob"]).json()
    assert [(c["answer"], c["answered_by"]) for c in on_case] == [("Yes: popcorn lesion with haemosiderin rim.",
                                                                   "ann")]
    timeline = ward["c"].get(f"/api/v1/cases/{ward['case']}", headers=ward["h"]["bob"]).json()["events"]
    answered = [e for e in timeline if e["kind"] == "consult.answered"]
    assert len(answered) == 1 and answered[0]["actor"] == "ann"
    # A second answer is refused and changes nothing.
    again = ward["c"].post(f"/api/v1/consults/{consult['case_id']}/answer", headers=ward["h"]["ann"],
                           json={"text": "changed my mind"})
    assert again.status_code == 403
    with ward["rt"].db.read_session() as s:
        assert s.scalar(select(Consult.answer).where(Consult.child_case_id == consult["case_id"])).startswith("Yes")


def test_named_expert_gets_it_and_reaches_only_that_case_until_the_grace_period_ends(ward: dict[str, Any]) -> None:
    w = ward
    before = _studies(w, "drx")
    assert before == set()
    r = _ask(w, kind="second_opinion", expert="drx")
    assert r.status_code == 201, r.text
    consult = r.json()
    assert consult["assignee"] == "drx" and "drx" in consult["routing_summary"]
    parent_uid, other_uid = w["uids"][w["case"]], w["uids"][w["other"]]
    # The consultant sees the parent case, its study and the patient's prior ...
    assert _studies(w, "drx") == {parent_uid, w["prior"]}
    assert _wado(w, "drx", parent_uid) == 200 and _wado(w, "drx", w["prior"]) == 200
    assert w["c"].get(f"/api/v1/cases/{w['case']}", headers=w["h"]["drx"]).status_code == 200
    # ... but not another case, through any door.
    assert _wado(w, "drx", other_uid) == 404
    assert w["c"].get(f"/api/v1/cases/{w['other']}", headers=w["h"]["drx"]).status_code in (403, 404)
    assert w["c"].get(f"/api/v1/cases/{w['other']}/consults", headers=w["h"]["drx"]).status_code == 404
    # Another consultant sees nothing of it.
    assert _studies(w, "nosy") == set() and _wado(w, "nosy", parent_uid) == 404
    assert w["c"].post(f"/api/v1/consults/{consult['case_id']}/answer", headers=w["h"]["nosy"],
                       json={"text": "me too"}).status_code == 404
    mine = w["c"].get("/api/v1/consults", headers=w["h"]["drx"]).json()
    assert [c["case_id"] for c in mine] == [consult["case_id"]]
    r = w["c"].post(f"/api/v1/consults/{consult['case_id']}/answer", headers=w["h"]["drx"],
                    json={"text": "Agree with the primary read.", "agrees": True})
    assert r.status_code == 200, r.text
    assert _wado(w, "drx", parent_uid) == 200  # grace period for follow-up questions
    w["clock"].advance(timedelta(hours=w["rt"].settings.consult_access_grace_hours, seconds=1))
    assert _wado(w, "drx", parent_uid) == 404 and _studies(w, "drx") == set()
    assert w["c"].get(f"/api/v1/cases/{w['case']}", headers=w["h"]["drx"]).status_code in (403, 404)


def test_pull_consult_claimed_on_the_worklist_gets_access_from_the_sync_job(ward: dict[str, Any]) -> None:
    w = ward
    consult = _ask(w, subspecialty="neuro").json()
    with w["rt"].db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(AccessGrant)
                        .where(AccessGrant.case_id == w["case"], AccessGrant.revoked_at.is_(None))) == 0
    assert w["c"].post(f"/api/v1/cases/{consult['case_id']}/claim", headers=w["h"]["ann"]).status_code == 200
    assert after_final.sync_access(w["rt"]) == 1
    assert after_final.sync_access(w["rt"]) == 0  # idempotent
    with w["rt"].db.read_session() as s:
        grants = s.scalars(select(AccessGrant).where(AccessGrant.case_id == w["case"])).all()
    assert [(g.user_id is not None, g.kind, g.revoked_at) for g in grants] == [(True, "consult", None)]
    # A supervisor cancels the consult: the grant ends and the parent says so.
    assert w["c"].post(f"/api/v1/cases/{consult['case_id']}/cancel", headers=w["h"]["boss"],
                       json={"reason": "asked in error"}).status_code == 200
    after_final.sync_access(w["rt"])
    with w["rt"].db.read_session() as s:
        assert s.scalar(select(AccessGrant.revoked_at).where(AccessGrant.case_id == w["case"])) is not None
        assert s.scalar(select(Consult.state)) == "cancelled"
        assert "consult.cancelled" in set(s.scalars(select(CaseEvent.kind).where(CaseEvent.case_id == w["case"])))


@pytest.mark.parametrize(("body", "who", "status"), [
    ({"expert": "nobody"}, "bob", 422),  # unknown expert
    ({"expert": "nosy"}, "bob", 422),  # no reader profile: licences and credentials unknown
    ({"expert": "bob"}, "bob", 422),  # oneself
    ({"priority": "whenever"}, "bob", 422),
    ({"question": ""}, "bob", 422),
    ({}, "cat", 403),  # cat may request consults, but the case is not routed to her
    ({}, "drx", 403),  # consultants answer consults, they do not ask for them
])
def test_bad_requests_are_refused_and_store_nothing(ward: dict[str, Any], body: dict[str, Any], who: str,
                                                    status: int) -> None:
    with ward["rt"].db.read_session() as s:
        cases_before = s.scalar(select(func.count()).select_from(Case))
    r = _ask(ward, who, **body)
    assert r.status_code in ((status, 404) if status == 403 else (status,)), r.text
    assert r.json()["detail"]
    with ward["rt"].db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Case)) == cases_before
        assert s.scalar(select(func.count()).select_from(Consult)) == 0


def test_a_consult_of_a_consult_is_refused(ward: dict[str, Any]) -> None:
    child = _ask(ward, expert="drx").json()["case_id"]
    r = ward["c"].post(f"/api/v1/cases/{child}/consults", headers=ward["h"]["boss"], json={"question": "?"})
    assert r.status_code == 422 and "itself a consult" in r.json()["detail"]
