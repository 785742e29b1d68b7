"""REST edge of the archive: DICOM peers and archive health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from readingroom.api_errors import error_response
from readingroom.archive import peers
from readingroom.governance import policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal

router = APIRouter(tags=["archive"])
PeersAdmin = Annotated[Principal, Depends(require(policy.PEERS_ADMIN))]


class PeerIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(gt=0, lt=65536)
    site_id: int | None = None
    description: str = ""
    allow_store: bool = True
    allow_query: bool = True
    allow_retrieve: bool = True
    tls: bool = Field(default=False, description="Call this peer over DICOM TLS (C-MOVE, send)")


class PeerOut(PeerIn):
    id: int


def _out(p: object) -> PeerOut:
    return PeerOut.model_validate(p, from_attributes=True)


@router.get("/peers", response_model=list[PeerOut])
def list_peers(rt: RuntimeDep, principal: PeersAdmin) -> list[PeerOut]:
    """Configured DICOM peers (a site admin: the peers of its sites)."""
    sites = policy.sites_where(principal, policy.PEERS_ADMIN)
    with rt.db.read_session() as s:
        return [_out(p) for p in peers.list_peers(s) if sites is None or p.site_id in sites]


@router.post("/peers", response_model=PeerOut, status_code=201,
             responses={409: error_response("A peer with this name exists")})
def add_peer(body: PeerIn, rt: RuntimeDep, principal: PeersAdmin) -> PeerOut:
    """Register a DICOM peer (allowed caller and C-MOVE/send destination; ``tls``: call it over DICOM TLS)."""
    if not policy.at_site(principal, policy.PEERS_ADMIN, body.site_id):
        raise HTTPException(status_code=403, detail="you may only register peers of the sites you administer")
    with rt.db.session() as s:
        try:
            p = peers.add_peer(s, **body.model_dump(), actor=principal.username)
        except peers.PeerError as exc:
            raise HTTPException(status_code=409 if "exists" in str(exc) else 422, detail=str(exc)) from exc
        out = _out(p)
    rt.invalidate("peers.")
    return out


@router.delete("/peers/{name}", status_code=204)
def remove_peer(name: str, rt: RuntimeDep, principal: PeersAdmin) -> None:
    """Forget a DICOM peer."""
    with rt.db.session() as s:
        found = next((p for p in peers.list_peers(s) if p.name == name), None)
        if found is not None and not policy.at_site(principal, policy.PEERS_ADMIN, found.site_id):
            raise HTTPException(status_code=403, detail="this peer belongs to a site you do not administer")
        try:
            peers.remove_peer(s, name, actor=principal.username)
        except peers.PeerError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
    rt.invalidate("peers.")
