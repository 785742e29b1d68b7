"""Who may open a DICOM association with us, and what they may do on it.

Deny by default (principle 5): a caller is accepted only when its calling AE
title is a configured peer *and* the connection comes from that peer's host.
AE titles are sent in clear text and anyone can claim any title, so the
address check is what makes the allow-list mean something. Peer hosts may be
names or addresses; names are resolved (and cached briefly) and every
loopback address counts as the same host, so a peer registered as
``localhost`` matches a caller on ``127.0.0.1`` or ``::1``.

Two settings relax this for demos and closed networks: ``accept_unknown_aets``
(anyone) and ``accept_loopback_aets`` (anyone on 127.0.0.0/8). A caller let
in that way still gets the flags of a peer registered under its AE title, so
relaxing the door never widens what a known peer was allowed to do.

This module has no pynetdicom import: it is plain policy the DIMSE edge asks.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Literal

from readingroom.archive.peers import PeerInfo, peers_by_ae
from readingroom.runtime import Runtime

Service = Literal["store", "query", "retrieve"]

#: A-ASSOCIATE-RJ diagnostics (PS3.8 9.3.4, source 1 "DICOM UL service-user").
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07

HOST_CACHE_SECONDS = 60.0
#: Length of the ``source`` columns of audit records and instances.
SOURCE_MAX = 128

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Caller:
    """An accepted association's remote end, as the service handlers see it."""

    ae_title: str
    address: str
    peer: PeerInfo | None = None
    #: False for a caller the policy no longer accepts: it may do nothing.
    trusted: bool = True
    #: How the caller reached us: "" (plain TCP), "TLS", or "TLS <certificate subject>".
    transport: str = ""

    @property
    def source(self) -> str:
        """``AE@address`` (plus ``[TLS …]``), the form audit records and ingest use for provenance.

        The TLS part carries the verified client certificate's subject, so the
        audit trail says which certificate stood behind an AE title; it is cut
        to fit the 128-character source columns.
        """
        plain = f"{self.ae_title}@{self.address}"
        room = SOURCE_MAX - len(plain) - 3
        return f"{plain} [{self.transport[:room]}]" if self.transport and room > 0 else plain

    @property
    def site_id(self) -> int | None:
        return self.peer.site_id if self.peer else None

    def may(self, service: Service) -> bool:
        """Whether this caller may use a service: the policy module decides (``policy.peer_allowed``)."""
        from readingroom.governance import policy

        return policy.peer_allowed(self.trusted, self.peer, service)


@dataclass(frozen=True)
class Decision:
    """The outcome of an association request: a Caller, or a rejection with its reason."""

    caller: Caller | None
    diagnostic: int = 0
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.caller is not None


def _ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_addresses(rt: Runtime, host: str) -> frozenset[IPAddress]:
    """The addresses a peer's host stands for (literal, or resolved and cached; empty if unknown)."""
    literal = _ip(host)
    if literal is not None:
        return frozenset({literal})

    def resolve() -> frozenset[IPAddress]:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return frozenset()
        found = {_ip(str(info[4][0])) for info in infos}
        return frozenset(ip for ip in found if ip is not None)

    return rt.cached(f"dimse.host.{host.lower()}", HOST_CACHE_SECONDS, resolve)


def same_host(rt: Runtime, address: str, host: str) -> bool:
    """Whether a connection from ``address`` comes from the peer host ``host``."""
    ip = _ip(address)
    if ip is None:
        return False
    for candidate in host_addresses(rt, host):
        if candidate == ip or (candidate.is_loopback and ip.is_loopback):
            return True
    return False


def decide(rt: Runtime, calling_ae: str, called_ae: str, address: str) -> Decision:
    """Accept or reject an A-ASSOCIATE-RQ (called AE first, as PS3.8 lists it)."""
    calling, called = calling_ae.strip(), called_ae.strip()
    if called != rt.settings.aet.strip():
        return Decision(None, CALLED_AE_NOT_RECOGNISED,
                        f"called AE title {called!r} is not ours ({rt.settings.aet!r})")
    candidates = peers_by_ae(rt).get(calling, [])
    for peer in candidates:
        if same_host(rt, address, peer.host):
            return Decision(Caller(calling, address, peer))
    ip = _ip(address)
    open_door = rt.settings.accept_unknown_aets or (
        rt.settings.accept_loopback_aets and ip is not None and ip.is_loopback
        and isinstance(ip, ipaddress.IPv4Address)
    )
    if open_door:
        return Decision(Caller(calling, address, candidates[0] if candidates else None))
    if candidates:
        hosts = ", ".join(sorted({p.host for p in candidates}))
        return Decision(None, CALLING_AE_NOT_RECOGNISED,
                        f"calling AE title {calling!r} is configured for {hosts}, not {address}")
    return Decision(None, CALLING_AE_NOT_RECOGNISED, f"calling AE title {calling!r} is not a configured peer")


def destination(rt: Runtime, ae_title: str) -> PeerInfo | None:
    """The configured peer a C-MOVE may send to (by AE title)."""
    peers = peers_by_ae(rt).get(ae_title.strip(), [])
    return peers[0] if peers else None
