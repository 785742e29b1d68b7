"""HTTP edge of governance: authentication dependencies and account routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from readingroom.governance import policy
from readingroom.governance.auth import AuthError, Principal, authenticate_header, cached_principal
from readingroom.governance.users import UserError, create_token, create_user, get_user
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


async def current_principal(request: Request, rt: RuntimeDep) -> Principal:
    """Authenticate the request or answer 401 with the reason (database and Argon2 off the event loop)."""
    header = request.headers.get("authorization")
    try:
        principal = cached_principal(header) or await run_in_threadpool(authenticate_header, rt, header)
    except AuthError as exc:
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail=str(exc),
            headers={"WWW-Authenticate": 'Bearer realm="readingroom", Basic realm="readingroom"'},
        ) from exc
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]


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
    actions: list[str]


@router.get("/me", response_model=MeOut)
def me(principal: PrincipalDep) -> MeOut:
    """Who the caller is and what the policy lets them do."""
    return MeOut(
        username=principal.username,
        role=principal.role,
        site_id=principal.site_id,
        actions=sorted(policy.actions_for_role(principal.role)),
    )


class UserIn(BaseModel):
    username: str
    password: str | None = None
    role: str = "radiologist"
    full_name: str = ""
    email: str = ""
    site_id: int | None = None


class UserOut(BaseModel):
    id: int
    username: str
    role: str
    full_name: str
    site_id: int | None


@router.post("/users", response_model=UserOut, status_code=201)
def add_user(
    body: UserIn, rt: RuntimeDep, _p: Annotated[Principal, Depends(require(policy.USERS_ADMIN))]
) -> UserOut:
    """Create a local account (admins only)."""
    with rt.db.session() as s:
        try:
            u = create_user(s, body.username, password=body.password, role=body.role,
                            full_name=body.full_name, email=body.email, site_id=body.site_id)
        except UserError as exc:
            raise HTTPException(status_code=409 if "exists" in str(exc) else 422, detail=str(exc)) from exc
        return UserOut(id=u.id, username=u.username, role=u.role, full_name=u.full_name, site_id=u.site_id)


class TokenIn(BaseModel):
    name: str = ""
    expires_in_days: float | None = 30


class TokenOut(BaseModel):
    token: str
    expires_at: str | None


@router.post("/tokens", response_model=TokenOut, status_code=201)
def add_token(body: TokenIn, rt: RuntimeDep, principal: PrincipalDep) -> TokenOut:
    """Issue a bearer token for the caller (shown once)."""
    with rt.db.session() as s:
        user = get_user(s, principal.username)
        assert user is not None
        expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
        token, secret = create_token(s, user, name=body.name, expires_in=expires)
        return TokenOut(token=secret, expires_at=token.expires_at.isoformat() if token.expires_at else None)
