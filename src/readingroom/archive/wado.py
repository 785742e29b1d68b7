"""WADO-RS retrieval core: what to send for a study, series, instance, frame or bulk datum.

Plain functions on a Runtime, no web imports (the DICOMweb edge only wires
them to routes). Instances are streamed from the blob store in 1 MiB chunks
as they were received; only an explicit request for another transfer
syntax loads one instance at a time to transcode it. Metadata is the join of
the DICOM JSON cached at ingest, never a file parse.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from readingroom.archive import frames as fr
from readingroom.archive import media
from readingroom.archive.blobs import CHUNK
from readingroom.archive.multipart import MultipartWriter
from readingroom.archive.parsing import BASE_PLACEHOLDER
from readingroom.archive.render import RenderError, RenderOptions, render_frame
from readingroom.archive.retrieve import InstanceRef, iter_metadata_json
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)


class NotAcceptable(Exception):
    """No representation the client accepts can be produced (-> 406); says why."""


class NotFound(Exception):
    """The addressed resource does not exist (-> 404); says what."""


@dataclass(frozen=True)
class Planned:
    """One instance of a retrieve and the transfer syntax it goes out in."""

    ref: InstanceRef
    target_ts: str

    @property
    def as_stored(self) -> bool:
        return self.target_ts == self.ref.transfer_syntax_uid


def plan_instances(refs: list[InstanceRef], ranges: list[media.MediaRange]) -> list[Planned]:
    """The syntax each instance is sent in, or NotAcceptable naming the first that cannot be."""
    plans: list[Planned] = []
    chosen: dict[str, str | None] = {}
    for ref in refs:
        stored = ref.transfer_syntax_uid
        if stored not in chosen:
            chosen[stored] = media.choose_instance_syntax(ranges, stored)
        target = chosen[stored]
        if target is None:
            raise NotAcceptable(
                f"instance {ref.sop_uid} is stored as {stored} and cannot be sent in an accepted transfer "
                "syntax (accepted: the stored syntax, '*', or 1.2.840.10008.1.2.1 / 1.2.840.10008.1.2)"
            )
        plans.append(Planned(ref, target))
    return plans


def present(rt: Runtime, plans: list[Planned]) -> tuple[list[Planned], list[str]]:
    """Drop instances whose bytes are missing or not the indexed size (reported, never sent torn)."""
    kept: list[Planned] = []
    missing: list[str] = []
    for p in plans:
        try:
            ok = rt.blobs.size(p.ref.blob_key) == p.ref.size
        except OSError:
            ok = False
        if ok:
            kept.append(p)
        else:
            log.error("blob %s of instance %s is missing or has the wrong size", p.ref.blob_key, p.ref.sop_uid)
            missing.append(p.ref.sop_uid)
    return kept, missing


def transcode(rt: Runtime, ref: InstanceRef, target_ts: str) -> bytes:
    """Rewrite one instance uncompressed in ``target_ts`` (whole instance in memory: only on request)."""
    with rt.blobs.open(ref.blob_key) as fh:
        ds = dcmread(fh)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = target_ts
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=target_ts == ImplicitVRLittleEndian, little_endian=True)
    return out.getvalue()


def _part_type(target_ts: str) -> str:
    return f"{media.DICOM}; transfer-syntax={target_ts}"


def stream_length(plans: list[Planned], writer: MultipartWriter) -> int | None:
    """Exact body length when every instance goes out as stored (else None: chunked)."""
    if not all(p.as_stored for p in plans):
        return None
    probe = MultipartWriter(writer.boundary)
    total = 0
    for p in plans:
        total += len(probe.part_head(_part_type(p.target_ts), length=p.ref.size)) + p.ref.size
    return total + len(probe.close())


#: How far ahead of the file being sent a study retrieve asks for read-ahead.
PREFETCH_BYTES = 16 * 1024 * 1024


def stream_instances(rt: Runtime, plans: list[Planned], writer: MultipartWriter) -> Iterator[memoryview]:
    """The multipart body: each instance's original bytes (or its transcode), in ~1 MiB pieces.

    Files are read with ``readinto`` straight into fresh 1 MiB buffers, so
    small instances share one write to the socket with their part headers
    and a large one costs a single copy; a buffer is never reused after it
    is yielded (the server may still hold it). The next files (up to
    ``PREFETCH_BYTES`` ahead) are handed to the blob store's read-ahead.
    """
    buf = memoryview(bytearray(CHUNK))
    filled = 0
    ahead, pending = 0, 0  # next plan not yet prefetched; prefetched bytes not yet being sent

    def put(data: bytes) -> Iterator[memoryview]:
        nonlocal buf, filled
        view = memoryview(data)
        while view:
            n = min(len(view), CHUNK - filled)
            buf[filled: filled + n] = view[:n]
            filled += n
            view = view[n:]
            if filled == CHUNK:
                yield buf
                buf, filled = memoryview(bytearray(CHUNK)), 0

    for i, p in enumerate(plans):
        if i < ahead:
            pending -= p.ref.size
        while ahead < len(plans) and (ahead <= i or pending < PREFETCH_BYTES):
            rt.blobs.prefetch(plans[ahead].ref.blob_key)
            pending += plans[ahead].ref.size if ahead > i else 0
            ahead += 1
        if not p.as_stored:
            data = transcode(rt, p.ref, p.target_ts)
            yield from put(writer.part_head(_part_type(p.target_ts), length=len(data)))
            yield from put(data)
            continue
        yield from put(writer.part_head(_part_type(p.target_ts), length=p.ref.size))
        sent = 0
        with rt.blobs.open(p.ref.blob_key) as fh:
            while n := fh.readinto(buf[filled:]):
                filled += n
                sent += n
                if filled == CHUNK:
                    yield buf
                    buf, filled = memoryview(bytearray(CHUNK)), 0
        if sent != p.ref.size:  # changed under us: abort rather than send a torn body
            raise OSError(f"blob {p.ref.blob_key} changed size while being sent")
    yield from put(writer.close())
    if filled:
        yield buf[:filled]


def stream_single(rt: Runtime, p: Planned) -> Iterator[bytes]:
    """One instance as a bare ``application/dicom`` body (client asked for no multipart wrapper)."""
    if not p.as_stored:
        yield transcode(rt, p.ref, p.target_ts)
        return
    with rt.blobs.open(p.ref.blob_key) as fh:
        while chunk := fh.read(CHUNK):
            yield chunk


def metadata_body(session: Any, base_url: str, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> bytes | None:
    """The DICOM JSON array of the matching instances' cached metadata, or None if none match."""
    items = list(iter_metadata_json(session, study_uid, series_uid, sop_uid))
    if not items:
        return None
    return ("[" + ",".join(items) + "]").replace(BASE_PLACEHOLDER, base_url).encode("utf-8")


def pixel_info(ref: InstanceRef) -> fr.PixelInfo | None:
    """Frame-extraction facts for an instance, or None if its pixels cannot be located by offset."""
    if ref.pixel_offset is None or ref.pixel_length is None:
        return None
    encapsulated = ref.transfer_syntax_uid not in media.NATIVE_SYNTAXES
    return fr.PixelInfo(
        key=ref.blob_key, pixel_offset=ref.pixel_offset, pixel_length=ref.pixel_length,
        encapsulated=encapsulated, number_of_frames=max(1, ref.number_of_frames or 1),
        rows=ref.rows or 0, columns=ref.columns or 0, bits_allocated=ref.bits_allocated or 0,
    )


def decode_frame(rt: Runtime, ref: InstanceRef, number: int) -> bytes:
    """One frame decoded to native little-endian bytes (colour as RGB, as dcmdjpeg would)."""
    n = max(1, ref.number_of_frames or 1)
    if number < 1 or number > n:
        raise fr.FrameError(f"frame {number} does not exist (the instance has {n})")
    with rt.blobs.open(ref.blob_key) as fh:
        arr = pixel_array(fh, index=number - 1)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()


def read_frames(rt: Runtime, ref: InstanceRef, numbers: list[int], choice: media.FrameChoice) -> list[bytes]:
    """The requested frames in the chosen representation (FrameError if one does not exist)."""
    info = pixel_info(ref)
    if choice.decode or info is None:
        if info is None and not choice.decode and ref.transfer_syntax_uid not in media.NATIVE_SYNTAXES:
            raise fr.FrameError("the instance has no pixel data")
        return [decode_frame(rt, ref, n) for n in numbers]
    with rt.blobs.open(ref.blob_key) as fh:
        return [fr.read_frame(fh, info, n) for n in numbers]


def stream_frames(rt: Runtime, ref: InstanceRef, choice: media.FrameChoice,
                  writer: MultipartWriter) -> Iterator[bytes]:
    """Every frame as one part each, read one at a time (bulk Pixel Data of a long cine)."""
    part_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    for number in range(1, max(1, ref.number_of_frames or 1) + 1):
        (data,) = read_frames(rt, ref, [number], choice)
        yield writer.part_head(part_type, length=len(data)) + data
    yield writer.close()


def _find_element(ds: Dataset, tag: int) -> RawDataElement | Any | None:
    if tag in ds:
        return ds.get_item(tag)
    for elem in ds.values():
        if getattr(elem, "VR", None) == "SQ" or (isinstance(elem, RawDataElement) and elem.VR == "SQ"):
            for item in ds[elem.tag].value or []:
                found = _find_element(item, tag)
                if found is not None:
                    return found
    return None


def read_bulk(rt: Runtime, ref: InstanceRef, tag: int) -> bytes | None:
    """The raw value bytes of a non-pixel bulk data element (what its BulkDataURI names)."""
    with rt.blobs.open(ref.blob_key) as fh:
        ds = dcmread(fh, stop_before_pixels=True)
    elem = _find_element(ds, tag)
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        return bytes(elem.value or b"")
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    dtype = _NUMERIC_VR.get(str(elem.VR))
    if dtype is None:
        return None
    values = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
    return np.asarray(list(values), dtype=dtype).tobytes()


_NUMERIC_VR = {"US": "<u2", "SS": "<i2", "UL": "<u4", "SL": "<i4", "FL": "<f4", "FD": "<f8", "SV": "<i8", "UV": "<u8"}


def native_pixel_stream(rt: Runtime, ref: InstanceRef, writer: MultipartWriter) -> Iterator[bytes]:
    """The whole native Pixel Data value as one octet-stream part, streamed."""
    assert ref.pixel_offset is not None and ref.pixel_length is not None
    yield writer.part_head(f"{media.OCTET}; transfer-syntax={ExplicitVRLittleEndian}", length=ref.pixel_length)
    with rt.blobs.open(ref.blob_key) as fh:
        fh.seek(ref.pixel_offset)
        left = ref.pixel_length
        while left > 0:
            chunk = fh.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"blob {ref.blob_key} is shorter than its pixel data")
            left -= len(chunk)
            yield chunk
    yield writer.close()


def render_instances(rt: Runtime, refs: list[InstanceRef], frame: int | None, opts: RenderOptions, *,
                     thumbnail: bool, every: bool) -> list[bytes]:
    """Rendered images: every instance (``every``) or the middle one, a series' representative.

    ``frame`` is 1-based; without it an instance shows its first frame, a
    thumbnail its middle frame (the most telling image of a cine loop).
    """
    chosen = refs if every else [refs[len(refs) // 2]]
    images = []
    for ref in chosen:
        n_frames = max(1, ref.number_of_frames or 1)
        index = (frame - 1) if frame else (n_frames // 2 if thumbnail else 0)
        if index >= n_frames:
            raise fr.FrameError(f"frame {index + 1} does not exist (the instance has {n_frames})")
        try:
            with rt.blobs.open(ref.blob_key) as fh:
                images.append(render_frame(fh, index, opts))
        except RenderError as exc:
            raise RenderError(f"instance {ref.sop_uid}: {exc}") from exc
    return images
