"""The DIMSE edge: our DICOM listener (SCP) and the entry points of the SCU.

``DimseServer`` runs a pynetdicom application entity inside ``readingroom
serve`` offering Verification, Storage (every storage SOP class, in whatever
transfer syntax the SCU proposes first, so instances are stored exactly as
sent) and Query/Retrieve (Patient Root and Study Root FIND / MOVE / GET).

The edge holds no business rule. Association acceptance asks
``dimse_policy``; C-STORE hands the received file to ``ingest.ingest_staged``;
C-FIND asks ``query.search``; C-MOVE / C-GET resolve instances with
``retrieve`` and send them with ``dimse_scu.send_instance``.

Sending (``send_study``, ``echo``, ``SendReport``) lives in ``dimse_scu`` and
is re-exported here, so callers import everything DIMSE from one place.

Status choices for C-STORE (PS3.4 Table B.2-1; ErrorComment always says why):

* stored / identical duplicate / replaced (overwrite policy): 0x0000 Success.
* same SOP Instance UID with different bytes under the ``reject`` policy:
  0xB006 *Elements Discarded* (Warning). The issue asks for a warning, not a
  failure: a failure makes modalities retry forever or stall their queue,
  yet retrying cannot help. B006 is the one storage warning whose meaning,
  "the SCP discarded received elements", is true here (all of them: the
  instance stored first is kept); B000 (coercion) and B007 (does not match
  SOP class) would each claim something that did not happen.
* unparseable or incomplete data (e.g. no SOP Instance UID): 0xC000 Cannot
  Understand.
* storage or database failure (disk full, database down): 0xA700 Out of
  Resources, the transient class an SCU should retry later.
* a peer not allowed to store: 0x0124 Refused: Not Authorized.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, Association, _config, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from readingroom.archive import dimse_find, dimse_retrieve, dimse_tls
from readingroom.archive.dimse_policy import Caller, decide
from readingroom.archive.dimse_scu import (
    ACSE_TIMEOUT,
    DIMSE_TIMEOUT,
    MAX_PDU,
    NETWORK_TIMEOUT,
    SendReport,
    configure_pynetdicom,
    echo,
    send_instances,
    send_study,
    set_nodelay,
)
from readingroom.archive.ingest import IngestResult, ingest_staged
from readingroom.governance import audit
from readingroom.runtime import Runtime

__all__ = ["DimseServer", "SendReport", "echo", "send_instances", "send_study", "store_status"]

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_CONFLICT_KEPT_FIRST = 0xB006
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_AUTHORISED = 0x0124

QR_CONTEXTS = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    return ds


def store_status(result: IngestResult) -> Dataset:
    """The C-STORE response status for an ingest outcome (see the module docstring)."""
    if result.ok:
        return _status(STATUS_SUCCESS)
    if result.warning:
        # ErrorComment is an LO (64 characters): ingest's longer reason would be cut.
        return _status(STATUS_CONFLICT_KEPT_FIRST, "SOP Instance UID in use by different content; kept the first")
    if result.status == "rejected":
        return _status(STATUS_CANNOT_UNDERSTAND, result.reason or "invalid instance")
    return _status(STATUS_OUT_OF_RESOURCES, result.reason or "storage failure")


class DimseServer:
    """The DICOM listener of one ``serve`` process (non-blocking start/stop)."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.ae: AE | None = None
        self.server: ThreadedAssociationServer | None = None
        self.tls_server: dimse_tls.TlsServer | None = None
        self._callers: weakref.WeakKeyDictionary[Association, Caller] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the DICOM port (and the DICOM TLS port) and serve associations on background threads.

        Raises ``dimse_tls.TlsConfigError`` before binding anything when the
        TLS settings are incomplete or the certificate files are unusable.
        """
        tls_context = dimse_tls.server_context(self.rt.settings)
        configure_pynetdicom()
        # Stream received datasets to a temp file (tempfile.tempdir is the blob
        # staging dir under `serve`, so committing is a rename, not a copy) and
        # accept every storage SOP class (incl. private ones) in the first
        # transfer syntax the SCU proposes: we store what we are sent.
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        if self.rt.settings.log_level.upper() != "DEBUG":
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        settings = self.rt.settings
        ae = AE(ae_title=settings.aet)
        ae.maximum_associations = settings.max_associations
        ae.maximum_pdu_size = MAX_PDU
        ae.acse_timeout = ACSE_TIMEOUT
        ae.dimse_timeout = DIMSE_TIMEOUT
        ae.network_timeout = NETWORK_TIMEOUT
        ae.add_supported_context(Verification)
        for sop_class in QR_CONTEXTS:
            ae.add_supported_context(sop_class)
        handlers = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
        ]
        self.ae = ae
        self.server = ae.start_server((settings.host, settings.dicom_port), block=False, evt_handlers=handlers)
        log.info("DICOM %s listening on %s:%s", settings.aet, settings.host, settings.dicom_port)
        if tls_context is not None and settings.dicom_tls_port is not None:
            # The same handlers, hence the same AE title + address allow-list, on the TLS port.
            try:
                self.tls_server = dimse_tls.start_tls_server(
                    ae, (settings.host, settings.dicom_tls_port), tls_context, handlers,
                    on_handshake_failure=self._on_tls_failure,
                )
            except OSError:
                ae.shutdown()
                raise
            log.info("DICOM TLS %s listening on %s:%s (client certificates %s)", settings.aet, settings.host,
                     settings.dicom_tls_port, "required" if settings.dicom_tls_ca else "not requested")

    def stop(self) -> None:
        """Stop listening and abort associations still open (idempotent)."""
        if self.ae is not None:
            self.ae.shutdown()
        self.ae = None
        self.server = None
        self.tls_server = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The bound DICOM TLS port, or None without a TLS listener."""
        return int(self.tls_server.server_address[1]) if self.tls_server is not None else None

    # -- association acceptance ------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        """Accept or reject an A-ASSOCIATE-RQ before pynetdicom negotiates contexts."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(getattr(rq, "calling_ae_title", "") or "")
        called = str(getattr(rq, "called_ae_title", "") or "")
        address = str(assoc.requestor.address)
        try:
            decision = decide(self.rt, calling, called, address)
        except Exception:  # the policy could not be evaluated (database down): refuse, transiently
            log.exception("association policy failed for %s@%s", calling, address)
            assoc.acse.send_reject(0x02, 0x01, 0x01)
            assoc.kill()
            return
        transport = dimse_tls.transport_of(assoc)
        if decision.caller is not None:
            with self._lock:
                self._callers[assoc] = replace(decision.caller, transport=transport)
            return
        where = f"{calling.strip()}@{address}" + (f" [{transport}]" if transport else "")
        log.warning("rejecting association from %s: %s", where, decision.reason)
        assoc.acse.send_reject(0x01, 0x01, decision.diagnostic)
        try:
            audit.record_now(
                self.rt.db, actor=calling.strip() or "(none)", source=where,
                action="association.reject", resource_type="association", resource_id=called.strip(),
                outcome="failure", reason=decision.reason,
            )
        except Exception:
            log.exception("could not audit an association rejection")
        # Like pynetdicom's own rejections: wait for the requestor to close the connection.
        assoc.kill()

    def caller(self, assoc: Association) -> Caller:
        """The accepted caller of an association (re-derived if unknown, never widened)."""
        with self._lock:
            known = self._callers.get(assoc)
        if known is not None:
            return known
        ae_title, address = str(assoc.requestor.ae_title or "").strip(), str(assoc.requestor.address)
        decision = decide(self.rt, ae_title, self.rt.settings.aet, address)
        transport = dimse_tls.transport_of(assoc)
        if decision.caller is not None:
            return replace(decision.caller, transport=transport)
        return Caller(ae_title, address, None, trusted=False, transport=transport)

    def _on_tls_failure(self, address: str, reason: str) -> None:
        """A caller failed the TLS handshake (plain DICOM on the TLS port, untrusted certificate)."""
        audit.record_now(
            self.rt.db, actor="(none)", source=address, action="association.reject", resource_type="association",
            resource_id=self.rt.settings.aet, outcome="failure", reason=f"TLS handshake failed: {reason}",
        )

    # -- services --------------------------------------------------------------------------

    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> Dataset:
        """C-STORE: move the received file into staging and ingest it."""
        caller = self.caller(event.assoc)
        if not caller.may("store"):
            return _status(STATUS_NOT_AUTHORISED, "this AE title may not store")
        try:
            staged = self._stage(event)
        except OSError as exc:
            log.error("cannot stage a received instance: %s", exc)
            return _status(STATUS_OUT_OF_RESOURCES, f"storage failure: {exc.strerror or exc}")
        except Exception as exc:  # the dataset could not even be encoded to a file
            return _status(STATUS_CANNOT_UNDERSTAND, f"unreadable data set: {exc}")
        result = ingest_staged(self.rt, staged, actor=caller.ae_title, source=caller.source,
                               site_id=caller.site_id)
        if not result.ok:
            log.warning("C-STORE from %s: %s %s", caller.source, result.status, result.reason)
        return store_status(result)

    def _stage(self, event: evt.Event) -> Path:
        """The received instance as a Part-10 file in the blob staging area."""
        if _config.STORE_RECV_CHUNKED_DATASET:
            received = Path(event.dataset_path)
            if received.parent == self.rt.blobs.staging_dir:
                return received  # `serve` spools there: ingest consumes it in place, pynetdicom's unlink no-ops
            staged = self.rt.blobs.new_staging_path()
            try:
                os.replace(received, staged)  # same filesystem under `serve`
            except OSError:
                shutil.copyfile(received, staged)  # e.g. temp dir elsewhere (embedded use)
            return staged
        staged = self.rt.blobs.new_staging_path()
        staged.write_bytes(event.encoded_dataset(include_meta=True))
        return staged

    def _on_find(self, event: evt.Event) -> Iterator[Any]:
        return dimse_find.handle_find(self.rt, event, self.caller(event.assoc))

    def _on_move(self, event: evt.Event) -> Iterator[Any]:
        return dimse_retrieve.handle_move(self.rt, event, self.caller(event.assoc))

    def _on_get(self, event: evt.Event) -> Iterator[Any]:
        return dimse_retrieve.handle_get(self.rt, event, self.caller(event.assoc))
