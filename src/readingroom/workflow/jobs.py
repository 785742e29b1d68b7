"""Background work of the worklist, run by every ``serve`` process.

* intake: ``study.complete`` domain events become cases and are routed;
* escalation: each due step of a case's SLA ladder happens exactly once,
  claimed with a conditional UPDATE on ``escalation_step``;
* claim expiry: a claim without activity for N minutes returns to the pool;
* refresh: waiting cases are re-routed so readers coming on shift (follow the
  sun) and hub overflow see them; only changed outcomes are logged.

Each job is safe to run in several processes at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from readingroom.archive.models import DomainEvent, Study
from readingroom.archive.stability import STUDY_COMPLETE
from readingroom.clock import utcnow
from readingroom.consumers import anything_after
from readingroom.consumers import lock_offset as _lock_offset
from readingroom.runtime import Runtime
from readingroom.workflow import exceptions
from readingroom.workflow.cases import SYSTEM, attach_study_to_order, create_case_for_study, log_event, release
from readingroom.workflow.dispatch import route_case
from readingroom.workflow.enums import EscalationAction
from readingroom.workflow.models import Case, ConsumerOffset
from readingroom.workflow.notify import Notification, Notifier
from readingroom.workflow.quality import check_case
from readingroom.workflow.states import CaseState, IllegalTransition

log = logging.getLogger(__name__)
INTAKE = "workflow.intake"
_ESCALATABLE = [s.value for s in (CaseState.NEW, CaseState.AVAILABLE, CaseState.CLAIMED, CaseState.PRELIMINARY,
                                   CaseState.EXCEPTION)]


#: Domain event written *before* images arrive that are not a read of their own (interop/priors.py writes
#: it before its C-MOVE), so intake skips them even if they complete before ``Study.origin`` is set.
NOT_A_READ = "study.not_a_read"


def _not_a_read(session: Session, study_uid: str) -> bool:
    return session.scalar(select(DomainEvent.id).where(DomainEvent.kind == NOT_A_READ,
                                                       DomainEvent.subject == study_uid).limit(1)) is not None


def _completions_after(session: Session, position: int, batch: int) -> Sequence[Any]:
    return session.execute(select(DomainEvent.id, DomainEvent.subject, DomainEvent.created_at)
                           .where(DomainEvent.id > position, DomainEvent.kind == STUDY_COMPLETE)
                           .order_by(DomainEvent.id).limit(batch)).all()


def intake(rt: Runtime, batch: int = 200) -> list[int]:
    """Create and route a case for every newly complete study; returns the new case ids."""
    created: list[int] = []
    if not anything_after(rt, INTAKE, _completions_after):
        return created
    with rt.db.session() as s:
        position = _lock_offset(s, INTAKE)
        events = _completions_after(s, position, batch)
        for event_id, study_uid, at in events:
            position = event_id
            study_pk, origin = s.execute(select(Study.id, Study.origin).where(
                Study.study_uid == study_uid)).first() or (None, None)
            if study_pk is None:
                continue
            if origin or _not_a_read(s, study_uid):  # e.g. a prior fetched from a remote PACS: no case
                continue
            try:
                with s.begin_nested():
                    case = attach_study_to_order(s, study_pk, ready_at=at) or create_case_for_study(
                        s, study_pk, ready_at=at)
                    if case is not None:
                        check_case(s, case.id)
                        route_case(s, case.id, reason="study complete", cache_key=rt.db.url)
                        created.append(case.id)
            except Exception:
                log.exception("could not create or route the case of study %s", study_uid)
                exceptions.raise_item(s, kind="unreadable_study", study_uid=study_uid,
                                      reason="case creation or routing failed; see the server log")
        s.execute(update(ConsumerOffset).where(ConsumerOffset.name == INTAKE).values(position=position))
    from readingroom.collab import live  # the collaboration layer sits above the worklist

    for case_id in created:  # after commit: the new case appears on its readers' live worklists
        live.publish(rt, "case.new", {}, case_id=case_id)
    return created


def escalate_due(rt: Runtime, notifier: Notifier, now: datetime | None = None, limit: int = 200) -> int:
    """Apply every due escalation step once; returns how many steps were applied."""
    now = now or utcnow()
    applied = 0
    with rt.db.read_session() as s:
        due = s.execute(
            select(Case.id, Case.escalation_step).where(
                Case.next_escalation_at.is_not(None), Case.next_escalation_at <= now,
                Case.state.in_(_ESCALATABLE)).order_by(Case.next_escalation_at).limit(limit)
        ).all()
    for case_id, step in due:
        try:
            with rt.db.session() as s:
                if _apply_step(rt, s, notifier, case_id, step, now):
                    applied += 1
        except (IllegalTransition, IntegrityError, OperationalError) as exc:
            log.info("escalation of case %s step %s skipped: %s", case_id, step, exc)
    return applied


def _apply_step(rt: Runtime, s: Session, notifier: Notifier, case_id: int, step: int, now: datetime) -> bool:
    case = s.get(Case, case_id)
    if case is None or case.escalation_step != step or step >= len(case.escalation_plan or []):
        return False
    plan = case.escalation_plan
    nxt = datetime.fromisoformat(plan[step + 1]["at"]) if step + 1 < len(plan) else None
    claimed = s.execute(
        update(Case).where(Case.id == case_id, Case.escalation_step == step)
        .values(escalation_step=step + 1, next_escalation_at=nxt, version=Case.version + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        return False  # another process took this step
    point = plan[step]
    action = EscalationAction(point["action"])
    log_event(s, case_id, "escalated", SYSTEM, case.state, case.state,
              {"step": step + 1, "action": action.value, "notify": point.get("notify", []),
               "at_percent": point.get("at_percent")}, now)
    s.refresh(case)
    if action is EscalationAction.RAISE_SORT_KEY and case.priority_rank > 1:
        s.execute(update(Case).where(Case.id == case_id).values(priority_rank=case.priority_rank - 1))
    elif action is EscalationAction.WIDEN_POOL:
        s.execute(update(Case).where(Case.id == case_id).values(pool_widened=True))
        if case.state in (CaseState.AVAILABLE.value, CaseState.NEW.value, CaseState.EXCEPTION.value):
            route_case(s, case_id, reason=f"escalation step {step + 1}: widen pool", cache_key=rt.db.url)
    elif action is EscalationAction.EXCEPTION_QUEUE:
        exceptions.raise_item(s, case_id=case_id, kind="stuck_case",
                              reason=f"no final report by {point['at_percent']}% of the SLA")
    if action is not EscalationAction.RAISE_SORT_KEY or point.get("notify"):
        notifier.send(Notification(kind=f"escalation.{action.value}", recipients=tuple(point.get("notify", [])),
                                   subject=f"case {case_id} escalated: {action.value} (step {step + 1})",
                                   data={"case_id": case_id, "step": step + 1}))
    return True


def expire_claims(rt: Runtime, timeout_minutes: float, now: datetime | None = None) -> int:
    """Return claims idle for ``timeout_minutes`` to the pool (event ``claim_expired``)."""
    now = now or utcnow()
    cutoff = now - timedelta(minutes=timeout_minutes)
    with rt.db.read_session() as s:
        stale = s.scalars(select(Case.id).where(Case.state == CaseState.CLAIMED.value,
                                                Case.last_activity_at < cutoff).limit(500)).all()
    released = 0
    for case_id in stale:
        try:
            with rt.db.session() as s:
                release(s, case_id, SYSTEM, reason=f"no activity for {timeout_minutes:g} minutes", expired=True)
                released += 1
        except IllegalTransition:
            continue
    return released


def refresh_routing(rt: Runtime, min_age_seconds: float = 60, limit: int = 500,
                    now: datetime | None = None) -> int:
    """Re-route waiting cases last routed over ``min_age_seconds`` ago; log only changes."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=min_age_seconds)
    with rt.db.read_session() as s:
        ids = s.scalars(select(Case.id).where(
            Case.state.in_([CaseState.AVAILABLE.value, CaseState.EXCEPTION.value]),
            Case.claimed_by.is_(None), Case.routed_at < cutoff).order_by(Case.routed_at).limit(limit)).all()
    changed = 0
    for case_id in ids:
        try:
            with rt.db.session() as s:
                if route_case(s, case_id, reason="refresh", only_if_changed=True, cache_key=rt.db.url):
                    changed += 1
                else:
                    s.execute(update(Case).where(Case.id == case_id).values(routed_at=now))
        except IllegalTransition:
            continue
    return changed
