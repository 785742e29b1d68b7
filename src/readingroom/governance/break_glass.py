"""Break-the-glass: emergency access to a study outside one's relationships, and its review.

A clinician who must see a study the policy would hide (a patient arriving
unconscious at another hospital of the network) states a reason and gets an
access grant at once: no approval step stands between a doctor and an
emergency. The price is accountability: the grant expires after
``break_glass_minutes``, the audit record is flagged, and the grant stays
``pending`` until an auditor reviews it (and may revoke it). Nobody reviews
their own. Callers drop the policy's cached study decisions after the
transaction commits (``policy.forget_decisions``), so the new grant (or its
revocation) takes effect on the next request.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.auth import Principal
from readingroom.governance.models import AccessGrant, User
from readingroom.workflow.models import Case

KIND = "break_glass"
MIN_REASON_CHARS = 20
MIN_REASON_WORDS = 3
MAX_TEXT_CHARS = 2000
REVIEW_STATES = ("pending", "reviewed")


class AccessError(Exception):
    """A refused request; ``kind`` is invalid | not_found | forbidden | conflict (the edge maps it to a status)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _plain(value: str, name: str) -> str:
    """One line of printable text (whitespace runs become one space) for a reviewer to read."""
    text = " ".join(value.split())
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise AccessError("invalid", f"the {name} contains control characters")
    if len(text) > MAX_TEXT_CHARS:
        raise AccessError("invalid", f"the {name} is longer than {MAX_TEXT_CHARS} characters")
    return text


def clean_reason(reason: str) -> str:
    """The reason with whitespace normalised, or AccessError when it cannot explain anything.

    At least 20 characters and three words: "emergency" or "asdf" tells a
    reviewer nothing, "unconscious patient in ED, prior CT needed" does.
    """
    text = _plain(reason, "reason")
    words = re.findall(r"\w{2,}", text)
    if len(text) < MIN_REASON_CHARS or len(words) < MIN_REASON_WORDS or len(set(text.lower()) - {" "}) < 5:
        raise AccessError("invalid", f"state why you need access (at least {MIN_REASON_CHARS} characters and "
                                     f"{MIN_REASON_WORDS} words, e.g. 'unconscious patient in ED, prior CT needed')")
    return text


@dataclass(frozen=True)
class Target:
    study_uid: str
    case_id: int | None
    patient_id: str


def _target(s: Session, study_uid: str | None, case_id: int | None) -> Target:
    if bool(study_uid) == (case_id is not None):
        raise AccessError("invalid", "give exactly one of study_uid or case_id")
    if case_id is not None:
        case = s.execute(select(Case.id, Case.study_pk).where(Case.id == case_id)).first()
        if case is None:
            raise AccessError("not_found", f"case {case_id} not found")
        row = s.execute(select(Study.study_uid, Patient.patient_id).join(Patient, Patient.id == Study.patient_pk)
                        .where(Study.id == case.study_pk)).first() if case.study_pk is not None else None
        return Target(row.study_uid if row else "", case_id, row.patient_id if row else "")
    row = s.execute(select(Study.study_uid, Patient.patient_id).join(Patient, Patient.id == Study.patient_pk)
                    .where(Study.study_uid == study_uid)).first()
    if row is None:
        raise AccessError("not_found", f"study {study_uid} not found")
    return Target(row.study_uid, None, row.patient_id)


def break_glass(s: Session, principal: Principal, *, study_uid: str | None = None, case_id: int | None = None,
                reason: str, minutes: float, source: str = "") -> AccessGrant:
    """Grant ``principal`` time-limited access (with the patient's priors) and flag it for review."""
    text = clean_reason(reason)
    target = _target(s, study_uid, case_id)
    now = utcnow()
    grant = AccessGrant(user_id=principal.user_id, kind=KIND, case_id=target.case_id, study_uid=target.study_uid,
                        include_priors=True, reason=text, granted_by=principal.username, created_at=now,
                        expires_at=now + timedelta(minutes=minutes), review_state="pending")
    s.add(grant)
    s.flush()
    audit.record(s, actor=principal.username, source=source, action="access.break_glass",
                 resource_type="case" if target.case_id is not None else "study",
                 resource_id=str(target.case_id) if target.case_id is not None else target.study_uid,
                 patient_id=target.patient_id, reason=text, flagged=True,
                 detail={"grant_id": grant.id, "study_uid": target.study_uid, "case_id": target.case_id,
                         "role": principal.role, "expires_at": grant.expires_at.isoformat() if grant.expires_at
                         else None, "include_priors": True})
    s.flush()
    return grant


@dataclass(frozen=True)
class Review:
    """One grant awaiting (or past) review, with the grantee's name."""

    grant: AccessGrant
    username: str


def reviews(s: Session, state: str = "pending", limit: int = 100) -> list[Review]:
    """Break-the-glass grants in ``state``, oldest first (the longest-waiting review on top)."""
    if state not in REVIEW_STATES:
        raise AccessError("invalid", f"state must be one of {', '.join(REVIEW_STATES)}")
    rows = s.execute(select(AccessGrant, User.username).join(User, User.id == AccessGrant.user_id)
                     .where(AccessGrant.review_state == state, AccessGrant.kind == KIND)
                     .order_by(AccessGrant.created_at, AccessGrant.id).limit(limit)).all()
    return [Review(grant, username) for grant, username in rows]


def close_review(s: Session, reviewer: Principal, grant_id: int, *, note: str, revoke: bool = False,
                 source: str = "") -> Review:
    """Mark a pending grant reviewed (optionally revoking it), exactly once."""
    text = _plain(note, "note")
    if not text:
        raise AccessError("invalid", "a review needs a note (what was checked, what was found)")
    found = s.execute(select(AccessGrant, User.username).join(User, User.id == AccessGrant.user_id)
                      .where(AccessGrant.id == grant_id)).first()
    if found is None or found[0].kind != KIND:
        raise AccessError("not_found", f"break-the-glass grant {grant_id} not found")
    grant, username = found
    if grant.user_id == reviewer.user_id:
        raise AccessError("forbidden", "nobody reviews their own break-the-glass access")
    now = utcnow()
    values: dict[str, object] = {"review_state": "reviewed", "reviewed_by": reviewer.username, "reviewed_at": now,
                                 "review_note": text}
    if revoke and grant.revoked_at is None:
        values["revoked_at"] = now
    # Conditional update: two auditors closing the same review at once cannot both succeed.
    done = s.execute(update(AccessGrant).where(AccessGrant.id == grant_id, AccessGrant.review_state == "pending")
                     .values(**values).execution_options(synchronize_session=False))
    if done.rowcount != 1:
        raise AccessError("conflict", f"grant {grant_id} was already reviewed")
    s.refresh(grant)
    patient_id = _patient_of(s, grant.study_uid)
    audit.record(s, actor=reviewer.username, source=source, action="access.review", resource_type="access_grant",
                 resource_id=str(grant_id), patient_id=patient_id, reason=text,
                 detail={"grantee": username, "study_uid": grant.study_uid, "case_id": grant.case_id,
                         "revoked": "revoked_at" in values})
    return Review(grant, username)


def _patient_of(s: Session, study_uid: str) -> str:
    if not study_uid:
        return ""
    return s.scalar(select(Patient.patient_id).join(Study, Study.patient_pk == Patient.id)
                    .where(Study.study_uid == study_uid)) or ""


def is_active(grant: AccessGrant, now: datetime | None = None) -> bool:
    now = now or utcnow()
    return grant.revoked_at is None and (grant.expires_at is None or grant.expires_at > now)
