"""DICOM JSON (PS3.18 Annex F) of a parsed header, byte-identical to pydicom's, in a fraction of the time.

Every stored instance keeps its header as DICOM JSON (WADO-RS metadata is
served from it), so encoding it is on the ingest hot path. pydicom's
``Dataset.to_json_dict`` first turns each raw element into a ``DataElement``
(value classes, validation, multi-value wrappers) and then into JSON; for a
typical CT header that is about 1 ms, the largest single cost of parsing.

``to_json_dict`` here reads the raw element bytes directly for the value
representations whose decoding is simple and unambiguous, and reproduces
pydicom's result for them exactly (same splitting, stripping, numbers and
key order). Anything else is handed to pydicom element by element: unknown,
ambiguous or private implicit VRs, ``UN``, ``AT``, LUT descriptors, values
pydicom would repair or warn about (blank numbers, undecodable text), and
whole datasets in character sets other than the default, Latin-1 and UTF-8
or with non-default pydicom settings. ``tests/archive/test_dicom_json.py``
compares the two on pydicom's own test files, generated data and mutated
values, so the shortcut can only ever be faster, never different.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Callable
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.hooks import hooks, raw_element_value, raw_element_vr

BulkUri = Callable[[int], str]

_CHARSET_TAG = 0x00080005
#: (0008,0005) values whose text decodes as one Python codec, exactly as pydicom decodes it.
_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
#: pydicom fixes up these (first value may be stored signed); leave them to it.
_LUT_DESCRIPTORS = {0x00281101, 0x00281102, 0x00281103, 0x00283002, 0x00283006, 0x00283010}
_NUMBERS = {"US": ("H", 2, int), "SS": ("h", 2, int), "UL": ("L", 4, int), "SL": ("l", 4, int),
            "UV": ("Q", 8, int), "SV": ("q", 8, int), "FL": ("f", 4, float), "FD": ("d", 8, float)}
_BYTES = {"OB", "OD", "OF", "OL", "OV", "OW"}
_SPLIT_DEFAULT = {"AS", "CS", "DA", "DT", "TM"}
_SPLIT_TEXT = {"SH", "LO", "UC"}
_SINGLE_TEXT = {"ST", "LT", "UT"}
_IS_ITEM = re.compile(r" *[+-]?[0-9]+ *")
_DS_ITEM = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
_VR_CACHE: dict[int, str | None] = {}
_KEYS: dict[int, str] = {}


class _Fallback(Exception):
    """This element needs pydicom's own conversion."""


def to_json_dict(ds: Dataset, bulk_threshold: int, bulk_uri: BulkUri) -> dict[str, Any]:
    """``ds.to_json_dict(bulk_threshold, handler)`` where handler(elem) is ``bulk_uri(elem.tag)``."""
    encoding = _text_encoding(ds)
    if encoding is None or not _default_settings():
        return ds.to_json_dict(bulk_data_threshold=bulk_threshold,
                               bulk_data_element_handler=lambda elem: bulk_uri(int(elem.tag)))
    return _dataset(ds, encoding, bulk_threshold, bulk_uri)


def _default_settings() -> bool:
    """pydicom settings under which the shortcut reproduces pydicom (its defaults)."""
    return (not config.datetime_conversion and not config.use_DS_numpy and not config.use_IS_numpy
            and not config.use_DS_decimal and config.settings.reading_validation_mode != config.RAISE
            and hooks.raw_element_vr is raw_element_vr and hooks.raw_element_value is raw_element_value)


def _text_encoding(ds: Dataset) -> str | None:
    """The codec for text VRs, or None when pydicom's charset machinery is needed."""
    elem = ds.get_item(_CHARSET_TAG)
    if elem is None:
        return "latin_1"
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("latin_1")
    if not isinstance(value, str):  # already converted to a list: several charsets (ISO 2022)
        return None
    return _CHARSETS.get(value.rstrip(" \x00"))


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = _KEYS[tag] = f"{tag:08X}"
    return key


def _dataset(ds: Dataset, encoding: str, threshold: int, bulk_uri: BulkUri) -> dict[str, Any]:
    out: dict[str, Any] = {}
    elements = ds._dict  # insertion (= file) order, which is the order pydicom emits
    for tag in list(elements):
        elem = elements[tag]
        if type(elem) is RawDataElement:
            try:
                out[_key(tag)] = _raw(elem, encoding, threshold, bulk_uri)
                continue
            except _Fallback:
                elem = ds[tag]  # pydicom converts it (and replaces the raw element)
        out[_key(tag)] = _element(elem, encoding, threshold, bulk_uri)
    return out


def _element(elem: DataElement, encoding: str, threshold: int, bulk_uri: BulkUri) -> dict[str, Any]:
    if elem.VR == "SQ" and all(_CHARSET_TAG not in item._dict for item in elem.value):
        # Items inherit the parent's character set, which is the one we decode with.
        return {"vr": "SQ", "Value": [_dataset(item, encoding, threshold, bulk_uri) for item in elem.value]}
    return elem.to_json_dict(lambda e: bulk_uri(int(e.tag)), threshold)


def _vr_of(raw: RawDataElement) -> str:
    vr = raw.VR
    if vr is not None:
        if vr == "UN":
            raise _Fallback
        return str(vr)
    tag = int(raw.tag)
    if tag in _VR_CACHE:
        cached = _VR_CACHE[tag]
    else:
        try:
            cached = None if raw.tag.is_private else str(dictionary_VR(tag))
        except KeyError:
            cached = "UL" if tag & 0xFFFF == 0 and not raw.tag.is_private else None
        if cached is not None and (" " in cached or cached == "UN"):
            cached = None  # ambiguous ("US or SS", "OB or OW") or unknown: pydicom decides
        _VR_CACHE[tag] = cached
    if cached is None:
        raise _Fallback
    return cached


def _raw(raw: RawDataElement, encoding: str, threshold: int, bulk_uri: BulkUri) -> dict[str, Any]:
    """The JSON of one raw element, or _Fallback."""
    value = raw.value
    if value is None or raw.length == 0xFFFFFFFF or int(raw.tag) in _LUT_DESCRIPTORS:
        raise _Fallback
    vr = _vr_of(raw)
    if not value:
        if vr == "SQ":
            raise _Fallback
        return {"vr": vr}
    number = _NUMBERS.get(vr)
    if number is not None:
        fmt, size, kind = number
        if len(value) % size:
            raise _Fallback
        endian = "<" if raw.is_little_endian else ">"
        values = struct.unpack(f"{endian}{len(value) // size}{fmt}", value)
        return {"vr": vr, "Value": [kind(v) for v in values]}
    if vr in _BYTES:
        if len(value) > (threshold // 4) * 3:  # pydicom's test: the base64 text would exceed it
            return {"vr": vr, "BulkDataURI": bulk_uri(int(raw.tag))}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("utf-8")}
    items = _strings(vr, value, encoding)
    if items is None:
        return {"vr": vr}
    return {"vr": vr, "Value": items}


def _decode(value: bytes, encoding: str) -> str:
    if b"\x1b" in value:  # ISO 2022 escape sequences
        raise _Fallback
    try:
        return value.decode(encoding)
    except UnicodeDecodeError:  # pydicom warns and replaces characters
        raise _Fallback from None


def _strings(vr: str, value: bytes, encoding: str) -> list[Any] | None:
    """Values of a string VR as pydicom produces them; None when pydicom sees no value."""
    if vr in _SPLIT_DEFAULT:
        items = value.decode("latin_1").rstrip(" \x00").split("\\")
    elif vr in _SPLIT_TEXT:
        items = [v.rstrip("\x00 ") for v in _decode(value, encoding).split("\\")]
    elif vr in _SINGLE_TEXT:
        items = [_decode(value, encoding).rstrip("\x00 ")]
    elif vr == "UI":
        items = [v.strip() for v in value.decode("latin_1").rstrip("\x00 ").split("\\")]
    elif vr == "AE":
        items = [v.strip() for v in value.decode("latin_1").split("\\")]
    elif vr == "UR":
        text = value.decode("latin_1").rstrip()
        if "\\" in text:
            raise _Fallback
        items = [text]
    elif vr == "PN":
        return _person_names(value, encoding)
    elif vr == "IS":
        return _numbers(value.decode("latin_1"), _IS_ITEM, int)
    elif vr == "DS":
        return _numbers(value.decode("latin_1").strip(), _DS_ITEM, float)
    else:
        raise _Fallback
    if len(items) == 1 and not items[0]:
        return None
    return items


def _numbers(text: str, pattern: re.Pattern[str], kind: Callable[[str], Any]) -> list[Any] | None:
    items = text.rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0].strip():
        return None
    if not all(pattern.fullmatch(item) for item in items):
        raise _Fallback  # blanks inside a list, non-numbers: pydicom's warnings and repairs
    return [kind(item) for item in items]


def _person_names(value: bytes, encoding: str) -> list[dict[str, str]] | None:
    names = _decode(value.rstrip(b"\x00 "), encoding).split("\\")
    if len(names) == 1 and not names[0]:
        return None
    out = []
    for name in names:
        groups = name.split("=")
        while groups and not groups[-1]:
            groups.pop()
        if not groups:
            raise _Fallback  # an empty name inside a list
        comps = {"Alphabetic": groups[0]}
        if len(groups) > 1:
            comps["Ideographic"] = groups[1]
        if len(groups) > 2:
            comps["Phonetic"] = groups[2]
        out.append(comps)
    return out
