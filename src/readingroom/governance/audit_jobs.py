"""The audit trail's part in ``serve``: background jobs and the start/stop records.

* ``audit-seal`` extends the hash chain every scheduler interval (at most
  every 5 s), so a record is sealed seconds after it is written;
* ``audit-syslog`` forwards sealed records to the ATNA repository when
  ``audit_syslog_url`` is set;
* the application's start and stop are audited (DICOM "Application
  Activity", which IHE ATNA asks every secure node to report), and stopping
  seals what the last requests wrote.
"""

from __future__ import annotations

import logging
import os

from readingroom.governance import audit
from readingroom.governance.audit_chain import Sealer
from readingroom.governance.audit_syslog import SyslogForwarder
from readingroom.runtime import Runtime
from readingroom.scheduler import Scheduler

log = logging.getLogger(__name__)

SEAL_INTERVAL_MAX = 5.0


def add_audit_jobs(scheduler: Scheduler, rt: Runtime) -> None:
    """Register the sealing and forwarding jobs (the syslog URL is checked here, failing ``serve`` early)."""
    interval = min(rt.settings.scheduler_interval_seconds, SEAL_INTERVAL_MAX)
    scheduler.add("audit-seal", interval, Sealer(rt).run_job)
    forwarder = SyslogForwarder.from_settings(rt)
    if forwarder is not None:
        scheduler.add("audit-syslog", interval, forwarder.run_job)


def record_lifecycle(rt: Runtime, event: str) -> None:
    """Audit ``application.start`` or ``application.stop`` of this process."""
    audit.record_now(rt.db, actor=f"{rt.settings.aet}", source="", action=f"application.{event}",
                     resource_type="application", resource_id=f"pid {os.getpid()}")


def on_shutdown(rt: Runtime) -> None:
    """Record the stop and seal what is left, without letting a broken database stop the shutdown."""
    try:
        record_lifecycle(rt, "stop")
        audit.flush(rt.db)
        Sealer(rt).run(wait=True)
    except Exception:
        log.exception("could not seal the audit trail at shutdown; the next start seals it")
