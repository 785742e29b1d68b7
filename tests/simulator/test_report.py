"""Metrics on hand-made runs with known answers, and the report and CLI end to end."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from readingroom.simulator import theory
from readingroom.simulator.metrics import compare, erlang_profile, gini, pct, readers_on_shift, summarise, t975
from readingroom.simulator.records import CASE_COLUMNS, RunRecords
from readingroom.simulator.report import write_report
from readingroom.simulator.workload import load_workload

REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "simulator" / "reference-workload.yaml"


def _run(policy: str, tat: np.ndarray, rep: int = 0, busy: tuple[float, float] = (30.0, 30.0),
         ai: np.ndarray | None = None) -> RunRecords:
    n = len(tat)
    cases = {name: np.zeros(n) for name in CASE_COLUMNS}
    cases.update(study=np.arange(n), priority=np.array(["P2"] * n), modality=np.array(["CT"] * n),
                 site=np.array(["S1"] * n), patient_class=np.array(["ED"] * n), exam=np.array(["x"] * n),
                 subspecialty=np.array(["body"] * n), tat=tat.astype(float), sla=np.full(n, 60.0),
                 done=np.ones(n, bool), reader=np.array(["R1"] * n), local_hour=np.zeros(n, int),
                 ai=ai if ai is not None else np.array([""] * n), subspecialty_match=np.ones(n, bool),
                 remote=np.zeros(n, bool))
    readers = {"reader": np.array(["R1", "R2"]), "home": np.array(["S1", "S1"]),
               "on_shift": np.array([60.0, 60.0]), "busy": np.array(busy), "reads": np.array([1, 1])}
    queue = {"time": np.array([0.0]), "utc_hour": np.array([0]), "P1": np.array([0]), "P2": np.array([2]),
             "P3": np.array([0]), "P4": np.array([0])}
    return RunRecords(policy, rep, cases, readers, queue, {"decisions": n, "explained": n, "violations": 0})


def test_summary_of_known_numbers() -> None:
    s = summarise(_run("B2", np.arange(1, 101)))
    assert s["tat.p50"] == 50 and s["tat.p90"] == 90 and s["tat.p99"] == 99 and s["tat.max"] == 100
    assert s["tat.p90.P2"] == 90 and s["tat.modality.CT.p50"] == 50
    assert s["mean.wait.P2"] == 0 and "mean.wait.P1" not in s
    assert s["breach_rate.P2"] == pytest.approx(0.4)  # 61..100 exceed the 60-minute SLA
    assert s["breach_minutes.P2"] == pytest.approx(20.5)  # mean of 1..40
    assert s["utilisation.mean"] == 0.5 and s["utilisation.gini"] == 0 and s["utilisation.cv"] == 0
    assert s["explanation_coverage"] == 1.0 and s["violations"] == 0
    assert gini(np.array([0, 0, 0, 1.0])) == pytest.approx(0.75)
    assert pct(np.array([]), 50) != pct(np.array([]), 50)  # NaN
    assert t975(1) == 12.706 and t975(1000) == 1.96


def test_comparison_intervals_and_cross_policy_figures() -> None:
    tat = np.arange(1, 101, dtype=float)
    ai = np.array(["tp"] * 10 + ["tn"] * 90)
    runs = {"B0": [_run("B0", tat * 3, r) for r in range(2)],
            "B2": [_run("B2", tat, r, ai=ai) for r in range(2)],
            "B3": [_run("B3", np.where(ai == "tp", tat - 5, tat + 1), r, ai=ai) for r in range(2)],
            "B4": [_run("B4", tat / 2, r) for r in range(2)]}
    comparison = compare(runs)
    mean, lo, hi = comparison.cell("tat.p90", "B2")
    assert mean == lo == hi == 90  # identical replications: zero width
    assert comparison.cell("ai_gain", "B3")[0] == pytest.approx(5)
    assert comparison.cell("ai_unflagged_delay", "B3")[0] == pytest.approx(1)
    assert comparison.cell("tat.max.ai_tn", "B3")[0] == 101 and comparison.cell("tat.max.ai_tp", "B3")[0] == 5
    assert comparison.cell("bound_gap", "B2")[0] == pytest.approx((90 - 45) / (270 - 45))
    one = compare({"B2": [_run("B2", tat)]})
    assert math.isnan(one.cell("tat.p90", "B2")[1])
    assert "tat.p90,B2,90.0000" in one.to_csv()
    assert json.loads(comparison.to_json())["metrics"]["violations"]["B0"][0] == 0


def test_erlang_profile_of_the_ideal_pool() -> None:
    # 24 studies a day, one per UTC hour at :00, 8-minute reads, 2 readers all day: Erlang C for
    # lambda = 1/60 per minute, c = 2.
    run = _run("B4", np.full(24, 10.0))
    run.cases["ready"] = np.arange(24) * 60.0 + 1440
    run.cases["read"] = np.full(24, 8.0)
    run.counters.update(measured_from=1440.0, measured_to=2880.0)
    profile = erlang_profile(run, [2] * 24)
    assert profile == pytest.approx([theory.mean_wait(2, 1 / 60, 8.0)] * 24)
    comparison = compare({"B4": [run]}, readers_by_utc_hour=[2] * 24)
    assert comparison.hourly["wait_by_utc_hour"]["Erlang C (B4)"] == pytest.approx(profile)
    workload = load_workload(REFERENCE)
    on_shift = readers_on_shift(workload)
    assert sum(on_shift) == sum((r.shift[1] - r.shift[0]) % 24 or 24 for r in workload.readers)


def test_report_is_self_contained(tmp_path: Path) -> None:
    runs = {"B0": [_run("B0", np.arange(1, 50))], "B3": [_run("B3", np.arange(1, 30))]}
    runs["B3"][0].counters["violations"] = 1
    page = write_report(compare(runs), runs, tmp_path, title="t <x>", meta={"seed": 1})
    html = page.read_text()
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes().startswith(b"\x89PNG")
    assert len(list(tmp_path.glob("*.png"))) == 6
    assert not re.search(r"(src|href)=\"https?://", html) and "<script" not in html
    assert "t &lt;x&gt;" in html and "B0" in html and "violations" in html and 'class="bad"' in html


@pytest.mark.timeout(600)
def test_simulate_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [sys.executable, "-m", "readingroom", "simulate", str(REFERENCE), "--policy", "B0", "--policy", "B3",
            "--policy", "B4", "--days", "1", "--replications", "2", "--seed", "5", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "report.html").exists() and (out / "eventlog-B3.sqlite").exists()
    first = json.loads((out / "comparison.json").read_text())
    assert first["metrics"]["violations"]["B3"][0] == 0
    assert first["metrics"]["explanation_coverage"]["B3"][0] == 1
    again = subprocess.run([*args[:-1], str(tmp_path / "again"), "--no-event-log"], capture_output=True,
                           text=True, timeout=500)
    assert again.returncode == 0
    assert json.loads((tmp_path / "again" / "comparison.json").read_text())["metrics"] == first["metrics"]
    bad = subprocess.run([*args[:5], "--policy", "B9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown policy" in bad.stderr
