"""Configured DICOM peers: who may call us, and where C-MOVE / send may go."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from readingroom.archive.models import DicomPeer
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.runtime import Runtime


class PeerError(ValueError):
    """A peer operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class PeerInfo:
    """A peer as the DIMSE edge needs it (detached from any session)."""

    id: int
    name: str
    ae_title: str
    host: str
    port: int
    site_id: int | None
    allow_store: bool
    allow_query: bool
    allow_retrieve: bool
    #: Call this peer over DICOM TLS.
    tls: bool = False

    @property
    def address(self) -> str:
        """``AE@host:port`` (with ``tls``), as reports and audit records name a destination."""
        return f"{self.ae_title}@{self.host}:{self.port}" + (" tls" if self.tls else "")

    @classmethod
    def of(cls, p: DicomPeer) -> PeerInfo:
        return cls(p.id, p.name, p.ae_title, p.host, p.port, p.site_id, p.allow_store, p.allow_query,
                   p.allow_retrieve, bool(p.tls))


def _check_ae(ae_title: str) -> str:
    """An AE title is 1-16 characters of the DICOM default repertoire (PS3.5 6.2, VR AE): printable ASCII
    without backslash. Anything else would be accepted here and fail only at association time."""
    ae = ae_title.strip()
    if not ae or len(ae) > 16 or "\\" in ae or any(not 32 <= ord(c) < 127 for c in ae):
        raise PeerError(f"invalid AE title {ae_title!r} (1-16 printable ASCII characters, no backslash)")
    return ae


_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,252})$|^\[?[0-9A-Fa-f:.]+\]?$")


def _check_host(host: str) -> str:
    """A host name or IP address: checked here so a typo fails at registration, not at the first association."""
    h = host.strip()
    if not _HOST.match(h) or ".." in h:
        raise PeerError(f"invalid host {host!r} (a DNS name or an IP address)")
    return h


def add_peer(
    session: Session,
    name: str,
    ae_title: str,
    host: str,
    port: int,
    *,
    site_id: int | None = None,
    description: str = "",
    allow_store: bool = True,
    allow_query: bool = True,
    allow_retrieve: bool = True,
    tls: bool = False,
    actor: str = "system",
) -> DicomPeer:
    """Register a peer (audited as ``peer.add``); names are unique, AE titles are validated."""
    if session.scalars(select(DicomPeer).where(DicomPeer.name == name)).first():
        raise PeerError(f"peer {name!r} already exists")
    if not 0 < port < 65536:
        raise PeerError(f"invalid port {port}")
    peer = DicomPeer(
        name=name, ae_title=_check_ae(ae_title), host=_check_host(host), port=port, site_id=site_id,
        description=description, allow_store=allow_store, allow_query=allow_query,
        allow_retrieve=allow_retrieve, tls=tls, created_at=utcnow(),
    )
    session.add(peer)
    session.flush()
    audit.record(session, actor=actor, action="peer.add", resource_type="peer", resource_id=name,
                 detail={"ae_title": peer.ae_title, "host": host, "port": port, "site_id": site_id, "tls": tls,
                         "allow_store": allow_store, "allow_query": allow_query, "allow_retrieve": allow_retrieve})
    return peer


def list_peers(session: Session) -> list[DicomPeer]:
    return list(session.scalars(select(DicomPeer).order_by(DicomPeer.name)))


def remove_peer(session: Session, name: str, *, actor: str = "system") -> None:
    """Forget a peer (audited as ``peer.remove``)."""
    peer = session.scalars(select(DicomPeer).where(DicomPeer.name == name)).first()
    if peer is None:
        raise PeerError(f"no peer named {name!r}")
    session.delete(peer)
    audit.record(session, actor=actor, action="peer.remove", resource_type="peer", resource_id=name,
                 detail={"ae_title": peer.ae_title, "host": peer.host, "port": peer.port})


def get_peer(session: Session, name_or_ae: str) -> DicomPeer | None:
    """A peer by name, else by AE title."""
    peer = session.scalars(select(DicomPeer).where(DicomPeer.name == name_or_ae)).first()
    if peer is None:
        peer = session.scalars(select(DicomPeer).where(DicomPeer.ae_title == name_or_ae)).first()
    return peer


def peers_by_ae(rt: Runtime) -> dict[str, list[PeerInfo]]:
    """All peers keyed by AE title (cached briefly; the DIMSE edge asks per association)."""

    def load() -> dict[str, list[PeerInfo]]:
        with rt.db.read_session() as s:
            out: dict[str, list[PeerInfo]] = {}
            for p in list_peers(s):
                out.setdefault(p.ae_title, []).append(PeerInfo.of(p))
            return out

    return rt.cached("peers.by_ae", 5.0, load)


def peer_info(rt: Runtime, name_or_ae: str) -> PeerInfo | None:
    with rt.db.read_session() as s:
        p = get_peer(s, name_or_ae)
        return PeerInfo.of(p) if p else None
