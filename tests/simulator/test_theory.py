"""The simulator against queueing theory: Erlang C for one pooled queue, M/M/1 for separate queues.

Long runs (about a million studies each) because the mean wait of a queue at 60% load converges slowly:
the statistical error of the estimate is then about 1%, against a 3% tolerance. The runs do not touch a
database, so the PostgreSQL pass of the suite skips them (they already ran in the SQLite pass).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from readingroom.simulator import theory
from readingroom.simulator.runner import run_all
from tests.simulator.mmc import write_mmc

READERS, MEAN_READ, RHO = 5, 8.0, 0.6
ARRIVALS_PER_DAY = RHO * READERS / MEAN_READ * 1440  # 540 a day: lambda = 0.375 / min
REPLICATIONS, DAYS = 10, 185  # 10 x 185 days x 540 = about 1,000,000 studies

pytestmark = pytest.mark.skipif(bool(os.environ.get("READINGROOM_TEST_DATABASE_URL")),
                                reason="database-independent; runs in the SQLite pass")


def test_erlang_c_formulas() -> None:
    # The reference workload's example: 5 readers, 8-minute reads, load 0.5.
    lam = 0.5 * 5 / 8
    assert theory.separate_queues_wait(5, lam, 8) == pytest.approx(8.0)
    assert theory.mean_wait(5, lam, 8) == pytest.approx(0.4, abs=0.03)
    assert theory.erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert theory.erlang_c(2, 1.0) == pytest.approx(1 / 3)  # textbook value
    assert theory.mean_wait(2, 2.0, 1.0) == math.inf  # load 1 per reader: unstable
    assert theory.wait_exceeds(5, lam, 8, 0) == pytest.approx(theory.erlang_c(5, lam * 8))
    assert theory.hourly_erlang_wait([0.0, 60.0], [1, 0], 8)[1] == math.inf


def _mean_wait(path: Path, policy: str) -> float:
    runs = run_all(path, [policy], replications=REPLICATIONS, seed=7, days=DAYS, jobs=2)
    waits = np.concatenate([run.cases["wait"] for run in next(iter(runs.values()))])
    assert len(waits) > 900_000
    return float(waits.mean())


@pytest.mark.timeout(900)
def test_pooled_queue_matches_erlang_c_and_separate_queues_the_pooling_gain(tmp_path: Path) -> None:
    lam = ARRIVALS_PER_DAY / 1440
    pooled = _mean_wait(write_mmc(tmp_path / "pooled.yaml", READERS, ARRIVALS_PER_DAY, MEAN_READ,
                                  separate=False), "B4")
    expected_pooled = theory.mean_wait(READERS, lam, MEAN_READ)
    assert pooled == pytest.approx(expected_pooled, rel=0.03)

    separate = _mean_wait(write_mmc(tmp_path / "separate.yaml", READERS, ARRIVALS_PER_DAY, MEAN_READ,
                                    separate=True), "B0")
    expected_separate = theory.separate_queues_wait(READERS, lam, MEAN_READ)
    assert separate == pytest.approx(expected_separate, rel=0.05)
    # Pooling five readers cuts the wait by the factor the formulas give (about 12.7 at this load).
    assert separate / pooled == pytest.approx(expected_separate / expected_pooled, rel=0.08)
