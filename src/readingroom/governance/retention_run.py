"""A retention run (dry or real), its report, and the daily scheduled job.

A dry run is the selection of :mod:`retention` and nothing else: the same
query a real run starts from, so what it shows is what a purge would do at
that moment. A real run then purges study by study, each in its own
transaction that re-checks the study under lock (a hold or a case may
appear between selection and purge).

Only one real run happens at a time across every process: on PostgreSQL a
session advisory lock, on SQLite an exclusive ``flock`` on a file beside the
database. The scheduled job also claims the day in ``consumer_offsets``
with one conditional UPDATE, so with several ``serve`` processes exactly
one of them runs it per UTC day.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from readingroom.archive.index import insert_for
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.retention import RuleView, Scope, StudyDecision, decide, enabled_rules
from readingroom.governance.retention_purge import delete_owed_blobs, purge_study
from readingroom.runtime import Runtime
from readingroom.workflow.models import ConsumerOffset

log = logging.getLogger(__name__)

#: PostgreSQL advisory lock key of purge runs (migrations use 815001).
ADVISORY_KEY = 815002
DAILY_SLOT = "governance.retention.daily"
SYSTEM_ACTOR = "system:retention"


class RetentionBusy(RuntimeError):
    """Another purge run holds the lock; try again when it has finished."""


@dataclass
class RetentionReport:
    """What a run selected and did; ``studies`` holds every due study with its action and reasons."""

    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    rules: list[RuleView] = field(default_factory=list)
    studies: list[StudyDecision] = field(default_factory=list)
    blobs_deleted: int = 0
    leftovers_deleted: int = 0

    def count(self, *actions: str) -> int:
        return sum(1 for d in self.studies if d.action in actions)

    @property
    def totals(self) -> dict[str, int]:
        """Counts for a summary: due, purge (done or would be), kept, skipped, failed, and sizes purged."""
        purge = [d for d in self.studies if d.action in ("purged", "would_purge")]
        return {
            "due": len(self.studies),
            "purge": len(purge),
            "kept": self.count("keep"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "instances": sum(d.instances for d in purge),
            "bytes": sum(d.bytes for d in purge),
            "blobs_deleted": self.blobs_deleted + self.leftovers_deleted,
        }


def run_retention(
    rt: Runtime,
    *,
    dry_run: bool,
    actor: str,
    source: str = "",
    scope: Scope = None,
    progress: Callable[[int, int], None] | None = None,
) -> RetentionReport:
    """Select due studies and, unless ``dry_run``, purge those not kept; audited either way.

    ``scope`` limits the run to studies of those sites (a site administrator's run).
    Raises :class:`RetentionBusy` when another real run is in progress.
    """
    now = utcnow()
    report = RetentionReport(dry_run=dry_run, started_at=now)
    if dry_run:
        _select(rt, report, now, scope)
    else:
        with run_lock(rt):
            report.leftovers_deleted = delete_owed_blobs(rt)
            _select(rt, report, now, scope)
            todo = [d for d in report.studies if d.action == "would_purge"]
            for done, decision in enumerate(todo, start=1):
                outcome = purge_study(rt, decision, now=now, actor=actor, source=source, scope=scope)
                decision.action = outcome.action
                if outcome.reasons:
                    decision.reasons = outcome.reasons
                if outcome.action == "purged":
                    decision.instances, decision.bytes = outcome.instances, outcome.bytes
                report.blobs_deleted += outcome.blobs_deleted
                if progress:
                    progress(done, len(todo))
    report.finished_at = utcnow()
    totals = report.totals
    audit.record_now(
        rt.db, actor=actor, source=source, action="retention.dry_run" if dry_run else "retention.run",
        resource_type="retention", resource_id="all sites" if scope is None else
        "sites " + ",".join(str(s) for s in sorted(scope)),
        outcome="success" if not totals["failed"] else "warning",
        detail={**totals, "rules": [r.name for r in report.rules]},
    )
    return report


def _select(rt: Runtime, report: RetentionReport, now: datetime, scope: Scope) -> None:
    with rt.db.read_session() as s:
        report.rules = enabled_rules(s)
        report.studies = decide(s, report.rules, now, scope)


@contextmanager
def run_lock(rt: Runtime) -> Iterator[None]:
    """Hold the one purge lock of this database for the duration of a run, or raise RetentionBusy."""
    if rt.db.is_sqlite:
        with _file_lock(_lock_path(rt)):
            yield
        return
    with rt.db.engine.connect() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar():
            raise RetentionBusy("another retention run is in progress")
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            conn.commit()


def _lock_path(rt: Runtime) -> Path:
    database = rt.db.engine.url.database
    if database and database != ":memory:":
        return Path(database).with_name(Path(database).name + ".retention.lock")
    return rt.settings.data_dir / "retention.lock"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RetentionBusy("another retention run is in progress") from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def claim_today(rt: Runtime) -> bool:
    """Claim today's (UTC) scheduled run for this process; False if another process already has it."""
    today = utcnow().date().toordinal()
    with rt.db.session() as s:
        s.execute(insert_for(s, ConsumerOffset).values(name=DAILY_SLOT, position=0).on_conflict_do_nothing())
        claimed = s.execute(update(ConsumerOffset)
                            .where(ConsumerOffset.name == DAILY_SLOT, ConsumerOffset.position < today)
                            .values(position=today))
        return claimed.rowcount == 1


def scheduled_run(rt: Runtime) -> RetentionReport | None:
    """The ``retention`` scheduler job: what ``retention_mode`` says, at most once a day network-wide."""
    mode = rt.settings.retention_mode
    if mode == "off" or not claim_today(rt):
        return None
    try:
        report = run_retention(rt, dry_run=mode == "dry-run", actor=SYSTEM_ACTOR, source="scheduler")
    except RetentionBusy:
        log.info("retention: a manual run is in progress; today's scheduled run is skipped")
        return None
    log.info("retention (%s): %s", mode, _summary(report.totals))
    return report


def _summary(totals: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in totals.items())
