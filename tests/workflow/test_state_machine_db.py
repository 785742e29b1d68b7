"""Property test: random event sequences on real cases; the log always replays to the state."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from readingroom.workflow.cases import SYSTEM, Actor, case_events, claim, get_case, release, transition
from readingroom.workflow.states import TRANSITIONS, IllegalTransition, NotEligible, next_state, replay
from tests.workflow.conftest import make_case

KINDS = [*sorted(TRANSITIONS), "claim", "release"]


def test_replay_rejects_bad_logs() -> None:
    import pytest

    with pytest.raises(IllegalTransition):
        replay(["claimed"])
    with pytest.raises(IllegalTransition):
        replay(["received", "completed"])
    assert replay(["received", "routed", "claimed", "completed", "addended"]) == "final"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(KINDS), min_size=1, max_size=12))
def test_random_sequences(network, tmp_path_factory, kinds: list[str]) -> None:
    rt = network
    tmp: Path = tmp_path_factory.mktemp("sm")
    case_id = make_case(rt, tmp)
    from readingroom.governance.users import get_user

    with rt.db.read_session() as s:
        ann = Actor("ann", get_user(s, "ann").id)
    for kind in kinds:
        with rt.db.read_session() as s:
            before = get_case(s, case_id).state
        try:
            with rt.db.session() as s:
                if kind == "claim":
                    claim(s, case_id, ann)
                    expected = "claimed"
                elif kind == "release":
                    release(s, case_id, ann)
                    expected = "available"
                else:
                    expected = next_state(before, kind).value
                    values = {"claimed_by": ann.user_id} if kind == "reassigned" else None
                    transition(s, case_id, kind, SYSTEM, values=values)
            legal = True
        except (IllegalTransition, NotEligible):
            legal = False
        with rt.db.read_session() as s:
            after = get_case(s, case_id).state
            log = [e.kind for e in case_events(s, case_id)]
        if legal:
            assert after == expected
        else:
            assert after == before  # a refused event changes nothing
        assert replay(log) == after
