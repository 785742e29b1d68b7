"""HTTP edge of break-the-glass: open emergency access, list and close its reviews. Rules in ``break_glass.py``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from readingroom.api_errors import error_response
from readingroom.governance import break_glass, policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.governance.cookies import client_address

router = APIRouter(prefix="/access", tags=["access"])
Clinician = Annotated[Principal, Depends(require(policy.BREAK_GLASS))]
Reviewer = Annotated[Principal, Depends(require(policy.AUDIT_REVIEW))]
_STATUS = {"invalid": 422, "not_found": 404, "forbidden": 403, "conflict": 409}


def _http(exc: break_glass.AccessError) -> HTTPException:
    return HTTPException(status_code=_STATUS.get(exc.kind, 400), detail=str(exc))


class BreakGlassIn(BaseModel):
    study_uid: str | None = Field(default=None, max_length=64, description="The study to open (or case_id)")
    case_id: int | None = Field(default=None, description="The case whose study to open (or study_uid)")
    reason: str = Field(description="Why access is needed now: at least 20 characters and 3 words; shown to the "
                                    "reviewing auditor")


class GrantOut(BaseModel):
    grant_id: int
    username: str
    kind: str
    study_uid: str
    case_id: int | None
    include_priors: bool
    reason: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    review_state: str
    reviewed_by: str
    reviewed_at: datetime | None
    review_note: str


def _out(review: break_glass.Review) -> GrantOut:
    g = review.grant
    return GrantOut(grant_id=g.id, username=review.username, kind=g.kind, study_uid=g.study_uid, case_id=g.case_id,
                    include_priors=g.include_priors, reason=g.reason, created_at=g.created_at,
                    expires_at=g.expires_at, revoked_at=g.revoked_at, review_state=g.review_state,
                    reviewed_by=g.reviewed_by, reviewed_at=g.reviewed_at, review_note=g.review_note)


@router.post("/break-glass", response_model=GrantOut, status_code=201,
             responses={404: error_response("No such study or case")})
def open_break_glass(body: BreakGlassIn, request: Request, rt: RuntimeDep, principal: Clinician) -> GrantOut:
    """Open a study (and the patient's priors) outside your relationships, for ``break_glass_minutes``.

    Takes effect at once; the access is flagged in the audit trail and waits
    for an auditor's review.
    """
    try:
        with rt.db.session() as s:
            grant = break_glass.break_glass(s, principal, study_uid=body.study_uid or None, case_id=body.case_id,
                                            reason=body.reason, minutes=rt.settings.break_glass_minutes,
                                            source=client_address(request))
            out = _out(break_glass.Review(grant, principal.username))
    except break_glass.AccessError as exc:
        raise _http(exc) from exc
    policy.forget_decisions()  # committed: a cached "no" for this study must not outlive the grant
    return out


@router.get("/reviews", response_model=list[GrantOut])
def list_reviews(rt: RuntimeDep, _p: Reviewer,
                 state: Annotated[Literal["pending", "reviewed"], Query(description="Review state")] = "pending",
                 limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[GrantOut]:
    """Break-the-glass grants awaiting review (or already reviewed), oldest first."""
    with rt.db.read_session() as s:
        return [_out(r) for r in break_glass.reviews(s, state, limit)]


class ReviewIn(BaseModel):
    note: str = Field(min_length=1, max_length=2000, description="What was checked and found")
    revoke: bool = Field(default=False, description="Also end the access now (it was not justified)")


@router.post("/reviews/{grant_id}", response_model=GrantOut,
             responses={409: error_response("The review was already closed")})
def close_review(body: ReviewIn, request: Request, rt: RuntimeDep, reviewer: Reviewer,
                 grant_id: Annotated[int, Path(ge=1)]) -> GrantOut:
    """Close the review of one break-the-glass grant (once; never your own)."""
    try:
        with rt.db.session() as s:
            out = _out(break_glass.close_review(s, reviewer, grant_id, note=body.note, revoke=body.revoke,
                                                source=client_address(request)))
    except break_glass.AccessError as exc:
        raise _http(exc) from exc
    if out.revoked_at is not None:
        policy.forget_decisions()
    return out
