"""Simulator speed: simulated days per wall-clock second, per policy, on the reference workload.

The rule-based policies route every study through the production router (several times while it
waits), so their cost is dominated by routing decisions; the figures tell how long a study of a
network takes before it is started. Prints figures; asserts nothing about time.

    .venv/bin/python bench/simulator_bench.py --days 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from readingroom.simulator.arrivals import draw
from readingroom.simulator.engine import Simulation
from readingroom.simulator.policies import make_policy
from readingroom.simulator.workload import load_workload

REFERENCE = Path(__file__).resolve().parents[1] / "examples" / "simulator" / "reference-workload.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, default=REFERENCE)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--policy", action="append", default=None)
    args = parser.parse_args()
    workload = load_workload(args.workload)
    draws = draw(workload, args.seed, 0, args.days)
    print(f"{len(draws.studies)} studies over {args.days} measured days + 1 warm-up day")
    print(f"{'policy':<8} {'wall s':>8} {'sim days/s':>11} {'studies/s':>10} {'decisions':>10} {'decisions/s':>12}")
    for name in args.policy or ["B0", "B1", "B2", "B3", "B4"]:
        start = time.perf_counter()
        run = Simulation(workload, draws, make_policy(name), 0, args.seed).run()
        wall = time.perf_counter() - start
        decisions = run.counters["decisions"]
        print(f"{name:<8} {wall:>8.1f} {(args.days + 1) / wall:>11.2f} {len(draws.studies) / wall:>10.0f} "
              f"{decisions:>10.0f} {decisions / wall:>12.0f}")


if __name__ == "__main__":
    main()
