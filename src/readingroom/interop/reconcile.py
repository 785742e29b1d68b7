"""Order <-> study reconciliation (IHE Import Reconciliation Workflow in spirit).

Two moments meet here, whichever comes first:

* a study completes (``workflow.cases.on_study_arrival``): it joins the
  waiting case of its order, found by accession number (same patient, else
  a mismatch), or failing that by patient + procedure + time window;
* an order is placed or changed (``orders.on_order_placed``): a late RIS
  message links at once to a study already read as a case of its own; that
  case takes the order's priority and fields, and the order's empty waiting
  case is cancelled.

A linked order becomes ``completed`` with its ``study_pk``. Anything
doubtful (the accession names another patient, two orders fit) goes to the
exception queue as ``order_mismatch`` and the study keeps a case of its own:
images are never attached silently to the wrong patient's read. The link is
a conditional ``UPDATE ... WHERE status = 'active' AND study_pk IS NULL``, so
two processes can never give one order two studies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, exists, select, update
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.clock import utcnow
from readingroom.governance.models import Site
from readingroom.interop import orders
from readingroom.interop.models import Order
from readingroom.runtime import Runtime
from readingroom.workflow import exceptions
from readingroom.workflow.cases import (
    SYSTEM,
    attach_study_to_case,
    on_study_arrival,
    remove_study_matcher,
    resolve_procedure,
    transition,
)
from readingroom.workflow.dispatch import route_case
from readingroom.workflow.enums import Priority
from readingroom.workflow.models import Case, ExceptionItem
from readingroom.workflow.states import OPEN_STATES, CaseState

log = logging.getLogger(__name__)

#: Clocks of modalities and RIS disagree: an order "requested" a little after its study still fits.
CLOCK_GRACE = timedelta(hours=1)
_NOT_IMAGES = {"SR", "PR", "KO", "DOC", "REG", "SEG", ""}
_OPEN = [s.value for s in OPEN_STATES]


@dataclass
class ReconcileConfig:
    """The settings the hooks need (they run inside other services' transactions, without a Runtime)."""

    window_hours: float = 24.0
    overdue_hours: float = 0.0


CONFIG = ReconcileConfig()


def install(rt: Runtime | None = None) -> None:
    """Register the study matcher and the order hook (idempotent); ``serve`` does it through wiring."""
    if rt is not None:
        CONFIG.window_hours = rt.settings.reconcile_window_hours
        CONFIG.overdue_hours = rt.settings.reconcile_overdue_hours
    on_study_arrival(match_study)
    orders.on_order_placed(link_placed_order)


def uninstall() -> None:
    remove_study_matcher(match_study)
    orders.remove_order_hook(link_placed_order)


# -- helpers --------------------------------------------------------------------------------------------------


def effective_patient(session: Session, patient_pk: int | None) -> int | None:
    """The record a patient was merged into (ADT^A40), followed to the end; itself otherwise."""
    seen: set[int] = set()
    while patient_pk is not None and patient_pk not in seen:
        seen.add(patient_pk)
        nxt = session.scalar(select(Patient.merged_into_pk).where(Patient.id == patient_pk))
        if nxt is None:
            return patient_pk
        patient_pk = nxt
    return patient_pk


def study_time(session: Session, study: Study) -> datetime:
    """When the study was done, in UTC: Study Date/Time read in its site's time zone, else its arrival."""
    try:
        local = datetime.strptime(study.study_date + (study.study_time or "000000").split(".")[0].ljust(6, "0"),
                                  "%Y%m%d%H%M%S")
    except ValueError:
        return study.first_received_at
    tz_name = session.scalar(select(Site.timezone).where(Site.id == study.site_id)) if study.site_id else None
    try:
        tz = ZoneInfo(tz_name or "UTC")
    except (KeyError, ValueError):
        tz = ZoneInfo("UTC")
    return local.replace(tzinfo=tz).astimezone(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _in_window(order: Order, at: datetime) -> bool:
    """The order was requested at most ``window_hours`` before the study (an order without a request
    time counts from its arrival, which for a late RIS message may follow the study by as much)."""
    window = timedelta(hours=CONFIG.window_hours)
    at = _aware(at)
    if order.requested_at is not None:
        requested = _aware(order.requested_at)
        return at - window <= requested <= at + CLOCK_GRACE
    return abs(_aware(order.created_at) - at) <= window


def _modalities(study: Study) -> set[str]:
    return {m for m in (study.modalities or "").split("\\") if m not in _NOT_IMAGES}


def _order_procedure(session: Session, order: Order) -> str:
    case_code = session.scalar(select(Case.procedure_code).where(Case.id == order.case_id)) if order.case_id else ""
    return case_code or resolve_procedure(session, order.site_id, order.procedure_code, order.procedure_text)


def _same_procedure(order: Order, order_proc: str, study: Study, study_proc: str) -> bool:
    """Same canonical procedure when both are known, else same modality; nothing comparable is no match."""
    if order_proc and study_proc:
        return order_proc == study_proc
    return bool(order.modality) and order.modality in _modalities(study)


def _same_site(order_site: int | None, study_site: int | None) -> bool:
    return order_site is None or study_site is None or order_site == study_site


def _patient_label(session: Session, patient_pk: int | None) -> str:
    row = session.execute(select(Patient.patient_id, Patient.issuer).where(Patient.id == patient_pk)).first()
    if row is None:
        return "no patient"
    return f"patient {row.patient_id} (issuer {row.issuer or 'none'})"


def _mismatch(session: Session, reason: str, *, case_id: int | None, study_uid: str) -> None:
    log.info("order mismatch: %s", reason)
    exceptions.raise_item(session, kind="order_mismatch", reason=reason, case_id=case_id, study_uid=study_uid)


def _claim_order(session: Session, order: Order, study_pk: int, case_id: int | None = None) -> bool:
    """Mark the order fulfilled by the study, once: False if another process linked it first."""
    values: dict[str, object] = {"status": orders.COMPLETED, "study_pk": study_pk, "updated_at": utcnow()}
    if case_id is not None:
        values["case_id"] = case_id
    done = session.execute(update(Order).where(
        Order.id == order.id, Order.status == orders.ACTIVE, Order.study_pk.is_(None)).values(**values)
        .execution_options(synchronize_session=False))
    session.refresh(order)
    return done.rowcount == 1


# -- a study arrives ------------------------------------------------------------------------------------------


def _waiting_orders(session: Session) -> list[ColumnElement[bool]]:
    return [Order.status == orders.ACTIVE, Order.study_pk.is_(None),
            exists().where(Case.id == Order.case_id, Case.state == CaseState.WAITING.value, Case.study_pk.is_(None))]


def match_study(session: Session, study_pk: int, ready_at: datetime | None) -> Case | Literal[False] | None:
    """The waiting case a complete study joins; False when it must be read on its own (mismatch reported)."""
    study = session.get(Study, study_pk)
    if study is None:
        return None
    if session.scalar(select(Case.id).where(Case.study_pk == study_pk).limit(1)) is not None:
        return False  # already read (the study completed once before): intake's create is a no-op
    patient = effective_patient(session, study.patient_pk)
    if study.accession_number:
        found = session.scalars(select(Order).where(
            Order.accession_number == study.accession_number, *_waiting_orders(session)).order_by(Order.id)).all()
        found = [o for o in found if _same_site(o.site_id, study.site_id)]
        if found:
            same = [o for o in found if o.patient_pk is None or effective_patient(session, o.patient_pk) == patient]
            if len(same) == 1:
                return _link_study(session, same[0], study, ready_at, "accession number")
            if same:
                ids = ", ".join(str(o.id) for o in same)
                _mismatch(session, f"study {study.study_uid} (accession {study.accession_number}) fits several "
                          f"orders ({ids}); it was given its own case", case_id=same[0].case_id,
                          study_uid=study.study_uid)
                return False
            order = found[0]
            _mismatch(session, f"accession {study.accession_number}: order {order.id} is for "
                      f"{_patient_label(session, order.patient_pk)} but study {study.study_uid} is for "
                      f"{_patient_label(session, study.patient_pk)}; the study was given its own case",
                      case_id=order.case_id, study_uid=study.study_uid)
            return False
    candidates = _window_orders(session, study, patient)
    if len(candidates) == 1:
        return _link_study(session, candidates[0], study, ready_at, "patient, procedure and time")
    if candidates:
        ids = ", ".join(str(o.id) for o in candidates)
        _mismatch(session, f"study {study.study_uid} of {_patient_label(session, study.patient_pk)} fits several "
                  f"orders by procedure and time ({ids}); it was given its own case",
                  case_id=candidates[0].case_id, study_uid=study.study_uid)
        return False
    return None


def _window_orders(session: Session, study: Study, patient: int | None) -> list[Order]:
    """Active orders of the same patient and procedure requested within the window before the study."""
    if patient is None:
        return []
    pks = {patient, study.patient_pk}
    q = select(Order).where(Order.patient_pk.in_(pks), *_waiting_orders(session))
    if study.accession_number:  # an order with another accession number is another procedure
        q = q.where(Order.accession_number == "")
    at = study_time(session, study)
    study_proc = resolve_procedure(session, study.site_id, "", study.description)
    return [o for o in session.scalars(q.order_by(Order.id)).all()
            if _same_site(o.site_id, study.site_id) and _in_window(o, at)
            and _same_procedure(o, _order_procedure(session, o), study, study_proc)]


def _link_study(session: Session, order: Order, study: Study, ready_at: datetime | None, how: str) -> Case | None:
    if not _claim_order(session, order, study.id):
        return None
    assert order.case_id is not None
    return attach_study_to_case(session, order.case_id, study.id, ready_at=ready_at,
                                data={"order_id": order.id, "matched_by": how})


# -- an order arrives after its study -------------------------------------------------------------------------


def _unlinked_study_cases(session: Session) -> list[ColumnElement[bool]]:
    """Conditions on (Study, Case): a study read as a case of its own that no order claims yet."""
    return [Case.study_pk == Study.id, Case.kind == "read", Case.state.in_(_OPEN),
            Case.state != CaseState.WAITING.value, ~exists().where(Order.study_pk == Study.id)]


def link_placed_order(session: Session, order: Order) -> None:
    """An order placed (or changed) after its study arrived: link it to that study's case now."""
    if order.status != orders.ACTIVE or order.study_pk is not None or order.case_id is None:
        return
    waiting = session.get(Case, order.case_id)
    if waiting is None or waiting.state != CaseState.WAITING.value:
        return
    patient = effective_patient(session, order.patient_pk)
    if order.accession_number:
        rows = session.execute(select(Study, Case).where(
            Study.accession_number == order.accession_number, *_unlinked_study_cases(session))
            .order_by(Study.id)).all()
        rows = [r for r in rows if _same_site(order.site_id, r.Study.site_id)]
        if rows:
            same = [r for r in rows if effective_patient(session, r.Study.patient_pk) == patient]
            if len(same) == 1:
                _link_order(session, order, waiting, same[0].Study, same[0].Case, "accession number")
            elif same:
                _mismatch(session, f"order {order.id} (accession {order.accession_number}) fits several studies "
                          f"({', '.join(r.Study.study_uid for r in same)}); none was linked",
                          case_id=order.case_id, study_uid=same[0].Study.study_uid)
            else:
                study = rows[0].Study
                _mismatch(session, f"accession {order.accession_number}: order {order.id} is for "
                          f"{_patient_label(session, order.patient_pk)} but study {study.study_uid} is for "
                          f"{_patient_label(session, study.patient_pk)}; not linked",
                          case_id=order.case_id, study_uid=study.study_uid)
            return
    if patient is None:
        return
    q = select(Study, Case).where(Study.patient_pk.in_({patient, order.patient_pk}),
                                  *_unlinked_study_cases(session))
    if order.accession_number:
        q = q.where(Study.accession_number == "")
    order_proc = _order_procedure(session, order)
    fits = [r for r in session.execute(q.order_by(Study.id)).all()
            if _same_site(order.site_id, r.Study.site_id) and _in_window(order, study_time(session, r.Study))
            and _same_procedure(order, order_proc, r.Study, r.Case.procedure_code)]
    if len(fits) == 1:
        _link_order(session, order, waiting, fits[0].Study, fits[0].Case, "patient, procedure and time")
    elif fits:
        _mismatch(session, f"order {order.id} fits several studies by procedure and time "
                  f"({', '.join(r.Study.study_uid for r in fits)}); none was linked",
                  case_id=order.case_id, study_uid=fits[0].Study.study_uid)


def _link_order(session: Session, order: Order, waiting: Case, study: Study, case: Case, how: str) -> None:
    """The study's case becomes the order's read: the order's priority and fields are authoritative."""
    if not _claim_order(session, order, study.id, case_id=case.id):
        return
    transition(session, waiting.id, "cancelled", SYSTEM, data={
        "reason": f"order linked to study {study.study_uid}, already read as case {case.id}", "order_id": order.id})
    priority = Priority(order.priority)
    fields_ = {**(waiting.order_fields or {}), **(case.order_fields or {})}
    values = {"order_fields": fields_, "patient_class": order.patient_class or case.patient_class,
              "ordering_physician": order.ordering_provider[:128] or case.ordering_physician,
              "priority": priority.value, "priority_rank": priority.rank, "priority_source": "order",
              "accession_number": case.accession_number or order.accession_number}
    transition(session, case.id, "order_linked", SYSTEM, values=values, data={
        "order_id": order.id, "matched_by": how, "priority": {"from": case.priority, "to": priority.value},
        "cancelled_case": waiting.id})
    session.refresh(case)
    if case.state in (CaseState.NEW.value, CaseState.AVAILABLE.value, CaseState.EXCEPTION.value):
        route_case(session, case.id, reason="order linked")


# -- orders whose images never came ---------------------------------------------------------------------------


def flag_overdue(rt: Runtime, now: datetime | None = None, limit: int = 500) -> int:
    """Raise ``order_overdue`` for active orders without images after ``reconcile_overdue_hours``."""
    hours = rt.settings.reconcile_overdue_hours
    if hours <= 0:
        return 0
    cutoff = (now or utcnow()) - timedelta(hours=hours)
    raised = 0
    with rt.db.session() as s:
        late = s.scalars(select(Order).where(
            Order.status == orders.ACTIVE, Order.study_pk.is_(None), Order.case_id.is_not(None),
            Order.created_at < cutoff).order_by(Order.id).limit(limit)).all()
        for order in late:
            if order.requested_at is not None and _aware(order.requested_at) >= cutoff:
                continue
            if s.scalar(select(ExceptionItem.id).where(ExceptionItem.case_id == order.case_id,
                                                       ExceptionItem.kind == "order_overdue").limit(1)):
                continue  # reported once; a person resolved or is handling it
            if exceptions.raise_item(s, kind="order_overdue", case_id=order.case_id, reason=(
                    f"order {order.id} (accession {order.accession_number or 'none'}) has had no study for "
                    f"over {hours:g} hours")):
                raised += 1
    return raised
