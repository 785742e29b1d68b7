"""HTTP edge of the credential side of account administration: lift a lockout, reset a lost second factor.

The rest of account administration (create, change, deactivate, memberships)
is in ``users_api.py``, whose scoping this reuses: admins manage everyone,
site admins the non-privileged accounts of their sites.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.governance import accounts, login, policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.governance.cookies import client_address
from readingroom.governance.models import User
from readingroom.governance.users_api import managed_user

router = APIRouter(prefix="/users", tags=["accounts"])
_NOT_ON_ONESELF = {409: error_response("Administrators cannot do this to their own account")}
AdminDep = Annotated[Principal, Depends(require(policy.USERS_ADMIN))]


def _target(s: Session, principal: Principal, username: str) -> User:
    user = managed_user(s, principal, username)
    if user.id == principal.user_id:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="administrators cannot do this to their own account")
    return user


@router.post("/{username}/unlock", status_code=204, response_class=Response, responses=_NOT_ON_ONESELF)
def unlock(username: str, request: Request, rt: RuntimeDep, principal: AdminDep) -> Response:
    """Lift a lockout after failed sign-ins before it expires."""
    with rt.db.session() as s:
        login.unlock(s, _target(s, principal, username), actor=principal.username, source=client_address(request))
    return Response(status_code=204)


@router.post("/{username}/reset-second-factor", status_code=204, response_class=Response,
             responses=_NOT_ON_ONESELF)
def reset_second_factor(username: str, request: Request, rt: RuntimeDep, principal: AdminDep) -> Response:
    """Remove a user's lost second factor and end their sessions; they enrol again at their next sign-in."""
    with rt.db.session() as s:
        accounts.reset_second_factor(s, _target(s, principal, username), actor=principal.username,
                                     source=client_address(request))
    return Response(status_code=204)
