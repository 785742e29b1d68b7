"""Outbound results: every signed report version becomes an ORU^R01 queued for each HL7 destination.

The hook runs inside the signing transaction (``collab.reports.on_signed``),
so the message is queued if and only if the signature commits, and in
signing order: a preliminary, its final and the addendum reach a receiver in
that order (the outbox delivers each destination's items by id). The
message text is built once, at signing, and stored: every retry re-sends the
same bytes with the same MSH-10 (``RR{case}V{version}``) so the receiver can
drop duplicates. Which destinations get it: ``hl7`` destinations whose
``events`` name the version's kind (none named: every kind) and whose site
is empty (network-wide) or the case's site. A disabled destination still
gets its messages queued (planned downtime: they wait and flow in order
when it is enabled again); delete it, or narrow its events, to stop.

Importing this module registers the hook and the ``hl7`` outbox operation;
``interop/wiring.py`` imports it, so any process that builds the app or the
scheduler sends results.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.collab import report_hl7, reports
from readingroom.interop import mllp_client, outbox
from readingroom.interop.models import Destination, OutboxItem
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case

#: ACK codes that fail an item at once (the receiver refused this message; re-sending the same bytes cannot
#: help). AE (an error in the content) is permanent too by default; a destination may list ack codes to retry
#: instead in ``options.retry_ack_codes`` (e.g. ``["AE"]`` for a receiver that answers AE while busy).
REFUSALS = frozenset({"AE", "AR", "CE", "CR"})


def with_receiver(message: str, application: str, facility: str) -> str:
    """The message with MSH-5 / MSH-6 (receiving application / facility) set."""
    if not (application or facility):
        return message
    first, sep, rest = message.partition("\r")
    fields = first.split("|")
    fields += [""] * max(0, 6 - len(fields))
    fields[4], fields[5] = report_hl7.esc(application), report_hl7.esc(facility)
    return "|".join(fields) + sep + rest


def destinations_for(session: Session, kind: str, site_id: int | None) -> list[Destination]:
    """HL7 destinations (enabled or held) that want this kind of signed version from this site."""
    rows = session.scalars(select(Destination).where(Destination.kind == "hl7").order_by(Destination.id))
    return [d for d in rows if (not d.events or kind in d.events) and (d.site_id is None or d.site_id == site_id)]


def queue_signed(session: Session, signed: reports.SignedReport) -> list[OutboxItem]:
    """Queue the ORU^R01 of a signed version for every destination that wants it (the ``on_signed`` hook)."""
    case = session.get(Case, signed.case_id)
    targets = destinations_for(session, signed.kind, case.site_id if case is not None else None)
    if not targets:
        return []
    message = report_hl7.build_oru(session, signed.case_id, signed.version)
    control_id = mllp_client.control_id_of(message)
    items = []
    for dest in targets:
        options = dest.options or {}
        payload = with_receiver(message, str(options.get("receiving_application", "")),
                                str(options.get("receiving_facility", "")))
        items.append(outbox.enqueue(session, dest.id, "hl7", f"oru:{signed.case_id}:{signed.version}",
                                    payload=payload, control_id=control_id, case_id=signed.case_id))
    return items


def deliver_hl7(rt: Runtime, item: OutboxItem, destination: Destination) -> dict[str, Any]:
    """The ``hl7`` operation: send the stored message over MLLP; classify the ACK."""
    options = destination.options or {}
    if not destination.host or not destination.port:
        raise outbox.DeliveryError(f"destination {destination.name} has no host and port")
    try:
        ack = mllp_client.send(
            destination.host, destination.port, item.payload,
            connect_timeout=float(options.get("connect_timeout", rt.settings.hl7_connect_timeout_seconds)),
            ack_timeout=float(options.get("ack_timeout", rt.settings.hl7_ack_timeout_seconds)))
    except mllp_client.MllpError as exc:
        raise outbox.DeliveryError(str(exc)) from exc
    result = {"ack_code": ack.code, "ack_text": ack.text, "control_id": ack.control_id}
    if ack.accepted:
        return result
    reason = f"{destination.name} answered {ack.code or 'no code'}" + (f": {ack.text}" if ack.text else "")
    retry_codes = {str(c).upper() for c in options.get("retry_ack_codes", [])}
    permanent = ack.code in REFUSALS and ack.code not in retry_codes
    raise outbox.DeliveryError(reason, permanent=permanent, contacted=True, result=result)


def register() -> None:
    """Install the signing hook and the ``hl7`` operation (idempotent)."""
    reports.remove_signed_hook(queue_signed)
    reports.on_signed(queue_signed)
    outbox.register_operation("hl7", deliver_hl7)


register()
