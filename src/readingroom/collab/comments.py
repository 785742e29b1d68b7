"""Comments on a case: threads, @mentions, edits that keep every revision, deletion as a tombstone.

The discussion of a case belongs on the case, visible to exactly the people
who may see the case (``policy.can_see_case``), never in e-mail. A mention
(``@username``) notifies that person only if they may see the case; a
mention of someone who may not stays plain text, and the answer says who
was not notified and why, so the author can ask for access (a consult)
instead of assuming the message arrived. Edits are conditional on the
revision the author saw (a stale edit is refused, nothing is overwritten)
and each revision is kept; a deletion keeps the row so replies keep their
parent. Every new comment appends ``comment.added`` to the case's log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.comments_models import CaseComment, CaseCommentRevision
from readingroom.governance import policy
from readingroom.governance.auth import Principal, principal_for
from readingroom.governance.models import User
from readingroom.workflow.cases import Actor, log_event
from readingroom.workflow.models import Case

MAX_LENGTH = 10_000
#: ``@name`` not preceded by a word character (so e-mail addresses are not mentions).
MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})")


class CommentError(ValueError):
    """Bad input: empty text, a parent on another case ..."""


class CommentNotFound(LookupError):
    """No such comment."""


class NotAuthor(PermissionError):
    """Only the author edits a comment; the author or a supervisor of the case's site deletes it."""


class CommentConflict(RuntimeError):
    """The comment changed since the caller saw it, or was deleted."""


@dataclass(frozen=True)
class Mention:
    username: str
    notified: bool
    reason: str = ""


@dataclass
class CommentChange:
    """A committed-to-be change and who to tell live once it is committed."""

    comment: CaseComment
    mentions: list[Mention] = field(default_factory=list)
    #: Accounts to tell live (mentioned and allowed to see the case).
    notify_ids: list[int] = field(default_factory=list)


def parse_mentions(body: str) -> list[str]:
    """The distinct usernames mentioned, in order of first mention (a trailing full stop is punctuation)."""
    seen: dict[str, None] = {}
    for match in MENTION.finditer(body):
        seen.setdefault(match.group(1).rstrip(".-"), None)
    return list(seen)


def _resolve(session: Session, case: Case, names: list[str], author_id: int | None) -> tuple[list[Mention],
                                                                                               list[int]]:
    mentions: list[Mention] = []
    ids: list[int] = []
    for name in names:
        user = session.scalars(select(User).where(User.username == name)).first()
        if user is None:
            mentions.append(Mention(name, False, "no such user"))
        elif not user.active:
            mentions.append(Mention(name, False, "account is inactive"))
        elif user.id == author_id:
            mentions.append(Mention(name, False, "is the author"))
        elif not policy.can_see_case(session, principal_for(session, user), case):
            mentions.append(Mention(name, False, "may not see this case (ask for a consult or a grant)"))
        else:
            mentions.append(Mention(name, True))
            ids.append(user.id)
    return mentions, ids


def _clean(body: str) -> str:
    text = body.strip()
    if not text:
        raise CommentError("the comment is empty")
    if len(text) > MAX_LENGTH:
        raise CommentError(f"the comment is longer than {MAX_LENGTH} characters")
    return text


def add_comment(session: Session, case: Case, principal: Principal, body: str,
                parent_id: int | None = None) -> CommentChange:
    """A new comment (a reply when ``parent_id`` names a comment of the same case)."""
    text = _clean(body)
    if parent_id is not None:
        parent = session.get(CaseComment, parent_id)
        if parent is None or parent.case_id != case.id:
            raise CommentError(f"comment {parent_id} is not a comment of case {case.id}")
    now = utcnow()
    mentions, ids = _resolve(session, case, parse_mentions(text), principal.user_id)
    comment = CaseComment(case_id=case.id, parent_id=parent_id, author_id=principal.user_id,
                          author_name=principal.username, body=text, revision=1, created_at=now, deleted_by="",
                          mentions=[m.username for m in mentions if m.notified])
    session.add(comment)
    session.flush()
    session.execute(insert(CaseCommentRevision).values(comment_id=comment.id, revision=1, body=text,
                                                       author_name=principal.username, at=now))
    log_event(session, case.id, "comment.added", Actor(principal.username, principal.user_id), case.state,
              case.state, {"comment_id": comment.id, "parent_id": parent_id,
                           "mentioned": [m.username for m in mentions if m.notified]}, now)
    return CommentChange(comment, mentions, ids)


def get_comment(session: Session, comment_id: int) -> CaseComment:
    comment = session.get(CaseComment, comment_id)
    if comment is None:
        raise CommentNotFound(f"no comment {comment_id}")
    return comment


def edit_comment(session: Session, comment: CaseComment, case: Case, principal: Principal, body: str,
                 expected_revision: int | None = None) -> CommentChange:
    """A new revision by the author; only people newly mentioned are notified."""
    text = _clean(body)
    if comment.author_id != principal.user_id:
        raise NotAuthor("only the author may edit a comment")
    if comment.deleted_at is not None:
        raise CommentConflict(f"comment {comment.id} was deleted")
    seen = comment.revision if expected_revision is None else expected_revision
    now = utcnow()
    changed = session.execute(
        update(CaseComment).where(CaseComment.id == comment.id, CaseComment.revision == seen,
                                  CaseComment.deleted_at.is_(None))
        .values(body=text, revision=seen + 1, edited_at=now).execution_options(synchronize_session=False))
    if changed.rowcount != 1:
        session.refresh(comment)
        raise CommentConflict(f"comment {comment.id} is at revision {comment.revision}, not {seen}; "
                              "reload it and edit again")
    session.execute(insert(CaseCommentRevision).values(comment_id=comment.id, revision=seen + 1, body=text,
                                                       author_name=principal.username, at=now))
    already = set(comment.mentions or [])
    mentions, ids = _resolve(session, case, [n for n in parse_mentions(text) if n not in already],
                             principal.user_id)
    notified = [m.username for m in mentions if m.notified]
    if notified:
        session.execute(update(CaseComment).where(CaseComment.id == comment.id)
                        .values(mentions=[*already, *notified]).execution_options(synchronize_session=False))
    log_event(session, case.id, "comment.edited", Actor(principal.username, principal.user_id), case.state,
              case.state, {"comment_id": comment.id, "revision": seen + 1, "mentioned": notified}, now)
    session.refresh(comment)
    return CommentChange(comment, mentions, ids)


def delete_comment(session: Session, comment: CaseComment, case: Case, principal: Principal) -> CaseComment:
    """Blank the comment and keep a tombstone (its revisions stay for supervisors and the audit trail)."""
    supervisor = policy.at_site(principal, policy.CASES_ADMIN, case.site_id)
    if comment.author_id != principal.user_id and not supervisor:
        raise NotAuthor("only the author or a supervisor of the case's site may delete a comment")
    now = utcnow()
    gone = session.execute(
        update(CaseComment).where(CaseComment.id == comment.id, CaseComment.deleted_at.is_(None))
        .values(body="", deleted_at=now, deleted_by=principal.username).execution_options(synchronize_session=False))
    if gone.rowcount != 1:
        raise CommentConflict(f"comment {comment.id} was already deleted")
    log_event(session, case.id, "comment.deleted", Actor(principal.username, principal.user_id), case.state,
              case.state, {"comment_id": comment.id}, now)
    session.refresh(comment)
    return comment


def case_comments(session: Session, case_id: int) -> list[CaseComment]:
    """Every comment of the case (tombstones included), oldest first."""
    return list(session.scalars(select(CaseComment).where(CaseComment.case_id == case_id)
                                .order_by(CaseComment.created_at, CaseComment.id)))


def revisions(session: Session, comment_id: int) -> list[CaseCommentRevision]:
    return list(session.scalars(select(CaseCommentRevision).where(CaseCommentRevision.comment_id == comment_id)
                                .order_by(CaseCommentRevision.revision)))
