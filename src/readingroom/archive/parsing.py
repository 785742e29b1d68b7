"""Read what the index needs from a DICOM file without touching pixel data.

Only the header is parsed (``stop_before_pixels``); the position where
parsing stopped is the Pixel Data element, so its offset and length are
recorded for frame retrieval without ever loading the pixels. This keeps the
per-instance CPU cost small and lets multi-GB instances pass through in
constant memory.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from readingroom.archive import dicom_json
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


_UID_TAGS = {"SOPInstanceUID": 0x00080018, "SOPClassUID": 0x00080016, "StudyInstanceUID": 0x0020000D,
             "SeriesInstanceUID": 0x0020000E}


def _required_uid(ds: Dataset, keyword: str) -> str:
    """A UID the index needs, read from the raw element (no pydicom value conversion on the hot path)."""
    elem = ds.get_item(_UID_TAGS[keyword])
    value = elem.value if elem is not None else None
    if isinstance(value, bytes):
        text = value.decode("latin_1").rstrip("\x00 ").strip()
    elif value is None:
        text = ""
    elif isinstance(value, str):
        text = value.strip()
    else:  # an already converted, multi-valued element
        text = "\\".join(str(v) for v in value).strip()
    if not text:
        raise InvalidInstance(f"missing {keyword}")
    if "\\" in text:
        raise InvalidInstance(f"{keyword} has more than one value")
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
    with open(path, "rb") as fp:
        return _parse(fp, os.fstat(fp.fileno()).st_size)


def parse_and_hash(path: Path) -> tuple[ParsedInstance, str]:
    """``parse_file`` plus the file's SHA-256, from one open file (the header is then page-cache hot)."""
    with open(path, "rb") as fp:
        parsed = _parse(fp, os.fstat(fp.fileno()).st_size)
        fp.seek(0)
        return parsed, hashlib.file_digest(fp, "sha256").hexdigest()


class _HeaderReader:
    """A read-only view of a file whose ``tell()`` is free, for pydicom's header parse.

    pydicom asks for the position of every element; on a Python file object
    each ``tell()`` is an ``lseek`` system call that releases and re-takes
    the GIL, about 70 per instance, which under concurrent ingest became a
    storm of thread switches. Reads are served from a 64 KiB window (a header
    usually fits in one) and larger ones go straight to the file.
    """

    WINDOW = 64 * 1024

    def __init__(self, fp: BinaryIO, size: int) -> None:
        self._fp = fp
        self._size = size
        self._buf = b""
        self._base = 0
        self._pos = 0
        self.name = getattr(fp, "name", None)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._size - self._pos)
        start = self._pos - self._base
        if 0 <= start and start + n <= len(self._buf):
            data = self._buf[start: start + n]
        else:
            self._fp.seek(self._pos)
            if n >= self.WINDOW:
                data = self._fp.read(n)
            else:
                self._buf, self._base = self._fp.read(self.WINDOW), self._pos
                data = self._buf[:n]
        self._pos += len(data)
        return data


def _parse(fp: BinaryIO, size: int) -> ParsedInstance:
    if size == 0:
        raise InvalidInstance("empty file")
    header = _HeaderReader(fp, size)
    try:
        ds = dcmread(header, stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise InvalidInstance(f"not a DICOM Part 10 file: {exc}") from exc
    except Exception as exc:
        raise InvalidInstance(f"unreadable DICOM header: {exc}") from exc
    stop = header.tell()
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

    def bulk(tag: int) -> str:
        return bulk_uri(study_uid, series_uid, sop_uid, f"{tag:08X}")

    try:
        # Same JSON as pydicom's Dataset.to_json_dict, about ten times faster (see dicom_json).
        meta = dicom_json.to_json_dict(ds, 4096, bulk)
    except Exception as exc:
        raise InvalidInstance(f"header cannot be expressed as DICOM JSON: {exc}") from exc
    if pixel_vr:
        meta["7FE00010"] = {"vr": pixel_vr, "BulkDataURI": bulk_uri(study_uid, series_uid, sop_uid, "7FE00010")}
    return meta
