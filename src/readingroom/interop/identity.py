"""Patient identity across sites: IDs qualified by issuer, links between records, never silent merges.

A Patient ID means something only with its issuer (Issuer of Patient ID,
0010,0021): ``12345`` at one hospital is another person than ``12345`` at
the next. Ingest gives an instance that names no issuer its site's issuer
(``Site.issuer_of_patient_id``), so the record is ``(ID, issuer)``.

One person still has several records (one per issuer). The matching rules
(setting ``identity_match_rules``) look at every new record and *report*
links (``patient_links``) for a person to confirm or reject:

* ``id_issuer``: the same ID and issuer up to case and spacing (``Hosp-A`` vs
  ``HOSP-A``): state ``match``, the rule says "same record";
* ``demographics``: the same normalised name, birth date and sex under
  another issuer: state ``possible``;
* ``id_only``: the same ID under another issuer: state ``possible``.

Nothing is merged here: merging (ADT^A40) moves studies and is a decision
of the identity source. A background job reads new patient rows in ``id``
order behind a consumer offset (locked, so several processes take turns),
and a link pair is unique (``INSERT ... ON CONFLICT DO NOTHING``), so the
same pair is never reported twice.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from readingroom.archive.index import insert_for
from readingroom.archive.models import Patient
from readingroom.clock import utcnow
from readingroom.consumers import consume
from readingroom.governance import audit
from readingroom.interop.models import PatientLink
from readingroom.runtime import Runtime

CONSUMER = "interop.identity"
RULES = ("id_issuer", "demographics", "id_only")
STATES = ("match", "possible", "confirmed", "rejected")
#: States a person still has to decide.
OPEN_STATES = ("match", "possible")


class LinkNotFound(LookupError):
    """No patient link with that id."""


class LinkDecided(ValueError):
    """The link was already confirmed or rejected."""


def normalise_name(name: str) -> str:
    """``FAMILY GIVEN`` of a DICOM/HL7 person name: accents, case, punctuation and extra components dropped.

    ``Müller^Anna^^Dr``, ``MUELLER``-style transliterations aside, the two
    first components are what sites agree on; the ideographic group after
    ``=`` and prefixes/suffixes are left out.
    """
    alphabetic = (name or "").split("=", 1)[0]
    parts = alphabetic.split("^")[:2]
    out = []
    for part in parts:
        plain = unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode()
        out.append(re.sub(r"[^A-Z0-9]+", " ", plain.upper()).strip())
    return " ".join(p for p in out if p)


def _key(value: str) -> str:
    return re.sub(r"\s+", "", (value or "")).upper()


def _ordered(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _add_link(session: Session, a: int, b: int, rule: str, state: str, detail: dict[str, Any]) -> bool:
    low, high = _ordered(a, b)
    inserted = session.execute(insert_for(session, PatientLink).values(
        patient_pk=low, other_pk=high, rule=rule, state=state, detail=detail, created_at=utcnow(),
        decided_by="").on_conflict_do_nothing().returning(PatientLink.id)).scalar()
    return inserted is not None


def evaluate_patient(session: Session, patient_pk: int, rules: Sequence[str] = ("id_issuer", "demographics")) -> int:
    """Apply the matching rules to one record; returns how many new links it reported."""
    me = session.get(Patient, patient_pk)
    if me is None or me.merged_into_pk is not None or not me.patient_id:
        return 0
    others = [Patient.id != me.id, Patient.merged_into_pk.is_(None)]
    added = 0
    if "id_issuer" in rules:
        variants = {me.patient_id, me.patient_id.strip(), me.patient_id.upper(), me.patient_id.lower()}
        same = session.scalars(select(Patient).where(*others, Patient.patient_id.in_(variants))).all()
        for other in same:
            if _key(other.patient_id) == _key(me.patient_id) and _key(other.issuer) == _key(me.issuer):
                added += _add_link(session, me.id, other.id, "id_issuer", "match",
                                   {"patient_id": me.patient_id, "issuers": [me.issuer, other.issuer]})
    if "id_only" in rules:
        for other in session.scalars(select(Patient).where(*others, Patient.patient_id == me.patient_id,
                                                           Patient.issuer != me.issuer)).all():
            if _key(other.issuer) != _key(me.issuer):
                added += _add_link(session, me.id, other.id, "id_only", "possible",
                                   {"patient_id": me.patient_id, "issuers": [me.issuer, other.issuer]})
    name = normalise_name(me.name)
    if "demographics" in rules and name and len(me.birth_date) == 8:
        for other in session.scalars(select(Patient).where(*others, Patient.birth_date == me.birth_date)).all():
            if (_key(other.issuer) != _key(me.issuer) and normalise_name(other.name) == name
                    and (other.sex or "").upper() == (me.sex or "").upper()):
                added += _add_link(session, me.id, other.id, "demographics", "possible", {
                    "name": name, "birth_date": me.birth_date, "sex": (me.sex or "").upper(),
                    "records": [f"{me.patient_id}^{me.issuer}", f"{other.patient_id}^{other.issuer}"]})
    return added


def scan_new_patients(rt: Runtime, batch: int = 500) -> int:
    """Evaluate the records created since the last run (background job); returns the links reported."""
    rules = list(rt.settings.identity_match_rules)
    return consume(rt, CONSUMER, lambda s, position, n: s.execute(
        select(Patient.id).where(Patient.id > position).order_by(Patient.id).limit(n)).all(),
        lambda s, row: evaluate_patient(s, row[0], rules), batch=batch)


def link_dict(link: PatientLink, patients: dict[int, Patient]) -> dict[str, Any]:
    """A link as JSON, with both records' identifiers (what a person needs to decide)."""

    def rec(pk: int) -> dict[str, Any]:
        p = patients.get(pk)
        return {"id": pk, "patient_id": p.patient_id if p else "", "issuer": p.issuer if p else "",
                "name": p.name if p else "", "birth_date": p.birth_date if p else "", "sex": p.sex if p else ""}

    return {"id": link.id, "rule": link.rule, "state": link.state, "detail": link.detail,
            "patient": rec(link.patient_pk), "other": rec(link.other_pk),
            "created_at": link.created_at.isoformat(), "decided_by": link.decided_by,
            "decided_at": link.decided_at.isoformat() if link.decided_at else None}


def list_links(session: Session, *, state: str | None = None, patient_pk: int | None = None,
               scope: ColumnElement[bool] | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Links, newest first; ``scope`` is a condition on the linked Patient rows (an admin's reach)."""
    q = select(PatientLink)
    if state:
        q = q.where(PatientLink.state == state)
    if patient_pk is not None:
        q = q.where(or_(PatientLink.patient_pk == patient_pk, PatientLink.other_pk == patient_pk))
    if scope is not None:
        visible = select(Patient.id).where(scope)
        q = q.where(or_(PatientLink.patient_pk.in_(visible), PatientLink.other_pk.in_(visible)))
    links = session.scalars(q.order_by(PatientLink.id.desc()).limit(limit)).all()
    pks = {pk for link in links for pk in (link.patient_pk, link.other_pk)}
    patients = {p.id: p for p in session.scalars(select(Patient).where(Patient.id.in_(pks)))} if pks else {}
    return [link_dict(link, patients) for link in links]


def decide(session: Session, link_id: int, decision: str, *, actor: str, note: str = "") -> dict[str, Any]:
    """Confirm or reject a link (once: a conditional UPDATE), audited. Confirming merges nothing."""
    state = {"confirm": "confirmed", "reject": "rejected"}.get(decision)
    if state is None:
        raise ValueError(f"unknown decision {decision!r} (confirm or reject)")
    link = session.get(PatientLink, link_id)
    if link is None:
        raise LinkNotFound(f"no patient link {link_id}")
    done = session.execute(update(PatientLink).where(
        and_(PatientLink.id == link_id, PatientLink.state.in_(OPEN_STATES)))
        .values(state=state, decided_by=actor[:128], decided_at=utcnow())
        .execution_options(synchronize_session=False))
    session.refresh(link)
    if done.rowcount != 1:
        raise LinkDecided(f"patient link {link_id} is already {link.state}")
    patients = {p.id: p for p in session.scalars(select(Patient).where(
        Patient.id.in_([link.patient_pk, link.other_pk])))}
    out = link_dict(link, patients)
    audit.record(session, actor=actor, action=f"patient_link.{state}", resource_type="patient_link",
                 resource_id=str(link_id), patient_id=out["patient"]["patient_id"],
                 detail={"rule": link.rule, "patient": out["patient"], "other": out["other"], "note": note})
    return out
