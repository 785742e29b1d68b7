"""Delivering a queued forward: the outbox handlers for 'c-store' (DICOM peer) and 'stow-rs' (DICOMweb).

Both send the original stored bytes. A partial failure is *transient*: the
outbox retries the whole study later, which is safe because a DICOM or
DICOMweb receiver treats an instance it already holds idempotently. A
destination that no longer exists or cannot be used is a *permanent*
failure (retrying cannot help, an admin must act).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from pydicom.datadict import tag_for_keyword

from readingroom.archive.dimse_scu import send_study
from readingroom.archive.models import DicomPeer
from readingroom.archive.peers import PeerInfo
from readingroom.archive.retrieve import InstanceRef, find_instances
from readingroom.governance import audit
from readingroom.interop import outbox
from readingroom.interop.models import Destination, OutboxItem
from readingroom.runtime import Runtime

CHUNK = 1024 * 1024
FAILED_SOP_SEQUENCE = f"{tag_for_keyword('FailedSOPSequence'):08X}"
REFERENCED_SOP_SEQUENCE = f"{tag_for_keyword('ReferencedSOPSequence'):08X}"
REFERENCED_SOP_UID = f"{tag_for_keyword('ReferencedSOPInstanceUID'):08X}"
FAILURE_REASON = f"{tag_for_keyword('FailureReason'):08X}"


def _delivery_error(message: str, *, permanent: bool = False) -> Exception:
    return outbox.DeliveryError(message, permanent=permanent)


def deliver_c_store(rt: Runtime, item: OutboxItem, dest: Destination) -> dict[str, Any]:
    """C-STORE the item's study to the destination's DICOM peer; counts go to the item's result."""
    with rt.db.read_session() as s:
        peer = s.get(DicomPeer, dest.peer_id) if dest.peer_id else None
        info = PeerInfo.of(peer) if peer else None
    if info is None:
        raise _delivery_error(f"destination {dest.name!r} has no DICOM peer", permanent=True)
    report = send_study(rt, item.study_uid, info, actor=f"forwarding:{dest.name}")
    result = {"sent": report.sent, "failed": report.failed, "warnings": report.warnings,
              "peer": info.address}
    if report.sent == 0 and report.failed == 0:
        raise _delivery_error(report.errors[0] if report.errors else "nothing to send", permanent=True)
    if report.failed:
        raise _delivery_error(f"{report.failed} of {report.sent + report.failed} instance(s) not stored at "
                              f"{info.address}: {'; '.join(report.errors[:3])}")
    return result


def _auth(options: dict[str, Any]) -> tuple[httpx.Auth | None, dict[str, str]]:
    """HTTP auth from the destination's options: ``username``/``password`` (Basic) or ``token`` (Bearer)."""
    headers = {str(k): str(v) for k, v in (options.get("headers") or {}).items()}
    if options.get("token"):
        headers["Authorization"] = f"Bearer {options['token']}"
    if options.get("username"):
        return httpx.BasicAuth(str(options["username"]), str(options.get("password", ""))), headers
    return None, headers


def multipart_body(rt: Runtime, refs: list[InstanceRef], boundary: str) -> Iterator[bytes]:
    """multipart/related; type="application/dicom", one part per stored instance, streamed from the blobs."""
    for ref in refs:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with rt.blobs.open(ref.blob_key) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def _failed_sops(response: httpx.Response) -> tuple[list[str], int]:
    """(failures "uid: reason", number stored) from a STOW-RS response (DICOM JSON); best effort."""
    try:
        body = response.json()
    except ValueError:
        return [], 0
    if isinstance(body, list):
        body = body[0] if body else {}
    if not isinstance(body, dict):
        return [], 0
    failed = []
    for entry in (body.get(FAILED_SOP_SEQUENCE) or {}).get("Value", []) or []:
        uid = ((entry.get(REFERENCED_SOP_UID) or {}).get("Value") or ["?"])[0]
        reason = ((entry.get(FAILURE_REASON) or {}).get("Value") or [""])[0]
        failed.append(f"{uid}: failure reason {reason}")
    stored = len((body.get(REFERENCED_SOP_SEQUENCE) or {}).get("Value", []) or [])
    return failed, stored


def stow(rt: Runtime, url: str, study_uid: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """POST a stored study to ``{url}/studies`` (STOW-RS); returns counts, raises DeliveryError on failure."""
    options = options or {}
    with rt.db.read_session() as s:
        refs = find_instances(s, study_uid)
    if not refs:
        raise _delivery_error(f"no instances stored for study {study_uid}", permanent=True)
    boundary = f"rr-{uuid.uuid4().hex}"
    auth, headers = _auth(options)
    headers.update({"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json"})
    target = url.rstrip("/") + "/studies"
    timeout = float(options.get("timeout", 300))
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout, connect=10), auth=auth,
                          verify=options.get("verify_tls", True)) as client:
            response = client.post(target, content=multipart_body(rt, refs, boundary), headers=headers)
    except httpx.HTTPError as exc:
        raise _delivery_error(f"STOW-RS to {target} failed: {exc.__class__.__name__}: {exc}") from exc
    failed, stored = _failed_sops(response)
    result = {"sent": len(refs) - len(failed), "failed": len(failed), "status": response.status_code,
              "url": target, "referenced": stored}
    audit.record_now(rt.db, actor="forwarding", source=rt.settings.aet, action="study.send", resource_type="study",
                     resource_id=study_uid, patient_id=refs[0].patient_id,
                     outcome="success" if response.status_code == 200 and not failed else "failure",
                     detail={"destination": target, **result})
    if response.status_code in (401, 403, 404, 405):
        raise _delivery_error(f"STOW-RS to {target}: HTTP {response.status_code} {response.text[:200]}",
                              permanent=response.status_code in (404, 405))
    if response.status_code >= 300 or failed:
        raise _delivery_error(f"STOW-RS to {target}: HTTP {response.status_code}; "
                              f"{len(failed) or 'some'} instance(s) failed {'; '.join(failed[:3])}".rstrip())
    return result


def deliver_stow(rt: Runtime, item: OutboxItem, dest: Destination) -> dict[str, Any]:
    """The 'stow-rs' outbox handler."""
    if not dest.url:
        raise _delivery_error(f"destination {dest.name!r} has no URL", permanent=True)
    return stow(rt, dest.url, item.study_uid, dest.options or {})


outbox.register_operation("c-store", deliver_c_store)
outbox.register_operation("stow-rs", deliver_stow)
