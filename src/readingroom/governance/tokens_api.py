"""HTTP edge of API tokens: create (scoped, expiring), list, revoke. Rules in ``tokens.py``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.governance import policy, tokens
from readingroom.governance.api import PrincipalDep, RuntimeDep
from readingroom.governance.auth import Principal
from readingroom.governance.cookies import client_address
from readingroom.governance.models import ApiToken, User
from readingroom.governance.users_api import managed_user

router = APIRouter(prefix="/tokens", tags=["tokens"])


class TokenIn(BaseModel):
    name: str = Field(default="", max_length=64, description="What the token is for")
    expires_in_days: float | None = Field(default=30, description="Lifetime in days; null: never expires")
    scopes: list[str] = Field(default_factory=list, description="Actions the token may do; empty: all the "
                              "caller may do (a scoped caller: its own scopes)")


class TokenOut(BaseModel):
    id: int
    token: str = Field(description="The secret, shown only now")
    name: str
    scopes: list[str]
    expires_at: str | None


class TokenInfo(BaseModel):
    id: int
    username: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def _owner(s: Session, principal: Principal, username: str | None) -> User:
    """The account whose tokens are asked for: the caller's own, or (account administrators) one they
    administer, with the same scoping as ``users_api`` (404 unknown, 403 not theirs)."""
    if not username or username == principal.username:
        return _me(s, principal)
    if not policy.allowed(principal, policy.USERS_ADMIN):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="only account administrators see others' tokens")
    return managed_user(s, principal, username)


def _info(token: ApiToken, username: str) -> TokenInfo:
    return TokenInfo(id=token.id, username=username, name=token.name, prefix=token.prefix,
                     scopes=list(token.scopes or []), created_at=token.created_at, expires_at=token.expires_at,
                     revoked_at=token.revoked_at)


def _me(s: Session, principal: Principal) -> User:
    user = s.get(User, principal.user_id)
    if user is None or not user.active:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="account no longer active")
    return user


@router.post("", response_model=TokenOut, status_code=201)
def add_token(body: TokenIn, request: Request, response: Response, rt: RuntimeDep,
              principal: PrincipalDep) -> TokenOut:
    """Issue a bearer token for the caller (the secret is shown once), optionally scoped and expiring."""
    with rt.db.session() as s:
        user = _me(s, principal)
        try:
            token, secret = tokens.issue_token(
                s, user, name=body.name, expires_in_days=body.expires_in_days, scopes=body.scopes,
                caller_scopes=principal.scopes, actor=principal.username, source=client_address(request))
        except tokens.TokenError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
        out = TokenOut(id=token.id, token=secret, name=token.name, scopes=list(token.scopes or []),
                       expires_at=token.expires_at.isoformat() if token.expires_at else None)
    response.headers["Cache-Control"] = "no-store"
    return out


@router.get("", response_model=list[TokenInfo], responses={404: error_response("No such user")})
def list_tokens(rt: RuntimeDep, principal: PrincipalDep,
                username: Annotated[str | None, Query(description="Another user's tokens (administrators)")] = None,
                include_ended: Annotated[bool, Query(description="Also revoked and expired tokens")] = False,
                ) -> list[TokenInfo]:
    """The caller's tokens (never the secrets); administrators may ask for a user's."""
    with rt.db.read_session() as s:
        target = _owner(s, principal, username)
        return [_info(t, target.username) for t in tokens.list_tokens(s, target.id, include_ended=include_ended)]


@router.delete("/{token_id}", status_code=204, response_class=Response,
                responses={409: error_response("The token is already revoked")})
def revoke_token(token_id: int, request: Request, rt: RuntimeDep, principal: PrincipalDep) -> Response:
    """Revoke a token now (own tokens; administrators: also their users'). It stops working at once here,
    within seconds in other server processes."""
    with rt.db.session() as s:
        token = s.get(ApiToken, token_id)
        owner = s.get(User, token.user_id) if token is not None else None
        if token is None or owner is None or (owner.id != principal.user_id
                                              and not policy.allowed(principal, policy.USERS_ADMIN)):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no token {token_id} of yours")
        _owner(s, principal, owner.username)
        if not tokens.revoke(s, token, actor=principal.username, source=client_address(request)):
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"token {token_id} is already revoked")
    return Response(status_code=204)
