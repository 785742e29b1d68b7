"""REST edge of case comments: threads, post with @mentions, edit (revisions kept), delete (tombstone)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from readingroom.api_errors import error_response
from readingroom.collab import comments, live
from readingroom.collab.comments_models import CaseComment
from readingroom.governance import audit, policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case

router = APIRouter(tags=["comments"])
Writer = Annotated[Principal, Depends(require(policy.COMMENTS_WRITE))]
NO_CASE = "no relationship to this case (not routed to you, not your site, not your order, no grant)"
CONFLICT: dict[int | str, dict[str, Any]] = {409: error_response("The comment changed meanwhile or was deleted")}


class CommentIn(BaseModel):
    body: str = Field(min_length=1, max_length=comments.MAX_LENGTH, description="Text; @username mentions notify")
    parent_id: int | None = Field(default=None, description="The comment this replies to (same case)")


class CommentEditIn(BaseModel):
    body: str = Field(min_length=1, max_length=comments.MAX_LENGTH)
    revision: int | None = Field(default=None, ge=1, description="The revision being edited (stale: 409)")


class CommentOut(BaseModel):
    id: int
    case_id: int
    parent_id: int | None
    author: str
    body: str | None = Field(description="None for a deleted comment (a tombstone)")
    deleted: bool
    deleted_by: str | None
    deleted_at: datetime | None
    revision: int
    created_at: datetime
    edited_at: datetime | None
    mentions: list[str] = Field(description="Usernames that were notified")
    replies: list[CommentOut] = Field(default_factory=list)


class MentionOut(BaseModel):
    username: str
    notified: bool
    reason: str = Field(description="Why not notified (empty when notified)")


class CommentPosted(BaseModel):
    comment: CommentOut
    mentions: list[MentionOut]


class RevisionOut(BaseModel):
    revision: int
    body: str | None = Field(description="None when the comment was deleted and the caller does not supervise")
    author: str
    at: datetime


def _out(c: CaseComment) -> CommentOut:
    deleted = c.deleted_at is not None
    return CommentOut(id=c.id, case_id=c.case_id, parent_id=c.parent_id, author=c.author_name,
                      body=None if deleted else c.body, deleted=deleted, deleted_by=c.deleted_by or None,
                      deleted_at=c.deleted_at, revision=c.revision, created_at=c.created_at, edited_at=c.edited_at,
                      mentions=list(c.mentions or []))


def _threads(rows: list[CaseComment]) -> list[CommentOut]:
    """Nest replies under their parents (rows come oldest first, so parents precede replies)."""
    nodes = {c.id: _out(c) for c in rows}
    roots: list[CommentOut] = []
    for c in rows:
        parent = nodes.get(c.parent_id) if c.parent_id is not None else None
        (parent.replies if parent is not None else roots).append(nodes[c.id])
    return roots


def _case(s: Any, case_id: int, p: Principal) -> Case:
    case = s.get(Case, case_id)
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    if not policy.can_see_case(s, p, case):
        raise HTTPException(403, NO_CASE)
    return case


def _comment(s: Any, comment_id: int, p: Principal) -> tuple[CaseComment, Case]:
    comment = s.get(CaseComment, comment_id)
    if comment is None:
        raise HTTPException(404, f"no comment {comment_id}")
    return comment, _case(s, comment.case_id, p)


def _audit_read(rt: Runtime, s: Any, p: Principal, request: Request, case: Case, what: str, rid: str) -> None:
    from readingroom.archive.models import Patient

    pid = s.scalar(select(Patient.patient_id).where(Patient.id == case.patient_pk)) if case.patient_pk else ""
    audit.record_soon(rt.db, actor=p.username, source=request.client.host if request.client else "",
                      action=what, resource_type="case", resource_id=rid, patient_id=pid or "")


def _posted(change: comments.CommentChange) -> CommentPosted:
    return CommentPosted(comment=_out(change.comment),
                         mentions=[MentionOut(username=m.username, notified=m.notified, reason=m.reason)
                                   for m in change.mentions])


@router.get("/cases/{case_id}/comments", response_model=list[CommentOut])
def list_comments(case_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request) -> list[CommentOut]:
    """The case's discussion as threads (replies nested), oldest first; deleted comments are tombstones."""
    with rt.db.read_session() as s:
        case = _case(s, case_id, p)
        rows = comments.case_comments(s, case_id)
        _audit_read(rt, s, p, request, case, "comment.list", str(case_id))
        return _threads(rows)


@router.post("/cases/{case_id}/comments", response_model=CommentPosted, status_code=201)
def post_comment(case_id: int, body: CommentIn, rt: RuntimeDep, p: Writer) -> CommentPosted:
    """Comment on a case; people @mentioned who may see the case are notified live, the answer lists who
    was not and why (their mention stays plain text)."""
    try:
        with rt.db.session() as s:
            case = _case(s, case_id, p)
            change = comments.add_comment(s, case, p, body.body, body.parent_id)
            posted = _posted(change)
    except comments.CommentError as exc:
        raise HTTPException(422, str(exc)) from exc
    live.publish(rt, "comment.added", {"comment_id": posted.comment.id, "parent_id": posted.comment.parent_id,
                                       "author": p.username, "mentioned": posted.comment.mentions},
                 case_id=case_id, user_ids=change.notify_ids)
    return posted


@router.put("/comments/{comment_id}", response_model=CommentPosted, responses=CONFLICT)
def edit_comment(comment_id: int, body: CommentEditIn, rt: RuntimeDep, p: Writer) -> CommentPosted:
    """Edit one's own comment; the previous text stays in its revisions. Newly mentioned people are notified."""
    try:
        with rt.db.session() as s:
            comment, case = _comment(s, comment_id, p)
            change = comments.edit_comment(s, comment, case, p, body.body, body.revision)
            posted = _posted(change)
    except comments.NotAuthor as exc:
        raise HTTPException(403, str(exc)) from exc
    except comments.CommentConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    except comments.CommentError as exc:
        raise HTTPException(422, str(exc)) from exc
    live.publish(rt, "comment.edited", {"comment_id": comment_id, "revision": posted.comment.revision,
                                        "author": p.username}, case_id=case.id, user_ids=change.notify_ids)
    return posted


@router.delete("/comments/{comment_id}", response_model=CommentOut, responses=CONFLICT)
def delete_comment(comment_id: int, rt: RuntimeDep, p: Writer) -> CommentOut:
    """Delete one's comment (or, as a supervisor of the case's site, anyone's): a tombstone stays in the thread."""
    try:
        with rt.db.session() as s:
            comment, case = _comment(s, comment_id, p)
            out = _out(comments.delete_comment(s, comment, case, p))
    except comments.NotAuthor as exc:
        raise HTTPException(403, str(exc)) from exc
    except comments.CommentConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    live.publish(rt, "comment.deleted", {"comment_id": comment_id, "by": p.username}, case_id=case.id)
    return out


@router.get("/comments/{comment_id}/revisions", response_model=list[RevisionOut])
def comment_revisions(comment_id: int, rt: RuntimeDep, p: PrincipalDep, request: Request) -> list[RevisionOut]:
    """Every revision of a comment, oldest first (a deleted comment's text only for supervisors of its site)."""
    with rt.db.read_session() as s:
        comment, case = _comment(s, comment_id, p)
        hide = comment.deleted_at is not None and not policy.at_site(p, policy.CASES_ADMIN, case.site_id)
        found = [RevisionOut(revision=r.revision, body=None if hide else r.body, author=r.author_name, at=r.at)
                 for r in comments.revisions(s, comment_id)]
        _audit_read(rt, s, p, request, case, "comment.revisions", str(case.id))
    return found
