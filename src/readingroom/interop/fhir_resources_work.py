"""The reading work as FHIR: Task (cases and child reads), Communication (critical results), DiagnosticReport.

A case is the unit of work of the reading room, so it is a Task: its state
maps to a Task status (the exact case state travels in ``businessStatus``),
a consult or second opinion is a Task ``partOf`` its parent's. Changing a
Task's status is only a way to ask for a case transition that exists
(claim, release, complete, cancel): :func:`change_task_status` runs the
same service functions as the REST API, with the same conditional updates,
so FHIR cannot move a case anywhere the worklist could not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.task import Task
from sqlalchemy.orm import Session

from readingroom.collab.critical_models import CriticalResult
from readingroom.collab.report_fhir import build_diagnostic_report
from readingroom.governance import policy
from readingroom.governance.auth import Principal
from readingroom.interop.fhir_resources import DICOM_UID, dump, identifier, issuer_system, reference
from readingroom.interop.fhir_resources_orders import PRIORITY_OUT
from readingroom.interop.fhir_search import FhirError, instant
from readingroom.workflow.cases import Actor, claim, get_case, release, transition
from readingroom.workflow.models import Case
from readingroom.workflow.states import IllegalTransition, NotEligible

#: Case state -> Task status (FHIR R4 task-status).
TASK_STATUS = {"waiting": "requested", "new": "requested", "available": "ready", "claimed": "in-progress",
               "preliminary": "in-progress", "final": "completed", "cancelled": "cancelled",
               "exception": "on-hold"}
TASK_STATUSES = frozenset({"draft", "requested", "received", "accepted", "rejected", "ready", "cancelled",
                           "in-progress", "on-hold", "failed", "completed", "entered-in-error"})
CASE_STATE_SYSTEM = "urn:readingroom:case-state"
TASK_KIND_SYSTEM = "urn:readingroom:task-kind"


@dataclass(frozen=True)
class CaseFacts:
    """A case with what its Task refers to: the study, the order, the claimer's name."""

    case: Case
    study_uid: str | None = None
    order_id: int | None = None
    claimer: str | None = None


def task_resource(facts: CaseFacts) -> dict[str, Any]:
    case = facts.case
    data: dict[str, Any] = {
        "resourceType": "Task", "id": str(case.id),
        "meta": {"lastUpdated": instant(case.updated_at)},
        "status": TASK_STATUS.get(case.state, "on-hold"),
        "businessStatus": {"coding": [{"system": CASE_STATE_SYSTEM, "code": case.state}], "text": case.state},
        "intent": "order",
        "priority": PRIORITY_OUT.get(case.priority, "routine"),
        "code": {"coding": [{"system": TASK_KIND_SYSTEM, "code": case.kind}],
                 "text": "read" if case.kind == "read" else case.kind.replace("_", " ")},
        "authoredOn": instant(case.created_at),
        "lastModified": instant(case.updated_at),
    }
    if case.accession_number:
        data["identifier"] = [identifier(case.accession_number, None, "ACSN")]
    if case.description:
        data["description"] = case.description
    if case.parent_case_id is not None:
        data["partOf"] = [reference("Task", case.parent_case_id)]
        data["focus"] = reference("Task", case.parent_case_id, "the case this is asked about")
    elif facts.study_uid:
        data["focus"] = reference("ImagingStudy", facts.study_uid)
    elif facts.order_id is not None:
        data["focus"] = reference("ServiceRequest", facts.order_id)
    if facts.order_id is not None:
        data["basedOn"] = [reference("ServiceRequest", facts.order_id)]
    if case.patient_pk is not None:
        data["for"] = reference("Patient", case.patient_pk)
    if facts.claimer:
        data["owner"] = {"display": facts.claimer}
    if case.deadline is not None:
        data["restriction"] = {"period": {"end": instant(case.deadline)}}
    return dump(Task.model_validate(data))


def communication_resource(result: CriticalResult, case: Case, recipients: list[str]) -> dict[str, Any]:
    """A critical result: sent (``in-progress``) until acknowledged (``completed``), to whom, what."""
    acknowledged = result.state == "acknowledged"
    data: dict[str, Any] = {
        "resourceType": "Communication", "id": str(result.id),
        "meta": {"lastUpdated": instant(result.acknowledged_at or result.created_at)},
        "status": "completed" if acknowledged else "in-progress",
        "statusReason": {"coding": [{"system": "urn:readingroom:critical-state", "code": result.state}],
                         "text": "acknowledged" if acknowledged else "sent"},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/communication-category",
                                  "code": "alert"}], "text": f"critical result, level {result.level}"}],
        "priority": "stat",
        "about": [reference("Task", case.id)],
        "sent": instant(result.created_at),
        "sender": {"display": result.flagged_by_name},
        "recipient": [{"display": r} for r in recipients] or None,
        "payload": [{"contentString": result.finding},
                    {"contentString": f"category: {result.category}; level: {result.level}"}],
    }
    if case.patient_pk is not None:
        data["subject"] = reference("Patient", case.patient_pk)
    if acknowledged:
        data["received"] = instant(result.acknowledged_at)
        data["note"] = [{"authorString": result.acknowledged_by_name,
                         "text": result.ack_note or "acknowledged"}]
    return dump(Communication.model_validate({k: v for k, v in data.items() if v is not None}))


def diagnostic_report_resource(session: Session, case: Case, *, patient_issuer: str, patient_id: str,
                               order_id: int | None, last_updated: Any) -> dict[str, Any]:
    """The latest signed version of the case's report (collab.report_fhir), with references to our resources."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    data = dump(build_diagnostic_report(session, case.id))
    data.setdefault("meta", {})["lastUpdated"] = instant(last_updated)
    if case.patient_pk is not None:
        subject = {**data.get("subject", {}), **reference("Patient", case.patient_pk)}
        if patient_id:
            subject["identifier"] = identifier(patient_id, issuer_system(patient_issuer))
        data["subject"] = subject
    if order_id is not None:
        data["basedOn"] = [reference("ServiceRequest", order_id)]
    for study in data.get("imagingStudy", []):
        uid = study.get("identifier", {}).get("value", "")
        if study.get("identifier", {}).get("system") == DICOM_UID and uid.startswith("urn:oid:"):
            study["reference"] = f"ImagingStudy/{uid[len('urn:oid:'):]}"
    return dump(DiagnosticReport.model_validate(data))


# -- Task status changes -> case transitions ---------------------------------------------------------------------


def change_task_status(session: Session, case_id: int, status: str, principal: Principal) -> Case:
    """Ask for the case transition a new Task status means; the case as it is afterwards.

    ``in-progress`` claims (the caller becomes the reader), ``ready``
    releases the caller's claim, ``completed`` completes a claimed read that
    has no report of its own (a report completes by being signed final),
    ``cancelled`` cancels (supervisors of the case's site). Asking for the
    status the Task already has changes nothing. Raises NotEligible (403),
    IllegalTransition (409) or FhirError.
    """
    if status not in TASK_STATUSES:
        raise FhirError(400, f"{status!r} is not a Task status", "value", ["Task.status"])
    case = get_case(session, case_id)
    actor = Actor(name=principal.username, user_id=principal.user_id)
    current = TASK_STATUS.get(case.state, "on-hold")
    if status == current and (status != "in-progress" or case.claimed_by == principal.user_id):
        return case
    if status == "in-progress":
        return claim(session, case_id, actor)
    if status == "ready" and case.state == "claimed":
        return release(session, case_id, actor)
    if status == "completed" and case.state in ("claimed", "preliminary"):
        from readingroom.collab.reports import has_unsigned_report

        if case.claimed_by != principal.user_id:
            raise NotEligible("only the reader who claimed the case can complete it")
        if has_unsigned_report(session, case_id):
            raise IllegalTransition("completed", case.state, "this case has a report: sign it final to complete it")
        return transition(session, case_id, "completed", actor)
    if status == "cancelled":
        if not policy.at_site(principal, policy.CASES_ADMIN, case.site_id):
            raise NotEligible("only a supervisor of the case's site can cancel it")
        return transition(session, case_id, "cancelled", actor, data={"reason": "cancelled through FHIR Task"})
    raise IllegalTransition(status, case.state,
                            f"a case that is {case.state} (Task {current}) cannot become {status}")
