"""HTTP edge of governance: authentication dependencies and account routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from readingroom.governance import cookies, policy
from readingroom.governance.auth import AuthError, Principal, ThrottledError, authenticate_header, cached_principal
from readingroom.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The process runtime the app was built with.

    This and the other cheap dependencies are ``async`` so they run on the
    event loop: FastAPI runs each plain ``def`` dependency in the thread
    pool, and three thread hops cost a cached QIDO or frame request about a
    millisecond.
    """
    return request.app.state.rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def _authenticate(request: Request, rt: Runtime, *, allow_pending: bool) -> Principal:
    """The Authorization header first (Bearer, Basic), else the session cookie (CSRF-checked)."""
    header = request.headers.get("authorization")
    if not header and cookies.SESSION_COOKIE in request.cookies:
        principal = (await cookies.session_for_request(request, rt, allow_pending=allow_pending)).principal
    else:
        try:
            principal = cached_principal(header) or await run_in_threadpool(
                authenticate_header, rt, header, cookies.client_address(request))
        except ThrottledError as exc:
            raise HTTPException(status_code=status.HTTP_429_TOO_MANY_REQUESTS, detail=str(exc),
                                headers={"Retry-After": str(exc.retry_after)}) from exc
        except AuthError as exc:
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail=str(exc),
                headers={"WWW-Authenticate": 'Bearer realm="readingroom", Basic realm="readingroom"'},
            ) from exc
    request.state.principal = principal
    return principal


async def current_principal(request: Request, rt: RuntimeDep) -> Principal:
    """Authenticate the request or answer 401 with the reason (database and Argon2 off the event loop).

    A browser session that still owes its second factor is refused (403).
    """
    return await _authenticate(request, rt, allow_pending=False)


async def pending_principal(request: Request, rt: RuntimeDep) -> Principal:
    """Like ``current_principal``, but also a session that still owes its second factor (TOTP, sign-out)."""
    return await _authenticate(request, rt, allow_pending=True)


PrincipalDep = Annotated[Principal, Depends(current_principal)]
PendingPrincipalDep = Annotated[Principal, Depends(pending_principal)]


def require(action: str) -> Callable[[Principal], Awaitable[Principal]]:
    """Dependency factory: the caller must be allowed ``action`` (else 403)."""

    async def check(principal: PrincipalDep) -> Principal:
        if not policy.allowed(principal, action):
            raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=f"not allowed: {action}")
        return principal

    return check


router = APIRouter(tags=["accounts"])


class MeOut(BaseModel):
    username: str
    role: str
    site_id: int | None
    site_ids: list[int] = []
    site_roles: dict[int, str] = {}
    physician_name: str = ""
    actions: list[str]
    scopes: list[str] | None = None


@router.get("/me", response_model=MeOut)
def me(principal: PrincipalDep) -> MeOut:
    """Who the caller is and what the policy lets them do (anywhere; per-site roles listed apart)."""
    roles = {principal.role, *(role for _, role in principal.site_roles)}
    actions = sorted(a for r in roles for a in policy.actions_for_role(r)
                     if principal.scopes is None or a in principal.scopes)
    return MeOut(
        username=principal.username,
        role=principal.role,
        site_id=principal.site_id,
        site_ids=sorted(principal.site_ids),
        site_roles=dict(principal.site_roles),
        physician_name=principal.physician_name,
        actions=sorted(set(actions)),
        scopes=sorted(principal.scopes) if principal.scopes is not None else None,
    )


# User administration lives in governance/users_api.py.
# Token routes (create, list, revoke) live in governance/tokens_api.py.
