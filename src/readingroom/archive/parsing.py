"""Read what the index needs from a DICOM file without touching pixel data.

Only the header is parsed (``stop_before_pixels``); the position where
parsing stopped is the Pixel Data element, so its offset and length are
recorded for frame retrieval without ever loading the pixels. This keeps the
per-instance CPU cost small and lets multi-GB instances pass through in
constant memory.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydicom import dcmread
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from readingroom.archive.attributes import (
    INSTANCE_TAGS,
    PATIENT_TAGS,
    SERIES_TAGS,
    STUDY_TAGS,
    pick,
)

BASE_PLACEHOLDER = "@@BASE@@"
PIXEL_TAGS = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}
_ITEM = 0xE000FFFE
_SEQ_DELIM = 0xE0DDFFFE
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class InvalidInstance(ValueError):
    """The bytes are not an acceptable DICOM instance; the message says why."""


@dataclass
class ParsedInstance:
    """Everything indexing needs, taken from one file's header."""

    sop_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    dataset: Dataset
    metadata: dict[str, Any]
    pixel_offset: int | None = None
    pixel_length: int | None = None
    encapsulated: bool = False
    file_size: int = 0
    level_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def metadata_json(self) -> str:
        return orjson.dumps(self.metadata).decode()


def bulk_uri(study_uid: str, series_uid: str, sop_uid: str, tag: str) -> str:
    """BulkDataURI with a placeholder base, substituted when served."""
    return f"{BASE_PLACEHOLDER}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulk/{tag}"


def _required_uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    if not text:
        raise InvalidInstance(f"missing {keyword}")
    if len(text) > 64:
        raise InvalidInstance(f"{keyword} longer than 64 characters")
    return text


def _pixel_extent(fp: BinaryIO, pos: int, size: int, ts: str) -> tuple[int, int, bool, str] | None:
    """Offset and length of the pixel data value that starts at ``pos``."""
    if pos + 8 > size:
        return None
    fp.seek(pos)
    head = fp.read(12)
    big = ts == ExplicitVRBigEndian
    tag_fmt = ">HH" if big else "<HH"
    group, elem = struct.unpack(tag_fmt, head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_TAGS:
        return None
    if ts == ImplicitVRLittleEndian:
        (length,) = struct.unpack("<I", head[4:8])
        value_at, vr = pos + 8, PIXEL_TAGS[tag]
    else:
        vr = head[4:6].decode("ascii", "replace")
        if head[4:6] in _LONG_VRS:
            (length,) = struct.unpack(">I" if big else "<I", head[8:12])
            value_at = pos + 12
        else:
            (length,) = struct.unpack(">H" if big else "<H", head[6:8])
            value_at = pos + 8
    if length != 0xFFFFFFFF:
        if value_at + length > size:
            raise InvalidInstance(
                f"truncated: pixel data declares {length} bytes but only {size - value_at} are present"
            )
        return value_at, length, False, vr
    # Encapsulated: walk the item headers (seeking, never reading fragments).
    at = value_at
    while True:
        if at + 8 > size:
            raise InvalidInstance("truncated: encapsulated pixel data has no sequence delimiter")
        fp.seek(at)
        item_tag, item_len = struct.unpack("<II", fp.read(8))
        if item_tag == _SEQ_DELIM:
            return value_at, at + 8 - value_at, True, vr
        if item_tag != _ITEM:
            raise InvalidInstance("corrupt encapsulated pixel data (expected an item tag)")
        at += 8 + item_len
        if at > size:
            raise InvalidInstance("truncated: an encapsulated pixel data fragment is cut short")


def _cut_short(ds: Dataset, stop: int) -> bool:
    """Whether the header was cut off by the end of the file.

    pydicom silently accepts a value shorter than its declared length at EOF
    and stops quietly on a partial element header, so check that the last
    element (highest tag) ends exactly where parsing stopped. Sequences are
    read eagerly and carry no position; a header ending in one is not judged.
    """
    tags = list(ds.keys())
    for tag in tags:
        elem = ds.get_item(tag)
        if (isinstance(elem, RawDataElement) and elem.value is not None and elem.length != 0xFFFFFFFF
                and len(elem.value) < elem.length):
            return True
    last = ds.get_item(max(tags)) if tags else None
    if not isinstance(last, RawDataElement) or last.value_tell is None or last.length == 0xFFFFFFFF:
        return False
    return last.value_tell + last.length < stop


def parse_file(path: Path) -> ParsedInstance:
    """Parse and validate a Part-10 file's header; raise InvalidInstance with a reason."""
    size = os.path.getsize(path)
    if size == 0:
        raise InvalidInstance("empty file")
    with open(path, "rb") as fp:
        try:
            ds = dcmread(fp, stop_before_pixels=True)
        except InvalidDicomError as exc:
            raise InvalidInstance(f"not a DICOM Part 10 file: {exc}") from exc
        except Exception as exc:
            raise InvalidInstance(f"unreadable DICOM header: {exc}") from exc
        stop = fp.tell()
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        if not ts:
            raise InvalidInstance("no Transfer Syntax UID in the file meta information")
        extent = None
        if ts != DeflatedExplicitVRLittleEndian:
            extent = _pixel_extent(fp, stop, size, ts)
            if extent is None and _cut_short(ds, stop):
                raise InvalidInstance("truncated: the file ends inside its header")
    sop_uid = _required_uid(ds, "SOPInstanceUID")
    sop_class = _required_uid(ds, "SOPClassUID")
    study_uid = _required_uid(ds, "StudyInstanceUID")
    series_uid = _required_uid(ds, "SeriesInstanceUID")
    parsed = ParsedInstance(
        sop_uid=sop_uid,
        sop_class_uid=sop_class,
        study_uid=study_uid,
        series_uid=series_uid,
        transfer_syntax_uid=ts,
        dataset=ds,
        metadata={},
        file_size=size,
    )
    if extent is not None:
        parsed.pixel_offset, parsed.pixel_length, parsed.encapsulated, pixel_vr = extent
    else:
        pixel_vr = ""
    parsed.metadata = to_metadata(ds, study_uid, series_uid, sop_uid, pixel_vr)
    parsed.level_attrs = {
        "PATIENT": pick(parsed.metadata, PATIENT_TAGS),
        "STUDY": pick(parsed.metadata, STUDY_TAGS),
        "SERIES": pick(parsed.metadata, SERIES_TAGS),
        "IMAGE": pick(parsed.metadata, INSTANCE_TAGS),
    }
    return parsed


def to_metadata(ds: Dataset, study_uid: str, series_uid: str, sop_uid: str, pixel_vr: str) -> dict[str, Any]:
    """DICOM JSON (PS3.18 Annex F) of the header; bulk data become BulkDataURIs."""

    def bulk(elem: DataElement) -> str:
        return bulk_uri(study_uid, series_uid, sop_uid, f"{elem.tag:08X}")

    try:
        meta = ds.to_json_dict(bulk_data_threshold=4096, bulk_data_element_handler=bulk)
    except Exception as exc:
        raise InvalidInstance(f"header cannot be expressed as DICOM JSON: {exc}") from exc
    if pixel_vr:
        meta["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": bulk_uri(study_uid, series_uid, sop_uid, "7FE00010")}
    return meta
