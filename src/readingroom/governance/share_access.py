"""Opening a share link: the per-request checks, visits, passcodes and their cookies.

Every request reads the link's row again (revocation is immediate). A
request without a valid visit cookie takes one of ``max_accesses`` with a
conditional UPDATE (two racing opens cannot both take the last one) in the
same transaction as its audit record. Cookies are signed with the link's own
``uid_salt``, so a cookie of one link is worthless for any other.
"""

from __future__ import annotations

from typing import Any

from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.models import ShareLink
from readingroom.governance.shares import (
    GONE_REASONS,
    PASSCODES,
    SECRET_PREFIX,
    UNLOCK_SECONDS,
    VISIT_SECONDS,
    PasscodeRequired,
    PasscodeWrong,
    ShareError,
    ShareGone,
    ShareInvalid,
    ShareNotFound,
    ShareState,
    actor_for,
    status_of,
    token_hash,
)
from readingroom.runtime import Runtime


def _serializer(share: ShareLink | ShareState, purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(share.uid_salt, salt=f"readingroom.share.{purpose}")


def sign_cookie(share: ShareLink | ShareState, purpose: str) -> str:
    """A cookie value proving ``purpose`` ('unlock' or 'visit') for this link only."""
    return _serializer(share, purpose).dumps({"share": share.id})


def cookie_valid(share: ShareLink | ShareState, purpose: str, value: str | None, max_age: int) -> bool:
    if not value:
        return False
    try:
        data = _serializer(share, purpose).loads(value, max_age=max_age)
    except BadSignature:
        return False
    return isinstance(data, dict) and data.get("share") == share.id


def _state(share: ShareLink) -> ShareState:
    return ShareState(id=share.id, prefix=share.prefix, study_uid=share.study_uid, mode=share.mode,
                      deidentify=share.deidentify, uid_salt=share.uid_salt,
                      has_passcode=share.passcode_hash is not None, expires_at=share.expires_at,
                      access_count=share.access_count, max_accesses=share.max_accesses)


def _lookup(session: Session, secret: str) -> ShareLink:
    if not secret.startswith(SECRET_PREFIX) or len(secret) > 128:
        raise ShareNotFound("unknown share link")
    share = session.scalars(select(ShareLink).where(ShareLink.token_hash == token_hash(secret))).first()
    if share is None:
        raise ShareNotFound("unknown share link")
    return share


def _usable(share: ShareLink, attempts: int, *, counting: bool) -> None:
    status = status_of(share, attempts)
    if status == "used_up" and not counting:
        return  # an ongoing visit may finish once the last access was taken
    if status != "active":
        raise ShareGone(GONE_REASONS[status])


def open_share(rt: Runtime, secret: str, *, unlock_cookie: str | None, visit_cookie: str | None,
               what: str, source: str = "") -> tuple[ShareState, bool]:
    """Check a presented link for one request; returns its state and whether this request began a new visit.

    Raises ShareNotFound, ShareGone, PasscodeRequired. A request without a
    valid visit cookie takes one access (conditional UPDATE) in the same
    transaction as its audit record. Denials are audited by the caller
    (``audit_denial``), which knows the request.
    """
    attempts = rt.settings.share_passcode_attempts
    with rt.db.read_session() as s:
        share = _lookup(s, secret)
    visiting = cookie_valid(share, "visit", visit_cookie, VISIT_SECONDS)
    _usable(share, attempts, counting=not visiting)
    if share.passcode_hash and not cookie_valid(share, "unlock", unlock_cookie, UNLOCK_SECONDS):
        raise PasscodeRequired("this share link needs its passcode")
    if visiting:
        return _state(share), False
    now = utcnow()
    with rt.db.session() as s:
        taken = s.execute(
            update(ShareLink)
            .where(ShareLink.id == share.id, ShareLink.revoked_at.is_(None), ShareLink.expires_at > now,
                   or_(ShareLink.max_accesses.is_(None), ShareLink.access_count < ShareLink.max_accesses),
                   or_(ShareLink.passcode_hash.is_(None), ShareLink.failed_passcodes < attempts))
            .values(access_count=ShareLink.access_count + 1, last_access_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        share = s.get(ShareLink, share.id, populate_existing=True)
        assert share is not None
        if taken != 1:
            reason = GONE_REASONS.get(status_of(share, attempts), "this share link can no longer be used")
        else:
            audit.record(s, actor=f"share:{share.prefix}", source=source, action="share.open",
                         resource_type="study", resource_id=share.study_uid,
                         patient_id=_patient_id(s, share.study_uid),
                         detail={"share_id": share.id, "access": share.access_count, "what": what,
                                 "deidentified": share.deidentify})
            return _state(share), True
    raise ShareGone(reason)


def _patient_id(session: Session, study_uid: str) -> str:
    return session.scalar(select(Patient.patient_id).join(Study, Study.patient_pk == Patient.id)
                          .where(Study.study_uid == study_uid)) or ""


def unlock(rt: Runtime, secret: str, passcode: str, *, source: str = "") -> ShareState:
    """Check a passcode; a wrong one counts towards locking the link (both audited).

    Raises ShareNotFound, ShareGone (also when this attempt locked it),
    PasscodeWrong; ShareInvalid for a link without passcode.
    """
    attempts = rt.settings.share_passcode_attempts
    with rt.db.read_session() as s:
        share = _lookup(s, secret)
    _usable(share, attempts, counting=False)
    if not share.passcode_hash:
        raise ShareInvalid("this share link has no passcode")
    try:
        ok = PASSCODES.verify(share.passcode_hash, passcode)
    except (VerificationError, InvalidHashError):
        ok = False
    with rt.db.session() as s:
        if ok:
            audit.record(s, actor=f"share:{share.prefix}", source=source, action="share.unlock",
                         resource_type="study", resource_id=share.study_uid, detail={"share_id": share.id})
            return _state(share)
        s.execute(update(ShareLink).where(ShareLink.id == share.id)
                  .values(failed_passcodes=ShareLink.failed_passcodes + 1)
                  .execution_options(synchronize_session=False))
        failed = s.scalar(select(ShareLink.failed_passcodes).where(ShareLink.id == share.id)) or 0
        locked = failed >= attempts
        row = audit.record(s, actor=f"share:{share.prefix}", source=source, action="share.unlock",
                           resource_type="study", resource_id=share.study_uid, outcome="failure",
                           reason="wrong passcode" + ("; link locked" if locked else ""),
                           detail={"share_id": share.id, "failed_passcodes": failed})
        row.flagged = locked  # a locked link is worth an auditor's look (guessing?)
    if locked:
        raise ShareGone(GONE_REASONS["locked"], audited=True)
    raise PasscodeWrong(f"wrong passcode ({attempts - failed} attempt(s) left before the link locks)", audited=True)


def audit_denial(rt: Runtime, secret: str, error: ShareError, *, action: str, source: str = "",
                 detail: dict[str, Any] | None = None) -> None:
    """Queue the audit record of a refused public request (unknown links included, by prefix only)."""
    audit.record_soon(rt.db, actor=actor_for(secret), source=source, action=action, resource_type="share",
                      resource_id=secret[:10], outcome="failure", reason=error.reason, detail=detail or {})
