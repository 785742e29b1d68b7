"""What the audit hash chain keeps outside the database: its HMAC key and its anchor.

Both live in files (by default under ``<data-dir>/secrets/``) on purpose:
someone who can only reach the database (a DBA, a stolen backup, an SQL
injection) can rewrite audit rows and seals, but without the key cannot
compute the MACs a rewritten chain needs, and without the anchor file cannot
hide that the tail of the chain was cut off.

Several ``serve`` processes on one PostgreSQL database must share the same
key file (mount the same secret on every host); the sealer refuses to extend
a chain that its key did not start (see ``audit_chain``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from readingroom.config import Settings

log = logging.getLogger(__name__)

KEY_BYTES = 32


class AuditSecretError(Exception):
    """The key or anchor file cannot be used; the message says why and what to do."""


def key_path(settings: Settings) -> Path:
    return settings.audit_key_file or settings.data_dir / "secrets" / "audit.key"


def anchor_path(settings: Settings) -> Path:
    return settings.audit_anchor_file or settings.data_dir / "secrets" / "audit.anchor"


def _private_dir(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)


def load_key(settings: Settings, *, create: bool = True) -> bytes:
    """The chain's HMAC key, created (256 random bits, mode 0600) on first use when ``create``.

    The file holds the key hex-encoded on one line so an operator can copy it
    to a second host or a password vault without binary tooling.
    """
    path = key_path(settings)
    if not path.exists():
        if not create:
            raise AuditSecretError(f"audit key file {path} does not exist (it is created by the first seal)")
        _private_dir(path)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it a moment ago: read theirs
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(KEY_BYTES) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            log.warning("created a new audit chain key at %s; back it up with the database", path)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise AuditSecretError(f"cannot read audit key file {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("audit key file %s is accessible to other accounts (mode %o); run chmod 600", path,
                    stat.S_IMODE(mode))
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise AuditSecretError(f"audit key file {path} does not hold a hex-encoded key") from exc
    if len(key) < 16:
        raise AuditSecretError(f"audit key in {path} is too short ({len(key)} bytes, need at least 16)")
    return key


def key_fingerprint(key: bytes) -> str:
    """A short public name of a key (to compare hosts' keys without showing them)."""
    return hashlib.sha256(b"readingroom-audit-key|" + key).hexdigest()[:16]


@dataclass(frozen=True)
class Anchor:
    """The head of the chain as the sealer last wrote it: the chain must reach ``seq`` with this ``mac``."""

    seq: int
    mac: str
    record_id: int
    written_at: str


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    _private_dir(path)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def read_anchor(settings: Settings) -> Anchor | None:
    """The recorded chain head, or None when no anchor was written here yet."""
    path = anchor_path(settings)
    try:
        doc = json.loads(path.read_text())
        return Anchor(seq=int(doc["seq"]), mac=str(doc["mac"]), record_id=int(doc["record_id"]),
                      written_at=str(doc.get("written_at", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditSecretError(f"audit anchor file {path} is unreadable: {exc}") from exc


def advance_anchor(settings: Settings, anchor: Anchor) -> None:
    """Record a new chain head, never moving the anchor backwards.

    Two sealers (a server and ``audit seal``) may finish in either order; the
    file lock and the comparison keep the higher head. The file is replaced
    atomically so a crash leaves the old or the new anchor, never half of one.
    """
    path = anchor_path(settings)
    with _locked(path):
        try:
            current = read_anchor(settings)
        except AuditSecretError:
            current = None  # unreadable: overwrite with a good one
        if current is not None and current.seq >= anchor.seq:
            return
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"seq": anchor.seq, "mac": anchor.mac, "record_id": anchor.record_id,
                       "written_at": anchor.written_at}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
