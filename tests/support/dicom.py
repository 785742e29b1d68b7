"""Small DICOM helpers for tests: variants of shipped test files."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

LOCAL_TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtplan.dcm")


def sample(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} missing"
    return Path(path)


def variant(src: str | Path, out: Path, **changes: object) -> Path:
    """A copy of a test file with attributes changed (``None`` deletes)."""
    ds = pydicom.dcmread(sample(src) if isinstance(src, str) else src)
    for keyword, value in changes.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if "SOPInstanceUID" in changes and changes["SOPInstanceUID"] is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=False)
    return out


def new_study(src: str, out_dir: Path, n: int, *, study_uid: str | None = None, **changes: object) -> list[Path]:
    """``n`` instances of one new study (one series) built from a test file."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i in range(n):
        sop = generate_uid()
        paths.append(variant(src, out_dir / f"{sop}.dcm", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                             SOPInstanceUID=sop, InstanceNumber=i + 1, **changes))
    return paths
