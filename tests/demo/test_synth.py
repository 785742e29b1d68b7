"""The synthetic studies are what archive, QIDO-RS and C-FIND tests query: prove they are
deterministic, complete, internally consistent and decodable (also after lossless re-encoding)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
)

from readingroom.demo import synth
from readingroom.demo.synth import (
    DEMO_SITES,
    StudySpec,
    compress,
    demo_specs,
    generate_study,
    write_demo_dataset,
    write_study,
)

PATIENT = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
STUDY = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription",
    "ReferringPhysicianName", "InstitutionName", "InstitutionalDepartmentName", "TimezoneOffsetFromUTC",
    "RequestedProcedureDescription", "PatientAge",
)
SERIES = (
    "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "BodyPartExamined", "SeriesDate",
    "SeriesTime", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "ProtocolName",
    "StationName", "Manufacturer",
)
INSTANCE = (
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "PhotometricInterpretation", "SamplesPerPixel", "ContentDate", "ContentTime", "ImageType",
)
SOP_CLASS_BY_MODALITY = {
    "CT": {"1.2.840.10008.5.1.4.1.1.2"},
    "MR": {"1.2.840.10008.5.1.4.1.1.4"},
    "CR": {"1.2.840.10008.5.1.4.1.1.1"},
    "DX": {"1.2.840.10008.5.1.4.1.1.1.1"},
    "US": {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1"},
}
HUB, COMMUNITY, OUTPATIENT = DEMO_SITES[0], DEMO_SITES[1], DEMO_SITES[4]


def small_specs() -> list[StudySpec]:
    """One small study per image type, quick enough for per-test generation."""
    return [
        StudySpec("CT", 2, 6, HUB, 0, 3, "T-CT-1"),
        StudySpec("MR", 2, 5, COMMUNITY, 1, 40, "T-MR-1"),
        StudySpec("CR", 2, 1, HUB, 2, 0, "T-CR-1"),
        StudySpec("DX", 1, 1, OUTPATIENT, 3, 9, "T-DX-1"),
        StudySpec("US", 1, 3, OUTPATIENT, 4, 1, "T-US-1"),
        StudySpec("US", 2, 7, OUTPATIENT, 5, 1, "T-US-2", multiframe=True),
    ]


def digests(paths: list[Path], root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], float]:
    out = tmp_path_factory.mktemp("demo")
    return write_demo_dataset(out, n_studies=20, seed=0), 0.0


@pytest.fixture(scope="module")
def headers(demo: tuple[list[Path], float]) -> list:
    return [dcmread(p, stop_before_pixels=True) for p in demo[0]]


def test_same_spec_and_seed_give_byte_identical_files(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a = [p for spec in small_specs() for p in write_study(spec, 11, first)]
    b = [p for spec in small_specs() for p in write_study(spec, 11, second)]
    c = [p for spec in small_specs() for p in write_study(spec, 12, other)]
    assert digests(a, first) == digests(b, second)
    assert set(digests(a, first).values()).isdisjoint(digests(c, other).values())
    uids_a = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in a}
    uids_c = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in c}
    assert uids_a.isdisjoint(uids_c), "a different seed must give different UIDs"


def test_output_does_not_depend_on_the_process(tmp_path: Path) -> None:
    """Nothing may hang on hash() salting, the clock or import order: compare with a fresh interpreter."""
    spec = small_specs()[0]
    here = digests(write_study(spec, 5, tmp_path / "here"), tmp_path / "here")
    script = (
        "import hashlib, sys; from pathlib import Path; from readingroom.demo.synth import *; "
        f"spec = {spec!r}; root = Path(sys.argv[1]); "
        "[print(p.relative_to(root), hashlib.sha256(p.read_bytes()).hexdigest()) for p in write_study(spec, 5, root)]"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(synth.__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "there")], env=env, check=True,
                          capture_output=True, text=True)
    there = dict(line.split(" ") for line in done.stdout.splitlines())
    assert there == here


def test_demo_specs_are_deterministic_and_mixed() -> None:
    specs = demo_specs(20, seed=0)
    assert specs == demo_specs(20, seed=0)
    assert specs != demo_specs(20, seed=1)
    assert len(specs) == 20
    assert {s.site for s in specs} == set(DEMO_SITES)
    modalities = {s.modality for s in specs}
    assert {"CT", "MR", "US"} <= modalities and modalities & {"CR", "DX"}
    assert any(s.multiframe for s in specs)
    assert len({s.accession for s in specs}) == 20
    per_patient = defaultdict(list)
    for s in specs:
        per_patient[s.patient_index].append(s)
    assert any(len(v) > 1 for v in per_patient.values()), "the demo needs priors"


def test_demo_dataset_size(demo: tuple[list[Path], float]) -> None:
    paths, _ = demo
    assert 500 <= len(paths) <= 2500


def test_every_file_has_required_attributes(headers: list) -> None:
    for ds in headers:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        for keyword in PATIENT + STUDY + SERIES + INSTANCE:
            assert keyword in ds, f"{keyword} missing from {ds.Modality} {ds.SeriesDescription}"
            assert str(ds[keyword].value).strip() != "", f"{keyword} empty"
        assert ds.SOPClassUID in SOP_CLASS_BY_MODALITY[ds.Modality]
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert UID(ds[keyword].value).is_valid
        assert ds.InstitutionName in {s.institution_name for s in DEMO_SITES}
        if ds.Modality in ("CT", "MR"):
            for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "SliceLocation",
                            "PixelSpacing", "FrameOfReferenceUID"):
                assert keyword in ds
        if ds.Modality in ("CR", "DX"):
            assert "ImagerPixelSpacing" in ds and "ViewPosition" in ds
    assert sum("RequestAttributesSequence" in ds for ds in headers) > len(headers) // 2
    assert len({ds.SOPInstanceUID for ds in headers}) == len(headers)


def test_study_and_series_attributes_are_consistent(headers: list) -> None:
    studies: dict[str, set] = defaultdict(set)
    series: dict[str, set] = defaultdict(set)
    series_study: dict[str, set] = defaultdict(set)
    for ds in headers:
        studies[ds.StudyInstanceUID].add(tuple(str(ds[k].value) for k in PATIENT + STUDY))
        series[ds.SeriesInstanceUID].add(tuple(str(ds[k].value) for k in SERIES))
        series_study[ds.SeriesInstanceUID].add(ds.StudyInstanceUID)
        if "RequestAttributesSequence" in ds:
            assert ds.RequestAttributesSequence[0].AccessionNumber == ds.AccessionNumber
    assert len(studies) == 20
    assert all(len(v) == 1 for v in studies.values()), "study attributes differ between instances"
    assert all(len(v) == 1 for v in series.values()), "series attributes differ between instances"
    assert all(len(v) == 1 for v in series_study.values())


def test_priors_share_the_patient(headers: list) -> None:
    by_patient: dict[str, set] = defaultdict(set)
    identity: dict[str, set] = defaultdict(set)
    for ds in headers:
        by_patient[ds.PatientID].add(ds.StudyInstanceUID)
        identity[ds.PatientID].add((str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex, ds.IssuerOfPatientID))
    assert any(len(studies) > 1 for studies in by_patient.values())
    assert all(len(v) == 1 for v in identity.values())
    a = next(generate_study(StudySpec("CR", 1, 1, HUB, 42, 0, "P-1"), 0))
    b = next(generate_study(StudySpec("MR", 1, 1, HUB, 42, 700, "P-2"), 5))
    assert (a.PatientID, a.PatientName, a.PatientBirthDate) == (b.PatientID, b.PatientName, b.PatientBirthDate)
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.StudyDate > b.StudyDate


def test_latin1_names_set_the_character_set(tmp_path: Path) -> None:
    accented = write_study(StudySpec("CR", 1, 1, HUB, 0, 0, "L-1"), 0, tmp_path)[0]  # Müller^Jürgen
    plain = write_study(StudySpec("CR", 1, 1, HUB, 1, 0, "L-2"), 0, tmp_path)[0]  # Okafor^Chidinma
    ds = dcmread(accented)
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert "Müller".encode("latin-1") in accented.read_bytes()
    assert "SpecificCharacterSet" not in dcmread(plain)


@pytest.mark.parametrize("spec", small_specs(), ids=lambda s: s.accession)
def test_pixels_decode_and_are_not_constant(spec: StudySpec) -> None:
    for ds in generate_study(spec, 3):
        arr = ds.pixel_array
        assert arr.shape[-3 if ds.SamplesPerPixel == 3 else -2:][:2] == (ds.Rows, ds.Columns)
        assert arr.std() > 5
        frames = arr.reshape(int(ds.get("NumberOfFrames", 1)), -1)
        assert all(len(np.unique(frame)) > 50 for frame in frames)


def test_ct_is_a_real_stack_in_hounsfield_units() -> None:
    datasets = list(generate_study(StudySpec("CT", 1, 10, HUB, 6, 0, "G-1"), 0))
    z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    steps = np.diff(z)
    assert np.allclose(steps, steps[0]) and steps[0] < 0
    assert np.isclose(abs(steps[0]), float(datasets[0].SliceThickness))
    assert all(float(ds.SliceLocation) == float(ds.ImagePositionPatient[2]) for ds in datasets)
    assert len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    ds = datasets[5]
    assert ds.SOPClassUID == CTImageStorage and ds.PixelRepresentation == 1
    assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    inside = ds.pixel_array != ds.PixelPaddingValue
    assert hu[inside].min() < -900 and hu.max() > 500  # air and bone
    assert not np.array_equal(datasets[1].pixel_array, datasets[8].pixel_array)


def test_multiframe_us_is_one_cine_instance_per_series() -> None:
    datasets = list(generate_study(StudySpec("US", 2, 12, OUTPATIENT, 7, 0, "U-1", multiframe=True), 0))
    assert len(datasets) == 2
    for ds in datasets:
        assert ds.SOPClassUID == UltrasoundMultiFrameImageStorage
        assert ds.NumberOfFrames == 12 and ds.CineRate == 30 and float(ds.FrameTime) > 0
        assert ds.FrameIncrementPointer == 0x00181063
        assert (ds.PhotometricInterpretation, ds.PlanarConfiguration, ds.BitsAllocated) == ("RGB", 0, 8)
        arr = ds.pixel_array
        assert arr.shape == (12, 240, 320, 3)
        assert not np.array_equal(arr[0], arr[6]), "cine frames should move"
        assert np.any(arr[..., 0] != arr[..., 2]), "RGB channels should not all be grey"


def test_rows_and_columns_override() -> None:
    ds = next(generate_study(StudySpec("MR", 1, 1, HUB, 0, 0, "S-1", rows=128, columns=160), 0))
    assert (ds.Rows, ds.Columns) == (128, 160) and ds.pixel_array.shape == (128, 160)


@pytest.mark.parametrize(
    ("syntax", "uid"),
    [("rle", RLELossless), ("jpeg-ls-lossless", JPEGLSLossless), ("jpeg2000-lossless", JPEG2000Lossless)],
)
def test_compress_is_lossless(tmp_path: Path, syntax: str, uid: str) -> None:
    originals = [p for spec in small_specs() for p in write_study(spec, 0, tmp_path / "orig")[:2]]
    copies = compress(originals, syntax, tmp_path / syntax)
    assert len(copies) == len(originals)
    for original, copy in zip(originals, copies, strict=True):
        assert copy.relative_to(tmp_path / syntax) == original.relative_to(tmp_path / "orig")
        a, b = dcmread(original), dcmread(copy)
        assert b.file_meta.TransferSyntaxUID == uid
        assert b.SOPInstanceUID == a.SOPInstanceUID
        assert copy.stat().st_size < original.stat().st_size
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)


def test_compress_rejects_unsupported_syntaxes(tmp_path: Path) -> None:
    path = write_study(StudySpec("CR", 1, 1, HUB, 0, 0, "C-1"), 0, tmp_path)
    with pytest.raises(ValueError, match="dcmcjpeg"):
        compress(path, "jpeg-baseline", tmp_path / "out")
    with pytest.raises(ValueError, match="lossy"):
        compress(path, "jpeg2000", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown syntax"):
        compress(path, "webp", tmp_path / "out")


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmtk not installed")
def test_dcmtk_reads_and_jpeg_encodes_the_files(tmp_path: Path) -> None:
    paths = [p for spec in small_specs()[:3] for p in write_study(spec, 0, tmp_path / "orig")[:1]]
    for path in paths:
        subprocess.run(["dcmdump", "-q", str(path)], check=True, capture_output=True)
        out = tmp_path / f"{path.parent.parent.name}.jpeg-lossless.dcm"
        subprocess.run(["dcmcjpeg", "--encode-lossless-sv1", str(path), str(out)], check=True, capture_output=True)
        np.testing.assert_array_equal(dcmread(path).pixel_array, dcmread(out).pixel_array)
