"""ADT messages: A08/A31 update a patient's demographics, A40 merges two patient records.

Patients are identified as everywhere else in ReadingRoom: the identifier
*and* its issuer (PID-3.1 + PID-3.4, the DICOM Issuer of Patient ID). When
PID-3 repeats, the repetition issued by the site's issuer is used; when it
names no authority, the site's issuer is assumed. The site is the one whose
code equals PV1-3.4 (the patient location's facility), else MSH-4.1 (the
sending facility) — an enterprise RIS sends for many sites with one MSH-4,
so the location is the better witness when present.

A08/A31 change name (PID-5), birth date (PID-7) and sex (PID-8) of a known
record; an empty field leaves the value alone, ``""`` (HL7's explicit null)
clears it. An unknown patient is AE 204: ADT does not create people here,
orders and images do. A40 is in ``merge.py``; the survivor (PID-3) is
created from the PID when unknown (a merge is often how a RIS announces the
permanent MRN of a temporary registration), the merged record (MRG-1) must
exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import hl7
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from readingroom.archive.models import Patient
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.models import Site
from readingroom.interop.hl7_fields import (
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    Hl7Error,
    Identifier,
    date,
    hd,
    identifiers,
    person_name,
    pick_identifier,
    segment,
    segments,
    value,
)
from readingroom.interop.merge import MergeError, merge_patients

if TYPE_CHECKING:
    from readingroom.interop.hl7_inbound import Inbound

#: HL7 table 0001 (administrative sex) -> DICOM Patient's Sex.
SEX = {"F": "F", "M": "M", "O": "O", "A": "O", "N": "O", "U": ""}
NULL = '""'


def message_site(session: Session, m: Inbound) -> Site | None:
    """The site named by PV1-3.4 (location facility), else MSH-4.1 (sending facility), matched on Site.code."""
    pv1 = segment(m.msg, "PV1")
    for code in (hd(pv1, 3, 4), m.facility_code):
        if code:
            site = session.scalars(select(Site).where(func.upper(Site.code) == code.upper())).first()
            if site is not None:
                return site
    return None


def identity(seg: hl7.Segment | None, name: str, field: int, site: Site | None, *,
             what: str = "patient identifier") -> Identifier:
    """The CX to use from PID-3 / MRG-1: the site issuer's repetition, issuer defaulted to the site's."""
    preferred = site.issuer_of_patient_id if site else ""
    ident = pick_identifier(identifiers(seg, field), preferred)
    if ident is None:
        raise Hl7Error(REQUIRED_FIELD_MISSING, f"the {what} ({name}-{field}) is missing", segment=name, field=field)
    return ident if ident.authority else Identifier(ident.id, preferred)


def find_patient(session: Session, ident: Identifier) -> Patient | None:
    return session.scalars(select(Patient).where(Patient.patient_id == ident.id[:64],
                                                 Patient.issuer == ident.authority[:64])).first()


def demographics(pid: hl7.Segment) -> dict[str, str]:
    """Name, birth date and sex present in the PID (None-free; ``""`` means clear it)."""
    out: dict[str, str] = {}
    if value(pid, 5, 1) == NULL:
        out["name"] = ""
    elif name := person_name(pid, 5):
        out["name"] = name[:324]
    raw_birth = value(pid, 7)
    if raw_birth == NULL:
        out["birth_date"] = ""
    elif raw_birth:
        out["birth_date"] = date(pid, "PID", 7)
    sex = value(pid, 8).upper()
    if sex == NULL:
        out["sex"] = ""
    elif sex:
        if sex not in SEX:
            raise Hl7Error(TABLE_VALUE_NOT_FOUND, f"sex {sex!r} is not in HL7 table 0001 (F, M, O, U, A, N)",
                           segment="PID", field=8)
        out["sex"] = SEX[sex]
    return out


def handle_update(session: Session, m: Inbound) -> None:
    """ADT^A08 / ADT^A31: update a known patient's demographics (audited with before and after)."""
    pid = segment(m.msg, "PID", required=True)
    site = message_site(session, m)
    ident = identity(pid, "PID", 3, site)
    changes = demographics(pid)
    patient = find_patient(session, ident)
    if patient is None:
        raise Hl7Error(UNKNOWN_KEY_IDENTIFIER, f"unknown patient {_label(ident)}", segment="PID", field=3)
    if patient.merged_into_pk is not None:
        raise Hl7Error(UNKNOWN_KEY_IDENTIFIER, f"patient {_label(ident)} was merged into another record; "
                       "update the surviving record", segment="PID", field=3)
    before = {key: getattr(patient, key) for key in changes}
    for key, new in changes.items():
        setattr(patient, key, new)
    patient.updated_at = utcnow()
    audit.record(session, actor=m.actor.name, action="patient.update", resource_type="patient",
                 resource_id=str(patient.id), patient_id=patient.patient_id, source=m.source_id,
                 detail={"before": before, "after": changes, "message": m.message_type})
    session.flush()


def handle_merge(session: Session, m: Inbound) -> None:
    """ADT^A40: merge each MRG-1 record into the PID-3 record that precedes it."""
    pids, mrgs = segments(m.msg, "PID"), segments(m.msg, "MRG")
    if not pids:
        raise Hl7Error(REQUIRED_FIELD_MISSING, "the message has no PID segment", segment="PID")
    if len(mrgs) != len(pids):
        raise Hl7Error(REQUIRED_FIELD_MISSING, "every PID of an A40 needs its MRG segment (prior patient)",
                       segment="MRG")
    site = message_site(session, m)
    for n, (pid, mrg) in enumerate(zip(pids, mrgs, strict=True), start=1):
        survivor_id = identity(pid, "PID", 3, site)
        prior_id = identity(mrg, "MRG", 1, site, what="prior patient identifier")
        prior = find_patient(session, prior_id)
        if prior is None:
            raise Hl7Error(UNKNOWN_KEY_IDENTIFIER, f"unknown prior patient {_label(prior_id)}", segment="MRG",
                           field=1, sequence=n)
        survivor = find_patient(session, survivor_id) or _create(session, survivor_id, demographics(pid))
        try:
            merge_patients(session, survivor.id, prior.id, source=m.source_id, actor=m.actor)
        except MergeError as exc:
            raise Hl7Error(UNKNOWN_KEY_IDENTIFIER, f"cannot merge {_label(prior_id)} into {_label(survivor_id)}: "
                           f"{exc}", segment="MRG", field=1, sequence=n) from exc


def _create(session: Session, ident: Identifier, fields: dict[str, str]) -> Patient:
    now = utcnow()
    patient = Patient(patient_id=ident.id[:64], issuer=ident.authority[:64], name=fields.get("name", ""),
                      birth_date=fields.get("birth_date", ""), sex=fields.get("sex", ""), attrs={}, created_at=now,
                      updated_at=now)
    session.add(patient)
    session.flush()
    return patient


def _label(ident: Identifier) -> str:
    return f"{ident.id}^^^{ident.authority}" if ident.authority else ident.id
