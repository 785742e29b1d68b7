"""Routing decision latency: 200 readers x 100 rules (issue target: p99 < 2 ms).

Prints p50 / p90 / p99 / max per decision for a synthetic network (5 sites in
3 US time zones plus remote readers, shifts in each reader's own zone, loads,
licences and credentials with expiries) and a 100-rule document whose rules
use every kind of match (regexes, order fields, time windows, ages, flags).
Figures only; nothing here asserts on time (architecture principle 8).

    python bench/bench_routing.py [--readers 200] [--rules 100] [--decisions 5000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

from readingroom.workflow import CaseFacts, ReaderFacts, ReaderLoad, SiteFacts, compile_rules, route, validate_rules
from readingroom.workflow.compiled import CompiledRules

SITES = {
    "H1": SiteFacts("H1", "America/New_York", "PA", "hub"),
    "S2": SiteFacts("S2", "America/New_York", "NJ", "spoke"),
    "S3": SiteFacts("S3", "America/Chicago", "IL", "spoke"),
    "S4": SiteFacts("S4", "America/Chicago", "WI", "spoke"),
    "S5": SiteFacts("S5", "America/Los_Angeles", "CA", "spoke", residency_tag="US"),
}
STATES = ["PA", "NJ", "IL", "WI", "CA"]
SUBS = ["neuro", "body", "msk", "chest", "cardiac", "breast", "nm", "peds", "general", "er"]
MODALITIES = ["CR", "CT", "MR", "US", "MG", "NM", "RF"]
PARTS = ["HEAD", "CHEST", "ABDOMEN", "PELVIS", "KNEE", "SPINE", "BREAST", "SHOULDER"]
ZONES = ["America/New_York", "America/Chicago", "America/Los_Angeles", "Australia/Sydney", "Europe/Zurich"]
START = datetime(2025, 1, 13, tzinfo=UTC)


def make_readers(n: int, rng: random.Random) -> list[ReaderFacts]:
    readers = []
    for i in range(n):
        zone = rng.choice(ZONES)
        home = rng.choice([*SITES, "REMOTE"]) if zone.startswith("America") else "REMOTE"
        start = rng.choice([0, 6, 7, 8, 12, 14, 16, 18, 22])
        expiry = rng.choice([None, None, None, date(2025, 1, 1), date(2026, 6, 30)])
        readers.append(
            ReaderFacts(
                f"reader{i:03d}",
                home_site=home,
                timezone=zone,
                subspecialties=frozenset(rng.sample(SUBS, rng.randint(1, 3))),
                qualifications=frozenset(q for q in ("MQSA", "NM") if rng.random() < 0.15),
                licences={s: expiry for s in rng.sample(STATES, rng.randint(1, 5))},
                credentials={s: None for s in rng.sample(list(SITES), rng.randint(1, 5))},
                shifts=(f"{rng.choice(['daily', 'mon-fri', 'sat,sun'])} {start:02d}:00-{(start + 10) % 24:02d}:00",),
                capacity_rvu_per_hour=rng.choice([None, 8.0, 12.0]),
                on_call=rng.random() < 0.05,
                residency_tags=frozenset({"US"}) if rng.random() < 0.9 else frozenset(),
                aliases=frozenset({f"NPI{i:07d}"}),
            )
        )
    return readers


def make_rules(n: int, rng: random.Random) -> CompiledRules:
    rules: list[dict[str, Any]] = [
        {
            "id": "ai-raise",
            "match": {"flags_any": ["AI_ICH", "AI_PE"]},
            "actions": {"raise_priority": "stat"},
            "stop": False,
        },
    ]
    for i in range(n - 2):
        match: dict[str, Any] = {"modality": rng.sample(MODALITIES, 2)}
        kind = i % 6
        if kind == 0:
            match["description"] = rng.choice(["perfusion|stroke", "angio.*(neck|head)", "^screen", "biopsy"])
        elif kind == 1:
            match["body_part"] = rng.sample(PARTS, 2)
            match["priority"] = ["urgent", "routine"]
        elif kind == 2:
            match["order"] = {"procedure_code": f"^{rng.choice(['CT', 'MR', 'US'])}{rng.randint(100, 999)}"}
        elif kind == 3:
            match["time_of_day"] = {"start": f"{rng.randint(0, 23):02d}:00", "end": f"{rng.randint(0, 23):02d}:30"}
            match["site"] = rng.sample(list(SITES), 2)
        elif kind == 4:
            match["patient_age"] = {"under": rng.choice([2, 12, 18])}
        else:
            match["days"] = rng.choice(["sat,sun", "mon-fri"])
            match["patient_class"] = [rng.choice(["ED", "IP", "OP"])]
        actions: dict[str, Any] = {rng.choice(["subspecialty", "prefer_subspecialty"]): rng.sample(SUBS, 2)}
        if i % 5 == 0:
            actions["overflow"] = {"after_minutes": rng.choice([5, 10, 15]), "pools": ["hub", "remote"]}
        rules.append({"id": f"rule-{i:03d}", "match": match, "actions": actions})
    rules.append({"id": "catch-all", "actions": {"prefer_subspecialty": ["general", "er"]}})
    document = {
        "version": 1,
        "name": "bench",
        "defaults": {
            "mode": "push",
            "pools": ["local", "remote"],
            "overflow": {"after_minutes": 15, "pools": ["hub"]},
            "max_assigned_per_reader": 3,
            "escalation": [{"at_percent": 50, "action": "warn"}, {"at_percent": 100, "action": "exception_queue"}],
        },
        "pools": {"remote": {"home_sites": ["REMOTE"]}},
        "priority_rules": [{"id": "ed", "match": {"patient_class": ["ED"]}, "priority": "stat"}],
        "rules": rules,
    }
    return compile_rules(validate_rules(json.loads(json.dumps(document))))


def make_cases(n: int, readers: list[ReaderFacts], rng: random.Random) -> list[tuple[CaseFacts, datetime]]:
    out = []
    for i in range(n):
        now = START + timedelta(minutes=rng.randint(0, 7 * 24 * 60))
        facts = CaseFacts(
            case_id=str(i),
            site=rng.choice(list(SITES)),
            modality=rng.choice(MODALITIES),
            ready_at=now - timedelta(minutes=rng.randint(0, 40)),
            body_part=rng.choice(PARTS),
            description=rng.choice(["CT head without contrast", "MR knee left", "screening mammogram", "CXR"]),
            priority=rng.choice([None, "stat", "urgent", "routine"]),
            patient_class=rng.choice(["ED", "IP", "OP"]),
            patient_age_years=rng.uniform(0, 95),
            flags=frozenset({"AI_ICH"}) if rng.random() < 0.05 else frozenset(),
            order={"procedure_code": f"CT{rng.randint(100, 999)}"},
            ordering_physician=rng.choice(["", readers[rng.randrange(len(readers))].username]),
            rvu=rng.choice([0.2, 0.7, 1.3, 1.9]),
        )
        out.append((facts, now))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=200)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    readers = make_readers(args.readers, rng)
    compiled = make_rules(args.rules, rng)
    cases = make_cases(args.decisions, readers, rng)
    loads = {r.username: ReaderLoad(rng.choice([0.0, 0.7, 2.6, 5.0]), rng.randint(0, 3), START) for r in readers}

    for facts, now in cases[:500]:  # warm the shift-boundary cache and the merged-actions cache
        route(facts, readers, SITES, compiled, now, loads)
    wall: list[float] = []
    cpu: list[float] = []
    eligible = assigned = 0
    for facts, now in cases:
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        decision = route(facts, readers, SITES, compiled, now, loads)
        t1, c1 = time.perf_counter_ns(), time.thread_time_ns()
        wall.append((t1 - t0) / 1e6)
        cpu.append((c1 - c0) / 1e6)
        eligible += len(decision.eligible)
        assigned += decision.assignee is not None

    def line(label: str, timings: list[float]) -> str:
        timings = sorted(timings)

        def pct(p: float) -> float:
            return timings[min(len(timings) - 1, int(p / 100 * len(timings)))]

        return (
            f"  {label:<11} p50 {pct(50):.3f} ms   p90 {pct(90):.3f} ms   p99 {pct(99):.3f} ms"
            f"   max {timings[-1]:.3f} ms   mean {statistics.fmean(timings):.3f} ms"
        )

    print(f"routing decision: {args.readers} readers x {len(compiled.rules)} rules, {len(wall)} decisions")
    print(line("wall clock", wall))
    print(line("thread CPU", cpu) + "   (excludes time the OS gave to other processes)")
    print(f"  mean eligible readers {eligible / len(wall):.1f}, push-assigned {assigned / len(wall):.0%}")
    print("  target: p99 < 2 ms (issue 3)")


if __name__ == "__main__":
    main()
