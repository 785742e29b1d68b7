"""``readingroom check``: the index and the blob store must agree.

Every indexed instance must have its blob with the recorded size and hash,
and every blob must be indexed. ``repair`` indexes orphan blobs (what a crash
between blob commit and index commit leaves behind) and removes staging
leftovers; it never deletes or rewrites an indexed instance's bytes.

A blob whose index rows a retention purge deleted, and whose deletion that
purge recorded but had not carried out yet (a crash, a run in progress), is
not an orphan: it is reported as ``purge_pending``, and ``repair`` deletes it
rather than re-indexing purged data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select

from readingroom.archive.blobs import file_sha256
from readingroom.archive.ingest import _index_with_retry
from readingroom.archive.models import Instance
from readingroom.archive.parsing import InvalidInstance, parse_file
from readingroom.governance.retention_purge import delete_owed_blobs, owed_keys
from readingroom.runtime import Runtime


@dataclass
class CheckReport:
    """Problems found (and what repair did)."""

    instances: int = 0
    blobs: int = 0
    missing_blobs: list[str] = field(default_factory=list)
    size_mismatch: list[str] = field(default_factory=list)
    hash_mismatch: list[str] = field(default_factory=list)
    orphan_blobs: list[str] = field(default_factory=list)
    reindexed: list[str] = field(default_factory=list)
    unreadable_orphans: list[tuple[str, str]] = field(default_factory=list)
    purge_pending: list[str] = field(default_factory=list)
    purge_completed: int = 0

    @property
    def clean(self) -> bool:
        unresolved_orphans = set(self.orphan_blobs) - set(self.reindexed)
        return not (self.missing_blobs or self.size_mismatch or self.hash_mismatch or unresolved_orphans)


def check(
    rt: Runtime,
    *,
    repair: bool = False,
    verify_hashes: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Compare index and blobs; with ``repair``, index orphans."""
    report = CheckReport()
    with rt.db.read_session() as s:
        total = s.scalar(select(func.count()).select_from(Instance)) or 0
    indexed_keys: set[str] = set()
    done = 0
    last_id = 0
    while True:
        with rt.db.read_session() as s:
            rows = s.execute(
                select(Instance.id, Instance.sop_uid, Instance.blob_key, Instance.size_bytes, Instance.sha256)
                .where(Instance.id > last_id)
                .order_by(Instance.id)
                .limit(1000)
            ).all()
        if not rows:
            break
        for row in rows:
            last_id = row.id
            indexed_keys.add(row.blob_key)
            report.instances += 1
            if not rt.blobs.exists(row.blob_key):
                report.missing_blobs.append(row.sop_uid)
            elif rt.blobs.size(row.blob_key) != row.size_bytes:
                report.size_mismatch.append(row.sop_uid)
            elif verify_hashes and rt.blobs.sha256(row.blob_key) != row.sha256:
                report.hash_mismatch.append(row.sop_uid)
            done += 1
            if progress:
                progress(done, total)
    owed = owed_keys(rt)
    for key in rt.blobs.iter_keys():
        report.blobs += 1
        if key in owed:
            report.purge_pending.append(key)
        elif key not in indexed_keys:
            report.orphan_blobs.append(key)
    if repair:
        report.purge_completed = delete_owed_blobs(rt)
        for key in report.orphan_blobs:
            _reindex(rt, key, report)
        rt.blobs.clean_staging(older_than_seconds=0)
    return report


def _reindex(rt: Runtime, key: str, report: CheckReport) -> None:
    path = rt.blobs.local_path(key)
    if path is None:
        report.unreadable_orphans.append((key, "store has no local path"))
        return
    try:
        parsed = parse_file(path)
    except InvalidInstance as exc:
        report.unreadable_orphans.append((key, str(exc)))
        return
    sha = file_sha256(path)
    result = _index_with_retry(rt, parsed, sha, key, actor="check --repair", source="repair", site_id=None)
    if result.status in ("stored", "replaced"):
        report.reindexed.append(key)
    elif result.status == "duplicate":
        # The same bytes are indexed under another key: this copy is redundant.
        rt.blobs.delete(key)
        report.reindexed.append(key)
    else:
        report.unreadable_orphans.append((key, f"{result.status}: {result.reason}"))
