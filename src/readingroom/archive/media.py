"""Media types and transfer syntaxes for DICOMweb content negotiation (PS3.18 8.7).

The DICOMweb edge asks here which representation of a resource to send for
an ``Accept`` header, so the rules live in one plain, unit-tested place: the
original bytes whenever the client accepts them (``transfer-syntax=*`` or no
transfer syntax), a transcode to an uncompressed syntax only when the client
explicitly asks for it, and ``None`` (-> 406) when nothing acceptable can be
produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
OCTET = "application/octet-stream"
MULTIPART = "multipart/related"

#: Syntaxes whose pixel data are stored natively (frames are plain bytes).
NATIVE_SYNTAXES = frozenset({
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
})
#: Syntaxes we can transcode any decodable instance into with pydicom.
TRANSCODE_TARGETS = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})

#: PS3.18 Table 8.7.3-2: the media type of a compressed frame, per transfer syntax.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
}
#: Names clients use for the same thing (older drafts, dicomweb-client).
_ALIASES = {"image/dicom-rle": "image/x-dicom-rle", "image/x-jls": "image/jls"}


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header, with ``multipart/related`` unwrapped.

    ``media_type`` is what each part (or the single body) is; ``multipart``
    says whether the client asked for a multipart wrapper (None: ``*/*``, either).
    """

    media_type: str
    multipart: bool | None
    transfer_syntax: str | None = None
    q: float = 1.0
    params: dict[str, str] = field(default_factory=dict)

    def matches(self, media_type: str) -> bool:
        """Whether this range admits ``media_type`` (wildcards and aliases included)."""
        mine = _ALIASES.get(self.media_type, self.media_type)
        theirs = _ALIASES.get(media_type, media_type)
        if mine in ("*/*", "*"):
            return True
        if mine.endswith("/*") or mine.endswith("/"):
            return theirs.split("/", 1)[0] == mine.split("/", 1)[0]
        return mine == theirs


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    out, buf, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` -> (lower-cased media type, parameters)."""
    pieces = _split_outside_quotes(value or "", ";")
    media = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        if eq:
            params[name.strip().lower()] = val.strip().strip('"')
    return media, params


def parse_accept(header: str | None, default: str) -> list[MediaRange]:
    """The acceptable media ranges, best first (q=0 entries dropped).

    ``default`` is the resource's default media type, used when the header is
    absent or a ``multipart/related`` range names no ``type``.
    """
    if not header or not header.strip():
        header = "*/*"
    ranges: list[tuple[float, int, MediaRange]] = []
    for i, item in enumerate(_split_outside_quotes(header, ",")):
        if not item.strip():
            continue
        media, params = parse_content_type(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0:
            continue
        ts = params.get("transfer-syntax") or None
        if media == MULTIPART:
            inner = params.get("type", default).lower() or default
            rng = MediaRange(inner, True, ts, q, params)
        elif media in ("*/*", "*"):
            rng = MediaRange("*/*", None, ts, q, params)
        else:
            rng = MediaRange(media, False, ts, q, params)
        ranges.append((-q, i, rng))
    return [r for _, _, r in sorted(ranges, key=lambda t: (t[0], t[1]))]


def can_transcode(stored_ts: str) -> bool:
    """Whether pydicom can rewrite an instance stored in ``stored_ts`` uncompressed.

    Big endian is excluded: rewriting OW pixel data byte order is not something
    pydicom does on its own, and the syntax is retired anyway.
    """
    return stored_ts != ExplicitVRBigEndian and bool(stored_ts)


def choose_instance_syntax(ranges: list[MediaRange], stored_ts: str) -> str | None:
    """Transfer syntax to send an instance in (``stored_ts`` = the original bytes), or None."""
    for r in ranges:
        if not r.matches(DICOM):
            continue
        ts = r.transfer_syntax
        if ts in (None, "*") or ts == stored_ts:
            return stored_ts
        if ts in TRANSCODE_TARGETS and can_transcode(stored_ts):
            return ts
    return None


def wants_single_part(ranges: list[MediaRange], media_type: str) -> bool:
    """Whether the preferred acceptable range for ``media_type`` is a bare (non-multipart) body."""
    for r in ranges:
        if r.matches(media_type):
            return r.multipart is False
    return False


@dataclass(frozen=True)
class FrameChoice:
    """How to send frames: as stored, or decoded to native little endian."""

    media_type: str
    transfer_syntax: str
    decode: bool


def frame_media_type(stored_ts: str) -> str:
    """Media type of frames stored in ``stored_ts`` sent as they are."""
    return FRAME_MEDIA_TYPES.get(stored_ts, OCTET)


def choose_frame_syntax(ranges: list[MediaRange], stored_ts: str) -> FrameChoice | None:
    """Pick the representation of frames (or bulk pixel data) for an Accept header.

    ``application/octet-stream`` with ``transfer-syntax=*`` means "whatever is
    stored" (OHIF asks this way); without a transfer syntax it means native
    little endian, which requires decoding compressed frames.
    """
    native = stored_ts in NATIVE_SYNTAXES and stored_ts != ExplicitVRBigEndian
    stored_type = OCTET if native else frame_media_type(stored_ts)
    as_stored = FrameChoice(stored_type, ExplicitVRLittleEndian if native else stored_ts, False)
    decoded = FrameChoice(OCTET, ExplicitVRLittleEndian, True)
    for r in ranges:
        ts = r.transfer_syntax
        if r.media_type in ("*/*", "*"):
            if ts in (None, "*") or ts == stored_ts or (native and ts == ExplicitVRLittleEndian):
                return as_stored
            if ts == ExplicitVRLittleEndian:
                return decoded
            continue
        if r.matches(OCTET):
            if ts == "*":
                return FrameChoice(OCTET, as_stored.transfer_syntax, False)
            if ts in (None, ExplicitVRLittleEndian):
                return as_stored if native else decoded
            if ts == stored_ts:
                return FrameChoice(OCTET, stored_ts, False)
            continue
        if not native and r.matches(stored_type) and ts in (None, "*", stored_ts):
            requested = _ALIASES.get(r.media_type, r.media_type)
            return FrameChoice(stored_type if "*" in requested else r.media_type, stored_ts, False)
    return None


def choose_rendered_type(ranges: list[MediaRange]) -> str | None:
    """``image/jpeg`` or ``image/png`` for a rendered resource (JPEG by default, PS3.18 8.7.4)."""
    for r in ranges:
        for candidate in ("image/jpeg", "image/png"):
            if r.matches(candidate):
                return candidate
    return None


def accepts_json(ranges: list[MediaRange]) -> bool:
    """Whether DICOM JSON (or plain JSON) is acceptable."""
    return any(r.matches(DICOM_JSON) or r.matches("application/json") for r in ranges)
