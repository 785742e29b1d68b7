"""Sending instances to DICOM peers: ``send_study``, ``echo``, and the C-STORE
sub-operations of C-MOVE and C-GET.

Bytes are sacred on the way out too: an instance is sent from its stored
file, in the transfer syntax it arrived in, streamed by pynetdicom
(``STORE_SEND_CHUNKED_DATASET``) so a multi-GB instance never sits in
memory. To make that possible each instance's exact (SOP class, transfer
syntax) pair is proposed in a presentation context of its own; only if the
peer refuses it do we fall back to decoding the instance (decompressing if
needed) and re-encoding it in an uncompressed syntax the peer accepted.

There is one sending function, ``send_instance``. ``send_instances`` drives
it over our own associations (``readingroom send``, forwarding); C-MOVE and
C-GET drive it through ``SubOperationSender``, which pynetdicom's
Query/Retrieve SCP calls in place of its own C-STORE for every
sub-operation, so pynetdicom keeps doing the protocol part (pending
responses, counts, cancel, the failed-instance list) and we keep the bytes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association, _config, build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.status import code_to_category

from readingroom.archive import dimse_tls, dimse_tuning
from readingroom.archive.blobs import copy_to_staging
from readingroom.archive.peers import PeerInfo
from readingroom.archive.retrieve import InstanceRef, find_instances
from readingroom.governance import audit
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)

#: pynetdicom (and PS3.8) allow at most 128 presentation contexts per association.
MAX_CONTEXTS = 128
#: Largest PDU we accept; bigger PDUs mean fewer fragments to handle in Python per instance.
MAX_PDU = 1024 * 1024
#: Seconds to wait for a C-STORE response: the peer may be writing a very large instance.
DIMSE_TIMEOUT = 600.0
ACSE_TIMEOUT = 30.0
NETWORK_TIMEOUT = 120.0
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

#: Status codes we synthesise for sub-operations that never reached the peer.
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_PROCESSING_FAILURE = 0x0110

Progress = Callable[[int, int], None]


def configure_pynetdicom() -> None:
    """Process-wide pynetdicom switches both the SCU and the SCP rely on.

    Chunked sending streams an instance from its file instead of decoding it;
    the per-PDU "standard" logging handlers format every PDU even when
    nobody reads the log, which is pure CPU on a latency-bound path. The
    event-driven reactors (``dimse_tuning``) remove pynetdicom's 1 ms
    polling ticks from every message round trip.
    """
    _config.STORE_SEND_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    dimse_tuning.install()


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    DIMSE is request/response with small messages; with Nagle the second
    small write of a message waits for the peer's delayed ACK (~40 ms on
    Linux) on every round trip.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (tests with socket pairs) or already closed
            pass


@dataclass
class SendReport:
    """The outcome of sending instances to a peer.

    ``sent`` counts instances the peer accepted, including those accepted
    with a warning (also counted in ``warnings``); ``failed`` the others, each
    with a line in ``errors``.
    """

    sent: int = 0
    failed: int = 0
    warnings: int = 0
    errors: list[str] = field(default_factory=list)
    failed_uids: list[str] = field(default_factory=list)

    def record(self, ref: InstanceRef, status: Dataset) -> str:
        """Count one sub-operation's status; returns its category (Success/Warning/Failure)."""
        code = status.get("Status")
        category = code_to_category(int(code)) if code is not None else "Failure"
        if category == "Success":
            self.sent += 1
        elif category == "Warning":
            self.sent += 1
            self.warnings += 1
            self.errors.append(f"{ref.sop_uid}: warning 0x{int(code):04X} {status.get('ErrorComment', '')}".rstrip())
        else:
            category = "Failure"
            self.failed += 1
            self.failed_uids.append(ref.sop_uid)
            detail = f"0x{int(code):04X}" if code is not None else "no response"
            comment = status.get("ErrorComment", "")
            self.errors.append(f"{ref.sop_uid}: failed ({detail}) {comment}".rstrip())
        return category

    def fail_all(self, refs: Iterable[InstanceRef], reason: str) -> None:
        refs = list(refs)
        self.failed += len(refs)
        self.failed_uids.extend(r.sop_uid for r in refs)
        if refs:
            self.errors.append(f"{len(refs)} instance(s) not sent: {reason}")


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def contexts_for(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Presentation contexts to send instances with these (SOP class, transfer syntax) pairs.

    One context per exact pair (so acceptance means "send the stored bytes"),
    then per SOP class one uncompressed fallback context, dropped first when
    the 128-context limit is reached.
    """
    by_class: dict[str, list[str]] = {}
    for sop_class, ts in pairs:
        syntaxes = by_class.setdefault(sop_class, [])
        if ts and ts not in syntaxes:
            syntaxes.append(ts)
    primary = [build_context(sop, [ts]) for sop, tss in by_class.items() for ts in tss]
    fallback = []
    for sop, tss in by_class.items():
        missing = [ts for ts in UNCOMPRESSED if ts not in tss]
        if missing:
            fallback.append(build_context(sop, missing))
    room = max(0, MAX_CONTEXTS - len(primary))
    return (primary + fallback[:room])[:MAX_CONTEXTS]


def _batches(refs: list[InstanceRef]) -> list[list[InstanceRef]]:
    """Split refs so each batch needs at most MAX_CONTEXTS contexts (exact pairs + fallbacks)."""
    batches: list[list[InstanceRef]] = []
    current: list[InstanceRef] = []
    pairs: set[tuple[str, str]] = set()
    classes: set[str] = set()
    for ref in refs:
        pair = (ref.sop_class_uid, ref.transfer_syntax_uid)
        need = len(pairs | {pair}) + len(classes | {ref.sop_class_uid})
        if current and need > MAX_CONTEXTS:
            batches.append(current)
            current, pairs, classes = [], set(), set()
        current.append(ref)
        pairs.add(pair)
        classes.add(ref.sop_class_uid)
    if current:
        batches.append(current)
    return batches


def _local_file(rt: Runtime, ref: InstanceRef) -> tuple[Path, bool]:
    """A readable file with the instance's bytes, and whether it is a temporary copy."""
    path = rt.blobs.local_path(ref.blob_key)
    if path is not None and path.is_file():
        return path, False
    with rt.blobs.open(ref.blob_key) as fh:
        return copy_to_staging(rt.blobs, fh), True


def _send_decoded(assoc: Association, path: Path, **kwargs: Any) -> Dataset:
    """Fallback: decode (and decompress) the instance so pynetdicom can re-encode it uncompressed."""
    ds = dcmread(path)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts.is_compressed:
        # Same instance in another transfer syntax: the SOP Instance UID must stay (pydicom
        # would generate a new one by default). Also sets the file meta to Explicit VR LE.
        ds.decompress(generate_instance_uid=False)
    elif ts.is_deflated or ts not in UNCOMPRESSED:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return Association.send_c_store(assoc, ds, **kwargs)


def send_instance(
    rt: Runtime,
    assoc: Association,
    ref: InstanceRef,
    *,
    msg_id: int = 1,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """C-STORE one stored instance over an established association; returns the status dataset.

    Never raises for a per-instance problem: a missing blob, a refused
    context or an undecodable fallback each become a failure status with a
    reason, so one bad instance cannot stop a study.
    """
    kwargs: dict[str, Any] = {"msg_id": msg_id}
    if originator_aet:
        kwargs["originator_aet"] = originator_aet[:16]
        kwargs["originator_id"] = originator_id
    try:
        path, temporary = _local_file(rt, ref)
    except OSError as exc:
        log.error("instance %s: blob %s unreadable: %s", ref.sop_uid, ref.blob_key, exc)
        return _status(STATUS_PROCESSING_FAILURE, "stored bytes unreadable")
    try:
        try:
            # The class attribute, not the instance's: C-GET replaces the instance's method with us.
            status = Association.send_c_store(assoc, path, **kwargs)
        except ValueError:  # no accepted context for (SOP class, stored transfer syntax)
            try:
                status = _send_decoded(assoc, path, **kwargs)
            except ValueError:
                return _status(STATUS_SOP_CLASS_NOT_SUPPORTED,
                               f"peer refused {ref.sop_class_uid} in {ref.transfer_syntax_uid}")
            except Exception as exc:  # a codec missing or failing for the fallback
                log.warning("instance %s: cannot decode for fallback: %s", ref.sop_uid, exc)
                return _status(STATUS_PROCESSING_FAILURE, f"cannot convert {ref.transfer_syntax_uid}")
        return status if "Status" in status else _status(STATUS_PROCESSING_FAILURE, "no response from peer")
    except (OSError, RuntimeError, AttributeError) as exc:
        log.warning("instance %s: C-STORE failed: %s", ref.sop_uid, exc)
        return _status(STATUS_PROCESSING_FAILURE, str(exc))
    finally:
        if temporary:
            path.unlink(missing_ok=True)


def _scu_ae(rt: Runtime) -> AE:
    ae = AE(ae_title=rt.settings.aet)
    ae.acse_timeout = ACSE_TIMEOUT
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = NETWORK_TIMEOUT
    ae.maximum_pdu_size = MAX_PDU
    return ae


def associate(rt: Runtime, peer: PeerInfo, contexts: list[PresentationContext]) -> Association:
    """Open an association from our AE title to a peer (check ``is_established``).

    A peer marked ``tls`` is called over DICOM TLS (``dimse_tls``); raises
    ``dimse_tls.TlsConfigError`` when our TLS settings cannot be used.
    """
    configure_pynetdicom()
    kwargs: dict[str, Any] = {}
    if peer.tls:
        kwargs["tls_args"] = dimse_tls.tls_args(rt.settings, peer.host)
    return _scu_ae(rt).associate(
        peer.host, peer.port, contexts=contexts, ae_title=peer.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)], **kwargs,
    )


def tls_failure(assoc: Association) -> str:
    """Why the TLS handshake of an outgoing association failed ("" if it did not, or was not TLS)."""
    args = getattr(getattr(assoc.dul, "socket", None), "tls_args", None)
    context = args[0] if args else None
    return context.failure if isinstance(context, dimse_tls.ClientContext) else ""


def _why(assoc: Association) -> str:
    failure = tls_failure(assoc)  # pynetdicom reports a failed handshake as an abort
    if failure:
        return f"TLS handshake failed: {failure}"
    if assoc.is_rejected:
        return "association rejected by the peer"
    if assoc.is_aborted:
        return "association aborted (no acceptable presentation context?)"
    return "no answer (connection refused or timed out)"


def send_instances(
    rt: Runtime,
    refs: list[InstanceRef],
    peer: PeerInfo,
    progress: Progress | None = None,
) -> SendReport:
    """Send instances to a peer over as few associations as the context limit allows."""
    report = SendReport()
    total, done = len(refs), 0
    if progress:
        progress(0, total)
    where = peer.address
    for batch in _batches(refs):
        try:
            assoc = associate(rt, peer, contexts_for((r.sop_class_uid, r.transfer_syntax_uid) for r in batch))
        except dimse_tls.TlsConfigError as exc:
            report.fail_all(refs[done:], f"{where}: {exc}")
            if progress:
                progress(total, total)
            break
        if not assoc.is_established:
            report.fail_all(batch, f"{where}: {_why(assoc)}")
            done += len(batch)
            if progress:
                progress(done, total)
            continue
        try:
            for i, ref in enumerate(batch):
                if not assoc.is_established:
                    report.fail_all(batch[i:], f"{where}: association lost")
                    done += len(batch) - i
                    break
                report.record(ref, send_instance(rt, assoc, ref, msg_id=i % 65535 + 1))
                done += 1
                if progress:
                    progress(done, total)
        finally:
            if assoc.is_established:
                assoc.release()
    return report


def send_study(
    rt: Runtime,
    study_uid: str,
    peer: PeerInfo,
    progress: Progress | None = None,
    *,
    actor: str = "readingroom",
) -> SendReport:
    """C-STORE every instance of a stored study to a peer (original bytes and syntax); audited."""
    with rt.db.read_session() as s:
        refs = find_instances(s, study_uid)
    if not refs:
        report = SendReport()
        report.errors.append(f"no instances stored for study {study_uid}")
        return report
    report = send_instances(rt, refs, peer, progress)
    audit.record_now(
        rt.db, actor=actor, source=rt.settings.aet, action="study.send", resource_type="study",
        resource_id=study_uid, patient_id=refs[0].patient_id,
        outcome="success" if not report.failed else ("failure" if not report.sent else "warning"),
        detail={"destination": peer.address, "sent": report.sent,
                "failed": report.failed, "warnings": report.warnings},
    )
    return report


def echo(rt: Runtime, peer: PeerInfo) -> bool:
    """C-ECHO a peer: True if it answered with Success."""
    assoc = associate(rt, peer, [build_context(Verification)])
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.get("Status", -1)) == 0
    finally:
        if assoc.is_established:
            assoc.release()


class SubOperationSender:
    """Stands in for pynetdicom's C-STORE during C-MOVE / C-GET sub-operations.

    The Q/R handler yields ``stub(ref)`` datasets (just the two UIDs);
    pynetdicom hands each to ``assoc.send_c_store``, which ``install`` has
    pointed at this object, and we send the stored file instead. Results are
    kept per study for the audit trail.
    """

    def __init__(self, rt: Runtime, refs: list[InstanceRef], originator_aet: str | None = None) -> None:
        self.rt = rt
        self.refs = {ref.sop_uid: ref for ref in refs}
        self.originator_aet = originator_aet
        self.by_study: dict[str, SendReport] = {}

    @staticmethod
    def stub(ref: InstanceRef) -> Dataset:
        ds = Dataset()
        ds.SOPClassUID = ref.sop_class_uid
        ds.SOPInstanceUID = ref.sop_uid
        return ds

    def install(self, assoc: Association) -> None:
        """Route ``assoc.send_c_store`` (as pynetdicom's Q/R SCP calls it) to ``send_instance``."""

        def send_c_store(dataset: Dataset, msg_id: int = 1, priority: int = 2,
                         originator_aet: str | None = None, originator_id: int | None = None) -> Dataset:
            ref = self.refs.get(str(dataset.SOPInstanceUID))
            if ref is None:  # not one of ours: cannot happen unless the handler is wrong
                return _status(STATUS_PROCESSING_FAILURE, "unknown instance")
            # pynetdicom names itself as Move Originator; PS3.7 9.1.1.1 wants the AE that
            # asked for the C-MOVE. (C-GET passes no originator, and neither do we.)
            origin = self.originator_aet if originator_aet is not None else None
            status = send_instance(self.rt, assoc, ref, msg_id=msg_id, originator_aet=origin,
                                   originator_id=originator_id)
            self.by_study.setdefault(ref.study_uid, SendReport()).record(ref, status)
            return status

        assoc.send_c_store = send_c_store  # type: ignore[method-assign]

    @staticmethod
    def uninstall(assoc: Association) -> None:
        assoc.__dict__.pop("send_c_store", None)

    def on_conn_open(self, event: evt.Event) -> None:
        """EVT_CONN_OPEN handler for the C-MOVE destination association pynetdicom opens."""
        set_nodelay(event)
        self.install(event.assoc)
