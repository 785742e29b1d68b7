"""Ingest: validate, store the original bytes durably, then index them.

The order is fixed by principle 4: the staged file is parsed and hashed,
fsynced and renamed into the blob store, and only then indexed in one
transaction (with its audit record). A failure before the commit removes the
blob unless another row already references it; a crash in between leaves an
unindexed blob that ``readingroom check --repair`` indexes. Nothing is ever
visible half-written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from readingroom.archive import index
from readingroom.archive.blobs import blob_key, copy_to_staging, file_sha256
from readingroom.archive.models import IngestConflict, Instance
from readingroom.archive.parsing import InvalidInstance, ParsedInstance, parse_file
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.sites import site_for_institution
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
            parsed = parse_file(staged)
        except InvalidInstance as exc:
            audit.record_now(
                rt.db, actor=actor, source=source, action="instance.store", outcome="failure",
                resource_type="instance", reason=str(exc),
            )
            return _result("rejected", None, str(exc))
        sha = file_sha256(staged)
        key = blob_key(parsed.sop_uid, sha)
        try:
            rt.blobs.commit(staged, key)
        except OSError as exc:
            log.error("blob write failed for %s: %s", parsed.sop_uid, exc)
            return _result("failed", parsed, f"storage failure: {exc.strerror or exc}")
        _fault("after_blob_commit")
        try:
            return _index_with_retry(rt, parsed, sha, key, actor=actor, source=source, site_id=site_id)
        except Exception as exc:
            _drop_if_unreferenced(rt, key)
            log.exception("indexing failed for %s", parsed.sop_uid)
            return _result("failed", parsed, f"indexing failure: {exc}")
    finally:
        staged.unlink(missing_ok=True)


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
    assert last is not None
    raise last


def _index(
    rt: Runtime, p: ParsedInstance, sha: str, key: str, *, actor: str, source: str, site_id: int | None
) -> IngestResult:
    now = utcnow()
    old_key: str | None = None
    with rt.db.session() as s:
        existing = s.execute(
            select(Instance.id, Instance.sha256, Instance.blob_key, Instance.study_pk, Instance.size_bytes)
            .where(Instance.sop_uid == p.sop_uid)
        ).first()
        if existing is not None:
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
            inst = s.get(Instance, existing.id)
            assert inst is not None
            old_key = inst.blob_key
            _fill_instance(inst, p, sha, key, now, source)
            s.flush()
            index.recount(s, existing.study_pk)
            status = "replaced"
        else:
            if site_id is None:
                site_id = site_for_institution(rt, str(p.dataset.get("InstitutionName", "") or ""))
            patient_pk = index.upsert_patient(s, p, now)
            study_pk = index.upsert_study(s, p, patient_pk, site_id, now)
            series_pk, new_series = index.upsert_series(s, p, study_pk)
            inst = Instance(sop_uid=p.sop_uid, series_pk=series_pk, study_pk=study_pk)
            _fill_instance(inst, p, sha, key, now, source)
            s.add(inst)
            s.flush()
            index.count_instance(s, study_pk, series_pk, p.file_size, now, new_series)
            status = "stored"
        audit.record(
            s, actor=actor, source=source, action="instance.store", resource_type="instance",
            resource_id=p.sop_uid, patient_id=str(p.dataset.get("PatientID", "") or ""),
            detail={"study": p.study_uid, "series": p.series_uid, "size": p.file_size},
        )
        _fault("before_index_commit")
    if old_key and old_key != key:
        rt.blobs.delete(old_key)
    return _result(status, p)


def _fill_instance(inst: Instance, p: ParsedInstance, sha: str, key: str, now: object, source: str) -> None:
    ds = p.dataset
    inst.sop_class_uid = p.sop_class_uid
    inst.instance_number = index._int(ds, "InstanceNumber")
    inst.rows = index._int(ds, "Rows")
    inst.columns = index._int(ds, "Columns")
    inst.bits_allocated = index._int(ds, "BitsAllocated")
    inst.number_of_frames = index._int(ds, "NumberOfFrames")
    inst.transfer_syntax_uid = p.transfer_syntax_uid
    inst.blob_key = key
    inst.size_bytes = p.file_size
    inst.sha256 = sha
    inst.pixel_offset = p.pixel_offset
    inst.pixel_length = p.pixel_length
    inst.received_at = now  # type: ignore[assignment]
    inst.source = source[:128]
    inst.attrs = p.level_attrs["IMAGE"]
    inst.metadata_json = p.metadata_json()


def _drop_if_unreferenced(rt: Runtime, key: str) -> None:
    """Remove a committed blob that no index row points at (after a failure)."""
    try:
        with rt.db.read_session() as s:
            used = s.scalar(select(Instance.id).where(Instance.blob_key == key).limit(1))
        if used is None:
            rt.blobs.delete(key)
    except Exception:  # the check itself failed: leave it for `check --repair`
        log.exception("could not verify blob %s after a failed ingest", key)
