"""DICOM TLS for the DIMSE edge (PS3.15 Annex B, secure transport connection profiles).

Two directions, one set of files:

* **Listening.** With ``dicom_tls_port``, ``dicom_tls_cert`` and
  ``dicom_tls_key`` set, ``serve`` opens a second DICOM port whose
  connections are TLS (1.2 or later). With ``dicom_tls_ca`` also set, every
  caller must present a certificate issued by that CA (mutual TLS, what the
  BCP 195 profiles and IHE ATNA "secure node" expect); without it the
  connection is encrypted but callers are identified only by AE title and
  address, as on the plain port.
* **Calling.** A peer marked ``tls`` is reached over TLS for C-MOVE
  sub-operations, ``readingroom send`` and C-ECHO. We present
  ``dicom_tls_cert`` / ``dicom_tls_key`` as client certificate (if set) and
  verify the peer's certificate against ``dicom_tls_ca`` (else the system's
  trust store), including that it names the peer's host: verification is
  never switched off, because an unverified TLS peer is just a man in the
  middle with extra steps.

Why a server class of our own: pynetdicom's server completes the TLS
handshake inside its accept loop, so one caller that connects and says
nothing stops every other TLS caller from being accepted. ``TlsServer``
accepts without handshaking and runs the handshake, with a deadline, on the
connection's own thread; a failed handshake (a plain DICOM client on the TLS
port, an untrusted certificate) closes that one connection, is logged and
audited, and the server carries on.

The server context is built once at start (rotate certificates by
restarting); client contexts are built per association, so a renewed client
certificate or CA bundle is used from the next association on.
"""

from __future__ import annotations

import logging
import ssl
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

from readingroom.config import Settings

log = logging.getLogger(__name__)

#: PS3.15 Annex B and BCP 195: nothing older than TLS 1.2.
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: Seconds a caller has to complete the TLS handshake (matches the ACSE timeout).
HANDSHAKE_TIMEOUT = 30.0

#: Short names for the subject attributes Python's ``getpeercert()`` spells out (RFC 4514).
_SHORT_NAMES = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
    "stateOrProvinceName": "ST", "localityName": "L", "emailAddress": "emailAddress",
    "domainComponent": "DC", "serialNumber": "serialNumber",
}


class TlsConfigError(ValueError):
    """The DICOM TLS settings cannot be used; the message names the setting and says why."""


# -- contexts ----------------------------------------------------------------------------------


def _readable(path: Path, setting: str) -> Path:
    """``path`` if it is a readable file, else a TlsConfigError naming ``setting``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TlsConfigError(f"{setting}: {path} does not exist")
    if not path.is_file():
        raise TlsConfigError(f"{setting}: {path} is not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise TlsConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from exc
    return path


def _load_identity(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Load our certificate (chain) and private key into ``ctx``, with readable errors."""
    cert = _readable(cert, "dicom_tls_cert")
    key = _readable(key, "dicom_tls_key")
    # OpenSSL says only "PEM lib" when either file is wrong: look first, to name the culprit.
    if "-----BEGIN CERTIFICATE-----" not in cert.read_text(errors="replace"):
        raise TlsConfigError(f"dicom_tls_cert: {cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    key_text = key.read_text(errors="replace")
    if "ENCRYPTED" in key_text:
        raise TlsConfigError(f"dicom_tls_key: {key} is encrypted; give the service an unencrypted key "
                             "protected by file permissions")
    if "PRIVATE KEY-----" not in key_text:
        raise TlsConfigError(f"dicom_tls_key: {key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)")
    mode = key.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("dicom_tls_key %s is readable by other users (mode %o): chmod 600 it", key, mode & 0o777)
    try:
        # An empty password makes an encrypted key fail instead of prompting on the terminal.
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key), password=lambda: b"")
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"dicom_tls_cert / dicom_tls_key: {cert} and {key} do not load as a certificate and its private key "
            f"({exc.reason or exc})"
        ) from exc


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    ca = _readable(ca, "dicom_tls_ca")
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except ssl.SSLError as exc:
        raise TlsConfigError(f"dicom_tls_ca: {ca} holds no usable PEM CA certificate ({exc.reason or exc})") from exc


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of the DICOM TLS listener, or None when no TLS port is configured."""
    if settings.dicom_tls_port is None:
        return None
    if settings.dicom_tls_port == settings.dicom_port:
        raise TlsConfigError(f"dicom_tls_port: {settings.dicom_tls_port} is also dicom_port; use another port")
    missing = [name for name in ("dicom_tls_cert", "dicom_tls_key") if getattr(settings, name) is None]
    if missing:
        raise TlsConfigError(f"dicom_tls_port is set but {' and '.join(missing)} not: the TLS listener needs both")
    assert settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    _load_identity(ctx, settings.dicom_tls_cert, settings.dicom_tls_key)
    if settings.dicom_tls_ca is not None:
        _load_ca(ctx, settings.dicom_tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class ClientContext(ssl.SSLContext):
    """An ``SSLContext`` for one outgoing association that remembers why its handshake failed.

    pynetdicom swallows connection errors into its log; keeping the reason
    here lets ``readingroom send`` and the audit trail say "certificate
    verify failed: Hostname mismatch" instead of "no answer".
    """

    failure: str = ""


class _RecordingSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:
            ctx = self.context
            if isinstance(ctx, ClientContext):
                ctx.failure = describe(exc)
            raise


ClientContext.sslsocket_class = _RecordingSocket


def client_context(settings: Settings) -> ClientContext:
    """A fresh context for calling a TLS peer: our client certificate, peer verified (name included)."""
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = MINIMUM_VERSION
    if settings.dicom_tls_ca is not None:
        _load_ca(ctx, settings.dicom_tls_ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    cert, key = settings.dicom_tls_cert, settings.dicom_tls_key
    if (cert is None) != (key is None):
        raise TlsConfigError("dicom_tls_cert and dicom_tls_key must be set together")
    if cert is not None and key is not None:
        _load_identity(ctx, cert, key)
    return ctx


def tls_args(settings: Settings, host: str) -> tuple[ssl.SSLContext, str]:
    """pynetdicom's ``tls_args`` for an association to ``host`` (raises TlsConfigError)."""
    return client_context(settings), host


def describe(exc: BaseException) -> str:
    """A short, readable reason for a TLS failure."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc).replace("_", " ").lower()
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# -- who is on the other end -------------------------------------------------------------------


def subject_of(cert: dict[str, Any]) -> str:
    """RFC 4514-style subject (``CN=ct1,O=Hospital``) of a ``getpeercert()`` dictionary."""
    parts = []
    for rdn in cert.get("subject", ()):
        parts.append("+".join(f"{_SHORT_NAMES.get(k, k)}={v}" for k, v in rdn))
    return ",".join(reversed(parts))


def transport_of(assoc: Association) -> str:
    """How an association's caller reached us: ``""`` (plain TCP), ``"TLS"`` or ``"TLS CN=…"``.

    The subject is only known when a CA is configured (the listener then
    asks for and verifies client certificates).
    """
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    try:
        cert = sock.getpeercert()
    except (ValueError, OSError):  # closed under us
        return "TLS"
    subject = subject_of(cert) if cert else ""
    return f"TLS {subject}" if subject else "TLS"


# -- the listener ------------------------------------------------------------------------------

HandshakeFailure = Callable[[str, str], None]


class TlsServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved onto each connection's thread."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT
    #: Called as ``(address, reason)`` when a caller fails the handshake.
    on_handshake_failure: HandshakeFailure | None = None

    def get_request(self) -> tuple[Any, Any]:
        assert self.socket is not None and self.ssl_context is not None
        client, address = self.socket.accept()
        return self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False), address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.handshake_timeout)
            request.do_handshake()
            request.settimeout(None)  # pynetdicom's sockets block; its own timers bound the waits
        except OSError as exc:  # ssl.SSLError, timeouts, resets
            self._handshake_failed(request, client_address, exc)
            return
        super().process_request_thread(request, client_address)

    def _handshake_failed(self, request: Any, client_address: Any, exc: OSError) -> None:
        address = str(client_address[0]) if isinstance(client_address, tuple) else str(client_address)
        try:
            request.close()
        except OSError:
            pass
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError):
            # Connected and left without trying (port probes, load balancer health checks).
            log.info("TLS connection from %s closed before the handshake: %s", address, describe(exc))
            return
        reason = describe(exc)
        log.warning("TLS handshake with %s failed: %s", address, reason)
        if self.on_handshake_failure is not None:
            try:
                self.on_handshake_failure(address, reason)
            except Exception:
                log.exception("could not report a failed TLS handshake")


def start_tls_server(
    ae: AE,
    address: tuple[str, int],
    context: ssl.SSLContext,
    evt_handlers: list[Any],
    on_handshake_failure: HandshakeFailure | None = None,
) -> TlsServer:
    """Listen for TLS associations on ``address`` (non-blocking), as ``ae.start_server`` does for plain TCP."""
    server = ae.make_server(address, ssl_context=context, evt_handlers=evt_handlers, server_class=TlsServer)
    assert isinstance(server, TlsServer)
    server.on_handshake_failure = on_handshake_failure
    thread = threading.Thread(target=server.serve_forever, name=f"DicomTlsAcceptor:{address[1]}", daemon=True)
    thread.start()
    # pynetdicom keeps its servers in a private list: AE.shutdown() stops what is there, and
    # AssociationServer.shutdown() removes itself from it, so ours must be listed too.
    ae._servers.append(server)
    return server


__all__ = [
    "ClientContext", "TlsConfigError", "TlsServer", "client_context", "describe", "server_context",
    "start_tls_server", "subject_of", "tls_args", "transport_of",
]
