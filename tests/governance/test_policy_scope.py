"""The policy's relationships: who sees which study and case, through SQL the edges share.

A small network (HUB, LKS) with studies at both; each role's view is
checked through the policy functions and through the HTTP edges that use
them (QIDO/WADO, case lists, user administration).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from readingroom.app import create_app
from readingroom.archive.ingest import ingest_path
from readingroom.archive.models import Study
from readingroom.clock import utcnow
from readingroom.governance import policy
from readingroom.governance.auth import principal_for
from readingroom.governance.models import AccessGrant, SiteMembership, User
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.workflow.models import Case
from tests.support.dicom import new_study
from tests.workflow.conftest import make_case, network  # noqa: F401  (fixture)

HUB_NAME = "Riverside University Medical Center"
LKS_NAME = "Lakeshore Regional Hospital"


def _study(rt, tmp_path: Path, institution: str, **changes) -> str:
    out = tmp_path / f"st{len(list(tmp_path.glob('st*')))}"
    paths = new_study("CT_small.dcm", out, 1, InstitutionName=institution, **changes)
    assert ingest_path(rt, paths[0], actor="t").ok
    return changes.get("StudyInstanceUID") or _uid_of(rt, paths[0])


def _uid_of(rt, path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _principal(rt, username: str):
    with rt.db.read_session() as s:
        return principal_for(s, get_user(s, username))


def _visible(rt, username: str) -> set[str]:
    p = _principal(rt, username)
    with rt.db.read_session() as s:
        q = select(Study.study_uid)
        clause = policy.visible_studies(p)
        if clause is not None:
            q = q.where(clause)
        return set(s.scalars(q))


@pytest.fixture()
def world(network, tmp_path: Path):  # noqa: F811
    """Studies at HUB and LKS, a case at HUB routed to the HUB readers, users of every role."""
    rt = network
    case_id = make_case(rt, tmp_path / "case", PatientID="P-CASE", ReferringPhysicianName="Hartmann^Anna")
    with rt.db.read_session() as s:
        case_study = s.scalar(select(Study.study_uid).join(Case, Case.study_pk == Study.id).where(Case.id == case_id))
        hub_id, lks_id = (s.scalar(select(Study.site_id).where(Study.study_uid == case_study)), None)
    prior = _study(rt, tmp_path, HUB_NAME, PatientID="P-CASE", StudyDate="20200101")
    hub_other = _study(rt, tmp_path, HUB_NAME, PatientID="P-OTHER")
    lks = _study(rt, tmp_path, LKS_NAME, PatientID="P-LKS", ReferringPhysicianName="Hartmann^Anna")
    lks_other = _study(rt, tmp_path, LKS_NAME, PatientID="P-LKS2")
    with rt.db.session() as s:
        lks_id = s.scalar(select(Study.site_id).where(Study.study_uid == lks))
        create_user(s, "tech", password="pw", role="technologist", site_id=hub_id)
        create_user(s, "sadm", password="pw", role="site_admin", site_id=lks_id)
        ref = create_user(s, "ref", password="pw", role="referring_clinician", site_id=hub_id)
        ref.physician_name = "Hartmann^Anna"
        create_user(s, "cons", password="pw", role="consultant")
        create_user(s, "aud", password="pw", role="auditor")
        create_user(s, "part", password="pw", role="partner")
    return {"rt": rt, "case": case_id, "case_study": case_study, "prior": prior, "hub_other": hub_other,
            "lks": lks, "lks_other": lks_other, "hub_id": hub_id, "lks_id": lks_id}


def test_each_role_sees_what_its_relationships_give(world) -> None:
    rt = world["rt"]
    everything = {world[k] for k in ("case_study", "prior", "hub_other", "lks", "lks_other")}
    assert _visible(rt, "boss") == everything
    # A reader: the case routed to them and that patient's prior; nothing else of their own site.
    routed = [u for u in ("ann", "bob", "cat") if world["case_study"] in _visible(rt, u)]
    assert routed, "the case was routed to nobody"
    assert _visible(rt, routed[0]) == {world["case_study"], world["prior"]}
    # Technologist and site admin: their site's studies.
    assert _visible(rt, "tech") == {world["case_study"], world["prior"], world["hub_other"]}
    assert _visible(rt, "sadm") == {world["lks"], world["lks_other"]}
    # Referring clinician: the studies naming them, at any site; not the prior they did not order.
    assert _visible(rt, "ref") == {world["case_study"], world["lks"]}
    # Consultant, auditor, partner: nothing without a grant.
    assert _visible(rt, "cons") == set() and _visible(rt, "aud") == set() and _visible(rt, "part") == set()


def test_grants_give_the_case_and_priors_until_they_expire_or_are_revoked(world) -> None:
    rt = world["rt"]
    with rt.db.session() as s:
        cons = get_user(s, "cons")
        grant = AccessGrant(user_id=cons.id, kind="consult", case_id=world["case"], include_priors=True,
                            granted_by="ann", created_at=utcnow(), expires_at=utcnow() + timedelta(hours=1))
        s.add(grant)
        s.add(AccessGrant(user_id=get_user(s, "part").id, kind="referral", study_uid=world["lks"],
                          include_priors=False, granted_by="sadm", created_at=utcnow()))
    assert _visible(rt, "cons") == {world["case_study"], world["prior"]}
    assert _visible(rt, "part") == {world["lks"]}
    with rt.db.session() as s:
        s.get(AccessGrant, grant.id).expires_at = utcnow() - timedelta(seconds=1)
    assert _visible(rt, "cons") == set()
    with rt.db.session() as s:
        row = s.get(AccessGrant, grant.id)
        row.expires_at, row.revoked_at = None, utcnow()
    assert _visible(rt, "cons") == set()


def test_case_visibility_and_supervision_by_site(world) -> None:
    rt = world["rt"]
    with rt.db.read_session() as s:
        case = s.get(Case, world["case"])
        assert policy.can_see_case(s, _principal(rt, "boss"), case)
        assert policy.can_see_case(s, _principal(rt, "ref"), case)  # ordering/referring physician
        assert not policy.can_see_case(s, _principal(rt, "sadm"), case)  # another site's supervisor
        assert not policy.can_see_case(s, _principal(rt, "cons"), case)
        assert not policy.can_see_case(s, _principal(rt, "aud"), case)
    assert policy.at_site(_principal(rt, "sadm"), policy.CASES_ADMIN, world["lks_id"])
    assert not policy.at_site(_principal(rt, "sadm"), policy.CASES_ADMIN, world["hub_id"])


def test_site_role_from_membership_and_token_scopes(world) -> None:
    rt = world["rt"]
    with rt.db.session() as s:
        ann = get_user(s, "ann")
        s.add(SiteMembership(user_id=ann.id, site_id=world["lks_id"], role="site_admin", created_at=utcnow()))
    p = _principal(rt, "ann")
    assert policy.allowed(p, policy.CASES_ADMIN)  # somewhere
    assert policy.at_site(p, policy.CASES_ADMIN, world["lks_id"])
    assert not policy.at_site(p, policy.CASES_ADMIN, world["hub_id"])
    assert world["lks_other"] in _visible(rt, "ann")  # site admin at LKS reads LKS studies
    assert world["hub_other"] not in _visible(rt, "ann")
    scoped = type(p)(**{**p.__dict__, "scopes": frozenset({policy.ARCHIVE_READ})})
    assert policy.allowed(scoped, policy.ARCHIVE_READ)
    assert not policy.allowed(scoped, policy.WORKLIST_READ)


def _client(rt) -> TestClient:
    return TestClient(create_app(rt))


def _bearer(rt, username: str, scopes: list[str] | None = None) -> dict[str, str]:
    with rt.db.session() as s:
        _, secret = create_token(s, get_user(s, username), scopes=scopes)
    return {"Authorization": f"Bearer {secret}"}


def test_dicomweb_answers_only_within_the_callers_scope(world) -> None:
    rt = world["rt"]
    with _client(rt) as c:
        tech = _bearer(rt, "tech")
        found = {x["0020000D"]["Value"][0] for x in c.get("/dicomweb/studies", headers=tech).json()}
        assert found == {world["case_study"], world["prior"], world["hub_other"]}
        assert c.get(f"/dicomweb/studies/{world['lks']}/metadata", headers=tech).status_code == 404
        assert c.get(f"/dicomweb/studies/{world['hub_other']}/metadata", headers=tech).status_code == 200
        patients = c.get("/dicomweb/studies", params={"PatientID": "P-LKS"}, headers=tech)
        assert patients.status_code in (200, 204) and not (patients.content and patients.json())
        ref = _bearer(rt, "ref")
        assert c.get(f"/dicomweb/studies/{world['lks']}/metadata", headers=ref).status_code == 200
        assert c.get(f"/dicomweb/studies/{world['prior']}/metadata", headers=ref).status_code == 404
        aud = _bearer(rt, "aud")
        assert c.get("/dicomweb/studies", headers=aud).status_code == 403
        # A token scoped to archive reading cannot use the worklist even though the role could.
        routed = next(u for u in ("ann", "bob", "cat") if world["case_study"] in _visible(rt, u))
        narrow = _bearer(rt, routed, scopes=[policy.ARCHIVE_READ])
        assert c.get("/api/v1/worklist", headers=narrow).status_code == 403
        assert c.get(f"/dicomweb/studies/{world['case_study']}/metadata", headers=narrow).status_code == 200


def test_case_lists_and_actions_are_limited_to_supervised_sites(world) -> None:
    rt = world["rt"]
    with _client(rt) as c:
        sadm, boss = _bearer(rt, "sadm"), _bearer(rt, "boss")
        assert world["case"] in [x["id"] for x in c.get("/api/v1/cases", headers=boss).json()]
        assert world["case"] not in [x["id"] for x in c.get("/api/v1/cases", headers=sadm).json()]
        r = c.post(f"/api/v1/cases/{world['case']}/cancel", json={"reason": "x"}, headers=sadm)
        assert r.status_code == 403 and "site" in r.json()["detail"]
        assert c.get(f"/api/v1/cases/{world['case']}", headers=sadm).status_code == 403
        assert c.get(f"/api/v1/cases/{world['case']}", headers=_bearer(rt, "ref")).status_code == 200
        assert c.post(f"/api/v1/cases/{world['case']}/cancel", json={"reason": "dup"}, headers=boss).status_code == 200


def test_site_admins_manage_only_their_sites_accounts(world) -> None:
    rt = world["rt"]
    with _client(rt) as c:
        sadm = _bearer(rt, "sadm")
        ok = c.post("/api/v1/users", json={"username": "lks.tech", "password": "long-enough", "role": "technologist",
                                           "site_id": world["lks_id"]}, headers=sadm)
        assert ok.status_code == 201, ok.text
        elsewhere = c.post("/api/v1/users", json={"username": "hub.tech", "role": "technologist",
                                                  "site_id": world["hub_id"]}, headers=sadm)
        assert elsewhere.status_code == 403
        admin = c.post("/api/v1/users", json={"username": "x", "role": "admin", "site_id": world["lks_id"]},
                       headers=sadm)
        assert admin.status_code == 403
        assert c.patch("/api/v1/users/tech", json={"active": False}, headers=sadm).status_code == 403
        assert {u["username"] for u in c.get("/api/v1/users", headers=sadm).json()} == {"sadm", "lks.tech"}
        # Membership gives the site's role; removing it takes it away again.
        boss = _bearer(rt, "boss")
        r = c.put("/api/v1/users/lks.tech/memberships/HUB", json={"role": ""}, headers=boss)
        assert r.status_code == 200 and [m["site"] for m in r.json()["memberships"]] == ["HUB"]
        assert c.put("/api/v1/users/lks.tech/memberships/HUB", json={}, headers=sadm).status_code == 403
        # Deactivation ends access at once.
        tok = _bearer(rt, "lks.tech")
        assert c.get("/api/v1/me", headers=tok).status_code == 200
        assert c.patch("/api/v1/users/lks.tech", json={"active": False}, headers=sadm).status_code == 200
        assert c.get("/api/v1/me", headers=tok).status_code == 401
        with rt.db.read_session() as s:
            assert s.scalar(select(User.active).where(User.username == "lks.tech")) is False


def test_refusals_and_case_changes_are_audited(world) -> None:
    from readingroom.governance import audit
    from readingroom.governance.models import AuditRecord

    rt = world["rt"]
    with _client(rt) as c:
        assert c.get("/dicomweb/studies", headers=_bearer(rt, "aud")).status_code == 403
        assert c.get("/api/v1/cases").status_code == 401
        assert c.post(f"/api/v1/cases/{world['case']}/cancel", json={"reason": "wrong patient"},
                      headers=_bearer(rt, "boss")).status_code == 200
    audit.flush(rt.db)
    with rt.db.read_session() as s:
        denied = {(r.actor, r.resource_id, r.detail["status"]) for r in s.scalars(
            select(AuditRecord).where(AuditRecord.action == "access.denied"))}
        changed = s.scalars(select(AuditRecord).where(AuditRecord.action == "case.cancelled")).one()
    assert ("aud", "/dicomweb/studies", 403) in denied and ("anonymous", "/api/v1/cases", 401) in denied
    assert changed.actor == "boss" and changed.resource_id == str(world["case"])
    assert changed.detail["reason"] == "wrong patient"
