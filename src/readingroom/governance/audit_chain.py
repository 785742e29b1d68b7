"""The tamper-evident audit trail: a keyed hash chain over ``audit_records``.

Audit rows are never updated. A separate table, ``audit_seals``, holds the
chain: the sealer gives each unsealed record the next ``seq`` and stores
``mac = HMAC-SHA256(key, prev_mac | seq | record_id | canonical record)``.
The key and the chain head (the anchor) are files outside the database
(``audit_secrets``), so someone with only database access can neither re-MAC
an edited record nor hide a cut-off tail. Verification reports:

* an edited record or forged seal (the MAC does not match),
* a deleted record (a seal whose record is gone),
* deleted seals (a gap in ``seq``),
* an inserted record (a row older than the grace period that stays unsealed
  although later rows are sealed: the sealer never back-fills history),
* a truncated tail (the chain ends before the anchor, or differs from it),
* a chain started with another key (the genesis seal does not match).

Sealing order, not id order, is chain order. On PostgreSQL ids come from a
sequence when a row is inserted but become visible at commit, so a row can
appear below ids already sealed; the sealer picks those up for as long as the
row is younger than ``audit_seal_grace_seconds``. On SQLite writers are
serialised, ids appear in order, and nothing below the sealed maximum is ever
sealed. What the chain cannot show: rows appended *now* by someone who can
write to the database look like the application's own (the application
writes them the same way). It protects the history, which is what an
investigation relies on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, insert, select
from sqlalchemy.orm import Session

from readingroom.clock import utcnow
from readingroom.governance.audit_secrets import (
    Anchor,
    AuditSecretError,
    advance_anchor,
    key_fingerprint,
    load_key,
    read_anchor,
)
from readingroom.governance.models import AuditRecord, AuditSeal
from readingroom.runtime import Runtime

log = logging.getLogger(__name__)

GENESIS_SEQ = 0
#: The genesis seal names no record (ids start at 1), and sealing never takes ids below 1.
GENESIS_RECORD = 0
#: PostgreSQL advisory lock that makes one sealer at a time extend the chain ("RRAUDIT").
SEAL_LOCK_KEY = 0x5252_4155_4449_54

#: The columns a MAC covers, in the order of ``canonical``.
COLUMNS = (AuditRecord.id, AuditRecord.at, AuditRecord.actor, AuditRecord.source, AuditRecord.action,
           AuditRecord.resource_type, AuditRecord.resource_id, AuditRecord.patient_id, AuditRecord.outcome,
           AuditRecord.detail, AuditRecord.reason, AuditRecord.flagged)


class ChainError(Exception):
    """The chain cannot be extended safely (wrong key, damaged start); the message says why."""


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(row: Any) -> bytes:
    """One record as bytes that are identical whichever database returned it.

    UTC timestamps with microseconds and a ``Z``, JSON with sorted keys and no
    whitespace, booleans as JSON booleans, text as UTF-8: SQLite and
    PostgreSQL return the same values for these columns, and neither the key
    order a JSON column happens to keep nor a driver's datetime flavour can
    change the bytes.
    """
    doc = {
        "id": int(row.id), "at": _timestamp(row.at), "actor": row.actor, "source": row.source,
        "action": row.action, "resource_type": row.resource_type, "resource_id": row.resource_id,
        "patient_id": row.patient_id, "outcome": row.outcome, "detail": row.detail,
        "reason": row.reason, "flagged": bool(row.flagged),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compute_mac(key: bytes, prev_mac: str, seq: int, record_id: int, body: bytes) -> str:
    """The seal of one record; ``|`` cannot occur in the hex MAC or the numbers, so the framing is unambiguous."""
    message = b"|".join((prev_mac.encode("ascii"), str(seq).encode("ascii"), str(record_id).encode("ascii"), body))
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def genesis_mac(key: bytes) -> str:
    """The chain's first link: proves which key started the chain without revealing it."""
    return hmac.new(key, b"readingroom-audit-chain|genesis|v1", hashlib.sha256).hexdigest()


@dataclass
class SealResult:
    sealed: int = 0
    head_seq: int | None = None
    #: False when another process held the sealing lock (nothing was done).
    ran: bool = True


class Sealer:
    """Extends the chain with every record it may seal; one instance per process (it keeps a horizon).

    The horizon is a pure optimisation for PostgreSQL: a record whose id is
    below a record sealed more than the grace period ago was inserted before
    that, so its timestamp is outside the window the sealer looks at anyway;
    remembering that id keeps each run from scanning the whole window.
    """

    def __init__(self, rt: Runtime, batch: int = 2000) -> None:
        self.rt = rt
        self.batch = batch
        self._key: bytes | None = None
        self._genesis_checked = False
        self._history: deque[tuple[float, int]] = deque()
        self._last_error_log = 0.0

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = load_key(self.rt.settings)
        return self._key

    def run(self, *, wait: bool = False) -> SealResult:
        """Seal everything sealable now. ``wait``: block for another sealer instead of skipping the run."""
        result = SealResult()
        while True:
            done = self._seal_batch(wait=wait)
            if done is None:
                result.ran = result.sealed > 0
                return result
            count, head = done
            result.sealed += count
            result.head_seq = head
            if count < self.batch:
                return result

    def run_job(self) -> None:
        """The scheduler's entry: a refusal to seal is logged (at most once a minute), not raised each run."""
        try:
            self.run()
        except (ChainError, AuditSecretError) as exc:
            now = time.monotonic()
            if now - self._last_error_log > 60:
                self._last_error_log = now
                log.error("audit sealing stopped: %s", exc)

    def _horizon(self) -> int:
        limit = time.monotonic() - self.rt.settings.audit_seal_grace_seconds
        horizon = 0
        while self._history and self._history[0][0] <= limit:
            horizon = max(horizon, self._history.popleft()[1])
        if horizon:
            self._history.appendleft((limit, horizon))  # keep the newest qualifying entry
        return horizon

    def _seal_batch(self, *, wait: bool) -> tuple[int, int] | None:
        settings = self.rt.settings
        anchor: Anchor | None = None
        with self.rt.db.session() as s:
            if not _lock(s, wait=wait):
                return None
            head = s.execute(select(AuditSeal.seq, AuditSeal.mac).order_by(AuditSeal.seq.desc()).limit(1)).first()
            if head is None:
                mac = genesis_mac(self.key)
                s.execute(insert(AuditSeal).values(seq=GENESIS_SEQ, record_id=GENESIS_RECORD, mac=mac,
                                                   sealed_at=utcnow()))
                head_seq, prev_mac = GENESIS_SEQ, mac
                anchor = Anchor(GENESIS_SEQ, mac, GENESIS_RECORD, _timestamp(utcnow()) or "")
                self._genesis_checked = True
            else:
                head_seq, prev_mac = head.seq, head.mac
                if not self._genesis_checked:
                    self._check_genesis(s)
            # Without a WHERE so SQLite answers from the index (genesis has record_id 0, below every record).
            top = s.scalar(select(func.max(AuditSeal.record_id))) or 0
            rows = self._candidates(s, top)
            seals: list[dict[str, Any]] = []
            now = utcnow()
            for row in rows:
                head_seq += 1
                prev_mac = compute_mac(self.key, prev_mac, head_seq, row.id, canonical(row))
                seals.append({"seq": head_seq, "record_id": row.id, "mac": prev_mac, "sealed_at": now})
            if seals:
                s.execute(insert(AuditSeal), seals)
                anchor = Anchor(head_seq, prev_mac, seals[-1]["record_id"], _timestamp(now) or "")
        if anchor is not None:
            advance_anchor(settings, anchor)
        if not self.rt.db.is_sqlite:
            self._history.append((time.monotonic(), max([top, *(r.id for r in rows)])))
            self._horizon()  # prunes the history
        return len(rows), head_seq

    def _check_genesis(self, s: Session) -> None:
        stored = s.scalar(select(AuditSeal.mac).where(AuditSeal.seq == GENESIS_SEQ))
        if stored is None:
            raise ChainError("the chain's genesis seal (seq 0) is missing: the seal table was tampered with; "
                             "run 'readingroom audit verify' and restore audit_seals from a backup")
        if not hmac.compare_digest(stored, genesis_mac(self.key)):
            raise ChainError(f"the audit key (fingerprint {key_fingerprint(self.key)}) is not the key that started "
                             "this chain; every process must use the same key file (setting audit_key_file)")
        self._genesis_checked = True

    def _candidates(self, s: Session, top: int) -> Sequence[Any]:
        """Records to seal now, in id order: late commits below ``top`` (PostgreSQL), then everything above."""
        late: Sequence[Any] = []
        if not self.rt.db.is_sqlite and top > 1:
            window = utcnow() - timedelta(seconds=self.rt.settings.audit_seal_grace_seconds)
            sealed = exists().where(AuditSeal.record_id == AuditRecord.id)
            late = s.execute(select(*COLUMNS).where(
                AuditRecord.id > max(self._horizon(), GENESIS_RECORD), AuditRecord.id < top,
                AuditRecord.at >= window, ~sealed).order_by(AuditRecord.id).limit(self.batch)).all()
        room = self.batch - len(late)
        fresh: Sequence[Any] = []
        if room > 0:
            fresh = s.execute(select(*COLUMNS).where(AuditRecord.id > max(top, GENESIS_RECORD))
                              .order_by(AuditRecord.id).limit(room)).all()
        return [*late, *fresh]


def _lock(s: Session, *, wait: bool) -> bool:
    """Take the sealing lock for this transaction (PostgreSQL); SQLite's write lock already serialises."""
    if s.get_bind().dialect.name != "postgresql":
        return True
    if wait:
        s.execute(select(func.pg_advisory_xact_lock(SEAL_LOCK_KEY)))
        return True
    return bool(s.scalar(select(func.pg_try_advisory_xact_lock(SEAL_LOCK_KEY))))


def seal(rt: Runtime, *, wait: bool = True) -> SealResult:
    """Seal once with a fresh sealer (the CLI, tests, shutdown)."""
    return Sealer(rt).run(wait=wait)


# -- verification ---------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One finding of ``verify``.

    ``kind``: edited | deleted | seals_deleted | inserted | truncated | key | genesis.
    """

    kind: str
    message: str
    seq: int | None = None
    record_id: int | None = None


@dataclass
class VerifyReport:
    seals: int = 0
    head_seq: int | None = None
    key_fingerprint: str = ""
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Unsealed records still inside the grace period (normal while the sealer catches up).
    pending: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(rt: Runtime, *, chunk: int = 2000, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check the whole chain, streaming it in chunks of ``chunk`` seals; never changes anything."""
    settings = rt.settings
    report = VerifyReport()
    # Read before the chain: a server sealing meanwhile moves the anchor only to seals this run will still see.
    anchor = read_anchor(settings)
    with rt.db.read_session() as s:
        total = s.scalar(select(func.count()).select_from(AuditSeal).where(AuditSeal.seq > GENESIS_SEQ)) or 0
        genesis = s.scalar(select(AuditSeal.mac).where(AuditSeal.seq == GENESIS_SEQ))
        any_record = s.scalar(select(AuditRecord.id).limit(1))
    if genesis is None and total == 0:
        if any_record is not None:
            report.warnings.append("no record is sealed yet (start a server or run 'readingroom audit seal')")
        _check_unsealed(rt, report, top=0, chunk=chunk)
        _check_anchor(anchor, report, {})
        return report
    key = load_key(settings, create=False)
    report.key_fingerprint = key_fingerprint(key)
    if genesis is None:
        report.problems.append(Problem("genesis", "the genesis seal (seq 0) is missing: seals were deleted", 0))
    elif not hmac.compare_digest(genesis, genesis_mac(key)):
        report.problems.append(Problem("key", f"the chain was not started with this key (fingerprint "
                                              f"{report.key_fingerprint}); check setting audit_key_file", 0))
        return report
    top, anchor_macs = _check_seals(rt, report, key, genesis, total, chunk, progress,
                                    wanted=anchor.seq if anchor else None)
    _check_unsealed(rt, report, top=top, chunk=chunk)
    _check_anchor(anchor, report, anchor_macs)
    return report


def _check_seals(rt: Runtime, report: VerifyReport, key: bytes, genesis: str | None, total: int, chunk: int,
                 progress: Callable[[int, int], None] | None, *, wanted: int | None) -> tuple[int, dict[int, str]]:
    macs: dict[int, str] = {GENESIS_SEQ: genesis} if genesis is not None else {}
    #: The predecessor's stored MAC (None: unknown, after a gap or without genesis): each seal is checked
    #: against the stored one, so one changed record is reported once, not with everything after it.
    prev_seq, prev_mac = GENESIS_SEQ, genesis
    top, done = 0, 0
    while True:
        with rt.db.read_session() as s:
            seals = s.execute(select(AuditSeal.seq, AuditSeal.record_id, AuditSeal.mac)
                              .where(AuditSeal.seq > prev_seq).order_by(AuditSeal.seq).limit(chunk)).all()
            if not seals:
                break
            rows = {r.id: r for r in s.execute(select(*COLUMNS).where(
                AuditRecord.id.in_([seal.record_id for seal in seals])))}
        for seal_row in seals:
            seq, rid = seal_row.seq, seal_row.record_id
            top = max(top, rid)
            if seq == wanted:
                macs[seq] = seal_row.mac
            if seq != prev_seq + 1:
                report.problems.append(Problem(
                    "seals_deleted", f"seals seq {prev_seq + 1}..{seq - 1} are missing (deleted from audit_seals); "
                                     f"seal {seq} cannot be checked against its predecessor", seq, rid))
                prev_mac = None
            row = rows.get(rid)
            if row is None:
                report.problems.append(Problem(
                    "deleted", f"record {rid} (seal seq {seq}) was deleted from audit_records", seq, rid))
            elif prev_mac is not None and not hmac.compare_digest(
                    seal_row.mac, compute_mac(key, prev_mac, seq, rid, canonical(row))):
                report.problems.append(Problem(
                    "edited", f"record {rid} (seal seq {seq}, {_timestamp(row.at)}, {row.actor} {row.action}) "
                              "does not match its seal: the record was changed after sealing or the seal was "
                              "altered", seq, rid))
            prev_seq, prev_mac = seq, seal_row.mac
        done += len(seals)
        report.seals = done
        if progress:
            progress(done, total)
    report.head_seq = prev_seq if (done or genesis is not None) else None
    return top, macs


def _check_unsealed(rt: Runtime, report: VerifyReport, *, top: int, chunk: int) -> None:
    """Unsealed rows: below the sealed maximum and past the grace period they were slipped into history."""
    cutoff = utcnow() - timedelta(seconds=rt.settings.audit_seal_grace_seconds)
    late_ids: list[int] = []
    last: int | None = None
    while True:
        with rt.db.read_session() as s:
            q = select(AuditRecord.id, AuditRecord.at, AuditRecord.actor, AuditRecord.action).where(
                ~exists().where(AuditSeal.record_id == AuditRecord.id, AuditSeal.seq > GENESIS_SEQ))
            if last is not None:
                q = q.where(AuditRecord.id > last)
            rows = s.execute(q.order_by(AuditRecord.id).limit(chunk)).all()
        if not rows:
            break
        for row in rows:
            last = row.id
            if row.at is not None and row.at >= cutoff:
                report.pending += 1
            elif row.id < top or row.id <= GENESIS_RECORD:
                report.problems.append(Problem(
                    "inserted", f"record {row.id} ({_timestamp(row.at)}, {row.actor} {row.action}) is not sealed "
                                "although later records are: it was inserted outside the application",
                    None, row.id))
            else:
                late_ids.append(row.id)
    if late_ids:
        report.warnings.append(
            f"{len(late_ids)} records (ids {late_ids[0]}..{late_ids[-1]}) older than "
            f"{rt.settings.audit_seal_grace_seconds:g} s are not sealed yet: is a server running? "
            "('readingroom audit seal' seals them now)")


def _check_anchor(anchor: Anchor | None, report: VerifyReport, macs: dict[int, str]) -> None:
    if anchor is None:
        if report.head_seq is not None:
            report.warnings.append("no anchor file on this host: a cut-off tail of the chain cannot be detected "
                                   "here (setting audit_anchor_file)")
        return
    head = report.head_seq
    if head is None or head < anchor.seq:
        report.problems.append(Problem(
            "truncated", f"the chain ends at seal seq {head if head is not None else 'none'} but the anchor "
                         f"(written {anchor.written_at}) records seq {anchor.seq}: the newest seals and records "
                         "were deleted", anchor.seq, anchor.record_id))
    elif anchor.seq in macs and not hmac.compare_digest(macs[anchor.seq], anchor.mac):
        report.problems.append(Problem(
            "truncated", f"seal seq {anchor.seq} differs from the anchor written {anchor.written_at}: the chain "
                         "was rewritten from that point", anchor.seq, anchor.record_id))
    elif anchor.seq not in macs:
        report.problems.append(Problem(
            "truncated", f"seal seq {anchor.seq} recorded in the anchor is missing from the chain", anchor.seq))
