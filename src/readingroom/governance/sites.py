"""Sites: the hospitals, imaging centres and partners of the network."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance.models import Site
from readingroom.runtime import Runtime


def create_site(
    session: Session,
    code: str,
    name: str,
    *,
    timezone: str = "UTC",
    jurisdiction: str = "",
    kind: str = "spoke",
    residency_tag: str = "",
    institution_names: list[str] | None = None,
    issuer_of_patient_id: str = "",
) -> Site:
    """Add a site; ``institution_names`` are the DICOM InstitutionName values that mean it."""
    site = Site(
        code=code,
        name=name,
        timezone=timezone,
        jurisdiction=jurisdiction,
        kind=kind,
        residency_tag=residency_tag,
        institution_names=institution_names or [name],
        issuer_of_patient_id=issuer_of_patient_id,
        created_at=utcnow(),
    )
    session.add(site)
    session.flush()
    return site


def site_by_code(session: Session, code: str) -> Site | None:
    return session.scalars(select(Site).where(Site.code == code)).first()


def site_for_institution(rt: Runtime, institution_name: str) -> int | None:
    """The site whose known institution names include this one (case-insensitive)."""
    if not institution_name:
        return None

    def load() -> dict[str, int]:
        with rt.db.read_session() as s:
            mapping: dict[str, int] = {}
            for site in s.scalars(select(Site)).all():
                for name in [site.name, *(site.institution_names or [])]:
                    mapping[name.strip().lower()] = site.id
            return mapping

    return rt.cached("sites.institutions", 30.0, load).get(institution_name.strip().lower())


def issuer_for_site(rt: Runtime, site_id: int | None) -> str:
    """The site's Issuer of Patient ID: the default for instances that name none (IDs are per issuer)."""
    if site_id is None:
        return ""

    def load() -> dict[int, str]:
        with rt.db.read_session() as s:
            return {sid: issuer or "" for sid, issuer in s.execute(select(Site.id, Site.issuer_of_patient_id))}

    return rt.cached("sites.issuers", 30.0, load).get(site_id, "")
