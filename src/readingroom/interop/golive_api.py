"""REST edge of go-live validation: run the checklist against a peer, read its history.

``interop.admin`` at the peer's site (admins: every peer). Running it takes
seconds (a test study goes to the peer and back), so the POST answers when
the run is finished, with its checklist.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from readingroom.api_errors import error_response
from readingroom.archive.peers import get_peer
from readingroom.governance import policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.interop import golive
from readingroom.interop.models import PeerValidation

router = APIRouter(tags=["go-live"])
InteropAdmin = Annotated[Principal, Depends(require(policy.INTEROP_ADMIN))]


class ValidationOut(BaseModel):
    """One validation run; ``steps`` is the go-live checklist (ok: true, false, or null when skipped)."""

    id: int
    peer: str
    status: str
    steps: list[dict[str, Any]]
    started_at: datetime
    finished_at: datetime | None
    started_by: str


def _out(run: PeerValidation, peer: str) -> ValidationOut:
    return ValidationOut(id=run.id, peer=peer, status=run.status, steps=run.steps or [], started_at=run.started_at,
                         finished_at=run.finished_at, started_by=run.started_by)


def _visible_peer(rt: Any, principal: Principal, name: str) -> str:
    with rt.db.read_session() as s:
        peer = get_peer(s, name)
        if peer is None or peer.name != name or not policy.at_site(principal, policy.INTEROP_ADMIN, peer.site_id):
            raise HTTPException(status_code=404, detail=f"no peer named {name!r}")
        return peer.name


@router.post("/peers/{name}/validations", response_model=ValidationOut, status_code=201,
             responses={404: error_response("No such peer")})
async def run_validation(name: str, rt: RuntimeDep, principal: InteropAdmin) -> ValidationOut:
    """Run the go-live checklist against the peer now (C-ECHO, test study out and back, DICOMweb, HL7)."""
    peer = _visible_peer(rt, principal, name)
    run = await run_in_threadpool(golive.run_validation, rt, peer, actor=principal.username)
    return _out(run, peer)


@router.get("/peers/{name}/validations", response_model=list[ValidationOut],
            responses={404: error_response("No such peer")})
def list_validations(name: str, rt: RuntimeDep, principal: InteropAdmin) -> list[ValidationOut]:
    """The peer's validation runs, newest first: the first is its go-live checklist."""
    peer = _visible_peer(rt, principal, name)
    with rt.db.read_session() as s:
        return [_out(run, peer) for run in golive.history(s, peer)]
