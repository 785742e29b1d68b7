"""Which attributes belong to which query level.

The lists follow PS3.18 section 10.6.3 (QIDO-RS required return attributes,
tables 10.6.3-3 to -5) and PS3.4 Annex C (C-FIND unique / required keys),
plus the attributes a reading network routes and reports on (institution,
body part, description). Both the QIDO-RS and the C-FIND edges draw from
these, so the two protocols always answer with the same attributes.
"""

from __future__ import annotations

from typing import Any

PATIENT_TAGS: tuple[str, ...] = (
    "00080005",  # SpecificCharacterSet
    "00100010",  # PatientName
    "00100020",  # PatientID
    "00100021",  # IssuerOfPatientID
    "00100030",  # PatientBirthDate
    "00100040",  # PatientSex
    "00101010",  # PatientAge
    "00101000",  # OtherPatientIDs
)

STUDY_TAGS: tuple[str, ...] = (
    *PATIENT_TAGS,
    "00080020",  # StudyDate
    "00080030",  # StudyTime
    "00080050",  # AccessionNumber
    "00080080",  # InstitutionName
    "00080090",  # ReferringPhysicianName
    "00080201",  # TimezoneOffsetFromUTC
    "00081030",  # StudyDescription
    "0020000D",  # StudyInstanceUID
    "00200010",  # StudyID
    "00321060",  # RequestedProcedureDescription
)

SERIES_TAGS: tuple[str, ...] = (
    "00080021",  # SeriesDate
    "00080031",  # SeriesTime
    "00080060",  # Modality
    "0008103E",  # SeriesDescription
    "00181030",  # ProtocolName
    "00180015",  # BodyPartExamined
    "0020000E",  # SeriesInstanceUID
    "00200011",  # SeriesNumber
    "00400244",  # PerformedProcedureStepStartDate
    "00400245",  # PerformedProcedureStepStartTime
    "00400275",  # RequestAttributesSequence
    "00081010",  # StationName
    "00080070",  # Manufacturer
)

INSTANCE_TAGS: tuple[str, ...] = (
    "00080016",  # SOPClassUID
    "00080018",  # SOPInstanceUID
    "00080008",  # ImageType
    "00080023",  # ContentDate
    "00080033",  # ContentTime
    "00200013",  # InstanceNumber
    "00280008",  # NumberOfFrames
    "00280010",  # Rows
    "00280011",  # Columns
    "00280100",  # BitsAllocated
    "00280004",  # PhotometricInterpretation
)

# Computed attributes, filled in from the index when answering.
MODALITIES_IN_STUDY = "00080061"
NUM_STUDY_SERIES = "00201206"
NUM_STUDY_INSTANCES = "00201208"
NUM_SERIES_INSTANCES = "00201209"
NUM_PATIENT_STUDIES = "00201200"
NUM_PATIENT_SERIES = "00201202"
NUM_PATIENT_INSTANCES = "00201204"
INSTANCE_AVAILABILITY = "00080056"
RETRIEVE_URL = "00081190"
RETRIEVE_AE_TITLE = "00080054"
AVAILABLE_TRANSFER_SYNTAX = "00083002"
QUERY_RETRIEVE_LEVEL = "00080052"

LEVEL_TAGS: dict[str, tuple[str, ...]] = {
    "PATIENT": PATIENT_TAGS,
    "STUDY": STUDY_TAGS,
    "SERIES": SERIES_TAGS,
    "IMAGE": INSTANCE_TAGS,
}


def pick(meta: dict[str, Any], tags: tuple[str, ...]) -> dict[str, Any]:
    """The subset of a DICOM JSON object with the given tags."""
    return {tag: meta[tag] for tag in tags if tag in meta}


def first_value(meta: dict[str, Any], tag: str, default: Any = "") -> Any:
    """First value of an attribute in a DICOM JSON object (PN as its alphabetic form)."""
    elem = meta.get(tag)
    if not elem:
        return default
    values = elem.get("Value")
    if not values:
        return default
    value = values[0]
    if isinstance(value, dict) and "Alphabetic" in value:
        return value.get("Alphabetic", default)
    return value


def json_str(value: str | None, vr: str) -> dict[str, Any]:
    """A DICOM JSON element holding one string (or nothing)."""
    if value in (None, ""):
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": value}]}
    return {"vr": vr, "Value": [value]}


def json_int(value: int | None, vr: str = "IS") -> dict[str, Any]:
    """A DICOM JSON element holding one integer."""
    if value is None:
        return {"vr": vr}
    return {"vr": vr, "Value": [value]}
