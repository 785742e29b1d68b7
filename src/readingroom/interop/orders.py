"""Imaging orders from the RIS/EHR: place, change, cancel — one service for HL7 and FHIR.

An order is the clinical request (who asked, why, how urgent); the case is
the read it causes. Placing an order creates the patient record (ID
qualified by issuer: the site's Issuer of Patient ID when the message names
none), the order row and a case in state ``waiting`` whose priority is the
order's (``priority_source = "order"``), so the worklist can show the read
before the images exist and the SLA clock starts from the order's truth.
Reconciliation (``interop.reconcile``) later links the study; hooks
registered with :func:`on_order_placed` run in the same transaction, which
is how an order arriving *after* its images is linked at once.

Every change is one transaction: a refused order (:class:`OrderError`)
leaves nothing behind, which is what lets the HL7 edge answer AE/AR with
"nothing changed".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select
from sqlalchemy.orm import Session

from readingroom.archive.index import insert_for
from readingroom.archive.models import Patient
from readingroom.clock import utcnow
from readingroom.governance import audit, policy
from readingroom.governance.auth import Principal
from readingroom.governance.models import Site
from readingroom.interop.models import Order
from readingroom.workflow.cases import SYSTEM, Actor, create_case_for_order, log_event, transition
from readingroom.workflow.enums import Priority
from readingroom.workflow.models import Case
from readingroom.workflow.states import OPEN_STATES, IllegalTransition

ACTIVE = "active"
COMPLETED = "completed"
REVOKED = "revoked"
ENTERED_IN_ERROR = "entered-in-error"
STATUSES = (ACTIVE, COMPLETED, REVOKED, ENTERED_IN_ERROR)
#: Normalised patient classes (HL7 PV1-2 E/I/O, FHIR encounter class) -> the case's patient_class.
PATIENT_CLASSES = {"E": "ED", "ED": "ED", "EMER": "ED", "EMERGENCY": "ED", "I": "INPATIENT", "IMP": "INPATIENT",
                   "IP": "INPATIENT", "INPATIENT": "INPATIENT", "O": "OUTPATIENT", "AMB": "OUTPATIENT",
                   "OP": "OUTPATIENT", "OUTPATIENT": "OUTPATIENT"}


class OrderError(ValueError):
    """A refused order; the message is the readable reason (HL7 AE, HTTP 4xx)."""


class OrderNotFound(OrderError, LookupError):
    """No order matches the identifiers given."""


class DuplicateOrder(OrderError):
    """An active order with the same placer number and authority already exists."""


@dataclass
class OrderInput:
    """What an order message carries, whatever the protocol (HL7 ORM/OMI, FHIR ServiceRequest, REST)."""

    placer_order_number: str = ""
    placer_authority: str = ""
    filler_order_number: str = ""
    accession_number: str = ""
    site_code: str = ""
    patient_id: str = ""
    patient_issuer: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    procedure_code: str = ""
    procedure_text: str = ""
    modality: str = ""
    body_part: str = ""
    priority: str = "routine"
    patient_class: str = ""
    ordering_provider: str = ""
    reason: str = ""
    requested_at: datetime | None = None
    source: str = "api"
    source_message_id: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


OrderHook = Callable[[Session, Order], None]
_placed_hooks: list[OrderHook] = []


def on_order_placed(hook: OrderHook) -> OrderHook:
    """Register ``hook(session, order)``, run inside the transaction that placed (or changed) an order."""
    if hook not in _placed_hooks:
        _placed_hooks.append(hook)
    return hook


def remove_order_hook(hook: OrderHook) -> None:
    if hook in _placed_hooks:
        _placed_hooks.remove(hook)


def parse_priority(value: str) -> Priority:
    """An order's priority word or code as a worklist priority (HL7 S/A/R, FHIR stat/asap/urgent/routine)."""
    key = (value or "routine").strip().lower()
    key = {"s": "stat", "a": "urgent", "asap": "urgent", "r": "routine", "p": "routine", "c": "critical",
           "t": "urgent"}.get(key, key)
    try:
        return Priority(key)
    except ValueError:
        raise OrderError(f"unknown priority {value!r} (expected stat, urgent, routine or critical)") from None


def normalise_patient_class(value: str) -> str:
    key = (value or "").strip().upper()
    return PATIENT_CLASSES.get(key, key[:16])


def find_order(session: Session, *, placer_order_number: str = "", placer_authority: str = "",
               filler_order_number: str = "", accession_number: str = "", order_id: int | None = None) -> Order | None:
    """The order named by any of its identifiers, most specific first (id, placer, filler, accession)."""
    if order_id is not None:
        return session.get(Order, order_id)
    queries = []
    if placer_order_number:
        q = select(Order).where(Order.placer_order_number == placer_order_number)
        if placer_authority:
            q = q.where(Order.placer_authority == placer_authority)
        queries.append(q)
    if filler_order_number:
        queries.append(select(Order).where(Order.filler_order_number == filler_order_number))
    if accession_number:
        queries.append(select(Order).where(Order.accession_number == accession_number))
    for q in queries:
        found = session.scalars(q.order_by(Order.id.desc()).limit(1)).first()
        if found is not None:
            return found
    return None


def _site(session: Session, code: str) -> Site | None:
    if not code:
        return None
    site = session.scalars(select(Site).where(Site.code == code)).first()
    if site is None:
        raise OrderError(f"unknown site {code!r}")
    return site


def ensure_patient(session: Session, patient_id: str, issuer: str, *, name: str = "", birth_date: str = "",
                   sex: str = "") -> int:
    """The patient record for ``patient_id`` + ``issuer`` (created from the order when new).

    A record an ADT^A40 merged away is followed to its survivor, so a late
    order with the old ID lands on the right person.
    """
    now = utcnow()
    session.execute(insert_for(session, Patient).values(
        patient_id=patient_id[:64], issuer=issuer[:64], name=name[:324], birth_date=birth_date[:8], sex=sex[:16],
        attrs={}, created_at=now, updated_at=now).on_conflict_do_nothing())
    row = session.execute(select(Patient.id, Patient.merged_into_pk).where(
        Patient.patient_id == patient_id[:64], Patient.issuer == issuer[:64])).one()
    pk, merged_into = row
    seen = {pk}
    while merged_into is not None and merged_into not in seen:
        seen.add(merged_into)
        pk, merged_into = session.execute(select(Patient.id, Patient.merged_into_pk)
                                          .where(Patient.id == merged_into)).one()
    return pk


def _validate(data: OrderInput) -> Priority:
    if not (data.placer_order_number or data.accession_number or data.filler_order_number):
        raise OrderError("an order needs a placer order number, a filler order number or an accession number")
    if not data.patient_id:
        raise OrderError("an order needs the patient's identifier")
    if data.birth_date and not (len(data.birth_date) == 8 and data.birth_date.isdigit()):
        raise OrderError(f"birth date {data.birth_date!r} is not YYYYMMDD")
    return parse_priority(data.priority)


def _values(data: OrderInput, site: Site | None, patient_pk: int, priority: Priority) -> dict[str, Any]:
    return dict(
        placer_order_number=data.placer_order_number[:64], placer_authority=data.placer_authority[:64],
        filler_order_number=data.filler_order_number[:64], accession_number=data.accession_number[:64],
        site_id=site.id if site else None, patient_pk=patient_pk, patient_id=data.patient_id[:64],
        patient_issuer=(data.patient_issuer or (site.issuer_of_patient_id if site else ""))[:64],
        procedure_code=data.procedure_code[:64], procedure_text=data.procedure_text[:255],
        modality=data.modality.upper()[:16], body_part=data.body_part.upper()[:64], priority=priority.value,
        patient_class=normalise_patient_class(data.patient_class), ordering_provider=data.ordering_provider[:255],
        reason=data.reason, requested_at=data.requested_at, source=data.source[:16],
        source_message_id=data.source_message_id[:64], attrs=dict(data.attrs),
    )


def _order_fields(order: Order) -> dict[str, Any]:
    """What the case keeps of its order (routing rules match on these: ``order_fields``)."""
    return {"order_id": order.id, "placer_order_number": order.placer_order_number,
            "filler_order_number": order.filler_order_number, "procedure_code": order.procedure_code,
            "procedure_text": order.procedure_text, "reason": order.reason, "source": order.source}


def _run_hooks(session: Session, order: Order) -> None:
    for hook in list(_placed_hooks):
        hook(session, order)


def place_order(session: Session, data: OrderInput, actor: Actor = SYSTEM) -> Order:
    """A new order: patient, order row and its waiting case; DuplicateOrder if it is already active."""
    priority = _validate(data)
    if data.placer_order_number:
        existing = session.scalars(select(Order).where(
            Order.placer_order_number == data.placer_order_number, Order.placer_authority == data.placer_authority,
            Order.status.in_([ACTIVE, COMPLETED]))).first()
        if existing is not None:
            raise DuplicateOrder(f"order {data.placer_order_number} already exists (id {existing.id}, "
                                 f"{existing.status}); send a change (XO) instead")
    site = _site(session, data.site_code)
    issuer = data.patient_issuer or (site.issuer_of_patient_id if site else "")
    patient_pk = ensure_patient(session, data.patient_id, issuer, name=data.patient_name,
                                birth_date=data.birth_date, sex=data.sex)
    now = utcnow()
    order = Order(**_values(data, site, patient_pk, priority), status=ACTIVE, created_at=now, updated_at=now)
    session.add(order)
    session.flush()
    case = create_case_for_order(
        session, accession_number=order.accession_number, site_id=order.site_id, patient_pk=patient_pk,
        modality=order.modality, body_part=order.body_part, description=order.procedure_text,
        priority=priority, patient_class=order.patient_class, ordering_physician=order.ordering_provider,
        order_fields=_order_fields(order), actor=actor)
    order.case_id = case.id
    session.flush()
    _audit(session, actor, "order.placed", order)
    _run_hooks(session, order)
    return order


def change_order(session: Session, order: Order, data: OrderInput, actor: Actor = SYSTEM) -> Order:
    """Update an active order (HL7 XO/SC, FHIR update); its open case follows (priority, fields)."""
    if order.status not in (ACTIVE, COMPLETED):
        raise OrderError(f"order {order.id} is {order.status}; it cannot change")
    priority = _validate(data)
    site = _site(session, data.site_code) if data.site_code else (
        session.get(Site, order.site_id) if order.site_id else None)
    patient_pk = order.patient_pk or ensure_patient(session, data.patient_id, data.patient_issuer,
                                                    name=data.patient_name, birth_date=data.birth_date, sex=data.sex)
    before = {"priority": order.priority, "procedure_code": order.procedure_code, "accession": order.accession_number}
    for key, value in _values(data, site, patient_pk, priority).items():
        if key in ("patient_pk", "patient_id", "patient_issuer", "site_id") and getattr(order, key):
            continue  # identity and site are fixed by the first message; a move is a cancel + new order
        if key == "accession_number" and not value:
            continue
        setattr(order, key, value)
    order.updated_at = utcnow()
    session.flush()
    case = session.get(Case, order.case_id) if order.case_id else None
    if case is not None and case.state in {s.value for s in OPEN_STATES}:
        fields_ = {**(case.order_fields or {}), **_order_fields(order)}
        changes: dict[str, Any] = {"order_fields": fields_, "patient_class": order.patient_class,
                                   "ordering_physician": order.ordering_provider}
        if not case.study_pk:
            changes.update(accession_number=order.accession_number, modality=order.modality or case.modality,
                           description=(order.procedure_text or case.description)[:128])
        if case.priority != priority.value:
            changes.update(priority=priority.value, priority_rank=priority.rank, priority_source="order")
            transition(session, case.id, "priority_changed", actor, values=changes,
                       data={"from": case.priority, "to": priority.value, "reason": "order changed"})
        else:
            for key, value in changes.items():
                setattr(case, key, value)
            log_event(session, case.id, "order_changed", actor, case.state, case.state,
                      {"order_id": order.id, "before": before})
    _audit(session, actor, "order.changed", order, before=before)
    _run_hooks(session, order)
    return order


def cancel_order(session: Session, order: Order, reason: str, actor: Actor = SYSTEM) -> Order:
    """Cancel (HL7 CA/OC/DC, FHIR status=revoked): the order is revoked and its open read cancelled.

    A read already signed final stays final: the order's history cannot
    un-read a study; the cancellation is still recorded on the order.
    """
    if order.status == REVOKED:
        raise OrderError(f"order {order.id} is already cancelled")
    order.status = REVOKED
    order.updated_at = utcnow()
    if order.case_id:
        case = session.get(Case, order.case_id)
        if case is not None and case.state in {s.value for s in OPEN_STATES}:
            try:
                transition(session, case.id, "cancelled", actor, data={"reason": reason or "order cancelled",
                                                                        "order_id": order.id})
            except IllegalTransition as exc:
                raise OrderError(f"the order's case cannot be cancelled: {exc}") from exc
    session.flush()
    _audit(session, actor, "order.cancelled", order, reason=reason)
    return order


def complete_order(session: Session, order: Order, study_pk: int) -> None:
    """Mark the order fulfilled by a study (reconciliation)."""
    order.status = COMPLETED
    order.study_pk = study_pk
    order.updated_at = utcnow()
    session.flush()


def visible_orders(principal: Principal) -> ColumnElement[bool] | None:
    """SQL: the orders ``principal`` may see (None: all of them).

    Network roles (admin, AI engines) see every order, as they see every
    study; site admins and technologists their sites' orders; anyone with a
    physician name the orders naming them as ordering provider. The REST and
    FHIR edges both filter with this one condition.
    """
    sites = policy.sites_where(principal, policy.ARCHIVE_READ)
    if sites is None:
        return None
    site_wide = sorted(s for s in sites if principal.roles_at(s) & policy.SITE_WIDE_READ_ROLES)
    conds: list[ColumnElement[bool]] = []
    if site_wide:
        conds.append(Order.site_id.in_(site_wide))
    if principal.physician_name:
        conds.append(policy.names_physician(Order.ordering_provider, principal.physician_name))
    return or_(*conds) if conds else false()


def _audit(session: Session, actor: Actor, action: str, order: Order, **detail: Any) -> None:
    audit.record(session, actor=actor.name, action=action, resource_type="order", resource_id=str(order.id),
                 detail={"placer": order.placer_order_number, "accession": order.accession_number,
                         "patient_id": order.patient_id, "source": order.source, **detail})


def order_dict(order: Order) -> dict[str, Any]:
    """An order as JSON (REST answers and logs)."""
    out = {f.name: getattr(order, f.name) for f in fields(OrderInput)
           if f.name not in ("site_code", "patient_name", "birth_date", "sex") and hasattr(order, f.name)}
    out.update(id=order.id, status=order.status, case_id=order.case_id, study_pk=order.study_pk,
               site_id=order.site_id, created_at=order.created_at.isoformat(),
               updated_at=order.updated_at.isoformat(),
               requested_at=order.requested_at.isoformat() if order.requested_at else None)
    return out


__all__ = ["ACTIVE", "COMPLETED", "ENTERED_IN_ERROR", "REVOKED", "STATUSES", "DuplicateOrder",
           "OrderError", "OrderInput", "OrderNotFound", "cancel_order", "change_order", "complete_order",
           "ensure_patient", "find_order", "on_order_placed", "order_dict", "parse_priority", "place_order",
           "visible_orders"]
