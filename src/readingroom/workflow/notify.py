"""Notifications for escalations and (later) critical results.

A small interface with two implementations now: the log (always) and a
webhook (JSON POST, best effort, short timeout). Delivery guarantees come
with the durable outbox of the interoperability issue; until then a failed
webhook is logged, never allowed to break the scheduler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("readingroom.notify")


@dataclass(frozen=True)
class Notification:
    kind: str
    recipients: tuple[str, ...]
    subject: str
    data: dict[str, Any] = field(default_factory=dict)


class Notifier(Protocol):
    def send(self, note: Notification) -> bool | None:
        """Deliver ``note``; True/False says whether it got through (None: not known)."""


class LogNotifier:
    """Writes every notification to the log (and keeps the last ones for tests and the UI)."""

    def __init__(self, keep: int = 200) -> None:
        self.sent: list[Notification] = []
        self._keep = keep

    def send(self, note: Notification) -> bool:
        log.warning("notify %s -> %s: %s", note.kind, ",".join(note.recipients) or "-", note.subject)
        self.sent.append(note)
        del self.sent[: -self._keep]
        return True


class WebhookNotifier:
    """POSTs each notification as JSON to a URL."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url, self.timeout = url, timeout

    def send(self, note: Notification) -> bool:
        """POST the note; False (and a log line) if the receiver is unreachable or answers an error."""
        import httpx

        try:
            response = httpx.post(self.url, json={"kind": note.kind, "recipients": list(note.recipients),
                                                  "subject": note.subject, "data": note.data}, timeout=self.timeout)
        except httpx.HTTPError as exc:
            log.error("webhook %s failed: %s", self.url, exc)
            return False
        if response.is_error:
            log.error("webhook %s answered %s", self.url, response.status_code)
            return False
        return True


class FanOut:
    def __init__(self, *notifiers: Notifier) -> None:
        self.notifiers = notifiers

    def send(self, note: Notification) -> None:
        for n in self.notifiers:
            n.send(note)


def build_notifier(webhook_url: str | None) -> FanOut:
    notifiers: list[Notifier] = [LogNotifier()]
    if webhook_url:
        notifiers.append(WebhookNotifier(webhook_url))
    return FanOut(*notifiers)
