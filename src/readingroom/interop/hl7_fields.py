"""Reading HL7 v2 fields: the error every inbound handler raises, and the data types they share.

The ``hl7`` library parses the message and unescapes values; what it leaves
to the application is *meaning*: which repetition of a CX is the one we want,
how an XCN becomes a DICOM person name, how a DTM without an offset is read
(in the site's time zone), and — most important for the ACK — *which* field
was wrong. :class:`Hl7Error` carries the HL7 table 0357 error code and the
location (segment, field) so the edge can build an ERR segment a RIS
interface analyst can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import hl7

#: HL7 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_DTM = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,4})?)?)?)?)?)?([+-]\d{4})?")

# HL7 table 0357 (message error condition codes) used here.
SEGMENT_SEQUENCE_ERROR = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_INTERNAL_ERROR = "207"

ERROR_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class Hl7Error(Exception):
    """A message this receiver refuses: ACK code (AE/AR), table 0357 code, location and a readable reason."""

    def __init__(self, code: str, text: str, *, segment: str = "", field: int = 0, ack: str = "AE",
                 sequence: int = 1) -> None:
        super().__init__(text)
        self.code, self.text, self.segment, self.field, self.ack, self.sequence = (
            code, text, segment, field, ack, sequence)

    @property
    def location(self) -> str:
        """``PID-3`` style, for logs and the readable text."""
        if not self.segment:
            return ""
        return f"{self.segment}-{self.field}" if self.field else self.segment

    def describe(self) -> str:
        """What is stored in ``hl7_messages.error`` and shown to people."""
        where = f" at {self.location}" if self.location else ""
        return f"{self.code} {ERROR_TEXT.get(self.code, '')}{where}: {self.text}"


def segment(msg: hl7.Message, name: str, *, required: bool = False) -> hl7.Segment | None:
    """The first segment ``name``, or None (Hl7Error 100 when required)."""
    try:
        return msg.segment(name)
    except KeyError:
        if required:
            raise Hl7Error(SEGMENT_SEQUENCE_ERROR, f"the message has no {name} segment", segment=name) from None
        return None


def segments(msg: hl7.Message, name: str) -> list[hl7.Segment]:
    try:
        return list(msg.segments(name))
    except KeyError:
        return []


def value(seg: hl7.Segment | None, field: int, component: int = 1, sub: int = 1, rep: int = 1) -> str:
    """One unescaped value ('' when absent, whatever depth the sender used)."""
    if seg is None:
        return ""
    try:
        return str(seg.extract_field(1, field, rep, component, sub)).strip()
    except (IndexError, KeyError):
        return ""


def repetitions(seg: hl7.Segment | None, field: int) -> int:
    """How many repetitions field ``field`` has (0 when empty)."""
    if seg is None or field >= len(seg):
        return 0
    f = seg(field)
    if not str(f):
        return 0
    return len(f) if len(f) and isinstance(f[0], hl7.Repetition) else 1


def required(seg: hl7.Segment | None, name: str, field: int, what: str, component: int = 1) -> str:
    """A value that must be there (Hl7Error 101 naming the field otherwise)."""
    got = value(seg, field, component)
    if not got:
        raise Hl7Error(REQUIRED_FIELD_MISSING, f"{what} ({name}-{field}) is missing", segment=name, field=field)
    return got


def hd(seg: hl7.Segment | None, field: int, component: int, rep: int = 1) -> str:
    """An HD (hierarchic designator) inside a component: namespace id, else universal id."""
    return value(seg, field, component, 1, rep) or value(seg, field, component, 2, rep)


@dataclass(frozen=True)
class Identifier:
    """A CX: the identifier and its assigning authority (Issuer of Patient ID)."""

    id: str
    authority: str


def identifiers(seg: hl7.Segment | None, field: int) -> list[Identifier]:
    """Every repetition of a CX field (PID-3, MRG-1) that carries an identifier."""
    out = []
    for rep in range(1, repetitions(seg, field) + 1):
        ident = value(seg, field, 1, 1, rep)
        if ident:
            out.append(Identifier(ident, hd(seg, field, 4, rep)))
    return out


def pick_identifier(ids: list[Identifier], preferred_authority: str) -> Identifier | None:
    """The repetition issued by ``preferred_authority`` (the site's issuer), else the first."""
    for ident in ids:
        if preferred_authority and ident.authority == preferred_authority:
            return ident
    return ids[0] if ids else None


def person_name(seg: hl7.Segment | None, field: int, offset: int = 0) -> str:
    """An XPN (offset 0) or XCN (offset 1: components shift after the id) as a DICOM PN ``Family^Given^Middle``."""
    family = value(seg, field, 1 + offset)
    given = value(seg, field, 2 + offset)
    middle = value(seg, field, 3 + offset)
    return "^".join((family, given, middle)).rstrip("^")


def provider(seg: hl7.Segment | None, field: int) -> str:
    """An ordering provider XCN as ``Family^Given`` (the ID alone when no name is sent)."""
    name = person_name(seg, field, offset=1)
    return name or value(seg, field, 1)


def site_zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def timestamp(seg: hl7.Segment | None, name: str, field: int, zone: tzinfo = UTC,
              component: int = 1) -> datetime | None:
    """A DTM/TS as aware UTC; without an offset it is read in ``zone`` (the site's). Hl7Error 102 if malformed."""
    raw = value(seg, field, component)
    if not raw:
        return None
    try:
        if not _DTM.fullmatch(raw):  # the library reads "2026-03-01" as the year 2026
            raise ValueError(raw)
        parsed = hl7.parse_datetime(raw)
    except (ValueError, TypeError) as exc:
        raise Hl7Error(DATA_TYPE_ERROR, f"{name}-{field} {raw!r} is not an HL7 date/time (YYYYMMDD[HHMM[SS]])",
                       segment=name, field=field) from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def date(seg: hl7.Segment | None, name: str, field: int) -> str:
    """A DT/DTM as DICOM DA ``YYYYMMDD`` (birth dates); Hl7Error 102 if it is not a real date."""
    raw = value(seg, field)
    if not raw:
        return ""
    digits = raw[:8]
    try:
        if len(digits) != 8 or not digits.isdigit():
            raise ValueError(raw)
        datetime.strptime(digits, "%Y%m%d")
    except ValueError as exc:
        raise Hl7Error(DATA_TYPE_ERROR, f"{name}-{field} {raw!r} is not a date (YYYYMMDD)", segment=name,
                       field=field) from exc
    return digits


__all__ = ["ERROR_TEXT", "Hl7Error", "Identifier", "date", "hd", "identifiers", "person_name", "pick_identifier",
           "provider", "repetitions", "required", "segment", "segments", "site_zone", "timestamp", "value"]
