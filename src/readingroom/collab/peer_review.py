"""Peer review: a sample of final reads scored by a second reader, RADPEER style.

Which finals are reviewed is decided per case from a hash of its id (``peer_review_rate`` of them):
the same case is always in or out of the sample, in every process and after restarts, and the
share converges to the rate without a shared counter. The review is a child case (collab.children)
routed by the engine with the original reader excluded as a conflict, so it is never reviewed by
its own author. The reviewer's identity is kept for the peer-review administrators; the reviewed
reader sees the score and comment only, and the parent case's timeline names neither.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.children import ChildError, create_child, revoke_grant, sync_grant, username_of
from readingroom.collab.peer_review_models import PeerReview
from readingroom.workflow.cases import Actor, claim, get_case, log_event, transition
from readingroom.workflow.models import Case
from readingroom.workflow.states import CaseState, NotEligible

#: RADPEER scores: 1 concur; 2 discrepancy in interpretation, not ordinarily expected to be made (a: unlikely
#: clinically significant, b: likely significant); 3 should be made almost every time (a / b likewise).
SCORES = ("1", "2a", "2b", "3a", "3b")
#: The timeline of the reviewed case says a review happened, never by whom.
ANONYMOUS = Actor(name="peer-review")


class PeerReviewNotFound(LookupError):
    """No peer review with that (child) case id: HTTP 404."""


def sampled(case_id: int, rate: float) -> bool:
    """Whether a final read of ``case_id`` is in the peer-review sample at ``rate`` (stable per case)."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"peer-review:{case_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def start_review(session: Session, case: Case, *, reader_id: int | None, final_event_id: int | None,
                 cache_key: str = "") -> PeerReview | None:
    """Create the review of one final read (None if it exists: exactly once per case)."""
    if session.scalar(select(PeerReview.id).where(PeerReview.case_id == case.id)) is not None:
        return None
    reader = username_of(session, reader_id)
    try:
        with session.begin_nested():
            child = create_child(session, case, "peer_review", priority="routine", actor=ANONYMOUS,
                                 routing_request={"exclude": [reader] if reader else []},
                                 data={"reviewed_case_id": case.id}, cache_key=cache_key)
            review = PeerReview(case_id=case.id, child_case_id=child.id, site_id=case.site_id,
                                reviewed_user_id=reader_id, final_event_id=final_event_id, state="open",
                                created_at=utcnow())
            session.add(review)
            session.flush()
    except IntegrityError:
        return None  # another process sampled it first
    review.grant_id = sync_grant(session, grant_id=None, child=child, granted_by="peer-review")
    log_event(session, case.id, "peer_review.requested", ANONYMOUS, case.state, case.state,
              {"peer_review_id": review.id})
    return review


def get_review(session: Session, child_case_id: int) -> PeerReview:
    review = session.scalars(select(PeerReview).where(PeerReview.child_case_id == child_case_id)).first()
    if review is None:
        raise PeerReviewNotFound(f"case {child_case_id} is not a peer review")
    return review


def accept(session: Session, review: PeerReview, actor: Actor) -> PeerReview:
    """Take the review (claim its case) and receive access to the reviewed case at once."""
    if review.state != "open":
        raise NotEligible(f"peer review {review.child_case_id} is {review.state}")
    child = get_case(session, review.child_case_id)
    if child.claimed_by != actor.user_id:
        child = claim(session, child.id, actor)
    review.grant_id = sync_grant(session, grant_id=review.grant_id, child=child, granted_by="peer-review")
    return review


def score(session: Session, review: PeerReview, actor: Actor, value: str, comment: str) -> PeerReview:
    """Record the reviewer's RADPEER score; the reviewer's access to the reviewed case ends now."""
    if value not in SCORES:
        raise ChildError(f"unknown score {value!r}; RADPEER scores are {', '.join(SCORES)}")
    if value != "1" and not comment.strip():
        raise ChildError("a discrepancy (score 2 or 3) needs a comment saying what was missed")
    if review.state != "open":
        raise NotEligible(f"peer review {review.child_case_id} is already {review.state}")
    if get_case(session, review.child_case_id).claimed_by != actor.user_id:
        accept(session, review, actor)
    now = utcnow()
    transition(session, review.child_case_id, "completed", actor, data={"score": value})
    review.state, review.score, review.comment = "scored", value, comment.strip()
    review.reviewer_user_id, review.scored_at = actor.user_id, now
    revoke_grant(session, review.grant_id)
    case = get_case(session, review.case_id)
    log_event(session, case.id, "peer_review.completed", ANONYMOUS, case.state, case.state,
              {"peer_review_id": review.id}, now)
    return review


def reviews_of(session: Session, reviewed_user_id: int) -> list[PeerReview]:
    """The scored reviews of a reader's work (the API shows them without the reviewer)."""
    return list(session.scalars(select(PeerReview).where(PeerReview.reviewed_user_id == reviewed_user_id,
                                                         PeerReview.state == "scored")
                                .order_by(PeerReview.id.desc())))


def all_reviews(session: Session, sites: frozenset[int] | None, *, since: datetime | None = None) -> list[PeerReview]:
    """Every review of the given sites (None: all), newest first, for the peer-review administrators."""
    q = select(PeerReview).order_by(PeerReview.id.desc()).limit(1000)
    if sites is not None:
        q = q.where(PeerReview.site_id.in_(sorted(sites)))
    if since is not None:
        q = q.where(PeerReview.created_at >= since)
    return list(session.scalars(q))


def summary(reviews: list[PeerReview]) -> dict[str, int]:
    """Counts by score (every RADPEER score present, zero when unused) plus open and cancelled reviews."""
    counts = Counter(r.score for r in reviews if r.state == "scored")
    out = {s: counts.get(s, 0) for s in SCORES}
    out["open"] = sum(1 for r in reviews if r.state == "open")
    out["cancelled"] = sum(1 for r in reviews if r.state == "cancelled")
    return out


def reconcile(session: Session) -> int:
    """Keep reviewers' grants in step with the review cases' owners; close reviews whose case was cancelled."""
    changed = 0
    rows = session.execute(select(PeerReview, Case).join(Case, Case.id == PeerReview.child_case_id)
                           .where(PeerReview.state == "open")).all()
    for review, child in rows:
        if child.state == CaseState.CANCELLED.value:
            revoke_grant(session, review.grant_id)
            review.state = "cancelled"
            changed += 1
            continue
        before = review.grant_id
        review.grant_id = sync_grant(session, grant_id=review.grant_id, child=child, granted_by="peer-review")
        changed += before != review.grant_id
    return changed
