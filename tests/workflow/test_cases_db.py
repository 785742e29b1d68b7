"""Cases on the database: intake, routing with explanations, claims, the event log."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from readingroom.workflow import jobs
from readingroom.workflow.cases import Actor, NotEligible, case_events, claim, get_case, release, transition
from readingroom.workflow.models import ExceptionItem
from readingroom.workflow.states import IllegalTransition, replay
from readingroom.workflow.worklist import reader_worklist
from tests.workflow.conftest import make_case


def _uid(rt, name: str) -> int:
    from readingroom.governance.users import get_user

    with rt.db.read_session() as s:
        return get_user(s, name).id


def test_complete_study_becomes_routed_case(network, tmp_path: Path) -> None:
    rt = network
    case_id = make_case(rt, tmp_path)
    with rt.db.read_session() as s:
        case = get_case(s, case_id)
        assert case.state == "available" and case.mode == "pull"
        events = case_events(s, case_id)
        assert [e.kind for e in events] == ["received", "routed"]
        explanation = events[-1].data
        # bob and ann hold a US-NY licence and HUB privileges; cat does not.
        assert sorted(explanation["eligible"]) == ["ann", "bob"]
        reasons = {r["code"] for r in explanation["excluded"]["cat"]}
        assert {"NO_LICENCE", "NOT_CREDENTIALED"} <= reasons
    assert jobs.intake(rt) == []  # idempotent


def test_spoke_case_expired_licence_goes_to_ann_only(network, tmp_path: Path) -> None:
    rt = network
    case_id = make_case(rt, tmp_path, institution="Lakeshore Regional Hospital")
    with rt.db.read_session() as s:
        ev = case_events(s, case_id)[-1].data
        assert ev["eligible"] == ["ann"]
        assert "LICENCE_EXPIRED" in {r["code"] for r in ev["excluded"]["cat"]}
        assert [r[0].id for r in reader_worklist(s, _uid(rt, "ann"))] == [case_id]
        assert reader_worklist(s, _uid(rt, "bob")) == []


def test_unknown_site_goes_to_exception_queue(network, tmp_path: Path) -> None:
    rt = network
    case_id = make_case(rt, tmp_path, institution="Somewhere Else")
    with rt.db.read_session() as s:
        assert get_case(s, case_id).state == "exception"
        items = s.scalars(select(ExceptionItem).where(ExceptionItem.case_id == case_id)).all()
        assert [i.kind for i in items] == ["no_eligible_reader"]


def test_claim_is_exclusive_and_leaves_other_lists(network, tmp_path: Path) -> None:
    rt = network
    case_id = make_case(rt, tmp_path)
    ann, bob = Actor("ann", _uid(rt, "ann")), Actor("bob", _uid(rt, "bob"))
    with rt.db.session() as s:
        claim(s, case_id, ann)
    with rt.db.session() as s, pytest.raises(IllegalTransition):
        claim(s, case_id, bob)
    with rt.db.read_session() as s:
        assert reader_worklist(s, bob.user_id) == []
        assert [r[0].id for r in reader_worklist(s, ann.user_id)] == [case_id]
    with rt.db.session() as s, pytest.raises(NotEligible):
        release(s, case_id, bob)
    with rt.db.session() as s:
        release(s, case_id, ann, reason="break")
    with rt.db.session() as s:
        claim(s, case_id, bob)
        transition(s, case_id, "completed", bob)
    with rt.db.read_session() as s:
        kinds = [e.kind for e in case_events(s, case_id)]
        assert kinds == ["received", "routed", "claimed", "released", "claimed", "completed"]
        assert replay(kinds) == get_case(s, case_id).state == "final"


def test_ineligible_reader_cannot_claim(network, tmp_path: Path) -> None:
    rt = network
    case_id = make_case(rt, tmp_path)
    with rt.db.session() as s, pytest.raises(NotEligible):
        claim(s, case_id, Actor("cat", _uid(rt, "cat")))


def test_claim_expiry_returns_case_to_pool(network, tmp_path: Path) -> None:
    from datetime import timedelta

    from readingroom.clock import utcnow

    rt = network
    case_id = make_case(rt, tmp_path)
    with rt.db.session() as s:
        claim(s, case_id, Actor("ann", _uid(rt, "ann")))
    assert jobs.expire_claims(rt, 30) == 0
    assert jobs.expire_claims(rt, 30, now=utcnow() + timedelta(minutes=31)) == 1
    with rt.db.read_session() as s:
        assert get_case(s, case_id).state == "available"
        assert case_events(s, case_id)[-1].kind == "claim_expired"


def test_order_case_waits_for_its_images(network, tmp_path: Path) -> None:
    from readingroom.governance.sites import site_by_code
    from readingroom.workflow.cases import create_case_for_order
    from readingroom.workflow.enums import Priority

    rt = network
    with rt.db.session() as s:
        order = create_case_for_order(s, accession_number="ORD-77", site_id=site_by_code(s, "HUB").id,
                                      modality="CT", priority=Priority.STAT, ordering_physician="bob",
                                      patient_class="ED")
        order_id = order.id
    case_id = make_case(rt, tmp_path, AccessionNumber="ORD-77")
    assert case_id == order_id
    with rt.db.read_session() as s:
        case = get_case(s, case_id)
        assert case.state == "available" and case.priority == "stat" and case.priority_source == "order"
        ev = case_events(s, case_id)
        assert [e.kind for e in ev] == ["ordered", "images_arrived", "routed"]
        # bob ordered the study: a conflict of interest, so only ann may read it.
        assert ev[-1].data["eligible"] == ["ann"]
        assert "CONFLICT" in {r["code"] for r in ev[-1].data["excluded"]["bob"]}


def test_protocol_mismatch_and_incomplete_study_are_flagged(network, tmp_path: Path) -> None:
    from readingroom.governance.sites import site_by_code
    from readingroom.workflow.cases import create_case_for_order

    rt = network
    with rt.db.session() as s:
        create_case_for_order(s, accession_number="ORD-9", site_id=site_by_code(s, "HUB").id, modality="MR",
                              order_fields={"expected_series": "3", "contrast": "yes"})
    case_id = make_case(rt, tmp_path, AccessionNumber="ORD-9", StudyDescription="CT HEAD WO CONTRAST")
    with rt.db.read_session() as s:
        case = get_case(s, case_id)
        assert {"PROTOCOL_MISMATCH", "INCOMPLETE_STUDY"} <= set(case.flags)
        kinds = sorted(i.kind for i in s.scalars(select(ExceptionItem).where(ExceptionItem.case_id == case_id)))
        assert kinds == ["incomplete_study", "protocol_mismatch"]
        flagged = next(e for e in case_events(s, case_id) if e.kind == "flagged").data["checks"]
        assert "ordered MR, received CT" in flagged[0] and "without" in flagged[0]
        assert "1 of 3 expected series" in flagged[1]


def test_hub_overflow_after_waiting(network, tmp_path: Path) -> None:
    """A spoke case nobody local claims widens to the hub pool after N minutes (an event)."""
    from datetime import timedelta

    from readingroom.clock import FrozenClock, set_clock, utcnow
    from readingroom.workflow.readers import set_reader
    from readingroom.workflow.rulestore import replace_rules

    rt = network
    with rt.db.session() as s:
        replace_rules(s, "version: 3\nname: overflow\ndefaults:\n  mode: pull\n  pools: [local]\n"
                         "  overflow: {after_minutes: 10, pools: [hub], when_pool_empty: false}\n", actor="t")
        # cat becomes a valid local reader at LKS; ann (hub) is licensed for IL too.
        set_reader(s, "cat", home_site="LKS", timezone="America/Chicago", shifts=["Mon-Sun 00:00-23:59"],
                   licences={"US-IL": None}, credentials={"LKS": None})
    clock = FrozenClock(utcnow())
    previous = set_clock(clock)
    try:
        case_id = make_case(rt, tmp_path, institution="Lakeshore Regional Hospital")
        with rt.db.read_session() as s:
            assert case_events(s, case_id)[-1].data["eligible"] == ["cat"]
        clock.advance(timedelta(minutes=11))
        assert jobs.refresh_routing(rt, min_age_seconds=0) == 1
        with rt.db.read_session() as s:
            kinds = [e.kind for e in case_events(s, case_id)]
            assert kinds[-2:] == ["routed", "overflowed"]
            assert sorted(case_events(s, case_id)[-2].data["eligible"]) == ["ann", "cat"]
        assert jobs.refresh_routing(rt, min_age_seconds=0) == 0  # nothing changed: nothing logged
    finally:
        set_clock(previous)
