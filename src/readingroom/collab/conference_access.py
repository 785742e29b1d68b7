"""Attendance as access: time-boxed grants of a conference's cases to its attendees.

The grants are ordinary ``AccessGrant`` rows (kind ``conference``, priors
included), so QIDO, WADO and the case routes honour them without knowing
about conferences. They exist only while the session's window is open
(``before`` the start until ``after`` the scheduled end) and expire at its
end; ``sync_grants`` runs on every change of a session and, from the
scheduler, ``open_windows`` creates the grants of sessions whose window has
just opened. Each grant's reason names its conference (``conference #ID: ...``)
so the session's grants can be found and never duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.conferences_models import Conference, ConferenceAttendee, ConferenceCase
from readingroom.governance import policy
from readingroom.governance.models import AccessGrant, User

KIND = "conference"


@dataclass(frozen=True)
class AccessWindow:
    """How long before the start and after the scheduled end attendees may open the cases."""

    before: timedelta
    after: timedelta

    @classmethod
    def from_settings(cls, settings: Any) -> AccessWindow:
        return cls(before=timedelta(hours=settings.conference_access_hours_before),
                   after=timedelta(hours=settings.conference_access_hours_after))

    def opens(self, conf: Conference) -> datetime:
        return conf.scheduled_start - self.before

    def closes(self, conf: Conference) -> datetime:
        return conf.scheduled_end + self.after


def reason_prefix(conference_id: int) -> str:
    return f"conference #{conference_id}:"


def sync_grants(session: Session, conf: Conference, window: AccessWindow, now: datetime | None = None) -> int:
    """Give every attendee a grant to every listed case while the window is open; returns how many were made.

    Callers drop the policy's cached decisions after committing (``policy.forget_decisions``).
    """
    now = now or utcnow()
    if not window.opens(conf) <= now < window.closes(conf):
        return 0
    prefix = reason_prefix(conf.id)
    granted = select(AccessGrant.user_id, AccessGrant.case_id).where(
        AccessGrant.kind == KIND, AccessGrant.reason.startswith(prefix, autoescape=True),
        AccessGrant.revoked_at.is_(None))
    have = {(row.user_id, row.case_id) for row in session.execute(granted)}
    users = session.scalars(select(ConferenceAttendee.user_id).where(ConferenceAttendee.conference_id == conf.id)).all()
    cases = session.scalars(select(ConferenceCase.case_id).where(ConferenceCase.conference_id == conf.id)).all()
    organiser = session.scalar(select(User.username).where(User.id == conf.created_by)) or ""
    made = 0
    for user_id in users:
        for case_id in cases:
            if (user_id, case_id) in have:
                continue
            session.add(AccessGrant(user_id=user_id, kind=KIND, case_id=case_id, study_uid="", include_priors=True,
                                    reason=f"{prefix} {conf.title}"[:2000], granted_by=organiser, created_at=now,
                                    expires_at=window.closes(conf)))
            made += 1
    if made:
        session.flush()
    return made


def open_windows(rt: Any, now: datetime | None = None) -> int:
    """Scheduler job: create the grants of every session whose access window is open; returns grants made."""
    now = now or utcnow()
    window = AccessWindow.from_settings(rt.settings)
    made = 0
    with rt.db.session() as s:
        confs = s.scalars(select(Conference).where(
            Conference.scheduled_start <= now + window.before,
            Conference.scheduled_end > now - window.after,
            Conference.id.in_(select(ConferenceCase.conference_id)))).all()
        for conf in confs:
            made += sync_grants(s, conf, window, now)
    if made:
        policy.forget_decisions()
    return made
