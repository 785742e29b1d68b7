"""Inbound HL7 v2: parse, deduplicate, dispatch by MSH-9, acknowledge, log.

The MLLP edge (``hl7.py``) hands every received block to :func:`receive` and
writes back what it returns. The rules, in the order they apply:

* A block that is not an HL7 v2 message (no MSH, unparseable) or whose
  header the receiver cannot accept (MSH-9 missing, version not 2.x,
  processing id not P/T/D) gets **AR**; a message type or trigger event with
  no handler gets **AR** with code 200/201.
* The content is processed in **one transaction**; a handler that refuses it
  raises :class:`Hl7Error` (missing field 101, bad date 102, unknown value
  103, unknown order or patient 204...) and the transaction rolls back, so a
  rejected message changes nothing. The **AE** ACK names the field in an ERR
  segment (table 0357 code, location, readable text).
* An accepted message's log row is written in the same transaction as its
  effects; a rejected one's in a transaction of its own afterwards. So the
  log never claims an effect that did not happen.
* A sender that did not get our ACK re-sends the same MSH-10: a message
  *accepted* before (same MSH-3 + MSH-4 + MSH-10) gets the original ACK back
  (same ACK control id and time) and is not processed again. A message
  *rejected* before is processed afresh: nothing changed the first time, and
  the cause (an order or patient not yet known) may have been fixed since.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import hl7
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.interop import adt, hl7_orders
from readingroom.interop.hl7_fields import (
    APPLICATION_INTERNAL_ERROR,
    ERROR_TEXT,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION_ID,
    Hl7Error,
    value,
)
from readingroom.interop.models import Hl7Message
from readingroom.runtime import Runtime
from readingroom.workflow.cases import Actor

log = logging.getLogger(__name__)

RECEIVING_APPLICATION = "READINGROOM"


@dataclass
class Inbound:
    """A parsed message with its header read once, as handlers need it."""

    msg: hl7.Message
    control_id: str
    code: str  # MSH-9.1, e.g. ORM
    trigger: str  # MSH-9.2, e.g. O01
    sending_application: str  # MSH-3 as sent (all components): with MSH-4, who the sender is
    sending_facility: str  # MSH-4 as sent
    facility_code: str  # MSH-4.1: matched against Site.code
    version: str

    @property
    def message_type(self) -> str:
        return f"{self.code}^{self.trigger}"

    @property
    def actor(self) -> Actor:
        """Changes are attributed to the sending system, e.g. ``hl7:RIS``."""
        return Actor(name=f"hl7:{self.sending_application.split('^')[0] or 'unknown'}")

    @property
    def source_id(self) -> str:
        return f"hl7:{self.control_id}"


Handler = Callable[[Session, Inbound], None]

#: (MSH-9.1, MSH-9.2) -> handler; the message types this receiver understands.
HANDLERS: dict[tuple[str, str], Handler] = {
    ("ORM", "O01"): hl7_orders.handle_order_message,
    ("OMI", "O23"): hl7_orders.handle_order_message,
    ("ADT", "A08"): adt.handle_update,
    ("ADT", "A31"): adt.handle_update,
    ("ADT", "A40"): adt.handle_merge,
}
_PROCESSING_IDS = {"P", "T", "D"}


@dataclass
class _Header:
    """What the ACK echoes: raw MSH fields and the separators the sender used."""

    field_sep: str = "|"
    encoding: str = "^~\\&"
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    trigger: str = ""
    control_id: str = ""
    processing_id: str = "P"
    version: str = "2.5.1"


def decode(data: bytes) -> str:
    """The message text: UTF-8 (HL7's preferred encoding), else Latin-1 (which never fails)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def receive(rt: Runtime, data: bytes, peer: str = "") -> str:
    """Process one MLLP block; the ACK to send back (never raises)."""
    raw = decode(data).replace("\r\n", "\r").replace("\n", "\r").strip()
    header = _Header()
    try:
        msg = _parse(raw)
        header = _header(msg)
        inbound = _inbound(msg, header)
    except Hl7Error as exc:
        return _reject(rt, raw, header, peer, exc)
    try:
        with rt.db.session() as session:
            _lock(session, inbound)
            previous = _accepted(session, inbound)
            if previous is not None:  # logged too, and answered with the original ACK
                log.info("HL7 %s %s from %s is a duplicate: original ACK re-sent", inbound.message_type,
                         inbound.control_id, inbound.sending_application)
                session.add(_log_row(raw, header, peer, inbound.message_type, "AA",
                                     f"duplicate of message {previous.id}: original ACK re-sent, not processed "
                                     "again"))
                return build_ack(header, "AA", f"RRACK{previous.id}", previous.received_at)
            _handler(inbound)(session, inbound)
            row = _log_row(raw, header, peer, inbound.message_type, "AA", "")
            session.add(row)
            session.flush()
            ack = build_ack(header, "AA", f"RRACK{row.id}", row.received_at)
        log.info("HL7 %s %s accepted", inbound.message_type, inbound.control_id)
        return ack
    except Hl7Error as exc:
        return _reject(rt, raw, header, peer, exc, inbound.message_type)
    except Exception as exc:  # a bug or the database: AE 207, nothing committed, the listener lives on
        log.exception("HL7 %s %s failed", inbound.message_type, inbound.control_id)
        return _reject(rt, raw, header, peer, Hl7Error(APPLICATION_INTERNAL_ERROR, f"internal error: {exc}"),
                       inbound.message_type)


def refuse_frame(rt: Runtime, peer: str, reason: str) -> str:
    """The AR for a frame the MLLP layer could not read (logged like any refused message)."""
    return _reject(rt, "", _Header(), peer, Hl7Error(SEGMENT_SEQUENCE_ERROR, reason, ack="AR"))


def _parse(raw: str) -> hl7.Message:
    if not raw.startswith("MSH") or len(raw) < 8:
        raise Hl7Error(SEGMENT_SEQUENCE_ERROR, "not an HL7 v2 message: it must begin with an MSH segment",
                       segment="MSH", ack="AR")
    try:
        msg = hl7.parse(raw)
        msg.segment("MSH")
    except Exception as exc:  # the parser raises what it likes on garbage
        raise Hl7Error(SEGMENT_SEQUENCE_ERROR, f"the message cannot be parsed: {exc}", segment="MSH",
                       ack="AR") from exc
    return msg


def _header(msg: hl7.Message) -> _Header:
    msh = msg.segment("MSH")
    return _Header(
        field_sep=str(msh(1)) or "|", encoding=str(msh(2)) or "^~\\&",
        sending_application=_raw(msh, 3), sending_facility=_raw(msh, 4),
        receiving_application=_raw(msh, 5), receiving_facility=_raw(msh, 6), trigger=value(msh, 9, 2),
        control_id=value(msh, 10), processing_id=value(msh, 11) or "P", version=value(msh, 12) or "2.5.1",
    )


def _raw(seg: hl7.Segment, field: int) -> str:
    return str(seg(field)) if field < len(seg) else ""


def _inbound(msg: hl7.Message, h: _Header) -> Inbound:
    msh = msg.segment("MSH")
    code = value(msh, 9, 1).upper()
    if not code:
        raise Hl7Error(REQUIRED_FIELD_MISSING, "the message type (MSH-9) is missing", segment="MSH", field=9,
                       ack="AR")
    if not h.control_id:
        raise Hl7Error(REQUIRED_FIELD_MISSING, "the message control id (MSH-10) is missing", segment="MSH",
                       field=10)
    if h.processing_id[:1].upper() not in _PROCESSING_IDS:
        raise Hl7Error(UNSUPPORTED_PROCESSING_ID, f"processing id {h.processing_id!r} is not P, T or D",
                       segment="MSH", field=11, ack="AR")
    if not h.version.startswith("2."):
        raise Hl7Error(UNSUPPORTED_VERSION_ID, f"version {h.version!r} is not HL7 v2.x", segment="MSH", field=12,
                       ack="AR")
    trigger = h.trigger.upper() or value(msh, 9, 3).upper()
    return Inbound(msg=msg, control_id=h.control_id[:64], code=code, trigger=trigger,
                   sending_application=h.sending_application[:128], sending_facility=h.sending_facility[:128],
                   facility_code=value(msh, 4, 1), version=h.version)


def _handler(m: Inbound) -> Handler:
    handler = HANDLERS.get((m.code, m.trigger))
    if handler is not None:
        return handler
    if any(code == m.code for code, _ in HANDLERS):
        supported = ", ".join(sorted(t for c, t in HANDLERS if c == m.code))
        raise Hl7Error(UNSUPPORTED_EVENT_CODE, f"{m.message_type} is not supported ({m.code} events accepted: "
                       f"{supported})", segment="MSH", field=9, ack="AR")
    supported = ", ".join(sorted({c for c, _ in HANDLERS}))
    raise Hl7Error(UNSUPPORTED_MESSAGE_TYPE, f"message type {m.code!r} is not supported (accepted: {supported})",
                   segment="MSH", field=9, ack="AR")


def _accepted(session: Session, m: Inbound) -> Hl7Message | None:
    """The first acceptance of this sender's control id, if any."""
    return session.scalars(select(Hl7Message).where(
        Hl7Message.sending_application == m.sending_application, Hl7Message.sending_facility == m.sending_facility,
        Hl7Message.control_id == m.control_id, Hl7Message.ack_code == "AA").order_by(Hl7Message.id).limit(1)).first()


def _lock(session: Session, m: Inbound) -> None:
    """Serialise two copies of one message arriving at once (SQLite's writers are serial already)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"{m.sending_application}|{m.sending_facility}|{m.control_id}".encode()).digest()
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": int.from_bytes(digest[:8], "big", signed=True)})


def _log_row(raw: str, h: _Header, peer: str, message_type: str, ack_code: str, error: str) -> Hl7Message:
    return Hl7Message(control_id=h.control_id[:64], message_type=message_type[:32],
                      sending_application=h.sending_application[:128], sending_facility=h.sending_facility[:128],
                      peer_address=peer[:128], received_at=utcnow(), ack_code=ack_code, error=error, raw=raw)


def _reject(rt: Runtime, raw: str, h: _Header, peer: str, exc: Hl7Error, message_type: str = "") -> str:
    """Log a refused message in its own transaction and build its AE/AR."""
    message_type = message_type or _type_of(raw, h)
    log.info("HL7 message %s from %s refused (%s): %s", h.control_id or "?", h.sending_application or peer,
             exc.ack, exc.describe())
    ack_id, at = f"RR{utcnow():%Y%m%d%H%M%S%f}", utcnow()
    try:
        with rt.db.session() as session:
            row = _log_row(raw, h, peer, message_type, exc.ack, exc.describe())
            session.add(row)
            session.flush()
            ack_id, at = f"RRACK{row.id}", row.received_at
    except Exception:  # the database is down: still answer, so the sender knows
        log.exception("could not log a refused HL7 message")
    return build_ack(h, exc.ack, ack_id, at, exc)


def _type_of(raw: str, h: _Header) -> str:
    """MSH-9 as sent, for the log of a message refused before it was understood."""
    if not raw.startswith("MSH"):
        return ""
    fields = raw.split("\r", 1)[0].split(h.field_sep)
    return fields[8][:32] if len(fields) > 8 else ""


def _esc(text_: str, h: _Header) -> str:
    """Escape the sender's delimiters in a value we write into the ACK."""
    esc = h.encoding[2:3] or "\\"
    out = text_.replace("\r", " ").replace("\n", " ").replace(esc, f"{esc}E{esc}")
    for char, code in zip(h.field_sep + h.encoding[:2] + h.encoding[3:4], "FSRT", strict=False):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out


def build_ack(h: _Header, ack_code: str, ack_control_id: str, at: datetime, error: Hl7Error | None = None) -> str:
    """The original-mode ACK: MSH, MSA (MSA-2 = the message's MSH-10), and ERR when refused.

    ERR carries both the v2.3/2.4 form (ERR-1: segment^sequence^field^code&text&HL70357)
    and the v2.5+ form (ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 user message),
    so receivers of either generation find the reason where they look for it.
    """
    f = h.field_sep
    comp, sub = h.encoding[:1] or "^", h.encoding[3:4] or "&"
    ts = at.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")
    msh = f.join(["MSH", h.encoding, h.receiving_application or RECEIVING_APPLICATION, h.receiving_facility,
                  h.sending_application, h.sending_facility, ts, "",
                  comp.join(["ACK", _esc(h.trigger, h), "ACK"]), ack_control_id, _esc(h.processing_id, h),
                  _esc(h.version, h)])
    msa = ["MSA", ack_code, _esc(h.control_id, h)]
    segments = []
    if error is not None:
        readable = _esc(error.text, h)
        msa.append(readable)
        name = ERROR_TEXT.get(error.code, "")
        location = comp.join([error.segment, str(error.sequence) if error.segment else "",
                              str(error.field) if error.field else ""]).rstrip(comp)
        eld = comp.join([error.segment, str(error.sequence) if error.segment else "",
                         str(error.field) if error.field else "", sub.join([error.code, name, "HL70357"])])
        code = comp.join([error.code, name, "HL70357"])
        segments.append(f.join(["ERR", eld, location, code, "E", "", "", "", readable]))
    return "\r".join([msh, f.join(msa), *segments]) + "\r"
