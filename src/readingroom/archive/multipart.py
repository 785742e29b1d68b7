"""Streaming ``multipart/related`` (RFC 2387) writer and incremental parser.

DICOMweb moves whole studies in one multipart body, so neither direction may
hold a body in memory: the writer produces part headers to interleave with
file chunks, and the parser is fed network chunks and hands part data to a
sink as soon as it is known not to be part of a boundary. Boundary search
uses ``bytearray.find`` (C speed); only ``len(delimiter) - 1`` bytes are ever
held back between chunks.
"""

from __future__ import annotations

import uuid
from typing import Protocol

CRLF = b"\r\n"


class MultipartError(ValueError):
    """The body is not well-formed multipart; the message says why."""


def new_boundary() -> str:
    """A boundary that cannot occur in DICOM data by accident (random, 32 hex digits)."""
    return f"rr-{uuid.uuid4().hex}"


def content_type(boundary: str, part_type: str, transfer_syntax: str | None = None) -> str:
    """The ``Content-Type`` of a multipart/related response."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


class MultipartWriter:
    """Produces the framing of a multipart body; callers interleave the part contents.

    The first part starts with ``--boundary`` and every later one with
    ``CRLF--boundary``, so the delimiter that ends a part is always
    ``CRLF--boundary`` as RFC 2046 requires.
    """

    def __init__(self, boundary: str | None = None) -> None:
        self.boundary = boundary or new_boundary()
        self._delimiter = b"--" + self.boundary.encode("ascii")
        self._first = True

    def content_type(self, part_type: str, transfer_syntax: str | None = None) -> str:
        return content_type(self.boundary, part_type, transfer_syntax)

    def part_head(self, part_type: str, *, length: int | None = None, location: str | None = None) -> bytes:
        """Delimiter and headers of the next part (its content follows directly)."""
        lines = [b"" if self._first else CRLF, self._delimiter, CRLF, b"Content-Type: ", part_type.encode(), CRLF]
        if length is not None:
            lines += [b"Content-Length: ", str(length).encode(), CRLF]
        if location:
            lines += [b"Content-Location: ", location.encode(), CRLF]
        lines.append(CRLF)
        self._first = False
        return b"".join(lines)

    def head_length(self, part_type: str, *, length: int | None = None, location: str | None = None) -> int:
        """Length of the next :meth:`part_head` without consuming it (for Content-Length)."""
        first = self._first
        try:
            return len(self.part_head(part_type, length=length, location=location))
        finally:
            self._first = first

    def close(self) -> bytes:
        """The closing delimiter."""
        return (b"" if self._first else CRLF) + self._delimiter + b"--" + CRLF

    def close_length(self) -> int:
        return len(self.close())

    def whole(self, parts: list[tuple[str, bytes]]) -> bytes:
        """A complete multipart body of small in-memory parts (frames, rendered images)."""
        chunks: list[bytes] = []
        for part_type, data in parts:
            chunks.append(self.part_head(part_type, length=len(data)))
            chunks.append(data)
        chunks.append(self.close())
        return b"".join(chunks)


class PartSink(Protocol):
    """Receives the parts a :class:`MultipartParser` finds, in order."""

    def begin(self, headers: dict[str, str]) -> None: ...

    def data(self, chunk: bytes) -> None: ...

    def end(self) -> None: ...


_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)


class MultipartParser:
    """Incremental parser: ``feed`` chunks as they arrive, then ``finish``.

    Header names are lower-cased. Raises :class:`MultipartError` on a
    malformed body (header block too long, garbage after a boundary, body
    ending before the closing boundary).
    """

    def __init__(self, boundary: str, sink: PartSink, *, max_header_bytes: int = 16 * 1024) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("invalid multipart boundary")
        # A leading CRLF lets the first "--boundary" be found like every other delimiter.
        self._delimiter = CRLF + b"--" + boundary.encode("latin-1")
        self._keep = len(self._delimiter) - 1
        self._buf = bytearray(CRLF)
        self._state = _PREAMBLE
        self._sink = sink
        self._max_header = max_header_bytes
        self.parts = 0

    @property
    def done(self) -> bool:
        """The closing boundary has been seen."""
        return self._state == _EPILOGUE

    def feed(self, data: bytes) -> None:
        if self._state == _EPILOGUE or not data:
            return
        self._buf += data
        while self._step():
            pass

    def _step(self) -> bool:
        buf = self._buf
        if self._state == _BODY:
            at = buf.find(self._delimiter)
            if at < 0:
                safe = len(buf) - self._keep
                if safe > 0:
                    self._sink.data(bytes(buf[:safe]))
                    del buf[:safe]
                return False
            if at:
                self._sink.data(bytes(buf[:at]))
            self._sink.end()
            del buf[: at + len(self._delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _PREAMBLE:
            at = buf.find(self._delimiter)
            if at < 0:
                if len(buf) > self._keep:
                    del buf[: len(buf) - self._keep]
                return False
            del buf[: at + len(self._delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _AFTER_DELIMITER:
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self._state = _EPILOGUE
                buf.clear()
                return False
            line_end = buf.find(CRLF)
            if line_end < 0:
                if len(buf) > 256:
                    raise MultipartError("malformed multipart boundary line")
                return False
            if buf[:line_end].strip(b" \t"):
                raise MultipartError("malformed multipart boundary line (text after the boundary)")
            del buf[: line_end + 2]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buf[:2] == CRLF:
                headers: dict[str, str] = {}
                del buf[:2]
            else:
                end = buf.find(CRLF + CRLF)
                if end < 0:
                    if len(buf) > self._max_header:
                        raise MultipartError("multipart part headers too long or not terminated")
                    return False
                headers = _parse_headers(bytes(buf[:end]))
                del buf[: end + 4]
            self.parts += 1
            self._sink.begin(headers)
            self._state = _BODY
            return True
        return False

    def finish(self) -> None:
        """The body ended: fail unless the closing boundary was seen."""
        if self._state == _EPILOGUE:
            return
        if self._state == _PREAMBLE:
            raise MultipartError("no multipart boundary found in the body")
        raise MultipartError("multipart body ended before its closing boundary (truncated upload?)")


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in block.split(CRLF):
        if not raw.strip():
            continue
        name, colon, value = raw.decode("latin-1").partition(":")
        if not colon or not name.strip():
            raise MultipartError(f"malformed multipart part header {raw[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
