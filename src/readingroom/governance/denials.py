"""Audit every refused HTTP request (401/403): who tried what, from where.

Security reviewers look for denied access first: a burst of 403s from one
account or address is how probing shows up. Routes that grant access audit
their own successes (in the transaction that does the work); this catches
the refusals of every route, present and future, without each route having
to remember. It is plain ASGI (not BaseHTTPMiddleware) so streamed WADO
answers pass through untouched, and the record is queued (``record_soon``)
so a refusal costs no database round trip.

Sign-in and share-link routes are skipped: they audit their own refusals
with more detail (lockouts, wrong passcodes).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from readingroom.governance import audit

#: Path prefixes whose refusals are audited by the route itself.
SELF_AUDITED = ("/share/", "/api/v1/auth/login", "/login", "/auth/oidc/")


class DeniedAccessAudit:
    """ASGI middleware: one ``access.denied`` audit record per 401/403 answer."""

    def __init__(self, app: ASGIApp, db: Any) -> None:
        self.app = app
        self.db = db

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watch)
        path: str = scope.get("path", "")
        if status in (401, 403) and not path.startswith(SELF_AUDITED):
            state = scope.get("state") or {}
            principal = state.get("principal")
            client = scope.get("client")
            audit.record_soon(
                self.db, actor=principal.username if principal is not None else "anonymous",
                source=client[0] if client else "", action="access.denied", outcome="failure",
                resource_type="http", resource_id=path,
                detail={"method": scope.get("method", ""), "status": status},
            )
