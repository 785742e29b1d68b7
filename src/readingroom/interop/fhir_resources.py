"""Our archive rows as FHIR R4 resources: Patient and ImagingStudy, and the conventions all builders share.

ReadingRoom speaks R4 at ``/fhir``; ``fhir.resources`` models R5 by default,
so every builder uses the library's R4B models (the R4 shape of these
resources; see collab/report_fhir.py). Building the model *is* the
validation: a wrong element or a malformed date raises here, before
anything leaves the server.

Ids are chosen so a client can go from DICOM to FHIR without a lookup: an
ImagingStudy's id is its Study Instance UID (digits and dots fit FHIR's id
syntax), a Patient's is the archive row, a ServiceRequest's the order, a
Task's the case, a Communication's the critical result.
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient as FhirPatient
from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.archive.models import Instance, Patient, Series, Study
from readingroom.interop.fhir_search import instant

DCM = "http://dicom.nema.org/resources/ontology/DCM"  # DICOM CID 29 (modalities)
DICOM_UID = "urn:dicom:uid"
ISSUER_PREFIX = "urn:readingroom:issuer:"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_GENDER = {"M": "male", "F": "female", "O": "other"}
#: DICOM CID 29 acquisition modalities and a few common others with their display names.
MODALITY_NAMES = {"CT": "Computed Tomography", "MR": "Magnetic Resonance", "CR": "Computed Radiography",
                  "DX": "Digital Radiography", "US": "Ultrasound", "NM": "Nuclear Medicine",
                  "PT": "Positron emission tomography", "MG": "Mammography", "XA": "X-Ray Angiography",
                  "RF": "Radio Fluoroscopy", "OT": "Other", "SR": "SR Document", "SC": "Secondary Capture",
                  "PR": "Presentation State", "KO": "Key Object Selection", "SEG": "Segmentation",
                  "IO": "Intra-oral Radiography", "PX": "Panoramic X-Ray", "OP": "Ophthalmic Photography",
                  "XC": "External-camera Photography", "ES": "Endoscopy"}


# -- shared conventions ----------------------------------------------------------------------------------------


def issuer_system(issuer: str) -> str | None:
    """The identifier system of an Issuer of Patient ID: ``urn:oid:`` for an OID, else our own URN."""
    if not issuer:
        return None
    return f"urn:oid:{issuer}" if _OID.match(issuer) else f"{ISSUER_PREFIX}{issuer}"


def issuer_of_system(system: str) -> str:
    """The issuer an identifier system names (the inverse of :func:`issuer_system`); '' for no system."""
    for prefix in ("urn:oid:", ISSUER_PREFIX):
        if system.startswith(prefix):
            return system[len(prefix):]
    return system


def identifier(value: str, system: str | None = None, type_code: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value}
    if system:
        out["system"] = system
    if type_code:
        out["type"] = {"coding": [{"system": V2_0203, "code": type_code}]}
    return out


def fhir_date(dicom_date: str) -> str | None:
    """``YYYYMMDD`` -> ``YYYY-MM-DD`` (None when not a full date)."""
    if len(dicom_date) == 8 and dicom_date.isdigit():
        return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"
    return None


def fhir_datetime(dicom_date: str) -> str | None:
    """When a study or series started, to the day: a FHIR dateTime with a time needs a zone, and DICOM
    times are the modality's local time with no zone, so the date alone is the honest answer."""
    return fhir_date(dicom_date)


def modality_coding(code: str) -> dict[str, Any]:
    coding = {"system": DCM, "code": code}
    if code in MODALITY_NAMES:
        coding["display"] = MODALITY_NAMES[code]
    return coding


def person_name(pn: str) -> dict[str, Any] | None:
    """A DICOM/HL7 person name (``Family^Given^Middle^Prefix^Suffix``) as a HumanName."""
    alphabetic = (pn or "").split("=", 1)[0]
    parts = [p.strip() for p in alphabetic.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    if not any((family, given, middle)):
        return None
    name: dict[str, Any] = {"text": " ".join(p for p in (prefix, given, middle, family, suffix) if p)}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [p for p in (given, middle) if p]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


def reference(resource_type: str, ident: Any, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"reference": f"{resource_type}/{ident}"}
    if display:
        out["display"] = display
    return out


def dump(model: Any) -> dict[str, Any]:
    """A validated model as JSON-ready data (absent elements left out)."""
    return model.model_dump(mode="json", exclude_none=True)


# -- Patient ---------------------------------------------------------------------------------------------------


def patient_resource(patient: Patient) -> dict[str, Any]:
    """An archive patient (one ID of one issuer); a merged record links to its survivor (``replaced-by``)."""
    data: dict[str, Any] = {
        "resourceType": "Patient", "id": str(patient.id),
        "meta": {"lastUpdated": instant(patient.updated_at)},
        "identifier": [{**identifier(patient.patient_id, issuer_system(patient.issuer), "MR"),
                        **({"assigner": {"display": patient.issuer}} if patient.issuer else {})}],
        "active": patient.merged_into_pk is None,
    }
    name = person_name(patient.name)
    if name:
        data["name"] = [name]
    data["gender"] = _GENDER.get((patient.sex or "").upper()[:1], "unknown")
    if fhir_date(patient.birth_date):
        data["birthDate"] = fhir_date(patient.birth_date)
    if patient.merged_into_pk is not None:
        data["link"] = [{"other": reference("Patient", patient.merged_into_pk), "type": "replaced-by"}]
    return dump(FhirPatient.model_validate(data))


# -- ImagingStudy ----------------------------------------------------------------------------------------------


def _endpoint(wado_base: str) -> dict[str, Any]:
    return {
        "resourceType": "Endpoint", "id": "dicomweb", "status": "active",
        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                           "code": "dicom-wado-rs"},
        "payloadType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type",
                                     "code": "DICOM WADO-RS"}], "text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"],
        "address": wado_base,
    }


def imaging_study_resource(session: Session, study: Study, patient: Patient, wado_base: str,
                           order_id: int | None = None, *, with_instances: bool = True) -> dict[str, Any]:
    """A study with its series and instances, reachable through the contained DICOMweb Endpoint.

    ``with_instances`` leaves the instance lists out (search pages of large
    studies); a read always has them.
    """
    data: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": study.study_uid,
        "meta": {"lastUpdated": instant(study.last_received_at)},
        "contained": [_endpoint(wado_base)],
        "identifier": [identifier(f"urn:oid:{study.study_uid}", DICOM_UID)],
        "status": "available" if study.state == "complete" else "registered",
        "subject": reference("Patient", patient.id, (person_name(patient.name) or {}).get("text")),
        "endpoint": [{"reference": "#dicomweb"}],
        "numberOfSeries": study.num_series,
        "numberOfInstances": study.num_instances,
    }
    if study.accession_number:
        data["identifier"].append(identifier(study.accession_number, None, "ACSN"))
    if order_id is not None:
        data["basedOn"] = [reference("ServiceRequest", order_id)]
    started = fhir_datetime(study.study_date)
    if started:
        data["started"] = started
    if study.description:
        data["description"] = study.description
    if study.referring_physician and person_name(study.referring_physician):
        data["referrer"] = {"display": person_name(study.referring_physician)["text"]}  # type: ignore[index]
    modalities = [m for m in (study.modalities or "").split("\\") if m]
    if modalities:
        data["modality"] = [modality_coding(m) for m in modalities]
    series_rows = session.scalars(select(Series).where(Series.study_pk == study.id)
                                  .order_by(Series.series_number, Series.id)).all()
    instances: dict[int, list[Instance]] = {}
    if with_instances and series_rows:
        for inst in session.scalars(select(Instance).where(Instance.study_pk == study.id)
                                    .order_by(Instance.instance_number, Instance.id)):
            instances.setdefault(inst.series_pk, []).append(inst)
    if series_rows:
        data["series"] = [_series(s, instances.get(s.id, []), with_instances) for s in series_rows]
    return dump(ImagingStudy.model_validate(data))


def _series(series: Series, instances: list[Instance], with_instances: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": series.series_uid, "modality": modality_coding(series.modality or "OT"),
                           "numberOfInstances": series.num_instances,
                           "endpoint": [{"reference": "#dicomweb"}]}
    if series.series_number is not None:
        out["number"] = series.series_number
    if series.description:
        out["description"] = series.description
    if series.body_part:
        out["bodySite"] = {"display": series.body_part}
    started = fhir_datetime(series.performed_start_date)
    if started:
        out["started"] = started
    if with_instances and instances:
        out["instance"] = [
            {"uid": i.sop_uid, "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i.sop_class_uid}"},
             **({"number": i.instance_number} if i.instance_number is not None else {})}
            for i in instances]
    return out
