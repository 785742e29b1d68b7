"""Ingest: validate, store the original bytes durably, then index them.

The order is fixed by principle 4: the staged file is parsed and hashed
(one open, one pass over the bytes), fsynced and renamed into the blob
store, and only then indexed in a transaction with its audit record. That
transaction is shared with whatever other instances are ready at the same
moment (group commit, ``ingest_batch``); the caller's result, and so the
C-STORE response or STOW part status, comes only after it commits. A failure
before the commit removes the blob unless another row already references
it; a crash in between leaves an unindexed blob that ``readingroom check
--repair`` indexes. Nothing is ever visible half-written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from readingroom.archive import index
from readingroom.archive.attributes import first_value
from readingroom.archive.blobs import blob_key, copy_to_staging
from readingroom.archive.ingest_batch import (
    ID_CACHE,
    Pending,
    audit_values,
    group_for,
    index_batch,
    instance_values,
    series_cache_key,
)
from readingroom.archive.models import IngestConflict, Instance
from readingroom.archive.parsing import InvalidInstance, ParsedInstance, parse_and_hash
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.models import AuditRecord
from readingroom.governance.sites import issuer_for_site, site_for_institution
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)

CONFLICT_REASON = "a different instance with this SOP Instance UID is stored; kept the first"

#: Test hook: callables run at named points of the pipeline (fault injection).
FAULT_POINTS: dict[str, Callable[[], None]] = {}


def _fault(point: str) -> None:
    hook = FAULT_POINTS.get(point)
    if hook is not None:
        hook()


@dataclass
class IngestResult:
    """What happened to one received instance."""

    status: str  # stored | duplicate | replaced | conflict | rejected | failed
    reason: str = ""
    sop_uid: str = ""
    sop_class_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    transfer_syntax_uid: str = ""
    size: int = 0

    @property
    def ok(self) -> bool:
        """Stored (now or before) with exactly these bytes."""
        return self.status in ("stored", "duplicate", "replaced")

    @property
    def warning(self) -> bool:
        """Accepted as a request but the instance was not stored (kept the first)."""
        return self.status == "conflict"


def _result(status: str, p: ParsedInstance | None, reason: str = "") -> IngestResult:
    if p is None:
        return IngestResult(status=status, reason=reason)
    return IngestResult(
        status=status,
        reason=reason,
        sop_uid=p.sop_uid,
        sop_class_uid=p.sop_class_uid,
        study_uid=p.study_uid,
        series_uid=p.series_uid,
        transfer_syntax_uid=p.transfer_syntax_uid,
        size=p.file_size,
    )


def ingest_stream(
    rt: Runtime, stream: BinaryIO, *, actor: str, source: str = "", site_id: int | None = None
) -> IngestResult:
    """Ingest a Part-10 object read from a stream (copied to staging first)."""
    staged = copy_to_staging(rt.blobs, stream)
    return ingest_staged(rt, staged, actor=actor, source=source, site_id=site_id)


def ingest_path(
    rt: Runtime, path: Path, *, actor: str, source: str = "", site_id: int | None = None
) -> IngestResult:
    """Ingest a copy of a file that stays where it is (``readingroom import``)."""
    staged = copy_to_staging(rt.blobs, path)
    return ingest_staged(rt, staged, actor=actor, source=source, site_id=site_id)


def ingest_staged(
    rt: Runtime, staged: Path, *, actor: str, source: str = "", site_id: int | None = None
) -> IngestResult:
    """Ingest a file already in the blob store's staging area; it is consumed."""
    try:
        try:
            parsed, sha = parse_and_hash(staged)
        except InvalidInstance as exc:
            audit.record_now(
                rt.db, actor=actor, source=source, action="instance.store", outcome="failure",
                resource_type="instance", reason=str(exc),
            )
            return _result("rejected", None, str(exc))
        key = blob_key(parsed.sop_uid, sha)
        try:
            rt.blobs.commit(staged, key)
        except OSError as exc:
            log.error("blob write failed for %s: %s", parsed.sop_uid, exc)
            return _result("failed", parsed, f"storage failure: {exc.strerror or exc}")
        _fault("after_blob_commit")
        item = Pending(rt, parsed, sha, key, actor, source, site_id)
        return group_for(rt.db, _run_batch).submit(item)
    finally:
        staged.unlink(missing_ok=True)


def _run_batch(items: list[Pending]) -> None:
    """Index a batch in one transaction; what that cannot index goes one by one (see ingest_batch)."""
    try:
        rest = index_batch(items[0].rt.db, items, lambda: _fault("before_index_commit"))
    except Exception as exc:  # a lost race, a database error, a fault: the one-instance path sorts it out
        log.warning("group commit of %d instance(s) failed (%s); indexing them one by one", len(items), exc)
        log.debug("group commit failure", exc_info=True)
        ID_CACHE.clear()
        rest = items
    for item in items:
        if item in rest:
            item.result = _index_one(item)
        else:
            item.result = _result("stored", item.parsed)


def _index_one(item: Pending) -> IngestResult:
    """The one-instance path: duplicates, conflicts, retries, and clean-up on failure."""
    try:
        return _index_with_retry(item.rt, item.parsed, item.sha, item.key, actor=item.actor,
                                 source=item.source, site_id=item.site_id)
    except Exception as exc:
        _drop_if_unreferenced(item.rt, item.key)
        log.exception("indexing failed for %s", item.parsed.sop_uid)
        return _result("failed", item.parsed, f"indexing failure: {exc}")


def _index_with_retry(
    rt: Runtime, p: ParsedInstance, sha: str, key: str, *, actor: str, source: str, site_id: int | None
) -> IngestResult:
    last: Exception | None = None
    for _attempt in range(5):
        try:
            return _index(rt, p, sha, key, actor=actor, source=source, site_id=site_id)
        except (IntegrityError, OperationalError) as exc:
            # Lost a race with another writer (same study/series/instance at once)
            # or a serialization failure: the retry sees the winner's rows.
            last = exc
            ID_CACHE.clear()
    assert last is not None
    raise last


def _index(
    rt: Runtime, p: ParsedInstance, sha: str, key: str, *, actor: str, source: str, site_id: int | None
) -> IngestResult:
    """Index one committed blob in one transaction (the batch path's fallback)."""
    now = utcnow()
    values = instance_values(p, sha, key, now, source)
    with rt.db.session() as s:
        if site_id is None:
            site_id = site_for_institution(rt, str(first_value(p.metadata, "00080080", "") or ""))
        cache_key = series_cache_key(rt, site_id, p.series_uid)
        known = ID_CACHE.get(cache_key)
        new_series = False
        if known is None:
            patient_pk = index.upsert_patient(s, p, now, issuer_for_site(rt, site_id))
            study_pk = index.upsert_study(s, p, patient_pk, site_id, now)
            index.note_study_site(s, study_pk, site_id, source, now)
            series_pk, new_series = index.upsert_series(s, p, study_pk)
        else:
            study_pk, series_pk = known
        inst_id = s.execute(
            index.insert_for(s, Instance.__table__)
            .values(series_pk=series_pk, study_pk=study_pk, **values)
            .on_conflict_do_nothing()
            .returning(Instance.__table__.c.id)
        ).scalar()
        if inst_id is None:
            return _index_existing(rt, s, p, sha, key, values, actor=actor, source=source)
        index.count_instance(s, study_pk, series_pk, p.file_size, now, new_series)
        s.execute(insert(AuditRecord.__table__).values(**audit_values(p, actor, source, now)))
        _fault("before_index_commit")
    ID_CACHE.put(cache_key, (study_pk, series_pk))
    return _result("stored", p)


def _index_existing(
    rt: Runtime, s: Session, p: ParsedInstance, sha: str, key: str, values: dict[str, Any], *, actor: str,
    source: str,
) -> IngestResult:
    """The SOP Instance UID is already indexed: idempotent, conflict, or overwrite."""
    now = values["received_at"]
    existing = s.execute(
        select(Instance.id, Instance.sha256, Instance.blob_key, Instance.study_pk)
        .where(Instance.sop_uid == p.sop_uid)
    ).one()
    if existing.sha256 == sha:
        return _result("duplicate", p, "identical instance already stored")
    action = "overwrite" if rt.settings.duplicate_policy == "overwrite" else "reject"
    s.add(IngestConflict(
        sop_uid=p.sop_uid, study_uid=p.study_uid, received_at=now, source=source,
        existing_sha256=existing.sha256, received_sha256=sha, action=action,
    ))
    audit.record(
        s, actor=actor, source=source, action="instance.conflict", resource_type="instance",
        resource_id=p.sop_uid, outcome="warning",
        reason=f"same SOP Instance UID with different content; policy {action}",
    )
    if action == "reject":
        s.commit()
        _drop_if_unreferenced(rt, key)
        return _result("conflict", p, CONFLICT_REASON)
    s.execute(update(Instance).where(Instance.id == existing.id).values(**values))
    index.recount(s, existing.study_pk)
    s.execute(insert(AuditRecord.__table__).values(**audit_values(p, actor, source, now)))
    _fault("before_index_commit")
    s.commit()
    if existing.blob_key != key:
        rt.blobs.delete(existing.blob_key)
    return _result("replaced", p)


def forget_cached_ids() -> None:
    """Forget cached study/series keys (after deletes, merges, restores)."""
    ID_CACHE.clear()


def _drop_if_unreferenced(rt: Runtime, key: str) -> None:
    """Remove a committed blob that no index row points at (after a failure)."""
    try:
        with rt.db.read_session() as s:
            used = s.scalar(select(Instance.id).where(Instance.blob_key == key).limit(1))
        if used is None:
            rt.blobs.delete(key)
    except Exception:  # the check itself failed: leave it for `check --repair`
        log.exception("could not verify blob %s after a failed ingest", key)
