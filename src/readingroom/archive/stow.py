"""STOW-RS core: stage multipart parts to disk, ingest them, build the PS3.18 response.

The edge feeds request chunks to a :class:`~readingroom.archive.multipart.MultipartParser`
whose sink is a :class:`StagingSink`: part data go straight into blob-store
staging files (buffered, flushed in 1 MiB writes), never the whole body into
memory. Only when the body is complete and well-formed are the parts
ingested (in a few threads, each through ``ingest_staged``), so a truncated
or oversized upload changes nothing. Each part succeeds or fails on its own:
bad parts never keep good ones from being stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread
from pydicom import dcmread

from readingroom.archive import media
from readingroom.archive.ingest import ingest_staged
from readingroom.archive.multipart import MultipartError, MultipartParser
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)

# PS3.18 Table 10.5.3-2 / PS3.4 Annex B failure and warning reasons (US values).
OUT_OF_RESOURCES = 0xA700
DATA_SET_MISMATCH = 0xA900  # used for a Study Instance UID that does not match the target study
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
ELEMENTS_DISCARDED = 0xB006  # warning: this copy was discarded, the stored one with the UID is kept

FLUSH_BYTES = 1024 * 1024
INGEST_WORKERS = 4
_pool = ThreadPoolExecutor(max_workers=INGEST_WORKERS, thread_name_prefix="stow-ingest")


class StowRequestError(Exception):
    """The request as a whole is unacceptable (400, 413, 415); nothing is stored."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def request_boundary(content_type: str | None) -> str:
    """The boundary of a STOW request body, or StowRequestError (415 / 400)."""
    media_type, params = media.parse_content_type(content_type or "")
    if media_type != media.MULTIPART:
        raise StowRequestError(415, f"unsupported media type {media_type or 'none'!r}; "
                                    'expected multipart/related; type="application/dicom"')
    part_type = params.get("type", media.DICOM).lower()
    if part_type != media.DICOM:
        raise StowRequestError(415, f"unsupported multipart type {part_type!r}; only application/dicom is accepted")
    boundary = params.get("boundary", "")
    if not boundary:
        raise StowRequestError(400, "multipart/related request without a boundary parameter")
    return boundary


@dataclass
class StagedPart:
    """One received part, written to a staging file."""

    number: int
    path: Path
    content_type: str
    size: int = 0
    ended: bool = False


class StagingSink:
    """A multipart sink that writes parts to staging files, enforcing the upload limit."""

    def __init__(self, rt: Runtime, max_bytes: int) -> None:
        self.rt = rt
        self.max_bytes = max_bytes
        self.parts: list[StagedPart] = []
        self.total = 0
        self.pending = 0
        self._queue: list[tuple[StagedPart, bytes | None]] = []  # None: end of part
        self._fh: BinaryIO | None = None
        self._fh_part: StagedPart | None = None

    def begin(self, headers: dict[str, str]) -> None:
        number = len(self.parts) + 1
        part = StagedPart(number, self.rt.blobs.new_staging_path(".stow"), headers.get("content-type", ""))
        self.parts.append(part)

    def data(self, chunk: bytes) -> None:
        part = self.parts[-1]
        part.size += len(chunk)
        self.total += len(chunk)
        self.pending += len(chunk)
        self._queue.append((part, chunk))

    def end(self) -> None:
        part = self.parts[-1]
        part.ended = True
        if part.size == 0:
            raise MultipartError(f"part {part.number} is empty")
        self._queue.append((part, None))

    def flush(self) -> None:
        """Write queued data to the staging files (called in a worker thread)."""
        queue, self._queue, self.pending = self._queue, [], 0
        for part, chunk in queue:
            if self._fh_part is not part:
                self._close()
                self._fh, self._fh_part = open(part.path, "wb"), part  # closed in _close
            assert self._fh is not None
            if chunk is None:
                self._close()
            else:
                self._fh.write(chunk)

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh, self._fh_part = None, None

    def discard(self) -> None:
        """Remove every staged file (the request failed as a whole)."""
        self._queue.clear()
        self._close()
        for part in self.parts:
            part.path.unlink(missing_ok=True)


async def receive(rt: Runtime, chunks: AsyncIterator[bytes], content_type: str | None,
                  content_length: str | None) -> list[StagedPart]:
    """Stream a STOW body into staging files; StowRequestError / MultipartError if it is unacceptable.

    File writes are batched to ~1 MiB and done in a worker thread so the event
    loop only scans for boundaries. On any error every staged file is removed.
    """
    limit = rt.settings.max_upload_bytes
    sink = StagingSink(rt, limit)
    try:
        boundary = request_boundary(content_type)
        if content_length and content_length.isdigit() and int(content_length) > limit:
            raise StowRequestError(413, f"request body of {content_length} bytes exceeds the limit of {limit}")
        parser = MultipartParser(boundary, sink)
        received = 0
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise StowRequestError(413, f"request body exceeds the limit of {limit} bytes")
            parser.feed(chunk)
            if sink.pending >= FLUSH_BYTES:
                await anyio.to_thread.run_sync(sink.flush)
        parser.finish()
        if not sink.parts:
            raise MultipartError("the multipart body has no parts")
        await anyio.to_thread.run_sync(sink.flush)
    except BaseException:
        await anyio.to_thread.run_sync(sink.discard)
        raise
    return sink.parts


@dataclass
class PartResult:
    """The outcome of one part, as the response reports it."""

    number: int
    sop_class_uid: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    stored: bool = False
    failure: int | None = None
    warning: int | None = None
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _peek_study(path: Path) -> tuple[str, str, str] | None:
    """(study, SOP class, SOP instance) from a staged part's header, or None if unreadable."""
    try:
        ds = dcmread(path, stop_before_pixels=True,
                     specific_tags=[0x0020000D, 0x00080016, 0x00080018])
    except Exception:
        return None
    return (str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("SOPClassUID", "") or ""),
            str(ds.get("SOPInstanceUID", "") or ""))


def store_part(rt: Runtime, part: StagedPart, *, study_uid: str | None, actor: str, source: str) -> PartResult:
    """Ingest one staged part (the staged file is consumed whatever happens)."""
    result = PartResult(part.number)
    try:
        media_type, _ = media.parse_content_type(part.content_type)
        if media_type and media_type != media.DICOM:
            result.failure = CANNOT_UNDERSTAND
            result.reason = f"part {part.number} has media type {media_type!r}; expected application/dicom"
            return result
        if study_uid:
            peek = _peek_study(part.path)
            if peek is not None and peek[0] and peek[0] != study_uid:
                result.study_uid, result.sop_class_uid, result.sop_uid = peek
                result.failure = DATA_SET_MISMATCH
                result.reason = (f"part {part.number}: Study Instance UID {peek[0]} does not match the target "
                                 f"study {study_uid}; not stored")
                return result
        outcome = ingest_staged(rt, part.path, actor=actor, source=source)
    except Exception as exc:  # never let one part take the request down
        log.exception("STOW part %d failed", part.number)
        result.failure, result.reason = PROCESSING_FAILURE, f"part {part.number}: processing failure: {exc}"
        return result
    finally:
        part.path.unlink(missing_ok=True)
    result.sop_class_uid, result.sop_uid = outcome.sop_class_uid, outcome.sop_uid
    result.study_uid, result.series_uid = outcome.study_uid, outcome.series_uid
    if outcome.ok:
        result.stored = True
    elif outcome.warning:
        result.warning, result.reason = ELEMENTS_DISCARDED, f"part {part.number} ({outcome.sop_uid}): {outcome.reason}"
    else:
        result.failure = {"rejected": CANNOT_UNDERSTAND}.get(outcome.status, PROCESSING_FAILURE)
        if outcome.status == "failed" and "storage failure" in outcome.reason:
            result.failure = OUT_OF_RESOURCES
        label = f"part {part.number}" + (f" ({outcome.sop_uid})" if outcome.sop_uid else "")
        result.reason = f"{label}: {outcome.reason}"
    return result


def store_parts(rt: Runtime, parts: list[StagedPart], *, study_uid: str | None, actor: str,
                source: str) -> list[PartResult]:
    """Ingest all staged parts, a few at a time, results in part order."""
    futures = [_pool.submit(store_part, rt, p, study_uid=study_uid, actor=actor, source=source) for p in parts]
    return [f.result() for f in futures]


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def instance_url(base_url: str, r: PartResult) -> str:
    return f"{base_url}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"


def build_response(results: list[PartResult], base_url: str, study_uid: str | None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, Store Instances Response as DICOM JSON): 200 all stored, 202 partial, 409 none."""
    body: dict[str, Any] = {}
    referenced = []
    failed = []
    for r in results:
        if r.failure is None:
            item = {"00081150": _uid(r.sop_class_uid), "00081155": _uid(r.sop_uid),
                    "00081190": {"vr": "UR", "Value": [instance_url(base_url, r)]}}
            if r.warning is not None:
                item["00081196"] = {"vr": "US", "Value": [r.warning]}
            referenced.append(item)
        else:
            failed.append({"00081150": _uid(r.sop_class_uid), "00081155": _uid(r.sop_uid),
                           "00081197": {"vr": "US", "Value": [r.failure]}})
    studies = {r.study_uid for r in results if r.failure is None and r.study_uid}
    target = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    if target:
        body["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{target}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if not failed and all(r.warning is None for r in results):
        return 200, body
    if not referenced:
        return 409, body
    return 202, body


def warning_headers(results: list[PartResult], limit: int = 20) -> list[str]:
    """RFC 7234 ``Warning`` values carrying the readable reason of each failure or warning."""
    out = []
    for r in results:
        if r.reason:
            text = r.reason.replace('"', "'").replace("\r", " ").replace("\n", " ")
            out.append('299 readingroom "' + text.encode("latin-1", "replace").decode("latin-1")[:500] + '"')
    if len(out) > limit:
        out = [*out[:limit], f'299 readingroom "{len(out) - limit} more problems not listed"']
    return out
