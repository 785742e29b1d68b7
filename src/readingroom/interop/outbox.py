"""The durable outbox: outbound work written in the transaction that caused it, delivered at least once, in order.

Why a table and not a queue in memory: a report signed while the RIS is down
must still reach it after the RIS (or ReadingRoom) restarts. An item is
written by :func:`enqueue` inside the caller's transaction (the signature, the
study's completion), so it exists if and only if its cause committed.

Delivery (:func:`deliver_due`, a scheduler job) takes, per enabled
destination, its *head*: the pending item with the lowest id. It leases the
head with one conditional UPDATE (``leased_until`` empty or expired, still the
head, due), so several processes on PostgreSQL never deliver one item at the
same time and a crashed worker's item is taken over once its lease expires.
The handler registered for the item's operation runs outside any
transaction (it talks to the network); its outcome is recorded by another
conditional UPDATE that only applies while the lease is still ours.

* success: the item is ``delivered`` and the next head follows at once;
* a transient failure (peer down, timeout): the head stays pending with a
  growing, jittered back-off, and it holds back the later items of its
  destination (downtime mode: the work queues and flows in order when the
  peer returns). After ``outbox_alert_after_attempts`` attempts one
  ``failed_delivery`` exception item is raised; retries go on;
* a permanent failure (the peer refused the message, e.g. HL7 AR): the item is
  ``failed``, a ``failed_delivery`` exception item is raised and the queue
  moves on (an admin may retry it after fixing the cause).

At least once: an ACK lost after the peer stored the message means a re-send.
Every re-send carries the same ``control_id`` (HL7 MSH-10), so the receiver
drops the duplicate.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from readingroom.archive.index import insert_for
from readingroom.clock import utcnow
from readingroom.interop.models import Destination, OutboxItem
from readingroom.runtime import Runtime
from readingroom.workflow import exceptions
from readingroom.workflow.models import ExceptionItem

log = logging.getLogger(__name__)

STATES = ("pending", "delivered", "failed", "cancelled")
#: Share of a back-off taken off at random, so destinations that failed together do not retry in lockstep.
JITTER = 0.25


class DeliveryError(Exception):
    """A failed delivery. ``permanent``: re-sending the same item cannot succeed (the peer refused it).

    ``contacted`` says the peer answered (a refusal), so it is up even though
    the item failed; ``result`` is kept on the item (e.g. the ACK).
    """

    def __init__(self, message: str, *, permanent: bool = False, contacted: bool = False,
                 result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.contacted = contacted or permanent
        self.result = result or {}


class OutboxError(ValueError):
    """An admin action the item's state does not allow (HTTP 409)."""


class OutboxItemNotFound(OutboxError, LookupError):
    """No such outbox item (HTTP 404)."""


#: ``handler(rt, item, destination) -> result``; raises DeliveryError. Other parts register 'c-store',
#: 'stow-rs', 'prior-fetch'; interop/results.py registers 'hl7'.
Handler = Callable[[Runtime, OutboxItem, Destination], dict[str, Any]]
_handlers: dict[str, Handler] = {}


def register_operation(name: str, handler: Handler) -> Handler:
    """Make ``handler`` deliver the items of operation ``name`` (the last registration wins)."""
    _handlers[name] = handler
    return handler


def registered_operations() -> frozenset[str]:
    return frozenset(_handlers)


# -- writing work ---------------------------------------------------------------------------------------------


def enqueue(session: Session, destination_id: int, operation: str, dedupe_key: str, *, payload: str = "",
            control_id: str = "", case_id: int | None = None, study_uid: str = "") -> OutboxItem:
    """Queue one item in the caller's transaction; the same (destination, dedupe_key) twice queues it once.

    Returns the item (the one already queued when the key was seen before).
    ``INSERT ... ON CONFLICT DO NOTHING`` on the unique key, so two processes
    enqueueing the same cause at once also end with one row.
    """
    now = utcnow()
    session.execute(insert_for(session, OutboxItem).values(
        destination_id=destination_id, operation=operation, dedupe_key=dedupe_key, control_id=control_id,
        payload=payload, case_id=case_id, study_uid=study_uid, state="pending", attempts=0, next_attempt_at=now,
        leased_until=None, leased_by="", last_error="", result={}, created_at=now,
    ).on_conflict_do_nothing(index_elements=["destination_id", "dedupe_key"]))
    item = session.scalars(select(OutboxItem).where(OutboxItem.destination_id == destination_id,
                                                    OutboxItem.dedupe_key == dedupe_key)).one()
    return item


# -- delivering ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Policy:
    base: float
    cap: float
    alert_after: int
    lease: float


def _policy(rt: Runtime) -> _Policy:
    s = rt.settings
    return _Policy(s.outbox_backoff_base_seconds, s.outbox_backoff_max_seconds, s.outbox_alert_after_attempts,
                   s.outbox_lease_seconds)


def backoff_seconds(attempts: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Wait before the next attempt after ``attempts`` failures: base * 2^(n-1), capped, minus up to 25 %.

    With at most 25 % taken off, each wait is still longer than the one
    before it until the cap (0.75 x 2 > 1), so the back-off always grows.
    """
    full = min(cap, base * 2 ** max(0, attempts - 1))
    return full * (1 - JITTER * (rng or random).random())


def worker_name() -> str:
    """Who holds a lease: host, process and a random part (one per delivery run)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _due_destinations(rt: Runtime, now: datetime) -> list[int]:
    with rt.db.read_session() as s:
        return list(s.scalars(
            select(OutboxItem.destination_id).join(Destination, Destination.id == OutboxItem.destination_id)
            .where(Destination.enabled.is_(True), OutboxItem.state == "pending", OutboxItem.next_attempt_at <= now)
            .group_by(OutboxItem.destination_id).order_by(OutboxItem.destination_id)))


def _lease_head(rt: Runtime, destination_id: int, worker: str, lease: float) -> int | None:
    """Lease the destination's head item if it is due and free; its id, or None.

    The head is found first, then taken with an UPDATE that re-checks
    everything (still pending, still the head, due, lease free): the
    database decides, so two workers never both win.
    """
    now = utcnow()
    with rt.db.session() as s:
        head = s.scalar(select(func.min(OutboxItem.id)).where(OutboxItem.destination_id == destination_id,
                                                              OutboxItem.state == "pending"))
        if head is None:
            return None
        earlier = aliased(OutboxItem)
        still_head = ~select(earlier.id).where(earlier.destination_id == destination_id, earlier.state == "pending",
                                              earlier.id < head).exists()
        taken = s.execute(
            update(OutboxItem).where(
                OutboxItem.id == head, OutboxItem.state == "pending", OutboxItem.next_attempt_at <= now,
                or_(OutboxItem.leased_until.is_(None), OutboxItem.leased_until < now), still_head)
            .values(leased_until=now + timedelta(seconds=lease), leased_by=worker)
            .execution_options(synchronize_session=False))
        return head if taken.rowcount == 1 else None


def deliver_due(rt: Runtime, *, limit: int | None = None, worker: str | None = None,
                rng: random.Random | None = None) -> int:
    """Deliver due items, each destination in order; returns how many were delivered.

    A destination whose head fails transiently is left for a later run (its
    later items wait); one whose head fails permanently moves on to the next
    item. ``limit`` bounds the items attempted in one run.
    """
    limit = rt.settings.outbox_batch if limit is None else limit
    worker = worker or worker_name()
    policy = _policy(rt)
    delivered = attempted = 0
    for destination_id in _due_destinations(rt, utcnow()):
        while attempted < limit:
            item_id = _lease_head(rt, destination_id, worker, policy.lease)
            if item_id is None:
                break
            attempted += 1
            outcome = _attempt(rt, item_id, worker, policy, rng)
            if outcome == "delivered":
                delivered += 1
            elif outcome != "failed":  # transient (or lost lease): the head holds the rest back
                break
    return delivered


def _attempt(rt: Runtime, item_id: int, worker: str, policy: _Policy, rng: random.Random | None) -> str:
    with rt.db.read_session() as s:
        item = s.get(OutboxItem, item_id)
        destination = s.get(Destination, item.destination_id) if item is not None else None
    if item is None or destination is None:
        return "gone"
    handler = _handlers.get(item.operation)
    try:
        if handler is None:
            raise DeliveryError(f"no handler for operation {item.operation!r} in this process")
        result = handler(rt, item, destination) or {}
    except DeliveryError as exc:
        return _record_failure(rt, item, destination, worker, exc, policy, rng)
    except Exception as exc:  # a bug or an unexpected library error: retried like a transient failure
        log.exception("outbox item %s (%s) failed unexpectedly", item.id, item.operation)
        return _record_failure(rt, item, destination, worker, DeliveryError(f"{type(exc).__name__}: {exc}"),
                               policy, rng)
    return _record_success(rt, item, destination, worker, result)


def _mine(item_id: int, worker: str) -> Any:
    return and_(OutboxItem.id == item_id, OutboxItem.state == "pending", OutboxItem.leased_by == worker)


def _record_success(rt: Runtime, item: OutboxItem, destination: Destination, worker: str,
                    result: dict[str, Any]) -> str:
    now = utcnow()
    with rt.db.session() as s:
        done = s.execute(update(OutboxItem).where(_mine(item.id, worker)).values(
            state="delivered", delivered_at=now, result={**(item.result or {}), **result}, last_error="",
            attempts=OutboxItem.attempts + 1, leased_until=None).execution_options(synchronize_session=False))
        s.execute(update(Destination).where(Destination.id == destination.id).values(
            last_contact_at=now, last_success_at=now, down_since=None))
        alert = (item.result or {}).get("exception_item_id")
        if done.rowcount == 1 and alert:  # the warning raised while it kept failing is answered now
            row = s.get(ExceptionItem, alert)
            if row is not None and row.state == "open":
                exceptions.resolve(s, row.id, actor="system",
                                   resolution=f"delivered to {destination.name} after {item.attempts + 1} attempts")
    return "delivered" if done.rowcount == 1 else "lost-lease"


def _record_failure(rt: Runtime, item: OutboxItem, destination: Destination, worker: str, exc: DeliveryError,
                    policy: _Policy, rng: random.Random | None) -> str:
    now = utcnow()
    attempts = item.attempts + 1
    error = str(exc)[:4000] or type(exc).__name__
    result = {**(item.result or {}), **exc.result}
    with rt.db.session() as s:
        values: dict[str, Any] = dict(attempts=OutboxItem.attempts + 1, last_error=error, leased_until=None)
        if exc.permanent:
            values["state"] = "failed"
        else:
            wait = backoff_seconds(attempts, base=policy.base, cap=policy.cap, rng=rng)
            values["next_attempt_at"] = now + timedelta(seconds=wait)
        alert = None
        if exc.permanent or attempts == policy.alert_after:
            why = ("refused" if exc.permanent else f"not delivered after {attempts} attempts (still retrying)")
            alert = exceptions.raise_item(
                s, kind="failed_delivery", case_id=item.case_id, study_uid=item.study_uid,
                reason=f"{item.operation} to {destination.name} {why}: {error}"[:2000])
            if alert is not None:
                result["exception_item_id"] = alert.id
        values["result"] = result
        done = s.execute(update(OutboxItem).where(_mine(item.id, worker)).values(**values)
                         .execution_options(synchronize_session=False))
        if done.rowcount != 1:
            s.rollback()  # our lease was taken over: the other worker records its own outcome
            return "lost-lease"
        health: dict[str, Any] = dict(last_error=error[:2000], last_error_at=now)
        if exc.contacted:
            health.update(last_contact_at=now, down_since=None)
        else:
            health["down_since"] = func.coalesce(Destination.down_since, now)
        s.execute(update(Destination).where(Destination.id == destination.id).values(**health))
    return "failed" if exc.permanent else "retry"


# -- admin actions -------------------------------------------------------------------------------------------


def retry(session: Session, item_id: int) -> OutboxItem:
    """A failed or waiting item is due now (the lease of a delivery in progress is left alone)."""
    changed = session.execute(update(OutboxItem).where(
        OutboxItem.id == item_id, OutboxItem.state.in_(("pending", "failed")))
        .values(state="pending", next_attempt_at=utcnow()).execution_options(synchronize_session=False))
    return _after_action(session, item_id, changed.rowcount, "retried")


def cancel(session: Session, item_id: int) -> OutboxItem:
    """Never deliver this item (a pending or failed one); the queue behind it moves on."""
    changed = session.execute(update(OutboxItem).where(
        OutboxItem.id == item_id, OutboxItem.state.in_(("pending", "failed")))
        .values(state="cancelled", leased_until=None).execution_options(synchronize_session=False))
    return _after_action(session, item_id, changed.rowcount, "cancelled")


def _after_action(session: Session, item_id: int, rowcount: int, verb: str) -> OutboxItem:
    item = session.execute(select(OutboxItem).where(OutboxItem.id == item_id)
                           .execution_options(populate_existing=True)).scalar()
    if item is None:
        raise OutboxItemNotFound(f"no outbox item {item_id}")
    if rowcount != 1:
        raise OutboxError(f"outbox item {item_id} is {item.state}: only pending or failed items can be {verb}")
    return item


# -- reading ------------------------------------------------------------------------------------------------


def list_items(session: Session, *, destination_ids: list[int] | None = None, state: str = "",
               case_id: int | None = None, limit: int = 100, offset: int = 0) -> tuple[list[OutboxItem], int]:
    """A page of items, newest first, and the total matching count (``destination_ids``: the caller's scope)."""
    q = select(OutboxItem)
    if destination_ids is not None:
        q = q.where(OutboxItem.destination_id.in_(destination_ids))
    if state:
        q = q.where(OutboxItem.state == state)
    if case_id is not None:
        q = q.where(OutboxItem.case_id == case_id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = list(session.scalars(q.order_by(OutboxItem.id.desc()).limit(limit).offset(offset)))
    return rows, total


def backlog(session: Session, destination_id: int) -> tuple[int, datetime | None]:
    """Pending items of a destination and when the oldest of them was queued."""
    count, oldest = session.execute(select(func.count(OutboxItem.id), func.min(OutboxItem.created_at)).where(
        OutboxItem.destination_id == destination_id, OutboxItem.state == "pending")).one()
    if isinstance(oldest, str):  # min() over SQLite hands back the stored text
        oldest = datetime.fromisoformat(oldest).replace(tzinfo=utcnow().tzinfo)
    elif oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=utcnow().tzinfo)
    return int(count or 0), oldest
