"""Group commit: index the instances that arrive together in one transaction.

Several associations (and the parts of a STOW-RS request) ingest at once,
and each used to pay for its own transaction: half a dozen statements, a
``BEGIN IMMEDIATE`` and a commit, serialized behind SQLite's single writer.
Here each ingesting thread, once its blob is durably in place, queues its
instance and waits; whichever thread gets the commit lock first takes
everything queued so far and indexes it in one transaction (one multi-row
``INSERT ... ON CONFLICT DO NOTHING RETURNING``, one counter update per
series and study, one multi-row audit insert). The others find their result
ready when the lock comes free, or lead the next batch. Batches grow with
load and need no timer, so a lone sender never waits for company.

Each C-STORE response (or STOW part result) is given only after the commit
of the batch holding its instance, so acknowledging still means "durable
and indexed" (principle 4). Anything unusual (an instance already indexed,
a lost race with another process, a database error, an injected fault) makes
the batch path step aside: the transaction rolls back and every instance of
the batch goes through ``ingest``'s one-instance path, which knows
duplicates, conflicts and failure clean-up.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from readingroom.archive import index
from readingroom.archive.attributes import first_value
from readingroom.archive.models import Instance, Series, Study
from readingroom.archive.parsing import ParsedInstance
from readingroom.clock import utcnow
from readingroom.governance.models import AuditRecord
from readingroom.governance.sites import issuer_for_site, site_for_institution

if TYPE_CHECKING:
    from readingroom.archive.ingest import IngestResult
    from readingroom.db import Database
    from readingroom.runtime import Runtime

#: Upper bound on instances per transaction (keeps one statement's parameters reasonable).
MAX_BATCH = 64

_INSTANCES = Instance.__table__
_SERIES = Series.__table__
_STUDIES = Study.__table__
_AUDIT = AuditRecord.__table__

_COUNT_SERIES = (
    update(_SERIES)
    .where(_SERIES.c.id == bindparam("pk"))
    .values(num_instances=_SERIES.c.num_instances + bindparam("n"),
            size_bytes=_SERIES.c.size_bytes + bindparam("size"))
)
_COUNT_STUDY = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("pk"))
    .values(num_instances=_STUDIES.c.num_instances + bindparam("n"),
            size_bytes=_STUDIES.c.size_bytes + bindparam("size"),
            num_series=_STUDIES.c.num_series + bindparam("new_series"),
            last_received_at=bindparam("now"), state="receiving")
)
_INSERT_AUDIT = insert(_AUDIT)


@dataclass(eq=False)
class Pending:
    """One instance whose blob is committed, waiting to be indexed."""

    rt: Runtime
    parsed: ParsedInstance
    sha: str
    key: str
    actor: str
    source: str
    site_id: int | None
    result: IngestResult | None = None
    error: BaseException | None = None
    study_pk: int = 0
    series_pk: int = 0
    new_series: bool = False
    values: dict[str, Any] = field(default_factory=dict)


class IdCache:
    """Series UID -> (study key, series key), so most instances skip three upserts.

    Only filled after a commit; any integrity error clears it (a study may
    have been deleted meanwhile), and the retry takes the slow path.
    """

    def __init__(self, size: int = 20_000) -> None:
        self._data: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[int, int] | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: str, value: tuple[int, int]) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


ID_CACHE = IdCache()


class GroupCommit:
    """Leader/follower batching of ``run`` over items submitted by many threads."""

    def __init__(self, run: Callable[[list[Pending]], None], max_batch: int = MAX_BATCH) -> None:
        self._run = run
        self._max = max_batch
        self._queue: list[Pending] = []
        self._queue_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    def submit(self, item: Pending) -> IngestResult:
        """Queue an item and return once a batch holding it has run (perhaps led by us)."""
        with self._queue_lock:
            self._queue.append(item)
        while True:
            with self._commit_lock:
                if item.error is not None:
                    raise item.error
                if item.result is not None:
                    return item.result
                with self._queue_lock:
                    batch = self._queue[: self._max]
                    del self._queue[: self._max]
                try:
                    self._run(batch)
                except BaseException as exc:  # ``run`` answers every item; if it cannot, nobody waits forever
                    for other in batch:
                        if other.result is None:
                            other.error = exc
                    raise


_GROUPS: weakref.WeakKeyDictionary[Database, GroupCommit] = weakref.WeakKeyDictionary()
_GROUPS_LOCK = threading.Lock()


def group_for(db: Database, run: Callable[[list[Pending]], None]) -> GroupCommit:
    """The one group committer of a database in this process."""
    with _GROUPS_LOCK:
        group = _GROUPS.get(db)
        if group is None:
            group = _GROUPS[db] = GroupCommit(run)
        return group


def _meta_int(meta: dict[str, Any], tag: str) -> int | None:
    values = (meta.get(tag) or {}).get("Value")
    if not values or len(values) != 1:
        return None
    try:
        return int(values[0])
    except (TypeError, ValueError):
        return None


def instance_values(p: ParsedInstance, sha: str, key: str, now: datetime, source: str) -> dict[str, Any]:
    """The ``instances`` row of a parsed instance (typed columns read from its DICOM JSON)."""
    meta = p.metadata
    return {
        "sop_uid": p.sop_uid,
        "sop_class_uid": p.sop_class_uid,
        "instance_number": _meta_int(meta, "00200013"),
        "rows": _meta_int(meta, "00280010"),
        "columns": _meta_int(meta, "00280011"),
        "bits_allocated": _meta_int(meta, "00280100"),
        "number_of_frames": _meta_int(meta, "00280008"),
        "transfer_syntax_uid": p.transfer_syntax_uid,
        "blob_key": key,
        "size_bytes": p.file_size,
        "sha256": sha,
        "pixel_offset": p.pixel_offset,
        "pixel_length": p.pixel_length,
        "received_at": now,
        "source": source[:128],
        "attrs": p.level_attrs["IMAGE"],
        "metadata_json": p.metadata_json(),
    }


def audit_values(p: ParsedInstance, actor: str, source: str, now: datetime) -> dict[str, Any]:
    """The audit row of one stored instance."""
    return {
        "at": now, "actor": actor[:128], "source": source[:128], "action": "instance.store",
        "resource_type": "instance", "resource_id": p.sop_uid[:128],
        "patient_id": str(first_value(p.metadata, "00100020", "") or "")[:64], "outcome": "success",
        "detail": {"study": p.study_uid, "series": p.series_uid, "size": p.file_size}, "reason": "",
    }


def series_cache_key(rt: Runtime, site_id: int | None, series_uid: str) -> str:
    """The ID cache key: per site too, so a series arriving from a second site is located (and noted) once."""
    return f"{rt.db.url}|{site_id}|{series_uid}"


def _site_of(item: Pending) -> int | None:
    """The item's site: given by the caller, else known by its Institution Name (resolved once)."""
    if item.site_id is None:
        item.site_id = site_for_institution(item.rt, str(first_value(item.parsed.metadata, "00080080", "") or ""))
    return item.site_id


def _locate(s: Session, item: Pending, now: datetime) -> None:
    """Study and series keys of an item not in the cache: upsert patient, study and series."""
    p = item.parsed
    site_id = _site_of(item)
    patient_pk = index.upsert_patient(s, p, now, issuer_for_site(item.rt, site_id))
    item.study_pk = index.upsert_study(s, p, patient_pk, site_id, now)
    index.note_study_site(s, item.study_pk, site_id, item.source, now)
    item.series_pk, item.new_series = index.upsert_series(s, p, item.study_pk)


_INSERT_INSTANCES: dict[str, Any] = {}


def _insert_instances(conn: Connection) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING sop_uid``, built once per dialect (SQLAlchemy caches it)."""
    name = conn.dialect.name
    stmt = _INSERT_INSTANCES.get(name)
    if stmt is None:
        insert_cls = postgresql.insert if name == "postgresql" else sqlite.insert
        stmt = _INSERT_INSTANCES[name] = (insert_cls(_INSTANCES).on_conflict_do_nothing()
                                          .returning(_INSTANCES.c.sop_uid))
    return stmt


def index_batch(db: Database, items: list[Pending], before_commit: Callable[[], None]) -> list[Pending]:
    """Index items in one transaction; returns the items it did *not* index (already known UIDs).

    Raises on any database error; the caller then indexes the batch one by
    one. Items indexed here get no result: the caller fills it in. Works on
    a bare connection (an ORM session only for a series seen the first time).
    """
    now = utcnow()
    unique: dict[str, Pending] = {}
    for item in items:  # the same instance twice in one batch: the second learns from the first
        unique.setdefault(item.parsed.sop_uid, item)
    later = [item for item in items if unique[item.parsed.sop_uid] is not item]
    items = list(unique.values())
    with db.engine.begin() as conn:
        session: Session | None = None
        try:
            located: dict[str, Pending] = {}
            for item in items:
                series_uid = series_cache_key(item.rt, _site_of(item), item.parsed.series_uid)
                first = located.get(series_uid)
                known = None if first else ID_CACHE.get(series_uid)
                if first is not None:
                    item.study_pk, item.series_pk = first.study_pk, first.series_pk
                elif known is not None:
                    item.study_pk, item.series_pk = known
                else:
                    session = session or Session(bind=conn)
                    _locate(session, item, now)
                located.setdefault(series_uid, item)
                item.values = instance_values(item.parsed, item.sha, item.key, now, item.source)
            rows = [{**item.values, "series_pk": item.series_pk, "study_pk": item.study_pk} for item in items]
            inserted = set(conn.execute(_insert_instances(conn), rows if len(rows) > 1 else rows[0]).scalars())
            done = [item for item in items if item.parsed.sop_uid in inserted]
            if done:
                _count(conn, done, now)
                conn.execute(_INSERT_AUDIT, [audit_values(i.parsed, i.actor, i.source, now) for i in done])
            before_commit()
        finally:
            if session is not None:
                session.close()
    for item in done:
        ID_CACHE.put(series_cache_key(item.rt, item.site_id, item.parsed.series_uid), (item.study_pk, item.series_pk))
    return [item for item in items if item.parsed.sop_uid not in inserted] + later


def _count(conn: Connection, done: list[Pending], now: datetime) -> None:
    """Move the series and study counters for the inserted items (one statement each)."""
    series: dict[int, dict[str, Any]] = {}
    studies: dict[int, dict[str, Any]] = {}
    for item in done:
        row = series.setdefault(item.series_pk, {"pk": item.series_pk, "n": 0, "size": 0})
        row["n"] += 1
        row["size"] += item.parsed.file_size
        st = studies.setdefault(item.study_pk, {"pk": item.study_pk, "n": 0, "size": 0, "new_series": 0, "now": now})
        st["n"] += 1
        st["size"] += item.parsed.file_size
    for item in {i.series_pk: i for i in done if i.new_series}.values():
        studies[item.study_pk]["new_series"] += 1
    conn.execute(_COUNT_SERIES, list(series.values()))
    conn.execute(_COUNT_STUDY, list(studies.values()))
    new_studies = {i.study_pk for i in done if i.new_series}
    if new_studies:
        with Session(bind=conn) as s:
            for study_pk in new_studies:
                index.refresh_study_summary(s, study_pk)
