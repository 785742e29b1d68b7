"""Frames of a stored instance, read straight from its file by offset.

Ingest recorded where the Pixel Data value starts and how long it is, so a
frame is located without parsing the dataset: native frames are fixed-size
slices; encapsulated frames are found from the item headers (Basic Offset
Table when present, else one fragment per frame, else start-of-image
markers). The fragment map of recently used instances is kept in a small LRU
cache, so a viewer scrolling a multi-frame instance pays for the walk once.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

_ITEM = 0xE000FFFE
_SEQ_DELIM = 0xE0DDFFFE
#: Markers that begin a frame in each compressed family (JPEG/JPEG-LS SOI, J2K SOC, JP2 signature box).
_FRAME_STARTS = (b"\xff\xd8", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP")


class FrameError(ValueError):
    """The requested frame does not exist or the pixel data cannot be split; says why."""


@dataclass(frozen=True)
class PixelInfo:
    """What frame extraction needs to know about an instance (all from the index)."""

    key: str
    pixel_offset: int
    pixel_length: int
    encapsulated: bool
    number_of_frames: int
    rows: int
    columns: int
    bits_allocated: int


Extent = tuple[int, int]  # (file offset, length)


class _LRU:
    """A thread-safe LRU of fragment maps, keyed by blob key (immutable content)."""

    def __init__(self, size: int = 256) -> None:
        self._data: OrderedDict[str, list[list[Extent]]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: str) -> list[list[Extent]] | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is not None:
                self._data.move_to_end(key)
            return hit

    def put(self, key: str, value: list[list[Extent]]) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)


_frame_maps = _LRU()


def native_frame_bits(info: PixelInfo) -> int:
    """Size of one native frame in bits, allowing for odd-length padding and YBR 4:2:2.

    Samples per pixel is not in the index; it is the multiple of one sample
    plane that makes the frames fill the value (give or take the pad byte).
    """
    plane_bits = info.rows * info.columns * info.bits_allocated
    if plane_bits <= 0:
        raise FrameError("instance has no image dimensions")
    total_bits = info.pixel_length * 8
    for samples in (1, 3, 2, 4):
        frame_bits = plane_bits * samples
        used = frame_bits * info.number_of_frames
        if total_bits - 16 < used <= total_bits:
            return frame_bits
    if info.bits_allocated % 8 == 0 and info.pixel_length >= info.number_of_frames:
        return (info.pixel_length // info.number_of_frames) * 8
    raise FrameError("pixel data length does not match rows, columns, bits allocated and number of frames")


def native_frame_extent(info: PixelInfo, number: int) -> tuple[int, int, int]:
    """(byte offset, byte length, leading bit shift) of native frame ``number`` (1-based)."""
    frame_bits = native_frame_bits(info)
    start_bit = (number - 1) * frame_bits
    start = info.pixel_offset + start_bit // 8
    end_bit = start_bit + frame_bits
    length = (end_bit + 7) // 8 - start_bit // 8
    return start, length, start_bit % 8


def read_native_frame(fh: BinaryIO, info: PixelInfo, number: int) -> bytes:
    """One native frame's bytes (bit-packed 1-bit frames are re-aligned to a byte boundary)."""
    _check_number(info, number)
    start, length, shift = native_frame_extent(info, number)
    fh.seek(start)
    data = fh.read(length)
    if len(data) != length:
        raise FrameError("stored file is shorter than its pixel data")
    if info.bits_allocated != 1 or (shift == 0 and native_frame_bits(info) % 8 == 0):
        return data
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    frame_bits = native_frame_bits(info)
    return np.packbits(bits[shift: shift + frame_bits], bitorder="little").tobytes()


def _check_number(info: PixelInfo, number: int) -> None:
    if number < 1 or number > info.number_of_frames:
        raise FrameError(f"frame {number} does not exist (the instance has {info.number_of_frames})")


def _walk_items(fh: BinaryIO, info: PixelInfo) -> tuple[list[int], list[Extent], int]:
    """Basic Offset Table entries, fragment extents, and where the first fragment item starts."""
    end = info.pixel_offset + info.pixel_length
    fh.seek(info.pixel_offset)
    head = fh.read(8)
    if len(head) < 8:
        raise FrameError("stored file is shorter than its pixel data")
    tag, length = struct.unpack("<II", head)
    if tag != _ITEM:
        raise FrameError("encapsulated pixel data does not start with a Basic Offset Table item")
    table = fh.read(length)
    offsets = list(struct.unpack(f"<{length // 4}I", table[: length - length % 4])) if length else []
    first = info.pixel_offset + 8 + length
    fragments: list[Extent] = []
    at = first
    while at + 8 <= end:
        fh.seek(at)
        tag, length = struct.unpack("<II", fh.read(8))
        if tag == _SEQ_DELIM:
            break
        if tag != _ITEM:
            raise FrameError("corrupt encapsulated pixel data (expected an item tag)")
        fragments.append((at + 8, length))
        at += 8 + length
    return offsets, fragments, first


def _split_by_markers(fh: BinaryIO, fragments: list[Extent], n_frames: int) -> list[list[Extent]] | None:
    frames: list[list[Extent]] = []
    for extent in fragments:
        fh.seek(extent[0])
        head = fh.read(8)
        if any(head.startswith(m) for m in _FRAME_STARTS) or not frames:
            frames.append([extent])
        else:
            frames[-1].append(extent)
    return frames if len(frames) == n_frames else None


def encapsulated_frame_map(fh: BinaryIO, info: PixelInfo) -> list[list[Extent]]:
    """For each frame, the fragments (file extents) that make it up; cached per blob."""
    cached = _frame_maps.get(info.key)
    if cached is not None:
        return cached
    offsets, fragments, first = _walk_items(fh, info)
    n = info.number_of_frames
    if not fragments:
        raise FrameError("encapsulated pixel data holds no fragments")
    frames: list[list[Extent]] | None
    if offsets and len(offsets) == n:
        bounds = [first + o for o in offsets] + [info.pixel_offset + info.pixel_length + 1]
        frames = [[f for f in fragments if bounds[i] <= f[0] - 8 < bounds[i + 1]] for i in range(n)]
    elif n == 1:
        frames = [fragments]
    elif len(fragments) == n:
        frames = [[f] for f in fragments]
    else:
        frames = _split_by_markers(fh, fragments, n)
    if frames is None or any(not f for f in frames):
        raise FrameError(f"cannot split {len(fragments)} fragments into {n} frames")
    _frame_maps.put(info.key, frames)
    return frames


def read_encapsulated_frame(fh: BinaryIO, info: PixelInfo, number: int) -> bytes:
    """One compressed frame: the concatenation of its fragments (PS3.18 8.7.3.5.3)."""
    _check_number(info, number)
    extents = encapsulated_frame_map(fh, info)[number - 1]
    chunks = []
    for offset, length in extents:
        fh.seek(offset)
        data = fh.read(length)
        if len(data) != length:
            raise FrameError("stored file is shorter than its pixel data")
        chunks.append(data)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_frame(fh: BinaryIO, info: PixelInfo, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored: native bytes or the compressed bitstream."""
    if info.encapsulated:
        return read_encapsulated_frame(fh, info, number)
    return read_native_frame(fh, info, number)


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5]; ValueError with a reason on anything else."""
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"invalid frame number {part!r} (frame numbers are positive integers)")
        numbers.append(int(part))
    if not numbers:
        raise ValueError("no frame numbers given")
    return numbers
