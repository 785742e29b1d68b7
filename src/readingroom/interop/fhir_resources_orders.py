"""Imaging orders as FHIR ServiceRequest, both ways: our Order row out, a client's ServiceRequest in.

Reading turns an ``orders`` row into a ServiceRequest; creating parses the
client's resource with the R4B model (structure and datatypes: a wrong
element is a 400 naming its path) and then reads it into the same
:class:`~readingroom.interop.orders.OrderInput` the HL7 edge fills, so an
order placed over FHIR goes through exactly the rules of an ORM^O01.

Where our order fields live in a ServiceRequest (documented in
docs/interop/fhir.md): placer / filler / accession numbers are identifiers
typed PLAC / FILL / ACSN, the procedure is ``code``, the DICOM modality is a
``category`` coding of the DCM system, the ordering site is a
``locationCode`` of system ``urn:readingroom:site``, the ordering provider is
``requester.display``, the reason ``reasonCode.text``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient
from readingroom.interop.fhir_resources import (
    DCM,
    dump,
    identifier,
    issuer_of_system,
    issuer_system,
    modality_coding,
    person_name,
    reference,
)
from readingroom.interop.fhir_search import FhirError, instant, validation_error
from readingroom.interop.models import Order
from readingroom.interop.orders import OrderInput

PLACER_PREFIX = "urn:readingroom:placer:"
SITE_SYSTEM = "urn:readingroom:site"
PROCEDURE_SYSTEM = "urn:readingroom:procedure"
#: Our worklist priorities as FHIR request priorities (critical has no FHIR word of its own: stat).
PRIORITY_OUT = {"routine": "routine", "urgent": "urgent", "stat": "stat", "critical": "stat"}
_GENDER_IN = {"male": "M", "female": "F", "other": "O", "unknown": ""}


def _placer_system(authority: str) -> str | None:
    return issuer_system(authority).replace("urn:readingroom:issuer:", PLACER_PREFIX) if authority else None


def service_request_resource(order: Order, site_code: str = "") -> dict[str, Any]:
    """One order as a ServiceRequest (status is the order's: active, completed, revoked, entered-in-error)."""
    ids: list[dict[str, Any]] = []
    if order.placer_order_number:
        ids.append(identifier(order.placer_order_number, _placer_system(order.placer_authority), "PLAC"))
    if order.filler_order_number:
        ids.append(identifier(order.filler_order_number, None, "FILL"))
    if order.accession_number:
        ids.append(identifier(order.accession_number, None, "ACSN"))
    subject: dict[str, Any] = (reference("Patient", order.patient_pk) if order.patient_pk is not None else
                               {"identifier": identifier(order.patient_id, issuer_system(order.patient_issuer))})
    data: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": str(order.id),
        "meta": {"lastUpdated": instant(order.updated_at)},
        "identifier": ids or None,
        "status": order.status, "intent": "order",
        "priority": PRIORITY_OUT.get(order.priority, "routine"),
        "subject": subject,
        "authoredOn": instant(order.requested_at or order.created_at),
    }
    if order.procedure_code or order.procedure_text:
        code: dict[str, Any] = {"text": order.procedure_text or order.procedure_code}
        if order.procedure_code:
            code["coding"] = [{"system": PROCEDURE_SYSTEM, "code": order.procedure_code,
                               **({"display": order.procedure_text} if order.procedure_text else {})}]
        data["code"] = code
    if order.modality:
        data["category"] = [{"coding": [modality_coding(order.modality)]}]
    if order.body_part:
        data["bodySite"] = [{"text": order.body_part}]
    if order.ordering_provider:
        data["requester"] = {"display": (person_name(order.ordering_provider) or {}).get("text")
                             or order.ordering_provider}
    if order.reason:
        data["reasonCode"] = [{"text": order.reason}]
    if site_code:
        data["locationCode"] = [{"coding": [{"system": SITE_SYSTEM, "code": site_code}]}]
    if order.case_id is not None:
        data["supportingInfo"] = [reference("Task", order.case_id, "the read this order causes")]
    return dump(ServiceRequest.model_validate({k: v for k, v in data.items() if v is not None}))


# -- a client's ServiceRequest -> OrderInput --------------------------------------------------------------------


def parse_service_request(body: Any) -> ServiceRequest:
    """The client's JSON as a validated R4 ServiceRequest (FhirError 400 with the failing paths otherwise)."""
    if not isinstance(body, dict):
        raise FhirError(400, "the body must be a JSON object (a ServiceRequest resource)", "structure")
    if body.get("resourceType") != "ServiceRequest":
        raise FhirError(400, f"expected resourceType ServiceRequest, got {body.get('resourceType')!r}",
                        "structure", ["resourceType"])
    try:
        return ServiceRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, "ServiceRequest") from None


def _code(concept: Any) -> tuple[str, str, str]:
    """(system, code, text) of a CodeableConcept's first coding (text falls back to the display)."""
    if concept is None:
        return "", "", ""
    coding = (concept.coding or [None])[0]
    system = (coding.system or "") if coding else ""
    code = (coding.code or "") if coding else ""
    text = concept.text or ((coding.display or "") if coding else "")
    return str(system), str(code), str(text)


def _type_code(ident: Any) -> str:
    return _code(ident.type)[1] if ident.type is not None else ""


def _contained_patient(sr: ServiceRequest, ref: str) -> Any:
    for res in sr.contained or []:
        if res.get_resource_type() == "Patient" and f"#{res.id}" == ref:
            return res
    raise FhirError(400, f"subject {ref!r} names no contained Patient", "invalid", ["ServiceRequest.subject"])


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def order_input(session: Session, sr: ServiceRequest, *, physician_name: str = "") -> OrderInput:
    """What the order service needs from a ServiceRequest (FhirError 422 for what it cannot express)."""
    if sr.intent not in ("order", "original-order", "instance-order"):
        raise FhirError(422, f"intent {sr.intent!r}: only orders are accepted (intent=order)", "business-rule",
                        ["ServiceRequest.intent"])
    data = OrderInput(source="fhir", priority=sr.priority or "routine",
                      ordering_provider=physician_name)
    for ident in sr.identifier or []:
        kind, value, system = _type_code(ident), str(ident.value or ""), str(ident.system or "")
        if kind == "FILL":
            data.filler_order_number = value
        elif kind == "ACSN":
            data.accession_number = value
        elif kind in ("PLAC", ""):
            data.placer_order_number = value
            data.placer_authority = system[len(PLACER_PREFIX):] if system.startswith(PLACER_PREFIX) else (
                issuer_of_system(system))
    _subject(session, sr, data)
    system, code, text = _code(sr.code)
    data.procedure_code, data.procedure_text = code, text
    for category in sr.category or []:
        system, code, _ = _code(category)
        if system == DCM and code:
            data.modality = code
    for site in sr.locationCode or []:
        system, code, _ = _code(site)
        if system == SITE_SYSTEM:
            data.site_code = code
    if sr.bodySite:
        data.body_part = _code(sr.bodySite[0])[2] or _code(sr.bodySite[0])[1]
    if sr.requester is not None and sr.requester.display:
        data.ordering_provider = str(sr.requester.display)
    if sr.reasonCode:
        data.reason = _code(sr.reasonCode[0])[2]
    data.requested_at = _when(sr.authoredOn)
    return data


def _subject(session: Session, sr: ServiceRequest, data: OrderInput) -> None:
    """The patient: ``Patient/{id}`` of ours, a contained Patient, or an identifier (system = issuer)."""
    subject = sr.subject
    ref = str(subject.reference or "")
    if ref.startswith("Patient/"):
        ident = ref.split("/", 1)[1]
        patient = session.get(Patient, int(ident)) if ident.isdigit() else None
        if patient is None:
            raise FhirError(422, f"subject {ref} does not exist", "not-found", ["ServiceRequest.subject"])
        data.patient_id, data.patient_issuer = patient.patient_id, patient.issuer
        return
    if ref.startswith("#"):
        patient = _contained_patient(sr, ref)
        ids = patient.identifier or []
        if not ids or not ids[0].value:
            raise FhirError(422, "the contained Patient needs an identifier", "required",
                            ["ServiceRequest.contained.identifier"])
        data.patient_id, data.patient_issuer = str(ids[0].value), issuer_of_system(str(ids[0].system or ""))
        if patient.name:
            name = patient.name[0]
            data.patient_name = "^".join([str(name.family or ""), " ".join(str(g) for g in name.given or [])])
        if patient.birthDate:
            data.birth_date = str(patient.birthDate).replace("-", "")
        data.sex = _GENDER_IN.get(str(patient.gender or "unknown"), "")
        return
    if subject.identifier is not None and subject.identifier.value:
        data.patient_id = str(subject.identifier.value)
        data.patient_issuer = issuer_of_system(str(subject.identifier.system or ""))
        return
    raise FhirError(422, "subject must be Patient/{id}, a contained Patient or a patient identifier", "required",
                    ["ServiceRequest.subject"])


__all__ = ["PLACER_PREFIX", "PRIORITY_OUT", "SITE_SYSTEM", "order_input", "parse_service_request",
           "service_request_resource"]
