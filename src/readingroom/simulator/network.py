"""The workload's network as the production router sees it: SiteFacts and ReaderFacts.

The simulator hands these to :func:`readingroom.workflow.routing.route`, the
function the server calls, so a simulated decision is a production decision:
licences by the site's state, credentials from the reader's site privileges,
shifts (given in UTC by the workload) and subspecialties and qualifications
are checked by the same eligibility code. ``hard_ok`` restates the workload's
hard constraints for the policies that do not route through rules (B0, B1),
and ``licensed`` is the check every read is audited against afterwards.
"""

from __future__ import annotations

from readingroom.simulator.workload import Exam, Reader, Workload
from readingroom.workflow.enums import Priority, SiteKind
from readingroom.workflow.facts import CaseFacts, ReaderFacts, SiteFacts
from readingroom.workflow.shifts import Shift

#: Workload priority -> ReadingRoom priority.
PRIORITY = {"P1": Priority.CRITICAL, "P2": Priority.STAT, "P3": Priority.URGENT, "P4": Priority.ROUTINE}

#: Exam type -> (body part, description) so the rules' body-part and description matches apply as in production.
_EXAM_FACTS: dict[str, tuple[str, str]] = {
    "chest": ("CHEST", "chest"), "msk": ("KNEE", "extremity"), "abdomen": ("ABDOMEN", "abdomen"),
    "head_nc": ("HEAD", "head without contrast"), "neuro_other": ("BRAIN", "neuro"), "neuro": ("BRAIN", "brain"),
    "abd_pelvis": ("ABDOMENPELVIS", "abdomen pelvis"), "ctpa": ("CHEST", "CTA chest PE"),
    "trauma_panscan": ("WHOLEBODY", "trauma pan-scan"), "cardiac": ("HEART", "cardiac"),
    "body": ("ABDOMEN", "abdomen"), "breast": ("BREAST", "breast"), "screening_dbt": ("BREAST", "screening dbt"),
    "diagnostic": ("BREAST", "diagnostic"), "pet_ct": ("WHOLEBODY", "PET-CT"), "nm_other": ("WHOLEBODY", "NM"),
    "general": ("", "general"), "other": ("", "other"),
}


def _hour(value: float) -> str:
    whole = int(value) % 24
    return f"{whole:02d}:{round((value - int(value)) * 60):02d}"


def shift_text(reader: Reader) -> str:
    """A workload shift ([start, end) UTC hours) as a roster line ("daily 18:00-04:00")."""
    start, end = reader.shift
    return f"daily {_hour(start)}-{_hour(end)}"


def hub_codes(workload: Workload) -> set[str]:
    """The hub sites: named 'hub' or, failing that, the site with the most readers at home."""
    hubs = {code for code, site in workload.sites.items() if "hub" in site.name.lower()}
    if hubs:
        return hubs
    homes = [r.home for r in workload.readers if r.home in workload.sites]
    return {max(set(homes), key=homes.count)} if homes else set()


def site_facts(workload: Workload) -> dict[str, SiteFacts]:
    hubs = hub_codes(workload)
    return {code: SiteFacts(code, site.tz, site.state, SiteKind.HUB if code in hubs else SiteKind.SPOKE)
            for code, site in workload.sites.items()}


def reader_facts(workload: Workload) -> list[ReaderFacts]:
    """Readers with shifts in UTC: the workload gives them so, and the router converts per the zone."""
    return [ReaderFacts(username=r.id, home_site=r.home, timezone="UTC", subspecialties=frozenset(r.sub),
                        qualifications=frozenset(r.quals), licences=dict.fromkeys(r.lic),
                        credentials=dict.fromkeys(r.priv), shifts=(Shift.parse(shift_text(r)),))
            for r in workload.readers]


def case_facts(study_id: int, site: str, patient_class: str, exam: Exam, priority: str, ready_at: object,
               peds: bool, flags: frozenset[str], pool_widened: bool) -> CaseFacts:
    body_part, description = _EXAM_FACTS.get(exam.name, ("", exam.name))
    return CaseFacts(case_id=str(study_id), site=site, modality=exam.modality, ready_at=ready_at,  # type: ignore[arg-type]
                     body_part=body_part, description=f"{exam.modality} {description}", priority=PRIORITY[priority],
                     patient_class=patient_class, patient_age_years=8.0 if peds else 45.0, flags=flags,
                     rvu=exam.wrvu, pool_widened=pool_widened)


def licensed(workload: Workload, reader: Reader, site: str) -> bool:
    """Licence for the site's state and privileges at the site: never to be broken."""
    return workload.sites[site].state in reader.lic and site in reader.priv


def hard_ok(workload: Workload, reader: Reader, site: str, exam: Exam, priority: str) -> bool:
    """The workload's hard constraints (licence, privilege, MQSA, NM, cardiac, MR P3/P4 subspecialty)."""
    if not licensed(workload, reader, site):
        return False
    quals = {q.upper() for q in reader.quals}
    if exam.modality == "MG" and "MQSA" not in quals:
        return False
    if exam.modality == "NM" and "NM" not in quals:
        return False
    if exam.tag == "cardiac" and "cardiac" not in reader.sub:
        return False
    return not (exam.modality == "MR" and priority in ("P3", "P4") and exam.tag not in reader.sub)
