"""Destinations (where ReadingRoom sends: HL7 MLLP receivers, DICOM peers, DICOMweb endpoints) and their health.

Validation answers per field (``DestinationError.errors``: field -> reason),
so an admin form can show each problem where it is; nothing is stored unless
the whole destination is valid. Secrets in ``options`` (DICOMweb ``token``,
Basic ``password``) are stored for delivery but never shown back
(:func:`public_options`); an update that sends the mask back keeps them.

Health is what the outbox records on each attempt (last contact, last
success, last error, down since) plus the backlog it holds: a destination
that is down keeps its work pending and receives it, in order, when it
returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from readingroom.archive.models import DicomPeer
from readingroom.clock import utcnow
from readingroom.collab.reports import SIGNED_KINDS
from readingroom.governance import audit
from readingroom.governance.models import Site
from readingroom.interop import outbox
from readingroom.interop.models import Destination, OutboxItem

KINDS = ("hl7", "dicom", "dicomweb")
#: Option keys each kind understands (anything else is refused, so a typo does not pass silently).
OPTION_KEYS = {
    "hl7": {"receiving_application", "receiving_facility", "connect_timeout", "ack_timeout", "retry_ack_codes"},
    "dicom": {"connect_timeout", "timeout"},
    "dicomweb": {"token", "username", "password", "headers", "timeout", "verify_tls"},
}
ACK_CODES = {"AE", "AR", "CE", "CR"}
SECRET_KEYS = ("token", "password")
#: Fields an update may change (name and kind identify the destination and stay).
CHANGEABLE = ("host", "port", "url", "peer", "peer_id", "site_id", "enabled", "events", "prior_source", "options")


class DestinationError(ValueError):
    """A refused destination: ``errors`` maps each bad field to a readable reason (HTTP 422)."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class DestinationExists(DestinationError):
    """The name is taken (HTTP 409)."""


class DestinationNotFound(LookupError):
    """No destination of that name (HTTP 404)."""


class DestinationBusy(ValueError):
    """The destination still has pending work (HTTP 409): disable it, or cancel the items first."""


def _options(kind: str, options: Any, errors: dict[str, str]) -> dict[str, Any]:
    if not isinstance(options, dict):
        errors["options"] = "an object"
        return {}
    unknown = set(options) - OPTION_KEYS.get(kind, set())
    if unknown:
        errors["options"] = f"unknown for a {kind} destination: {', '.join(sorted(unknown))}"
    for key in ("connect_timeout", "ack_timeout", "timeout"):
        if key in options and (isinstance(options[key], bool) or not isinstance(options[key], int | float)
                               or not 0 < options[key] <= 600):
            errors[f"options.{key}"] = "seconds, more than 0 and at most 600"
    for key in ("receiving_application", "receiving_facility"):
        if key in options and (not isinstance(options[key], str) or len(options[key]) > 64):
            errors[f"options.{key}"] = "text of at most 64 characters"
    codes = options.get("retry_ack_codes", [])
    if not isinstance(codes, list) or not {str(c).upper() for c in codes} <= ACK_CODES:
        errors["options.retry_ack_codes"] = f"a list of {', '.join(sorted(ACK_CODES))}"
    if "token" in options and not (isinstance(options["token"], str) and options["token"]):
        errors["options.token"] = "a bearer token (text)"
    if "username" in options or "password" in options:
        if not (isinstance(options.get("username"), str) and options["username"]
                and isinstance(options.get("password", ""), str)):
            errors["options.username"] = "HTTP Basic needs a username (and a password)"
    headers = options.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        errors["options.headers"] = "an object of header names and text values"
    if "verify_tls" in options and not isinstance(options["verify_tls"], bool):
        errors["options.verify_tls"] = "true or false"
    return dict(options)


def _validate(session: Session, kind: str, fields: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
    """The columns of a destination of ``kind`` from the given fields (errors collected, not raised)."""
    cols: dict[str, Any] = {}
    if kind == "hl7":
        host, port = str(fields.get("host") or "").strip(), fields.get("port")
        if not host:
            errors["host"] = "required for an HL7 destination"
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            errors["port"] = "a TCP port, 1 to 65535"
        cols.update(host=host, port=port, url="", peer_id=None)
    elif kind == "dicom":
        name, peer_id = str(fields.get("peer") or "").strip(), fields.get("peer_id")
        if name:
            peer = session.scalar(select(DicomPeer).where(DicomPeer.name == name))
        else:
            peer = session.get(DicomPeer, peer_id) if isinstance(peer_id, int) else None
        if peer is None:
            errors["peer"] = (f"no DICOM peer named {name!r}" if name else f"no DICOM peer {peer_id}"
                              if peer_id is not None else "required for a DICOM destination (a peer's name)")
        cols.update(peer_id=peer.id if peer else None, host="", port=None, url="")
    elif kind == "dicomweb":
        url = str(fields.get("url") or "").strip()
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            errors["url"] = "an http:// or https:// URL (the DICOMweb service root)"
        cols.update(url=url.rstrip("/"), host="", port=None, peer_id=None)
    events = fields.get("events") or []
    if not isinstance(events, list) or not set(events) <= set(SIGNED_KINDS):
        errors["events"] = f"a list of {', '.join(SIGNED_KINDS)} (empty: all)"
    elif events and kind != "hl7":
        errors["events"] = "only HL7 destinations receive report events"
    cols["events"] = list(events) if isinstance(events, list) else []
    site_id = fields.get("site_id")
    if site_id is not None and session.get(Site, site_id) is None:
        errors["site_id"] = f"no site {site_id}"
    cols["site_id"] = site_id
    cols["options"] = _options(kind, fields.get("options") or {}, errors)
    cols["enabled"] = bool(fields.get("enabled", True))
    cols["prior_source"] = bool(fields.get("prior_source", False))
    if cols["prior_source"] and kind != "dicom":
        errors["prior_source"] = "only a DICOM destination is queried for priors"
    return cols


def create(session: Session, *, name: str, kind: str, actor: str, **fields: Any) -> Destination:
    """Add a destination (all fields validated together; nothing stored on error)."""
    errors: dict[str, str] = {}
    name = (name or "").strip()
    if not name or len(name) > 64:
        errors["name"] = "1 to 64 characters"
    if kind not in KINDS:
        raise DestinationError({**errors, "kind": f"one of {', '.join(KINDS)}"})
    cols = _validate(session, kind, fields, errors)
    if errors:
        raise DestinationError(errors)
    if session.scalar(select(Destination.id).where(Destination.name == name)) is not None:
        raise DestinationExists({"name": f"a destination named {name!r} exists"})
    dest = Destination(name=name, kind=kind, created_at=utcnow(), **cols)
    session.add(dest)
    session.flush()
    audit.record(session, actor=actor, action="interop.destination.create", resource_type="destination",
                 resource_id=name, detail={"kind": kind, "site_id": dest.site_id})
    return dest


def get(session: Session, name: str) -> Destination:
    dest = session.scalar(select(Destination).where(Destination.name == name))
    if dest is None:
        raise DestinationNotFound(f"no destination {name!r}")
    return dest


def update(session: Session, dest: Destination, changes: dict[str, Any], *, actor: str) -> Destination:
    """Change some fields; the result is validated as a whole, like a new destination."""
    unknown = set(changes) - set(CHANGEABLE)
    if unknown:
        raise DestinationError({k: "cannot be changed" for k in sorted(unknown)})
    current: dict[str, Any] = dict(host=dest.host, port=dest.port, url=dest.url, site_id=dest.site_id,
                                   enabled=dest.enabled, events=dest.events, prior_source=dest.prior_source,
                                   options=dest.options)
    if dest.peer_id is not None and "peer_id" not in changes:
        current["peer"] = session.scalar(select(DicomPeer.name).where(DicomPeer.id == dest.peer_id))
    if "options" in changes and isinstance(changes["options"], dict):
        changes = {**changes, "options": _keep_secrets(dest.options or {}, changes["options"])}
    errors: dict[str, str] = {}
    cols = _validate(session, dest.kind, {**current, **changes}, errors)
    if errors:
        raise DestinationError(errors)
    for key, value in cols.items():
        setattr(dest, key, value)
    audit.record(session, actor=actor, action="interop.destination.update", resource_type="destination",
                 resource_id=dest.name, detail={"changed": sorted(changes)})
    return dest


def _keep_secrets(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """An update that sends back the masked secret keeps the stored one."""
    return {k: (old.get(k, v) if k in SECRET_KEYS and v == MASK else v) for k, v in new.items()}


def delete(session: Session, dest: Destination, *, actor: str) -> None:
    """Remove a destination with no pending work (its delivered and failed items go with it)."""
    pending = session.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.destination_id == dest.id,
                                                                     OutboxItem.state == "pending"))
    if pending:
        raise DestinationBusy(f"{dest.name} has {pending} pending item(s): disable it, or cancel them first")
    session.execute(OutboxItem.__table__.delete().where(OutboxItem.destination_id == dest.id))
    audit.record(session, actor=actor, action="interop.destination.delete", resource_type="destination",
                 resource_id=dest.name, detail={"kind": dest.kind})
    session.delete(dest)


def list_destinations(session: Session, site_ids: frozenset[int] | None = None) -> list[Destination]:
    """Every destination (``site_ids``: only those of these sites; None: all)."""
    rows = list(session.scalars(select(Destination).order_by(Destination.name)))
    return rows if site_ids is None else [d for d in rows if d.site_id is not None and d.site_id in site_ids]


MASK = "********"


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as shown to admins: secrets masked."""
    return {k: (MASK if k in SECRET_KEYS else v) for k, v in (options or {}).items()}


@dataclass(frozen=True)
class Health:
    """A destination's live state for admins (``state``: up, down, unknown, disabled)."""

    name: str
    kind: str
    state: str
    enabled: bool
    last_contact_at: datetime | None
    last_success_at: datetime | None
    last_error: str
    last_error_at: datetime | None
    down_since: datetime | None
    backlog: int
    oldest_pending_at: datetime | None
    oldest_pending_age_seconds: float | None
    failed: int


def health(session: Session, dest: Destination) -> Health:
    count, oldest = outbox.backlog(session, dest.id)
    failed = session.scalar(select(func.count(OutboxItem.id)).where(OutboxItem.destination_id == dest.id,
                                                                    OutboxItem.state == "failed")) or 0
    if not dest.enabled:
        state = "disabled"
    elif dest.down_since is not None:
        state = "down"
    elif dest.last_contact_at is None:
        state = "unknown"
    else:
        state = "up"
    age = max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else None
    return Health(dest.name, dest.kind, state, dest.enabled, dest.last_contact_at, dest.last_success_at,
                  dest.last_error, dest.last_error_at, dest.down_since, count, oldest, age, int(failed))
