"""Deterministic synthetic DICOM studies for the demo, the tests and the benchmarks.

Nothing is downloaded and no real patient data is ever needed: the archive,
QIDO-RS/C-FIND, the worklist and the codecs are exercised on studies that carry
every attribute a real modality would send, consistently across the study, with
plausible pixels. All values (UIDs included) derive from the spec and a seed,
so two runs give byte-identical files and tests can assert on exact values.

Patient identity depends on ``patient_index`` only (not on the seed), so the
same index always means the same person: that is how priors are produced.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from readingroom.demo import synth_pixels as px


@dataclass(frozen=True)
class SiteInfo:
    """Who "acquired" a study; InstitutionName is how the archive maps a study to its site."""

    code: str
    institution_name: str
    station_prefix: str
    issuer_of_patient_id: str


DEMO_SITES: tuple[SiteInfo, ...] = (
    SiteInfo("HUB", "Riverside University Medical Center", "RUMC", "RUMC-MRN"),
    SiteInfo("STB", "St. Brigid Community Hospital", "STB", "STB-MRN"),
    SiteInfo("LKS", "Lakeshore Regional Hospital", "LKS", "LKS-MRN"),
    SiteInfo("MVG", "Mercy Valley General Hospital", "MVG", "MVG-MRN"),
    SiteInfo("CDH", "Cedar Hollow Outpatient Imaging", "CDH", "CDH-MRN"),
)

#: Modalities each demo site owns (the outpatient site has no CT/MR).
SITE_MODALITIES: dict[str, tuple[str, ...]] = {
    "HUB": ("CT", "MR", "CR", "DX", "US"), "STB": ("CT", "MR", "CR", "US"),
    "LKS": ("CT", "MR", "DX", "US"), "MVG": ("CT", "CR", "US"), "CDH": ("DX", "US"),
}
#: Standard-time UTC offsets, matching the zones ``readingroom.demo.seed`` gives the sites.
_SITE_UTC_HOURS = {"HUB": -5, "STB": -5, "LKS": -6, "MVG": -6, "CDH": -8}
#: Fixed root so demo UIDs are recognisable and reproducible (swap for the project's own root if it gets one).
UID_ROOT: str | None = None  # None: UUID-derived "2.25." UIDs (PS3.5 B.2), no organisation root needed
BASE_DATE = date(2025, 3, 14)  # "today" of the demo world: fixed, so files never depend on the clock

_PATIENTS: tuple[tuple[str, str], ...] = (
    ("Müller^Jürgen", "M"), ("Okafor^Chidinma", "F"), ("Smith^Robert^J", "M"), ("Dubois^Hélène", "F"),
    ("Nguyen^Thi^Lan", "F"), ("Sørensen^Bjørn", "M"), ("García^María^José", "F"), ("Kowalski^Adam", "M"),
    ("O'Neill^Siobhán", "F"), ("Johnson^Emily", "F"), ("Lefèvre^François", "M"), ("Patel^Priya", "F"),
    ("Andersson^Lars", "M"), ("Fischer^Käthe", "F"), ("Brown^Michael^T", "M"), ("Núñez^José^Luis", "M"),
    ("Rossi^Giulia", "F"), ("Yamamoto^Kenji", "M"), ("Williams^Grace", "F"), ("Øvergård^Åse", "F"),
)
_PHYSICIANS = ("Hartmann^Lena^^Dr.", "Osei^Kwame^^Dr.", "Bergström^Ingrid^^Dr.", "Reyes^Daniel^^Dr.",
               "Chen^Wei^^Dr.", "Walsh^Patrick^^Dr.")
_VENDORS = {"CT": ("Helix Imaging", "Helix CT 128"), "MR": ("Meridian Medical", "Meridian Aera 1.5T"),
            "CR": ("Northwind Radiography", "NW-CR 500"), "DX": ("Northwind Radiography", "NW-DR 9"),
            "US": ("Sonara", "Sonara EX7")}
_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage, "CR": ComputedRadiographyImageStorage,
                "DX": DigitalXRayImageStorageForPresentation, "US": UltrasoundImageStorage}
_DEFAULT_SIZE = {"CT": (256, 256), "MR": (256, 256), "CR": (512, 512), "DX": (512, 512), "US": (240, 320)}


@dataclass(frozen=True)
class _Exam:
    description: str
    body_part: str
    region: str  # CT/MR phantom: head | chest | abdomen
    coverage_mm: float  # cranio-caudal extent of a CT/MR stack
    fov_mm: float  # in-plane field of view (image width)
    series: tuple[str, ...]  # CT reconstruction, MR weighting, CR view or US organ per series
    contrast: bool = False


_CATALOG: dict[str, tuple[_Exam, ...]] = {
    "CT": (_Exam("CT HEAD WO CONTRAST", "HEAD", "head", 140, 230, ("BRAIN", "BONE")),
           _Exam("CT CHEST W CONTRAST", "CHEST", "chest", 300, 360, ("MEDIASTINUM", "LUNG", "SOFT TISSUE"), True),
           _Exam("CT ABD/PELVIS W CONTRAST", "ABDOMEN", "abdomen", 420, 380, ("SOFT TISSUE", "BONE"), True)),
    "MR": (_Exam("MR BRAIN W/WO CONTRAST", "BRAIN", "head", 140, 240, ("T1", "T2", "FLAIR", "DWI", "T1 POST"), True),
           _Exam("MR BRAIN WO CONTRAST", "BRAIN", "head", 140, 240, ("T1", "T2", "FLAIR", "DWI")),
           _Exam("MR ABDOMEN W/WO CONTRAST", "ABDOMEN", "abdomen", 240, 380, ("T2", "T1", "DWI", "T1 POST"), True)),
    "CR": (_Exam("CHEST 2 VIEWS", "CHEST", "chest", 0, 430, ("PA", "LAT")),
           _Exam("CHEST 1 VIEW", "CHEST", "chest", 0, 430, ("AP",))),
    "US": (_Exam("US ABDOMEN COMPLETE", "ABDOMEN", "abdomen", 0, 160, ("LIVER", "GALLBLADDER", "RT KIDNEY")),
           _Exam("US RENAL COMPLETE", "KIDNEY", "kidney", 0, 160, ("RT KIDNEY", "LT KIDNEY", "BLADDER")),
           _Exam("US RIGHT UPPER QUADRANT", "ABDOMEN", "abdomen", 0, 160, ("LIVER", "GALLBLADDER"))),
}
_CATALOG["DX"] = _CATALOG["CR"]
_WINDOWS = {"BRAIN": (40, 80), "BONE": (500, 2500), "LUNG": (-600, 1500)}
_MR_PARAMS = {"T1": ("SE", 550, 12, 0, 3), "T2": ("SE", 4500, 95, 0, 16), "FLAIR": ("IR", 9000, 120, 2500, 24),
              "DWI": ("EP", 5200, 80, 0, 1), "T1 POST": ("SE", 550, 12, 0, 3)}


@dataclass(frozen=True)
class StudySpec:
    """What to generate; ``patient_index`` fixes the patient, ``days_ago`` the date before BASE_DATE.

    ``multiframe`` only applies to US: each series is then one cine instance of
    ``n_instances`` frames. ``rows``/``columns`` of 0 pick the modality default.
    """

    modality: str
    n_series: int
    n_instances: int
    site: SiteInfo
    patient_index: int
    days_ago: int
    accession: str
    rows: int = 0
    columns: int = 0
    multiframe: bool = False


def _h(*parts: object) -> int:
    """Stable 64-bit hash (``hash()`` is salted per process, useless for determinism)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def _uid(*parts: object) -> UID:
    """A UID (2.25 UUID form) that is a pure function of ``parts`` (seed + full spec + position)."""
    text = "|".join(map(str, parts))
    if UID_ROOT:
        return generate_uid(prefix=UID_ROOT, entropy_srcs=[text])
    # PS3.5 B.2: "2.25." + a 128-bit number; derived from a hash so it is repeatable.
    return UID("2.25." + str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")))


def _patient_id(index: int) -> str:
    """A 7-digit MRN, a bijection of the index (7919 is coprime with 9,000,000)."""
    return str(1_000_000 + (index * 7919 + 424_242) % 9_000_000)


def _birth_date(index: int) -> date:
    h = _h("birth", index)
    return date(1938 + h % 68, 1 + (h >> 8) % 12, 1 + (h >> 16) % 28)


def _tz_offset(site: SiteInfo, d: date) -> str:
    """The site's UTC offset on that date (US DST: 2nd Sunday of March to 1st Sunday of November)."""
    start = date(d.year, 3, 8) + timedelta(days=(6 - date(d.year, 3, 8).weekday()) % 7)
    end = date(d.year, 11, 1) + timedelta(days=(6 - date(d.year, 11, 1).weekday()) % 7)
    return f"{_SITE_UTC_HOURS.get(site.code, -5) + (start <= d < end):+03d}00"


def _exam(patient_index: int, modality: str) -> _Exam:
    """The exam a patient gets on a modality: seed-independent, so follow-ups repeat it (comparable priors)."""
    catalog = _CATALOG[modality]
    return catalog[_h("exam", patient_index, modality) % len(catalog)]


def _study_attrs(spec: StudySpec, seed: int, exam: _Exam, key: int) -> tuple[dict[str, object], datetime]:
    """Patient + study level attributes, shared by every instance of the study."""
    name, sex = _PATIENTS[spec.patient_index % len(_PATIENTS)]
    birth = _birth_date(spec.patient_index)
    study_date = BASE_DATE - timedelta(days=spec.days_ago)
    start = datetime.combine(study_date, datetime.min.time()) + timedelta(seconds=7 * 3600 + key % (11 * 3600))
    age = study_date.year - birth.year - ((study_date.month, study_date.day) < (birth.month, birth.day))
    physician = _PHYSICIANS[key % len(_PHYSICIANS)]
    texts = (name, physician, spec.site.institution_name)
    attrs: dict[str, object] = {
        "PatientName": name, "PatientID": _patient_id(spec.patient_index),
        "IssuerOfPatientID": spec.site.issuer_of_patient_id, "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": sex, "PatientAge": f"{max(age, 0):03d}Y",
        "StudyInstanceUID": _uid(seed, spec, "study"),
        "StudyDate": start.strftime("%Y%m%d"), "StudyTime": start.strftime("%H%M%S"),
        "AccessionNumber": spec.accession, "StudyID": str(key % 100_000),
        "StudyDescription": exam.description, "RequestedProcedureDescription": exam.description,
        "ReferringPhysicianName": physician, "InstitutionName": spec.site.institution_name,
        "InstitutionalDepartmentName": "Radiology", "TimezoneOffsetFromUTC": _tz_offset(spec.site, study_date),
        "BodyPartExamined": exam.body_part,
    }
    if not all(t.isascii() for t in texts):
        attrs["SpecificCharacterSet"] = "ISO_IR 100"
    return attrs, start


def _series_attrs(spec: StudySpec, seed: int, exam: _Exam, key: int, index: int,
                  start: datetime) -> tuple[dict[str, object], str, datetime]:
    """Series level attributes; returns them, the series label and the series start time."""
    label = exam.series[index % len(exam.series)]
    when = start + timedelta(minutes=6 * index, seconds=17 * index)
    mod = spec.modality
    if mod in ("CT", "MR"):
        description = f"AX {exam.coverage_mm / spec.n_instances:.3g}mm {label}" if mod == "CT" else f"AX {label}"
    else:
        description = f"{label} CINE" if spec.multiframe else label
    if index >= len(exam.series):
        description += f" ({index // len(exam.series) + 1})"
    manufacturer, model = _VENDORS[mod]
    attrs: dict[str, object] = {
        "Modality": mod, "SeriesInstanceUID": _uid(seed, spec, "series", index),
        "SeriesNumber": index + 1, "SeriesDescription": description,
        "SeriesDate": when.strftime("%Y%m%d"), "SeriesTime": when.strftime("%H%M%S"),
        "PerformedProcedureStepStartDate": start.strftime("%Y%m%d"),
        "PerformedProcedureStepStartTime": start.strftime("%H%M%S"),
        "PerformedProcedureStepID": f"PPS{key % 10**9}",
        "ProtocolName": f"{exam.description} {label}",
        "StationName": f"{spec.site.station_prefix}{mod}{1 + key % 3:02d}",
        "Manufacturer": manufacturer, "ManufacturerModelName": model,
        "DeviceSerialNumber": str(10_000 + _h(spec.site.code, mod) % 90_000), "SoftwareVersions": "4.2.1",
    }
    return attrs, label, when


def _request_item(spec: StudySpec, exam: _Exam) -> Dataset:
    """The RIS order the series was performed for (built per instance: items must not be shared)."""
    item = Dataset()
    item.RequestedProcedureID = f"RP{spec.accession}"[:16]
    item.ScheduledProcedureStepID = f"SPS{spec.accession}"[:16]
    item.AccessionNumber = spec.accession
    item.RequestedProcedureDescription = exam.description
    return item


def _image_attrs(ds: Dataset, spec: StudySpec, exam: _Exam, label: str, i: int, rows: int, cols: int) -> None:
    """Modality-specific image attributes (geometry, acquisition, display)."""
    mod = spec.modality
    spacing = exam.fov_mm / max(rows, cols)
    if mod != "US":  # US calibration lives in the ultrasound region instead
        ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
    if mod in ("CT", "MR"):
        step = exam.coverage_mm / spec.n_instances
        z = round(exam.coverage_mm / 2 - i * step, 4)
        corner = round(-exam.fov_mm / 2 + spacing / 2, 4)
        ds.ImagePositionPatient = [corner, corner, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness, ds.SliceLocation = round(step, 4), z
        ds.PatientPosition, ds.PositionReferenceIndicator = "HFS", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if mod == "CT":
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        center, width = _WINDOWS.get(label, (40, 400))
        ds.WindowCenter, ds.WindowWidth = center, width
        ds.KVP, ds.XRayTubeCurrent, ds.ExposureTime, ds.GantryDetectorTilt = 120, 240, 500, 0
        ds.ConvolutionKernel = "BONE" if label in ("BONE", "LUNG") else "STANDARD"
        ds.ReconstructionDiameter, ds.PixelPaddingValue = exam.fov_mm, -2000
        if exam.contrast:
            ds.ContrastBolusAgent = "IOHEXOL 350 MG/ML"
    elif mod == "MR":
        seq, tr, te, ti, etl = _MR_PARAMS[label]
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = seq, "SK", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = tr, te, etl
        if ti:
            ds.InversionTime = ti
        ds.MagneticFieldStrength, ds.ImagingFrequency, ds.ImagedNucleus = 1.5, 63.87, "1H"
        ds.SpacingBetweenSlices = round(exam.coverage_mm / spec.n_instances, 4)
        ds.WindowCenter, ds.WindowWidth = 600, 1200
        if label == "T1 POST":
            ds.ContrastBolusAgent = "GADOBUTROL"
    elif mod in ("CR", "DX"):
        ds.ImagerPixelSpacing = [round(spacing, 6), round(spacing, 6)]
        ds.ViewPosition, ds.PatientOrientation = label, ["P", "F"] if label == "LAT" else ["L", "F"]
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.KVP, ds.ExposureInuAs, ds.WindowCenter, ds.WindowWidth = 110, 2500, 2048, 4096
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.BurnedInAnnotation = "NO"
        if mod == "DX":
            ds.PresentationIntentType, ds.DetectorType = "FOR PRESENTATION", "DIRECT"
            ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
            ds.PresentationLUTShape, ds.ImageLaterality = "IDENTITY", "U"
    else:
        ds.ImageType, ds.PatientOrientation, ds.BurnedInAnnotation = ["ORIGINAL", "PRIMARY", "ABDOMINAL"], "", "NO"
        region = Dataset()
        region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
        region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3
        region.PhysicalDeltaX = region.PhysicalDeltaY = round(exam.fov_mm / 10 / rows, 6)
        region.ReferencePixelX0, region.ReferencePixelY0 = cols // 2, 0
        ds.SequenceOfUltrasoundRegions = [region]
        if spec.multiframe:
            ds.FrameTime, ds.CineRate, ds.RecommendedDisplayFrameRate = 33.3333, 30, 30
            ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time


def generate_study(spec: StudySpec, seed: int) -> Iterator[Dataset]:
    """Yield the study's instances as complete Part-10 ready Datasets (Explicit VR Little Endian)."""
    if spec.modality not in _CATALOG:
        raise ValueError(f"unsupported modality {spec.modality!r}; expected one of {sorted(_CATALOG)}")
    if spec.n_series < 1 or spec.n_instances < 1 or seed < 0:
        raise ValueError(f"need n_series >= 1, n_instances >= 1 and seed >= 0, got {spec} seed={seed}")
    exam = _exam(spec.patient_index, spec.modality)
    key = _h(seed, spec)
    study, start = _study_attrs(spec, seed, exam, key)
    rows = spec.rows or _DEFAULT_SIZE[spec.modality][0]
    cols = spec.columns or _DEFAULT_SIZE[spec.modality][1]
    frame_of_ref = _uid(seed, spec, "frame-of-reference")
    multiframe = spec.modality == "US" and spec.multiframe
    sop_class = UltrasoundMultiFrameImageStorage if multiframe else _SOP_CLASSES[spec.modality]
    per_series, frames = (1, spec.n_instances) if multiframe else (spec.n_instances, 1)
    for s in range(spec.n_series):
        series, label, when = _series_attrs(spec, seed, exam, key, s, start)
        for i in range(per_series):
            ds = Dataset()
            ds.update(study)
            ds.update(series)
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = _uid(seed, spec, "instance", s, i)
            ds.InstanceNumber = i + 1
            content = when + timedelta(seconds=i)
            ds.ContentDate, ds.ContentTime = content.strftime("%Y%m%d"), content.strftime("%H%M%S")
            ds.AcquisitionNumber = 1
            if key % 4:  # ~25% are unscheduled walk-ins without a RIS order
                ds.RequestAttributesSequence = [_request_item(spec, exam)]
            if spec.modality in ("CT", "MR"):
                ds.FrameOfReferenceUID = frame_of_ref
            _image_attrs(ds, spec, exam, label, i, rows, cols)
            rng = np.random.default_rng([seed, key % 2**32, s, i])
            t = i / max(per_series - 1, 1)
            arr = px.render(spec.modality, exam.region, label, t, rows, cols, rng, contrast=exam.contrast,
                            frames=frames)
            if spec.modality == "US":
                ds.set_pixel_data(arr, "RGB", 8, generate_instance_uid=False)
                if multiframe:
                    ds.NumberOfFrames = spec.n_instances  # kept even for a one-frame cine
            else:
                ds.set_pixel_data(arr, "MONOCHROME2", 16 if spec.modality == "CT" else 12,
                                  generate_instance_uid=False)
            ds.LossyImageCompression = "00"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            yield ds


def demo_specs(n_studies: int = 20, seed: int = 0) -> list[StudySpec]:
    """A mixed worklist: every site and modality represented, ~40% of studies are priors."""
    rnd = random.Random(seed)
    cycle = ("CT", "MR", "CR", "US", "CT", "MR", "DX", "CT", "US", "CR")
    n_patients = min(n_studies, max(len(DEMO_SITES), round(n_studies * 0.6)))  # every site gets a patient
    first_study: dict[int, StudySpec] = {}
    specs: list[StudySpec] = []
    for i in range(n_studies):
        if i < n_patients:
            patient = i
            if i < len(DEMO_SITES):
                site = DEMO_SITES[i]
                offered = SITE_MODALITIES[site.code]
                modality = next(m for m in cycle[i:] + cycle if m in offered)
            else:
                modality = cycle[i % len(cycle)]
                site = rnd.choice([s for s in DEMO_SITES if modality in SITE_MODALITIES[s.code]])
            days_ago = rnd.randint(0, 14)
        else:  # a prior for an existing patient at the same site, usually the same modality
            patient = rnd.randrange(n_patients)
            first = first_study[patient]
            site = first.site
            modality = first.modality if rnd.random() < 0.7 else rnd.choice(SITE_MODALITIES[site.code])
            days_ago = rnd.randint(60, 1800)
        n_series, n_inst, multiframe = {
            "CT": (rnd.randint(2, 3), rnd.choice((40, 48, 64)), False),
            "MR": (rnd.randint(3, 4), rnd.choice((20, 24)), False),
            "CR": (len(_exam(patient, "CR").series), 1, False), "DX": (len(_exam(patient, "DX").series), 1, False),
            "US": (2, rnd.randint(24, 32), True) if rnd.random() < 0.5 else (1, rnd.randint(8, 12), False),
        }[modality]
        spec = StudySpec(modality, n_series, n_inst, site, patient, days_ago,
                         f"{site.code}{seed % 1000:03d}{i + 1:05d}", multiframe=multiframe)
        first_study.setdefault(patient, spec)
        specs.append(spec)
    return specs


def write_study(spec: StudySpec, seed: int, out_dir: Path) -> list[Path]:
    """Write ``<out_dir>/<accession>/S<series>/I<instance>.dcm`` files and return their paths."""
    paths: list[Path] = []
    for ds in generate_study(spec, seed):
        path = Path(out_dir) / spec.accession / f"S{ds.SeriesNumber:03d}" / f"I{ds.InstanceNumber:05d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_demo_dataset(out_dir: Path, n_studies: int = 20, seed: int = 0) -> list[Path]:
    """Write the whole demo dataset (what ``readingroom demo`` seeds) and return every file path."""
    return [p for spec in demo_specs(n_studies, seed) for p in write_study(spec, seed, out_dir)]


_ENCODERS: dict[str, tuple[str, str]] = {  # name -> (transfer syntax, pydicom encoding plugin)
    "rle": (RLELossless, "pydicom"), "jpeg-ls-lossless": (JPEGLSLossless, "pyjpegls"),
    "jpeg2000-lossless": (JPEG2000Lossless, "pylibjpeg"),
}
_NO_JPEG = "pydicom has no JPEG (ISO 10918) encoder; use dcmtk's dcmcjpeg"
_LOSSY = "lossy syntaxes are not produced here: the copies must decode to identical pixels"
_NOT_SUPPORTED = {"jpeg-baseline": _NO_JPEG, "jpeg-lossless": _NO_JPEG, "jpeg-extended": _NO_JPEG,
                  "jpeg-ls-near-lossless": _LOSSY, "jpeg2000": _LOSSY}


def compress(paths: list[Path], syntax: str, out_dir: Path) -> list[Path]:
    """Re-encode copies of ``paths`` losslessly into ``out_dir`` (relative layout kept, UIDs unchanged).

    A lossless change of transfer syntax leaves the instance the same, so the
    SOP Instance UID is kept; tests can then pair originals and copies by UID.
    """
    if syntax in _NOT_SUPPORTED:
        raise ValueError(f"cannot compress to {syntax!r}: {_NOT_SUPPORTED[syntax]}")
    if syntax not in _ENCODERS:
        raise ValueError(f"unknown syntax {syntax!r}; supported: {', '.join(sorted(_ENCODERS))}")
    if not paths:
        return []
    uid, plugin = _ENCODERS[syntax]
    root = Path(os.path.commonpath([Path(p).resolve().parent for p in paths]))
    written: list[Path] = []
    for path in paths:
        ds = dcmread(path)
        ds.compress(uid, encoding_plugin=plugin, generate_instance_uid=False)
        target = Path(out_dir) / Path(path).resolve().relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written
