"""Prior fetching: a new case's earlier studies are pulled from remote PACS before the reader opens it.

When a case gets its images (case events ``received`` and ``images_arrived``)
one 'prior-fetch' outbox item is queued per destination marked
``prior_source``. Its handler asks that PACS (C-FIND, STUDY level, by
Patient ID and Issuer of Patient ID) for the patient's other studies,
C-MOVEs to our own AE title the most recent ones we do not hold (at most
``prior_fetch_max_studies`` within ``prior_fetch_lookback_days``), marks
them as priors (``Study.origin = "prior:<destination>"``; a
``study.not_a_read`` domain event written before the move covers the
moments before that: intake creates no read case for them and forwarding
rules ignore them) and links them to the case.

Queuing through the outbox gives retries and downtime mode for free: a PACS
that is down simply delays the priors. The consumer keeps its own offset
over ``case_events`` and the dedupe key ``prior:{case}:{destination}``
makes a replay harmless, so several processes may run it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from readingroom.archive.index import insert_for
from readingroom.archive.models import DicomPeer, DomainEvent, Patient, Study
from readingroom.archive.peers import PeerInfo
from readingroom.clock import utcnow
from readingroom.consumers import consume
from readingroom.interop import outbox
from readingroom.interop.models import Destination, OutboxItem
from readingroom.runtime import Runtime
from readingroom.workflow.jobs import NOT_A_READ
from readingroom.workflow.models import Case, CaseEvent, CasePrior

log = logging.getLogger(__name__)

CONSUMER = "interop.priors"
OPERATION = "prior-fetch"
TRIGGERS = ("received", "images_arrived")
#: Study.origin of a study fetched as a prior is ``prior:<destination name>`` (see workflow/jobs.py intake).
PRIOR_ORIGIN = "prior:"


def _delivery_error(message: str, *, permanent: bool = False) -> Exception:
    return outbox.DeliveryError(message, permanent=permanent)


def enqueue_for_case(session: Session, case_id: int) -> list[OutboxItem]:
    """Queue a prior fetch at every enabled prior-source destination for this case (idempotent)."""
    row = session.execute(select(Case.study_pk, Study.study_uid, Study.origin, Patient.patient_id, Patient.issuer)
                          .join(Study, Study.id == Case.study_pk).join(Patient, Patient.id == Study.patient_pk)
                          .where(Case.id == case_id)).first()
    if row is None:
        return []
    _, study_uid, origin, patient_id, issuer = row
    if origin or not patient_id:
        return []
    dests = session.scalars(select(Destination).where(
        Destination.prior_source.is_(True), Destination.enabled.is_(True), Destination.kind == "dicom",
        Destination.peer_id.is_not(None)).order_by(Destination.id)).all()
    payload = json.dumps({"patient_id": patient_id, "issuer": issuer or "", "study_uid": study_uid})
    items = []
    for dest in dests:
        items.append(outbox.enqueue(session, dest.id, OPERATION, f"prior:{case_id}:{dest.id}", case_id=case_id,
                                    study_uid=study_uid, payload=payload))
    return items


def queue_prior_fetches(rt: Runtime, batch: int = 200) -> int:
    """Scheduler job: consume case events that give a case its images; returns how many fetches were queued."""
    return consume(rt, CONSUMER, _image_events_after, lambda s, row: len(enqueue_for_case(s, row[1])), batch=batch)


def _image_events_after(session: Session, position: int, batch: int) -> Sequence[Any]:
    return session.execute(select(CaseEvent.id, CaseEvent.case_id).where(
        CaseEvent.id > position, CaseEvent.kind.in_(TRIGGERS)).order_by(CaseEvent.id).limit(batch)).all()


def choose_priors(found: list[dict[str, str]], *, current_uid: str, have: set[str], max_studies: int,
                  lookback_days: int, today: str) -> list[dict[str, str]]:
    """The remote studies worth fetching: not the current one, not held, recent enough, newest first."""
    cutoff = (utcnow() - timedelta(days=lookback_days)).strftime("%Y%m%d") if lookback_days > 0 else ""
    picked = [f for f in found if f["StudyInstanceUID"] and f["StudyInstanceUID"] != current_uid
              and f["StudyInstanceUID"] not in have and (not cutoff or not f["StudyDate"]
                                                          or f["StudyDate"] >= cutoff)
              and (not f["StudyDate"] or f["StudyDate"] <= today)]
    picked.sort(key=lambda f: (f["StudyDate"], f["StudyTime"]), reverse=True)
    return picked[:max(0, max_studies)]


def mark_and_link(session: Session, case_id: int | None, study_uid: str, source: str, *, mark: bool = True) -> bool:
    """Mark a fetched study as a prior (``mark``) and link it to the case; False if it is not indexed (yet)."""
    study = session.scalars(select(Study).where(Study.study_uid == study_uid)).first()
    if study is None:
        return False
    if mark and not study.origin:
        study.origin = (PRIOR_ORIGIN + source)[:64]
    if case_id is not None:
        session.execute(insert_for(session, CasePrior).values(case_id=case_id, study_pk=study.id)
                        .on_conflict_do_nothing())
    return True


def _expect_priors(rt: Runtime, uids: list[str], case_id: int | None, source: str) -> None:
    """Tell intake, before the images come, that these studies are priors and no reads of their own."""
    if not uids:
        return
    now = utcnow()
    with rt.db.session() as s:
        s.execute(insert(DomainEvent), [{"kind": NOT_A_READ, "subject": uid, "created_at": now,
                                         "payload": {"case_id": case_id, "source": source}} for uid in uids])


def deliver_prior_fetch(rt: Runtime, item: OutboxItem, dest: Destination) -> dict[str, Any]:
    """The 'prior-fetch' outbox handler: C-FIND + C-MOVE to us + link; a partial failure is retried."""
    from readingroom.interop import qr_scu

    payload = json.loads(item.payload or "{}")
    with rt.db.read_session() as s:
        peer = s.get(DicomPeer, dest.peer_id) if dest.peer_id else None
        info = PeerInfo.of(peer) if peer else None
    if info is None:
        raise _delivery_error(f"destination {dest.name!r} has no DICOM peer", permanent=True)
    query = {"PatientID": payload.get("patient_id", "")}
    if payload.get("issuer"):
        query["IssuerOfPatientID"] = payload["issuer"]
    if not query["PatientID"]:
        raise _delivery_error("the case's patient has no Patient ID to query with", permanent=True)
    settings = rt.settings
    try:
        found = qr_scu.find_studies(rt, info, query)
        with rt.db.read_session() as s:
            uids = [f["StudyInstanceUID"] for f in found]
            have = set(s.scalars(select(Study.study_uid).where(Study.study_uid.in_(uids)))) if uids else set()
        wanted = choose_priors(found, current_uid=payload.get("study_uid", ""), have=have,
                               max_studies=settings.prior_fetch_max_studies,
                               lookback_days=settings.prior_fetch_lookback_days,
                               today=utcnow().strftime("%Y%m%d"))
        moved, errors = [], []
        _expect_priors(rt, [study["StudyInstanceUID"] for study in wanted], item.case_id, dest.name)
        for study in wanted:
            uid = study["StudyInstanceUID"]
            try:
                result = qr_scu.move_study(rt, info, uid, settings.aet)
            except qr_scu.QrError as exc:
                errors.append(str(exc))
                continue
            moved.append({"study_uid": uid, "completed": result.completed, "failed": result.failed})
    except qr_scu.QrError as exc:
        raise _delivery_error(str(exc)) from exc
    linked, missing = [], []
    current = payload.get("study_uid", "")
    with rt.db.session() as s:
        for uid in [m["study_uid"] for m in moved]:
            (linked if mark_and_link(s, item.case_id, uid, dest.name) else missing).append(uid)
        # Studies we already hold that the PACS lists for this patient are linked, not re-marked: they may be
        # reads of their own (same person under another record's issuer).
        for uid in sorted(have - {current}):
            if mark_and_link(s, item.case_id, uid, dest.name, mark=False):
                linked.append(uid)
    result = {"found": len(found), "fetched": moved, "linked": linked, "peer": info.address}
    if errors or missing:
        raise _delivery_error("; ".join(errors + [f"{uid}: not indexed after C-MOVE" for uid in missing]))
    return result


outbox.register_operation("prior-fetch", deliver_prior_fetch)
