"""Query/Retrieve as a client: C-FIND, C-MOVE and C-GET at a remote PACS (the DIMSE edge of priors and go-live).

Kept apart from ``priors.py`` and ``golive.py`` so those stay plain core
code: this is the only interop module that speaks pynetdicom. Every call
opens one association from our AE title and releases it; a failure comes
back as ``QrError`` with the reason (rejected, refused, failure status).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from readingroom.archive import dimse_tls
from readingroom.archive.dimse_scu import _scu_ae, _why, configure_pynetdicom, set_nodelay
from readingroom.archive.peers import PeerInfo
from readingroom.runtime import Runtime

STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyDescription",
              "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "PatientID", "IssuerOfPatientID",
              "PatientName")


class QrError(RuntimeError):
    """A query or retrieve that failed; the message says why."""


@dataclass
class RetrieveResult:
    """Counts of a C-MOVE or C-GET, and for C-GET the received instances' dataset bytes by SOP Instance UID."""

    completed: int = 0
    failed: int = 0
    warning: int = 0
    status: int = 0
    received: dict[str, bytes] = field(default_factory=dict)
    transfer_syntaxes: dict[str, str] = field(default_factory=dict)


def _associate(rt: Runtime, peer: PeerInfo, contexts: list[Any], **kwargs: Any) -> Any:
    configure_pynetdicom()
    ae = _scu_ae(rt)
    if peer.tls:
        kwargs["tls_args"] = dimse_tls.tls_args(rt.settings, peer.host)
    handlers = [(evt.EVT_CONN_OPEN, set_nodelay), *kwargs.pop("evt_handlers", [])]
    assoc = ae.associate(peer.host, peer.port, contexts=contexts, ae_title=peer.ae_title,
                         evt_handlers=handlers, **kwargs)
    if not assoc.is_established:
        raise QrError(f"{peer.address}: {_why(assoc)}")
    return assoc


def find_studies(rt: Runtime, peer: PeerInfo, query: dict[str, str]) -> list[dict[str, str]]:
    """C-FIND at STUDY level (Study Root); returns one dict of ``STUDY_KEYS`` per matching study."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for key in STUDY_KEYS:
        setattr(ds, key, "")
    for key, value in query.items():
        setattr(ds, key, value)
    assoc = _associate(rt, peer, [build_context(StudyRootQueryRetrieveInformationModelFind)])
    out: list[dict[str, str]] = []
    try:
        for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
            if not status or "Status" not in status:
                raise QrError(f"{peer.address}: C-FIND got no response")
            category = code_to_category(int(status.Status))
            if category == "Pending" and identifier is not None:
                out.append({key: str(identifier.get(key, "") or "") for key in STUDY_KEYS})
            elif category == "Failure":
                raise QrError(f"{peer.address}: C-FIND failed with status 0x{int(status.Status):04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _counts(result: RetrieveResult, status: Dataset) -> None:
    result.status = int(status.get("Status", 0xFFFF))
    for attr, key in (("NumberOfCompletedSuboperations", "completed"), ("NumberOfFailedSuboperations", "failed"),
                      ("NumberOfWarningSuboperations", "warning")):
        if attr in status and status.get(attr) is not None:
            setattr(result, key, int(status.get(attr)))


def _received_bytes(event: evt.Event) -> bytes:
    """The C-STORE data set as sent (without file meta), whether pynetdicom kept it in memory or in a file."""
    path = getattr(event.request, "_dataset_path", None)
    if path is None:
        return event.encoded_dataset(include_meta=False)
    data = Path(path).read_bytes()
    Path(path).unlink(missing_ok=True)  # pynetdicom leaves the SCU side's temporary file to the handler
    # Part-10 file written by pynetdicom: preamble, "DICM", (0002,0000) UL group length, then the meta group.
    group_length = struct.unpack_from("<I", data, 132 + 8)[0]
    return data[132 + 12 + group_length:]


def _study_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def move_study(rt: Runtime, peer: PeerInfo, study_uid: str, destination_aet: str) -> RetrieveResult:
    """C-MOVE one study from ``peer`` to ``destination_aet`` (usually our own AE); waits for the final status."""
    assoc = _associate(rt, peer, [build_context(StudyRootQueryRetrieveInformationModelMove)])
    result = RetrieveResult()
    try:
        for status, _ in assoc.send_c_move(_study_identifier(study_uid), destination_aet,
                                           StudyRootQueryRetrieveInformationModelMove):
            if not status or "Status" not in status:
                raise QrError(f"{peer.address}: C-MOVE got no response (association lost)")
            _counts(result, status)
    finally:
        if assoc.is_established:
            assoc.release()
    if code_to_category(result.status) == "Failure":
        raise QrError(f"{peer.address}: C-MOVE of {study_uid} to {destination_aet} failed with status "
                      f"0x{result.status:04X} ({result.completed} completed, {result.failed} failed)")
    return result


def get_study(rt: Runtime, peer: PeerInfo, study_uid: str, sop_classes: Sequence[str],
              transfer_syntaxes: Sequence[str]) -> RetrieveResult:
    """C-GET one study into memory (the go-live fetch-back; no archive write).

    We propose the storage SOP classes we expect with the transfer syntaxes
    they were sent in, so the peer can return the very bytes it stored.
    """
    result = RetrieveResult()

    def on_store(event: evt.Event) -> int:
        raw = _received_bytes(event)
        uid = str(event.request.AffectedSOPInstanceUID)
        result.received[uid] = raw
        result.transfer_syntaxes[uid] = str(event.context.transfer_syntax)
        return 0x0000

    classes = list(dict.fromkeys(sop_classes))
    syntaxes = list(dict.fromkeys(transfer_syntaxes))
    contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
    contexts += [build_context(c, syntaxes) for c in classes]
    roles = [build_role(c, scp_role=True) for c in classes]
    assoc = _associate(rt, peer, contexts, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        for status, _ in assoc.send_c_get(_study_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet):
            if not status or "Status" not in status:
                raise QrError(f"{peer.address}: C-GET got no response (association lost)")
            _counts(result, status)
    finally:
        if assoc.is_established:
            assoc.release()
    if code_to_category(result.status) == "Failure":
        raise QrError(f"{peer.address}: C-GET of {study_uid} failed with status 0x{result.status:04X}")
    return result


def store_files(rt: Runtime, peer: PeerInfo, files: Sequence[tuple[Path, str, str]]) -> tuple[int, list[str]]:
    """C-STORE Part-10 files, given as (path, SOP class, transfer syntax); (stored, errors)."""
    contexts = [build_context(c, [ts]) for c, ts in dict.fromkeys((c, ts) for _, c, ts in files)]
    assoc = _associate(rt, peer, contexts)
    stored, errors = 0, []
    try:
        for path, _, _ in files:
            status = assoc.send_c_store(path)
            code = int(status.get("Status", 0xFFFF)) if status else 0xFFFF
            if code_to_category(code) in ("Success", "Warning"):
                stored += 1
            else:
                errors.append(f"{path.name}: status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return stored, errors
