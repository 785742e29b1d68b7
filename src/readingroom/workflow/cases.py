"""Cases and their event log: creation, transitions, claims.

Every change is one conditional ``UPDATE … WHERE state IN (…) AND version = …``
plus one ``case_events`` row in the same transaction (principles 1 and 3):
two processes or threads racing on the same case can never both succeed,
and the log always replays to the current state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, exists, insert, or_, select, update
from sqlalchemy.orm import Session

from readingroom.archive.index import insert_for
from readingroom.archive.models import Patient, Series, Study
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.workflow.enums import Priority
from readingroom.workflow.models import Case, CaseCandidate, CaseEvent, CasePrior
from readingroom.workflow.states import CaseState, IllegalTransition, NotEligible, allowed_from, next_state


class CaseNotFound(LookupError):
    """No case with that id."""


@dataclass(frozen=True)
class Actor:
    """Who causes an event: a user (id and name) or the system."""

    name: str = "system"
    user_id: int | None = None


SYSTEM = Actor()

#: ``(session, site_id, procedure_code, description) -> canonical procedure code or ""``. Workflow does not
#: know how sites name procedures; metadata normalisation (``interop.procedures``) registers the resolver,
#: so a case is created with its canonical procedure and routing and analytics can use it.
ProcedureResolver = Callable[[Session, int | None, str, str], str]
_procedure_resolvers: list[ProcedureResolver] = []


def set_procedure_resolver(resolver: ProcedureResolver | None) -> None:
    """Install (or with None remove) the resolver of canonical procedures used when cases are created."""
    _procedure_resolvers[:] = [resolver] if resolver is not None else []


def resolve_procedure(session: Session, site_id: int | None, code: str, description: str) -> str:
    """The canonical procedure code for a site's code / description ("" when none is registered or mapped)."""
    return _procedure_resolvers[0](session, site_id, code, description) if _procedure_resolvers else ""


def log_event(session: Session, case_id: int, kind: str, actor: Actor, from_state: str, to_state: str,
              data: dict[str, Any] | None = None, at: datetime | None = None) -> None:
    """Append to the case's event log; a person's action also goes to the (tamper-evident) audit trail.

    The event log is the case's timeline for analytics; the audit trail is
    what compliance reviews and ``audit verify`` protect. System events
    (routing, escalation) stay in the event log only: they are reproducible
    from the rules and would drown the people's actions.
    """
    session.execute(insert(CaseEvent).values(
        case_id=case_id, at=at or utcnow(), kind=kind, actor=actor.name, from_state=from_state,
        to_state=to_state, data=data or {},
    ))
    if actor.user_id is not None:
        audit.record(session, actor=actor.name, action=f"case.{kind}", resource_type="case",
                     resource_id=str(case_id), detail={"from": from_state, "to": to_state, **(data or {})})


def get_case(session: Session, case_id: int) -> Case:
    case = session.get(Case, case_id)
    if case is None:
        raise CaseNotFound(f"no case {case_id}")
    return case


def transition(session: Session, case_id: int, kind: str, actor: Actor = SYSTEM, *,
               data: dict[str, Any] | None = None, values: dict[str, Any] | None = None,
               extra_where: Any = None) -> Case:
    """Apply event ``kind`` atomically; IllegalTransition if the state does not allow it."""
    case = get_case(session, case_id)
    session.refresh(case)
    current = case.state
    target = next_state(current, kind)
    now = utcnow()
    conds = [Case.id == case_id, Case.state == current, Case.version == case.version]
    if extra_where is not None:
        conds.append(extra_where)
    result = session.execute(
        update(Case).where(and_(*conds)).values(
            state=target.value, version=Case.version + 1, updated_at=now, **(values or {})
        ).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.refresh(case)
        raise IllegalTransition(kind, case.state, f"the case changed meanwhile (now {case.state}); retry")
    log_event(session, case_id, kind, actor, current, target.value, data, now)
    session.refresh(case)
    return case


def claim(session: Session, case_id: int, actor: Actor) -> Case:
    """Take ownership of a read: succeeds for exactly one reader (principle 3).

    The single UPDATE re-checks state, eligibility and push assignment, so a
    case claimed by one reader has left everyone else's list at that instant.
    """
    assert actor.user_id is not None
    now = utcnow()
    eligible = exists().where(CaseCandidate.case_id == Case.id, CaseCandidate.user_id == actor.user_id)
    result = session.execute(
        update(Case)
        .where(Case.id == case_id, Case.state == CaseState.AVAILABLE.value, eligible,
               or_(Case.assignee.is_(None), Case.assignee == actor.user_id))
        .values(state=CaseState.CLAIMED.value, claimed_by=actor.user_id, claimed_at=now,
                last_activity_at=now, version=Case.version + 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        row = session.execute(select(Case.state, Case.claimed_by, Case.assignee).where(Case.id == case_id)).first()
        if row is None:
            raise CaseNotFound(f"no case {case_id}")
        if row.state != CaseState.AVAILABLE.value:
            who = f" by user {row.claimed_by}" if row.state == CaseState.CLAIMED.value else ""
            raise IllegalTransition("claimed", row.state, f"case {case_id} is {row.state}{who}")
        if row.assignee is not None and row.assignee != actor.user_id:
            raise NotEligible(f"case {case_id} is assigned to another reader")
        raise NotEligible(f"{actor.name} is not eligible for case {case_id}")
    log_event(session, case_id, "claimed", actor, CaseState.AVAILABLE.value, CaseState.CLAIMED.value, at=now)
    return session.get(Case, case_id)  # type: ignore[return-value]


def release(session: Session, case_id: int, actor: Actor, *, reason: str = "", expired: bool = False) -> Case:
    """Give a claimed case back to the pool (by its owner, or by the claim timeout)."""
    kind = "claim_expired" if expired else "released"
    owner = Case.claimed_by == actor.user_id if actor.user_id is not None and not expired else None
    try:
        return transition(session, case_id, kind, actor, data={"reason": reason} if reason else None,
                          values={"claimed_by": None, "claimed_at": None}, extra_where=owner)
    except IllegalTransition as exc:
        case = get_case(session, case_id)
        if case.state == CaseState.CLAIMED.value and owner is not None:
            raise NotEligible(f"case {case_id} is claimed by another reader") from exc
        raise


def touch(session: Session, case_id: int, user_id: int) -> bool:
    """Record activity on a claimed case (keeps the claim from timing out)."""
    result = session.execute(
        update(Case).where(Case.id == case_id, Case.claimed_by == user_id,
                           Case.state == CaseState.CLAIMED.value)
        .values(last_activity_at=utcnow()).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def create_case_for_study(session: Session, study_pk: int, *, ready_at: datetime | None = None,
                          actor: Actor = SYSTEM) -> Case | None:
    """Create the case for a complete study; idempotent (None if it already exists)."""
    row = session.execute(
        select(Study, Patient).join(Patient, Patient.id == Study.patient_pk).where(Study.id == study_pk)
    ).first()
    if row is None:
        return None
    study, patient = row
    now = utcnow()
    modality = _primary_modality(session, study_pk, study.modalities)
    values = dict(
        study_pk=study_pk, accession_number=study.accession_number, site_id=study.site_id,
        patient_pk=patient.id, modality=modality, body_part=(study.body_parts.split("\\")[0] if study.body_parts
                                                               else ""),
        description=study.description[:128], patient_age_years=_age_years(patient.birth_date, study.study_date),
        priority=Priority.ROUTINE.value, priority_rank=Priority.ROUTINE.rank, priority_source="default",
        flags=[], state=CaseState.NEW.value, ready_at=ready_at or now, created_at=now, updated_at=now,
        order_fields={}, version=1,
        procedure_code=resolve_procedure(session, study.site_id, "", study.description),
    )
    case_id = session.execute(
        insert_for(session, Case).values(**values).on_conflict_do_nothing().returning(Case.id)
    ).scalar()
    if case_id is None:
        return None
    log_event(session, case_id, "received", actor, "", CaseState.NEW.value,
              {"study_uid": study.study_uid, "num_instances": study.num_instances}, now)
    link_priors(session, case_id, patient.id, study_pk)
    return get_case(session, case_id)


def create_case_for_order(
    session: Session,
    *,
    accession_number: str,
    site_id: int | None,
    patient_pk: int | None = None,
    modality: str = "",
    body_part: str = "",
    description: str = "",
    priority: Priority | None = None,
    patient_class: str = "",
    ordering_physician: str = "",
    order_fields: dict[str, Any] | None = None,
    actor: Actor = SYSTEM,
) -> Case:
    """A case for an order whose images have not arrived yet (state ``waiting``).

    The entry point for HL7 ORM/OMI and FHIR ServiceRequest: the order's
    priority is authoritative (``priority_source = "order"``); intake links
    the study when one with the same accession number completes.
    """
    now = utcnow()
    prio = priority or Priority.ROUTINE
    case = Case(
        accession_number=accession_number, site_id=site_id, patient_pk=patient_pk, modality=modality.upper(),
        body_part=body_part.upper(), description=description[:128], patient_class=patient_class.upper(),
        ordering_physician=ordering_physician, order_fields=order_fields or {}, priority=prio.value,
        priority_rank=prio.rank, priority_source="order" if priority else "default", flags=[],
        state=CaseState.WAITING.value, created_at=now, updated_at=now, version=1, escalation_plan=[],
        procedure_code=resolve_procedure(session, site_id, str((order_fields or {}).get("procedure_code") or ""),
                                         description),
    )
    session.add(case)
    session.flush()
    log_event(session, case.id, "ordered", actor, "", CaseState.WAITING.value,
              {"accession_number": accession_number, "priority": prio.value}, now)
    return case


#: ``(session, study_pk, ready_at) -> the case the study joined, False (it must get a case of its own:
#: a mismatch was reported) or None (no opinion)``. Order reconciliation (``interop.reconcile``)
#: registers here, so intake links studies to orders without the worklist importing interop.
StudyMatcher = Callable[[Session, int, datetime | None], Case | Literal[False] | None]
_study_matchers: list[StudyMatcher] = []


def on_study_arrival(matcher: StudyMatcher) -> StudyMatcher:
    """Register a matcher asked, in order, which waiting case a newly complete study belongs to."""
    if matcher not in _study_matchers:
        _study_matchers.append(matcher)
    return matcher


def remove_study_matcher(matcher: StudyMatcher) -> None:
    if matcher in _study_matchers:
        _study_matchers.remove(matcher)


def attach_study_to_order(session: Session, study_pk: int, *, ready_at: datetime | None = None) -> Case | None:
    """Link a complete study to the waiting case of its order; None: the study needs its own case.

    Registered matchers decide first (reconciliation knows orders, patients
    and time windows). Without one, a waiting case with the study's
    accession number *and* the same patient (or none yet) takes it: an
    accession alone never attaches images to another patient's read.
    """
    for matcher in list(_study_matchers):
        found = matcher(session, study_pk, ready_at)
        if found is False:
            return None
        if found is not None:
            return found
    study = session.get(Study, study_pk)
    if study is None or not study.accession_number:
        return None
    case = session.scalars(select(Case).where(
        Case.accession_number == study.accession_number, Case.state == CaseState.WAITING.value,
        Case.study_pk.is_(None), or_(Case.patient_pk.is_(None), Case.patient_pk == study.patient_pk))
        .order_by(Case.id).limit(1)).first()
    if case is None:
        return None
    return attach_study_to_case(session, case.id, study_pk, ready_at=ready_at)


def attach_study_to_case(session: Session, case_id: int, study_pk: int, *, ready_at: datetime | None = None,
                         data: dict[str, Any] | None = None) -> Case:
    """The images of a waiting case arrived: event ``images_arrived`` ("study available"), state ``new``.

    IllegalTransition if the case is no longer waiting (another process linked it first).
    """
    study = session.get(Study, study_pk)
    case = get_case(session, case_id)
    assert study is not None
    transition(session, case.id, "images_arrived", data={"study_uid": study.study_uid, "status": "study available",
                                                         **(data or {})}, values={
        "study_pk": study_pk, "patient_pk": case.patient_pk or study.patient_pk,
        "site_id": case.site_id or study.site_id, "ready_at": ready_at or utcnow(),
        "modality": case.modality or _primary_modality(session, study_pk, study.modalities),
        # an order whose text no mapping knows may still be named by the study's description
        "procedure_code": case.procedure_code or resolve_procedure(session, case.site_id or study.site_id, "",
                                                                   study.description),
    }, extra_where=Case.study_pk.is_(None))
    link_priors(session, case.id, study.patient_pk, study_pk)
    return get_case(session, case.id)


def link_priors(session: Session, case_id: int, patient_pk: int, study_pk: int) -> int:
    """Link the patient's other studies (earlier first) to the case."""
    priors = session.scalars(
        select(Study.id).where(Study.patient_pk == patient_pk, Study.id != study_pk)
        .order_by(Study.study_date.desc())
    ).all()
    for prior in priors:
        session.execute(insert_for(session, CasePrior).values(case_id=case_id, study_pk=prior)
                        .on_conflict_do_nothing())
    return len(priors)


def _primary_modality(session: Session, study_pk: int, modalities: str) -> str:
    counts = session.execute(select(Series.modality, Series.num_instances).where(Series.study_pk == study_pk)).all()
    ignore = {"SR", "PR", "KO", "DOC", "REG", "SEG"}
    best = max(((n, m) for m, n in counts if m and m not in ignore), default=None)
    if best:
        return best[1]
    return modalities.split("\\")[0] if modalities else ""


def _age_years(birth: str, on: str) -> float | None:
    try:
        b = datetime.strptime(birth, "%Y%m%d")
        d = datetime.strptime(on, "%Y%m%d") if on else datetime.now()
    except ValueError:
        return None
    return round((d - b).days / 365.25, 2)


def case_events(session: Session, case_id: int) -> list[CaseEvent]:
    return list(session.scalars(select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(CaseEvent.id)))


def allowed_states(kind: str) -> list[str]:
    return sorted(s.value for s in allowed_from(kind))
