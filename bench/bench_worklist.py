"""Worklist benchmarks on PostgreSQL: worklist query at 100,000 open cases, claim API under 50 clients.

    python bench/bench_worklist.py [--cases 100000] [--readers 200] [--clients 50]
        [--admin-url postgresql://postgres@127.0.0.1:5432/test]

1. Seeds a fresh database with ``--cases`` open cases, each routed to 5 of
   ``--readers`` readers, and times ``reader_worklist`` for random readers
   (in process: the SQL the API runs).
2. Starts ``readingroom serve`` on that database and has ``--clients``
   threads claim cases through ``POST /api/v1/cases/{id}/claim``, each
   competing for the same cases, and reports latency percentiles and how
   many claims won (must equal the number of distinct cases claimed).
Prints figures; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support import servers

from readingroom.clock import utcnow
from readingroom.config import load_settings
from readingroom.governance.models import ApiToken, User
from readingroom.governance.users import TOKEN_PREFIX, token_hash
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case, CaseCandidate
from readingroom.workflow.worklist import WorklistFilter, reader_worklist


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def seed(rt: Runtime, n_cases: int, n_readers: int) -> tuple[list[int], list[str]]:
    now = utcnow()
    tokens = []
    with rt.db.session() as s:
        users = []
        for i in range(n_readers):
            uid = s.execute(insert(User).values(username=f"reader{i}", role="radiologist", active=True,
                                                created_at=now, full_name="", email="").returning(User.id)).scalar_one()
            secret = f"{TOKEN_PREFIX}bench-{i}-{random.random()}"
            s.execute(insert(ApiToken).values(user_id=uid, name="bench", token_hash=token_hash(secret),
                                              prefix=secret[:10], scopes=[], created_at=now))
            users.append(uid)
            tokens.append(secret)
    rng = random.Random(1)
    prio = [("critical", 1), ("stat", 2), ("urgent", 3), ("routine", 4)]
    batch = 5000
    for start in range(0, n_cases, batch):
        with rt.db.session() as s:
            rows = []
            for i in range(start, min(n_cases, start + batch)):
                p, rank = rng.choice(prio)
                rows.append(dict(accession_number=f"B{i}", state="available", priority=p, priority_rank=rank,
                                 modality=rng.choice(["CT", "MR", "CR", "US"]), created_at=now, updated_at=now,
                                 deadline=now, version=1, flags=[], order_fields={}, escalation_plan=[]))
            ids = s.execute(insert(Case).returning(Case.id), rows).scalars().all()
            s.execute(insert(CaseCandidate), [{"case_id": c, "user_id": u} for c in ids
                                              for u in rng.sample(users, 5)])
        print(f"\rseeded {min(n_cases, start + batch)} cases", end="", flush=True)
    print()
    return users, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--readers", type=int, default=200)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--claims-per-client", type=int, default=40)
    ap.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    import os

    os.environ[servers.TEST_DB_ENV] = args.admin_url
    base = Path("/tmp/rr-bench-worklist")
    base.mkdir(exist_ok=True)
    server = servers.make_server(base, start=False, log_level="WARNING")
    rt = Runtime.open(load_settings(server.data_dir, database_url=server.settings.database_url))
    users, tokens = seed(rt, args.cases, args.readers)
    with rt.db.session() as s:
        s.execute(__import__("sqlalchemy").text("ANALYZE"))
    times = []
    rng = random.Random(2)
    for _ in range(args.queries):
        uid = rng.choice(users)
        t = time.perf_counter()
        with rt.db.read_session() as s:
            rows = reader_worklist(s, uid, WorklistFilter(limit=100))
        times.append((time.perf_counter() - t) * 1000)
    print(f"worklist query, {args.cases} open cases, {args.readers} readers, {len(rows)} rows/page: "
          f"p50 {pct(times, 50):.1f} ms, p99 {pct(times, 99):.1f} ms (target p99 < 50 ms)")

    # The contested cases: every client's reader is eligible for each of them.
    pool = list(range(1, min(args.cases, args.clients * args.claims_per_client // 2) + 1))
    from readingroom.archive.index import insert_for

    with rt.db.session() as s:
        s.execute(insert_for(s, CaseCandidate).on_conflict_do_nothing(),
                  [{"case_id": c, "user_id": users[i % len(users)]} for c in pool for i in range(args.clients)])
    server.start()
    lat: list[float] = []
    wins: Counter[int] = Counter()
    lock = threading.Lock()

    def client(i: int, think: float, cases: list[int]) -> None:
        r = random.Random(i)
        headers = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=60) as c:
            time.sleep(r.random() * think)
            for _ in range(args.claims_per_client):
                case_id = r.choice(cases)
                t = time.perf_counter()
                resp = c.post(f"/api/v1/cases/{case_id}/claim")
                with lock:
                    lat.append((time.perf_counter() - t) * 1000)
                    if resp.status_code == 200:
                        wins[case_id] += 1
                time.sleep(think)

    half = len(pool) // 2
    for label, think, cases in (("readers claiming about once a second", 1.0, pool[:half]),
                                ("closed loop, no think time (stress)", 0.0, pool[half:])):
        lat.clear()
        wins.clear()
        threads = [threading.Thread(target=client, args=(i, think, cases)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        print(f"claim API, {args.clients} concurrent clients, {label}: {len(lat)} requests in {wall:.1f}s "
              f"({len(lat) / wall:.0f}/s): p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, "
              f"mean {statistics.mean(lat):.1f} ms; {len(wins)} cases claimed, "
              f"max wins per case {max(wins.values()) if wins else 0} (must be 1)")
    server.stop()
    rt.close()
    servers.drop_test_database(server.db_name)


if __name__ == "__main__":
    main()
