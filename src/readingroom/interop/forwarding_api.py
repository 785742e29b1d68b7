"""REST edge of forwarding: rules (CRUD), a study's forwarding status, and "forward this study now".

All of it is interop administration (``interop.admin``): admins everywhere,
site admins for the destinations and studies of their sites. A rule's site
is its destination's site.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from readingroom.api_errors import error_response
from readingroom.archive.models import Study
from readingroom.governance import policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.interop import forwarding
from readingroom.interop.models import Destination, ForwardingRule

router = APIRouter(prefix="/interop", tags=["forwarding"])
InteropAdmin = Annotated[Principal, Depends(require(policy.INTEROP_ADMIN))]
ERRORS: dict[int | str, dict[str, Any]] = {404: error_response("No such rule, study or destination"),
                                            409: error_response("A rule with this name exists"),
                                            422: error_response("The rule or request is invalid")}


class Match(BaseModel):
    """What a study must be for the rule to forward it; every field optional, all given ones must hold."""

    modality: str | None = Field(default=None, description="a modality in the study, e.g. CT")
    site: str | None = Field(default=None, description="the code of the study's site")
    description: str | None = Field(default=None, description="regular expression searched in the description "
                                    "(case-insensitive)")
    priority: str | None = Field(default=None, description="stat | urgent | routine | low (the case's priority)")
    procedure: str | None = Field(default=None, description="canonical procedure code of the case")


class RuleIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    match: Match = Field(default_factory=Match)
    destination: str = Field(min_length=1, description="name of a 'dicom' or 'dicomweb' destination")
    enabled: bool = True


class RuleChange(BaseModel):
    match: Match | None = None
    destination: str | None = None
    enabled: bool | None = None


class RuleOut(BaseModel):
    id: int
    name: str
    match: dict[str, str]
    destination: str
    enabled: bool
    created_at: datetime
    created_by: str


class ForwardIn(BaseModel):
    study_uid: str = Field(min_length=1, max_length=64)
    destination: str = Field(min_length=1)


class ForwardOut(BaseModel):
    """One forward of a study (an outbox item)."""

    id: int
    destination: str
    operation: str
    state: str
    attempts: int
    dedupe_key: str
    last_error: str
    result: dict[str, Any]
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None


def _out(rule: ForwardingRule, dest: Destination) -> RuleOut:
    return RuleOut(id=rule.id, name=rule.name, match=rule.match or {}, destination=dest.name, enabled=rule.enabled,
                   created_at=rule.created_at, created_by=rule.created_by)


def _match(m: Match | None) -> dict[str, Any] | None:
    return None if m is None else m.model_dump(exclude_none=True)


def _check_dest(s: Any, principal: Principal, name: str) -> None:
    row = s.execute(select(Destination.site_id).where(Destination.name == name)).first()
    if row is None:
        return  # the service refuses it: "no destination" (422)
    if not policy.at_site(principal, policy.INTEROP_ADMIN, row[0]):
        raise HTTPException(status_code=403, detail="this destination belongs to a site you do not administer")


def _rule_for(s: Any, principal: Principal, rule_id: int) -> ForwardingRule:
    row = s.execute(select(ForwardingRule, Destination.site_id).join(
        Destination, Destination.id == ForwardingRule.destination_id).where(ForwardingRule.id == rule_id)).first()
    if row is None or not policy.at_site(principal, policy.INTEROP_ADMIN, row[1]):
        raise HTTPException(status_code=404, detail=f"no forwarding rule {rule_id}")
    return row[0]


def _refused(exc: forwarding.ForwardingError) -> HTTPException:
    if isinstance(exc, forwarding.RuleNotFound):
        return HTTPException(status_code=404, detail=str(exc))
    return HTTPException(status_code=409 if "exists" in str(exc) else 422, detail=str(exc))


@router.get("/forwarding-rules", response_model=list[RuleOut])
def list_rules(rt: RuntimeDep, principal: InteropAdmin) -> list[RuleOut]:
    """Forwarding rules (a site admin: those sending to their sites' destinations)."""
    sites = policy.sites_where(principal, policy.INTEROP_ADMIN)
    with rt.db.read_session() as s:
        rows = s.execute(select(ForwardingRule, Destination).join(
            Destination, Destination.id == ForwardingRule.destination_id).order_by(ForwardingRule.name)).all()
        return [_out(r, d) for r, d in rows if sites is None or d.site_id in sites]


@router.post("/forwarding-rules", response_model=RuleOut, status_code=201, responses=ERRORS)
def create_rule(body: RuleIn, rt: RuntimeDep, principal: InteropAdmin) -> RuleOut:
    """Add a rule: complete studies matching ``match`` are sent to ``destination`` through the outbox."""
    with rt.db.session() as s:
        _check_dest(s, principal, body.destination)
        try:
            rule = forwarding.create_rule(s, name=body.name, match=_match(body.match) or {},
                                          destination=body.destination, enabled=body.enabled,
                                          actor=principal.username)
        except forwarding.ForwardingError as exc:
            raise _refused(exc) from exc
        return _out(rule, s.get(Destination, rule.destination_id))


@router.put("/forwarding-rules/{rule_id}", response_model=RuleOut, responses=ERRORS)
def update_rule(rule_id: int, body: RuleChange, rt: RuntimeDep, principal: InteropAdmin) -> RuleOut:
    """Change a rule's match, destination or enabled flag (fields left out stay)."""
    with rt.db.session() as s:
        _rule_for(s, principal, rule_id)
        if body.destination is not None:
            _check_dest(s, principal, body.destination)
        try:
            rule = forwarding.update_rule(s, rule_id, match=_match(body.match), destination=body.destination,
                                          enabled=body.enabled, actor=principal.username)
        except forwarding.ForwardingError as exc:
            raise _refused(exc) from exc
        return _out(rule, s.get(Destination, rule.destination_id))


@router.delete("/forwarding-rules/{rule_id}", status_code=204, responses=ERRORS)
def delete_rule(rule_id: int, rt: RuntimeDep, principal: InteropAdmin) -> None:
    """Remove a rule; forwards it already queued are still delivered (cancel them in the outbox)."""
    with rt.db.session() as s:
        _rule_for(s, principal, rule_id)
        forwarding.delete_rule(s, rule_id, actor=principal.username)


def _study_site(s: Any, principal: Principal, study_uid: str) -> None:
    row = s.execute(select(Study.id, Study.site_id).where(Study.study_uid == study_uid)).first()
    if row is None or not policy.at_site(principal, policy.INTEROP_ADMIN, row[1]):
        raise HTTPException(status_code=404, detail=f"no study {study_uid}")


@router.get("/forwarding", response_model=list[ForwardOut], responses=ERRORS)
def forwarding_status(rt: RuntimeDep, principal: InteropAdmin,
                      study_uid: Annotated[str, Query(min_length=1, max_length=64)]) -> list[ForwardOut]:
    """Every forward of a study: destination, state (pending, delivered, failed), attempts, counts, last error."""
    with rt.db.read_session() as s:
        _study_site(s, principal, study_uid)
        return [ForwardOut(**row) for row in forwarding.forwarding_status(s, study_uid)]


@router.post("/forwarding", response_model=ForwardOut, status_code=202, responses=ERRORS)
def forward_now(body: ForwardIn, rt: RuntimeDep, principal: InteropAdmin) -> ForwardOut:
    """Queue one study for a destination now (delivered by the outbox; see GET /interop/forwarding)."""
    with rt.db.session() as s:
        _study_site(s, principal, body.study_uid)
        _check_dest(s, principal, body.destination)
        try:
            item = forwarding.forward_now(s, body.study_uid, body.destination, actor=principal.username)
        except forwarding.ForwardingError as exc:
            raise _refused(exc) from exc
        item_id = item.id
        return next(ForwardOut(**row) for row in forwarding.forwarding_status(s, body.study_uid)
                    if row["id"] == item_id)
