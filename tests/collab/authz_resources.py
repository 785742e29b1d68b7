"""Fixture resources of conferences and referrals for the authorisation matrix (tests/governance).

``own`` is at site A, ``other`` at site B. The own conference is organised
by reader_a and chaired (and attended) by the matrix radiologist, with the
radiologist's case ``own`` on its list; the other one is reader_b's at site
B with case ``other``. Both are a month ahead, so no grant is made and the
chair's presentation and decision answer 409 (let through). The own
referral was sent to site A by the matrix partner, the other one to site B
by another partner. Each call gets fresh rows: accepting or declining
consumes a referral.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from readingroom.clock import utcnow
from readingroom.collab.conferences_models import Conference, ConferenceAttendee, ConferenceCase
from readingroom.collab.referrals import ImagesPlan, NewReferral, new_accession
from readingroom.collab.referrals_models import Referral
from readingroom.governance.models import User
from readingroom.governance.users import create_user
from readingroom.workflow.enums import Priority


def conference(world: Any, role: str, target: str) -> dict[str, Any]:
    own = target == "own"
    start = utcnow() + timedelta(days=30)
    with world.rt.db.session() as s:
        organiser = world.users["reader_a" if own else "reader_b"]
        chair = world.users["radiologist"] if own else organiser
        case_id = world.cases["own" if own else "other"]
        conf = Conference(title="matrix board", kind="tumour_board", site_id=world.site_of(target),
                          scheduled_start=start, scheduled_end=start + timedelta(hours=1), chair_id=chair,
                          created_by=organiser, created_at=utcnow())
        s.add(conf)
        s.flush()
        s.add(ConferenceAttendee(conference_id=conf.id, user_id=chair, external=False, added_by="matrix",
                                 added_at=utcnow()))
        s.add(ConferenceCase(conference_id=conf.id, case_id=case_id, position=1, question="matrix",
                             added_by="matrix", added_at=utcnow()))
        return {"conference_id": conf.id, "case_id": case_id}


def referral(world: Any, role: str, target: str) -> dict[str, Any]:
    own = target == "own"
    new = NewReferral(receiving_site_id=world.site_of(target), patient_id="MX-1", patient_name="Matrix^Pat",
                      birth_date=utcnow().date() - timedelta(days=20000), sex="O", clinical_question="matrix",
                      priority=Priority.ROUTINE, requested_procedure="CT", modality="CT", images=ImagesPlan.TO_FOLLOW)
    with world.rt.db.session() as s:
        if own:
            partner = world.users["partner"]
        else:
            partner = s.scalar(select(User.id).where(User.username == "partner_b")) or create_user(
                s, "partner_b", role="partner", password="pw-partner_b-matrix-9").id
        now = utcnow()
        row = Referral(accession_number=new_accession(s), submitted_by=partner, receiving_site_id=new.receiving_site_id,
                       patient_id=new.patient_id, patient_name=new.patient_name, birth_date=new.birth_date,
                       sex=new.sex, clinical_question=new.clinical_question, priority=new.priority.value,
                       requested_procedure=new.requested_procedure, modality=new.modality, images=new.images.value,
                       state="received", sla_due_at=now + timedelta(days=3), created_at=now)
        s.add(row)
        s.flush()
        return {"referral_id": row.id}


def conference_body(world: Any, role: str, target: str | None) -> dict[str, Any]:
    start = utcnow() + timedelta(days=30)
    return {"json": {"title": "matrix board", "site": world.site_code("own"), "scheduled_start": start.isoformat(),
                     "scheduled_end": (start + timedelta(hours=1)).isoformat()}}


def referral_body(world: Any, role: str, target: str | None) -> dict[str, Any]:
    return {"json": {"receiving_site": world.site_code("own"), "patient_id": "MX-2", "patient_name": "Matrix^Two",
                     "birth_date": "1970-01-01", "sex": "M", "clinical_question": "matrix", "priority": "routine",
                     "requested_procedure": "CT head", "modality": "CT", "images": "to_follow"}}


#: Request bodies, keyed like test_authz_matrix.BODIES.
BODIES = {
    "POST /api/v1/conferences": conference_body,
    "POST /api/v1/conferences/{conference_id}/cases": lambda w, r, t: {"json": {
        "case_id": w.cases["own" if t == "own" else "other"], "question": "matrix question"}},
    "POST /api/v1/conferences/{conference_id}/attendees": lambda w, r, t: {"json": {"username": "reader_b"}},
    "POST /api/v1/conferences/{conference_id}/cases/{case_id}/decision": lambda w, r, t: {"json": {
        "outcome": "surveillance", "text": "matrix decision"}},
    "POST /api/v1/referrals": referral_body,
    "POST /api/v1/referrals/{referral_id}/decline": lambda w, r, t: {"json": {"reason": "matrix: declined"}},
}
