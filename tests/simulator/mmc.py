"""M/M/c workloads for checking the simulator against queueing theory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from readingroom.simulator.workload import Workload, parse_workload


def mmc_workload(readers: int, arrivals_per_day: float, mean_read: float, *, separate: bool) -> Workload:
    """The parsed workload of :func:`mmc_data`."""
    return parse_workload(mmc_data(readers, arrivals_per_day, mean_read, separate=separate))


def mmc_data(readers: int, arrivals_per_day: float, mean_read: float, *, separate: bool) -> dict[str, Any]:
    """Poisson arrivals at a flat rate, exponential reads, no reader effects.

    ``separate``: one site per reader, each with an even share of the arrivals (c M/M/1 queues, read by
    policy B0, site-local); else one site and one pool of ``readers`` (M/M/c, read by the ideal pool B4).
    """
    sites = [f"S{i}" for i in range(readers)] if separate else ["S0"]
    per_site = arrivals_per_day / len(sites)
    data: dict[str, Any] = {
        "benchmark": "mmc",
        "calendar": {"start": "2025-01-13T00:00Z", "days": 1, "weekend_multiplier": {"ED": 1.0}},
        "sites": {code: {"state": "XX", "tz": "UTC", "studies_per_weekday": per_site, "class_mix": {"ED": 1}}
                  for code in sites},
        "arrival_curves_local_pct": {"ED": [1] * 24},
        "modality_mix_by_class": {"ED": {"CT": 1}},
        "priority_mix_by_class": {"ED": {"P4": 1}},
        "exam_types": {"CT": {"any": {"p": 1, "t": [mean_read, 1.0], "tag": "general"}, "wrvu": 1.0}},
        "read_distribution": "exponential",
        "sla_minutes": {"P1": 30, "P2": 60, "P3": 360, "P4": 1440},
        "readers": [{"id": f"R{i}", "home": sites[i] if separate else "S0", "lic": ["XX"],
                     "priv": sites, "shift": [0, 24]} for i in range(readers)],
    }
    return data


def write_mmc(path: Path, readers: int, arrivals_per_day: float, mean_read: float, *, separate: bool) -> Path:
    """The same workload as a YAML file (what ``readingroom simulate`` and the runner take)."""
    path.write_text(yaml.safe_dump(mmc_data(readers, arrivals_per_day, mean_read, separate=separate)))
    return path
