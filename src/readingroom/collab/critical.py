"""Critical results: flag, notify, acknowledge, escalate — a closed loop with a record of every step.

A reader flags a finding (category, ACR-style urgency level, text). The
ordering clinician is told at once; each level allows a configurable time
to acknowledge (``critical_ack_minutes``). Without an acknowledgement the
scheduler climbs a ladder, one step per elapsed window:

====  ==========  =============================================================
step  role        who
====  ==========  =============================================================
0     clinician   the account whose physician name names the case's ordering
                  physician (else the study's referring physician)
1     delegate    the clinician's active delegate (``critical_delegation``)
2     supervisor  site administrators of the case's site and the configured
                  ``critical_escalation_contacts`` (last step)
====  ==========  =============================================================

A step with nobody to tell is recorded (``no_recipient``) and passed over
at once. Each step is claimed with a conditional UPDATE on
``escalation_step``, so it happens at most once however many processes run
the job, and it appends a case event (``critical.sent``,
``critical.escalated``, ``critical.acknowledged``) in the same transaction.

Notifications are written as ``pending`` rows with the step and delivered
after the commit (live stream, webhook, log); ``deliver`` then records each
outcome. Recipients who cannot see the case yet (a delegate, a contact) get
a case-scoped access grant so they can open it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, insert, or_, select, update
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.critical_delegation import active_delegate
from readingroom.collab.critical_delivery import Delivery, Outcome, deliver
from readingroom.collab.critical_models import CriticalNotification, CriticalResult
from readingroom.config import Settings
from readingroom.governance import policy
from readingroom.governance.auth import Principal, principal_for
from readingroom.governance.models import AccessGrant, SiteMembership, User
from readingroom.runtime import Runtime
from readingroom.workflow.cases import SYSTEM, Actor, log_event
from readingroom.workflow.models import Case
from readingroom.workflow.notify import Notification

log = logging.getLogger(__name__)

STEPS = ("clinician", "delegate", "supervisor")
#: How long a recipient's case-scoped access grant lasts.
GRANT_DAYS = 30


class CriticalError(ValueError):
    """Bad input (unknown level, empty finding ...)."""


class CriticalNotFound(LookupError):
    """No such critical result."""


class NotRecipient(PermissionError):
    """The caller was not told of this result and does not act for someone who was."""


class AlreadyAcknowledged(RuntimeError):
    """The loop is closed already."""


@dataclass(frozen=True)
class Level:
    code: str
    name: str
    ack_minutes: float


def levels(settings: Settings) -> dict[str, Level]:
    """The configured urgency levels, most urgent first."""
    names = settings.critical_level_names
    return {code: Level(code, names.get(code, f"level {code}"), float(minutes))
            for code, minutes in sorted(settings.critical_ack_minutes.items())}


# -- who is told ---------------------------------------------------------------------------------------------


def find_clinician(session: Session, case: Case) -> tuple[str, User | None]:
    """The ordering clinician's name (order, else the study's referring physician) and their account."""
    from readingroom.archive.models import Study

    name = case.ordering_physician
    if not policy.physician_key(name) and case.study_pk is not None:
        name = session.scalar(select(Study.referring_physician).where(Study.id == case.study_pk)) or ""
    if not policy.physician_key(name):
        return name, None
    matches = session.scalars(select(User).where(User.active, policy.names_physician(User.physician_name, name))
                              .order_by(User.id)).all()
    for user in matches:  # prefer an account that may acknowledge
        if policy.CRITICAL_ACK in policy.actions_for_role(user.role):
            return name, user
    return name, matches[0] if matches else None


def _supervisors(session: Session, site_id: int | None) -> list[User]:
    if site_id is None:
        return []
    member = exists().where(SiteMembership.user_id == User.id, SiteMembership.site_id == site_id)
    as_admin = exists().where(SiteMembership.user_id == User.id, SiteMembership.site_id == site_id,
                              SiteMembership.role == "site_admin")
    return list(session.scalars(select(User).where(
        User.active, or_(and_(User.role == "site_admin", or_(User.site_id == site_id, member)), as_admin))
        .order_by(User.username)))


def _recipients(session: Session, settings: Settings, result: CriticalResult, case: Case, step: int,
                now: datetime) -> tuple[list[User], str]:
    """The accounts to tell at ``step``, or none and why."""
    role = STEPS[step]
    clinician = session.get(User, result.clinician_id) if result.clinician_id else None
    if role == "clinician":
        if clinician is None or not clinician.active:
            return [], f"no active account for the ordering physician {result.clinician_name or '(none named)'}"
        return [clinician], ""
    if role == "delegate":
        if clinician is None:
            return [], "no clinician account, so no delegate"
        delegate = active_delegate(session, clinician.id, now)
        return ([delegate], "") if delegate else ([], f"{clinician.username} has no active delegate")
    users = _supervisors(session, case.site_id)
    known = {u.id for u in users}
    for name in settings.critical_escalation_contacts:
        contact = session.scalars(select(User).where(User.username == name, User.active)).first()
        if contact is not None and contact.id not in known:
            users.append(contact)
            known.add(contact.id)
    return users, "" if users else "the site has no supervisors and no escalation contacts are configured"


def _grant_access(session: Session, user: User, case: Case, result_id: int, granted_by: str,
                  now: datetime) -> bool:
    """Let a recipient open the case (a case-scoped grant) unless they already may."""
    if policy.can_see_case(session, principal_for(session, user), case):
        return False
    session.add(AccessGrant(user_id=user.id, kind="critical_result", case_id=case.id, study_uid="",
                            include_priors=True, reason=f"critical result {result_id}", granted_by=granted_by,
                            created_at=now, expires_at=now + timedelta(days=GRANT_DAYS)))
    return True


def _channels(settings: Settings) -> list[str]:
    return ["live", *(["webhook"] if settings.notify_webhook_url else []), "log"]


def _run_step(session: Session, settings: Settings, result: CriticalResult, case: Case, step: int,
              actor: Actor, now: datetime, out: Outcome) -> None:
    """Tell the recipients of ``step`` (passing over empty steps); the row is already claimed at ``step``."""
    level = levels(settings)[result.level]
    while True:
        role = STEPS[step]
        users, why = _recipients(session, settings, result, case, step, now)
        last = step == len(STEPS) - 1
        if step > 0:
            log_event(session, case.id, "critical.escalated", actor, case.state, case.state,
                      {"critical_id": result.id, "step": step, "to": role,
                       "recipients": [u.username for u in users], "reason": why or "not acknowledged in time"},
                      now)
        if not users:
            session.execute(insert(CriticalNotification).values(
                result_id=result.id, step=step, role=role, channel="none", recipient="-", at=now,
                outcome="no_recipient", detail=why))
            if last:
                _set_step(session, result.id, step, None)
                return
            step += 1
            _set_step(session, result.id, step, None)
            continue
        for user in users:
            out.grants |= _grant_access(session, user, case, result.id, actor.name, now)
            for channel in _channels(settings):
                note = Notification(
                    kind="critical.sent" if step == 0 else "critical.escalated", recipients=(user.username,),
                    subject=(f"critical result on case {case.id} (level {level.code}, {level.name}: "
                             f"{result.category}); acknowledge by {result.ack_deadline.isoformat()}"),
                    data={"critical_id": result.id, "case_id": case.id, "level": level.code, "step": step,
                          "role": role, "category": result.category})
                row_id = session.execute(insert(CriticalNotification).values(
                    result_id=result.id, step=step, role=role, channel=channel, recipient=user.username,
                    recipient_id=user.id, at=now, outcome="pending", detail="").returning(
                    CriticalNotification.id)).scalar_one()
                out.deliveries.append(Delivery(row_id, channel, user.username, user.id, note))
        _set_step(session, result.id, step, None if last else now + timedelta(minutes=level.ack_minutes))
        return


def _set_step(session: Session, result_id: int, step: int, next_at: datetime | None) -> None:
    session.execute(update(CriticalResult).where(CriticalResult.id == result_id)
                    .values(escalation_step=step, next_escalation_at=next_at)
                    .execution_options(synchronize_session=False))


# -- flag, acknowledge, escalate -----------------------------------------------------------------------------


def flag(session: Session, settings: Settings, case: Case, actor: Actor, *, category: str, level: str,
         finding: str) -> Outcome:
    """Record a critical finding on ``case`` and tell the clinician (deliver the outcome after commit)."""
    category, finding = category.strip(), finding.strip()
    known = levels(settings)
    if level not in known:
        raise CriticalError(f"unknown level {level!r}; levels are {', '.join(known)}")
    if not category:
        raise CriticalError("category is empty")
    if not finding:
        raise CriticalError("finding is empty")
    now = utcnow()
    name, clinician = find_clinician(session, case)
    result = CriticalResult(case_id=case.id, category=category[:64], level=level, finding=finding,
                            flagged_by=actor.user_id, flagged_by_name=actor.name, clinician_name=name[:128],
                            clinician_id=clinician.id if clinician else None, state="open", created_at=now,
                            ack_deadline=now + timedelta(minutes=known[level].ack_minutes), escalation_step=0,
                            ack_note="", acknowledged_by_name="")
    session.add(result)
    session.flush()
    log_event(session, case.id, "critical.sent", actor, case.state, case.state,
              {"critical_id": result.id, "level": level, "category": result.category,
               "clinician": clinician.username if clinician else None, "clinician_name": name,
               "ack_deadline": result.ack_deadline.isoformat()}, now)
    out = Outcome(result.id, case.id)
    _run_step(session, settings, result, case, 0, actor, now, out)
    return out


def may_acknowledge(session: Session, principal: Principal, result: CriticalResult) -> bool:
    """The clinician, their active delegate, or anyone the ladder told of this result."""
    if principal.user_id == result.clinician_id:
        return True
    if result.clinician_id is not None:
        delegate = active_delegate(session, result.clinician_id)
        if delegate is not None and delegate.id == principal.user_id:
            return True
    return session.execute(select(CriticalNotification.id).where(
        CriticalNotification.result_id == result.id,
        CriticalNotification.recipient_id == principal.user_id).limit(1)).first() is not None


def acknowledge(session: Session, result_id: int, principal: Principal, note: str = "") -> CriticalResult:
    """Close the loop (once): stops the escalation ladder."""
    result = get_result(session, result_id)
    if result.state != "open":
        raise AlreadyAcknowledged(f"critical result {result_id} was acknowledged by {result.acknowledged_by_name} "
                                  f"at {result.acknowledged_at.isoformat() if result.acknowledged_at else '?'}")
    if not may_acknowledge(session, principal, result):
        raise NotRecipient("only the clinician told of this result, their delegate, or an escalation recipient "
                           "may acknowledge it")
    now = utcnow()
    closed = session.execute(
        update(CriticalResult).where(CriticalResult.id == result_id, CriticalResult.state == "open")
        .values(state="acknowledged", acknowledged_by=principal.user_id, acknowledged_by_name=principal.username,
                acknowledged_at=now, ack_note=note.strip(), next_escalation_at=None)
        .execution_options(synchronize_session=False))
    if closed.rowcount != 1:
        raise AlreadyAcknowledged(f"critical result {result_id} was acknowledged meanwhile")
    case = session.get(Case, result.case_id)
    assert case is not None
    log_event(session, case.id, "critical.acknowledged", Actor(principal.username, principal.user_id), case.state,
              case.state, {"critical_id": result_id, "step": result.escalation_step,
                           "within_deadline": now <= result.ack_deadline,
                           "minutes": round((now - result.created_at).total_seconds() / 60, 1)}, now)
    session.refresh(result)
    return result


def escalate_due(rt: Runtime, now: datetime | None = None, limit: int = 200) -> int:
    """Climb one ladder step for every open result whose window ran out; returns how many steps were taken."""
    now = now or utcnow()
    with rt.db.read_session() as s:
        due = s.execute(select(CriticalResult.id, CriticalResult.escalation_step).where(
            CriticalResult.state == "open", CriticalResult.next_escalation_at.is_not(None),
            CriticalResult.next_escalation_at <= now, CriticalResult.escalation_step < len(STEPS) - 1)
            .order_by(CriticalResult.next_escalation_at).limit(limit)).all()
    taken = 0
    for result_id, step in due:
        out = Outcome(result_id, 0)
        with rt.db.session() as s:
            claimed = s.execute(
                update(CriticalResult).where(CriticalResult.id == result_id, CriticalResult.state == "open",
                                             CriticalResult.escalation_step == step,
                                             CriticalResult.next_escalation_at <= now)
                .values(escalation_step=step + 1).execution_options(synchronize_session=False))
            if claimed.rowcount != 1:
                continue  # another process took this step, or it was acknowledged meanwhile
            result = s.get(CriticalResult, result_id)
            case = s.get(Case, result.case_id) if result else None
            if result is None or case is None:
                continue
            out.case_id = case.id
            _run_step(s, rt.settings, result, case, step + 1, SYSTEM, now, out)
        taken += 1
        deliver(rt, out)
    return taken


# -- reading -------------------------------------------------------------------------------------------------


def get_result(session: Session, result_id: int) -> CriticalResult:
    result = session.get(CriticalResult, result_id)
    if result is None:
        raise CriticalNotFound(f"no critical result {result_id}")
    return result


def notifications(session: Session, result_id: int) -> list[CriticalNotification]:
    return list(session.scalars(select(CriticalNotification).where(CriticalNotification.result_id == result_id)
                                .order_by(CriticalNotification.step, CriticalNotification.id)))


def for_case(session: Session, case_id: int) -> list[CriticalResult]:
    return list(session.scalars(select(CriticalResult).where(CriticalResult.case_id == case_id)
                                .order_by(CriticalResult.id)))


def addressed_to(session: Session, user_id: int, open_only: bool = True) -> list[CriticalResult]:
    """Results the user was told of (or is the clinician of), newest first."""
    told = select(CriticalNotification.result_id).where(CriticalNotification.recipient_id == user_id)
    q = select(CriticalResult).where(or_(CriticalResult.clinician_id == user_id, CriticalResult.id.in_(told)))
    if open_only:
        q = q.where(CriticalResult.state == "open")
    return list(session.scalars(q.order_by(CriticalResult.id.desc()).limit(500)))


def summary(result: CriticalResult, settings: Settings) -> dict[str, Any]:
    """The fields every answer about a result carries."""
    level = levels(settings).get(result.level)
    return {"level_name": level.name if level else f"level {result.level}",
            "overdue": result.state == "open" and utcnow() > result.ack_deadline}
