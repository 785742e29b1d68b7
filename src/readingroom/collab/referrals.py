"""Referrals: a partner organisation asks a receiving site to read (or scan) a patient.

The life of a referral::

    received ──accept──► accepted (an order-like case waits for the images)
        │   └─decline (reason)──► declined
        └─ unanswered past its SLA ──► exception queue (once), still waiting for a decision

The receiving site answers within ``referral_sla_hours[priority]``; the
scheduler's ``flag_overdue`` puts a referral still unanswered at its due
time on the exception queue exactly once (a conditional UPDATE on
``sla_breached_at`` decides which process does it). Accepting creates the
case through the order entry point (``create_case_for_order``) with the
referral's accession number, so images the partner sends by STOW-RS or
DIMSE with that accession attach to it and the normal routing and reading
happen. If the images came first (intake already made a case for them),
accepting adopts that case instead. The partner gets an access grant to
the case to read its images and report.

Until a case exists the referral's own ``referral_events`` keep its times
(received, accepted, declined, sla_breached); the accepted case's event log
carries ``referral.accepted`` and everything after it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.referrals_models import Referral, ReferralEvent
from readingroom.collab.refusals import Refused
from readingroom.governance import audit, policy
from readingroom.governance.auth import Principal
from readingroom.governance.models import AccessGrant, Site
from readingroom.workflow import exceptions
from readingroom.workflow.cases import SYSTEM, Actor, create_case_for_order, log_event
from readingroom.workflow.enums import Priority
from readingroom.workflow.models import Case

EXCEPTION_KIND = "referral_overdue"
GRANT_KIND = "referral"


class ImagesPlan(StrEnum):
    TO_FOLLOW = "to_follow"  # the partner sends them with the referral's accession number
    SCAN_REQUESTED = "scan_requested"  # the receiving site is asked to scan the patient


class ReferralState(StrEnum):
    RECEIVED = "received"
    ACCEPTED = "accepted"
    DECLINED = "declined"


@dataclass(frozen=True)
class NewReferral:
    receiving_site_id: int
    patient_id: str
    patient_name: str
    birth_date: date
    sex: str
    clinical_question: str
    priority: Priority
    requested_procedure: str
    modality: str
    images: ImagesPlan
    issuer_of_patient_id: str = ""
    body_part: str = ""
    referring_physician: str = ""


def _actor(p: Principal) -> Actor:
    return Actor(name=p.username, user_id=p.user_id)


def _event(session: Session, referral: Referral, kind: str, actor: str, at: datetime,
           data: dict[str, Any] | None = None) -> None:
    session.add(ReferralEvent(referral_id=referral.id, at=at, kind=kind, actor=actor, data=data or {}))


def new_accession(session: Session) -> str:
    """A fresh accession number for the partner to put on the images (``RF`` + 12 hex digits, unused)."""
    while True:
        candidate = f"RF{secrets.token_hex(6).upper()}"
        if not session.scalar(select(Referral.id).where(Referral.accession_number == candidate)) and \
                not session.scalar(select(Case.id).where(Case.accession_number == candidate)):
            return candidate


def submit(session: Session, p: Principal, new: NewReferral, sla_hours: dict[str, float]) -> Referral:
    """Record a partner's referral (state ``received``) with its SLA due time and accession number."""
    if session.get(Site, new.receiving_site_id) is None:
        raise Refused("invalid", f"no receiving site {new.receiving_site_id}")
    if new.sex not in ("M", "F", "O", "U"):
        raise Refused("invalid", "sex must be M, F, O or U (DICOM Patient's Sex)")
    now = utcnow()
    if new.birth_date > now.date():
        raise Refused("invalid", "the birth date is in the future")
    hours = sla_hours.get(new.priority.value)
    if hours is None:
        raise Refused("invalid", f"no referral SLA is configured for priority {new.priority.value!r}")
    fields = {"patient_id": new.patient_id, "patient_name": new.patient_name,
              "clinical_question": new.clinical_question, "requested_procedure": new.requested_procedure,
              "modality": new.modality}
    empty = [name for name, value in fields.items() if not value.strip()]
    if empty:
        raise Refused("invalid", f"empty field(s): {', '.join(empty)}")
    referral = Referral(
        accession_number=new_accession(session), submitted_by=p.user_id, receiving_site_id=new.receiving_site_id,
        patient_id=new.patient_id.strip(), issuer_of_patient_id=new.issuer_of_patient_id.strip(),
        patient_name=new.patient_name.strip(), birth_date=new.birth_date, sex=new.sex,
        clinical_question=new.clinical_question.strip(), priority=new.priority.value,
        requested_procedure=new.requested_procedure.strip(), modality=new.modality.strip().upper(),
        body_part=new.body_part.strip().upper(), images=new.images.value,
        referring_physician=new.referring_physician.strip(), state=ReferralState.RECEIVED.value,
        sla_due_at=now + timedelta(hours=hours), created_at=now)
    session.add(referral)
    session.flush()
    _event(session, referral, "received", p.username, now,
           {"priority": referral.priority, "images": referral.images, "sla_due_at": referral.sla_due_at.isoformat()})
    audit.record(session, actor=p.username, action="referral.submit", resource_type="referral",
                 resource_id=str(referral.id), patient_id=referral.patient_id,
                 detail={"receiving_site_id": referral.receiving_site_id, "priority": referral.priority,
                         "accession_number": referral.accession_number})
    return referral


def may_manage(p: Principal, referral: Referral) -> bool:
    return policy.at_site(p, policy.REFERRALS_MANAGE, referral.receiving_site_id)


def get(session: Session, p: Principal, referral_id: int) -> Referral:
    """The referral if the caller submitted it or manages referrals at its receiving site; else ``not_found``."""
    referral = session.get(Referral, referral_id)
    if referral is None or (referral.submitted_by != p.user_id and not may_manage(p, referral)):
        raise Refused("not_found", f"no referral {referral_id}")
    return referral


def visible_list(session: Session, p: Principal, *, state: str | None = None, limit: int = 200) -> list[Referral]:
    """One's own referrals (partners) and those addressed to the sites one manages referrals for."""
    conds = [Referral.submitted_by == p.user_id]
    sites = policy.sites_where(p, policy.REFERRALS_MANAGE)
    q = select(Referral)
    if sites is None:
        conds = []
    elif sites:
        conds.append(Referral.receiving_site_id.in_(sorted(sites)))
    if conds:
        q = q.where(or_(*conds))
    if state:
        q = q.where(Referral.state == state)
    return list(session.scalars(q.order_by(Referral.id.desc()).limit(limit)))


def _decidable(session: Session, p: Principal, referral_id: int) -> Referral:
    referral = get(session, p, referral_id)
    if not may_manage(p, referral):
        raise Refused("forbidden", "only the receiving site's referral managers accept or decline")
    if referral.state != ReferralState.RECEIVED.value:
        raise Refused("conflict", f"the referral was already {referral.state}")
    return referral


def _claim_decision(session: Session, referral: Referral, state: ReferralState, p: Principal, now: datetime,
                    **values: Any) -> None:
    """Conditional UPDATE: exactly one of two managers answering at once wins; the other gets ``conflict``."""
    result = session.execute(update(Referral).where(Referral.id == referral.id,
                                                    Referral.state == ReferralState.RECEIVED.value)
                             .values(state=state.value, decided_by=p.username, decided_at=now, **values)
                             .execution_options(synchronize_session=False))
    if result.rowcount != 1:
        raise Refused("conflict", "the referral was answered meanwhile")
    session.refresh(referral)
    if referral.exception_item_id is not None:
        try:
            exceptions.resolve(session, referral.exception_item_id, actor=p.username,
                               resolution=f"referral {state.value}")
        except (exceptions.ExceptionNotFound, ValueError):
            pass  # already resolved by a supervisor


def decline(session: Session, p: Principal, referral_id: int, reason: str) -> Referral:
    """Decline with a reason the partner reads."""
    reason = " ".join(reason.split())
    if len(reason) < 5:
        raise Refused("invalid", "say why the referral is declined (at least a few words)")
    referral = _decidable(session, p, referral_id)
    now = utcnow()
    _claim_decision(session, referral, ReferralState.DECLINED, p, now, decline_reason=reason)
    _event(session, referral, "declined", p.username, now, {"reason": reason})
    audit.record(session, actor=p.username, action="referral.decline", resource_type="referral",
                 resource_id=str(referral.id), patient_id=referral.patient_id, detail={"reason": reason})
    return referral


def accept(session: Session, p: Principal, referral_id: int, access_days: float) -> Referral:
    """Accept: the order-like case (or the case of images that already arrived) and the partner's grant."""
    referral = _decidable(session, p, referral_id)
    now = utcnow()
    _claim_decision(session, referral, ReferralState.ACCEPTED, p, now)
    case = session.scalars(select(Case).where(Case.accession_number == referral.accession_number)
                           .order_by(Case.id).limit(1)).first()
    adopted = case is not None
    if case is None:
        case = create_case_for_order(
            session, accession_number=referral.accession_number, site_id=referral.receiving_site_id,
            modality=referral.modality, body_part=referral.body_part,
            description=referral.requested_procedure, priority=Priority(referral.priority),
            ordering_physician=referral.referring_physician, actor=_actor(p),
            order_fields={"referral_id": referral.id, "patient_id": referral.patient_id,
                          "issuer_of_patient_id": referral.issuer_of_patient_id,
                          "patient_name": referral.patient_name, "birth_date": referral.birth_date.isoformat(),
                          "sex": referral.sex, "clinical_question": referral.clinical_question,
                          "images": referral.images})
    referral.case_id = case.id
    # The case's timeline starts when the partner sent the referral, not when it was accepted: analytics
    # measure received -> accepted -> reported from the case's own event log.
    log_event(session, case.id, "referral.received", SYSTEM, case.state, case.state,
              {"referral_id": referral.id, "submitted_by": referral.submitted_by}, referral.created_at)
    log_event(session, case.id, "referral.accepted", _actor(p), case.state, case.state,
              {"referral_id": referral.id, "received_at": referral.created_at.isoformat(),
               "adopted_existing_case": adopted}, now)
    session.add(AccessGrant(user_id=referral.submitted_by, kind=GRANT_KIND, case_id=case.id, study_uid="",
                            include_priors=False, reason=f"referral #{referral.id} ({referral.accession_number})",
                            granted_by=p.username, created_at=now, expires_at=now + timedelta(days=access_days)))
    _event(session, referral, "accepted", p.username, now, {"case_id": case.id})
    session.flush()
    return referral


def flag_overdue(rt: Any, now: datetime | None = None, limit: int = 200) -> int:
    """Scheduler job: every referral unanswered past its SLA goes to the exception queue, once."""
    now = now or utcnow()
    with rt.db.read_session() as s:
        due = s.scalars(select(Referral.id).where(Referral.state == ReferralState.RECEIVED.value,
                                                  Referral.sla_breached_at.is_(None), Referral.sla_due_at <= now)
                        .order_by(Referral.sla_due_at).limit(limit)).all()
    flagged = 0
    for referral_id in due:
        with rt.db.session() as s:
            won = s.execute(update(Referral).where(Referral.id == referral_id, Referral.sla_breached_at.is_(None),
                                                   Referral.state == ReferralState.RECEIVED.value)
                            .values(sla_breached_at=now).execution_options(synchronize_session=False))
            if won.rowcount != 1:
                continue  # answered meanwhile, or another process flagged it
            referral = s.get(Referral, referral_id)
            assert referral is not None
            site = s.get(Site, referral.receiving_site_id)
            item = exceptions.raise_item(
                s, kind=EXCEPTION_KIND,
                reason=(f"referral #{referral.id} ({referral.accession_number}, {referral.priority}) to "
                        f"{site.code if site else referral.receiving_site_id} unanswered since "
                        f"{referral.created_at.isoformat()}; due {referral.sla_due_at.isoformat()}"))
            referral.exception_item_id = item.id if item is not None else None
            _event(s, referral, "sla_breached", "system", now, {"due": referral.sla_due_at.isoformat()})
            flagged += 1
    return flagged
