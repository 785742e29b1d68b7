"""User administration over HTTP: accounts, roles and site memberships, scoped by site.

An admin manages everyone. A site admin manages the accounts of the sites
they administer (home site or membership) and may hand out only the roles
that carry no network-wide power: making admins and auditors, or other site
admins, stays with admins, so a site admin cannot widen their own reach.
Every change is audited in the transaction that makes it; deactivating an
account ends its sessions at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.clock import utcnow
from readingroom.governance import audit, policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal, forget_cached_credentials
from readingroom.governance.models import Site, SiteMembership, User
from readingroom.governance.sessions import revoke_user_sessions
from readingroom.governance.users import ROLES, UserError, create_user, get_user, hash_password

router = APIRouter(tags=["accounts"])
UsersAdmin = Annotated[Principal, Depends(require(policy.USERS_ADMIN))]

#: Roles only a network admin may grant.
PRIVILEGED_ROLES = frozenset({"admin", "auditor", "site_admin"})


class MembershipOut(BaseModel):
    site: str
    site_id: int
    role: str = Field("", description="role at this site when it differs from the user's role")


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")
    password: str | None = Field(None, min_length=8, max_length=256)
    role: str = "radiologist"
    full_name: str = Field("", max_length=128)
    email: str = Field("", max_length=255)
    site_id: int | None = None
    physician_name: str = Field("", max_length=128, description="DICOM PN, e.g. Hartmann^Anna")


class UserPatch(BaseModel):
    password: str | None = Field(None, min_length=8, max_length=256)
    role: str | None = None
    full_name: str | None = Field(None, max_length=128)
    email: str | None = Field(None, max_length=255)
    site_id: int | None = None
    physician_name: str | None = Field(None, max_length=128)
    active: bool | None = None


class UserOut(BaseModel):
    id: int
    username: str
    role: str
    full_name: str
    email: str = ""
    site_id: int | None
    physician_name: str = ""
    active: bool = True
    totp_enabled: bool = False
    locked_until: datetime | None = None
    memberships: list[MembershipOut] = []


class MembershipIn(BaseModel):
    role: str = Field("", description="role at this site ('' = the user's own role)")


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def _out(s: Session, user: User) -> UserOut:
    rows = s.execute(select(SiteMembership, Site.code).join(Site, Site.id == SiteMembership.site_id)
                     .where(SiteMembership.user_id == user.id).order_by(Site.code)).all()
    return UserOut(id=user.id, username=user.username, role=user.role, full_name=user.full_name,
                   email=user.email, site_id=user.site_id, physician_name=user.physician_name,
                   active=user.active, totp_enabled=user.totp_enabled, locked_until=user.locked_until,
                   memberships=[MembershipOut(site=code, site_id=m.site_id, role=m.role) for m, code in rows])


def _user_sites(s: Session, user: User) -> set[int]:
    sites = set(s.scalars(select(SiteMembership.site_id).where(SiteMembership.user_id == user.id)))
    if user.site_id is not None:
        sites.add(user.site_id)
    return sites


def _check_role(p: Principal, role: str) -> None:
    if role and role not in ROLES:
        raise HTTPException(422, f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if role in PRIVILEGED_ROLES and policy.sites_where(p, policy.USERS_ADMIN) is not None:
        raise HTTPException(403, f"only an admin may grant the role {role!r}")


def _check_site(p: Principal, site_id: int | None) -> None:
    if not policy.at_site(p, policy.USERS_ADMIN, site_id):
        raise HTTPException(403, "you do not administer that site" if site_id is not None
                            else "only an admin may manage accounts without a site")


def managed_user(s: Session, p: Principal, username: str) -> User:
    """The account, if ``p`` administers it (404 for unknown, 403 for someone else's)."""
    user = get_user(s, username)
    if user is None:
        raise HTTPException(404, f"no user {username!r}")
    sites = policy.sites_where(p, policy.USERS_ADMIN)
    if sites is not None:
        if user.role in PRIVILEGED_ROLES and user.id != p.user_id:
            raise HTTPException(403, "only an admin may manage admins, auditors and site admins")
        if not (_user_sites(s, user) & sites):
            raise HTTPException(403, "this account belongs to a site you do not administer")
    return user


def _site(s: Session, site_id: int | None) -> None:
    if site_id is not None and s.get(Site, site_id) is None:
        raise HTTPException(422, f"no site {site_id}")


@router.get("/users", response_model=list[UserOut])
def list_users(rt: RuntimeDep, p: UsersAdmin, site_id: int | None = None,
               active: bool | None = None) -> list[UserOut]:
    """Accounts the caller administers (admins: all), optionally of one site."""
    sites = policy.sites_where(p, policy.USERS_ADMIN)
    with rt.db.read_session() as s:
        q = select(User).order_by(User.username)
        members = select(SiteMembership.user_id)
        if sites is not None:
            q = q.where(or_(User.site_id.in_(sites), User.id.in_(members.where(SiteMembership.site_id.in_(sites)))))
        if site_id is not None:
            q = q.where(or_(User.site_id == site_id, User.id.in_(members.where(SiteMembership.site_id == site_id))))
        if active is not None:
            q = q.where(User.active.is_(active))
        return [_out(s, u) for u in s.scalars(q)]


@router.post("/users", response_model=UserOut, status_code=201,
             responses={409: error_response("A user with this name exists")})
def add_user(body: UserIn, rt: RuntimeDep, p: UsersAdmin, request: Request) -> UserOut:
    """Create a local account (admins; site admins for their own sites and non-privileged roles)."""
    _check_role(p, body.role)
    _check_site(p, body.site_id)
    with rt.db.session() as s:
        _site(s, body.site_id)
        try:
            u = create_user(s, body.username, password=body.password, role=body.role,
                            full_name=body.full_name, email=body.email, site_id=body.site_id)
        except UserError as exc:
            raise HTTPException(status_code=409 if "exists" in str(exc) else 422, detail=str(exc)) from exc
        u.physician_name = body.physician_name
        audit.record(s, actor=p.username, source=_source(request), action="user.create", resource_type="user",
                     resource_id=u.username, detail={"role": u.role, "site_id": u.site_id})
        return _out(s, u)


@router.get("/users/{username}", response_model=UserOut)
def show_user(username: str, rt: RuntimeDep, p: UsersAdmin) -> UserOut:
    with rt.db.read_session() as s:
        return _out(s, managed_user(s, p, username))


@router.patch("/users/{username}", response_model=UserOut,
              responses={409: error_response("One cannot change one's own role or deactivate oneself")})
def change_user(username: str, body: UserPatch, rt: RuntimeDep, p: UsersAdmin, request: Request) -> UserOut:
    """Change an account; deactivating it ends its sessions and token use at once."""
    changes = body.model_dump(exclude_unset=True)
    if "role" in changes:
        _check_role(p, changes["role"] or "")
    if "site_id" in changes:
        _check_site(p, changes["site_id"])
    with rt.db.session() as s:
        user = managed_user(s, p, username)
        if user.id == p.user_id and ("role" in changes or changes.get("active") is False):
            raise HTTPException(409, "you cannot change your own role or deactivate yourself")
        if "site_id" in changes:
            _site(s, changes["site_id"])
        for field in ("role", "full_name", "email", "site_id", "physician_name", "active"):
            if field in changes and (changes[field] is not None or field == "site_id"):
                setattr(user, field, changes[field])
        if changes.get("password"):
            user.password_hash = hash_password(changes["password"])
        ends = ("deactivated" if changes.get("active") is False else "password changed"
                if changes.get("password") else "role changed" if "role" in changes else "")
        if ends:
            revoke_user_sessions(s, user.id, actor=p.username, source=_source(request), reason=ends)
        audit.record(s, actor=p.username, source=_source(request), action="user.update", resource_type="user",
                     resource_id=user.username,
                     detail={k: ("***" if k == "password" else v) for k, v in changes.items()})
        out = _out(s, user)
    forget_cached_credentials()
    policy.forget_decisions()
    return out


def _membership_site(s: Session, p: Principal, code: str) -> Site:
    site = s.scalars(select(Site).where(Site.code == code)).first()
    if site is None:
        raise HTTPException(404, f"no site {code!r}")
    _check_site(p, site.id)
    return site


@router.put("/users/{username}/memberships/{site_code}", response_model=UserOut)
def add_membership(username: str, site_code: str, body: MembershipIn, rt: RuntimeDep, p: UsersAdmin,
                   request: Request) -> UserOut:
    """Make a user a member of a site (optionally with a different role there)."""
    _check_role(p, body.role)
    with rt.db.session() as s:
        user = get_user(s, username)
        if user is None:
            raise HTTPException(404, f"no user {username!r}")
        site = _membership_site(s, p, site_code)
        if policy.sites_where(p, policy.USERS_ADMIN) is not None and user.role in PRIVILEGED_ROLES:
            raise HTTPException(403, "only an admin may manage admins, auditors and site admins")
        row = s.get(SiteMembership, (user.id, site.id))
        if row is None:
            s.add(SiteMembership(user_id=user.id, site_id=site.id, role=body.role, created_at=utcnow()))
        else:
            row.role = body.role
        audit.record(s, actor=p.username, source=_source(request), action="user.membership.add",
                     resource_type="user", resource_id=user.username, detail={"site": site.code, "role": body.role})
        s.flush()
        out = _out(s, user)
    forget_cached_credentials()
    policy.forget_decisions()
    return out


@router.delete("/users/{username}/memberships/{site_code}", response_model=UserOut)
def remove_membership(username: str, site_code: str, rt: RuntimeDep, p: UsersAdmin, request: Request) -> UserOut:
    with rt.db.session() as s:
        user = get_user(s, username)
        if user is None:
            raise HTTPException(404, f"no user {username!r}")
        site = _membership_site(s, p, site_code)
        row = s.get(SiteMembership, (user.id, site.id))
        if row is None:
            raise HTTPException(404, f"{username} is not a member of {site_code}")
        s.delete(row)
        audit.record(s, actor=p.username, source=_source(request), action="user.membership.remove",
                     resource_type="user", resource_id=user.username, detail={"site": site.code})
        s.flush()
        out = _out(s, user)
    forget_cached_credentials()
    policy.forget_decisions()
    return out
