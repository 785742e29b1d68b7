"""REST edge of outbound destinations and their live health (admins; a site admin: their sites' destinations).

A network-wide destination (no site) is the network admin's alone. A
destination a caller may not manage answers 404, as if it did not exist, so
a site admin cannot probe other sites' configuration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.archive.models import DicomPeer
from readingroom.governance import policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.interop import destinations as service
from readingroom.interop.models import Destination

router = APIRouter(prefix="/interop", tags=["interop"])
InteropAdmin = Annotated[Principal, Depends(require(policy.INTEROP_ADMIN))]


class DestinationIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    kind: str = Field(description="hl7 (host, port), dicom (peer), dicomweb (url)")
    host: str = ""
    port: int | None = None
    url: str = ""
    peer: str = Field(default="", description="A DICOM destination: the configured peer's name")
    peer_id: int | None = Field(default=None, description="... or the peer's id")
    site_id: int | None = Field(default=None, description="The site it serves; empty: the whole network")
    enabled: bool = True
    events: list[str] = Field(default_factory=list,
                              description="HL7: preliminary, final, addendum (empty: every signed version)")
    prior_source: bool = False
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "hl7: receiving_application, receiving_facility, connect_timeout, ack_timeout, retry_ack_codes; "
        "dicomweb: token (Bearer) or username + password (Basic), headers, timeout, verify_tls; "
        "dicom: connect_timeout, timeout"))


class DestinationPatch(BaseModel):
    host: str | None = None
    port: int | None = None
    url: str | None = None
    peer: str | None = None
    peer_id: int | None = None
    site_id: int | None = None
    enabled: bool | None = None
    events: list[str] | None = None
    prior_source: bool | None = None
    options: dict[str, Any] | None = None


class DestinationOut(BaseModel):
    id: int
    name: str
    kind: str
    host: str
    port: int | None
    url: str
    peer: str
    peer_id: int | None
    site_id: int | None
    enabled: bool
    events: list[str]
    prior_source: bool
    options: dict[str, Any]
    created_at: datetime


class HealthOut(BaseModel):
    name: str
    kind: str
    state: str = Field(description="up, down (unreachable since down_since), unknown (never contacted), disabled")
    enabled: bool
    last_contact_at: datetime | None
    last_success_at: datetime | None
    last_error: str
    last_error_at: datetime | None
    down_since: datetime | None
    backlog: int = Field(description="Pending outbox items")
    oldest_pending_at: datetime | None
    oldest_pending_age_seconds: float | None
    failed: int = Field(description="Items that failed permanently (see the outbox and the exception queue)")


def _out(s: Session, d: Destination) -> DestinationOut:
    row = s.get(DicomPeer, d.peer_id) if d.peer_id is not None else None
    return DestinationOut(id=d.id, name=d.name, kind=d.kind, host=d.host, port=d.port, url=d.url,
                          peer=row.name if row else "", peer_id=d.peer_id, site_id=d.site_id, enabled=d.enabled,
                          events=list(d.events or []),
                          prior_source=d.prior_source, options=service.public_options(d.options),
                          created_at=d.created_at)


def _unprocessable(exc: service.DestinationError) -> HTTPException:
    return HTTPException(status_code=422, detail=[
        {"loc": ["body", *field.split(".")], "msg": msg, "type": "value_error"} for field, msg in exc.errors.items()])


def managed(s: Session, principal: Principal, name: str) -> Destination:
    """The destination, if the caller manages it (else 404: others' configuration is not disclosed)."""
    try:
        dest = service.get(s, name)
    except service.DestinationNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    if not policy.at_site(principal, policy.INTEROP_ADMIN, dest.site_id):
        raise HTTPException(status_code=404, detail=f"no destination {name!r}")
    return dest


def _may_place(principal: Principal, site_id: int | None) -> None:
    if not policy.at_site(principal, policy.INTEROP_ADMIN, site_id):
        raise HTTPException(status_code=403, detail="you may only configure destinations of the sites you "
                            "administer (a network-wide one: admins)")


@router.get("/destinations", response_model=list[DestinationOut])
def list_destinations(rt: RuntimeDep, principal: InteropAdmin) -> list[DestinationOut]:
    """Configured destinations (a site admin: those of its sites)."""
    with rt.db.read_session() as s:
        return [_out(s, d) for d in service.list_destinations(
            s, policy.sites_where(principal, policy.INTEROP_ADMIN))]


@router.post("/destinations", response_model=DestinationOut, status_code=201,
             responses={409: error_response("A destination with this name exists")})
def create_destination(body: DestinationIn, rt: RuntimeDep, principal: InteropAdmin) -> DestinationOut:
    """Add an HL7, DICOM or DICOMweb destination (field-level errors: 422)."""
    _may_place(principal, body.site_id)
    with rt.db.session() as s:
        try:
            dest = service.create(s, actor=principal.username, **body.model_dump())
        except service.DestinationExists as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc
        except service.DestinationError as exc:
            raise _unprocessable(exc) from exc
        return _out(s, dest)


@router.get("/destinations/{name}", response_model=DestinationOut)
def get_destination(name: str, rt: RuntimeDep, principal: InteropAdmin) -> DestinationOut:
    with rt.db.read_session() as s:
        return _out(s, managed(s, principal, name))


@router.patch("/destinations/{name}", response_model=DestinationOut)
def update_destination(name: str, body: DestinationPatch, rt: RuntimeDep, principal: InteropAdmin) -> DestinationOut:
    """Change a destination (e.g. ``enabled: false`` to hold its queue); the whole is validated again."""
    changes = body.model_dump(exclude_unset=True)
    with rt.db.session() as s:
        dest = managed(s, principal, name)
        if "site_id" in changes:
            _may_place(principal, changes["site_id"])
        try:
            dest = service.update(s, dest, changes, actor=principal.username)
        except service.DestinationError as exc:
            raise _unprocessable(exc) from exc
        return _out(s, dest)


@router.delete("/destinations/{name}", status_code=204,
               responses={409: error_response("The destination still has pending outbox items")})
def delete_destination(name: str, rt: RuntimeDep, principal: InteropAdmin) -> None:
    """Remove a destination without pending work."""
    with rt.db.session() as s:
        dest = managed(s, principal, name)
        try:
            service.delete(s, dest, actor=principal.username)
        except service.DestinationBusy as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from exc


def _health(s: Session, d: Destination) -> HealthOut:
    h = service.health(s, d)
    return HealthOut(**h.__dict__)


@router.get("/destinations/{name}/health", response_model=HealthOut)
def destination_health(name: str, rt: RuntimeDep, principal: InteropAdmin) -> HealthOut:
    """Live state of one destination: up or down, last contact / success / error, backlog."""
    with rt.db.read_session() as s:
        return _health(s, managed(s, principal, name))


@router.get("/health", response_model=list[HealthOut])
def interop_health(rt: RuntimeDep, principal: InteropAdmin) -> list[HealthOut]:
    """Live state of every destination the caller manages (downtime mode: backlog grows while one is down)."""
    with rt.db.read_session() as s:
        return [_health(s, d) for d in service.list_destinations(
            s, policy.sites_where(principal, policy.INTEROP_ADMIN))]
