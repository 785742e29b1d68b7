"""Assemble the HTTP app, the DIMSE listener and the scheduler for ``serve``."""

from __future__ import annotations

import gc
import logging
import os
import tempfile

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from readingroom import __version__
from readingroom.api_errors import install_error_docs, install_input_error_handlers
from readingroom.archive.stability import complete_stable_studies
from readingroom.governance import audit
from readingroom.runtime import Runtime
from readingroom.scheduler import Scheduler

log = logging.getLogger(__name__)


def create_app(rt: Runtime) -> FastAPI:
    """The HTTP side: health, REST API under /api/v1, DICOMweb under /dicomweb."""
    from readingroom.analytics import api as analytics_api
    from readingroom.archive import api as archive_api
    from readingroom.archive import dicomweb
    from readingroom.collab import live
    from readingroom.governance import api as governance_api
    from readingroom.governance import retention_api, shares_api, tokens_api, users_api
    from readingroom.governance.denials import DeniedAccessAudit
    from readingroom.workflow import api as workflow_api

    app = FastAPI(
        title="ReadingRoom",
        version=__version__,
        description="Medical imaging collaboration across sites: DICOM archive, DICOMweb, shared worklist.",
    )
    app.state.rt = rt
    app.add_middleware(DeniedAccessAudit, db=rt.db)
    if rt.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=rt.settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept", "If-Match", "X-CSRF-Token"],
            expose_headers=["ETag", "Content-Location", "Warning"],
        )

    @app.exception_handler(OperationalError)
    def db_unavailable(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc)
        return JSONResponse({"detail": "database unavailable, retry later"}, status_code=503,
                            headers={"Retry-After": "5"})

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok", "version": __version__}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Database and storage are reachable."""
        problems: dict[str, str] = {}
        try:
            with rt.db.read_session() as s:
                s.execute(text("SELECT 1"))
        except Exception as exc:
            problems["database"] = str(exc).splitlines()[0]
        try:
            probe = rt.blobs.new_staging_path(".probe")
            probe.write_bytes(b"ok")
            probe.unlink()
        except Exception as exc:
            problems["storage"] = str(exc)
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    app.include_router(governance_api.router, prefix="/api/v1")
    app.include_router(users_api.router, prefix="/api/v1")
    app.include_router(tokens_api.router, prefix="/api/v1")
    _add_sign_in(app)
    app.include_router(archive_api.router, prefix="/api/v1")
    app.include_router(workflow_api.router, prefix="/api/v1")
    app.include_router(analytics_api.router, prefix="/api/v1")
    app.include_router(live.router, prefix="/api/v1")
    app.include_router(retention_api.router, prefix="/api/v1")
    app.include_router(shares_api.router, prefix="/api/v1")
    app.include_router(shares_api.public_router)
    from readingroom.governance import access_api, audit_api

    app.include_router(audit_api.router, prefix="/api/v1")
    app.include_router(access_api.router, prefix="/api/v1")
    from readingroom.collab import conferences_api, referrals_api

    app.include_router(conferences_api.router, prefix="/api/v1")
    app.include_router(referrals_api.router, prefix="/api/v1")
    from readingroom.collab import annotations_api

    app.include_router(annotations_api.router, prefix="/api/v1")
    from readingroom.collab import consults_api, peer_review_api

    app.include_router(consults_api.router, prefix="/api/v1")
    app.include_router(peer_review_api.router, prefix="/api/v1")
    from readingroom.collab import reports_api

    app.include_router(reports_api.router, prefix="/api/v1")
    from readingroom.collab import comments_api, critical_api

    app.include_router(critical_api.router, prefix="/api/v1")
    app.include_router(comments_api.router, prefix="/api/v1")
    app.include_router(dicomweb.router, prefix="/dicomweb")
    from readingroom.interop import wiring

    wiring.include_routers(app, rt)
    install_input_error_handlers(app)
    install_error_docs(app, governance_api.current_principal, governance_api.pending_principal)
    return app


def _add_sign_in(app: FastAPI) -> None:
    """Sign-in: JSON routes under /api/v1/auth, single sign-on under /auth/oidc, the pages and their CSS."""
    from fastapi.staticfiles import StaticFiles

    from readingroom.governance import accounts_api, auth_api, oidc_api
    from readingroom.web import pages
    from readingroom.web.templating import STATIC_DIR

    app.include_router(auth_api.router, prefix="/api/v1")
    app.include_router(accounts_api.router, prefix="/api/v1")
    app.include_router(oidc_api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def build_scheduler(rt: Runtime) -> Scheduler:
    """Background jobs every ``serve`` process runs (each is safe with several processes)."""
    from readingroom.governance import retention_run
    from readingroom.governance.sessions import prune_ended_sessions
    from readingroom.workflow import jobs
    from readingroom.workflow.notify import build_notifier

    settings = rt.settings
    notifier = build_notifier(settings.notify_webhook_url)
    scheduler = Scheduler()
    scheduler.add("study-stability", settings.scheduler_interval_seconds, lambda: complete_stable_studies(rt))
    scheduler.add("case-intake", settings.scheduler_interval_seconds, lambda: jobs.intake(rt))
    scheduler.add("sla-escalation", settings.scheduler_interval_seconds, lambda: jobs.escalate_due(rt, notifier))
    scheduler.add("claim-expiry", 60, lambda: jobs.expire_claims(rt, settings.claim_timeout_minutes))
    scheduler.add("routing-refresh", settings.routing_refresh_seconds,
                  lambda: jobs.refresh_routing(rt, settings.routing_refresh_seconds))
    scheduler.add("staging-cleanup", 3600, lambda: rt.blobs.clean_staging())
    scheduler.add("session-cleanup", 3600, lambda: prune_ended_sessions(rt))
    # Hourly wake-up, but the run itself happens once per UTC day network-wide (retention_run.claim_today).
    scheduler.add("retention", 3600, lambda: retention_run.scheduled_run(rt))
    from readingroom.collab import critical

    # Unacknowledged critical results climb their ladder (each step once, conditional UPDATE).
    scheduler.add("critical-escalation", settings.scheduler_interval_seconds, lambda: critical.escalate_due(rt))
    from readingroom.collab.conference_access import open_windows
    from readingroom.collab.referrals import flag_overdue

    scheduler.add("conference-access", 60, lambda: open_windows(rt))  # grants of sessions whose window opened
    scheduler.add("referral-sla", 60, lambda: flag_overdue(rt))  # unanswered referrals to the exception queue
    from readingroom.collab import after_final

    # second reads and sampled peer reviews of new finals; consultants' and reviewers' grants follow their claims
    scheduler.add("after-final", settings.scheduler_interval_seconds, lambda: after_final.after_final(rt))
    scheduler.add("child-read-access", settings.scheduler_interval_seconds, lambda: after_final.sync_access(rt))
    from readingroom.governance.audit_jobs import add_audit_jobs

    add_audit_jobs(scheduler, rt)  # audit-seal (hash chain) and audit-syslog (ATNA forwarding)
    from readingroom.interop import wiring

    wiring.add_jobs(scheduler, rt)  # outbox delivery, forwarding, priors
    return scheduler


def serve(rt: Runtime, *, dimse: bool = True) -> None:
    """Run HTTP, DIMSE and the scheduler until interrupted."""
    import uvicorn

    from readingroom.archive.dimse import DimseServer

    # Libraries that spool to temp files (pynetdicom's chunked C-STORE) write
    # next to the blobs so the final rename stays on one filesystem.
    tempfile.tempdir = str(rt.blobs.staging_dir)
    os.environ["TMPDIR"] = str(rt.blobs.staging_dir)
    scheduler = build_scheduler(rt)
    from readingroom.governance import audit_jobs

    audit_jobs.record_lifecycle(rt, "start")
    dimse_server = DimseServer(rt) if dimse else None
    if dimse_server:
        dimse_server.start()
    scheduler.start()
    from readingroom.interop import wiring

    listeners = wiring.start_listeners(rt)  # HL7 MLLP
    app = create_app(rt)
    # Everything built so far lives as long as the process: keep it out of the
    # cyclic collector's full passes (each one otherwise walks ~150k objects with
    # the GIL held, a pause for every request and association in flight).
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(
            app,
            host=rt.settings.host,
            port=rt.settings.port,
            log_level=rt.settings.log_level.lower(),
            access_log=False,
            timeout_keep_alive=30,
        )
    finally:
        scheduler.stop()
        for listener in listeners:
            listener.stop()
        if dimse_server:
            dimse_server.stop()
        audit.flush(rt.db)
        audit_jobs.on_shutdown(rt)
        rt.close()
