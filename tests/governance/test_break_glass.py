"""Break-the-glass: the grant, its flagged audit record, the review, and the end-to-end effect on DICOMweb."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from readingroom.app import create_app
from readingroom.archive.ingest import ingest_path
from readingroom.clock import utcnow
from readingroom.governance.models import AccessGrant, AuditRecord, SiteMembership
from readingroom.governance.sites import create_site
from readingroom.governance.users import create_token, create_user
from tests.support.dicom import new_study

REASON = "unconscious patient in the emergency department, prior CT needed"


@pytest.fixture()
def api(rt: Any, tmp_path: Path) -> tuple[TestClient, dict[str, Any]]:
    with rt.db.session() as s:
        site = create_site(s, "ALPHA", "Alpha General", institution_names=["Alpha General"])
        s.flush()
        site_id = site.id
        ctx: dict[str, Any] = {}
        for name, role in (("rad.osei", "radiologist"), ("audra", "auditor"), ("aud.two", "auditor"),
                           ("root", "admin"), ("dual", "radiologist")):
            user = create_user(s, name, password="pw-" + name, role=role)
            s.flush()
            ctx[name] = {"Authorization": f"Bearer {create_token(s, user)[1]}"}
            ctx[name + ".id"] = user.id
        # a radiologist who is also the auditor at a site: may break the glass and review, but not their own
        s.execute(insert(SiteMembership).values(user_id=ctx["dual.id"], site_id=site_id, role="auditor",
                                                created_at=utcnow()))
    paths = new_study("CT_small.dcm", tmp_path / "study", 1, InstitutionName="Alpha General", PatientID="PAT-9")
    ingest_path(rt, paths[0], actor="test")
    with rt.db.read_session() as s:
        from readingroom.archive.models import Study

        ctx["study"] = s.scalar(select(Study.study_uid))
    return TestClient(create_app(rt)), ctx


def _open(client: TestClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post("/api/v1/access/break-glass", json=body, headers=headers)


def test_break_glass_grants_time_limited_access_and_flags_it(api: Any, rt: Any) -> None:
    client, ctx = api
    before = utcnow()
    response = _open(client, ctx["rad.osei"], study_uid=ctx["study"], reason=REASON)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["review_state"] == "pending" and body["include_priors"] is True and body["kind"] == "break_glass"
    with rt.db.read_session() as s:
        grant = s.get(AccessGrant, body["grant_id"])
        record = s.scalars(select(AuditRecord).where(AuditRecord.action == "access.break_glass")).one()
    assert grant is not None and grant.user_id == ctx["rad.osei.id"] and grant.study_uid == ctx["study"]
    minutes = rt.settings.break_glass_minutes
    assert grant.expires_at is not None
    assert before + timedelta(minutes=minutes) <= grant.expires_at <= utcnow() + timedelta(minutes=minutes)
    assert record.flagged and record.reason == REASON and record.actor == "rad.osei"
    assert record.patient_id == "PAT-9" and record.detail["grant_id"] == grant.id


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"reason": REASON}, 422, "exactly one of study_uid or case_id"),
    ({"study_uid": "1.2.3", "case_id": 4, "reason": REASON}, 422, "exactly one"),
    ({"study_uid": "{study}", "reason": "emergency"}, 422, "state why you need access"),
    ({"study_uid": "{study}", "reason": "aaaaaaaaaaaaaaaaaaaaaaa aaa aaa"}, 422, "state why"),
    ({"study_uid": "{study}"}, 422, "reason"),
    ({"study_uid": "{study}", "reason": REASON + "\x00\x1b[2J"}, 422, "control characters"),
    ({"study_uid": "1.2.3.4.5.6", "reason": REASON}, 404, "study 1.2.3.4.5.6 not found"),
    ({"case_id": 999999, "reason": REASON}, 404, "case 999999 not found"),
])
def test_bad_requests_are_refused_with_a_reason(api: Any, rt: Any, body: dict[str, Any], status: int,
                                                words: str) -> None:
    client, ctx = api
    filled = {k: (v.format(study=ctx["study"]) if isinstance(v, str) else v) for k, v in body.items()}
    response = _open(client, ctx["rad.osei"], **filled)
    assert response.status_code == status and words in response.text
    with rt.db.read_session() as s:
        assert s.scalar(select(AccessGrant.id)) is None  # nothing granted


def test_roles_without_break_glass_are_refused(api: Any) -> None:
    client, ctx = api
    assert _open(client, ctx["audra"], study_uid=ctx["study"], reason=REASON).status_code == 403
    assert _open(client, {}, study_uid=ctx["study"], reason=REASON).status_code == 401


def test_review_lifecycle(api: Any, rt: Any) -> None:
    client, ctx = api
    grant_id = _open(client, ctx["rad.osei"], study_uid=ctx["study"], reason=REASON).json()["grant_id"]
    assert client.get("/api/v1/access/reviews", headers=ctx["rad.osei"]).status_code == 403
    pending = client.get("/api/v1/access/reviews", params={"state": "pending"}, headers=ctx["audra"]).json()
    assert [(g["grant_id"], g["username"], g["reason"]) for g in pending] == [(grant_id, "rad.osei", REASON)]
    assert client.get("/api/v1/access/reviews", params={"state": "bogus"}, headers=ctx["audra"]).status_code == 422
    url = f"/api/v1/access/reviews/{grant_id}"
    assert client.post(url, json={"note": ""}, headers=ctx["audra"]).status_code == 422
    done = client.post(url, json={"note": "ED admission confirmed with the attending"}, headers=ctx["audra"])
    assert done.status_code == 200 and done.json()["review_state"] == "reviewed"
    assert done.json()["reviewed_by"] == "audra" and done.json()["revoked_at"] is None
    again = client.post(url, json={"note": "second look"}, headers=ctx["aud.two"])
    assert again.status_code == 409 and "already reviewed" in again.text
    assert client.post("/api/v1/access/reviews/424242", json={"note": "x"}, headers=ctx["audra"]).status_code == 404
    assert client.get("/api/v1/access/reviews", headers=ctx["audra"]).json() == []
    reviewed = client.get("/api/v1/access/reviews", params={"state": "reviewed"}, headers=ctx["audra"]).json()
    assert [g["grant_id"] for g in reviewed] == [grant_id]
    with rt.db.read_session() as s:
        record = s.scalars(select(AuditRecord).where(AuditRecord.action == "access.review")).one()
    assert record.actor == "audra" and record.resource_id == str(grant_id) and record.patient_id == "PAT-9"
    assert record.detail["grantee"] == "rad.osei" and record.detail["revoked"] is False


def test_a_review_can_revoke_and_nobody_reviews_their_own(api: Any, rt: Any) -> None:
    client, ctx = api
    own = _open(client, ctx["dual"], study_uid=ctx["study"], reason=REASON)
    assert own.status_code == 201
    url = f"/api/v1/access/reviews/{own.json()['grant_id']}"
    refused = client.post(url, json={"note": "looks fine to me"}, headers=ctx["dual"])
    assert refused.status_code == 403 and "own" in refused.text
    revoked = client.post(url, json={"note": "no clinical relationship found", "revoke": True}, headers=ctx["audra"])
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    with rt.db.read_session() as s:
        grant = s.get(AccessGrant, own.json()["grant_id"])
    assert grant is not None and grant.revoked_at is not None and grant.review_state == "reviewed"


def test_break_glass_opens_dicomweb_for_a_reader_of_another_site(server_factory: Any, tmp_path: Path) -> None:
    """A radiologist of site B with no relationship to a site A study: refused, then allowed after break-glass."""
    info = server_factory(start=False)
    rt = info.runtime()
    try:
        with rt.db.session() as s:
            create_site(s, "SITEA", "Site A Hospital", institution_names=["Site A Hospital"])
            site_b = create_site(s, "SITEB", "Site B Hospital", institution_names=["Site B Hospital"])
            s.flush()
            reader = create_user(s, "rad.beta", password="pw-beta", role="radiologist", site_id=site_b.id)
            auditor = create_user(s, "audra", password="pw-audra", role="auditor")
            reader_headers = {"Authorization": f"Bearer {create_token(s, reader)[1]}"}
            auditor_headers = {"Authorization": f"Bearer {create_token(s, auditor)[1]}"}
        current = new_study("CT_small.dcm", tmp_path / "now", 1, InstitutionName="Site A Hospital",
                            PatientID="PAT-A1", StudyDate="20260101")
        prior = new_study("CT_small.dcm", tmp_path / "prior", 1, InstitutionName="Site A Hospital",
                          PatientID="PAT-A1", StudyDate="20200101")
        for path in (current[0], prior[0]):
            ingest_path(rt, path, actor="test")
    finally:
        rt.close()
    import pydicom

    uid, prior_uid = (str(pydicom.dcmread(p[0], stop_before_pixels=True).StudyInstanceUID) for p in (current, prior))
    info.start()
    with info.client() as client:
        def visible(study_uid: str) -> tuple[bool, int]:
            qido = client.get("/dicomweb/studies", params={"StudyInstanceUID": study_uid}, headers=reader_headers)
            assert qido.status_code in (200, 204), qido.text
            found = qido.status_code == 200 and any(
                item["0020000D"]["Value"][0] == study_uid for item in qido.json())
            wado = client.get(f"/dicomweb/studies/{study_uid}/metadata", headers=reader_headers)
            return found, wado.status_code

        assert visible(uid) == (False, 404)
        assert visible(prior_uid) == (False, 404)
        opened = client.post("/api/v1/access/break-glass", json={"study_uid": uid, "reason": REASON},
                             headers=reader_headers)
        assert opened.status_code == 201, opened.text
        assert visible(uid) == (True, 200)
        assert visible(prior_uid) == (True, 200)  # the patient's priors come with it
        accept = {"Accept": "multipart/related; type=application/dicom"}
        retrieved = client.get(f"/dicomweb/studies/{uid}", headers={**reader_headers, **accept})
        assert retrieved.status_code == 200
        flagged = client.get("/api/v1/audit", params={"flagged": "true"}, headers=auditor_headers).json()["items"]
        assert [(i["actor"], i["action"], i["resource_id"]) for i in flagged] == [("rad.beta", "access.break_glass",
                                                                                      uid)]
        # the auditor revokes it: the study is hidden again
        grant_id = opened.json()["grant_id"]
        closed = client.post(f"/api/v1/access/reviews/{grant_id}", json={"note": "not justified", "revoke": True},
                             headers=auditor_headers)
        assert closed.status_code == 200
        assert visible(uid) == (False, 404)
