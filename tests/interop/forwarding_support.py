"""Helpers of the forwarding, priors and go-live tests: a runtime with a DIMSE listener, studies, destinations."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from readingroom.archive.ingest import ingest_path
from readingroom.archive.peers import add_peer
from readingroom.archive.stability import complete_stable_studies
from readingroom.clock import utcnow
from readingroom.demo import synth
from readingroom.interop.models import Destination
from readingroom.runtime import Runtime
from tests.support.servers import create_test_database, drop_test_database, free_port

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: Orthanc options: its DICOMweb plugin at /dicom-web, and C-GET / C-MOVE for callers it knows.
ORTHANC_EXTRA: dict[str, Any] = {"Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                                 "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True}


@contextmanager
def runtime(tmp_path: Path, **overrides: Any) -> Iterator[Runtime]:
    """A Runtime on a fresh database (SQLite, or PostgreSQL with READINGROOM_TEST_DATABASE_URL)."""
    from readingroom.config import load_settings

    db_url, db_name = create_test_database()
    settings = load_settings(tmp_path / "data", database_url=db_url, stable_age_seconds=1,
                             dicom_port=free_port(), accept_loopback_aets=True, **overrides)
    rt = Runtime.open(settings)
    try:
        yield rt
    finally:
        rt.close()
        drop_test_database(db_name)


def write_study(out: Path, *, patient: int, days_ago: int, accession: str, n: int = 3,
                modality: str = "CT") -> list[Path]:
    spec = synth.StudySpec(modality, 1, n, synth.DEMO_SITES[0], patient, days_ago, accession, rows=64, columns=64)
    return synth.write_study(spec, seed=11, out_dir=out)


def ingest_complete(rt: Runtime, paths: list[Path]) -> str:
    """Ingest files and mark their study complete (a ``study.complete`` event); the Study Instance UID."""
    from pydicom import dcmread

    for p in paths:
        result = ingest_path(rt, p, actor="test")
        assert result.status in ("stored", "duplicate"), result
    complete_stable_studies(rt, stable_age=0)
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def dataset_sha256(data: bytes) -> str:
    """SHA-256 of a Part-10 file's data set (file meta differs between archives; the data set must not)."""
    group_length = int.from_bytes(data[140:144], "little")
    return hashlib.sha256(data[144 + group_length:]).hexdigest()


def add_destination(rt: Runtime, name: str, kind: str, *, peer: tuple[str, str, int] | None = None, url: str = "",
                    prior_source: bool = False, site_id: int | None = None) -> int:
    """A destination (and its DICOM peer for kind 'dicom'); its id."""
    with rt.db.session() as s:
        peer_id = None
        if peer is not None:
            peer_id = add_peer(s, f"peer-{name}", peer[0], peer[1], peer[2], site_id=site_id).id
        dest = Destination(name=name, kind=kind, url=url, peer_id=peer_id, prior_source=prior_source,
                           site_id=site_id, options={}, events=[], created_at=utcnow())
        s.add(dest)
        s.flush()
        rt.invalidate("peers.")
        return dest.id
