"""Site go-live validation: run a checklist against a site's systems and keep it as a PeerValidation row.

Before a site goes live, an admin runs ``readingroom peer test PEER`` (or
``POST /api/v1/peers/{name}/validations``). Each step records ok, a readable
detail, latency and, for transfers, throughput:

* ``c-echo``: the peer answers a C-ECHO;
* ``c-store``: a synthetic test study (clearly marked test patient
  ``RR-GOLIVE-TEST``, fresh UIDs each run) is C-STOREd to the peer;
* ``fetch-back``: the same study is C-GET back into memory and compared
  byte for byte (data set bytes, per SOP Instance UID). C-GET rather than
  C-MOVE to us, so nothing enters our archive: the test study never becomes
  a case and there is nothing to clean up on our side;
* ``dicomweb``: QIDO ``GET {url}/studies?limit=1`` on the peer's DICOMweb
  destination (``Destination.peer_id`` = the peer);
* ``hl7-order``: a synthetic ORM^O01 through our own HL7 inbound handler
  (the order is then cancelled), and ``hl7-report``: a synthetic ORU^R01 to
  the site's HL7 destination over MLLP, which must answer AA.

A step without configuration is ``skipped`` with the reason; the run
``passed`` when no step failed.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.archive.dimse_scu import echo
from readingroom.archive.models import DicomPeer
from readingroom.archive.peers import PeerInfo, get_peer
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.interop import golive_hl7
from readingroom.interop.models import Destination, PeerValidation
from readingroom.runtime import Runtime

TEST_PATIENT_ID = "RR-GOLIVE-TEST"
TEST_PATIENT_NAME = "ZZTEST^GOLIVE^READINGROOM"
STEPS = ("c-echo", "c-store", "fetch-back", "dicomweb", "hl7-order", "hl7-report")
Progress = Callable[[str, dict[str, Any] | None], None]


class GoLiveError(LookupError):
    """No such peer (HTTP 404 / CLI exit 2)."""


def _step(name: str, ok: bool | None, detail: str, latency_ms: float | None = None,
          throughput: float | None = None) -> dict[str, Any]:
    return {"step": name, "ok": ok, "status": "skipped" if ok is None else ("passed" if ok else "failed"),
            "detail": detail, "latency_ms": None if latency_ms is None else round(latency_ms, 1),
            "throughput_mb_s": None if throughput is None else round(throughput, 2)}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1000


def _echo(rt: Runtime, peer: PeerInfo) -> bool:
    """C-ECHO; a peer whose address cannot even be used (stored before it was checked) fails the step."""
    try:
        return bool(echo(rt, peer))
    except (OSError, ValueError, UnicodeError):
        return False


def write_test_study(out_dir: Path, n_instances: int) -> list[Path]:
    """A synthetic CT study of the go-live test patient with UIDs new to this run."""
    from readingroom.demo import synth

    spec = synth.StudySpec("CT", 1, n_instances, synth.DEMO_SITES[0], patient_index=999_999, days_ago=0,
                           accession="RRGOLIVE")
    seed = random.SystemRandom().randrange(1, 2**31)
    paths = []
    for i, ds in enumerate(synth.generate_study(spec, seed)):
        ds.PatientID, ds.PatientName = TEST_PATIENT_ID, TEST_PATIENT_NAME
        ds.IssuerOfPatientID = "READINGROOM-TEST"
        ds.StudyDescription = "READINGROOM GO-LIVE TEST - DISCARD"
        ds.PatientIdentityRemoved = "YES"
        path = out_dir / f"golive-{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part-10 file (what travels in a C-STORE), without preamble and file meta."""
    data = path.read_bytes()
    group_length = int.from_bytes(data[132 + 8:132 + 12], "little")
    return data[132 + 12 + group_length:]


def _dicom_steps(rt: Runtime, peer: PeerInfo, report: Progress) -> list[dict[str, Any]]:
    from readingroom.interop import qr_scu

    steps = []
    ok, ms = _timed(lambda: _echo(rt, peer))
    steps.append(_step("c-echo", ok, f"{peer.address} answered C-ECHO" if ok
                       else f"{peer.address} did not answer C-ECHO (refused, rejected or timed out)", ms))
    report("c-echo", steps[-1])
    if not ok:
        steps.append(_step("c-store", False, "not tried: the peer is unreachable"))
        steps.append(_step("fetch-back", False, "not tried: the peer is unreachable"))
        report("c-store", steps[-2])
        report("fetch-back", steps[-1])
        return steps
    with tempfile.TemporaryDirectory(prefix="rr-golive-") as tmp:
        paths = write_test_study(Path(tmp), rt.settings.golive_test_instances)
        metas = [dcmread(p, stop_before_pixels=True) for p in paths]
        files = [(p, str(m.SOPClassUID), str(m.file_meta.TransferSyntaxUID)) for p, m in zip(paths, metas,
                                                                                           strict=True)]
        study_uid = str(metas[0].StudyInstanceUID)
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        try:
            (stored, errors), ms = _timed(lambda: qr_scu.store_files(rt, peer, files))
            ok = stored == len(paths)
            detail = (f"{stored}/{len(paths)} instances ({size_mb:.1f} MB) of test study {study_uid} stored"
                      + (f"; {'; '.join(errors[:3])}" if errors else ""))
            steps.append(_step("c-store", ok, detail, ms, size_mb / (ms / 1000) if ok and ms else None))
        except qr_scu.QrError as exc:
            ok = False
            steps.append(_step("c-store", False, str(exc)))
        report("c-store", steps[-1])
        if not ok:
            steps.append(_step("fetch-back", False, "not tried: the test study was not stored"))
            report("fetch-back", steps[-1])
            return steps
        expected = {str(m.SOPInstanceUID): dataset_bytes(p) for p, m in zip(paths, metas, strict=True)}
        try:
            got, ms = _timed(lambda: qr_scu.get_study(rt, peer, study_uid, [f[1] for f in files],
                                                      [f[2] for f in files]))
            missing = sorted(set(expected) - set(got.received))
            differ = sorted(uid for uid in expected if uid in got.received and got.received[uid] != expected[uid])
            ok = not missing and not differ
            detail = (f"{len(got.received)}/{len(expected)} instances fetched back by C-GET, byte-identical"
                      if ok else f"fetched back {len(got.received)}/{len(expected)}; missing {len(missing)}, "
                      f"bytes differ for {len(differ)}" + (f" (e.g. {(missing or differ)[0]})"))
            steps.append(_step("fetch-back", ok, detail, ms, size_mb / (ms / 1000) if ok and ms else None))
        except qr_scu.QrError as exc:
            steps.append(_step("fetch-back", False, f"C-GET failed: {exc}"))
        report("fetch-back", steps[-1])
    return steps


def _dicomweb_step(dest: Destination | None) -> dict[str, Any]:
    if dest is None:
        return _step("dicomweb", None, "no DICOMweb destination for this peer")
    from readingroom.interop.forward_delivery import _auth

    auth, headers = _auth(dest.options or {})
    url = dest.url.rstrip("/") + "/studies"
    try:
        response, ms = _timed(lambda: httpx.get(url, params={"limit": 1}, auth=auth, headers={
            **headers, "Accept": "application/dicom+json"}, timeout=15))
    except httpx.HTTPError as exc:
        return _step("dicomweb", False, f"QIDO-RS {url}: {exc.__class__.__name__}: {exc}")
    ok = response.status_code in (200, 204)
    return _step("dicomweb", ok, f"QIDO-RS {url}?limit=1 answered HTTP {response.status_code}", ms)


def run_validation(rt: Runtime, peer_name: str, *, actor: str = "system",
                   progress: Progress | None = None) -> PeerValidation:
    """Run the checklist against a peer; the stored PeerValidation (status passed / failed)."""
    report = progress or (lambda step, result: None)
    with rt.db.session() as s:
        peer_row = get_peer(s, peer_name)
        if peer_row is None:
            raise GoLiveError(f"no peer named {peer_name!r}")
        peer = PeerInfo.of(peer_row)
        run = PeerValidation(peer_id=peer.id, status="running", steps=[], started_at=utcnow(), started_by=actor)
        s.add(run)
        s.flush()
        run_id = run.id
        web = s.scalars(select(Destination).where(Destination.peer_id == peer.id, Destination.kind == "dicomweb")
                        .order_by(Destination.id)).first()
        hl7_dest = s.scalars(select(Destination).where(
            Destination.kind == "hl7", Destination.site_id == peer.site_id, Destination.site_id.is_not(None),
            Destination.enabled.is_(True)).order_by(Destination.id)).first()
        s.expunge_all()
    steps = _dicom_steps(rt, peer, report)
    steps.append(_dicomweb_step(web))
    report("dicomweb", steps[-1])
    for step in golive_hl7.steps(rt, peer, hl7_dest, actor=actor):
        steps.append(_step(**step))
        report(steps[-1]["step"], steps[-1])
    status = "failed" if any(st["ok"] is False for st in steps) else "passed"
    with rt.db.session() as s:
        run = s.get(PeerValidation, run_id)
        run.steps, run.status, run.finished_at = steps, status, utcnow()
        audit.record(s, actor=actor, action="peer.validate", resource_type="peer", resource_id=peer.name,
                     outcome="success" if status == "passed" else "failure",
                     detail={"validation": run_id, "steps": {st["step"]: st["status"] for st in steps}})
        s.flush()
        s.expunge(run)
    return run


def history(session: Session, peer_name: str, limit: int = 20) -> list[PeerValidation]:
    """The peer's validation runs, newest first (the first is its go-live checklist)."""
    peer = session.scalars(select(DicomPeer).where(DicomPeer.name == peer_name)).first()
    if peer is None:
        raise GoLiveError(f"no peer named {peer_name!r}")
    return list(session.scalars(select(PeerValidation).where(PeerValidation.peer_id == peer.id)
                                .order_by(PeerValidation.id.desc()).limit(limit)))
