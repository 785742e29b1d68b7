"""The DIMSE edge against real peers: dcmtk's command-line tools, Orthanc and pynetdicom.

Every test talks to a real ``readingroom serve`` process over 127.0.0.1.
Two servers are shared per module: ``archive`` holds three small studies
loaded once with storescu and is only read afterwards (so query counts are
exact); ``scratch`` takes the tests that store, conflict and misbehave.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGLosslessSV1
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import func, select

from readingroom.archive.models import IngestConflict, Instance, Series, Study
from readingroom.archive.peers import add_peer
from readingroom.archive.retrieve import find_instances
from readingroom.demo.synth import DEMO_SITES, StudySpec, write_study
from readingroom.governance.models import AuditRecord
from tests.interop import dcmtk
from tests.interop.orthanc import OrthancInfo, orthanc
from tests.support.servers import ServerInfo

pytestmark = [pytest.mark.peer, pytest.mark.timeout(600)]

T = TypeVar("T")
SEED = 11


# -- data -------------------------------------------------------------------------------------------


@dataclass
class StudyFiles:
    """One generated study on disk."""

    uid: str
    patient_id: str
    study_date: str
    directory: Path
    files: list[Path]

    @property
    def series_uids(self) -> list[str]:
        return sorted({str(dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in self.files})


def _study(out: Path, modality: str, n_series: int, n_instances: int, patient: int, days_ago: int,
           accession: str) -> StudyFiles:
    spec = StudySpec(modality, n_series, n_instances, DEMO_SITES[patient % len(DEMO_SITES)], patient, days_ago,
                     accession, rows=64, columns=64)
    files = write_study(spec, SEED, out)
    first = dcmread(files[0], stop_before_pixels=True)
    return StudyFiles(str(first.StudyInstanceUID), str(first.PatientID), str(first.StudyDate),
                      out / accession, files)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, StudyFiles]:
    """A: CT 2x4 and C: CR 2x1 of patient 0 (C is a prior), B: MR 3x3 of patient 1."""
    out = tmp_path_factory.mktemp("dimse-studies")
    return {
        "A": _study(out, "CT", 2, 4, 0, 3, "DIMSEA"),
        "B": _study(out, "MR", 3, 3, 1, 10, "DIMSEB"),
        "C": _study(out, "CR", 2, 1, 0, 400, "DIMSEC"),
    }


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part-10 file (what travels in a C-STORE), without preamble and meta."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def eventually(check: Callable[[], T], timeout: float = 20, interval: float = 0.5) -> T:
    """Retry ``check`` until it returns truthy (the server caches peers for a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def add_peers(server: ServerInfo, *peers: tuple[str, str, str, int, dict[str, Any]]) -> None:
    rt = server.runtime()
    try:
        with rt.db.session() as s:
            for name, ae, host, port, flags in peers:
                add_peer(s, name, ae, host, port, **flags)
    finally:
        rt.close()


def scu(server: ServerInfo, tool: str, *args: str, aet: str, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk SCU against a server with a calling AE title."""
    return dcmtk.run(tool, "-aet", aet, "-aec", server.aet, *args, "127.0.0.1", str(server.dicom_port),
                     check=check, cwd=cwd)


def scu_files(server: ServerInfo, tool: str, *args: str, aet: str) -> subprocess.CompletedProcess[str]:
    """Like ``scu`` but for tools whose file arguments come after host and port (storescu)."""
    *options, path = args
    return dcmtk.run(tool, "-aet", aet, "-aec", server.aet, *options, "127.0.0.1", str(server.dicom_port), path)


def counts(server: ServerInfo, study_uid: str) -> tuple[int, int, int]:
    """(instances, series, study.num_instances) as indexed."""
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            study = s.scalars(select(Study).where(Study.study_uid == study_uid)).one()
            n_inst = s.scalar(select(func.count()).select_from(Instance).where(Instance.study_pk == study.id))
            n_series = s.scalar(select(func.count()).select_from(Series).where(Series.study_pk == study.id))
            return int(n_inst or 0), int(n_series or 0), study.num_instances
    finally:
        rt.close()


def stored_files(server: ServerInfo, study_uid: str) -> dict[str, Path]:
    """SOP Instance UID -> blob file of a stored study."""
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            refs = find_instances(s, study_uid)
        out = {}
        for ref in refs:
            path = rt.blobs.local_path(ref.blob_key)
            assert path is not None
            out[ref.sop_uid] = path
        return out
    finally:
        rt.close()


def audit_rows(server: ServerInfo, action: str) -> list[AuditRecord]:
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))
    finally:
        rt.close()


def assert_same_instance(received: Path, source: Path) -> None:
    """Decoded data sets equal (ignoring the file meta) and pixel data bytes identical."""
    got, sent = dcmread(received), dcmread(source)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert got.PixelData == sent.PixelData
    assert Dataset(got) == Dataset(sent)


# -- servers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(server_factory: Callable[..., ServerInfo], studies: dict[str, StudyFiles]) -> ServerInfo:
    """A server holding studies A, B and C, each sent with dcmtk's storescu (one association per study)."""
    server = server_factory()
    for key in ("A", "B", "C"):
        scu_files(server, "storescu", "+sd", "+r", str(studies[key].directory), aet="STORESCU")
    return server


@pytest.fixture(scope="module")
def scratch(server_factory: Callable[..., ServerInfo]) -> ServerInfo:
    """A server for tests that store, conflict and misbehave, with peers for the policy tests.

    The peers are added before the first association, so the server's short peer cache
    already sees them (the tests still retry, in case it does not).
    """
    server = server_factory()
    add_peers(
        server,
        # We cannot send from another address, so this peer lives elsewhere (TEST-NET-1).
        ("faraway", "FARAWAY", "192.0.2.1", 104, {}),
        ("local", "LOCALNAME", "localhost", 104, {}),
        ("nostore", "NOSTORE", "127.0.0.1", 104, {"allow_store": False}),
        ("noquery", "NOQUERY", "127.0.0.1", 104, {"allow_query": False}),
        ("noretrieve", "NORETRIEVE", "127.0.0.1", 104, {"allow_retrieve": False}),
        # pynetdicom's Move SCP reports a failure only after associating with the destination,
        # so a refused C-MOVE is tested with a destination that answers: the server itself.
        ("self", server.aet, "127.0.0.1", server.dicom_port, {}),
    )
    return server


@pytest.fixture(scope="module")
def orthanc_peer(tmp_path_factory: pytest.TempPathFactory, archive: ServerInfo) -> Iterator[OrthancInfo]:
    """An Orthanc that knows READINGROOM, registered as peer ``orthanc`` (AE ORTHANC) on the archive."""
    base = tmp_path_factory.mktemp("orthanc")
    with orthanc(base, modalities={"readingroom": (archive.aet, "127.0.0.1", archive.dicom_port)}) as peer:
        add_peers(archive, ("orthanc", peer.aet, "127.0.0.1", peer.dicom_port, {}))
        yield peer


# -- association acceptance -------------------------------------------------------------------------


def test_echoscu_succeeds(scratch: ServerInfo) -> None:
    result = scu(scratch, "echoscu", aet="ECHOSCU")
    assert result.returncode == 0


def test_unknown_calling_ae_is_rejected_and_server_keeps_running(scratch: ServerInfo) -> None:
    result = scu(scratch, "echoscu", "-v", aet="NOBODY", check=False)
    assert result.returncode != 0
    assert "calling ae title not recognized" in (result.stdout + result.stderr).lower()
    assert scratch.alive()
    assert scu(scratch, "echoscu", aet="ECHOSCU").returncode == 0
    rows = audit_rows(scratch, "association.reject")
    assert any(r.actor == "NOBODY" and r.outcome == "failure" and "not a configured peer" in r.reason for r in rows)


def test_wrong_called_ae_is_rejected(scratch: ServerInfo) -> None:
    result = dcmtk.run("echoscu", "-v", "-aet", "ECHOSCU", "-aec", "SOMEONEELSE", "127.0.0.1",
                       str(scratch.dicom_port), check=False)
    assert result.returncode != 0
    assert "called ae title not recognized" in (result.stdout + result.stderr).lower()


def test_known_ae_from_a_host_not_allowed_is_rejected(scratch: ServerInfo) -> None:
    # FARAWAY is registered for 192.0.2.1 (see ``scratch``); we can only call from 127.0.0.1.
    def rejected_for_host() -> bool:
        result = scu(scratch, "echoscu", "-v", aet="FARAWAY", check=False)
        assert result.returncode != 0, "an AE registered for 192.0.2.1 must not be accepted from 127.0.0.1"
        return any("192.0.2.1" in r.reason for r in audit_rows(scratch, "association.reject")
                   if r.actor == "FARAWAY")

    assert eventually(rejected_for_host)
    assert scratch.alive()


def test_loopback_name_and_address_are_the_same_host(scratch: ServerInfo) -> None:
    # LOCALNAME is registered for "localhost" (see ``scratch``).
    assert eventually(lambda: scu(scratch, "echoscu", aet="LOCALNAME", check=False).returncode == 0)


def _pynetdicom_status(server: ServerInfo, aet: str, send: Callable[[Any], Dataset],
                       *contexts: Any) -> Dataset | None:
    ae = AE(ae_title=aet)
    for cx in contexts:
        if isinstance(cx, tuple):
            ae.add_requested_context(*cx)
        else:
            ae.add_requested_context(cx)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    if not assoc.is_established:
        return None
    try:
        return send(assoc)
    finally:
        assoc.release()


def test_per_peer_flags_refuse_the_service(scratch: ServerInfo, studies: dict[str, StudyFiles]) -> None:
    source = studies["C"].files[0]
    ds = dcmread(source)

    def store() -> Dataset | None:
        return _pynetdicom_status(scratch, "NOSTORE", lambda a: a.send_c_store(ds),
                                  (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID))

    status = eventually(store)
    assert status is not None and status.Status == 0x0124
    assert "may not store" in status.ErrorComment
    rt = scratch.runtime()
    with rt.db.read_session() as s:
        assert s.scalar(select(Instance.id).where(Instance.sop_uid == ds.SOPInstanceUID)) is None
    rt.close()

    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""

    def find(assoc: Any) -> Dataset:
        return next(iter(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)))[0]

    status = _pynetdicom_status(scratch, "NOQUERY", find, StudyRootQueryRetrieveInformationModelFind)
    assert status is not None and status.Status == 0x0124

    move = Dataset()
    move.QueryRetrieveLevel = "STUDY"
    move.StudyInstanceUID = studies["C"].uid

    def do_move(assoc: Any) -> Dataset:
        return list(assoc.send_c_move(move, scratch.aet, StudyRootQueryRetrieveInformationModelMove))[-1][0]

    def moved() -> Dataset | None:
        status = _pynetdicom_status(scratch, "NORETRIEVE", do_move, StudyRootQueryRetrieveInformationModelMove)
        return status if status is not None and status.Status != 0xA801 else None

    status = eventually(moved)
    assert status is not None and status.Status == 0x0124
    assert "may not retrieve" in status.ErrorComment


# -- C-STORE ----------------------------------------------------------------------------------------


def test_storescu_multi_series_study_is_stored_as_sent(archive: ServerInfo, studies: dict[str, StudyFiles]) -> None:
    study = studies["A"]
    assert counts(archive, study.uid) == (8, 2, 8)
    stored = stored_files(archive, study.uid)
    assert len(stored) == 8
    for source in study.files:
        uid = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        blob = stored[uid]
        # storescu sends the data set; the archive writes its own file meta in front of it.
        assert sha256(dataset_bytes(blob)) == sha256(dataset_bytes(source))
        assert_same_instance(blob, source)
    stores = [r for r in audit_rows(archive, "instance.store") if r.detail.get("study") == study.uid]
    assert len(stores) == 8 and all(r.actor == "STORESCU" and r.source.startswith("STORESCU@") for r in stores)


def test_storescu_jpeg_study_is_stored_in_its_transfer_syntax(
    scratch: ServerInfo, tmp_path: Path, studies: dict[str, StudyFiles]
) -> None:
    original = _study(tmp_path / "plain", "CT", 1, 3, 3, 5, "DIMSEJPEG")
    jpeg_dir = tmp_path / "jpeg"
    jpeg_dir.mkdir()
    compressed = []
    for path in original.files:
        target = jpeg_dir / path.name
        dcmtk.run("dcmcjpeg", str(path), str(target))  # default: JPEG lossless, first-order prediction (SV1)
        compressed.append(target)
    assert dcmread(compressed[0]).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    # -xs: propose JPEG Lossless SV1 (then the uncompressed syntaxes), as a modality sending JPEG would.
    scu_files(scratch, "storescu", "-xs", "+sd", str(jpeg_dir), aet="STORESCU")
    assert counts(scratch, original.uid) == (3, 1, 3)
    stored = stored_files(scratch, original.uid)
    for plain, sent in zip(original.files, compressed, strict=True):
        uid = str(dcmread(sent, stop_before_pixels=True).SOPInstanceUID)
        blob = stored[uid]
        assert dcmread(blob, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGLosslessSV1
        assert dataset_bytes(blob) == dataset_bytes(sent)
        assert (dcmread(blob).pixel_array == dcmread(plain).pixel_array).all()

    # C-GET by a requestor that accepts JPEG Lossless: the stored syntax and fragments come back
    # unchanged (getscu re-serialises what it writes, so its files are compared decoded).
    sources = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in compressed}
    plains = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in original.files}
    got = tmp_path / "got-jpeg"
    got.mkdir()
    scu(scratch, "getscu", "+xs", "-S", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY", "-k",
        f"StudyInstanceUID={original.uid}", aet="GETSCU")
    received = list(got.iterdir())
    assert len(received) == 3
    for path in received:
        assert_same_instance(path, sources[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)])
    # ...and by one that accepts only uncompressed syntaxes: decompressed on the way out, same pixels.
    got = tmp_path / "got-plain"
    got.mkdir()
    scu(scratch, "getscu", "-S", "-od", str(got), "-k", "QueryRetrieveLevel=STUDY", "-k",
        f"StudyInstanceUID={original.uid}", aet="GETSCU")
    received = list(got.iterdir())
    assert len(received) == 3
    for path in received:
        ds = dcmread(path)
        assert not ds.file_meta.TransferSyntaxUID.is_compressed
        assert (ds.pixel_array == dcmread(plains[str(ds.SOPInstanceUID)]).pixel_array).all()


def test_four_concurrent_storescu_store_each_instance_once(scratch: ServerInfo, tmp_path: Path) -> None:
    study = _study(tmp_path, "CT", 2, 6, 4, 1, "DIMSECONC")
    # Four processes at once, overlapping: each sends two thirds of the study, so every instance
    # arrives two or three times, often at the same moment.
    groups = [[f for i, f in enumerate(study.files) if i % 3 != k % 3] for k in range(4)]
    procs = []
    for k, group in enumerate(groups):
        folder = tmp_path / f"group{k}"
        folder.mkdir()
        for f in group:
            shutil.copy(f, folder / f"{f.parent.name}-{f.name}")
        procs.append(subprocess.Popen(
            [dcmtk.tool("storescu"), "-aet", "STORESCU", "-aec", scratch.aet, "+sd", "127.0.0.1",
             str(scratch.dicom_port), str(folder)],
            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        ))
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
    assert counts(scratch, study.uid) == (12, 2, 12)
    rt = scratch.runtime()
    try:
        with rt.db.read_session() as s:
            series = s.execute(select(Series.num_instances).join(Study, Study.id == Series.study_pk)
                               .where(Study.study_uid == study.uid)).scalars().all()
            assert sorted(series) == [6, 6]
            assert s.scalar(select(func.count()).select_from(IngestConflict)
                            .where(IngestConflict.study_uid == study.uid)) == 0
    finally:
        rt.close()


def _instance_count(server: ServerInfo) -> int:
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            return int(s.scalar(select(func.count()).select_from(Instance)) or 0)
    finally:
        rt.close()


def test_store_without_sop_instance_uid_fails_with_a_reason(
    scratch: ServerInfo, studies: dict[str, StudyFiles], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _instance_count(scratch)
    ds = dcmread(studies["B"].files[0])
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    crafted = tmp_path / "no-sop-uid.dcm"
    ds.file_meta.MediaStorageSOPInstanceUID = uid  # the C-STORE request still names an instance
    ds.save_as(crafted, enforce_file_format=False)
    # pynetdicom refuses to send such a data set unless it streams the file as is.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    status = _pynetdicom_status(scratch, "TESTSCU", lambda a: a.send_c_store(crafted),
                                (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID))
    assert status is not None
    assert 0xC000 <= status.Status <= 0xCFFF
    assert "SOPInstanceUID" in status.ErrorComment
    assert scratch.alive()
    assert scu(scratch, "echoscu", aet="ECHOSCU").returncode == 0
    assert _instance_count(scratch) == before


def test_same_uid_different_bytes_keeps_the_first_with_a_warning(
    scratch: ServerInfo, studies: dict[str, StudyFiles]
) -> None:
    first = dcmread(studies["B"].files[1])
    second = dcmread(studies["B"].files[1])
    second.PatientComments = "a different instance that reuses the UID"
    context = (first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assert _pynetdicom_status(scratch, "TESTSCU", lambda a: a.send_c_store(first), context).Status == 0
    stored_before = stored_files(scratch, studies["B"].uid)[str(first.SOPInstanceUID)].read_bytes()
    status = _pynetdicom_status(scratch, "TESTSCU", lambda a: a.send_c_store(second), context)
    assert status is not None and status.Status == 0xB006
    assert "kept the first" in status.ErrorComment
    assert stored_files(scratch, studies["B"].uid)[str(first.SOPInstanceUID)].read_bytes() == stored_before
    # Sending the identical instance again is a success (nothing to keep or discard).
    assert _pynetdicom_status(scratch, "TESTSCU", lambda a: a.send_c_store(first), context).Status == 0


def test_private_sop_class_and_deflate_are_stored_as_sent(
    scratch: ServerInfo, studies: dict[str, StudyFiles]
) -> None:
    """Every storage SOP class (private ones too) in whatever syntax the SCU proposes first."""
    private = dcmread(studies["C"].files[0])
    private.SOPClassUID = "1.3.6.1.4.1.9590.100.1.2.99999"  # no such public SOP class
    private.SOPInstanceUID = private.SOPInstanceUID + ".77"
    private.file_meta.MediaStorageSOPClassUID = private.SOPClassUID
    private.file_meta.MediaStorageSOPInstanceUID = private.SOPInstanceUID
    deflated = dcmread(studies["C"].files[1])
    deflated.SOPInstanceUID = deflated.SOPInstanceUID + ".78"
    deflated.file_meta.MediaStorageSOPInstanceUID = deflated.SOPInstanceUID
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian

    def store(assoc: Any) -> list[int]:
        return [int(assoc.send_c_store(private).Status), int(assoc.send_c_store(deflated).Status)]

    statuses = _pynetdicom_status(scratch, "TESTSCU", store, (private.SOPClassUID, ExplicitVRLittleEndian),
                                  (CTImageStorage, DeflatedExplicitVRLittleEndian),
                                  (deflated.SOPClassUID, DeflatedExplicitVRLittleEndian))
    assert statuses == [0, 0]
    rt = scratch.runtime()
    try:
        with rt.db.read_session() as s:
            rows = {r.sop_uid: r for r in s.scalars(select(Instance).where(
                Instance.sop_uid.in_([str(private.SOPInstanceUID), str(deflated.SOPInstanceUID)])))}
        assert rows[str(private.SOPInstanceUID)].sop_class_uid == private.SOPClassUID
        assert rows[str(deflated.SOPInstanceUID)].transfer_syntax_uid == DeflatedExplicitVRLittleEndian
        blob = rt.blobs.local_path(rows[str(deflated.SOPInstanceUID)].blob_key)
        assert blob is not None and dcmread(blob).PixelData == deflated.PixelData
    finally:
        rt.close()


# -- C-FIND -----------------------------------------------------------------------------------------


def findscu(server: ServerInfo, tmp_path: Path, model: str, *keys: str) -> list[Dataset]:
    """Run dcmtk's findscu and return the response identifiers (extracted to files)."""
    out = tmp_path / f"find-{time.monotonic_ns()}"
    out.mkdir()
    args = [model, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    scu(server, "findscu", *args, aet="FINDSCU")
    return [dcmread(p) for p in sorted(out.glob("*.dcm"))]


EDGE_KEYS = {"SpecificCharacterSet", "QueryRetrieveLevel", "RetrieveAETitle"}


def test_findscu_patient_root_patient_level(archive: ServerInfo, studies: dict[str, StudyFiles],
                                            tmp_path: Path) -> None:
    rsp = findscu(archive, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID=*", "PatientName",
                  "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances")
    by_id = {str(r.PatientID): r for r in rsp}
    assert set(by_id) == {studies["A"].patient_id, studies["B"].patient_id}
    p0 = by_id[studies["A"].patient_id]
    assert int(p0.NumberOfPatientRelatedStudies) == 2
    assert int(p0.NumberOfPatientRelatedInstances) == 10
    assert str(p0.PatientName) == "Müller^Jürgen"  # non-ASCII survives (answered in UTF-8)
    assert p0.RetrieveAETitle == archive.aet
    assert {e.keyword for e in p0} <= {"PatientID", "PatientName", "NumberOfPatientRelatedStudies",
                                        "NumberOfPatientRelatedInstances"} | EDGE_KEYS


def test_findscu_patient_root_study_level(archive: ServerInfo, studies: dict[str, StudyFiles],
                                          tmp_path: Path) -> None:
    rsp = findscu(archive, tmp_path, "-P", "QueryRetrieveLevel=STUDY", f"PatientID={studies['A'].patient_id}",
                  "StudyInstanceUID", "NumberOfStudyRelatedInstances", "ModalitiesInStudy")
    got = {str(r.StudyInstanceUID): r for r in rsp}
    assert set(got) == {studies["A"].uid, studies["C"].uid}
    assert int(got[studies["A"].uid].NumberOfStudyRelatedInstances) == 8
    assert got[studies["C"].uid].ModalitiesInStudy == "CR"


def test_findscu_study_root_wildcards(archive: ServerInfo, studies: dict[str, StudyFiles], tmp_path: Path) -> None:
    rsp = findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientName=Oka*", "StudyInstanceUID")
    assert [str(r.StudyInstanceUID) for r in rsp] == [studies["B"].uid]
    rsp = findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientName=Okaf?r*", "StudyInstanceUID")
    assert [str(r.StudyInstanceUID) for r in rsp] == [studies["B"].uid]
    rsp = findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "AccessionNumber=DIMSE*",
                  "StudyInstanceUID")
    assert len(rsp) == 3


def test_findscu_study_root_date_ranges(archive: ServerInfo, studies: dict[str, StudyFiles], tmp_path: Path) -> None:
    a, b, c = studies["A"], studies["B"], studies["C"]
    recent = f"{min(a.study_date, b.study_date)}-{max(a.study_date, b.study_date)}"
    rsp = findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyDate={recent}", "StudyInstanceUID")
    assert {str(r.StudyInstanceUID) for r in rsp} == {a.uid, b.uid}
    rsp = findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyDate=-{c.study_date}",
                  "StudyInstanceUID")
    assert [str(r.StudyInstanceUID) for r in rsp] == [c.uid]
    assert rsp[0].StudyDate == c.study_date
    rsp = findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyDate={b.study_date}-",
                  "StudyInstanceUID")
    assert {str(r.StudyInstanceUID) for r in rsp} == {a.uid, b.uid}


def test_findscu_uid_list(archive: ServerInfo, studies: dict[str, StudyFiles], tmp_path: Path) -> None:
    uids = f"{studies['A'].uid}\\{studies['C'].uid}"
    rsp = findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uids}",
                  "NumberOfStudyRelatedSeries")
    got = {str(r.StudyInstanceUID): int(r.NumberOfStudyRelatedSeries) for r in rsp}
    assert got == {studies["A"].uid: 2, studies["C"].uid: 2}


def test_findscu_series_and_image_levels(archive: ServerInfo, studies: dict[str, StudyFiles],
                                         tmp_path: Path) -> None:
    a = studies["A"]
    for model in ("-S", "-P"):
        extra = [f"PatientID={a.patient_id}"] if model == "-P" else []
        rsp = findscu(archive, tmp_path, model, "QueryRetrieveLevel=SERIES", *extra, f"StudyInstanceUID={a.uid}",
                      "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
        assert sorted(str(r.SeriesInstanceUID) for r in rsp) == a.series_uids
        assert all(r.Modality == "CT" and int(r.NumberOfSeriesRelatedInstances) == 4 for r in rsp)
        series = a.series_uids[0]
        rsp = findscu(archive, tmp_path, model, "QueryRetrieveLevel=IMAGE", *extra, f"StudyInstanceUID={a.uid}",
                      f"SeriesInstanceUID={series}", "SOPInstanceUID", "InstanceNumber", "SOPClassUID")
        assert sorted(int(r.InstanceNumber) for r in rsp) == [1, 2, 3, 4]
        assert all(r.SOPClassUID == CTImageStorage for r in rsp)
    rsp = findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=SERIES", "Modality=MR", "SeriesInstanceUID")
    assert len(rsp) == 3


def test_find_rejects_patient_level_in_study_root(archive: ServerInfo, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    out.mkdir()
    result = scu(archive, "findscu", "-v", "-S", "-X", "-od", str(out), "-k", "QueryRetrieveLevel=PATIENT", "-k",
                 "PatientID=*", aet="FINDSCU", check=False)
    assert list(out.glob("*.dcm")) == []
    assert "datasetdoesnotmatchsopclass" in (result.stdout + result.stderr).lower()  # dcmtk names 0xA900 so
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "*"

    def find(assoc: Any) -> Dataset:
        return next(iter(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)))[0]

    status = _pynetdicom_status(archive, "FINDSCU", find, StudyRootQueryRetrieveInformationModelFind)
    assert status is not None and status.Status == 0xA900
    assert "PATIENT" in status.ErrorComment


def test_find_is_audited_with_the_result_count(archive: ServerInfo, studies: dict[str, StudyFiles],
                                               tmp_path: Path) -> None:
    findscu(archive, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "AccessionNumber=DIMSEB", "StudyInstanceUID")
    rows = [r for r in audit_rows(archive, "archive.query") if r.detail.get("filters") == {"00080050": "DIMSEB"}]
    assert rows and rows[-1].detail["results"] == 1 and rows[-1].actor == "FINDSCU"


# -- C-GET ------------------------------------------------------------------------------------------


def test_getscu_retrieves_every_instance(archive: ServerInfo, studies: dict[str, StudyFiles], tmp_path: Path) -> None:
    a = studies["A"]
    out = tmp_path / "got"
    out.mkdir()
    scu(archive, "getscu", "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k",
        f"StudyInstanceUID={a.uid}", aet="GETSCU")
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    sources = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in a.files}
    assert set(received) == set(sources)
    for uid, path in received.items():
        assert_same_instance(path, sources[uid])
    rows = [r for r in audit_rows(archive, "study.retrieve") if r.resource_id == a.uid]
    assert any(r.detail.get("service") == "C-GET" and r.detail.get("sent") == 8 for r in rows)


def test_getscu_series_level(archive: ServerInfo, studies: dict[str, StudyFiles], tmp_path: Path) -> None:
    b = studies["B"]
    out = tmp_path / "series"
    out.mkdir()
    scu(archive, "getscu", "-S", "-od", str(out), "-k", "QueryRetrieveLevel=SERIES", "-k",
        f"StudyInstanceUID={b.uid}", "-k", f"SeriesInstanceUID={b.series_uids[0]}", aet="GETSCU")
    assert len(list(out.iterdir())) == 3


# -- C-MOVE and send --------------------------------------------------------------------------------


def _orthanc_has(peer: OrthancInfo, study_uid: str, n: int) -> bool:
    return len(peer.study_instances(study_uid)) == n


def test_movescu_to_orthanc(archive: ServerInfo, orthanc_peer: OrthancInfo, studies: dict[str, StudyFiles]) -> None:
    a = studies["A"]

    def move() -> bool:
        scu(archive, "movescu", "-S", "-aem", orthanc_peer.aet, "-k", "QueryRetrieveLevel=STUDY", "-k",
            f"StudyInstanceUID={a.uid}", aet="MOVESCU", check=False)
        return _orthanc_has(orthanc_peer, a.uid, 8)

    assert eventually(move, timeout=30, interval=2), orthanc_peer.log()[-2000:]
    sources = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in a.files}
    instance = orthanc_peer.study_instances(a.uid)[0]
    tags = orthanc_peer.get(f"/instances/{instance['ID']}/simplified-tags")
    data = orthanc_peer.get_bytes(f"/instances/{instance['ID']}/file")
    path = Path(str(sources[tags["SOPInstanceUID"]]) + ".from-orthanc")
    path.write_bytes(data)
    assert_same_instance(path, sources[tags["SOPInstanceUID"]])
    assert dataset_bytes(path) == dataset_bytes(sources[tags["SOPInstanceUID"]])
    rows = [r for r in audit_rows(archive, "study.retrieve") if r.resource_id == a.uid]
    assert any(r.detail.get("service") == "C-MOVE" and r.actor == "MOVESCU" for r in rows)


def test_move_to_an_unknown_destination_fails(archive: ServerInfo, studies: dict[str, StudyFiles]) -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = "PATIENT"
    ident.PatientID = studies["B"].patient_id

    def move(assoc: Any) -> Dataset:
        return list(assoc.send_c_move(ident, "NOWHERE", PatientRootQueryRetrieveInformationModelMove))[-1][0]

    status = _pynetdicom_status(archive, "MOVESCU", move, PatientRootQueryRetrieveInformationModelMove)
    assert status is not None and status.Status == 0xA801


def test_cli_send_to_orthanc(archive: ServerInfo, orthanc_peer: OrthancInfo, studies: dict[str, StudyFiles]) -> None:
    b = studies["B"]
    result = archive.cli("send", b.uid, "orthanc")
    assert "sent 9, failed 0" in result.stdout
    assert _orthanc_has(orthanc_peer, b.uid, 9)
    rows = [r for r in audit_rows(archive, "study.send") if r.resource_id == b.uid]
    assert rows and rows[-1].detail["sent"] == 9


def test_cli_send_to_a_peer_that_is_down_fails(archive: ServerInfo, studies: dict[str, StudyFiles]) -> None:
    from tests.support.servers import free_port

    add_peers(archive, ("down", "DOWN", "127.0.0.1", free_port(), {}))
    result = archive.cli("send", studies["C"].uid, "down", check=False)
    assert result.returncode != 0
    assert "failed 2" in result.stdout


# -- in-process: policy and cancellation ------------------------------------------------------------


def test_policy_host_matching(rt: Any) -> None:
    from readingroom.archive.dimse_policy import CALLED_AE_NOT_RECOGNISED, CALLING_AE_NOT_RECOGNISED, decide

    with rt.db.session() as s:
        add_peer(s, "byname", "BYNAME", "localhost", 104, allow_store=False)
        add_peer(s, "elsewhere", "ELSEWHERE", "192.0.2.7", 104)
    ok = decide(rt, "BYNAME", rt.settings.aet, "127.0.0.1")
    assert ok.caller is not None and not ok.caller.may("store") and ok.caller.may("query")
    assert decide(rt, "BYNAME", rt.settings.aet, "::ffff:127.0.0.1").accepted
    assert decide(rt, "ELSEWHERE", rt.settings.aet, "127.0.0.1").diagnostic == CALLING_AE_NOT_RECOGNISED
    assert decide(rt, "BYNAME", "OTHER", "127.0.0.1").diagnostic == CALLED_AE_NOT_RECOGNISED
    assert not decide(rt, "STRANGER", rt.settings.aet, "127.0.0.1").accepted
    rt.settings.accept_loopback_aets = True
    assert decide(rt, "STRANGER", rt.settings.aet, "127.0.0.1").accepted
    assert not decide(rt, "STRANGER", rt.settings.aet, "198.51.100.3").accepted
    rt.settings.accept_unknown_aets = True
    anyone = decide(rt, "STRANGER", rt.settings.aet, "198.51.100.3")
    assert anyone.caller is not None and anyone.caller.peer is None
    # Opening the door never widens what a known peer may do.
    relaxed = decide(rt, "BYNAME", rt.settings.aet, "198.51.100.3")
    assert relaxed.caller is not None and not relaxed.caller.may("store")


class _FakeRequest:
    def __init__(self, sop_class: str) -> None:
        self.AffectedSOPClassUID = sop_class


class _CancellingEvent:
    """Stands in for pynetdicom's Event: C-CANCEL arrives after ``after`` responses."""

    def __init__(self, identifier: Dataset, sop_class: str, after: int) -> None:
        self.identifier = identifier
        self.request = _FakeRequest(sop_class)
        self.after = after
        self.polled = 0

    @property
    def is_cancelled(self) -> bool:
        self.polled += 1
        return self.polled > self.after


def test_find_stops_at_c_cancel(rt: Any, tmp_path: Path) -> None:
    from readingroom.archive.dimse_find import STATUS_CANCEL, STATUS_PENDING, handle_find
    from readingroom.archive.dimse_policy import Caller
    from readingroom.archive.ingest import ingest_path

    for i in range(3):
        for f in _study(tmp_path, "CR", 1, 1, 10 + i, i, f"CANCEL{i}").files:
            assert ingest_path(rt, f, actor="test").ok
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    event = _CancellingEvent(ident, StudyRootQueryRetrieveInformationModelFind, after=1)
    out = list(handle_find(rt, event, Caller("FINDSCU", "127.0.0.1")))
    assert [status for status, _ in out] == [STATUS_PENDING, STATUS_CANCEL]
    everything = list(handle_find(rt, _CancellingEvent(ident, StudyRootQueryRetrieveInformationModelFind, 99),
                                  Caller("FINDSCU", "127.0.0.1")))
    assert [status for status, _ in everything] == [STATUS_PENDING] * 3


def test_echo_and_send_study_in_process(rt: Any, tmp_path: Path, scratch: ServerInfo) -> None:
    """The SCU functions against a real server: echo, then send a study and find it indexed there."""
    from readingroom.archive.dimse import echo, send_study
    from readingroom.archive.ingest import ingest_path
    from readingroom.archive.peers import PeerInfo

    study = _study(tmp_path, "MR", 2, 2, 6, 2, "DIMSESEND")
    for f in study.files:
        assert ingest_path(rt, f, actor="test").ok
    rt.settings.aet = "TESTSCU"  # a peer the scratch server knows
    target = PeerInfo(0, "scratch", scratch.aet, "127.0.0.1", scratch.dicom_port, None, True, True, True)
    assert echo(rt, target)
    ticks: list[tuple[int, int]] = []
    report = send_study(rt, study.uid, target, progress=lambda done, total: ticks.append((done, total)))
    assert (report.sent, report.failed, report.warnings) == (4, 0, 0), report.errors
    assert ticks[-1] == (4, 4)
    assert counts(scratch, study.uid) == (4, 2, 4)
    for uid, blob in stored_files(scratch, study.uid).items():
        source = next(f for f in study.files if str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) == uid)
        assert dataset_bytes(blob) == dataset_bytes(source)
    down = PeerInfo(0, "down", "DOWN", "127.0.0.1", 9, None, True, True, True)
    assert not echo(rt, down)
    failed = send_study(rt, study.uid, down)
    assert failed.failed == 4 and failed.sent == 0 and failed.errors


def test_dimse_server_in_process_sets_tcp_nodelay_and_stops(rt: Any) -> None:
    """Accepted sockets have Nagle off (40 ms per round trip otherwise); stop() frees the port."""
    import socket

    from readingroom.archive.dimse import DimseServer
    from tests.support.servers import free_port

    with rt.db.session() as s:
        add_peer(s, "testscu", "TESTSCU", "127.0.0.1", 104)
    rt.settings.dicom_port = free_port()
    server = DimseServer(rt)
    server.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", server.port, ae_title=rt.settings.aet)
        assert assoc.is_established
        try:
            assert server.server is not None
            accepted = eventually(lambda: server.server.active_associations, timeout=5, interval=0.05)
            sock = accepted[0].dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert assoc.send_c_echo().Status == 0
        finally:
            assoc.release()
    finally:
        server.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", rt.settings.dicom_port)) != 0
