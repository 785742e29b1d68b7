"""The figures ``../shared/workload/README.md`` asks for, per run and compared across policies.

Percentiles are nearest-rank (``method="inverted_cdf"``), the definition the
SQL analytics use, so a simulated p90 and a measured one mean the same. Each
metric is computed per replication and then averaged, with a 95% Student-t
interval over the replications; cross-policy figures (the AI gain, the bound
gap) are taken study by study within a replication, which common random
numbers make meaningful.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

from readingroom.simulator.records import PRIORITIES, RunRecords
from readingroom.simulator.workload import Workload

# Student t 0.975 quantiles for 1..30 degrees of freedom (beyond: the normal 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
_GROUPS = ("priority", "modality", "site", "patient_class")


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def pct(values: np.ndarray, p: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    return float(np.percentile(values, p, method="inverted_cdf")) if len(values) else math.nan


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 when everyone is equally busy."""
    v = np.sort(np.asarray(values, dtype=float))
    if len(v) == 0 or v.sum() == 0:
        return 0.0
    n = len(v)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(v) / (n * v.sum()))


def _tat_block(out: dict[str, float], prefix: str, tat: np.ndarray) -> None:
    if len(tat):
        out[f"{prefix}.p50"] = pct(tat, 50)
        out[f"{prefix}.p90"] = pct(tat, 90)
        out[f"{prefix}.p99"] = pct(tat, 99)
        out[f"{prefix}.max"] = float(tat.max())


def summarise(run: RunRecords) -> dict[str, float]:
    """One run's metrics as a flat dict (keys like ``tat.p90.P2``, ``breach_rate.P1``, ``utilisation.cv``)."""
    c = run.cases
    out: dict[str, float] = {"studies": float(len(run)), "unfinished": float((~c["done"]).sum()) if len(run) else 0}
    tat = c["tat"]
    _tat_block(out, "tat", tat)
    for group in _GROUPS:
        for value in np.unique(c[group]):
            _tat_block(out, f"tat.{value}" if group == "priority" else f"tat.{group}.{value}",
                       tat[c[group] == value])
    # "tat.P2.p90" reads oddly; keep the README's order: tat.p90.P2
    for key in [k for k in out if k.startswith("tat.P")]:
        _, prio, stat = key.split(".")
        out[f"tat.{stat}.{prio}"] = out.pop(key)
    for part in ("transfer", "wait", "read", "consult"):
        out[f"mean.{part}"] = float(c[part].mean()) if len(run) else math.nan
        for p in PRIORITIES:  # where each priority's turnaround goes: moving, waiting, reading, consulting
            mask = c["priority"] == p
            if mask.any():
                out[f"mean.{part}.{p}"] = float(c[part][mask].mean())
    for kind in ("tp", "fp", "fn", "tn"):  # starvation shows as a long maximum for unflagged studies
        mask = c["ai"] == kind
        if mask.any():
            out[f"tat.max.ai_{kind}"] = float(tat[mask].max())
    breached = tat > c["sla"]
    out["breach_rate"] = float(breached.mean()) if len(run) else math.nan
    for p in PRIORITIES:
        mask = c["priority"] == p
        if mask.any():
            out[f"breach_rate.{p}"] = float(breached[mask].mean())
            over = (tat - c["sla"])[mask & breached]
            out[f"breach_minutes.{p}"] = float(over.mean()) if len(over) else 0.0
    r = run.readers
    shift = r["on_shift"] > 0
    util = r["busy"][shift] / r["on_shift"][shift]
    out["utilisation.mean"] = float(util.mean()) if len(util) else math.nan
    out["utilisation.cv"] = float(util.std() / util.mean()) if len(util) and util.mean() > 0 else math.nan
    out["utilisation.gini"] = gini(util)
    read = c["reader"] != ""
    out["subspecialty_match"] = float(c["subspecialty_match"][read].mean()) if read.any() else math.nan
    out["remote_share"] = float(c["remote"][read].mean()) if read.any() else math.nan
    for name in ("reroutes", "escalations", "overflows", "violations", "backlog_0700"):
        out[name] = float(run.counters.get(name, 0.0))
    decisions = run.counters.get("decisions", 0.0)
    out["explanation_coverage"] = run.counters.get("explained", 0.0) / decisions if decisions else 1.0
    return out


def _by_study(run: RunRecords) -> dict[int, float]:
    return dict(zip(run.cases["study"].tolist(), run.cases["tat"].tolist(), strict=True))


def _cross(runs: dict[str, list[RunRecords]], rep: int) -> dict[str, dict[str, float]]:
    """Per policy: metrics that compare it with another policy on the same studies."""
    out: dict[str, dict[str, float]] = {}
    if "B2" in runs and "B3" in runs:
        b2, b3 = runs["B2"][rep], runs["B3"][rep]
        tat2 = _by_study(b2)
        ai = b3.cases["ai"]
        diff = np.array([tat2[s] - t for s, t in zip(b3.cases["study"].tolist(), b3.cases["tat"].tolist(),
                                                     strict=True)])
        tp, unflagged = ai == "tp", (ai == "fn") | (ai == "tn")
        out["B3"] = {"ai_gain": float(diff[tp].mean()) if tp.any() else math.nan,
                     "ai_unflagged_delay": float(-diff[unflagged].mean()) if unflagged.any() else math.nan}
    if "B0" in runs and "B4" in runs:
        floor, bound = pct(runs["B0"][rep].cases["tat"], 90), pct(runs["B4"][rep].cases["tat"], 90)
        for name, per_rep in runs.items():
            if name not in ("B0", "B4") and floor != bound:
                gap = (pct(per_rep[rep].cases["tat"], 90) - bound) / (floor - bound)
                out.setdefault(name, {})["bound_gap"] = gap
    return out


@dataclass
class Comparison:
    """Mean and 95% interval of every metric for every policy, plus hour-by-hour profiles."""

    policies: list[str]
    replications: int
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # metric -> policy -> per rep
    hourly: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # profile -> policy -> 24 values

    def cell(self, metric: str, policy: str) -> tuple[float, float, float] | None:
        samples = [v for v in self.values.get(metric, {}).get(policy, []) if not math.isnan(v)]
        if not samples:
            return None
        mean = float(np.mean(samples))
        if len(samples) < 2:
            return mean, math.nan, math.nan
        half = t975(len(samples) - 1) * float(np.std(samples, ddof=1)) / math.sqrt(len(samples))
        return mean, mean - half, mean + half

    def table(self) -> list[tuple[str, dict[str, tuple[float, float, float] | None]]]:
        return [(metric, {p: self.cell(metric, p) for p in self.policies}) for metric in self.values]

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["metric", "policy", "mean", "ci95_low", "ci95_high", "replications"])
        for metric, cells in self.table():
            for policy, cell in cells.items():
                if cell is not None:
                    writer.writerow([metric, policy, *(f"{x:.4f}" for x in cell),
                                     len(self.values[metric][policy])])
        return buffer.getvalue()

    def to_json(self) -> str:
        rows = {metric: {p: (None if c is None else [None if math.isnan(x) else x for x in c])
                         for p, c in cells.items()} for metric, cells in self.table()}
        return json.dumps({"policies": self.policies, "replications": self.replications, "metrics": rows,
                           "hourly": self.hourly}, indent=1)


def _hourly(run: RunRecords) -> dict[str, list[float]]:
    c, q = run.cases, run.queue
    hours = np.arange(24)
    p90 = [pct(c["tat"][c["local_hour"] == h], 90) for h in hours]
    read = c["reader"] != ""
    remote = [float(c["remote"][read & (c["local_hour"] == h)].mean()) if (read & (c["local_hour"] == h)).any()
              else math.nan for h in hours]
    utc_hour = (c["ready"] // 60 % 24).astype(int)
    wait = [float(c["wait"][utc_hour == h].mean()) if (utc_hour == h).any() else math.nan for h in hours]
    depth_total = sum(q[p] for p in PRIORITIES) if len(q.get("time", ())) else np.array([])
    depth = [float(depth_total[q["utc_hour"] == h].mean()) if len(depth_total) and (q["utc_hour"] == h).any()
             else math.nan for h in hours]
    return {"tat_p90_by_local_hour": p90, "remote_share_by_local_hour": remote, "queue_depth_by_utc_hour": depth,
            "wait_by_utc_hour": wait}


def readers_on_shift(workload: Workload) -> list[int]:
    """How many readers are rostered in each UTC hour (shifts are given in UTC hours, [start, end))."""

    def on(shift: tuple[float, float], hour: int) -> bool:
        start, end = shift
        return start <= hour < end if start < end else (hour >= start or hour < end)

    return [sum(1 for r in workload.readers if on(r.shift, h)) for h in range(24)]


def erlang_profile(run: RunRecords, readers_by_utc_hour: list[int]) -> list[float]:
    """B4's theoretical companion: the hour-by-hour Erlang C mean wait for its arrivals and reading times."""
    from readingroom.simulator.theory import hourly_erlang_wait

    c = run.cases
    days = (run.counters.get("measured_to", 0) - run.counters.get("measured_from", 0)) / 1440 or 1.0
    utc_hour = (c["ready"] // 60 % 24).astype(int)
    per_hour = [float((utc_hour == h).sum()) / days for h in range(24)]
    mean_read = float((c["read"] + c["transfer"]).mean()) if len(run) else 1.0
    return hourly_erlang_wait(per_hour, readers_by_utc_hour, mean_read)


def compare(runs: dict[str, list[RunRecords]], readers_by_utc_hour: list[int] | None = None) -> Comparison:
    """Summarise every run and gather the replications of each metric per policy.

    With ``readers_by_utc_hour`` and a B4 run, the hourly profiles gain ``wait_by_utc_hour`` of policy
    "Erlang C (B4)": what queueing theory predicts for the ideal pool hour by hour.
    """
    policies = list(runs)
    reps = min(len(r) for r in runs.values()) if runs else 0
    comparison = Comparison(policies, reps)
    for policy, per_rep in runs.items():
        for run in per_rep[:reps]:
            for metric, value in summarise(run).items():
                comparison.values.setdefault(metric, {}).setdefault(policy, []).append(value)
            for profile, values in _hourly(run).items():
                acc = comparison.hourly.setdefault(profile, {}).setdefault(policy, [0.0] * 24)
                for h, v in enumerate(values):
                    acc[h] += (0.0 if math.isnan(v) else v) / reps
    if readers_by_utc_hour is not None and "B4" in runs and reps:
        profiles = [erlang_profile(run, readers_by_utc_hour) for run in runs["B4"][:reps]]
        comparison.hourly["wait_by_utc_hour"]["Erlang C (B4)"] = [
            float(np.mean([p[h] for p in profiles])) for h in range(24)]
    for rep in range(reps):
        for policy, metrics in _cross(runs, rep).items():
            for metric, value in metrics.items():
                comparison.values.setdefault(metric, {}).setdefault(policy, []).append(value)
    return comparison
