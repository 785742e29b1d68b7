"""Delivering critical-result notifications after their step committed, and recording each outcome.

The escalation step writes one ``pending`` row per recipient and channel in
the same transaction as its case event; sending happens only after that
commit (a rolled-back step must not have told anyone), and what came of
each attempt is written back: ``streamed`` / ``not_connected`` (live
stream), ``sent`` / ``failed`` (webhook), ``logged``. A failing channel
never keeps the others from being tried and recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import update

from readingroom.clock import utcnow
from readingroom.collab import live
from readingroom.collab.critical_models import CriticalNotification
from readingroom.config import Settings
from readingroom.governance import policy
from readingroom.runtime import Runtime
from readingroom.workflow.notify import LogNotifier, Notification, Notifier, WebhookNotifier

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """A notification row to deliver once the transaction that wrote it has committed."""

    notification_id: int
    channel: str
    recipient: str
    recipient_id: int | None
    note: Notification


@dataclass
class Outcome:
    """What a change produced: the result's id and the notifications to deliver after commit."""

    result_id: int
    case_id: int
    deliveries: list[Delivery] = field(default_factory=list)
    grants: bool = False



def deliver(rt: Runtime, out: Outcome, notifiers: dict[str, Notifier] | None = None) -> None:
    """Send the pending notifications of ``out`` and record what came of each (never raises)."""
    if out.grants:
        policy.forget_decisions()
    if not out.deliveries:
        return
    notifiers = notifiers or _notifiers(rt.settings)
    outcomes: list[tuple[int, str, str]] = []
    for d in out.deliveries:
        try:
            outcomes.append((d.notification_id, *_send(rt, d, notifiers)))
        except Exception as exc:  # one failed channel must not keep the others from being recorded
            log.exception("critical notification %s failed", d.notification_id)
            outcomes.append((d.notification_id, "failed", str(exc)[:500]))
    try:
        with rt.db.session() as s:
            for row_id, outcome, detail in outcomes:
                s.execute(update(CriticalNotification).where(CriticalNotification.id == row_id)
                          .values(outcome=outcome, detail=detail, at=utcnow()))
    except Exception:
        log.exception("recording critical notification outcomes failed")


def _notifiers(settings: Settings) -> dict[str, Notifier]:
    found: dict[str, Notifier] = {"log": LogNotifier(keep=1)}
    if settings.notify_webhook_url:
        found["webhook"] = WebhookNotifier(settings.notify_webhook_url)
    return found


def _send(rt: Runtime, d: Delivery, notifiers: dict[str, Notifier]) -> tuple[str, str]:
    if d.channel == "live":
        assert d.recipient_id is not None
        connected = live.hub(rt).connected(d.recipient_id)
        live.publish(rt, d.note.kind, dict(d.note.data), user_ids=[d.recipient_id])
        return ("streamed", "") if connected else ("not_connected", "kept in the user's open critical results")
    notifier = notifiers.get(d.channel)
    if notifier is None:
        return "failed", f"channel {d.channel} is not configured"
    ok = notifier.send(d.note)
    if d.channel == "webhook":
        return ("sent", "") if ok else ("failed", "webhook unreachable or answered an error (see the log)")
    return "logged", ""


