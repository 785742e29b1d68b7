"""Conferences (tumour boards, MDT meetings): a session, its ordered case list, attendance and decisions.

A board discusses cases that most attendees would otherwise never see: a
surgeon of another hospital, an oncologist, an external pathologist. So
attendance is the relationship: every attendee gets a time-boxed access
grant (kind ``conference``, priors included) to exactly the session's cases,
valid from ``conference_access_hours_before`` the start until
``conference_access_hours_after`` the scheduled end (``conference_access``
creates them when that window opens, so adding a case or a person to a
session next month gives nothing today). The chair records what was
presented and decided; each step is a case event (``conference.listed``,
``conference.presented``, ``conference.decision``) written in the same
transaction as the row, and audited through the event log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.collab.conference_access import AccessWindow, sync_grants
from readingroom.collab.conferences_models import Conference, ConferenceAttendee, ConferenceCase
from readingroom.collab.refusals import Refused
from readingroom.governance import audit, policy
from readingroom.governance.auth import Principal
from readingroom.governance.models import Site, User
from readingroom.workflow.cases import Actor, log_event
from readingroom.workflow.models import Case

#: How early attendees may check in before the scheduled start.
CHECK_IN_EARLY = timedelta(hours=1)
#: Longest session: a board that runs for days is a mistyped date.
MAX_SESSION = timedelta(hours=24)


class ConferenceKind(StrEnum):
    TUMOUR_BOARD = "tumour_board"
    MDT = "mdt"
    OTHER = "other"


class Outcome(StrEnum):
    """What a board decided for a case (the free text says the rest)."""

    SURGERY = "surgery"
    SYSTEMIC_THERAPY = "systemic_therapy"
    RADIOTHERAPY = "radiotherapy"
    CHEMORADIOTHERAPY = "chemoradiotherapy"
    SURVEILLANCE = "surveillance"
    FURTHER_IMAGING = "further_imaging"
    BIOPSY = "biopsy"
    BEST_SUPPORTIVE_CARE = "best_supportive_care"
    NO_CHANGE = "no_change"
    DEFERRED = "deferred"
    OTHER = "other"


@dataclass(frozen=True)
class NewConference:
    title: str
    site_id: int
    scheduled_start: datetime
    scheduled_end: datetime
    kind: ConferenceKind = ConferenceKind.TUMOUR_BOARD
    chair: str | None = None


def _actor(p: Principal) -> Actor:
    return Actor(name=p.username, user_id=p.user_id)


def _active_user(session: Session, username: str) -> User:
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None or not user.active:
        raise Refused("invalid", f"no active user {username!r}")
    return user


def create(session: Session, p: Principal, new: NewConference, window: AccessWindow) -> Conference:
    """A session at a site where the caller may manage conferences; the chair (default: the caller) attends."""
    if not new.title.strip():
        raise Refused("invalid", "the title is empty")
    if session.get(Site, new.site_id) is None:
        raise Refused("invalid", f"no site {new.site_id}")
    if not policy.at_site(p, policy.CONFERENCES_MANAGE, new.site_id):
        raise Refused("forbidden", "you may not organise conferences at this site")
    if new.scheduled_end <= new.scheduled_start:
        raise Refused("invalid", "the session must end after it starts")
    if new.scheduled_end - new.scheduled_start > MAX_SESSION:
        raise Refused("invalid", f"a session lasts at most {MAX_SESSION.total_seconds() / 3600:g} hours")
    chair = _active_user(session, new.chair) if new.chair else session.get(User, p.user_id)
    assert chair is not None
    now = utcnow()
    conf = Conference(title=new.title.strip(), kind=new.kind.value, site_id=new.site_id,
                      scheduled_start=new.scheduled_start, scheduled_end=new.scheduled_end, chair_id=chair.id,
                      created_by=p.user_id, created_at=now)
    session.add(conf)
    session.flush()
    session.add(ConferenceAttendee(conference_id=conf.id, user_id=chair.id, external=chair.site_id != new.site_id,
                                   added_by=p.username, added_at=now))
    audit.record(session, actor=p.username, action="conference.create", resource_type="conference",
                 resource_id=str(conf.id), detail={"title": conf.title, "site_id": conf.site_id,
                                                   "start": conf.scheduled_start.isoformat(), "chair": chair.username})
    sync_grants(session, conf, window, now)
    return conf


def attendee_ids(session: Session, conference_id: int) -> list[int]:
    return list(session.scalars(select(ConferenceAttendee.user_id)
                                .where(ConferenceAttendee.conference_id == conference_id)))


def may_view(session: Session, p: Principal, conf: Conference) -> bool:
    """Attendees, the organiser and the case supervisors of the conference's site."""
    if p.user_id in (conf.chair_id, conf.created_by) or policy.at_site(p, policy.CASES_ADMIN, conf.site_id):
        return True
    return p.user_id in attendee_ids(session, conf.id)


def get(session: Session, p: Principal, conference_id: int) -> Conference:
    """The conference if the caller may see it; ``not_found`` otherwise (others must not learn it exists)."""
    conf = session.get(Conference, conference_id)
    if conf is None or not may_view(session, p, conf):
        raise Refused("not_found", f"no conference {conference_id}")
    return conf


def _manage(session: Session, p: Principal, conference_id: int) -> Conference:
    conf = get(session, p, conference_id)
    if p.user_id not in (conf.chair_id, conf.created_by) and not policy.at_site(p, policy.CASES_ADMIN, conf.site_id):
        raise Refused("forbidden", "only the organiser, the chair or a supervisor of the site changes the session")
    return conf


def _chair(session: Session, p: Principal, conference_id: int) -> Conference:
    conf = get(session, p, conference_id)
    if p.user_id != conf.chair_id:
        raise Refused("forbidden", "only the chair records what the board presented and decided")
    return conf


def visible_list(session: Session, p: Principal, *, since: datetime | None = None) -> list[Conference]:
    """Conferences the caller attends, organised or supervises, by start time."""
    conds = [Conference.chair_id == p.user_id, Conference.created_by == p.user_id,
             Conference.id.in_(select(ConferenceAttendee.conference_id)
                               .where(ConferenceAttendee.user_id == p.user_id))]
    sites = policy.sites_where(p, policy.CASES_ADMIN)
    q = select(Conference)
    if sites is not None:
        conds.append(Conference.site_id.in_(sorted(sites)))
        q = q.where(or_(*conds))
    if since is not None:
        q = q.where(Conference.scheduled_end >= since)
    return list(session.scalars(q.order_by(Conference.scheduled_start, Conference.id).limit(500)))


def add_case(session: Session, p: Principal, conference_id: int, case_id: int, question: str,
             window: AccessWindow) -> ConferenceCase:
    """Put a case the organiser can see at the end of the list, with the question for the board."""
    conf = _manage(session, p, conference_id)
    question = question.strip()
    if not question:
        raise Refused("invalid", "say what the board should answer (the question is empty)")
    case = session.get(Case, case_id)
    if case is None or not policy.can_see_case(session, p, case):
        raise Refused("not_found", f"no case {case_id}")
    if session.scalar(select(ConferenceCase.id).where(ConferenceCase.conference_id == conf.id,
                                                      ConferenceCase.case_id == case_id)):
        raise Refused("conflict", f"case {case_id} is already on this session's list")
    position = (session.scalar(select(func.max(ConferenceCase.position))
                               .where(ConferenceCase.conference_id == conf.id)) or 0) + 1
    now = utcnow()
    item = ConferenceCase(conference_id=conf.id, case_id=case_id, position=position, question=question,
                          added_by=p.username, added_at=now)
    session.add(item)
    session.flush()
    log_event(session, case_id, "conference.listed", _actor(p), case.state, case.state,
              {"conference_id": conf.id, "title": conf.title, "position": position,
               "scheduled_start": conf.scheduled_start.isoformat()}, now)
    sync_grants(session, conf, window, now)
    return item


def add_attendee(session: Session, p: Principal, conference_id: int, username: str,
                 window: AccessWindow) -> ConferenceAttendee:
    """Invite a person (of any site or organisation: ``external`` when not of the conference's site)."""
    conf = _manage(session, p, conference_id)
    user = _active_user(session, username)
    if session.scalar(select(ConferenceAttendee.id).where(ConferenceAttendee.conference_id == conf.id,
                                                          ConferenceAttendee.user_id == user.id)):
        raise Refused("conflict", f"{username} already attends this session")
    now = utcnow()
    row = ConferenceAttendee(conference_id=conf.id, user_id=user.id, external=user.site_id != conf.site_id,
                             added_by=p.username, added_at=now)
    session.add(row)
    session.flush()
    audit.record(session, actor=p.username, action="conference.attendee_add", resource_type="conference",
                 resource_id=str(conf.id), detail={"user": username, "external": row.external})
    sync_grants(session, conf, window, now)
    return row


def check_in(session: Session, p: Principal, conference_id: int, window: AccessWindow) -> ConferenceAttendee:
    """Record that the caller is present (the first check-in counts; later ones change nothing)."""
    conf = get(session, p, conference_id)
    row = session.scalars(select(ConferenceAttendee).where(ConferenceAttendee.conference_id == conf.id,
                                                           ConferenceAttendee.user_id == p.user_id)).first()
    if row is None:
        raise Refused("forbidden", "you are not on this session's attendee list")
    now = utcnow()
    if not conf.scheduled_start - CHECK_IN_EARLY <= now <= conf.scheduled_end + window.after:
        raise Refused("conflict", f"check-in opens an hour before the session "
                                  f"({conf.scheduled_start.isoformat()}) and closes after it")
    if row.checked_in_at is None:
        row.checked_in_at = now
        audit.record(session, actor=p.username, action="conference.check_in", resource_type="conference",
                     resource_id=str(conf.id))
    return row


def _listed(session: Session, conf: Conference, case_id: int) -> ConferenceCase:
    item = session.scalars(select(ConferenceCase).where(ConferenceCase.conference_id == conf.id,
                                                        ConferenceCase.case_id == case_id)).first()
    if item is None:
        raise Refused("not_found", f"case {case_id} is not on this session's list")
    return item


def _session_started(conf: Conference, what: str) -> None:
    if utcnow() < conf.scheduled_start - CHECK_IN_EARLY:
        raise Refused("conflict", f"the session has not started: {what} from {conf.scheduled_start.isoformat()}")


def mark_presented(session: Session, p: Principal, conference_id: int, case_id: int) -> ConferenceCase:
    """The chair marks a case as presented (once; later calls return the first time)."""
    conf = _chair(session, p, conference_id)
    item = _listed(session, conf, case_id)
    _session_started(conf, "cases are presented")
    if item.presented_at is None:
        _presented(session, p, conf, item)
    return item


def _presented(session: Session, p: Principal, conf: Conference, item: ConferenceCase) -> None:
    now = utcnow()
    item.presented_at = now
    state = session.scalar(select(Case.state).where(Case.id == item.case_id)) or ""
    log_event(session, item.case_id, "conference.presented", _actor(p), state, state,
              {"conference_id": conf.id, "title": conf.title, "position": item.position}, now)


def record_decision(session: Session, p: Principal, conference_id: int, case_id: int, text: str,
                    outcome: Outcome) -> ConferenceCase:
    """The chair records the board's decision; a revision is a new event and replaces the row's decision."""
    conf = _chair(session, p, conference_id)
    item = _listed(session, conf, case_id)
    text = text.strip()
    if not text:
        raise Refused("invalid", "the decision text is empty")
    _session_started(conf, "decisions are recorded")
    if item.presented_at is None:
        _presented(session, p, conf, item)
    revised = item.decided_at is not None
    now = utcnow()
    item.decision_text, item.decision_outcome, item.decided_by, item.decided_at = text, outcome.value, p.username, now
    state = session.scalar(select(Case.state).where(Case.id == item.case_id)) or ""
    log_event(session, case_id, "conference.decision", _actor(p), state, state,
              {"conference_id": conf.id, "outcome": outcome.value, "text": text, "revised": revised}, now)
    return item


def cases_of(session: Session, conference_id: int) -> list[tuple[ConferenceCase, Case]]:
    """The session's shared list, in presentation order."""
    q = (select(ConferenceCase, Case).join(Case, Case.id == ConferenceCase.case_id)
         .where(ConferenceCase.conference_id == conference_id).order_by(ConferenceCase.position))
    return [(row[0], row[1]) for row in session.execute(q)]


def attendees_of(session: Session, conference_id: int) -> list[tuple[ConferenceAttendee, User]]:
    q = (select(ConferenceAttendee, User).join(User, User.id == ConferenceAttendee.user_id)
         .where(ConferenceAttendee.conference_id == conference_id).order_by(ConferenceAttendee.id))
    return [(row[0], row[1]) for row in session.execute(q)]
