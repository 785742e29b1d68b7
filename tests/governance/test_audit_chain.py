"""The audit hash chain: a clean chain verifies; SQL tampering of every kind is found by ``readingroom audit verify``.

Tampering is done with raw SQL on the test database (SQLite or PostgreSQL),
as someone with database access but without the key would do it, and the
real CLI is run against it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.audit_chain import ChainError, Sealer, canonical, seal, verify
from readingroom.governance.audit_secrets import key_path
from readingroom.governance.models import AuditRecord
from tests.governance.audit_support import cli_env, db_time, run_cli, seals, sql, write_records


def _verify_cli(rt: Any) -> subprocess.CompletedProcess[str]:
    return run_cli(rt, "audit", "verify")


def _sealed_chain(rt: Any, n: int = 8) -> list[int]:
    ids = write_records(rt, n)
    done = run_cli(rt, "audit", "seal")
    assert done.returncode == 0, done.stdout + done.stderr
    return ids


def test_clean_chain_verifies_and_every_record_is_sealed_once(rt: Any) -> None:
    ids = _sealed_chain(rt)
    chain = seals(rt)
    assert [seq for seq, _ in chain] == list(range(len(chain)))  # genesis 0, then 1..n without gaps
    assert sorted(rid for seq, rid in chain if seq > 0) == ids
    proc = _verify_cli(rt)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "audit trail intact" in proc.stdout
    assert f"checked {len(ids)} seals" in proc.stdout
    assert key_path(rt.settings).stat().st_mode & 0o077 == 0  # the key is private to its owner


@pytest.mark.parametrize(("column", "value"), [
    ("actor", "'rad.mallory'"),
    ("outcome", "'failure'"),
    ("detail", "'{\"series\": 3}'"),
    ("reason", "'covering tracks'"),
])
def test_edited_record_is_reported(rt: Any, column: str, value: str) -> None:
    ids = _sealed_chain(rt)
    victim = ids[2]
    sql(rt, f"UPDATE audit_records SET {column} = {value} WHERE id = :id", id=victim)
    proc = _verify_cli(rt)
    assert proc.returncode == 1, proc.stdout
    assert "[edited]" in proc.stdout and f"record {victim} " in proc.stdout
    assert proc.stdout.count("[edited]") == 1  # only the changed record, not everything after it


def test_edited_timestamp_and_flag_are_reported(rt: Any) -> None:
    ids = _sealed_chain(rt)
    sql(rt, "UPDATE audit_records SET at = :at WHERE id = :id", at=db_time(utcnow() - timedelta(days=3)), id=ids[0])
    sql(rt, "UPDATE audit_records SET flagged = :f WHERE id = :id", f=True, id=ids[-1])
    proc = _verify_cli(rt)
    assert proc.returncode == 1
    assert f"record {ids[0]} " in proc.stdout and f"record {ids[-1]} " in proc.stdout
    assert proc.stdout.count("[edited]") == 2


def test_deleted_record_is_reported(rt: Any) -> None:
    ids = _sealed_chain(rt)
    sql(rt, "DELETE FROM audit_records WHERE id = :id", id=ids[3])
    proc = _verify_cli(rt)
    assert proc.returncode == 1
    assert "[deleted]" in proc.stdout and f"record {ids[3]} " in proc.stdout


def _free_id_below_sealed_records(rt: Any) -> int:
    """An id below sealed ones that no row uses.

    PostgreSQL leaves such holes whenever a transaction that wrote an audit
    row rolls back (its sequence value is never reused); here one is made the
    same way on both engines: a row written and removed before any sealing.
    """
    with rt.db.session() as s:
        hole = audit.record(s, actor="placeholder", action="query")
        s.flush()
        hole_id = hole.id
    write_records(rt, 4)
    sql(rt, "DELETE FROM audit_records WHERE id = :id", id=hole_id)
    return hole_id


def test_inserted_record_is_reported_even_after_sealing_runs(rt: Any) -> None:
    hole = _free_id_below_sealed_records(rt)
    assert run_cli(rt, "audit", "seal").returncode == 0
    assert _verify_cli(rt).returncode == 0
    # Someone fabricates a past access, backdated a day, into the hole.
    sql(rt, "INSERT INTO audit_records (id, at, actor, source, action, resource_type, resource_id, patient_id, "
            "outcome, detail, reason, flagged) VALUES (:id, :at, 'rad.scapegoat', '10.9.9.9', 'study.retrieve', "
            "'study', '1.2.3.4', 'P-1', 'success', '{}', '', :f)",
        id=hole, at=db_time(utcnow() - timedelta(days=1)), f=False)
    assert run_cli(rt, "audit", "seal").returncode == 0  # the sealer must not launder it into the chain
    proc = _verify_cli(rt)
    assert proc.returncode == 1
    assert "[inserted]" in proc.stdout and f"record {hole} " in proc.stdout and "rad.scapegoat" in proc.stdout


def test_deleted_and_forged_seals_are_reported(rt: Any) -> None:
    _sealed_chain(rt)
    sql(rt, "DELETE FROM audit_seals WHERE seq = 3")
    sql(rt, "UPDATE audit_seals SET mac = :mac WHERE seq = 6", mac="0" * 64)
    proc = _verify_cli(rt)
    assert proc.returncode == 1
    assert "[seals_deleted] seals seq 3..3 are missing" in proc.stdout
    assert "seal seq 6," in proc.stdout  # the forged MAC itself ...
    assert "seal seq 7," in proc.stdout  # ... and the next link, which no longer follows from it


def test_truncated_tail_is_reported_through_the_anchor(rt: Any) -> None:
    ids = _sealed_chain(rt)
    for rid in ids[-2:]:
        sql(rt, "DELETE FROM audit_seals WHERE record_id = :id", id=rid)
        sql(rt, "DELETE FROM audit_records WHERE id = :id", id=rid)
    proc = _verify_cli(rt)
    assert proc.returncode == 1
    assert "[truncated]" in proc.stdout and "anchor" in proc.stdout


def test_a_chain_started_with_another_key_is_refused(rt: Any) -> None:
    _sealed_chain(rt, 4)
    key_path(rt.settings).write_text("ab" * 32 + "\n")
    proc = _verify_cli(rt)
    assert proc.returncode == 1 and "[key]" in proc.stdout
    write_records(rt, 2)
    with pytest.raises(ChainError, match="not the key that started"):
        seal(rt)
    refused = run_cli(rt, "audit", "seal")
    assert refused.returncode == 1 and "audit_key_file" in refused.stderr


def test_canonical_form_does_not_depend_on_json_key_order_or_engine(rt: Any) -> None:
    with rt.db.session() as s:
        a = audit.record(s, actor="x", action="query", detail={"b": {"y": 1, "x": [True, None, 2.5]}, "a": "é"})
        b = audit.record(s, actor="x", action="query", detail={"a": "é", "b": {"x": [True, None, 2.5], "y": 1}})
        s.flush()
        a_id, b_id = a.id, b.id
    with rt.db.read_session() as s:
        rows = {r.id: r for r in s.execute(select(AuditRecord).where(AuditRecord.id.in_([a_id, b_id]))).scalars()}
    first, second = canonical(rows[a_id]), canonical(rows[b_id])
    detail = b'"detail":{"a":"\xc3\xa9","b":{"x":[true,null,2.5],"y":1}}'
    assert detail in first and detail in second
    assert b'"flagged":false' in first and b'Z"' in first  # UTC with a Z, JSON booleans


def test_scheduler_job_seals_new_records(rt: Any) -> None:
    from readingroom.app import build_scheduler

    write_records(rt, 6)
    job = next(j for j in build_scheduler(rt).jobs if j.name == "audit-seal")
    job.run()
    report = verify(rt)
    assert report.ok and report.seals == 6 and report.pending == 0


def test_a_late_commit_below_sealed_ids_is_sealed_later(rt: Any) -> None:
    """PostgreSQL hands out ids at insert time: a slow transaction's row appears below sealed ones."""
    if rt.db.is_sqlite:
        pytest.skip("SQLite serialises writers, so ids always appear in order")
    slow = rt.db._write()
    late = audit.record(slow, actor="slow.writer", action="query")
    slow.flush()  # id taken, not yet visible
    write_records(rt, 4)
    seal(rt)
    slow.commit()
    slow.close()
    result = Sealer(rt).run()
    assert result.sealed == 1
    assert seals(rt)[-1][1] == late.id
    assert verify(rt).ok


def test_two_processes_sealing_at_once_build_one_chain(rt: Any) -> None:
    """Two ``audit seal`` loops race while records keep arriving; the chain has each record exactly once."""
    script = ("import sys\nfrom readingroom.config import load_settings\nfrom readingroom.runtime import Runtime\n"
              "from readingroom.governance.audit_chain import Sealer\n"
              "rt = Runtime.open(load_settings(), migrate=False)\nsealer = Sealer(rt, batch=7)\n"
              "for _ in range(40):\n    sealer.run(wait=True)\n")
    seal(rt)  # genesis exists before the race, like on a running system
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            audit.record_now(rt.db, actor="busy", action="query")
            time.sleep(0.005)

    thread = threading.Thread(target=writer)
    thread.start()
    procs = [subprocess.Popen([sys.executable, "-c", script], env=cli_env(rt)) for _ in range(2)]
    try:
        assert [p.wait(timeout=240) for p in procs] == [0, 0]
    finally:
        stop.set()
        thread.join()
    seal(rt)
    chain = seals(rt)
    with rt.db.read_session() as s:
        ids = list(s.scalars(select(AuditRecord.id).order_by(AuditRecord.id)))
    assert [seq for seq, _ in chain] == list(range(len(chain)))
    assert sorted(rid for seq, rid in chain if seq > 0) == ids
    assert len(ids) > 40
    proc = _verify_cli(rt)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_during_sealing_raises_no_false_alarm(rt: Any) -> None:
    """Records and seals keep arriving (and the anchor keeps moving) while the chain is being verified."""
    seal(rt)
    stop = threading.Event()
    failures: list[BaseException] = []

    def busy_server() -> None:
        sealer = Sealer(rt, batch=5)
        try:
            while not stop.is_set():
                for _ in range(3):
                    audit.record_now(rt.db, actor="busy", action="query")
                sealer.run()
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    thread = threading.Thread(target=busy_server)
    thread.start()
    reports = []
    deadline = time.monotonic() + 120
    try:
        while (len(reports) < 6 or reports[-1].seals < 60) and time.monotonic() < deadline and not failures:
            reports.append(verify(rt, chunk=4))
    finally:
        stop.set()
        thread.join()
    assert not failures
    assert all(r.ok for r in reports), [p.message for r in reports for p in r.problems]
    assert reports[-1].seals >= 60 and len({r.seals for r in reports}) > 1  # verified a moving chain
