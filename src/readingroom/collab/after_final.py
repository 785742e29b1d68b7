"""Background jobs of consults and peer review, run by every ``serve`` process.

* ``after_final`` reads the case event log for ``report.final`` (written by the reports module when a
  report is signed final) from a durable position (``consumer_offsets``), so every final is seen once
  across processes and restarts: a case whose rules require a second reader gets its second read, and
  the sampled share of finals gets a peer review. Both are idempotent per case (unique keys), so an
  event seen twice after a crash between the work and the offset update changes nothing.
* ``sync_access`` keeps consultants' and reviewers' grants in step with who holds each child case
  (claimed through the worklist, reassigned by a supervisor, cancelled).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from readingroom.collab import consults, live, peer_review
from readingroom.consumers import anything_after
from readingroom.consumers import lock_offset as _lock_offset
from readingroom.governance import policy
from readingroom.governance.models import User
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case, CaseEvent, ConsumerOffset

log = logging.getLogger(__name__)
AFTER_FINAL = "collab.after_final"
REPORT_FINAL = "report.final"


def _finals_after(session: Session, position: int, batch: int) -> Sequence[Any]:
    return session.execute(select(CaseEvent.id, CaseEvent.case_id, CaseEvent.actor)
                           .where(CaseEvent.id > position, CaseEvent.kind == REPORT_FINAL)
                           .order_by(CaseEvent.id).limit(batch)).all()


def after_final(rt: Runtime, batch: int = 200) -> list[int]:
    """Create second reads and sampled peer reviews for new finals; returns the child case ids made."""
    made: list[tuple[int, int | None]] = []
    if not anything_after(rt, AFTER_FINAL, _finals_after):
        return []
    with rt.db.session() as s:
        position = _lock_offset(s, AFTER_FINAL)
        events = _finals_after(s, position, batch)
        for event_id, case_id, actor in events:
            position = event_id
            case = s.get(Case, case_id)
            if case is None or case.kind != "read":
                continue
            reader_id = case.claimed_by or s.scalar(select(User.id).where(User.username == actor))
            try:
                with s.begin_nested():
                    if case.second_reader_required:
                        second = consults.request_second_read(s, case.id, cache_key=rt.db.url)
                        if second is not None:
                            made.append((second.child_case_id, s.get(Case, second.child_case_id).assignee))
                    if peer_review.sampled(case.id, rt.settings.peer_review_rate):
                        review = peer_review.start_review(s, case, reader_id=reader_id, final_event_id=event_id,
                                                          cache_key=rt.db.url)
                        if review is not None:
                            made.append((review.child_case_id, s.get(Case, review.child_case_id).assignee))
            except Exception:
                log.exception("could not create the second read or peer review of case %s", case_id)
        s.execute(update(ConsumerOffset).where(ConsumerOffset.name == AFTER_FINAL).values(position=position))
    for child_id, assignee in made:
        live.publish(rt, "case.changed", {"state": "available"}, case_id=child_id,
                     user_ids=[assignee] if assignee else ())
    if made:
        policy.forget_decisions()
    return [c for c, _ in made]


def sync_access(rt: Runtime) -> int:
    """Move, create or end child-read grants to match their cases' owners; returns how many changed."""
    with rt.db.session() as s:
        changed = consults.reconcile(s) + peer_review.reconcile(s)
    if changed:
        policy.forget_decisions()
    return changed
