"""Purging one study: its index rows in one audited transaction, then its bytes.

What happens to every table that points at a study, and why:

* ``instances``, ``series``, ``studies``: deleted (the purge itself).
* ``patients``: kept; other studies, cases and orders still name the patient.
* ``cases`` (final or cancelled, the only kind a purge may meet): kept with
  ``study_pk`` set to NULL, so the read's history (event log, timings,
  accession, patient) survives the images. An open case blocks the purge,
  and the UPDATE only touches closed cases, so a case opened meanwhile makes
  the study's DELETE fail on its foreign key instead of losing its link.
* ``case_priors``: the purged study's rows are deleted; they only told a
  closed case "this study was a prior", and a prior of an open case is kept.
* ``share_links`` on the study: revoked. A capability must not come back to
  life if the same Study Instance UID is ever received again.
* ``domain_events``, ``ingest_conflicts``, ``exception_items``, ``access_grants``
  and ``case_events``: kept. They hold UIDs, not images, and are history the
  audit and analytics rely on.
* a table added later with a foreign key to ``studies`` makes the DELETE fail:
  the study is reported ``failed`` and nothing changes, never a dangling row.

Crash safety: the rows go, one ``retention.purge`` audit record is written
and each blob is entered in ``blob_deletions``, all in one transaction;
files are deleted only after it commits. A crash before the commit changes
nothing; after it, the owed deletions stay listed, so ``check`` does not
count those blobs as orphans and ``check --repair`` (or the next run)
finishes the job. An orphan blob is acceptable for a while, an index row
without its blob never is.

A blob is deleted only if no instance refers to it any more (the same
instance received again since has the same content-addressed key) and its
file was not rewritten after the purge began.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from readingroom.archive.ingest import forget_cached_ids
from readingroom.archive.models import Instance, Patient, Series, Study
from readingroom.governance import audit
from readingroom.governance.models import BlobDeletion, ShareLink
from readingroom.governance.retention import (
    Reason,
    Scope,
    StudyDecision,
    candidates,
    case_states,
    enabled_rules,
    reasons_for,
)
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case, CasePrior
from readingroom.workflow.states import TERMINAL_STATES

log = logging.getLogger(__name__)

PURGE_ACTION = "retention.purge"
_TERMINAL = sorted(state.value for state in TERMINAL_STATES)
#: Blob deletions handled per transaction.
BATCH = 500


@dataclass
class PurgeOutcome:
    """What purging one study did."""

    action: str  # purged | keep | skipped | failed
    reasons: list[Reason] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0
    blobs_deleted: int = 0


def purge_study(rt: Runtime, decision: StudyDecision, *, now: datetime, actor: str, source: str = "",
                scope: Scope = None) -> PurgeOutcome:
    """Purge one study chosen by :func:`retention.decide`, re-checking it under lock first."""
    requested_at = datetime.now(UTC)  # wall clock: compared with file modification times
    try:
        with rt.db.session() as s:
            outcome = _purge_rows(s, decision, now=now, actor=actor, source=source, scope=scope,
                                  requested_at=requested_at)
    except SQLAlchemyError as exc:
        log.exception("purging study %s failed", decision.study_uid)
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
        return PurgeOutcome("failed", [Reason("error", f"database refused the purge: {reason}")])
    if outcome.action != "purged":
        return outcome
    forget_cached_ids()
    outcome.blobs_deleted = delete_owed_blobs(rt, study_uid=decision.study_uid)
    return outcome


def _purge_rows(s: Session, decision: StudyDecision, *, now: datetime, actor: str, source: str, scope: Scope,
                requested_at: datetime) -> PurgeOutcome:
    pk = decision.study_pk
    # PostgreSQL: hold the study (and its patient, against a patient hold being added) until commit.
    # SQLite: the write transaction already excludes every other writer.
    locked = s.execute(select(Study.patient_pk).where(Study.id == pk).with_for_update()).scalar()
    if locked is None:
        return PurgeOutcome("skipped", [Reason("gone", "the study no longer exists")])
    s.execute(select(Patient.id).where(Patient.id == locked).with_for_update(read=True))
    rules = enabled_rules(s)
    q = candidates(rules, now, scope)
    row = s.execute(q.where(Study.id == pk)).first() if q is not None else None
    if row is None:
        return PurgeOutcome("skipped", [Reason("not_due", "no longer due (rules or study changed)")])
    reasons = reasons_for(row, case_states(s, [row]))
    if reasons:
        return PurgeOutcome("keep", reasons)
    rule = next(r for r in rules if r.id == row.rule_id)

    inst = Instance.__table__
    removed = s.execute(delete(inst).where(inst.c.study_pk == pk)
                        .returning(inst.c.sop_uid, inst.c.blob_key, inst.c.size_bytes)).all()
    series = s.execute(delete(Series.__table__).where(Series.__table__.c.study_pk == pk)).rowcount
    priors = s.execute(delete(CasePrior.__table__).where(CasePrior.__table__.c.study_pk == pk)).rowcount
    cases = s.execute(update(Case.__table__)
                      .where(Case.__table__.c.study_pk == pk, Case.__table__.c.state.in_(_TERMINAL))
                      .values(study_pk=None)).rowcount
    shares = s.execute(update(ShareLink.__table__)
                       .where(ShareLink.__table__.c.study_uid == row.study_uid,
                              ShareLink.__table__.c.revoked_at.is_(None))
                       .values(revoked_at=now)).rowcount
    s.execute(delete(Study.__table__).where(Study.__table__.c.id == pk))
    if removed:
        s.execute(insert(BlobDeletion.__table__), [
            {"blob_key": key, "sop_uid": sop, "study_uid": row.study_uid, "requested_at": requested_at}
            for sop, key, _size in removed
        ])
    size = sum(r.size_bytes for r in removed)
    audit.record(
        s, actor=actor, source=source, action=PURGE_ACTION, resource_type="study", resource_id=row.study_uid,
        patient_id=row.patient_id,
        detail={"rule": rule.name, "rule_id": rule.id, "min_age_days": rule.min_age_days,
                "study_date": row.study_date, "site_id": row.site_id, "modalities": row.modalities,
                "series": series, "instances": len(removed), "bytes": size, "cases_detached": cases,
                "priors_unlinked": priors, "share_links_revoked": shares},
        reason=f"older than {rule.min_age_days} days under retention rule {rule.name!r}",
    )
    return PurgeOutcome("purged", instances=len(removed), bytes=size)


def delete_owed_blobs(rt: Runtime, *, study_uid: str | None = None) -> int:
    """Delete the blobs listed in ``blob_deletions`` (one study's, or all); returns how many files went."""
    deleted = 0
    last_id = 0
    while True:
        with rt.db.session() as s:
            q = select(BlobDeletion.id, BlobDeletion.blob_key, BlobDeletion.sop_uid, BlobDeletion.requested_at)
            if study_uid is not None:
                q = q.where(BlobDeletion.study_uid == study_uid)
            rows = s.execute(q.where(BlobDeletion.id > last_id).order_by(BlobDeletion.id).limit(BATCH)).all()
            if not rows:
                return deleted
            last_id = rows[-1].id
            # Inside the write transaction, so on SQLite no ingest can index one of these keys until the
            # files are gone; on PostgreSQL the modification-time test below covers a concurrent re-receive.
            in_use = _keys_in_use(s, rows)
            for row in rows:
                if row.blob_key not in in_use and not _rewritten_since(rt, row.blob_key, row.requested_at):
                    if rt.blobs.exists(row.blob_key):
                        rt.blobs.delete(row.blob_key)
                        deleted += 1
            s.execute(delete(BlobDeletion.__table__).where(BlobDeletion.__table__.c.id.in_([r.id for r in rows])))


def _keys_in_use(s: Session, rows: Iterable[object]) -> set[str]:
    """Keys of the rows still referenced by an instance (received again since the purge)."""
    sops = sorted({row.sop_uid for row in rows})  # type: ignore[attr-defined]
    return set(s.scalars(select(Instance.blob_key).where(Instance.sop_uid.in_(sops))))


def _rewritten_since(rt: Runtime, key: str, since: datetime) -> bool:
    """Whether the blob's file was written after ``since`` (an identical instance received again)."""
    path = rt.blobs.local_path(key)
    if path is None:
        return False
    try:
        return path.stat().st_mtime > since.timestamp()
    except FileNotFoundError:
        return False


def owed_keys(rt: Runtime) -> set[str]:
    """Blob keys whose deletion a purge has committed but not yet carried out."""
    with rt.db.read_session() as s:
        return set(s.scalars(select(BlobDeletion.blob_key)))
