"""FHIR R4 at /fhir: every resource read and searched over HTTP, parsed back with fhir.resources (R4B).

The reading desk of the report tests (a CT head claimed by ann, a referring
clinician ``ref``, an admin ``boss``) gives a patient, a study, a case and a
report; a second study at another site is what others must not see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.task import Task
from sqlalchemy import func, select

from readingroom.archive.models import Study
from readingroom.collab import critical
from readingroom.governance import audit
from readingroom.governance.models import AuditRecord
from readingroom.governance.users import get_user
from readingroom.interop.models import Order
from readingroom.workflow import jobs
from readingroom.workflow.cases import Actor
from readingroom.workflow.models import Case
from tests.collab.report_fixtures import Desk, clock, make_desk  # noqa: F401  (fixture)
from tests.workflow.conftest import make_case, network  # noqa: F401  (fixture)

FHIR_JSON = "application/fhir+json"
MODELS = {"Patient": Patient, "ImagingStudy": ImagingStudy, "ServiceRequest": ServiceRequest,
          "DiagnosticReport": DiagnosticReport, "Task": Task, "Communication": Communication}


@pytest.fixture()
def desk(network, tmp_path: Path, clock) -> Desk:  # noqa: F811
    return make_desk(network, tmp_path, clock)


def _get(desk: Desk, url: str, who: str = "boss", status: int = 200, **kw: Any) -> dict[str, Any]:
    r = desk.c.get(url, headers={**desk.h[who], **kw.pop("headers", {})}, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    body = r.json()
    if status >= 400:
        OperationOutcome.model_validate(body)
    elif body["resourceType"] == "Bundle":
        Bundle.model_validate(body)
        for entry in body.get("entry", []):
            if entry["search"]["mode"] == "match":
                MODELS[entry["resource"]["resourceType"]].model_validate(entry["resource"])
    else:
        MODELS[body["resourceType"]].model_validate(body)
    return body


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _sign_final(desk: Desk) -> None:
    etag = desk.get().headers["ETag"]
    r = desk.put({"findings": "No bleed.", "impression": "Normal CT head."}, etag)
    assert r.status_code == 200, r.text
    assert desk.sign("final", r.headers["ETag"]).status_code == 200


def _other_site_study(desk: Desk, tmp_path: Path) -> str:
    case_id = make_case(desk.rt, tmp_path / "other", institution="Lakeshore Regional Hospital",
                        PatientID="P-OTHER", PatientName="Other^Olga", AccessionNumber="ACC-OTHER-1")
    with desk.rt.db.read_session() as s:
        return s.scalar(select(Study.study_uid).join(Case, Case.study_pk == Study.id).where(Case.id == case_id))


def _order(patient_id: str = "P-NEW", placer: str = "PL-1", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "urgent",
            "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "PLAC"}]},
                            "system": "urn:readingroom:placer:EHR", "value": placer},
                           {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "ACSN"}]}, "value": f"ACC-{placer}"}],
            "code": {"coding": [{"system": "urn:readingroom:procedure", "code": "CTHEAD"}], "text": "CT HEAD WO"},
            "category": [{"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]}],
            "subject": {"identifier": {"system": "urn:readingroom:issuer:HUBMRN", "value": patient_id}},
            "locationCode": [{"coding": [{"system": "urn:readingroom:site", "code": "HUB"}]}],
            "requester": {"display": "Hartmann^Lena"}, "reasonCode": [{"text": "headache"}],
            "authoredOn": "2025-03-01T10:00:00Z", **extra}


def _post_order(desk: Desk, body: Any, who: str = "boss", status: int = 201) -> dict[str, Any]:
    r = desk.c.post("/fhir/ServiceRequest", headers={**desk.h[who], "Content-Type": FHIR_JSON},
                    content=body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR_JSON)
    return r.json()


def _stored_counts(desk: Desk) -> tuple[int, int, int]:
    with desk.rt.db.read_session() as s:
        return (s.scalar(select(func.count()).select_from(Order)), s.scalar(select(func.count()).select_from(Case)),
                s.scalar(select(func.max(Case.version)).where(Case.id == desk.case)))


# -- metadata --------------------------------------------------------------------------------------------------


def test_capability_statement_lists_what_is_implemented(desk: Desk) -> None:
    r = desk.c.get("/fhir/metadata")  # public: clients read it before signing in
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR_JSON)
    cs = CapabilityStatement.model_validate(r.json())
    assert cs.fhirVersion == "4.0.1"
    resources = {res.type: res for res in cs.rest[0].resource}
    assert set(resources) == set(MODELS)
    assert {i.code for i in resources["ServiceRequest"].interaction} == {"read", "search-type", "create", "update"}
    assert {i.code for i in resources["Task"].interaction} == {"read", "search-type", "update"}
    assert {p.name for p in resources["ImagingStudy"].searchParam} == {"patient", "identifier", "status",
                                                                       "_lastUpdated", "_id"}


# -- reads and searches of every resource ------------------------------------------------------------------------


def test_read_and_search_every_resource(desk: Desk) -> None:
    _sign_final(desk)
    with desk.rt.db.session() as s:
        case = s.get(Case, desk.case)
        result = critical.flag(s, desk.rt.settings, case, Actor("ann", get_user(s, "ann").id), category="bleed",
                               level="1", finding="Acute subdural haematoma")
        patient_pk, study_pk = case.patient_pk, case.study_pk
        study_uid = s.get(Study, study_pk).study_uid

    patient = _get(desk, f"/fhir/Patient/{patient_pk}")
    assert patient["identifier"][0]["value"] == "P-REPORT"
    assert patient["name"][0]["family"] == "Doe" and patient["gender"] == "female"
    assert patient["birthDate"] == "1970-01-01"
    found = _get(desk, "/fhir/Patient", params={"identifier": "P-REPORT"})
    assert _ids(found) == [str(patient_pk)] and found["total"] == 1

    study = _get(desk, f"/fhir/ImagingStudy/{study_uid}")
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}
    assert study["subject"]["reference"] == f"Patient/{patient_pk}"
    assert study["modality"][0]["system"] == "http://dicom.nema.org/resources/ontology/DCM"
    endpoint = study["contained"][0]
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"].endswith("/dicomweb") and study["endpoint"] == [{"reference": "#dicomweb"}]
    series = study["series"][0]
    assert len(series["instance"]) == 2 == study["numberOfInstances"]
    assert {i["number"] for i in series["instance"]} == {1, 2}
    assert series["instance"][0]["sopClass"]["code"].startswith("urn:oid:1.2.840.10008.")
    by_patient = _get(desk, "/fhir/ImagingStudy", params={"patient": f"Patient/{patient_pk}"})
    assert _ids(by_patient) == [study_uid]
    assert _ids(_get(desk, "/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"})) \
        == [study_uid]

    report = _get(desk, f"/fhir/DiagnosticReport/report-{desk.case}")
    assert report["status"] == "final" and report["conclusion"] == "Normal CT head."
    assert report["subject"]["reference"] == f"Patient/{patient_pk}"
    assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{study_uid}"
    assert _ids(_get(desk, "/fhir/DiagnosticReport", params={"patient": str(patient_pk), "status": "final"})) \
        == [f"report-{desk.case}"]
    assert _get(desk, "/fhir/DiagnosticReport", params={"status": "preliminary"})["total"] == 0

    task = _get(desk, f"/fhir/Task/{desk.case}")
    assert task["status"] == "completed" and task["businessStatus"]["text"] == "final"
    assert task["focus"]["reference"] == f"ImagingStudy/{study_uid}"
    assert task["for"]["reference"] == f"Patient/{patient_pk}"
    assert _ids(_get(desk, "/fhir/Task", params={"status": "completed", "patient": str(patient_pk)})) \
        == [str(desk.case)]

    comm = _get(desk, f"/fhir/Communication/{result.result_id}")
    assert comm["status"] == "in-progress" and comm["statusReason"]["text"] == "sent"
    assert comm["payload"][0]["contentString"] == "Acute subdural haematoma"
    assert comm["about"] == [{"reference": f"Task/{desk.case}"}]
    with desk.rt.db.session() as s:
        critical.acknowledge(s, result.result_id, _principal(desk, "ref"), "called back")
    acked = _get(desk, "/fhir/Communication", params={"status": "completed"})
    assert _ids(acked) == [str(result.result_id)]
    assert acked["entry"][0]["resource"]["note"][0]["text"] == "called back"


def _principal(desk: Desk, name: str) -> Any:
    from readingroom.governance.auth import Principal

    with desk.rt.db.read_session() as s:
        return Principal.of(get_user(s, name))


def test_reads_are_audited_with_the_patient(desk: Desk) -> None:
    with desk.rt.db.read_session() as s:
        patient_pk = s.get(Case, desk.case).patient_pk
    _get(desk, f"/fhir/Patient/{patient_pk}", who="ref")
    audit.flush(desk.rt.db)
    with desk.rt.db.read_session() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.action == "fhir.read")).all()
    assert [(r.actor, r.resource_type, r.patient_id) for r in rows] == [("ref", "fhir.Patient", "P-REPORT")]


# -- ServiceRequest: create = a new order ---------------------------------------------------------------------------


def test_service_request_create_places_an_order_and_a_waiting_case(desk: Desk, tmp_path: Path) -> None:
    created = _post_order(desk, _order())
    ServiceRequest.model_validate(created)
    assert created["status"] == "active" and created["priority"] == "urgent"
    with desk.rt.db.read_session() as s:
        order = s.get(Order, int(created["id"]))
        case = s.get(Case, order.case_id)
    assert (order.source, order.placer_order_number, order.placer_authority) == ("fhir", "PL-1", "EHR")
    assert (order.patient_id, order.patient_issuer, order.modality) == ("P-NEW", "HUBMRN", "CT")
    assert case.state == "waiting" and case.priority == "urgent"
    task = _get(desk, f"/fhir/Task/{case.id}")
    assert task["status"] == "requested" and task["basedOn"] == [{"reference": f"ServiceRequest/{order.id}"}]
    assert _ids(_get(desk, "/fhir/ServiceRequest", params={"identifier": "urn:readingroom:placer:EHR|PL-1"})) \
        == [created["id"]]
    _post_order(desk, _order(), status=409)  # the same placer number again: a duplicate, nothing added

    # The images arrive: the study is based on the order.
    make_case_paths = tmp_path / "arrive"
    from readingroom.archive.ingest import ingest_path
    from readingroom.archive.stability import complete_stable_studies
    from tests.support.dicom import new_study

    for p in new_study("CT_small.dcm", make_case_paths, 1, PatientID="P-NEW", IssuerOfPatientID="HUBMRN",
                       AccessionNumber="ACC-PL-1",
                       InstitutionName="Riverside University Medical Center"):
        assert ingest_path(desk.rt, p, actor="t").ok
    assert complete_stable_studies(desk.rt, stable_age=0)
    jobs.intake(desk.rt)
    with desk.rt.db.read_session() as s:
        uid = s.scalar(select(Study.study_uid).where(Study.accession_number == "ACC-PL-1"))
    study = _get(desk, f"/fhir/ImagingStudy/{uid}")
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{order.id}"}]

    revoked = desk.c.put(f"/fhir/ServiceRequest/{order.id}", headers=desk.h["boss"],
                         json={**_order(), "id": str(order.id), "status": "revoked"})
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"


@pytest.mark.parametrize("body, where", [
    (b"{not json", None),
    (b'["a list"]', None),
    (b'{"resourceType": "Patient"}', "resourceType"),
    ({**_order(), "authoredOn": "yesterday"}, "ServiceRequest.authoredOn"),
    ({k: v for k, v in _order().items() if k != "status"}, "ServiceRequest.status"),
    ({**_order(), "colour": "blue"}, "ServiceRequest.colour"),
])
def test_invalid_service_request_is_400_and_creates_nothing(desk: Desk, body: Any, where: str | None) -> None:
    before = _stored_counts(desk)
    answer = _post_order(desk, body, status=400)
    OperationOutcome.model_validate(answer)
    issue = answer["issue"][0]
    assert issue["severity"] == "error" and issue["diagnostics"]
    if where:
        assert where in issue.get("expression", []), issue
    assert _stored_counts(desk) == before


def test_service_request_the_order_service_refuses_is_422(desk: Desk) -> None:
    before = _stored_counts(desk)
    answer = _post_order(desk, _order(identifier=[]), status=422)
    assert "placer order number" in answer["issue"][0]["diagnostics"]
    _post_order(desk, _order(), who="ann", status=403)  # radiologists do not place orders
    assert _stored_counts(desk) == before


# -- paging and _lastUpdated ------------------------------------------------------------------------------------------


def test_paging_walks_all_pages(desk: Desk) -> None:
    made = {_post_order(desk, _order(f"P-{i}", f"PL-{i}"))["id"] for i in range(5)}
    url: str | None = "/fhir/ServiceRequest?_count=2"
    seen: list[str] = []
    pages = 0
    while url:
        page = _get(desk, url)
        assert page["total"] == 5 and len(_ids(page)) <= 2
        seen += _ids(page)
        links = {link["relation"]: link["url"] for link in page["link"]}
        assert ("previous" in links) == (pages > 0)
        assert all(e["fullUrl"].endswith(f"/fhir/ServiceRequest/{e['resource']['id']}") for e in page["entry"])
        url = links.get("next")
        if url:
            parts = urlsplit(url)
            url = f"{parts.path}?{parts.query}"
        pages += 1
    assert pages == 3 and sorted(seen) == sorted(made) and len(seen) == 5


def test_last_updated_filters(desk: Desk) -> None:
    first = _post_order(desk, _order("P-A", "PL-A"))
    desk.tick(3600)
    second = _post_order(desk, _order("P-B", "PL-B"))
    stamp = second["meta"]["lastUpdated"]
    assert _ids(_get(desk, "/fhir/ServiceRequest", params={"_lastUpdated": f"ge{stamp}"})) == [second["id"]]
    assert _ids(_get(desk, "/fhir/ServiceRequest", params={"_lastUpdated": f"lt{stamp}"})) == [first["id"]]
    both = _get(desk, "/fhir/ServiceRequest", params=[("_lastUpdated", f"ge{first['meta']['lastUpdated']}"),
                                                       ("_lastUpdated", f"le{stamp}")])
    assert sorted(_ids(both)) == sorted([first["id"], second["id"]])
    bad = _get(desk, "/fhir/ServiceRequest", params={"_lastUpdated": "ge-last-week"}, status=400)
    assert bad["issue"][0]["expression"] == ["_lastUpdated"]


def test_unknown_parameters_lenient_or_strict(desk: Desk) -> None:
    lenient = _get(desk, "/fhir/Patient", params={"colour": "blue"})
    outcomes = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcomes[0]["resource"]["issue"][0]["diagnostics"]
    strict = _get(desk, "/fhir/Patient", params={"colour": "blue"}, headers={"Prefer": "handling=strict"},
                  status=400)
    assert strict["issue"][0]["code"] == "not-supported"
    _get(desk, "/fhir/Patient", params={"_count": "many"}, status=400)


# -- Task status changes --------------------------------------------------------------------------------------------


def _put_task(desk: Desk, status: str, who: str = "ann") -> Any:
    return desk.c.put(f"/fhir/Task/{desk.case}", headers={**desk.h[who], "Content-Type": FHIR_JSON},
                      json={"resourceType": "Task", "id": str(desk.case), "status": status, "intent": "order"})


def test_task_status_moves_the_case_where_a_transition_exists(desk: Desk) -> None:
    r = _put_task(desk, "ready")  # ann releases her claim
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    r = _put_task(desk, "in-progress")  # and claims it again
    assert r.status_code == 200 and r.json()["owner"]["display"] == "ann"
    before = _stored_counts(desk)
    illegal = _put_task(desk, "requested")
    assert illegal.status_code == 409 and illegal.headers["content-type"].startswith(FHIR_JSON)
    OperationOutcome.model_validate(illegal.json())
    assert _put_task(desk, "bogus").status_code == 400
    assert _put_task(desk, "cancelled").status_code == 403  # only the site's supervisors cancel
    r = desk.c.put(f"/fhir/Task/{desk.case}", headers=desk.h["ann"], json={"resourceType": "Task", "status": 7})
    assert r.status_code == 400 and "Task.status" in r.json()["issue"][0]["expression"]
    assert _stored_counts(desk) == before
    assert _put_task(desk, "cancelled", who="boss").json()["status"] == "cancelled"


# -- who sees what --------------------------------------------------------------------------------------------------


def test_anonymous_gets_401_outcome(desk: Desk) -> None:
    r = desk.c.get("/fhir/Patient")
    assert r.status_code == 401 and r.headers["content-type"].startswith(FHIR_JSON)
    assert r.json()["issue"][0]["code"] == "login" and "WWW-Authenticate" in r.headers


def test_other_sites_patients_are_not_visible(desk: Desk, tmp_path: Path) -> None:
    other_uid = _other_site_study(desk, tmp_path)
    with desk.rt.db.read_session() as s:
        own_uid = s.scalar(select(Study.study_uid).join(Case, Case.study_pk == Study.id).where(Case.id == desk.case))
        other_patient = s.scalar(select(Study.patient_pk).where(Study.study_uid == other_uid))
    for who in ("ref", "tech"):  # the referring clinician of the desk study, a technologist of its site
        assert _ids(_get(desk, "/fhir/ImagingStudy", who=who)) == [own_uid]
        _get(desk, f"/fhir/ImagingStudy/{other_uid}", who=who, status=404)
        _get(desk, f"/fhir/Patient/{other_patient}", who=who, status=404)
        assert str(other_patient) not in _ids(_get(desk, "/fhir/Patient", who=who))
    assert sorted(_ids(_get(desk, "/fhir/ImagingStudy"))) == sorted([own_uid, other_uid])  # the admin sees both
    assert _ids(_get(desk, "/fhir/Task", who="nosy")) == []  # a consultant nobody asked


# -- through a real server process -----------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_through_a_real_server(server_factory: Any, tmp_path: Path) -> None:
    """A FHIR client's round: metadata, place an order, store its images, follow the study's endpoint."""
    from tests.support.dicom import new_study

    server = server_factory()
    with server.client() as c:
        assert c.get("/fhir/metadata").status_code == 200
        assert httpx.get(f"{server.base_url}/fhir/Task").status_code == 401
        r = c.post("/fhir/ServiceRequest", content=httpx.Request("POST", "/", json=_order(
            "P-SRV", "PL-SRV", locationCode=[])).content, headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 201, r.text
        order = ServiceRequest.model_validate(r.json())
        assert r.headers["location"] == f"{server.base_url}/fhir/ServiceRequest/{order.id}"

        path = new_study("CT_small.dcm", tmp_path / "srv", 1, PatientID="P-SRV", IssuerOfPatientID="HUBMRN",
                         AccessionNumber="ACC-PL-SRV")[0]
        boundary = "fhir-test-boundary"
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
                + f"\r\n--{boundary}--\r\n".encode())
        stored = c.post("/dicomweb/studies", content=body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert stored.status_code == 200, stored.text

        found = c.get("/fhir/ImagingStudy", params={"identifier": "ACC-PL-SRV"}).json()
        assert Bundle.model_validate(found).total == 1
        study = ImagingStudy.model_validate(found["entry"][0]["resource"])
        assert study.subject.reference == c.get("/fhir/Patient", params={"identifier": "HUBMRN|P-SRV"}).json()[
            "entry"][0]["fullUrl"].split("/fhir/", 1)[1]
        endpoint = study.contained[0]
        assert endpoint.address == f"{server.base_url}/dicomweb"
        metadata = c.get(f"{endpoint.address}/studies/{study.id}/metadata")  # the endpoint leads to the images
        assert metadata.status_code == 200 and len(metadata.json()) == 1
