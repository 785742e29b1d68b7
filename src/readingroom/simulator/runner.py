"""Run policies x replications on common random numbers, optionally in several processes.

Each (policy, replication) run is independent and deterministic given the
seed: the studies are drawn from (seed, replication) alone, so the same
seed gives the same results whether runs go one after another or side by
side in worker processes (``jobs``), and every policy of a replication sees
the same studies and base reading times.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from readingroom.simulator.arrivals import draw
from readingroom.simulator.engine import Simulation
from readingroom.simulator.policies import make_policy
from readingroom.simulator.records import RunRecords
from readingroom.simulator.workload import Workload, load_workload


@dataclass(frozen=True)
class RunSpec:
    """What one run needs; picklable so a worker process can rebuild everything from it."""

    workload_path: str
    policy: str
    replication: int
    seed: int
    days: int
    load_scale: float = 1.0


def run_one(spec: RunSpec, workload: Workload | None = None) -> RunRecords:
    """One policy on one replication."""
    workload = workload or load_workload(Path(spec.workload_path))
    draws = draw(workload, spec.seed, spec.replication, spec.days, spec.load_scale)
    return Simulation(workload, draws, make_policy(spec.policy), spec.replication, spec.seed).run()


def run_all(workload_path: Path, policies: Sequence[str], *, replications: int, seed: int, days: int,
            load_scale: float = 1.0, jobs: int = 1,
            progress: Callable[[RunSpec], None] | None = None) -> dict[str, list[RunRecords]]:
    """Every policy on every replication; results per policy name, replications in order."""
    names = {spec: make_policy(spec).name for spec in policies}  # fails fast on an unknown policy
    specs = [RunSpec(str(workload_path), p, r, seed, days, load_scale) for r in range(replications) for p in policies]
    results: dict[RunSpec, RunRecords] = {}
    if jobs <= 1:
        workload = load_workload(workload_path)
        for spec in specs:
            results[spec] = run_one(spec, workload)
            if progress:
                progress(spec)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(run_one, spec): spec for spec in specs}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if progress:
                    progress(futures[future])
    out: dict[str, list[RunRecords]] = {names[p]: [] for p in policies}
    for spec in specs:
        out[names[spec.policy]].append(results[spec])
    return out
