"""Fixture resources and bodies of the FHIR routes (/fhir) for the authorisation matrix.

FHIR ids are chosen to be the REST API's (ImagingStudy = Study Instance UID,
Task = case, ServiceRequest = order, Communication = critical result), so
most routes reuse the matrix's resources; these add the two that are
FHIR's own (a Patient, a DiagnosticReport) and read a searchset Bundle's
content for the listing checks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from readingroom.archive.models import Study
from tests.governance.authz_world import CASE_TARGETS, World


def _patient_pks(world: World) -> dict[str, int]:
    with world.rt.db.read_session() as s:
        return {name: s.scalar(select(Study.patient_pk).where(Study.study_uid == ref.study_uid))
                for name, ref in world.studies.items()}


def patient(world: World, role: str, target: str) -> dict[str, Any]:
    """The patient of the target's study (``other_prior`` and ``other_related`` are one patient)."""
    return {"patient_pk": _patient_pks(world)[target]}


def report(world: World, role: str, target: str) -> dict[str, Any]:
    """The DiagnosticReport id of the target's case (only signed reports exist: 404 for the others)."""
    return {"report_id": f"report-{world.cases[target]}"}


def listed(world: World, kind: str, bundle: dict[str, Any]) -> set[str]:
    """The fixture targets a searchset Bundle shows (matches only, not the outcome entry)."""
    ids = {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"}
    if kind == "study":
        return {name for name, ref in world.studies.items() if ref.study_uid in ids}
    if kind == "case":
        return {name for name in CASE_TARGETS if str(world.cases[name]) in ids}
    if kind == "fhir_patient":
        return {name for name, pk in _patient_pks(world).items() if str(pk) in ids}
    raise AssertionError(f"no FHIR listing of {kind!r}")


def order_body(world: World, role: str, target: str | None) -> dict[str, Any]:
    """A new ServiceRequest for the target's site (the caller's own when the route names none)."""
    return {"json": {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                             "code": "PLAC"}]}, "value": world.unique("ORD-")}],
        "subject": {"identifier": {"value": world.unique("PAT-")}}, "code": {"text": "CT HEAD"},
        "locationCode": [{"coding": [{"system": "urn:readingroom:site", "code": world.site_code(target or "own")}]}],
    }}


def revoke_body(world: World, role: str, target: str | None) -> dict[str, Any]:
    return {"json": {"resourceType": "ServiceRequest", "status": "revoked", "intent": "order",
                     "subject": {"identifier": {"value": "matrix"}}}}


def claim_body(world: World, role: str, target: str | None) -> dict[str, Any]:
    return {"json": {"resourceType": "Task", "status": "in-progress", "intent": "order"}}


PATH_VALUES = {"fhir_patient": patient, "fhir_report": report}
BODIES = {"POST /fhir/ServiceRequest": order_body, "PUT /fhir/ServiceRequest/{order_id}": revoke_body,
          "PUT /fhir/Task/{case_id}": claim_body}
