"""Patient identity by issuer, cross-site links (reported, decided by a person), duplicate-study reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from readingroom.app import create_app
from readingroom.archive.models import Instance, Patient, Study
from readingroom.archive.stability import complete_stable_studies
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.models import AuditRecord, Site
from readingroom.governance.sites import create_site
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.interop import duplicates, identity
from readingroom.interop.models import PatientLink
from readingroom.workflow.models import ExceptionItem
from tests.interop import reconcile_support as support
from tests.interop.reconcile_support import HUB_NAME, LKS_NAME, ingest_study
from tests.workflow import conftest as workflow_fixtures

network, sites = workflow_fixtures.network, support.sites  # fixtures


def _patient(rt: Any, patient_id: str) -> Patient:
    with rt.db.read_session() as s:
        return s.scalars(select(Patient).where(Patient.patient_id == patient_id)).one()


def _links(rt: Any) -> list[PatientLink]:
    with rt.db.read_session() as s:
        return list(s.scalars(select(PatientLink).order_by(PatientLink.id)))


def _items(rt: Any, kind: str) -> list[ExceptionItem]:
    with rt.db.read_session() as s:
        return list(s.scalars(select(ExceptionItem).where(ExceptionItem.kind == kind)))


# -- issuer ---------------------------------------------------------------------------------------------------


def test_instances_without_issuer_get_their_sites_issuer(sites: Any, tmp_path: Path) -> None:
    rt = sites
    ingest_study(rt, tmp_path, PatientID="MRN-1", institution=HUB_NAME)
    ingest_study(rt, tmp_path, PatientID="MRN-1", institution=LKS_NAME)
    ingest_study(rt, tmp_path, PatientID="MRN-2", institution=HUB_NAME, IssuerOfPatientID="STATE-MPI")
    ingest_study(rt, tmp_path, PatientID="MRN-3", institution="Somewhere Unknown")
    with rt.db.read_session() as s:
        got = sorted(s.execute(select(Patient.patient_id, Patient.issuer)).all())
    # the same ID at two sites is two records; an explicit issuer wins; no site, no issuer to give
    assert got == [("MRN-1", "LAKESHORE-MRN"), ("MRN-1", "RIVERSIDE-MRN"), ("MRN-2", "STATE-MPI"), ("MRN-3", "")]


# -- matching rules -------------------------------------------------------------------------------------------


def test_demographics_across_sites_is_a_possible_link(sites: Any, tmp_path: Path) -> None:
    rt = sites
    ingest_study(rt, tmp_path, PatientID="H-1", PatientName="Müller^Anna", PatientBirthDate="19800101",
                 PatientSex="F", institution=HUB_NAME)
    ingest_study(rt, tmp_path, PatientID="L-77", PatientName="MULLER^ANNA^^Dr", PatientBirthDate="19800101",
                 PatientSex="F", institution=LKS_NAME)
    ingest_study(rt, tmp_path, PatientID="L-78", PatientName="Muller^Anna", PatientBirthDate="19800102",
                 PatientSex="F", institution=LKS_NAME)  # another birth date: another person
    assert identity.scan_new_patients(rt) == 1
    assert identity.scan_new_patients(rt) == 0  # consumed
    [link] = _links(rt)
    assert (link.rule, link.state) == ("demographics", "possible")
    assert {link.patient_pk, link.other_pk} == {_patient(rt, "H-1").id, _patient(rt, "L-77").id}
    with rt.db.session() as s:  # re-evaluating reports the pair once
        assert identity.evaluate_patient(s, _patient(rt, "L-77").id, ["demographics"]) == 0
    with rt.db.read_session() as s:
        merged = s.scalar(select(func.count()).select_from(Patient).where(Patient.merged_into_pk.is_not(None)))
    assert merged == 0  # reported, never merged


def test_id_rules(sites: Any) -> None:
    rt, now = sites, utcnow()
    with rt.db.session() as s:
        for pid, issuer in (("X-1", "hosp-a"), ("X-1", "HOSP-A"), ("X-1", "OTHER")):
            s.add(Patient(patient_id=pid, issuer=issuer, name="", birth_date="", sex="", attrs={}, created_at=now,
                          updated_at=now))
    rt.settings.identity_match_rules = ["id_issuer", "id_only"]
    assert identity.scan_new_patients(rt) == 3
    got = sorted((link.rule, link.state) for link in _links(rt))
    assert got == [("id_issuer", "match"), ("id_only", "possible"), ("id_only", "possible")]


# -- API ------------------------------------------------------------------------------------------------------


@pytest.fixture()
def api(sites: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    rt = sites
    ingest_study(rt, tmp_path, PatientID="H-9", PatientName="Roe^Rick", PatientBirthDate="19650505",
                 PatientSex="M", institution=HUB_NAME)
    ingest_study(rt, tmp_path, PatientID="L-9", PatientName="ROE^RICK", PatientBirthDate="19650505",
                 PatientSex="M", institution=LKS_NAME)
    ingest_study(rt, tmp_path, PatientID="L-10", PatientName="Poe^Ed", PatientBirthDate="19500101",
                 PatientSex="M", institution=LKS_NAME)
    ingest_study(rt, tmp_path, PatientID="H-10", PatientName="POE^ED", PatientBirthDate="19500101",
                 PatientSex="M", institution=HUB_NAME)
    assert identity.scan_new_patients(rt) == 2
    with rt.db.session() as s:
        hub = s.scalar(select(Site.id).where(Site.code == "HUB"))
        far = create_site(s, "FAR", "Faraway Clinic")
        create_user(s, "hubadm", password="pw", role="site_admin", site_id=hub)
        create_user(s, "faradm", password="pw", role="site_admin", site_id=far.id)
        create_user(s, "tech", password="pw", role="technologist", site_id=hub)
        headers = {n: {"Authorization": f"Bearer {create_token(s, get_user(s, n), name='t')[1]}"}
                   for n in ("boss", "hubadm", "faradm", "tech")}
    yield {"rt": rt, "c": TestClient(create_app(rt)), "h": headers}
    audit.flush(rt.db)


def test_links_api_confirm_reject(api: dict[str, Any]) -> None:
    c, h, rt = api["c"], api["h"], api["rt"]
    listed = c.get("/api/v1/interop/identity/links", headers=h["hubadm"])
    assert listed.status_code == 200, listed.text
    assert len(listed.json()) == 2 and {x["state"] for x in listed.json()} == {"possible"}
    assert c.get("/api/v1/interop/identity/links", headers=h["faradm"]).json() == []  # not their patients
    assert c.get("/api/v1/interop/identity/links", headers=h["tech"]).status_code == 403
    roe = next(x for x in listed.json() if "ROE" in x["detail"]["name"])
    poe = next(x for x in listed.json() if "POE" in x["detail"]["name"])
    assert c.post(f"/api/v1/interop/identity/links/{roe['id']}/confirm", headers=h["faradm"]).status_code == 404
    r = c.post(f"/api/v1/interop/identity/links/{roe['id']}/confirm", json={"note": "same MRN on the CD"},
               headers=h["hubadm"])
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "confirmed" and r.json()["decided_by"] == "hubadm"
    assert c.post(f"/api/v1/interop/identity/links/{roe['id']}/reject", headers=h["boss"]).status_code == 409
    r = c.post(f"/api/v1/interop/identity/links/{poe['id']}/reject", headers=h["boss"])
    assert r.status_code == 200 and r.json()["state"] == "rejected"
    assert c.get("/api/v1/interop/identity/links", headers=h["boss"]).json() == []  # nothing left to decide
    assert len(c.get("/api/v1/interop/identity/links?state=", headers=h["boss"]).json()) == 2
    h9 = _patient(rt, "H-9").id
    mine = c.get(f"/api/v1/patients/{h9}/links", headers=h["hubadm"])
    assert mine.status_code == 200 and [x["id"] for x in mine.json()] == [roe["id"]]
    assert c.get(f"/api/v1/patients/{h9}/links", headers=h["faradm"]).status_code == 404
    assert c.get("/api/v1/patients/999999/links", headers=h["boss"]).status_code == 404
    audit.flush(rt.db)
    with rt.db.read_session() as s:
        actions = s.scalars(select(AuditRecord.action).where(AuditRecord.resource_type.in_(
            ["patient_link", "patient"]))).all()
        assert sorted(actions) == ["patient_link.confirmed", "patient_link.read", "patient_link.rejected"]
        assert s.scalar(select(func.count()).select_from(Patient).where(Patient.merged_into_pk.is_not(None))) == 0


def test_unknown_decision_changes_nothing(api: dict[str, Any]) -> None:
    c, h, rt = api["c"], api["h"], api["rt"]
    link = _links(rt)[0]
    assert c.post(f"/api/v1/interop/identity/links/{link.id}/merge", headers=h["boss"]).status_code in (404, 405)
    assert c.post("/api/v1/interop/identity/links/999999/confirm", headers=h["boss"]).status_code == 404
    assert {x.state for x in _links(rt)} == {"possible"}


# -- duplicate studies ----------------------------------------------------------------------------------------


def test_same_study_uid_from_two_sites_is_reported_once(api: dict[str, Any], tmp_path: Path) -> None:
    c, h, rt = api["c"], api["h"], api["rt"]
    uid = generate_uid()
    ingest_study(rt, tmp_path, study_uid=uid, PatientID="D-1", institution=HUB_NAME)
    ingest_study(rt, tmp_path, study_uid=uid, n=2, PatientID="D-1", institution=LKS_NAME)
    duplicates.scan(rt)
    ingest_study(rt, tmp_path, study_uid=uid, PatientID="D-1", institution=LKS_NAME)  # seen again
    duplicates.scan(rt)
    [item] = _items(rt, "duplicate_study")
    assert uid in item.reason and "HUB" in item.reason and "LKS" in item.reason and item.study_uid == uid
    with rt.db.read_session() as s:  # the archive keeps every instance as received, in the first site's study
        assert s.scalar(select(func.count()).select_from(Instance)) == 4 + 4  # + the fixture's four studies
        assert s.scalar(select(func.count()).select_from(Study).where(Study.study_uid == uid)) == 1
    listed = c.get("/api/v1/interop/duplicates", headers=h["hubadm"])
    assert listed.status_code == 200 and [x["id"] for x in listed.json()] == [item.id]
    assert c.get("/api/v1/interop/duplicates", headers=h["faradm"]).json() == []
    assert c.get("/api/v1/interop/duplicates", headers=h["tech"]).status_code == 403


def test_same_accession_twice_is_reported_once(api: dict[str, Any], tmp_path: Path) -> None:
    c, h, rt = api["c"], api["h"], api["rt"]
    first = ingest_study(rt, tmp_path, AccessionNumber="DUP-1", PatientID="D-2", institution=HUB_NAME)
    complete_stable_studies(rt, stable_age=0)
    second = ingest_study(rt, tmp_path, AccessionNumber="DUP-1", PatientID="D-3", institution=HUB_NAME)
    ingest_study(rt, tmp_path, AccessionNumber="DUP-1", PatientID="D-4", institution=LKS_NAME)  # other site
    complete_stable_studies(rt, stable_age=0)
    assert duplicates.scan(rt) == 1
    ingest_study(rt, tmp_path, study_uid=second, AccessionNumber="DUP-1", PatientID="D-3", institution=HUB_NAME)
    complete_stable_studies(rt, stable_age=0)  # completes again
    assert duplicates.scan(rt) == 0
    [item] = _items(rt, "duplicate_accession")
    assert first in item.reason and second in item.reason and "DUP-1" in item.reason
    kinds = [x["kind"] for x in c.get("/api/v1/interop/duplicates?kind=duplicate_accession",
                                      headers=h["boss"]).json()]
    assert kinds == ["duplicate_accession"]
