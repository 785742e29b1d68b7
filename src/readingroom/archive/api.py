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
def list_peers(rt: RuntimeDep, _p: PeersAdmin) -> list[PeerOut]:
    """Configured DICOM peers."""
    with rt.db.read_session() as s:
        return [_out(p) for p in peers.list_peers(s)]


@router.post("/peers", response_model=PeerOut, status_code=201,
             responses={409: error_response("A peer with this name exists")})
def add_peer(body: PeerIn, rt: RuntimeDep, principal: PeersAdmin) -> PeerOut:
    """Register a DICOM peer (allowed caller and C-MOVE/send destination; ``tls``: call it over DICOM TLS)."""
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
        try:
            peers.remove_peer(s, name, actor=principal.username)
        except peers.PeerError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
    rt.invalidate("peers.")
