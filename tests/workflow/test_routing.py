"""The routing matrix: each eligibility rule excludes the right reader with the right reason."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from readingroom.workflow import (
    NO_ELIGIBLE_READER,
    UNKNOWN_SITE,
    EscalationAction,
    Mode,
    Priority,
    ReaderLoad,
    Reason,
    dry_run,
    route,
)
from tests.workflow.factories import BASIC_RULES, MONDAY_10_NY, SITES, case, reader, rules

BASIC = rules(BASIC_RULES)
YESTERDAY = date(2025, 1, 12)
TODAY = date(2025, 1, 13)


def codes(decision: Any, username: str) -> list[Reason]:
    return [e.code for e in decision.excluded.get(username, ())]


# Each row: the one way the candidate differs from a reader who passes every check, the case, and
# the reason the explanation must give (with a fragment of its text).
MATRIX: list[tuple[str, dict[str, Any], dict[str, Any], Reason, str]] = [
    ("no licence", {"licences": {"US-NJ": None}}, {}, Reason.NO_LICENCE, "US-PA"),
    ("licence expired", {"licences": {"US-PA": YESTERDAY}}, {}, Reason.LICENCE_EXPIRED, "2025-01-12"),
    (
        "licence expired an hour ago",
        {"licences": {"US-PA": MONDAY_10_NY - timedelta(hours=1)}},
        {},
        Reason.LICENCE_EXPIRED,
        "US-PA",
    ),
    ("not credentialed", {"credentials": {"S2": None}}, {}, Reason.NOT_CREDENTIALED, "H1"),
    ("credential expired", {"credentials": {"H1": YESTERDAY}}, {}, Reason.CREDENTIAL_EXPIRED, "2025-01-12"),
    ("subspecialty", {"subspecialties": {"body"}}, {"body_part": "HEAD"}, Reason.SUBSPECIALTY, "needs neuro"),
    ("qualification", {"subspecialties": {"breast"}}, {"modality": "MG"}, Reason.QUALIFICATION, "MQSA"),
    ("off shift", {"shifts": ("daily 18:00-06:00",)}, {}, Reason.OFF_SHIFT, "Mon 10:00 America/New_York"),
    (
        "off shift in own zone",
        {"timezone": "Europe/Zurich", "shifts": ("daily 08:00-12:00",)},
        {},
        Reason.OFF_SHIFT,
        "Mon 16:00 Europe/Zurich",
    ),
    ("conflict: ordering physician", {}, {"ordering_physician": "CANDIDATE"}, Reason.CONFLICT, "ordering physician"),
    (
        "conflict: alias",
        {"aliases": {"NPI:1234567890"}},
        {"ordering_physician": "npi:1234567890"},
        Reason.CONFLICT,
        "ordering physician",
    ),
    ("conflict: listed", {}, {"conflicted_readers": {"candidate"}}, Reason.CONFLICT, "conflicted"),
    ("residency", {"residency_tags": {"EU"}}, {"site": "S2"}, Reason.RESIDENCY, "must stay in US"),
]


@pytest.mark.parametrize(
    ("label", "reader_overrides", "case_overrides", "reason", "text"), MATRIX, ids=[row[0] for row in MATRIX]
)
def test_routing_matrix(
    label: str, reader_overrides: dict[str, Any], case_overrides: dict[str, Any], reason: Reason, text: str
) -> None:
    everything = {"subspecialties": {"general", "neuro", "breast"}, "qualifications": {"MQSA"}}
    if reason is Reason.QUALIFICATION:
        reader_overrides = {**reader_overrides, "qualifications": set()}
    control = reader("control", **everything)
    candidate = reader("candidate", **{**everything, **reader_overrides})
    decision = route(case(**case_overrides), [candidate, control], SITES, BASIC, MONDAY_10_NY)
    assert decision.eligible == ("control",), label
    assert codes(decision, "candidate") == [reason]
    stored = decision.explanation["excluded"]["candidate"]
    assert stored[0]["code"] == reason.value and text in stored[0]["detail"]


class TestLicencesAndCredentials:
    def test_licence_valid_through_its_expiry_date(self) -> None:
        decision = route(case(), [reader("r", licences={"US-PA": TODAY})], SITES, BASIC, MONDAY_10_NY)
        assert decision.eligible == ("r",)

    def test_licence_for_the_patients_site_not_the_readers(self) -> None:
        # A hub reader licensed only in PA may not read a California patient.
        pa_only = reader("pa", licences={"US-PA": None})
        decision = route(case(site="S5"), [pa_only], SITES, BASIC, MONDAY_10_NY)
        assert codes(decision, "pa") == [Reason.NO_LICENCE]
        assert "US-CA" in decision.excluded["pa"][0].detail

    def test_site_without_jurisdiction_denies_by_default(self) -> None:
        sites = {**SITES, "X9": type(SITES["H1"])("X9", "UTC", "", "partner")}
        decision = route(case(site="X9"), [reader("r", credentials={"X9": None})], sites, BASIC, MONDAY_10_NY)
        assert codes(decision, "r") == [Reason.NO_LICENCE]
        assert "no jurisdiction" in decision.excluded["r"][0].detail

    def test_every_reason_is_reported_not_just_the_first(self) -> None:
        r = reader("r", licences={"US-PA": YESTERDAY}, credentials={}, shifts=("daily 20:00-22:00",))
        decision = route(case(), [r], SITES, BASIC, MONDAY_10_NY)
        assert codes(decision, "r") == [Reason.LICENCE_EXPIRED, Reason.NOT_CREDENTIALED, Reason.OFF_SHIFT]
        assert decision.exception == NO_ELIGIBLE_READER


class TestShiftsInRouting:
    def test_dst_spring_forward_ends_the_night_shift_at_local_six(self) -> None:
        night = reader("night", shifts=("daily 22:00-06:00",))
        ready = datetime(2025, 3, 9, 9, 0, tzinfo=UTC)
        at_0530_edt = route(case(ready_at=ready), [night], SITES, BASIC, datetime(2025, 3, 9, 9, 30, tzinfo=UTC))
        at_0630_edt = route(case(ready_at=ready), [night], SITES, BASIC, datetime(2025, 3, 9, 10, 30, tzinfo=UTC))
        assert at_0530_edt.eligible == ("night",)
        assert codes(at_0630_edt, "night") == [Reason.OFF_SHIFT]
        assert "Sun 06:30" in at_0630_edt.excluded["night"][0].detail

    def test_dst_fall_back_keeps_the_night_shift_an_hour_longer_in_utc(self) -> None:
        night = reader("night", shifts=("daily 22:00-06:00",))
        now = datetime(2025, 11, 2, 10, 30, tzinfo=UTC)  # 05:30 EST
        assert route(case(ready_at=now), [night], SITES, BASIC, now).eligible == ("night",)

    def test_follow_the_sun_sydney_reads_the_us_night(self) -> None:
        now = datetime(2025, 1, 14, 3, 0, tzinfo=UTC)  # Monday 22:00 in New York, Tuesday 14:00 in Sydney
        day = reader("ny_day", shifts=("Mon-Fri 08:00-18:00",))
        sydney = reader("syd", home_site=None, timezone="Australia/Sydney", shifts=("Mon-Fri 08:00-18:00",))
        decision = route(case(ready_at=now, priority="stat"), [day, sydney], SITES, BASIC, now)
        assert decision.assignee == "syd"
        assert codes(decision, "ny_day") == [Reason.OFF_SHIFT]

    def test_on_call_covers_urgent_priorities_only(self) -> None:
        on_call = reader("oncall", shifts=("daily 18:00-06:00",), on_call=True)
        stat = route(case(priority="stat"), [on_call], SITES, BASIC, MONDAY_10_NY)
        routine = route(case(priority="routine"), [on_call], SITES, BASIC, MONDAY_10_NY)
        assert stat.eligible == ("oncall",) and stat.explanation["on_call"] == ["oncall"]
        assert codes(routine, "oncall") == [Reason.OFF_SHIFT]
        assert "on call covers critical/stat only" in routine.excluded["oncall"][0].detail


class TestCapacity:
    def test_over_capacity_in_rvu_per_hour(self) -> None:
        busy = reader("busy", capacity_rvu_per_hour=10.0)
        decision = route(case(rvu=1.3), [busy], SITES, BASIC, MONDAY_10_NY, {"busy": ReaderLoad(9.5, 3)})
        assert codes(decision, "busy") == [Reason.OVER_CAPACITY]
        assert "9.5 + 1.3 RVU exceeds capacity 10 RVU" in decision.excluded["busy"][0].detail

    def test_an_idle_reader_can_always_take_one_case(self) -> None:
        slow = reader("slow", capacity_rvu_per_hour=1.0)
        decision = route(case(rvu=5.0), [slow], SITES, BASIC, MONDAY_10_NY, {"slow": ReaderLoad(0.0, 0)})
        assert decision.eligible == ("slow",)

    def test_capacity_horizon_scales_the_limit(self) -> None:
        doc = BASIC_RULES.replace("defaults:\n", "defaults:\n  capacity_horizon_hours: 2\n")
        r = reader("r", capacity_rvu_per_hour=10.0)
        decision = route(case(rvu=1.3), [r], SITES, rules(doc), MONDAY_10_NY, {"r": ReaderLoad(9.5, 3)})
        assert decision.eligible == ("r",)

    def test_max_assigned_cases(self) -> None:
        doc = BASIC_RULES.replace("defaults:\n", "defaults:\n  max_assigned_per_reader: 2\n")
        loads = {"full": ReaderLoad(0.5, 2), "free": ReaderLoad(3.0, 1)}
        decision = route(case(), [reader("full"), reader("free")], SITES, rules(doc), MONDAY_10_NY, loads)
        assert decision.assignee == "free"
        assert codes(decision, "full") == [Reason.OVER_CAPACITY]
        assert "holds 2 assigned cases (limit 2)" in decision.excluded["full"][0].detail


POOL_RULES = """
version: 1
name: pools
defaults:
  mode: push
  pools: [local]
  overflow: {after_minutes: 15, pools: [hub]}
pools:
  remote: {readers: [syd]}
  hub_only: {site_kinds: [hub]}
rules:
  - id: no-empty-widening
    match: {modality: [US]}
    actions: {overflow: {after_minutes: 15, pools: [hub], when_pool_empty: false}}
  - id: remote-ok
    match: {modality: [MR]}
    actions: {pools: [local, remote], overflow: null}
  - id: hub-readers-only
    match: {modality: [CR]}
    actions: {sites_allowed: [H1], overflow: null, pools: [all]}
"""


class TestPoolsAndOverflow:
    compiled = rules(POOL_RULES)
    spoke_reader = reader("spoke", home_site="S2")
    hub_reader = reader("hub", home_site="H1")

    def at_spoke(self, waited: float, **overrides: Any) -> Any:
        ready = MONDAY_10_NY - timedelta(minutes=waited)
        facts = case(site="S2", ready_at=ready, **overrides)
        return route(facts, [self.hub_reader, self.spoke_reader], SITES, self.compiled, MONDAY_10_NY)

    def test_local_first(self) -> None:
        decision = self.at_spoke(5)
        assert decision.eligible == ("spoke",) and not decision.overflowed
        assert codes(decision, "hub") == [Reason.NOT_IN_POOL]
        assert "overflow to hub after 15 min; waited 5" in decision.excluded["hub"][0].detail

    def test_widens_to_the_hub_after_n_minutes(self) -> None:
        decision = self.at_spoke(16)
        assert set(decision.eligible) == {"spoke", "hub"} and decision.overflowed
        assert decision.explanation["overflow"]["widened"]
        assert "unclaimed for 16 min" in decision.explanation["overflow"]["why"]

    def test_widens_at_once_when_nobody_local_is_eligible(self) -> None:
        away = reader("spoke", home_site="S2", shifts=("daily 20:00-22:00",))
        facts = case(site="S2", ready_at=MONDAY_10_NY)
        decision = route(facts, [self.hub_reader, away], SITES, self.compiled, MONDAY_10_NY)
        assert decision.assignee == "hub" and decision.overflowed
        assert "nobody eligible in pool local" in decision.explanation["overflow"]["why"]
        assert codes(decision, "spoke") == [Reason.OFF_SHIFT]

    def test_no_immediate_widening_when_the_rule_says_wait(self) -> None:
        away = reader("spoke", home_site="S2", shifts=("daily 20:00-22:00",))
        facts = case(site="S2", modality="US", ready_at=MONDAY_10_NY)
        decision = route(facts, [self.hub_reader, away], SITES, self.compiled, MONDAY_10_NY)
        assert decision.exception == NO_ELIGIBLE_READER and not decision.overflowed
        assert codes(decision, "hub") == [Reason.NOT_IN_POOL]

    def test_escalation_widening_lifts_the_pool_but_not_hard_constraints(self) -> None:
        outsider = reader("s5", home_site="S5")
        unlicensed = reader("nolic", home_site="S5", licences={})
        facts = case(site="S2", ready_at=MONDAY_10_NY, pool_widened=True)
        decision = route(facts, [outsider, unlicensed], SITES, self.compiled, MONDAY_10_NY)
        assert decision.eligible == ("s5",)
        assert codes(decision, "nolic") == [Reason.NO_LICENCE]

    def test_named_pool_and_not_in_pool_reason(self) -> None:
        syd = reader("syd", home_site=None)
        other = reader("other", home_site="S5")
        facts = case(site="S2", modality="MR", ready_at=MONDAY_10_NY - timedelta(hours=2))
        decision = route(facts, [syd, other], SITES, self.compiled, MONDAY_10_NY)
        assert decision.eligible == ("syd",)
        assert codes(decision, "other") == [Reason.NOT_IN_POOL]
        assert decision.excluded["other"][0].detail == "not in pool local, remote"

    def test_sites_allowed(self) -> None:
        decision = route(case(modality="CR"), [self.hub_reader, self.spoke_reader], SITES, self.compiled, MONDAY_10_NY)
        assert decision.eligible == ("hub",)
        assert codes(decision, "spoke") == [Reason.SITE_NOT_ALLOWED]
        assert "home site S2 not among allowed H1" in decision.excluded["spoke"][0].detail


class TestPushAndPull:
    def test_least_outstanding_rvu_wins(self) -> None:
        loads = {"a": ReaderLoad(4.0), "b": ReaderLoad(1.5), "c": ReaderLoad(2.0)}
        decision = route(case(), [reader("a"), reader("b"), reader("c")], SITES, BASIC, MONDAY_10_NY, loads)
        assert decision.mode is Mode.PUSH and decision.assignee == "b"
        assert decision.eligible == ("b", "c", "a")
        assert "least outstanding RVU (1.5)" in decision.explanation["why_assignee"]

    def test_ties_go_to_the_longest_idle(self) -> None:
        early, late = MONDAY_10_NY - timedelta(minutes=30), MONDAY_10_NY - timedelta(minutes=2)
        loads = {"a": ReaderLoad(1.0, 0, late), "b": ReaderLoad(1.0, 0, early), "c": ReaderLoad(1.0, 0, None)}
        decision = route(case(), [reader("a"), reader("b"), reader("c")], SITES, BASIC, MONDAY_10_NY, loads)
        assert decision.eligible == ("b", "a", "c")
        assert "tie broken by longest idle" in decision.explanation["why_assignee"]

    def test_preferred_subspecialty_first_then_load(self) -> None:
        doc = rules(
            "version: 1\nname: t\ndefaults: {mode: push}\nrules:\n"
            "  - {id: body, actions: {prefer_subspecialty: body}}\n"
        )
        loads = {"gen": ReaderLoad(0.0), "body1": ReaderLoad(2.0), "body2": ReaderLoad(1.0)}
        readers = [reader("gen"), reader("body1", subspecialties={"body"}), reader("body2", subspecialties={"body"})]
        decision = route(case(), readers, SITES, doc, MONDAY_10_NY, loads)
        assert decision.eligible == ("body2", "body1", "gen")
        assert decision.explanation["why_assignee"] == (
            "least outstanding RVU (1) among 2 reading body (preferred: body) of 3 eligible"
        )

    def test_pull_lists_everyone_and_assigns_nobody(self) -> None:
        doc = rules("version: 1\nname: t\ndefaults: {mode: pull}\n")
        decision = route(case(), [reader("a"), reader("b")], SITES, doc, MONDAY_10_NY)
        assert decision.assignee is None and set(decision.eligible) == {"a", "b"}
        assert "listed for 2 readers" in decision.explanation["summary"]

    def test_second_reader_is_a_different_reader(self) -> None:
        doc = rules("version: 1\nname: t\ndefaults: {mode: push, second_reader: true}\n")
        loads = {"a": ReaderLoad(2.0), "b": ReaderLoad(1.0)}
        decision = route(case(), [reader("a"), reader("b")], SITES, doc, MONDAY_10_NY, loads)
        assert decision.second_reader and (decision.assignee, decision.second_assignee) == ("b", "a")


SLA_RULES = """
version: 7
name: sla
defaults:
  mode: push
  escalation:
    - {at_percent: 50, action: warn}
    - {at_percent: 80, action: widen_pool, notify: [hub_lead]}
    - {at_percent: 100, action: exception_queue, notify: [site]}
  aging:
    - {priority: routine, after_minutes: 720, becomes: urgent}
priority_rules:
  - {id: ed, match: {patient_class: [ED]}, priority: stat}
rules:
  - {id: ai-ich, match: {flags_any: [AI_ICH]}, actions: {raise_priority: critical}, stop: false}
  - {id: ct, match: {modality: CT}, actions: {sla_minutes: {routine: 2880}}}
"""


class TestSlaPriorityAndExplanation:
    compiled = rules(SLA_RULES)

    def test_sla_deadline_and_ladder(self) -> None:
        ready = MONDAY_10_NY - timedelta(minutes=5)
        decision = route(
            case(priority=None, patient_class="ED", ready_at=ready), [reader("r")], SITES, self.compiled, MONDAY_10_NY
        )
        assert decision.priority is Priority.STAT and decision.priority_source == "priority rule ed"
        assert decision.sla_deadline == ready + timedelta(minutes=60)
        assert [(p.at - ready, p.action) for p in decision.escalation] == [
            (timedelta(minutes=30), EscalationAction.WARN),
            (timedelta(minutes=48), EscalationAction.WIDEN_POOL),
            (timedelta(minutes=60), EscalationAction.EXCEPTION_QUEUE),
        ]
        assert decision.escalation[1].notify == ("hub_lead",)

    def test_rule_overrides_one_priority_of_the_sla(self) -> None:
        ready = MONDAY_10_NY - timedelta(minutes=5)
        decision = route(case(ready_at=ready), [reader("r")], SITES, self.compiled, MONDAY_10_NY)
        assert decision.sla_deadline == ready + timedelta(minutes=2880)

    def test_ai_flag_raises_priority_and_says_so(self) -> None:
        decision = route(case(flags={"AI_ICH"}), [reader("r")], SITES, self.compiled, MONDAY_10_NY)
        assert decision.priority is Priority.CRITICAL
        assert decision.explanation["priority"] == {
            "value": "critical",
            "source": "order",
            "raised_by": ["ai-ich"],
            "sort": "critical",
        }
        assert decision.rules_matched == ("ai-ich", "ct")

    def test_aging_raises_the_sort_key_not_the_deadline(self) -> None:
        ready = MONDAY_10_NY - timedelta(hours=13)
        decision = route(case(ready_at=ready), [reader("r")], SITES, self.compiled, MONDAY_10_NY)
        assert decision.priority is Priority.ROUTINE and decision.sort_priority is Priority.URGENT
        assert decision.sla_deadline == ready + timedelta(minutes=2880)

    def test_explanation_is_json_and_agrees_with_the_decision(self) -> None:
        readers = [reader("ok"), reader("nolic", licences={}), reader("off", shifts=("daily 20:00-21:00",))]
        decision = route(case(), readers, SITES, self.compiled, datetime(2025, 1, 13, 15, 0))  # naive = UTC
        stored = json.loads(json.dumps(decision.explanation))
        assert stored["rules"] == {"name": "sla", "version": 7}
        assert stored["rule"] == "ct" and stored["eligible"] == ["ok"] and stored["assignee"] == "ok"
        assert {k: [r["code"] for r in v] for k, v in stored["excluded"].items()} == {
            "nolic": ["NO_LICENCE"],
            "off": ["OFF_SHIFT"],
        }
        assert stored["excluded_counts"] == {"NO_LICENCE": 1, "OFF_SHIFT": 1}
        assert stored["at"] == "2025-01-13T15:00:00+00:00"
        assert "goes to ok (rule ct, push)" in stored["summary"]

    def test_dry_run_traces_every_rule(self) -> None:
        decision = dry_run(case(modality="MR"), [reader("r")], SITES, self.compiled, MONDAY_10_NY)
        assert decision.explanation["rules_trace"] == [
            {"rule": "ai-ich", "matched": False, "failed": "flags_any"},
            {"rule": "ct", "matched": False, "failed": "modality"},
        ]
        assert decision.rule_id is None
        assert "rules_trace" not in route(case(), [reader("r")], SITES, self.compiled, MONDAY_10_NY).explanation

    def test_unknown_site_goes_to_the_exception_queue(self) -> None:
        decision = route(case(site="ZZ"), [reader("r")], SITES, self.compiled, MONDAY_10_NY)
        assert decision.exception == UNKNOWN_SITE and decision.eligible == ()
        assert "ZZ" in decision.explanation["summary"]
        json.dumps(decision.explanation)
