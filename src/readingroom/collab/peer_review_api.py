"""REST edge of peer review: the reviewer's accept and score, the reviewed reader's anonymous view,
the administrators' full list and counts by score."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from readingroom.api_errors import error_response
from readingroom.collab import live
from readingroom.collab.children import ChildError, username_of
from readingroom.collab.peer_review import (
    PeerReviewNotFound,
    accept,
    all_reviews,
    get_review,
    reviews_of,
    score,
    summary,
)
from readingroom.collab.peer_review_models import PeerReview
from readingroom.governance import policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.runtime import Runtime
from readingroom.workflow.cases import Actor, CaseNotFound
from readingroom.workflow.models import Case
from readingroom.workflow.states import IllegalTransition, NotEligible

router = APIRouter(tags=["peer review"])
Reader = Annotated[Principal, Depends(require(policy.WORKLIST_READ))]
Admin = Annotated[Principal, Depends(require(policy.PEER_REVIEW_ADMIN))]
ERRORS: dict[int | str, dict[str, Any]] = {
    409: error_response("The review is not open (already scored, cancelled, claimed by someone else)"),
    422: error_response("Unknown score, or a discrepancy without a comment"),
}


class ScoreIn(BaseModel):
    score: Literal["1", "2a", "2b", "3a", "3b"] = Field(description="RADPEER score")
    comment: str = Field("", max_length=20_000, description="Required for scores 2 and 3")


class MyReviewOut(BaseModel):
    """A review of the caller's work: the score and comment, never who reviewed."""

    id: int
    case_id: int
    score: str
    comment: str
    scored_at: datetime | None


class ReviewOut(BaseModel):
    """A review as the peer-review administrators see it."""

    id: int
    case_id: int
    review_case_id: int
    state: str
    score: str
    comment: str
    reviewed: str
    reviewer: str
    created_at: datetime
    scored_at: datetime | None


class SummaryOut(BaseModel):
    total: int
    by_score: dict[str, int] = Field(description="Scored reviews per RADPEER score; also 'open' and 'cancelled'")


def _full(s: Session, r: PeerReview) -> ReviewOut:
    return ReviewOut(id=r.id, case_id=r.case_id, review_case_id=r.child_case_id, state=r.state, score=r.score,
                     comment=r.comment, reviewed=username_of(s, r.reviewed_user_id),
                     reviewer=username_of(s, r.reviewer_user_id), created_at=r.created_at, scored_at=r.scored_at)


def _act(rt: Runtime, p: Principal, case_id: int, fn: Callable[[Session, PeerReview], Any]) -> ReviewOut:
    try:
        with rt.db.session() as s:
            child = s.get(Case, case_id)
            if child is None or not policy.can_see_case(s, p, child):
                raise HTTPException(404, f"no case {case_id} you may see")
            review = get_review(s, case_id)
            fn(s, review)
            out = _full(s, review)
    except (PeerReviewNotFound, CaseNotFound) as exc:
        raise HTTPException(404, str(exc)) from exc
    except NotEligible as exc:
        raise HTTPException(403, str(exc)) from exc
    except IllegalTransition as exc:
        raise HTTPException(409, str(exc)) from exc
    except ChildError as exc:
        raise HTTPException(422, str(exc)) from exc
    policy.forget_decisions()
    live.publish(rt, "case.changed", {"state": "final" if out.state == "scored" else "claimed"}, case_id=case_id)
    return out


@router.post("/peer-reviews/{case_id}/accept", response_model=ReviewOut, responses=ERRORS)
def take(case_id: int, rt: RuntimeDep, p: Reader) -> ReviewOut:
    """Take a peer review offered to you (its case id); access to the reviewed case starts now."""
    return _act(rt, p, case_id, lambda s, r: accept(s, r, Actor(p.username, p.user_id)))


@router.post("/peer-reviews/{case_id}/score", response_model=ReviewOut, responses=ERRORS)
def give_score(case_id: int, body: ScoreIn, rt: RuntimeDep, p: Reader) -> ReviewOut:
    """Score the reviewed read (RADPEER 1, 2a, 2b, 3a, 3b); access to the reviewed case ends."""
    return _act(rt, p, case_id, lambda s, r: score(s, r, Actor(p.username, p.user_id), body.score, body.comment))


@router.get("/peer-reviews/mine", response_model=list[MyReviewOut])
def mine(rt: RuntimeDep, p: Reader) -> list[MyReviewOut]:
    """The scored reviews of the caller's own reads, without the reviewer's identity."""
    with rt.db.read_session() as s:
        return [MyReviewOut(id=r.id, case_id=r.case_id, score=r.score, comment=r.comment, scored_at=r.scored_at)
                for r in reviews_of(s, p.user_id)]


@router.get("/peer-reviews", response_model=list[ReviewOut])
def everything(rt: RuntimeDep, p: Admin) -> list[ReviewOut]:
    """Every review of the sites the caller administers peer review for, newest first, reviewer included."""
    with rt.db.read_session() as s:
        return [_full(s, r) for r in all_reviews(s, policy.sites_where(p, policy.PEER_REVIEW_ADMIN))]


@router.get("/peer-reviews/summary", response_model=SummaryOut)
def counts(rt: RuntimeDep, p: Admin) -> SummaryOut:
    """Counts by RADPEER score of the caller's sites."""
    with rt.db.read_session() as s:
        reviews = all_reviews(s, policy.sites_where(p, policy.PEER_REVIEW_ADMIN))
    return SummaryOut(total=len(reviews), by_score=summary(reviews))
