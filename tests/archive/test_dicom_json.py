"""The fast DICOM JSON encoder gives exactly pydicom's ``to_json_dict`` output.

Compared as serialized bytes (key order and number formatting included) on
pydicom's shipped test and character-set files, on hand-made headers full of
edge cases in three transfer syntaxes, and on a synthetic study.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import orjson
import pydicom
import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement

from readingroom.archive.dicom_json import to_json_dict

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"


def _uri(tag: int) -> str:
    return f"http://x/bulk/{tag:08X}"


def _both(make: object) -> tuple[bytes | str, bytes | str]:
    """(pydicom's JSON, ours) for two independent reads; an exception's type stands for its output."""
    assert callable(make)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            try:
                ref: bytes | str = orjson.dumps(make().to_json_dict(
                    bulk_data_threshold=4096, bulk_data_element_handler=lambda e: _uri(int(e.tag))))
            except Exception as exc:
                ref = type(exc).__name__
            try:
                got: bytes | str = orjson.dumps(to_json_dict(make(), 4096, _uri))
            except Exception as exc:
                got = type(exc).__name__
        finally:
            logging.disable(logging.NOTSET)
    return ref, got


def _shipped_files() -> Iterator[Path]:
    for folder in ("test_files", "charset_files"):
        for path in sorted((PYDICOM_DATA / folder).rglob("*")):
            if path.is_file() and path.suffix in ("", ".dcm") and path.name not in ("README", "DICOMDIR"):
                yield path


@pytest.mark.parametrize("path", list(_shipped_files()), ids=lambda p: p.name)
def test_same_as_pydicom_on_its_test_files(path: Path) -> None:
    for header_only in (True, False):
        try:
            dcmread(path, stop_before_pixels=header_only, force=True)
        except Exception:
            pytest.skip("pydicom cannot read it either")
        ref, got = _both(lambda h=header_only: dcmread(path, stop_before_pixels=h, force=True))
        assert got == ref


# -- hand-made headers ------------------------------------------------------------------------

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _element(tag: int, vr: str, value: bytes, *, implicit: bool, big: bool) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB", "UN") else b" "
    e = ">" if big else "<"
    head = struct.pack(f"{e}HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", len(value)) + value
    if vr in _LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(f"{e}I", len(value)) + value
    return head + vr.encode() + struct.pack(f"{e}H", len(value)) + value


def _part10(elements: list[tuple[int, str, bytes]], *, implicit: bool = False, big: bool = False) -> bytes:
    ts = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.2" if big else "1.2.840.10008.1.2.1")
    meta = b"".join(_element(t, vr, v, implicit=False, big=False) for t, vr, v in [
        (0x00020001, "OB", b"\x00\x01"),
        (0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.7"),
        (0x00020003, "UI", b"1.2.3.4"),
        (0x00020010, "UI", ts.encode()),
    ])
    group_length = _element(0x00020000, "UL", struct.pack("<I", len(meta)), implicit=False, big=False)
    body = b"".join(_element(t, vr, v, implicit=implicit, big=big) for t, vr, v in sorted(elements))
    return b"\0" * 128 + b"DICM" + group_length + meta + body


def _numbers(fmt: str, *values: float, big: bool = False) -> bytes:
    return struct.pack(f"{'>' if big else '<'}{len(values)}{fmt}", *values)


EDGE_STRINGS: dict[str, list[bytes]] = {
    "CS": [b"ORIGINAL\\PRIMARY\\AXIAL", b" LEADING ", b"A\\\\B", b"\\", b"  ", b"X\x00", b"ONE"],
    "DA": [b"20240102", b"20240102\\20240103", b"2024", b" ", b"20240102 "],
    "TM": [b"101010.123456", b"10", b"10\\11 ", b""],
    "DT": [b"20240102101010.5+0100", b"2024\\2025"],
    "AS": [b"045Y", b"045Y\\046Y"],
    "AE": [b" STORESCU ", b"A\\ B ", b"  "],
    "UI": [b"1.2.3\x00", b"1.2.3\\4.5.6\x00", b" 1.2 ", b"\x00"],
    "UR": [b"http://a/b ", b"http://a\\b"],
    "SH": [b"abc  ", b"a\\b  \\ c", b"caf\xe9", b"\\", b"x\x00 \x00"],
    "LO": [b"Hospital\\", b"  lead", b"M\xfcller\\\xe9"],
    "UC": [b"long\\text "],
    "ST": [b"a\\b  ", b"line\r\nline  ", b" "],
    "LT": [b"a\\b", b"\xe9t\xe9"],
    "UT": [b"some\\text  \x00"],
    "PN": [b"Doe^John", b"Doe^John=", b"Doe^John==", b"=Ideo", b"Doe^John=Y=P", b"A^B\\C^D", b"A\\\\B", b"A=B=C=D",
           b"M\xfcller^J\xf6rg", b"  ", b"\\", b"^^^^"],
    "IS": [b"12", b" 12 ", b"+5", b"-0", b"1\\2\\3", b"1\\\\3", b"1.0", b"abc", b"  ", b"007", b"1_0", b"99999999999"],
    "DS": [b"1.5", b" -2.5e3 ", b".5", b"5.", b"1\\2.25", b"1\\\\2", b"nan", b"inf", b"1,5", b"  ", b"+0.0",
           b"1E-10", b"0.1\\0.2\\0.3", b"1_0"],
}


def _edge_headers(big: bool) -> Iterator[tuple[str, list[tuple[int, str, bytes]]]]:
    tags = {"CS": 0x00080008, "DA": 0x00080020, "TM": 0x00080030, "DT": 0x0008002A, "AS": 0x00101010,
            "AE": 0x00020016 + 0x00060000, "UI": 0x00080018, "UR": 0x00080190, "SH": 0x00080050,
            "LO": 0x00081030, "UC": 0x00080119, "ST": 0x00080081, "LT": 0x00204000, "UT": 0x00080106,
            "PN": 0x00100010, "IS": 0x00200013, "DS": 0x00280030}
    for vr, values in EDGE_STRINGS.items():
        for value in values:
            yield f"{vr}-{value!r}", [(tags[vr], vr, value)]
    base = [(0x00100020, "LO", b"PID1"), (0x00200011, "IS", b"3")]
    yield "numbers", [
        *base,
        (0x00280010, "US", _numbers("H", 512, big=big)),
        (0x00181310, "US", _numbers("H", 0, 512, 512, 0, big=big)),
        (0x00281052, "DS", b"-1024"),
        (0x00189327, "FD", _numbers("d", 1.1, float("nan"), big=big)),
        (0x00181164, "DS", b"0.5\\0.5"),
        (0x00186024, "UL", _numbers("L", 4000000000, big=big)),
        (0x00181041, "FL", _numbers("f", 0.1, big=big)),
        (0x00720022, "SV", _numbers("q", -5, big=big)),
        (0x00189328, "FD", b"\x00\x01\x02"),  # wrong length: pydicom's problem
        (0x00280106, "SS", _numbers("h", -3, big=big)),
    ]
    yield "binary", [
        *base,
        (0x00282000, "OB", b"\x01\x02\x03"),
        (0x00091010, "OB", b"x" * 5000),  # private, explicit VR, bulk
        (0x00660023, "OW", b"\x00" * 3072),  # exactly at the inline limit
        (0x00660024, "OF", b"\x00" * 3076),
    ]
    yield "charset-latin1", [(0x00080005, "CS", b"ISO_IR 100"), (0x00100010, "PN", b"M\xfcller^J\xf6rg"),
                             (0x00081030, "LO", b"\xc9tude")]
    yield "charset-utf8", [(0x00080005, "CS", b"ISO_IR 192"), (0x00100010, "PN", "Müller^Jörg".encode()),
                           (0x00081030, "LO", "Étude\\研究".encode())]
    yield "charset-utf8-invalid", [(0x00080005, "CS", b"ISO_IR 192"), (0x00100010, "PN", b"M\xfcller")]
    yield "charset-other", [(0x00080005, "CS", b"ISO_IR 144"), (0x00100010, "PN", b"\xbb\xee\xdf")]
    yield "charset-2022", [(0x00080005, "CS", b"\\ISO 2022 IR 87"),
                           (0x00100010, "PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B")]
    yield "group-length-and-at", [(0x00080000, "UL", _numbers("L", 10, big=big)),
                                  (0x00209165, "AT", _numbers("H", 0x0020, 0x9153, big=big))]
    yield "lut-descriptor", [(0x00281101, "US", _numbers("H", 0, 0, 16, big=big))]
    yield "un-and-private", [(0x00100020, "UN", b"PID"), (0x00290010, "LO", b"CREATOR"),
                             (0x00291010, "UN", b"\x01\x02"), (0x00291011, "LO", b"private text")]
    item = _element(0xFFFEE000, "", b"", implicit=True, big=big)[:4]
    inner = _element(0x00080100, "SH", b"CODE", implicit=False, big=big) + \
        _element(0x00080104, "LO", b"M\xfcning", implicit=False, big=big)
    sq_item = item + struct.pack(f"{'>' if big else '<'}I", len(inner)) + inner
    yield "sequence", [(0x00080005, "CS", b"ISO_IR 100"), (0x00081032, "SQ", sq_item + sq_item),
                       (0x00400275, "SQ", b"")]


@pytest.mark.parametrize("syntax", ["explicit-le", "implicit-le", "explicit-be"])
def test_same_as_pydicom_on_edge_cases(syntax: str) -> None:
    implicit, big = syntax == "implicit-le", syntax == "explicit-be"
    checked = 0
    for name, elements in _edge_headers(big):
        if implicit and name == "sequence":
            continue  # the hand-made items above are explicit VR
        data = _part10(elements, implicit=implicit, big=big)
        ref, got = _both(lambda data=data: dcmread(BytesIO(data), force=True))
        assert got == ref, name
        checked += 1
    assert checked > 80


def test_same_as_pydicom_on_synthetic_studies(tmp_path: Path) -> None:
    from readingroom.demo.synth import write_demo_dataset

    paths = write_demo_dataset(tmp_path, n_studies=3)
    assert paths
    for path in paths:
        ref, got = _both(lambda path=path: dcmread(path, stop_before_pixels=True))
        assert got == ref


def test_plain_headers_take_the_fast_path() -> None:
    """The shortcut really is used: a typical header leaves pydicom's raw elements unconverted."""
    path = PYDICOM_DATA / "test_files" / "CT_small.dcm"
    ds = dcmread(path, stop_before_pixels=True)
    to_json_dict(ds, 4096, _uri)
    converted = [tag for tag in ds.keys() if not isinstance(ds.get_item(tag), RawDataElement)]
    # The character set and a sequence (and what pydicom reads to convert those) are pydicom's.
    assert len(converted) <= 4 < len(ds.keys()) // 10
