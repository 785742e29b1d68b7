"""Managing retention rules and legal holds, within the sites the caller administers.

``scope`` is the set of site ids the caller administers (None: every site,
for network administrators and the local CLI). A site administrator

* sees the rules of their sites and the network-wide rules (which apply to
  their studies too), and creates or deletes only their sites' rules;
* places holds on studies of their sites, or on a patient with a study at
  one of their sites (a hold on a person covers all of that person's
  studies: it only ever keeps data, so over-reach cannot destroy anything);
* releases a hold only when everything it covers is at their sites (or it
  covers nothing and they placed it), so one site cannot lift a hold that
  protects another's studies;
* sees the holds that cover a study of their sites, or that they placed.

Anything outside the scope is answered as "not found", never "forbidden",
so a site administrator cannot probe other sites for patient IDs or UIDs.
Every change is audited in its own transaction.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient, Study
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.models import LegalHold, RetentionRule, Site
from readingroom.governance.retention import Scope

#: DICOM Code String characters (the Modality attribute's VR).
_MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_AGE_DAYS = 36_600  # a century: anything longer is a typo, not a policy


class RetentionError(ValueError):
    """A rule or hold request that cannot be done; the message says why."""


class Invalid(RetentionError):
    """The request itself is malformed."""


class NotFound(RetentionError):
    """No such rule, hold or study within the caller's sites."""


class Conflict(RetentionError):
    """The request clashes with the current state (duplicate name, hold already released)."""


class Forbidden(RetentionError):
    """The caller may not do this at this site."""


@dataclass(frozen=True)
class HoldView:
    """A hold and how many studies it covers right now."""

    hold: LegalHold
    studies: int


def _in_scope(scope: Scope, site_id: int | None) -> bool:
    return scope is None or (site_id is not None and site_id in scope)


# -- rules ----------------------------------------------------------------------------------------------------


def list_rules(session: Session, scope: Scope) -> list[RetentionRule]:
    """Rules visible to the caller: all for network admins; their sites' and network-wide ones otherwise."""
    q = select(RetentionRule).order_by(RetentionRule.id)
    if scope is not None:
        q = q.where(RetentionRule.site_id.is_(None) | RetentionRule.site_id.in_(sorted(scope)))
    return list(session.scalars(q))


def create_rule(session: Session, *, name: str, site_id: int | None, modality: str, min_age_days: int,
                enabled: bool, actor: str, scope: Scope, source: str = "") -> RetentionRule:
    """Add a rule; validated, scoped and audited."""
    name = name.strip()
    modality = modality.strip().upper()
    if not name or len(name) > 64 or not name.isprintable():
        raise Invalid("name must be 1 to 64 printable characters")
    if modality and not _MODALITY.match(modality):
        raise Invalid(f"modality {modality!r} is not a DICOM modality code (up to 16 of A-Z, 0-9, _ and space)")
    if not 1 <= min_age_days <= MAX_AGE_DAYS:
        raise Invalid(f"min_age_days must be between 1 and {MAX_AGE_DAYS}")
    if site_id is None and scope is not None:
        raise Forbidden("only a network administrator may create a rule for every site; give site_id")
    if site_id is not None:
        if session.get(Site, site_id) is None or not _in_scope(scope, site_id):
            raise NotFound(f"no site {site_id} among the sites you administer")
    if session.scalar(select(RetentionRule.id).where(RetentionRule.name == name)) is not None:
        raise Conflict(f"a retention rule named {name!r} already exists")
    rule = RetentionRule(name=name, site_id=site_id, modality=modality, min_age_days=min_age_days,
                         enabled=enabled, created_by=actor[:128], created_at=utcnow())
    session.add(rule)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create with the same name won
        raise Conflict(f"a retention rule named {name!r} already exists") from exc
    audit.record(session, actor=actor, source=source, action="retention.rule.create", resource_type="retention_rule",
                 resource_id=str(rule.id), detail=_rule_detail(rule))
    return rule


def delete_rule(session: Session, rule_id: int, *, actor: str, scope: Scope, source: str = "") -> None:
    """Remove a rule (the studies it made due simply stop being due)."""
    rule = session.get(RetentionRule, rule_id)
    if rule is None or (scope is not None and rule.site_id is not None and rule.site_id not in scope):
        raise NotFound(f"no retention rule {rule_id}")
    if rule.site_id is None and scope is not None:
        raise Forbidden("only a network administrator may delete a rule that applies to every site")
    detail = _rule_detail(rule)
    session.execute(delete(RetentionRule).where(RetentionRule.id == rule_id))
    audit.record(session, actor=actor, source=source, action="retention.rule.delete", resource_type="retention_rule",
                 resource_id=str(rule_id), detail=detail)


def _rule_detail(rule: RetentionRule) -> dict[str, object]:
    return {"name": rule.name, "site_id": rule.site_id, "modality": rule.modality,
            "min_age_days": rule.min_age_days, "enabled": rule.enabled}


# -- legal holds ----------------------------------------------------------------------------------------------


def _hold_sites(session: Session, holds: list[LegalHold]) -> dict[int, list[int | None]]:
    """Site of every study each hold covers (two queries, whatever the number of holds)."""
    sites: dict[int, list[int | None]] = defaultdict(list)
    by_uid = {h.study_uid: h.id for h in holds if h.study_uid}
    by_patient: dict[str, list[int]] = defaultdict(list)
    for h in holds:
        if h.patient_id:
            by_patient[h.patient_id].append(h.id)
    if by_uid:
        for uid, site in session.execute(select(Study.study_uid, Study.site_id)
                                         .where(Study.study_uid.in_(sorted(by_uid)))):
            sites[by_uid[uid]].append(site)
    if by_patient:
        for pid, site in session.execute(select(Patient.patient_id, Study.site_id)
                                         .join(Study, Study.patient_pk == Patient.id)
                                         .where(Patient.patient_id.in_(sorted(by_patient)))):
            for hold_id in by_patient[pid]:
                sites[hold_id].append(site)
    return sites


def _can_release(scope: Scope, hold: LegalHold, sites: list[int | None], actor: str) -> bool:
    if scope is None:
        return True
    if not sites:
        return hold.created_by == actor
    return all(_in_scope(scope, site) for site in sites)


def list_holds(session: Session, scope: Scope, *, actor: str, include_released: bool = False) -> list[HoldView]:
    """Holds the caller may see (active ones unless ``include_released``), newest first."""
    q = select(LegalHold).order_by(LegalHold.id.desc())
    if not include_released:
        q = q.where(LegalHold.released_at.is_(None))
    holds = list(session.scalars(q))
    sites = _hold_sites(session, holds)
    return [HoldView(h, len(sites.get(h.id, []))) for h in holds
            if scope is None or h.created_by == actor or any(_in_scope(scope, s) for s in sites.get(h.id, []))]


def create_hold(session: Session, *, study_uid: str = "", patient_id: str = "", reason: str, actor: str,
                scope: Scope, source: str = "") -> HoldView:
    """Place a legal hold on one study or on every study of a patient."""
    study_uid, patient_id, reason = study_uid.strip(), patient_id.strip(), reason.strip()
    if bool(study_uid) == bool(patient_id):
        raise Invalid("give exactly one of study_uid or patient_id")
    if not reason:
        raise Invalid("a legal hold needs a reason (matter, case number, requester)")
    if len(reason) > 2000:
        raise Invalid("reason is longer than 2000 characters")
    if study_uid and (len(study_uid) > 64 or not _UID.match(study_uid)):
        raise Invalid(f"{study_uid!r} is not a DICOM UID")
    if patient_id and (len(patient_id) > 64 or not patient_id.isprintable() or "\\" in patient_id):
        raise Invalid("patient_id must be up to 64 printable characters without a backslash")
    # Lock what the hold will cover, so a purge running now either finishes first or sees the hold.
    if study_uid:
        sites = list(session.scalars(select(Study.site_id).where(Study.study_uid == study_uid).with_for_update()))
    else:
        session.execute(select(Patient.id).where(Patient.patient_id == patient_id).with_for_update())
        sites = list(session.scalars(select(Study.site_id).join(Patient, Patient.id == Study.patient_pk)
                                     .where(Patient.patient_id == patient_id)))
    if scope is not None and not any(_in_scope(scope, site) for site in sites):
        what = f"study {study_uid}" if study_uid else f"patient {patient_id}"
        raise NotFound(f"no {what} at the sites you administer")
    hold = LegalHold(study_uid=study_uid, patient_id=patient_id, reason=reason, created_by=actor[:128],
                     created_at=utcnow(), released_by="")
    session.add(hold)
    session.flush()
    audit.record(session, actor=actor, source=source, action="retention.hold.create", resource_type="legal_hold",
                 resource_id=str(hold.id), patient_id=patient_id, reason=reason,
                 detail={"study_uid": study_uid, "patient_id": patient_id, "studies": len(sites)})
    return HoldView(hold, len(sites))


def release_hold(session: Session, hold_id: int, *, actor: str, scope: Scope, reason: str = "",
                 source: str = "") -> HoldView:
    """Release a hold (it stays listed, with who released it and when)."""
    hold = session.get(LegalHold, hold_id, with_for_update=True)
    if hold is None:
        raise NotFound(f"no legal hold {hold_id}")
    sites = _hold_sites(session, [hold]).get(hold.id, [])
    if not _can_release(scope, hold, sites, actor):
        if scope is not None and not any(_in_scope(scope, s) for s in sites) and hold.created_by != actor:
            raise NotFound(f"no legal hold {hold_id}")
        raise Forbidden("this hold also covers studies of sites you do not administer; "
                        "a network administrator must release it")
    if hold.released_at is not None:
        raise Conflict(f"legal hold {hold_id} was already released by {hold.released_by}")
    hold.released_at = utcnow()
    hold.released_by = actor[:128]
    audit.record(session, actor=actor, source=source, action="retention.hold.release", resource_type="legal_hold",
                 resource_id=str(hold.id), patient_id=hold.patient_id, reason=reason.strip(),
                 detail={"study_uid": hold.study_uid, "patient_id": hold.patient_id, "hold_reason": hold.reason})
    return HoldView(hold, len(sites))
