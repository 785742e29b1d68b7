"""DICOMweb core helpers without HTTP: multipart, negotiation, QIDO parsing, frames, rendering, STOW."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from readingroom.archive import media, qido, stow
from readingroom.archive.frames import FrameError, PixelInfo, parse_frame_list, read_frame
from readingroom.archive.multipart import MultipartError, MultipartParser, MultipartWriter
from readingroom.archive.parsing import parse_file
from readingroom.archive.query import QueryError
from readingroom.archive.render import RenderError, apply_window, parse_render_params, render_frame
from tests.support.dicom import sample

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


# -- multipart ----------------------------------------------------------------------------------------------


class Collect:
    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytearray]] = []
        self.ended = 0

    def begin(self, headers: dict[str, str]) -> None:
        self.parts.append((headers, bytearray()))

    def data(self, chunk: bytes) -> None:
        self.parts[-1][1].extend(chunk)

    def end(self) -> None:
        self.ended += 1


def _parse(body: bytes, boundary: str, step: int) -> Collect:
    sink = Collect()
    parser = MultipartParser(boundary, sink)
    for i in range(0, len(body), step):
        parser.feed(body[i: i + step])
    parser.finish()
    return sink


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 1000, 10**6])
def test_multipart_roundtrip_any_chunking(step: int) -> None:
    # Payloads that contain near-boundaries, CRLFs and dashes must come back byte-exact.
    writer = MultipartWriter()
    payloads = [b"", b"\r\n--" + writer.boundary.encode()[:-1], b"x" * 5000 + b"\r\n\r\n--", bytes(range(256)) * 9]
    payloads = [p for p in payloads if p]
    body = writer.whole([("application/dicom", p) for p in payloads])
    sink = _parse(b"preamble\r\n" + body + b"epilogue", writer.boundary, step)
    assert [bytes(p) for _, p in sink.parts] == payloads
    assert sink.ended == len(payloads)
    assert sink.parts[0][0]["content-type"] == "application/dicom"
    assert sink.parts[0][0]["content-length"] == str(len(payloads[0]))


def test_multipart_client_style_leading_crlf_and_no_headers() -> None:
    # dicomweb-client starts the body with CRLF--boundary; parts may have no headers at all.
    body = b"\r\n--b1\r\nContent-Type: application/dicom\r\n\r\nAAA\r\n--b1\r\n\r\nBBB\r\n--b1--"
    sink = _parse(body, "b1", 4)
    assert [bytes(p) for _, p in sink.parts] == [b"AAA", b"BBB"]
    assert sink.parts[1][0] == {}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"no boundary here at all", "no multipart boundary"),
        (b"--b1\r\nContent-Type: application/dicom\r\n\r\ntruncated", "before its closing boundary"),
        (b"--b1garbage\r\n\r\nx\r\n--b1--", "malformed multipart boundary line"),
        (b"--b1\r\nno colon header\r\n\r\nx\r\n--b1--", "malformed multipart part header"),
    ],
)
def test_multipart_errors(body: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        _parse(body, "b1", 5)


def test_multipart_writer_lengths() -> None:
    w = MultipartWriter("abc")
    predicted = w.head_length("application/dicom", length=10)
    assert len(w.part_head("application/dicom", length=10)) == predicted
    assert w.close() == b"\r\n--abc--\r\n"
    assert 'type="application/dicom"' in w.content_type("application/dicom")


# -- negotiation ----------------------------------------------------------------------------------------------


def test_parse_accept_orders_by_quality_and_unwraps_multipart() -> None:
    ranges = media.parse_accept(
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; q=0.5, '
        'multipart/related; type="application/dicom"; transfer-syntax=*, image/png;q=0',
        media.DICOM,
    )
    assert [(r.media_type, r.transfer_syntax, r.multipart) for r in ranges] == [
        ("application/dicom", "*", True), ("application/dicom", EXPLICIT, True)]
    assert media.parse_accept(None, media.DICOM)[0].media_type == "*/*"
    assert media.parse_accept("multipart/related", media.DICOM)[0].media_type == media.DICOM


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        (None, RLELossless, RLELossless),
        ('multipart/related; type="application/dicom"', JPEGBaseline8Bit, JPEGBaseline8Bit),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', RLELossless, RLELossless),
        (f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}', RLELossless, EXPLICIT),
        (f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}', IMPLICIT, EXPLICIT),
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit}', EXPLICIT, None),
        ("application/json", EXPLICIT, None),
    ],
)
def test_choose_instance_syntax(accept: str | None, stored: str, expected: str | None) -> None:
    assert media.choose_instance_syntax(media.parse_accept(accept, media.DICOM), stored) == expected


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        (None, EXPLICIT, ("application/octet-stream", EXPLICIT, False)),
        (None, JPEGBaseline8Bit, ("image/jpeg", JPEGBaseline8Bit, False)),
        ('multipart/related; type="application/octet-stream"', JPEGLSLossless,
         ("application/octet-stream", EXPLICIT, True)),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', JPEGLSLossless,
         ("application/octet-stream", JPEGLSLossless, False)),
        ('multipart/related; type="image/jls"', JPEGLSLossless, ("image/jls", JPEGLSLossless, False)),
        ('multipart/related; type="image/dicom-rle"', RLELossless, ("image/dicom-rle", RLELossless, False)),
        ('multipart/related; type="image/*"', JPEG2000Lossless, ("image/jp2", JPEG2000Lossless, False)),
        ('multipart/related; type="image/jpeg"', EXPLICIT, None),
        ('multipart/related; type="image/jpeg"', JPEG2000Lossless, None),
    ],
)
def test_choose_frame_syntax(accept: str | None, stored: str, expected: tuple[str, str, bool] | None) -> None:
    choice = media.choose_frame_syntax(media.parse_accept(accept, "*/*"), stored)
    assert (None if choice is None else (choice.media_type, choice.transfer_syntax, choice.decode)) == expected


def test_rendered_and_json_negotiation() -> None:
    assert media.choose_rendered_type(media.parse_accept(None, "image/jpeg")) == "image/jpeg"
    assert media.choose_rendered_type(media.parse_accept("image/png", "image/jpeg")) == "image/png"
    assert media.choose_rendered_type(media.parse_accept("image/gif", "image/jpeg")) is None
    assert media.accepts_json(media.parse_accept("application/dicom+json, application/json", media.DICOM_JSON))
    assert not media.accepts_json(media.parse_accept("application/dicom+xml", media.DICOM_JSON))


# -- QIDO parsing ---------------------------------------------------------------------------------------------


def test_parse_query_keywords_tags_lists_and_controls() -> None:
    req = qido.parse_query([
        ("PatientName", "Doe*"), ("00100020", "123"), ("StudyInstanceUID", "1.2"), ("StudyInstanceUID", "1.3"),
        ("RequestAttributesSequence.ScheduledProcedureStepID", "S1"), ("includefield", "PixelSpacing,00280030"),
        ("fuzzymatching", "true"), ("limit", "5"), ("offset", "10"),
    ])
    assert req.filters == {"00100010": "Doe*", "00100020": "123", "0020000D": "1.2\\1.3",
                           "00400275.00400009": "S1"}
    assert req.include == {"00280030"} and not req.include_all
    assert req.fuzzy and req.limit == 5 and req.offset == 10 and not req.capped
    assert qido.needs_all(req, "IMAGE") and not qido.needs_all(req, "STUDY")
    assert qido.parse_query([("includefield", "all")]).include_all
    assert qido.parse_query([]).capped


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([("NotAnAttribute", "x")], "unknown query parameter"),
        ([("limit", "-1")], "limit must be a non-negative integer"),
        ([("offset", "abc")], "offset must be"),
        ([("fuzzymatching", "maybe")], "fuzzymatching must be"),
        ([("includefield", "Bogus")], "unknown query parameter"),
    ],
)
def test_parse_query_errors(items: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        qido.parse_query(items)


def test_shape_keeps_defaults_includes_and_filters() -> None:
    req = qido.parse_query([("includefield", "00280030"), ("ImageComments", "x")])
    item = {"00080018": {}, "00280030": {}, "00204000": {}, "00181000": {}, "00081190": {}}
    assert set(qido.shape([item], req, "IMAGE")[0]) == {"00080018", "00280030", "00204000", "00081190"}


# -- frames -------------------------------------------------------------------------------------------------


def _info(path: Path) -> PixelInfo:
    parsed = parse_file(path)
    ds = parsed.dataset
    assert parsed.pixel_offset is not None and parsed.pixel_length is not None
    return PixelInfo(str(path), parsed.pixel_offset, parsed.pixel_length,
                     parsed.transfer_syntax_uid not in media.NATIVE_SYNTAXES,
                     int(ds.get("NumberOfFrames", 1) or 1), ds.Rows, ds.Columns, ds.BitsAllocated)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("name", ["CT_small.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm", "MR_small_RLE.dcm",
                                  "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "examples_ybr_color.dcm",
                                  "SC_ybr_full_422_uncompressed.dcm"])
def test_frames_match_pydicom(name: str) -> None:
    path = sample(name)
    info = _info(path)
    ds = pydicom.dcmread(path)
    if info.encapsulated:
        expected = list(generate_frames(ds.PixelData, number_of_frames=info.number_of_frames))
    else:
        size = len(ds.PixelData) // info.number_of_frames
        expected = [ds.PixelData[i * size: (i + 1) * size] for i in range(info.number_of_frames)]
    with open(path, "rb") as fh:
        got = [read_frame(fh, info, n) for n in range(1, info.number_of_frames + 1)]
    if name == "SC_rgb_small_odd.dcm":  # 27 bytes of pixels + 1 pad byte: the frame excludes the pad
        expected = [expected[0][:27]]
    assert got == expected
    with open(path, "rb") as fh, pytest.raises(FrameError, match="does not exist"):
        read_frame(fh, info, info.number_of_frames + 1)


def test_one_bit_frames_are_realigned(tmp_path: Path) -> None:
    # 3 frames of 3x3 1-bit pixels = 27 bits: frames 2 and 3 start mid-byte.
    bits = np.random.default_rng(1).integers(0, 2, 27).astype(np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()
    (tmp_path / "f").write_bytes(b"\0" * 10 + packed)
    info = PixelInfo("k", 10, len(packed), False, 3, 3, 3, 1)
    with open(tmp_path / "f", "rb") as fh:
        for n in (1, 2, 3):
            got = np.unpackbits(np.frombuffer(read_frame(fh, info, n), np.uint8), bitorder="little")[:9]
            assert (got == bits[(n - 1) * 9: n * 9]).all()


def test_parse_frame_list() -> None:
    assert parse_frame_list("1,3, 2") == [1, 3, 2]
    for bad in ("0", "a", "1,,2", "-1"):
        with pytest.raises(ValueError):
            parse_frame_list(bad)


# -- rendering ----------------------------------------------------------------------------------------------


def test_linear_window_follows_ps33() -> None:
    values = np.array([-1000, 0, 39.5, 40, 80, 1000], dtype=np.float32)
    out = apply_window(values, 40, 80, "linear")
    assert out[0] == 0 and out[-1] == 255 and 120 <= out[2] <= 130
    assert apply_window(np.array([0.0]), 0, 100, "sigmoid")[0] in (127, 128)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "examples_palette.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm", "examples_ybr_color.dcm", "rtdose.dcm"])
@pytest.mark.parametrize("media_type", ["image/jpeg", "image/png"])
def test_render_decodes_and_scales(name: str, media_type: str) -> None:
    opts = parse_render_params({"viewport": "64,64", "quality": "80"}, media_type)
    img = Image.open(io.BytesIO(render_frame(sample(name), 0, opts)))
    assert img.format == ("PNG" if media_type == "image/png" else "JPEG")
    assert max(img.size) == 64


def test_render_window_and_monochrome1(tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center = float(np.median(hu))
    opts = parse_render_params({"window": f"{center},1,linear"}, "image/png")
    mono2 = np.asarray(Image.open(io.BytesIO(render_frame(sample("CT_small.dcm"), 0, opts))))
    assert set(np.unique(mono2)) <= {0, 255}
    assert ((mono2 == 255) == (hu >= center - 0.5)).mean() > 0.99
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    mono1 = np.asarray(Image.open(io.BytesIO(render_frame(tmp_path / "m1.dcm", 0, opts))))
    assert (mono1 == 255 - mono2).all()


@pytest.mark.parametrize(
    "params",
    [{"window": "40"}, {"window": "40,0"}, {"window": "40,80,cubic"}, {"viewport": "0,10"},
     {"quality": "101"}, {"quality": "x"}, {"bogus": "1"}],
)
def test_render_param_errors(params: dict[str, str]) -> None:
    with pytest.raises(RenderError):
        parse_render_params(params, "image/jpeg")


def test_render_without_pixels_fails_cleanly() -> None:
    with pytest.raises(RenderError):
        render_frame(sample("rtplan.dcm"), 0, parse_render_params({}, "image/jpeg"))


# -- STOW response --------------------------------------------------------------------------------------------


def _res(n: int, **kw: object) -> stow.PartResult:
    return stow.PartResult(n, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_uid=f"1.2.{n}", study_uid="1.9",
                           series_uid="1.8", **kw)  # type: ignore[arg-type]


def test_stow_statuses_and_sequences() -> None:
    ok, bad, warn = _res(1, stored=True), _res(2, failure=stow.CANNOT_UNDERSTAND, reason="x"), \
        _res(3, stored=False, warning=stow.ELEMENTS_DISCARDED, reason="kept the first")
    status, body = stow.build_response([ok], "http://h/dicomweb", None)
    assert status == 200 and body["00081190"]["Value"] == ["http://h/dicomweb/studies/1.9"]
    assert body["00081199"]["Value"][0]["00081190"]["Value"][0].endswith("/instances/1.2.1")
    status, body = stow.build_response([ok, bad], "http://h/dicomweb", None)
    assert status == 202 and body["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert stow.build_response([bad], "http://h/dicomweb", None)[0] == 409
    status, body = stow.build_response([ok, warn], "http://h/dicomweb", None)
    assert status == 202 and body["00081199"]["Value"][1]["00081196"]["Value"] == [0xB006]
    assert stow.warning_headers([bad])[0].startswith('299 readingroom "x')


@pytest.mark.parametrize(
    ("content_type", "status"),
    [("application/json", 415), ('multipart/related; type="application/dicom+json"; boundary=x', 415),
     ('multipart/related; type="application/dicom"', 400), (None, 415)],
)
def test_stow_request_content_type(content_type: str | None, status: int) -> None:
    with pytest.raises(stow.StowRequestError) as err:
        stow.request_boundary(content_type)
    assert err.value.status == status
    assert stow.request_boundary('multipart/related; type="application/dicom"; boundary="a b"') == "a b"


def _receive(rt, body: bytes, *, content_type: str = 'multipart/related; type="application/dicom"; boundary=bb',
             length: str | None = None, step: int = 7000) -> list[stow.StagedPart]:
    import anyio

    async def chunks():  # what Starlette's request.stream() yields
        for i in range(0, len(body), step):
            yield body[i: i + step]

    return anyio.run(stow.receive, rt, chunks(), content_type, length)


def _staged(rt) -> list[Path]:
    return [p for p in rt.blobs.staging_dir.iterdir() if p.suffix == ".stow"]


def test_stow_receive_stages_parts_byte_exact(rt) -> None:
    payloads = [bytes(range(256)) * 20_000, b"small part"]  # ~5 MB: several 1 MiB flushes
    body = MultipartWriter("bb").whole([("application/dicom", p) for p in payloads])
    parts = _receive(rt, body)
    assert [p.path.read_bytes() for p in parts] == payloads
    assert [p.size for p in parts] == [len(p) for p in payloads]
    for p in parts:
        p.path.unlink()


@pytest.mark.parametrize(
    ("body", "kwargs", "error", "status"),
    [
        (MultipartWriter("bb").whole([("application/dicom", b"x" * 5000)]), {"length": "200000"}, "exceeds", 413),
        (MultipartWriter("bb").whole([("application/dicom", b"x" * 200_000)]), {}, "exceeds", 413),
        (MultipartWriter("bb").whole([("application/dicom", b"ok"), ("application/dicom", b"")]), {}, "empty", 400),
        (MultipartWriter("bb").whole([("application/dicom", b"x" * 50_000)])[:-30], {}, "closing", 400),
        (b"--bb--\r\n", {}, "no parts", 400),
    ],
    ids=["declared-too-big", "streamed-too-big", "empty-part", "cut-short", "no-parts"],
)
def test_stow_receive_refuses_and_cleans_up(rt, body: bytes, kwargs: dict, error: str, status: int) -> None:
    rt.settings.max_upload_bytes = 100_000
    with pytest.raises((stow.StowRequestError, MultipartError), match=error) as err:
        _receive(rt, body, **kwargs)
    assert getattr(err.value, "status", 400) == status
    assert _staged(rt) == []


def test_accept_and_charset_are_not_matching_keys() -> None:
    req = qido.parse_query([("accept", "application/dicom+json"), ("charset", "utf-8"), ("PatientID", "1")])
    assert req.filters == {"00100020": "1"}
