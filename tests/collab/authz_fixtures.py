"""Fixture resources of critical results and comments for the authorisation matrix (tests/governance).

Each call makes a fresh one on the target's case, so a request that
consumes it (an acknowledgement, a deletion) never starves later cells.
"""

from __future__ import annotations

from typing import Any

from readingroom.clock import utcnow
from readingroom.collab import critical
from readingroom.collab.comments_models import CaseComment, CaseCommentRevision
from readingroom.workflow.cases import Actor
from readingroom.workflow.models import Case
from tests.governance.authz_world import ANONYMOUS, World


def fresh_critical(world: World, role: str, target: str) -> dict[str, Any]:
    """An open critical result on the target's case, flagged by a site-A reader outside the matrix."""
    with world.rt.db.session() as s:
        case = s.get(Case, world.cases[target])
        out = critical.flag(s, world.rt.settings, case, Actor("reader_a", world.users["reader_a"]),
                            category="matrix", level="1", finding="matrix finding")
    return {"result_id": out.result_id}


def fresh_comment(world: World, role: str, target: str) -> dict[str, Any]:
    """A comment by the calling role (reader_a for anonymous) on the target's case."""
    author = "reader_a" if role == ANONYMOUS else role
    now = utcnow()
    with world.rt.db.session() as s:
        comment = CaseComment(case_id=world.cases[target], author_id=world.users[author], author_name=author,
                              body="matrix comment", mentions=[], revision=1, created_at=now, deleted_by="")
        s.add(comment)
        s.flush()
        s.add(CaseCommentRevision(comment_id=comment.id, revision=1, body="matrix comment", author_name=author,
                                  at=now))
        return {"comment_id": comment.id}
