"""Share links: capability URLs to one study, scoped, expiring, revocable (principle 5).

A link is ``<base>/share/rs_<secret>``. Only the SHA-256 of the secret is
stored (like API tokens), so the database cannot hand out working links; an
optional passcode is Argon2-hashed. Each link also gets a random
``uid_salt``: it keys the consistent UID remapping of a de-identified share
and signs the link's cookies, so a cookie of one link is worthless for any
other and nothing here needs a process-wide secret.

Who may create a link: a holder of ``shares.create`` who may read the study.
Data residency: a study of a site with a ``residency_tag`` goes only to a
recipient in that region (de-identified shares may cross regions when
``share_deidentified_crosses_residency`` allows it).

Opening a link is a *visit*: the first request without a valid visit cookie
counts against ``max_accesses`` (one conditional UPDATE, so two racing opens
cannot both take the last one) and gets a cookie for the page's images and
download. Every check reads the row again, so revoking is immediate.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.clock import utcnow
from readingroom.governance import audit, policy
from readingroom.governance.auth import Principal
from readingroom.governance.models import ShareLink, Site
from readingroom.runtime import Runtime

SECRET_PREFIX = "rs_"
MODES = ("view", "download")
#: How long a correct passcode keeps a browser unlocked, and how long one counted visit lasts.
UNLOCK_SECONDS = 30 * 60
VISIT_SECONDS = 60 * 60
PASSCODES = PasswordHasher()


class ShareError(Exception):
    """A share operation refused; ``kind`` tells the edge which status to answer, the message says why."""

    kind = "invalid"

    def __init__(self, reason: str, *, audited: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: True when the refusal was already written to the audit trail (with the state change it caused).
        self.audited = audited


class ShareInvalid(ShareError):
    kind = "invalid"


class ShareForbidden(ShareError):
    kind = "forbidden"


class ShareNotFound(ShareError):
    kind = "not_found"


class ShareConflict(ShareError):
    kind = "conflict"


class ShareGone(ShareError):
    """Expired, revoked, locked or used up: the link will never work again."""

    kind = "gone"


class PasscodeRequired(ShareError):
    kind = "passcode_required"


class PasscodeWrong(ShareError):
    kind = "passcode_wrong"


@dataclass(frozen=True)
class ShareRequest:
    """What a creator asks for (validated by ``create_share``)."""

    study_uid: str
    recipient: str
    mode: str = "view"
    expires_in_hours: float = 72.0
    case_id: int | None = None
    passcode: str | None = None
    deidentify: bool = False
    recipient_region: str = ""
    max_accesses: int | None = None


@dataclass(frozen=True)
class ShareState:
    """A detached snapshot of one link, what the public routes work from."""

    id: int
    prefix: str
    study_uid: str
    mode: str
    deidentify: bool
    uid_salt: str
    has_passcode: bool
    expires_at: datetime
    access_count: int
    max_accesses: int | None

    @property
    def actor(self) -> str:
        return f"share:{self.prefix}"


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def actor_for(secret: str) -> str:
    """The audit actor of a presented link: its public prefix, never the secret."""
    return f"share:{secret[:10]}"


def status_of(share: ShareLink, attempts_allowed: int, now: datetime | None = None) -> str:
    """active | revoked | expired | locked | used_up (the first that applies, most final first)."""
    now = now or utcnow()
    if share.revoked_at is not None:
        return "revoked"
    if share.expires_at <= now:
        return "expired"
    if share.passcode_hash and share.failed_passcodes >= attempts_allowed:
        return "locked"
    if share.max_accesses is not None and share.access_count >= share.max_accesses:
        return "used_up"
    return "active"


GONE_REASONS = {
    "revoked": "this share link was revoked",
    "expired": "this share link has expired",
    "locked": "this share link is locked after too many wrong passcodes",
    "used_up": "this share link has reached its maximum number of accesses",
}


# -- creating, listing, revoking ----------------------------------------------------------------------------------


def _may_read(session: Session, principal: Principal, study_uid: str) -> bool:
    """May the creator read this study? A share never reaches further than its creator's own view
    (site, routed cases and priors, orders, access grants: ``policy.can_read_study``)."""
    return policy.can_read_study(session, principal, study_uid)


def _validate(req: ShareRequest, max_days: float) -> None:
    if req.mode not in MODES:
        raise ShareInvalid(f"mode must be one of {', '.join(MODES)}, not {req.mode!r}")
    if not req.study_uid or len(req.study_uid) > 64:
        raise ShareInvalid("study_uid is required (at most 64 characters)")
    if not req.recipient.strip() or len(req.recipient) > 255:
        raise ShareInvalid("recipient is required (who receives the link, at most 255 characters)")
    if len(req.recipient_region) > 32:
        raise ShareInvalid("recipient_region is at most 32 characters")
    if not req.expires_in_hours > 0 or req.expires_in_hours > max_days * 24:
        raise ShareInvalid(f"expires_in_hours must be more than 0 and at most {max_days * 24:g} "
                           f"(share_max_days = {max_days:g})")
    if req.max_accesses is not None and req.max_accesses < 1:
        raise ShareInvalid("max_accesses must be at least 1 (or omitted for no limit)")
    if req.passcode is not None and not 6 <= len(req.passcode) <= 128:
        raise ShareInvalid("passcode must be 6 to 128 characters")


def _residency_refusal(rt: Runtime, site: Site | None, req: ShareRequest) -> str | None:
    """Why this recipient region may not receive the study, or None."""
    tag = (site.residency_tag if site else "") or ""
    if not tag or req.recipient_region == tag:
        return None
    if req.deidentify and rt.settings.share_deidentified_crosses_residency:
        return None
    where = f"recipient region {req.recipient_region!r}" if req.recipient_region else "an unspecified region"
    hint = "" if req.deidentify or not rt.settings.share_deidentified_crosses_residency else \
        "; a de-identified share may cross regions"
    return f"data residency: studies of site {site.code if site else '?'} must stay in region {tag!r}, " \
           f"not {where}{hint}"


def create_share(rt: Runtime, principal: Principal, req: ShareRequest, *, source: str = "") -> tuple[ShareLink, str]:
    """Create a link; returns the row and the secret (shown once). Refusals are audited and raised."""
    settings = rt.settings
    denial: ShareError | None = None
    patient_id = ""
    try:
        _validate(req, settings.share_max_days)
        with rt.db.session() as s:
            row = s.execute(select(Study, Patient.patient_id, Site).join(Patient, Patient.id == Study.patient_pk)
                            .outerjoin(Site, Site.id == Study.site_id)
                            .where(Study.study_uid == req.study_uid)).first()
            if row is None or not _may_read(s, principal, req.study_uid):
                # The same answer for "absent" and "not yours": no probing which studies exist.
                raise ShareNotFound("study not found or not readable by you")
            study, patient_id, site = row
            if req.case_id is not None:
                from readingroom.workflow.cases import CaseNotFound, get_case

                try:
                    case = get_case(s, req.case_id)
                except CaseNotFound as exc:
                    raise ShareInvalid(f"no case {req.case_id}") from exc
                if case.study_pk != study.id:
                    raise ShareInvalid(f"case {req.case_id} is not the case of study {req.study_uid}")
            refusal = _residency_refusal(rt, site, req)
            if refusal:
                raise ShareForbidden(refusal)
            secret = SECRET_PREFIX + secrets.token_urlsafe(32)
            now = utcnow()
            share = ShareLink(
                token_hash=token_hash(secret), prefix=secret[:10], study_uid=req.study_uid, case_id=req.case_id,
                mode=req.mode, deidentify=req.deidentify, uid_salt=secrets.token_hex(32),
                passcode_hash=PASSCODES.hash(req.passcode) if req.passcode else None,
                recipient=req.recipient.strip(), recipient_region=req.recipient_region,
                created_by=principal.username, created_at=now,
                expires_at=now + timedelta(hours=req.expires_in_hours), max_accesses=req.max_accesses,
                access_count=0, failed_passcodes=0,
            )
            s.add(share)
            s.flush()
            audit.record(s, actor=principal.username, source=source, action="share.create", resource_type="study",
                         resource_id=req.study_uid, patient_id=patient_id,
                         detail={"share_id": share.id, "prefix": share.prefix, **_describe(share)})
            return share, secret
    except ShareError as exc:
        denial = exc
    audit.record_now(rt.db, actor=principal.username, source=source, action="share.create", resource_type="study",
                     resource_id=req.study_uid[:128], patient_id=patient_id, outcome="failure", reason=denial.reason,
                     detail={"mode": req.mode, "deidentify": req.deidentify, "recipient": req.recipient[:255],
                             "recipient_region": req.recipient_region[:32]})
    raise denial


def _describe(share: ShareLink) -> dict[str, Any]:
    return {"mode": share.mode, "deidentify": share.deidentify, "recipient": share.recipient,
            "recipient_region": share.recipient_region, "expires_at": share.expires_at.isoformat(),
            "max_accesses": share.max_accesses, "passcode": share.passcode_hash is not None,
            "case_id": share.case_id}


def list_shares(session: Session, principal: Principal, *, study_uid: str | None = None) -> list[ShareLink]:
    """The caller's links, newest first; an archive admin sees everyone's."""
    q = select(ShareLink).order_by(ShareLink.created_at.desc(), ShareLink.id.desc())
    if not policy.allowed(principal, policy.ARCHIVE_ADMIN):
        q = q.where(ShareLink.created_by == principal.username)
    if study_uid:
        q = q.where(ShareLink.study_uid == study_uid)
    return list(session.scalars(q).all())


def revoke_share(rt: Runtime, principal: Principal, share_id: int, *, source: str = "") -> ShareLink:
    """Revoke a link now (its creator or an archive admin); refusals are audited and raised."""
    failure: ShareError | None = None
    with rt.db.session() as s:
        share = s.get(ShareLink, share_id)
        if share is None:
            failure = ShareNotFound(f"no share link {share_id}")
        elif share.created_by != principal.username and not policy.allowed(principal, policy.ARCHIVE_ADMIN):
            failure = ShareForbidden("only the link's creator or an administrator may revoke it")
        elif share.revoked_at is not None:
            failure = ShareConflict(f"share link {share_id} was already revoked at {share.revoked_at.isoformat()}")
        else:
            share.revoked_at = utcnow()
            audit.record(s, actor=principal.username, source=source, action="share.revoke", resource_type="study",
                         resource_id=share.study_uid, detail={"share_id": share.id, "prefix": share.prefix})
            return share
    audit.record_now(rt.db, actor=principal.username, source=source, action="share.revoke", resource_type="share",
                     resource_id=str(share_id), outcome="failure", reason=failure.reason)
    raise failure
