"""Live updates: one server-sent-events stream per signed-in user.

Anything that changes a case (a new case on a worklist, a claim, a comment,
an annotation, a consult request, a critical-result acknowledgement) calls
``publish`` after its transaction committed. The hub fans the event out to
the streams connected to this process whose user may see it: explicit
recipients (``user_ids``, e.g. @mentions) and, with ``case_id``, everyone the
policy lets see that case (``policy.can_see_case``), checked per subscriber
at publish time so a stream never carries what its user could not open.

Events carry identifiers and a short summary, never report text or images:
the client fetches details through the normal, audited routes. A ring of
recent events lets a client that reconnects with ``Last-Event-ID`` catch up.
This hub is per process; the scale-out issue relays ``publish`` through
PostgreSQL LISTEN/NOTIFY so users connected to any process get every event.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from readingroom.clock import utcnow
from readingroom.governance import policy
from readingroom.governance.api import PrincipalDep, RuntimeDep
from readingroom.governance.auth import Principal
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)

#: Events kept for clients that reconnect with Last-Event-ID.
REPLAY = 1000
#: Events queued for one slow stream before it is dropped (the client reconnects and replays).
QUEUE_LIMIT = 500
PING_SECONDS = 15


@dataclass(frozen=True)
class LiveEvent:
    """One event as streamed: ``kind`` (e.g. ``comment.added``) and a small JSON payload."""

    id: int
    kind: str
    data: dict[str, Any]
    case_id: int | None = None
    user_ids: frozenset[int] = frozenset()


@dataclass(eq=False)
class Subscriber:
    """One connected stream."""

    principal: Principal
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[LiveEvent | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))


class LiveHub:
    """The streams connected to this process, and the recent events."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = weakref.ref(rt)
        self._lock = threading.Lock()
        self._subscribers: set[Subscriber] = set()
        self._recent: deque[LiveEvent] = deque(maxlen=REPLAY)
        self._ids = itertools.count(1)

    def subscribe(self, principal: Principal) -> Subscriber:
        sub = Subscriber(principal, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def connected(self, user_id: int) -> bool:
        """Whether ``user_id`` has a stream open on this process (for notification records)."""
        with self._lock:
            return any(s.principal.user_id == user_id for s in self._subscribers)

    def since(self, last_id: int) -> list[LiveEvent]:
        with self._lock:
            return [e for e in self._recent if e.id > last_id]

    def publish(self, kind: str, data: dict[str, Any], *, case_id: int | None = None,
                user_ids: Iterable[int] = ()) -> LiveEvent:
        """Queue an event for every connected stream allowed to see it (callable from any thread)."""
        with self._lock:
            event = LiveEvent(next(self._ids), kind, {**data, "at": utcnow().isoformat()}, case_id,
                              frozenset(user_ids))
            self._recent.append(event)
            subscribers = list(self._subscribers)
        for sub in self.audience(event, subscribers):
            sub.loop.call_soon_threadsafe(_offer, sub, event)
        return event

    def audience(self, event: LiveEvent, subscribers: list[Subscriber]) -> list[Subscriber]:
        """The subscribers who may receive ``event``."""
        chosen = [s for s in subscribers if s.principal.user_id in event.user_ids]
        rest = [s for s in subscribers if s.principal.user_id not in event.user_ids]
        if event.case_id is None or not rest:
            return chosen
        rt = self._rt()
        if rt is None:
            return chosen
        from readingroom.workflow.models import Case

        with rt.db.read_session() as session:
            case = session.get(Case, event.case_id)
            if case is not None:
                chosen += [s for s in rest if policy.can_see_case(session, s.principal, case)]
        return chosen

    def may_see(self, principal: Principal, event: LiveEvent) -> bool:
        return bool(self.audience(event, [Subscriber(principal, asyncio.get_running_loop())]))


def _offer(sub: Subscriber, event: LiveEvent) -> None:
    try:
        sub.queue.put_nowait(event)
    except asyncio.QueueFull:  # a stalled client: end its stream; it reconnects and replays what it missed
        log.warning("live stream of %s is not keeping up; closing it", sub.principal.username)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)


_HUBS: weakref.WeakKeyDictionary[Runtime, LiveHub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def hub(rt: Runtime) -> LiveHub:
    """The live hub of this process's runtime."""
    with _HUBS_LOCK:
        found = _HUBS.get(rt)
        if found is None:
            found = _HUBS[rt] = LiveHub(rt)
        return found


def publish(rt: Runtime, kind: str, data: dict[str, Any], *, case_id: int | None = None,
            user_ids: Iterable[int] = ()) -> None:
    """Tell connected users about a change (call after the change committed; never raises)."""
    try:
        hub(rt).publish(kind, data, case_id=case_id, user_ids=user_ids)
    except Exception:  # live updates are a convenience: a failure must not fail the change itself
        log.exception("publishing live event %s failed", kind)


router = APIRouter(tags=["live"])


def _sse(event: LiveEvent) -> ServerSentEvent:
    payload = {"kind": event.kind, "case_id": event.case_id, **event.data}
    return ServerSentEvent(data=orjson.dumps(payload).decode(), event=event.kind, id=str(event.id))


@router.get("/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
async def events(request: Request, rt: RuntimeDep, p: PrincipalDep) -> EventSourceResponse:
    """The caller's live stream (``text/event-stream``): case, comment, annotation, consult and
    critical-result events they may see. Reconnect with ``Last-Event-ID`` to catch up."""
    live = hub(rt)
    sub = live.subscribe(p)
    try:
        last = int(request.headers.get("last-event-id", "0") or 0)
    except ValueError:
        last = 0

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(event="ready", data=orjson.dumps({"user": p.username}).decode())
            if last:
                for event in live.since(last):
                    if live.may_see(p, event):
                        yield _sse(event)
            while True:
                event = await sub.queue.get()
                if event is None:
                    return
                yield _sse(event)
        finally:
            live.unsubscribe(sub)

    return EventSourceResponse(stream(), ping=PING_SECONDS)
