"""A signed report as a FHIR R4 DiagnosticReport, validated by ``fhir.resources``.

``fhir.resources`` 7+ models FHIR R5 by default; ReadingRoom speaks R4
(the external contract's ``/fhir``), so this module builds the resource with
the library's R4B models, whose DiagnosticReport and Observation are the R4
shape (R4B changed neither). Building the model *is* the validation: a
wrong code, a missing required element or a malformed date raises before
anything leaves the server.

The narrative sections become contained Observations (``result``) so a
receiver can pick out the impression without parsing text; the whole
report also travels as ``presentedForm`` (plain text) and ``conclusion``.
"""

from __future__ import annotations

import base64
from datetime import UTC
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy.orm import Session

from readingroom.collab.report_reads import ReportDocument, document

#: DiagnosticReport.status of each signed version kind (an addendum appends to a final).
FHIR_STATUS = {"preliminary": "preliminary", "final": "final", "addendum": "appended"}
SECTION_SYSTEM = "urn:readingroom:report-section"


def build_diagnostic_report(session: Session, case_id: int, number: int | None = None) -> DiagnosticReport:
    """The DiagnosticReport of a signed version of the case's report (default: the latest signed one)."""
    return to_fhir(document(session, case_id, number, signed_only=True))


def _date(dicom_date: str) -> str | None:
    if len(dicom_date) == 8 and dicom_date.isdigit():
        return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"
    return None


def to_fhir(doc: ReportDocument) -> DiagnosticReport:
    status = FHIR_STATUS.get(doc.kind)
    if status is None:
        raise ValueError(f"only signed versions are published, not a {doc.kind}")
    observation_status = "preliminary" if doc.kind == "preliminary" else "final"
    contained: list[dict[str, Any]] = []
    for section in doc.sections:
        if not section.text.strip():
            continue
        contained.append({
            "resourceType": "Observation", "id": f"section-{section.id.replace('_', '-')}",
            "status": observation_status,
            "code": {"coding": [{"system": SECTION_SYSTEM, "code": section.id, "display": section.title}],
                     "text": section.title},
            "valueString": section.text,
        })
    identifiers: list[dict[str, Any]] = [{"system": "urn:readingroom:report", "value": f"case-{doc.case_id}"}]
    if doc.accession_number:
        identifiers.append({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                 "code": "ACSN"}]}, "value": doc.accession_number})
    subject: dict[str, Any] = {"display": doc.patient_name.replace("^", " ").strip() or doc.patient_id}
    if doc.patient_id:
        subject["identifier"] = {"value": doc.patient_id,
                                 **({"system": f"urn:readingroom:issuer:{doc.patient_issuer}"}
                                    if doc.patient_issuer else {})}
    text = doc.plain_text()
    data: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"report-{doc.case_id}",
        "meta": {"versionId": str(doc.number)},
        "identifier": identifiers,
        "status": status,
        "category": [{"coding": [{"system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": doc.template_title},
        "subject": subject,
        "issued": doc.created_at.astimezone(UTC).isoformat(),
        "resultsInterpreter": [{"display": doc.signer or doc.signed_by}],
        "conclusion": doc.impression or None,
        "presentedForm": [{"contentType": "text/plain; charset=utf-8", "language": "en",
                           "data": base64.b64encode(text.encode()).decode(), "title": doc.template_title}],
    }
    if contained:
        data["contained"] = contained
        data["result"] = [{"reference": f"#{obs['id']}", "display": obs["code"]["text"]} for obs in contained]
    if _date(doc.study_date):
        data["effectiveDateTime"] = _date(doc.study_date)
    if doc.study_uid:
        data["imagingStudy"] = [{"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{doc.study_uid}"}}]
    return DiagnosticReport.model_validate({k: v for k, v in data.items() if v is not None})
