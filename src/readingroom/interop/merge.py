"""Patient merge (ADT^A40): the merged record's studies, cases and orders move to the survivor.

A RIS that finds two records for one person (a temporary ED registration, a
typo in the MRN) tells the downstream systems with an A40. After it, a
reader opening the survivor's case must see the merged record's studies as
priors, and the worklist must show one patient. What moves:

* ``studies.patient_pk``, ``orders.patient_pk`` — bulk conditional UPDATEs;
* each case, through the state machine (event ``patient_merged``, state
  unchanged), so the move is on the case's timeline and bumps its version;
* open cases of the survivor gain the merged record's studies as priors.

The merged record stays (``merged_into_pk`` points at the survivor): its
identifier may still arrive on new images or late orders, and ingest and
ordering follow the pointer (``archive.index.upsert_patient``,
``interop.orders.ensure_patient``). An orders' ``patient_id`` / ``patient_issuer``
columns keep what the order said, as the record of what was received.

The merge is one transaction with a :class:`PatientMerge` row (what moved)
and an audit record ``patient.merge``. Merging a record into itself, into a
merged record, or a record already merged is refused (MergeError) — the
conditional ``UPDATE … WHERE merged_into_pk IS NULL`` makes two concurrent
merges of one record impossible.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.interop.models import Order, PatientMerge
from readingroom.workflow.cases import SYSTEM, Actor, link_priors, transition
from readingroom.workflow.models import Case
from readingroom.workflow.states import OPEN_STATES


class MergeError(ValueError):
    """A merge that cannot happen; the message says why."""


def merge_patients(session: Session, survivor_pk: int, merged_pk: int, *, source: str = "",
                   actor: Actor = SYSTEM) -> PatientMerge:
    """Merge record ``merged_pk`` into ``survivor_pk``; MergeError when that is not possible."""
    if survivor_pk == merged_pk:
        raise MergeError("a patient record cannot be merged into itself")
    survivor = session.get(Patient, survivor_pk)
    merged = session.get(Patient, merged_pk)
    if survivor is None or merged is None:
        raise MergeError("both patient records must exist")
    if survivor.merged_into_pk is not None:
        raise MergeError(f"the surviving record {_label(survivor)} was itself merged into another record")
    now = utcnow()
    claimed = session.execute(
        update(Patient).where(Patient.id == merged_pk, Patient.merged_into_pk.is_(None))
        .values(merged_into_pk=survivor_pk, updated_at=now).execution_options(synchronize_session=False))
    if claimed.rowcount != 1:
        raise MergeError(f"the record {_label(merged)} has already been merged")
    moved = _move(session, survivor_pk, merged_pk, actor, source)
    row = PatientMerge(surviving_pk=survivor_pk, merged_pk=merged_pk, merged_patient_id=merged.patient_id,
                       merged_issuer=merged.issuer, moved=moved, source=source[:64], actor=actor.name[:128],
                       at=now)
    session.add(row)
    audit.record(session, actor=actor.name, action="patient.merge", resource_type="patient",
                 resource_id=str(survivor_pk), patient_id=survivor.patient_id, source=source,
                 detail={"survivor": _label(survivor), "merged": _label(merged), **moved})
    session.flush()
    session.refresh(merged)
    return row


def _move(session: Session, survivor_pk: int, merged_pk: int, actor: Actor, source: str) -> dict[str, Any]:
    """Re-link everything that belonged to the merged record; returns what moved (by id)."""
    studies = session.execute(select(Study.id, Study.study_uid).where(Study.patient_pk == merged_pk)).all()
    session.execute(update(Study).where(Study.patient_pk == merged_pk).values(patient_pk=survivor_pk)
                    .execution_options(synchronize_session=False))
    orders = list(session.scalars(select(Order.id).where(Order.patient_pk == merged_pk)))
    session.execute(update(Order).where(Order.patient_pk == merged_pk).values(patient_pk=survivor_pk)
                    .execution_options(synchronize_session=False))
    case_ids = list(session.scalars(select(Case.id).where(Case.patient_pk == merged_pk).order_by(Case.id)))
    for case_id in case_ids:
        transition(session, case_id, "patient_merged", actor, values={"patient_pk": survivor_pk},
                   data={"from_patient_pk": merged_pk, "to_patient_pk": survivor_pk, "source": source})
    # The survivor's open reads now have the merged record's studies as priors.
    open_cases = session.execute(select(Case.id, Case.study_pk).where(
        Case.patient_pk == survivor_pk, Case.study_pk.is_not(None),
        Case.state.in_([s.value for s in OPEN_STATES]))).all()
    for case_id, study_pk in open_cases:
        link_priors(session, case_id, survivor_pk, study_pk)
    return {"studies": [uid for _, uid in studies], "study_pks": [pk for pk, _ in studies], "cases": case_ids,
            "orders": orders}


def _label(p: Patient) -> str:
    return f"{p.patient_id}^^^{p.issuer}" if p.issuer else p.patient_id
