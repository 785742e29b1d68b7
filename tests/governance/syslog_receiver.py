"""Real syslog receivers for the ATNA tests (UDP datagrams, TCP or TLS with octet counting) and a parser.

The parser is deliberately written from RFC 5424 / RFC 6587 rather than
from our sender, so a framing or header mistake on our side fails the tests.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

_HEADER = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) ((?:\[(?:[^\]\\]|\\.)*\])+|-) (.*)$", re.DOTALL)
_SD_ELEMENT = re.compile(rb"\[([^ \]]+)((?: [^ =\]]+=\"(?:[^\"\\]|\\.)*\")*)\]")
_SD_PARAM = re.compile(rb" ([^ =\]]+)=\"((?:[^\"\\]|\\.)*)\"")


@dataclass
class Syslog:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: bytes

    @property
    def xml(self) -> ET.Element:
        assert self.msg.startswith(b"\xef\xbb\xbf"), "MSG must start with a UTF-8 BOM"
        return ET.fromstring(self.msg[3:])

    @property
    def seq(self) -> int:
        return int(self.sd["meta"]["sequenceId"])


def parse(message: bytes) -> Syslog:
    match = _HEADER.match(message)
    assert match, f"not an RFC 5424 message: {message[:200]!r}"
    pri, ts, host, app, procid, msgid, sd_text, msg = match.groups()
    sd: dict[str, dict[str, str]] = {}
    if sd_text != b"-":
        for element in _SD_ELEMENT.finditer(sd_text):
            sd[element.group(1).decode()] = {k.decode(): v.decode() for k, v in _SD_PARAM.findall(element.group(2))}
    return Syslog(int(pri), ts.decode(), host.decode(), app.decode(), procid.decode(), msgid.decode(), sd, msg)


class UdpReceiver:
    """Collects datagrams on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"udp://127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.messages.append(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class StreamReceiver:
    """Accepts TCP (or TLS) connections and splits each stream into octet-counted frames (RFC 6587)."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen()
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            buffer = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while True:
                    head, space, rest = buffer.partition(b" ")
                    if not space or not head.isdigit():
                        break
                    size = int(head)
                    if len(rest) < size:
                        break
                    self.messages.append(rest[:size])
                    buffer = rest[size:]
            if buffer:
                self.errors.append(f"trailing bytes without a complete frame: {buffer[:80]!r}")
        except (OSError, ssl.SSLError) as exc:
            self.errors.append(str(exc))
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
