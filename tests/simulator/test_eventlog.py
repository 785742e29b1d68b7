"""A simulated run, written as a ReadingRoom event log, gives the production analytics the simulator's figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from readingroom.analytics.turnaround import turnaround
from readingroom.db import Database
from readingroom.simulator.arrivals import draw
from readingroom.simulator.engine import Simulation
from readingroom.simulator.eventlog import write_event_log
from readingroom.simulator.policies import make_policy
from readingroom.simulator.workload import load_workload

REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "simulator" / "reference-workload.yaml"


def _nearest_rank(values: np.ndarray, p: int) -> float:
    return float(np.sort(values)[int(np.ceil(p / 100 * len(values))) - 1])


@pytest.mark.timeout(600)
def test_event_log_analytics_match_the_simulator(tmp_path: Path) -> None:
    workload = load_workload(REFERENCE)
    draws = draw(workload, seed=3, replication=0, days=1)
    run = Simulation(workload, draws, make_policy("B2"), 0, 3).run()
    path = write_event_log(run, workload, draws.sim_start, tmp_path / "B2.sqlite")
    db = Database(f"sqlite:///{path}")
    try:
        with db.read_session() as s:
            rows = {r["slice"]: r for r in turnaround(s, "available_to_final", by="priority")}
            claims = turnaround(s, "available_to_claim")[0]
    finally:
        db.dispose()
    done = run.cases["done"]
    assert done.sum() > 500
    assert claims["count"] == int((run.cases["reader"] != "").sum())
    for label, priority in (("P1", "critical"), ("P2", "stat"), ("P3", "urgent"), ("P4", "routine")):
        tat = run.cases["tat"][done & (run.cases["priority"] == label)]
        if len(tat) == 0:
            continue
        row = rows[priority]
        assert row["count"] == len(tat)
        for p in (50, 90, 99):
            assert row[f"p{p}"] == pytest.approx(_nearest_rank(tat, p), abs=0.01), (label, p)
        breaches = int((tat > run.cases["sla"][done & (run.cases["priority"] == label)]).sum())
        assert row["breaches"] == breaches
