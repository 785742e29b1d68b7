"""Plugs interoperability into ``serve``: HTTP routers, background jobs, network listeners.

``app.py`` calls these three functions, so the assembly of the process
stays in one place. Importing some modules registers hooks with the core
(the layers below know nothing of interop): ``results`` queues an ORU^R01
when a report is signed, ``procedures`` names each new case's canonical
procedure, ``forward_delivery`` and ``priors`` add their outbox operations,
and ``reconcile.install`` links studies and orders. Both the HTTP app and
the scheduler install them, so a process running either behaves the same.
"""

from __future__ import annotations

from typing import Protocol

from fastapi import FastAPI

from readingroom.runtime import Runtime
from readingroom.scheduler import Scheduler


class Listener(Protocol):
    """A network listener started with the process and stopped with it."""

    def stop(self) -> None: ...


def install_hooks(rt: Runtime) -> None:
    """Register interop's hooks in the core (idempotent)."""
    from readingroom.interop import forward_delivery, priors, procedures, reconcile, results  # noqa: F401

    reconcile.install(rt)  # studies <-> orders at intake; a late order links to its study at once


def include_routers(app: FastAPI, rt: Runtime) -> None:
    """The interop HTTP routes: admin API under /api/v1, FHIR R4 under /fhir."""
    from readingroom.interop import (
        destinations_api,
        fhir,
        forwarding_api,
        golive_api,
        identity_api,
        orders_api,
        outbox_api,
        procedures_api,
    )

    install_hooks(rt)
    for router in (orders_api.router, destinations_api.router, outbox_api.router, forwarding_api.router,
                   golive_api.router, procedures_api.router, identity_api.router):
        app.include_router(router, prefix="/api/v1")
    app.include_router(fhir.router, prefix="/fhir")  # FHIR R4: Patient, ImagingStudy, ServiceRequest, Task ...


def add_jobs(scheduler: Scheduler, rt: Runtime) -> None:
    """Background work: outbox delivery, forwarding, prior fetching, identity and duplicate scans."""
    from readingroom.interop import duplicates, forwarding, identity, outbox, priors, reconcile

    install_hooks(rt)
    interval = rt.settings.scheduler_interval_seconds
    scheduler.add("interop-outbox", rt.settings.outbox_interval_seconds, lambda: outbox.deliver_due(rt))
    scheduler.add("interop-forwarding", interval, lambda: forwarding.forward_completed(rt))
    scheduler.add("interop-priors", interval, lambda: priors.queue_prior_fetches(rt))
    scheduler.add("interop-identity", interval, lambda: identity.scan_new_patients(rt))
    scheduler.add("interop-duplicates", interval, lambda: duplicates.scan(rt))
    scheduler.add("interop-orders-overdue", 300, lambda: reconcile.flag_overdue(rt))


def start_listeners(rt: Runtime) -> list[Listener]:
    """Listeners of ``serve`` besides HTTP and DIMSE: the HL7 MLLP port (``hl7_port`` 0 disables it)."""
    listeners: list[Listener] = []
    if rt.settings.hl7_port:
        from readingroom.interop.hl7 import start_mllp_listener

        listeners.append(start_mllp_listener(rt))
    return listeners
