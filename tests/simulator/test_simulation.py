"""The simulator on the reference workload: common random numbers, determinism, rules as policies, no violations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from readingroom.simulator.arrivals import draw
from readingroom.simulator.policies import builtin_document, make_policy
from readingroom.simulator.runner import run_all
from readingroom.simulator.workload import WorkloadError, load_workload

REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "simulator" / "reference-workload.yaml"


@pytest.fixture(scope="module")
def runs() -> dict:
    return run_all(REFERENCE, ["B0", "B1", "B2", "B3", "B4"], replications=1, seed=11, days=1)


def test_the_reference_workload_reads_as_published() -> None:
    w = load_workload(REFERENCE)
    assert len(w.sites) == 5 and len(w.readers) == 25
    assert sum(s.studies_per_weekday for s in w.sites.values()) == 1500
    assert {m.name for m in w.ai_models} == {"ICH", "PE", "iPE", "PTX"}
    d = draw(w, seed=1, replication=0, days=1)  # a Monday plus the warm-up Sunday
    weekday = [s for s in d.studies if s.measured]
    assert 1300 < len(weekday) < 1700  # ~1,500 a weekday with 10% day-to-day noise
    ed = np.mean([s.patient_class == "ED" for s in weekday])
    assert 0.25 < ed < 0.36  # network mix ED 30.5 %


def test_common_random_numbers_and_determinism(runs: dict) -> None:
    ids = {name: r[0].cases["study"] for name, r in runs.items()}
    ready = {name: r[0].cases["ready"] for name, r in runs.items()}
    for name in runs:
        assert np.array_equal(ids[name], ids["B0"]) and np.array_equal(ready[name], ready["B0"])
    again = run_all(REFERENCE, ["B3"], replications=1, seed=11, days=1)["B3"][0]
    assert np.array_equal(again.cases["tat"], runs["B3"][0].cases["tat"])
    assert np.array_equal(again.cases["reader"], runs["B3"][0].cases["reader"])
    other = run_all(REFERENCE, ["B4"], replications=1, seed=12, days=1)["B4"][0]
    assert len(other) != len(runs["B4"][0]) or not np.array_equal(other.cases["ready"], ready["B4"])


def test_no_licence_or_privilege_violation_and_every_decision_explained(runs: dict) -> None:
    for name in ("B0", "B1", "B2", "B3"):
        run = runs[name][0]
        assert run.counters["violations"] == 0, name
        assert run.counters["decisions"] >= len(run)
        assert run.counters["explained"] == run.counters["decisions"], name
        read = run.cases["reader"] != ""
        # the network keeps up with a weekday; site-local reading leaves nights' routine work for the morning
        assert read.mean() > (0.6 if name == "B0" else 0.8), name


def test_the_pooling_bound_and_the_site_local_floor(runs: dict) -> None:
    p90 = {name: float(np.percentile(r[0].cases["tat"], 90)) for name, r in runs.items()}
    assert p90["B4"] < p90["B2"] and p90["B4"] < p90["B0"]
    assert p90["B2"] < p90["B0"]  # sharing work across sites beats site-local reading
    assert runs["B3"][0].counters["escalations"] > 0 and runs["B2"][0].counters["escalations"] == 0


def test_b3_raises_ai_flagged_studies(runs: dict) -> None:
    b2, b3 = runs["B2"][0].cases, runs["B3"][0].cases
    tp = b3["ai"] == "tp"
    assert tp.sum() > 5
    assert float(np.mean(b3["tat"][tp])) < float(np.mean(b2["tat"][tp]))


def test_b2_and_b3_are_rules_documents_and_any_rules_file_is_a_policy(tmp_path: Path) -> None:
    b3, b2 = builtin_document("B3"), builtin_document("B2")
    assert any(r.id.startswith("ai-") for r in b3.rules) and not any(r.id.startswith("ai-") for r in b2.rules)
    assert b3.defaults.escalation and not b2.defaults.escalation and not b2.defaults.aging
    mine = b2.model_dump(mode="json", exclude_none=True)
    mine["name"], mine["defaults"]["mode"] = "everyone-pulls", "pull"
    mine["defaults"]["pools"] = ["all"]
    path = tmp_path / "pull.yaml"
    path.write_text(yaml.safe_dump(mine))
    run = run_all(REFERENCE, [f"pull={path}"], replications=1, seed=11, days=1)["pull"][0]
    assert run.counters["violations"] == 0 and (run.cases["reader"] != "").mean() > 0.8
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("B9")


def test_a_broken_workload_is_refused_with_its_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(REFERENCE.read_text().replace("tz: America/Chicago,     studies_per_weekday: 280",
                                                 "tz: America/Chicago,     studies_per_weekday: -5"))
    with pytest.raises(WorkloadError, match="studies_per_weekday"):
        load_workload(bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(WorkloadError, match="not a workload"):
        load_workload(tmp_path / "list.yaml")
