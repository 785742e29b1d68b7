"""Reader profiles: subspecialties, licences, credentials, shifts, capacity."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from readingroom.governance.models import Site, User
from readingroom.workflow.facts import ReaderFacts
from readingroom.workflow.models import ReaderCredential, ReaderLicence, ReaderProfile


class ReaderError(ValueError):
    """A reader profile that cannot be saved; the message says why."""


def set_reader(
    session: Session,
    username: str,
    *,
    home_site: str | None = None,
    timezone: str = "UTC",
    subspecialties: list[str] | None = None,
    qualifications: list[str] | None = None,
    shifts: list[str] | None = None,
    capacity_rvu_per_hour: float | None = None,
    on_call: bool = False,
    residency_tags: list[str] | None = None,
    aliases: list[str] | None = None,
    licences: dict[str, date | None] | None = None,
    credentials: dict[str, date | None] | None = None,
) -> ReaderProfile:
    """Create or replace a user's reader profile (validated by building its routing facts)."""
    user = session.scalars(select(User).where(User.username == username)).first()
    if user is None:
        raise ReaderError(f"no user {username!r}")
    sites = {s.code: s.id for s in session.scalars(select(Site))}
    for code in [*(credentials or {}), *([home_site] if home_site else [])]:
        if code not in sites:
            raise ReaderError(f"unknown site {code!r}")
    try:
        ReaderFacts(username=username, timezone=timezone, shifts=tuple(shifts or ()),
                    subspecialties=frozenset(subspecialties or []))
    except Exception as exc:
        raise ReaderError(f"invalid reader profile: {exc}") from exc
    profile = session.scalars(select(ReaderProfile).where(ReaderProfile.user_id == user.id)).first()
    if profile is None:
        profile = ReaderProfile(user_id=user.id)
        session.add(profile)
    profile.home_site_id = sites.get(home_site) if home_site else None
    profile.timezone = timezone
    profile.subspecialties = [s.lower() for s in subspecialties or []]
    profile.qualifications = [q.upper() for q in qualifications or []]
    profile.shifts = list(shifts or [])
    profile.capacity_rvu_per_hour = capacity_rvu_per_hour
    profile.on_call = on_call
    profile.residency_tags = list(residency_tags or [])
    profile.aliases = list(aliases or [])
    session.flush()
    session.execute(delete(ReaderLicence).where(ReaderLicence.reader_id == profile.id))
    session.execute(delete(ReaderCredential).where(ReaderCredential.reader_id == profile.id))
    for jurisdiction, expires in (licences or {}).items():
        session.add(ReaderLicence(reader_id=profile.id, jurisdiction=jurisdiction.upper(), expires_on=expires))
    for code, expires in (credentials or {}).items():
        session.add(ReaderCredential(reader_id=profile.id, site_id=sites[code], expires_on=expires))
    session.flush()
    return profile


def get_reader(session: Session, username: str) -> dict[str, Any] | None:
    row = session.execute(select(ReaderProfile, User).join(User, User.id == ReaderProfile.user_id)
                          .where(User.username == username)).first()
    if row is None:
        return None
    profile, user = row
    codes = {s.id: s.code for s in session.scalars(select(Site))}
    return {
        "username": user.username, "home_site": codes.get(profile.home_site_id or -1),
        "timezone": profile.timezone, "subspecialties": profile.subspecialties,
        "qualifications": profile.qualifications, "shifts": profile.shifts,
        "capacity_rvu_per_hour": profile.capacity_rvu_per_hour, "on_call": profile.on_call,
        "residency_tags": profile.residency_tags, "aliases": profile.aliases,
        "licences": {lic.jurisdiction: lic.expires_on for lic in session.scalars(
            select(ReaderLicence).where(ReaderLicence.reader_id == profile.id))},
        "credentials": {codes[c.site_id]: c.expires_on for c in session.scalars(
            select(ReaderCredential).where(ReaderCredential.reader_id == profile.id))},
    }
