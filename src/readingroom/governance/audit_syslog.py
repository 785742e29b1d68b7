"""Forward the sealed audit trail to an ATNA audit record repository over syslog.

Messages are RFC 5424 syslog messages whose MSG is a DICOM audit message
(``atna``): facility authpriv (10), severity notice (5), MSGID
``IHE+RFC-3881`` and a UTF-8 BOM, as IHE ITI-20 asks. Transports:

* ``udp://host:514`` - one datagram per message (RFC 5426);
* ``tcp://host:601`` - octet counting framing, ``LEN SP MSG`` (RFC 6587);
* ``tls://host:6514`` - the same framing over TLS (RFC 5425), verifying the
  receiver's certificate against the system CAs or ``audit_syslog_ca``.

The forwarder walks the chain in seal order and keeps its position in a
``consumer_offsets`` row, moved only after a batch was handed to the
transport: a crash or restart resends the last batch rather than losing it
(at least once). ``[meta sequenceId=...]`` carries the seal ``seq`` (RFC 5424
section 7.3.1) so a receiver can drop the duplicates.

The header is formatted here (one line of code): the logging handlers on
PyPI format application log records, not messages whose delivery must be
confirmed before a durable position moves.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from readingroom import __version__
from readingroom.archive.index import insert_for
from readingroom.governance import atna
from readingroom.governance.audit_chain import COLUMNS
from readingroom.governance.models import AuditRecord, AuditSeal
from readingroom.runtime import Runtime
from readingroom.workflow.models import ConsumerOffset

log = logging.getLogger(__name__)

OFFSET_NAME = "audit.syslog"
#: authpriv (10) * 8 + notice (5)
PRI = 85
MSGID = "IHE+RFC-3881"
APP_NAME = "readingroom"
BOM = b"\xef\xbb\xbf"
DEFAULT_PORTS = {"udp": 514, "tcp": 601, "tls": 6514}
TIMEOUT_SECONDS = 5.0
#: Largest payload of one UDP datagram over IPv4.
UDP_MAX = 65507


class SyslogConfigError(ValueError):
    """The syslog URL or its TLS settings are unusable; the message says why."""


def _header_token(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces (RFC 5424 PRINTUSASCII), or the NILVALUE."""
    cleaned = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:limit]
    return cleaned or "-"


def rfc5424(xml: bytes, *, at: Any, seq: int, hostname: str, procid: str) -> bytes:
    """One syslog message carrying one audit message."""
    sequence_id = (seq - 1) % 2147483647 + 1  # meta sequenceId is 1..2^31-1 and wraps
    structured = f'[meta sequenceId="{sequence_id}"][origin software="{APP_NAME}" swVersion="{__version__}"]'
    header = (f"<{PRI}>1 {atna.event_datetime(at)} {_header_token(hostname, 255)} {APP_NAME} "
              f"{_header_token(procid, 128)} {MSGID} {structured} ")
    return header.encode("ascii") + BOM + xml


@dataclass(frozen=True)
class SyslogTarget:
    """Where and how to send: parsed from ``audit_syslog_url``."""

    scheme: str
    host: str
    port: int
    ca_file: Path | None = None

    @classmethod
    def parse(cls, url: str, ca_file: Path | None = None) -> SyslogTarget:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise SyslogConfigError(f"audit_syslog_url {url!r}: use udp://, tcp:// or tls://host:port")
        if not parts.hostname:
            raise SyslogConfigError(f"audit_syslog_url {url!r} names no host")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise SyslogConfigError(f"audit_syslog_url {url!r}: {exc}") from exc
        if ca_file is not None and not Path(ca_file).is_file():
            raise SyslogConfigError(f"audit_syslog_ca {ca_file} is not a file")
        return cls(scheme, parts.hostname, port, ca_file)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def send(self, messages: Sequence[bytes]) -> None:
        """Hand every message to the network, or raise OSError (nothing counts as sent then)."""
        if not messages:
            return
        if self.scheme == "udp":
            self._send_udp(messages)
        else:
            self._send_stream(messages)

    def _send_udp(self, messages: Sequence[bytes]) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            for message in messages:
                if len(message) > UDP_MAX:
                    log.error("audit message of %d bytes is too large for UDP syslog and was not sent; "
                              "use tcp:// or tls://", len(message))
                    continue
                sock.sendto(message, address)

    def _send_stream(self, messages: Sequence[bytes]) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=TIMEOUT_SECONDS)
        sock: socket.socket = raw
        try:
            if self.scheme == "tls":
                context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
                sock = context.wrap_socket(raw, server_hostname=self.host)
            sock.sendall(b"".join(str(len(m)).encode("ascii") + b" " + m for m in messages))
        finally:
            sock.close()
            raw.close()  # a no-op once TLS took the socket over; closes it if the handshake failed


class SyslogForwarder:
    """Sends sealed audit records, in chain order, from a durable position; one instance per process."""

    def __init__(self, rt: Runtime, target: SyslogTarget, *, batch: int = 500, max_per_run: int = 5000) -> None:
        self.rt = rt
        self.target = target
        self.batch = batch
        self.max_per_run = max_per_run
        self.source = atna.AuditSource.of(rt.settings)
        self._procid = str(os.getpid())
        self._ready = False
        self._retry_at = 0.0
        self._backoff = 0.0

    @classmethod
    def from_settings(cls, rt: Runtime) -> SyslogForwarder | None:
        url = rt.settings.audit_syslog_url
        if not url:
            return None
        return cls(rt, SyslogTarget.parse(url, rt.settings.audit_syslog_ca))

    def run(self) -> int:
        """Forward what is sealed and not yet sent; returns how many messages were sent."""
        if not self._ready:
            with self.rt.db.session() as s:
                s.execute(insert_for(s, ConsumerOffset).values(name=OFFSET_NAME, position=0)
                          .on_conflict_do_nothing())
            self._ready = True
        sent = 0
        while sent < self.max_per_run:
            count = self._forward_batch()
            sent += count
            if count < self.batch:
                break
        return sent

    def run_job(self) -> None:
        """The scheduler's entry: an unreachable receiver is retried with backoff (up to a minute)."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        try:
            self.run()
            self._backoff = 0.0
        except OSError as exc:
            self._backoff = min(60.0, max(1.0, self._backoff * 2))
            self._retry_at = now + self._backoff
            log.warning("audit syslog %s unreachable (%s); retrying in %.0f s", self.target, exc, self._backoff)

    def _pending(self, s: Session, position: int) -> tuple[int, list[bytes]]:
        rows = s.execute(select(AuditSeal.seq, *COLUMNS).join(AuditRecord, AuditRecord.id == AuditSeal.record_id)
                         .where(AuditSeal.seq > position).order_by(AuditSeal.seq).limit(self.batch)).all()
        messages = [rfc5424(atna.to_bytes(atna.audit_message(row, self.source)), at=row.at, seq=row.seq,
                            hostname=self.source.host, procid=self._procid) for row in rows]
        return (rows[-1].seq if rows else position), messages

    def _forward_batch(self) -> int:
        position_q = select(ConsumerOffset.position).where(ConsumerOffset.name == OFFSET_NAME)
        if not self.rt.db.is_sqlite:
            # One forwarder at a time: the others skip the locked row instead of sending duplicates. The
            # transaction stays open while sending, which holds only this row's lock on PostgreSQL.
            with self.rt.db.session() as s:
                position = s.scalar(position_q.with_for_update(skip_locked=True))
                if position is None:
                    return 0
                new_position, messages = self._pending(s, position)
                if not messages:
                    return 0
                self.target.send(messages)
                s.execute(update(ConsumerOffset).where(ConsumerOffset.name == OFFSET_NAME)
                          .values(position=new_position))
            return len(messages)
        # SQLite: never hold the database's single write lock while waiting for the network.
        with self.rt.db.read_session() as s:
            position = s.scalar(position_q) or 0
            new_position, messages = self._pending(s, position)
        if not messages:
            return 0
        self.target.send(messages)
        with self.rt.db.session() as s:
            s.execute(update(ConsumerOffset).where(ConsumerOffset.name == OFFSET_NAME,
                                                   ConsumerOffset.position == position)
                      .values(position=new_position))
        return len(messages)
