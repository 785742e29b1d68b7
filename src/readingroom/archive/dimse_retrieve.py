"""C-MOVE and C-GET SCP: resolve the identifier to stored instances and send them.

pynetdicom runs the Query/Retrieve protocol (pending responses with
sub-operation counts, C-CANCEL, the Failed SOP Instance UID List, the final
status); these generators only say *what* to send. The sending itself is
``dimse_scu.send_instance`` (via ``SubOperationSender``), the same function
``readingroom send`` uses, so C-MOVE and C-GET stream the original bytes in
their stored transfer syntax.

Retrieval is hierarchical (PS3.4 C.4.2.2.1): the identifier's unique key at
the retrieve level names what to send, and may be a list of UIDs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from readingroom.archive import dimse_tls
from readingroom.archive.dimse_find import matching_string, status
from readingroom.archive.dimse_policy import Caller, destination
from readingroom.archive.dimse_scu import SendReport, SubOperationSender, contexts_for
from readingroom.archive.peers import PeerInfo
from readingroom.archive.query import search
from readingroom.archive.retrieve import InstanceRef, find_instances
from readingroom.governance import audit
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)

PATIENT_ROOT = {"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3"}  # MOVE, GET
STUDY_ROOT = {"1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3"}
UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}

STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_NOT_AUTHORISED = 0x0124
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000

Yield = Any  # pynetdicom's generator protocol mixes destinations, counts and (status, dataset) pairs


class RetrieveError(ValueError):
    """An identifier we cannot act on; carries the failure status for the SCU."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _uids(ident: Dataset, keyword: str) -> list[str]:
    elem = ident.get(keyword)
    text = matching_string(ident[keyword]) if elem is not None else ""
    return [u.strip() for u in text.split("\\") if u.strip()]


def resolve(rt: Runtime, model: str, ident: Dataset) -> list[InstanceRef]:
    """The stored instances a C-MOVE / C-GET identifier names, in study/series/instance order."""
    level = str(ident.get("QueryRetrieveLevel", "") or "").strip().upper()
    allowed = ("PATIENT", "STUDY", "SERIES", "IMAGE") if model in PATIENT_ROOT else ("STUDY", "SERIES", "IMAGE")
    if level not in allowed:
        raise RetrieveError(STATUS_IDENTIFIER_MISMATCH,
                            f"QueryRetrieveLevel {level or '(none)'} not in {'/'.join(allowed)}")
    keys = _uids(ident, UNIQUE_KEY[level])
    if not keys:
        raise RetrieveError(STATUS_IDENTIFIER_MISMATCH, f"{UNIQUE_KEY[level]} is required at {level} level")
    if any("*" in k or "?" in k for k in keys):
        raise RetrieveError(STATUS_IDENTIFIER_MISMATCH, "wildcards are not allowed in retrieve keys")
    with rt.db.read_session() as s:
        if level == "PATIENT":
            study_uids = [
                str(item["0020000D"]["Value"][0])
                for pid in keys for item in search(s, "STUDY", {"00100020": pid})
                if item.get("0020000D", {}).get("Value")
            ]
            return find_instances(s, study_uids=study_uids) if study_uids else []
        if level == "STUDY":
            return find_instances(s, study_uids=keys)
        if level == "SERIES":
            return find_instances(s, series_uids=keys)
        return find_instances(s, sop_uids=keys)


def _audit_retrieve(rt: Runtime, caller: Caller, service: str, refs: list[InstanceRef],
                    sender: SubOperationSender, target: str) -> None:
    """One audit record per study retrieved, with what was sent and what failed."""
    studies: dict[str, InstanceRef] = {}
    for ref in refs:
        studies.setdefault(ref.study_uid, ref)
    with rt.db.session() as s:
        for study_uid, first in studies.items():
            got = sender.by_study.get(study_uid, SendReport())
            outcome = "success" if not got.failed else ("failure" if not got.sent else "warning")
            audit.record(
                s, actor=caller.ae_title, source=caller.source, action="study.retrieve", resource_type="study",
                resource_id=study_uid, patient_id=first.patient_id, outcome=outcome,
                detail={"service": service, "destination": target, "sent": got.sent, "failed": got.failed,
                        "warnings": got.warnings},
            )


def _refusal(rt: Runtime, caller: Caller, model: str, ident: Dataset) -> tuple[Dataset | None, list[InstanceRef]]:
    """(failure status, []) when the request cannot be served, else (None, instances)."""
    if not caller.may("retrieve"):
        audit.record_now(rt.db, actor=caller.ae_title, source=caller.source, action="study.retrieve",
                         outcome="failure", resource_type="study", reason="peer may not retrieve")
        return status(STATUS_NOT_AUTHORISED, "this AE title may not retrieve"), []
    try:
        return None, resolve(rt, model, ident)
    except RetrieveError as exc:
        return status(exc.code, str(exc)), []
    except Exception as exc:
        log.exception("retrieve identifier could not be resolved")
        return status(STATUS_UNABLE_TO_PROCESS, f"cannot resolve identifier: {exc}"), []


def _sub_operations(event: Any, refs: list[InstanceRef]) -> Iterator[Yield]:
    for ref in refs:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        yield STATUS_PENDING, SubOperationSender.stub(ref)


def _audit_unreachable(rt: Runtime, caller: Caller, peer: PeerInfo, options: dict[str, Any]) -> None:
    context = options.get("tls_args", (None,))[0]
    failure = context.failure if isinstance(context, dimse_tls.ClientContext) else ""
    reason = f"could not associate with move destination {peer.address}"
    if failure:
        reason = f"{reason}: TLS handshake failed: {failure}"
    log.warning("C-MOVE from %s: %s", caller.source, reason)
    try:
        audit.record_now(rt.db, actor=caller.ae_title, source=caller.source, action="study.retrieve",
                         outcome="failure", resource_type="study", reason=reason)
    except Exception:  # runs while the generator closes: never let it raise there
        log.exception("could not audit an unreachable move destination")


def handle_move(rt: Runtime, event: Any, caller: Caller) -> Iterator[Yield]:
    """EVT_C_MOVE generator: destination, sub-operation count, then one pending yield per instance."""
    dest_ae = str(event.move_destination or "").strip()
    peer = destination(rt, dest_ae)
    if peer is None:
        audit.record_now(rt.db, actor=caller.ae_title, source=caller.source, action="study.retrieve",
                         outcome="failure", resource_type="study", reason=f"unknown move destination {dest_ae!r}")
        yield None, None  # pynetdicom answers 0xA801 Move Destination Unknown
        return
    options: dict[str, Any] = {}
    if peer.tls:
        try:
            options["tls_args"] = dimse_tls.tls_args(rt.settings, peer.host)
        except dimse_tls.TlsConfigError as exc:
            log.error("C-MOVE to %s: %s", peer.address, exc)
            audit.record_now(rt.db, actor=caller.ae_title, source=caller.source, action="study.retrieve",
                             outcome="failure", resource_type="study", reason=f"move destination {dest_ae}: {exc}")
            yield None, None
            return
    model = str(event.request.AffectedSOPClassUID)
    refusal, refs = _refusal(rt, caller, model, event.identifier)
    sender = SubOperationSender(rt, refs, originator_aet=caller.ae_title)
    contexts = contexts_for((r.sop_class_uid, r.transfer_syntax_uid) for r in refs) or [build_context(Verification)]
    # pynetdicom opens the association with these arguments; our EVT_CONN_OPEN hook
    # turns off Nagle and routes its C-STOREs to send_instance.
    options.update({"ae_title": peer.ae_title, "contexts": contexts,
                    "evt_handlers": [(evt.EVT_CONN_OPEN, sender.on_conn_open)]})
    yield peer.host, peer.port, options
    count = 1 if refusal is not None else len(refs)  # a refusal is sent as 1 failed sub-operation
    try:
        yield count
    except GeneratorExit:
        # pynetdicom associates with the destination after this yield and drops the generator
        # here when that fails (answering 0xA801 itself): record why, a TLS failure above all.
        if count:
            _audit_unreachable(rt, caller, peer, options)
        raise
    if refusal is not None:
        # The only way pynetdicom sends a failure with a reason here.
        yield refusal, None
        return
    if not refs:
        return
    try:
        yield from _sub_operations(event, refs)
    finally:
        _audit_retrieve(rt, caller, "C-MOVE", refs, sender, peer.address)


def handle_get(rt: Runtime, event: Any, caller: Caller) -> Iterator[Yield]:
    """EVT_C_GET generator: sub-operation count, then one pending yield per instance.

    The instances go back over the requestor's own association, in the
    storage contexts it proposed with the SCP role.
    """
    model = str(event.request.AffectedSOPClassUID)
    refusal, refs = _refusal(rt, caller, model, event.identifier)
    if refusal is not None:
        yield 1
        yield refusal, None
        return
    yield len(refs)
    if not refs:
        return
    sender = SubOperationSender(rt, refs)
    sender.install(event.assoc)
    try:
        yield from _sub_operations(event, refs)
    finally:
        SubOperationSender.uninstall(event.assoc)
        _audit_retrieve(rt, caller, "C-GET", refs, sender, caller.source)
