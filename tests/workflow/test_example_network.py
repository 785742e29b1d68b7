"""The shipped example rules on the reference network of the simulator's workload (25 readers, 5 sites)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from readingroom.workflow import (
    CaseFacts,
    Mode,
    Priority,
    ReaderFacts,
    ReaderLoad,
    Reason,
    SiteFacts,
    compile_rules,
    load_rules,
    route,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routing-rules.yaml"
RULES = compile_rules(load_rules(EXAMPLE.read_text()))

SITES = {
    "H1": SiteFacts("H1", "America/New_York", "PA", "hub"),
    "S2": SiteFacts("S2", "America/New_York", "NJ", "spoke"),
    "S3": SiteFacts("S3", "America/Chicago", "IL", "spoke"),
    "S4": SiteFacts("S4", "America/Chicago", "WI", "spoke"),
    "S5": SiteFacts("S5", "America/Los_Angeles", "CA", "spoke"),
}

# id, home, subspecialties, licences, privileges, shift (UTC unless a zone is given), qualifications
ROSTER: list[tuple[str, str, str, str, str, str, str]] = [
    ("R01", "H1", "neuro", "PA NJ IL", "H1 S2 S3", "12:00-22:00", ""),
    ("R02", "H1", "neuro", "PA NJ", "H1 S2", "13:00-23:00", ""),
    ("R03", "H1", "neuro general", "PA NJ CA", "H1 S2 S5", "18:00-04:00", ""),
    ("R04", "H1", "body", "PA NJ IL WI", "H1 S2 S3 S4", "12:00-22:00", ""),
    ("R05", "H1", "body", "PA NJ CA", "H1 S2 S5", "13:00-23:00", ""),
    ("R06", "H1", "body general", "PA NJ CA", "H1 S2 S5", "17:00-03:00", ""),
    ("R07", "H1", "msk", "PA NJ", "H1 S2", "13:00-22:00", ""),
    ("R08", "H1", "chest cardiac", "PA NJ IL", "H1 S2 S3", "12:00-22:00", ""),
    ("R09", "H1", "breast", "PA NJ", "H1 S2", "13:00-22:00", "MQSA"),
    ("R10", "H1", "nm body", "PA NJ IL", "H1 S2 S3", "13:00-22:00", "NM"),
    ("R11", "H1", "peds general", "PA NJ", "H1 S2", "13:00-22:00", ""),
    ("R12", "H1", "general er", "PA NJ IL WI", "H1 S2 S3 S4", "03:00-13:00", ""),
    ("R13", "H1", "general er", "PA NJ IL WI", "H1 S2 S3 S4", "11:00-21:00", ""),
    ("R14", "S2", "body general", "NJ PA", "S2 H1", "12:00-22:00", ""),
    ("R15", "S2", "general", "NJ PA", "S2 H1", "16:00-02:00", ""),
    ("R16", "S3", "neuro", "IL WI", "S3", "13:00-23:00", ""),
    ("R17", "S3", "body", "IL WI", "S3 S4", "14:00-24:00", ""),
    ("R18", "S3", "msk general", "IL WI PA", "S3 H1", "19:00-05:00", ""),
    ("R19", "S4", "general", "WI IL", "S4 S3", "14:00-24:00", ""),
    ("R20", "S5", "body nm", "CA", "S5", "15:00-01:00", "NM"),
    ("R21", "S5", "breast body", "CA", "S5", "16:00-01:00", "MQSA"),
    ("R22", "S5", "neuro msk", "CA IL", "S5 S3", "20:00-06:00", ""),
    ("R23", "S5", "general er", "CA PA", "S5 H1", "06:00-16:00", ""),
    ("R24", "REMOTE_SYD", "general er neuro", "PA NJ IL WI CA", "H1 S2 S3 S4 S5", "Australia/Sydney 10:00-20:00", ""),
    ("R25", "REMOTE_ZRH", "er neuro", "PA NJ IL WI", "H1 S2 S3 S4", "Europe/Zurich 08:00-18:00", ""),
]


def _reader(row: tuple[str, str, str, str, str, str, str]) -> ReaderFacts:
    name, home, subs, lic, priv, shift, quals = row
    zone, _, hours = shift.rpartition(" ")
    return ReaderFacts(
        name,
        home_site=home,
        timezone=zone or "UTC",
        subspecialties=frozenset(subs.split()),
        qualifications=frozenset(quals.split()),
        licences=dict.fromkeys(lic.split()),
        credentials=dict.fromkeys(priv.split()),
        shifts=(f"daily {hours}",),
        residency_tags=frozenset({"US"}),
    )


READERS = [_reader(row) for row in ROSTER]
BY_NAME = {r.username: r for r in READERS}
MONDAY = datetime(2025, 1, 13, tzinfo=UTC)


def study(site: str, modality: str, at: datetime, **extra: object) -> CaseFacts:
    return CaseFacts(case_id=f"{site}-{modality}", site=site, modality=modality, ready_at=at, **extra)  # type: ignore[arg-type]


def codes(decision: object, name: str) -> set[Reason]:
    return {e.code for e in decision.excluded.get(name, ())}  # type: ignore[attr-defined]


def test_screening_mammography_is_pulled_by_licensed_mqsa_breast_imagers() -> None:
    now = MONDAY + timedelta(hours=17)
    facts = study("H1", "MG", now, description="MG screening bilateral tomo", patient_class="OP")
    decision = route(facts, READERS, SITES, RULES, now)
    assert decision.rule_id == "mammo-screening" and decision.mode is Mode.PULL
    assert decision.eligible == ("R09",) and decision.assignee is None
    assert codes(decision, "R21") == {Reason.NO_LICENCE, Reason.NOT_CREDENTIALED}
    assert {Reason.SUBSPECIALTY, Reason.QUALIFICATION, Reason.NOT_IN_POOL} <= codes(decision, "R01")


def test_ai_flag_raises_a_routine_head_ct_to_critical_and_prefers_neuro() -> None:
    now = MONDAY + timedelta(hours=15)
    facts = study("S2", "CT", now, body_part="HEAD", priority="routine", flags={"AI_ICH"}, patient_class="IP")
    decision = route(facts, READERS, SITES, RULES, now)
    assert decision.priority is Priority.CRITICAL and decision.explanation["priority"]["raised_by"] == ["ai-ich"]
    assert decision.rule_id == "emergency-neuro"
    assert decision.sla_deadline == now + timedelta(minutes=30)
    # On shift at 15:00 UTC in S2's pool (S2 readers + remote): R14 (body) and R25 (Zurich, neuro).
    assert set(decision.eligible) == {"R14", "R25"}
    assert decision.assignee == "R25"
    assert codes(decision, "R15") == {Reason.OFF_SHIFT}


def test_rural_site_at_night_gets_the_hub_night_reader_or_sydney() -> None:
    now = MONDAY + timedelta(days=1, hours=5)  # Tuesday 05:00 UTC = Monday 23:00 in Wisconsin
    facts = study("S4", "CT", now, body_part="ABDOMEN", patient_class="ED")
    loads = {"R12": ReaderLoad(2.6, 1), "R24": ReaderLoad(1.3, 1)}
    decision = route(facts, READERS, SITES, RULES, now, loads)
    assert decision.priority is Priority.STAT and decision.priority_source == "priority rule emergency"
    assert decision.rules_matched == ("night-emergency", "emergency")
    assert set(decision.eligible) == {"R12", "R24"} and decision.assignee == "R24"
    assert codes(decision, "R19") == {Reason.OFF_SHIFT}
    assert Reason.NOT_CREDENTIALED in codes(decision, "R18")


def test_routine_knee_mr_needs_an_msk_reader() -> None:
    now = MONDAY + timedelta(hours=20)
    facts = study("S3", "MR", now, body_part="KNEE", patient_class="OP", priority="routine")
    decision = route(facts, READERS, SITES, RULES, now)
    assert decision.rule_id == "mr-msk" and decision.eligible == ("R18",)
    assert codes(decision, "R16") == {Reason.SUBSPECIALTY}


def test_trial_protocol_gets_two_readers() -> None:
    now = MONDAY + timedelta(hours=15)
    facts = study("H1", "CT", now, body_part="CHEST", priority="routine", order={"protocol_id": "TRIAL-42"})
    decision = route(facts, READERS, SITES, RULES, now)
    assert decision.second_reader and decision.rules_matched == ("trial-double-read", "ct-chest")
    assert decision.second_assignee not in (None, decision.assignee)
    assert decision.assignee == "R08"  # chest is preferred before body


@pytest.mark.parametrize("site", sorted(SITES))
def test_no_licence_or_privilege_violation_around_the_clock(site: str) -> None:
    """The reference's hard constraints hold for every hour, modality and priority at every site."""
    for hour in range(0, 48, 1):
        now = MONDAY + timedelta(hours=hour)
        for modality, part in [("CT", "HEAD"), ("MR", "KNEE"), ("MG", "BREAST"), ("NM", "WHOLEBODY"), ("CR", "CHEST")]:
            for priority in ("stat", "routine"):
                facts = study(site, modality, now - timedelta(minutes=20), body_part=part, priority=priority)
                decision = route(facts, READERS, SITES, RULES, now)
                for name in decision.eligible:
                    r = BY_NAME[name]
                    assert SITES[site].jurisdiction in r.licences and site in r.credentials
                    if modality == "MG":
                        assert "MQSA" in r.qualifications
                    if modality == "NM":
                        assert "NM" in r.qualifications
                assert decision.explanation["summary"]
