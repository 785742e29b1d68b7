"""Properties of routing over random networks, checked against independent recomputations."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from readingroom.workflow import CaseFacts, Mode, ReaderFacts, ReaderLoad, Reason, Schedule, route
from readingroom.workflow.facts import expiry_timestamp
from tests.workflow.factories import SITES, rules

NAMES = [f"r{i:02d}" for i in range(30)]
JURISDICTIONS = ["US-PA", "US-NJ", "US-CA"]
EXPIRIES: list[date | datetime | None] = [
    None,
    date(2025, 1, 12),
    date(2025, 1, 15),
    datetime(2025, 1, 14, 12, 0, tzinfo=UTC),
    date(2026, 1, 1),
]
SHIFTS = ["daily 00:00-24:00", "Mon-Fri 08:00-18:00", "daily 22:00-06:00", "Sat,Sun 08:00-20:00", "Tue 09:00-11:00"]
ZONES = ["America/New_York", "America/Los_Angeles", "Australia/Sydney", "UTC"]
START = datetime(2025, 1, 13, 0, 0, tzinfo=UTC)

PROPERTY_RULES = rules(
    """
version: 1
name: properties
defaults:
  mode: push
  pools: [local, remote]
  overflow: {after_minutes: 20, pools: [hub]}
  max_assigned_per_reader: 3
pools:
  remote: {home_sites: [REMOTE]}
rules:
  - id: neuro
    match: {body_part: [HEAD]}
    actions: {subspecialty: neuro}
  - id: mammo
    match: {modality: [MG]}
    actions: {subspecialty: breast, qualifications: [MQSA], pools: [all], overflow: null}
  - id: radiographs-at-hub
    match: {modality: [CR]}
    actions: {sites_allowed: [H1, REMOTE], mode: pull}
"""
)


@st.composite
def readers(draw: st.DrawFn) -> list[ReaderFacts]:
    names = draw(st.lists(st.sampled_from(NAMES), max_size=12, unique=True))
    out = []
    for name in names:
        # Half the readers start fully licensed, credentialed and on shift, so that eligible sets are not
        # almost always empty; the draws below still perturb them.
        good = draw(st.booleans())
        licences = draw(st.dictionaries(st.sampled_from(JURISDICTIONS), st.sampled_from(EXPIRIES)))
        credentials = draw(st.dictionaries(st.sampled_from(list(SITES)), st.sampled_from(EXPIRIES)))
        shifts = tuple(draw(st.lists(st.sampled_from(SHIFTS), max_size=2)))
        if good:
            licences = {j: None for j in JURISDICTIONS} | licences
            credentials = {s: None for s in SITES} | credentials
            shifts = ("daily 00:00-24:00",) if draw(st.booleans()) else shifts
        out.append(
            ReaderFacts(
                name,
                home_site=draw(st.sampled_from(["H1", "S2", "S5", "REMOTE", None])),
                timezone=draw(st.sampled_from(ZONES)),
                subspecialties=draw(st.frozensets(st.sampled_from(["neuro", "body", "breast", "general"]))),
                qualifications=draw(st.frozensets(st.sampled_from(["MQSA", "NM"]))),
                licences=licences,
                credentials=credentials,
                shifts=shifts,
                capacity_rvu_per_hour=draw(st.sampled_from([None, 4.0, 10.0])),
                residency_tags=frozenset({"US"}) if good else draw(st.frozensets(st.sampled_from(["US", "EU"]))),
            )
        )
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[CaseFacts, list[ReaderFacts], dict[str, ReaderLoad], datetime]:
    people = draw(readers())
    now = START + timedelta(minutes=draw(st.integers(0, 7 * 24 * 60)))
    loads = {
        r.username: ReaderLoad(
            draw(st.sampled_from([0.0, 0.5, 1.3, 3.0, 9.0])),
            draw(st.integers(0, 3)),
            draw(st.sampled_from([None, now - timedelta(minutes=5), now - timedelta(minutes=50)])),
        )
        for r in people
    }
    facts = CaseFacts(
        case_id="P",
        site=draw(st.sampled_from(list(SITES))),
        modality=draw(st.sampled_from(["CT", "MR", "MG", "CR"])),
        body_part=draw(st.sampled_from(["HEAD", "ABDOMEN", "BREAST"])),
        priority=draw(st.sampled_from(["critical", "stat", "urgent", "routine"])),
        ordering_physician=draw(st.sampled_from(["", *NAMES[:5]])),
        rvu=draw(st.sampled_from([0.2, 1.3, 2.0])),
        ready_at=now - timedelta(minutes=draw(st.integers(0, 60))),
    )
    return facts, people, loads, now


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_routing_properties(scenario: tuple[CaseFacts, list[ReaderFacts], dict[str, ReaderLoad], datetime]) -> None:
    facts, people, loads, now = scenario
    decision = route(facts, people, SITES, PROPERTY_RULES, now, loads)
    site = SITES[facts.site]
    usernames = {r.username for r in people}

    # Every reader is either eligible or excluded with at least one reason, never both.
    assert set(decision.eligible) | set(decision.excluded) == usernames
    assert not set(decision.eligible) & set(decision.excluded)
    assert all(decision.excluded.values())
    assert (decision.exception is None) == bool(decision.eligible)

    # Push assigns an eligible reader with the least outstanding RVU; pull assigns nobody.
    if decision.mode is Mode.PUSH and decision.eligible:
        least = min(loads[u].outstanding_rvu for u in decision.eligible)
        assert decision.assignee == decision.eligible[0]
        assert loads[decision.assignee].outstanding_rvu == least
    else:
        assert decision.assignee is None

    # Each simple constraint agrees with a recomputation from the raw facts.
    ts = now.timestamp()
    for r in people:
        got = {e.code for e in decision.excluded.get(r.username, ())}
        lic = r.licences.get(site.jurisdiction, "missing")
        assert (Reason.NO_LICENCE in got) == (lic == "missing")
        assert (Reason.LICENCE_EXPIRED in got) == (lic != "missing" and ts >= expiry_timestamp(lic))  # type: ignore[arg-type]
        cred = r.credentials.get(site.code, "missing")
        assert (Reason.NOT_CREDENTIALED in got) == (cred == "missing")
        assert (Reason.CREDENTIAL_EXPIRED in got) == (cred != "missing" and ts >= expiry_timestamp(cred))  # type: ignore[arg-type]
        assert (Reason.OFF_SHIFT in got) == (not Schedule(r.timezone, r.shifts).on_shift(now))
        assert (Reason.CONFLICT in got) == (facts.ordering_physician == r.username)
        assert (Reason.RESIDENCY in got) == bool(site.residency_tag and site.residency_tag not in r.residency_tags)
        needs = decision.required_subspecialties
        assert (Reason.SUBSPECIALTY in got) == bool(needs and not needs & r.subspecialties)

    # The decision does not depend on the order the readers were given in.
    again = route(facts, list(reversed(people)), SITES, PROPERTY_RULES, now, loads)
    assert (again.eligible, again.assignee, dict(again.excluded)) == (
        decision.eligible,
        decision.assignee,
        dict(decision.excluded),
    )
    explanation: dict[str, Any] = json.loads(json.dumps(decision.explanation))
    assert explanation["eligible"] == list(decision.eligible)
