"""Peer review and second reads: triggered once by ``report.final`` events, never by the original reader,
anonymous to the reviewed reader."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from readingroom.app import create_app
from readingroom.clock import FrozenClock, set_clock
from readingroom.collab import after_final
from readingroom.collab.consults_models import Consult
from readingroom.collab.peer_review import sampled
from readingroom.collab.peer_review_models import PeerReview
from readingroom.governance import policy
from readingroom.governance.users import create_token, get_user
from readingroom.workflow.cases import Actor, claim, log_event, transition
from readingroom.workflow.models import Case, CaseCandidate, CaseEvent
from tests.workflow.conftest import make_case, network  # noqa: F401  (fixture)


@pytest.fixture()
def clock() -> Iterator[FrozenClock]:
    frozen = FrozenClock(datetime.now(UTC))
    previous = set_clock(frozen)
    yield frozen
    set_clock(previous)
    policy.forget_decisions()


def _finalise(rt: Any, case_id: int, reader: str) -> None:
    """The reader claims and signs the case; the reports module writes exactly this ``report.final`` event."""
    with rt.db.session() as s:
        actor = Actor(reader, get_user(s, reader).id)
        claim(s, case_id, actor)
        transition(s, case_id, "completed", actor)
        log_event(s, case_id, "report.final", actor, "final", "final", {"report_id": None})


def test_sample_share_is_the_configured_rate_and_stable_per_case() -> None:
    picked = [i for i in range(1, 20_001) if sampled(i, 0.05)]
    assert 0.045 < len(picked) / 20_000 < 0.055
    assert picked == [i for i in range(1, 20_001) if sampled(i, 0.05)]
    assert not any(sampled(i, 0.0) for i in range(1000)) and all(sampled(i, 1.0) for i in range(1000))


@pytest.fixture()
def reviewed(network, tmp_path: Path, clock: FrozenClock) -> dict[str, Any]:  # noqa: F811
    """Every final sampled; two HUB cases read by ann (both ann and bob may read HUB cases)."""
    rt = network
    rt.settings.peer_review_rate = 1.0
    cases = [make_case(rt, tmp_path / f"c{i}", PatientID=f"P-PR-{i}") for i in range(2)]
    for case_id in cases:
        _finalise(rt, case_id, "ann")
    with rt.db.session() as s:
        headers = {n: {"Authorization": f"Bearer {create_token(s, get_user(s, n), name='t')[1]}"}
                   for n in ("ann", "bob", "boss")}
    return {"rt": rt, "cases": cases, "h": headers, "c": TestClient(create_app(rt))}


def test_finals_are_sampled_once_never_to_the_original_reader_and_scored_anonymously(reviewed: dict[str, Any],
                                                                                      ) -> None:
    rt, c, h = reviewed["rt"], reviewed["c"], reviewed["h"]
    children = after_final.after_final(rt)
    assert len(children) == 2
    assert after_final.after_final(rt) == []  # the offset moved on
    with rt.db.session() as s:  # replaying the events (a crash before the offset update) changes nothing
        s.execute(update(after_final.ConsumerOffset).values(position=0))
    assert after_final.after_final(rt) == []
    with rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(PeerReview)) == 2
        ann_id = get_user(s, "ann").id
        for child_id in children:
            child = s.get(Case, child_id)
            assert child.kind == "peer_review" and child.parent_case_id in reviewed["cases"]
            offered = set(s.scalars(select(CaseCandidate.user_id).where(CaseCandidate.case_id == child_id)))
            assert ann_id not in offered and child.assignee != ann_id and offered
            why = s.scalar(select(CaseEvent.data).where(CaseEvent.case_id == child_id, CaseEvent.kind == "routed"))
            assert {e["code"] for e in why["excluded"]["ann"]} == {"CONFLICT"}
    # The original reader cannot take or score the review.
    first = children[0]
    assert c.post(f"/api/v1/peer-reviews/{first}/score", headers=h["ann"], json={"score": "1"}).status_code == 404
    # bob reviews: a discrepancy needs a comment.
    r = c.post(f"/api/v1/peer-reviews/{first}/score", headers=h["bob"], json={"score": "2b"})
    assert r.status_code == 422, r.text
    assert c.post(f"/api/v1/peer-reviews/{first}/accept", headers=h["bob"]).status_code == 200
    r = c.post(f"/api/v1/peer-reviews/{first}/score", headers=h["bob"],
               json={"score": "2b", "comment": "Missed 6 mm nodule, right upper lobe."})
    assert r.status_code == 200, r.text
    assert r.json()["reviewer"] == "bob" and r.json()["state"] == "scored"
    # ann sees the review of her work, without the reviewer, in the API and on the case timeline.
    r = c.get("/api/v1/peer-reviews/mine", headers=h["ann"])
    assert r.status_code == 200
    assert r.json() and [x["score"] for x in r.json()] == ["2b"]
    assert "bob" not in r.text and "reviewer" not in r.text
    parent = c.get(f"/api/v1/cases/{r.json()[0]['case_id']}", headers=h["ann"]).json()
    review_events = [e for e in parent["events"] if e["kind"].startswith("peer_review.")]
    assert [e["kind"] for e in review_events] == ["peer_review.requested", "peer_review.completed"]
    assert all(e["actor"] == "peer-review" and "bob" not in str(e["data"]) for e in review_events)
    assert c.get(f"/api/v1/cases/{first}", headers=h["ann"]).status_code in (403, 404)  # the review case itself
    # Administrators see everything, and counts by score; readers may not.
    everything = c.get("/api/v1/peer-reviews", headers=h["boss"]).json()
    assert {(x["reviewed"], x["reviewer"], x["score"]) for x in everything} == {("ann", "bob", "2b"), ("ann", "", "")}
    summary = c.get("/api/v1/peer-reviews/summary", headers=h["boss"]).json()
    assert summary == {"total": 2, "by_score": {"1": 0, "2a": 0, "2b": 1, "3a": 0, "3b": 0, "open": 1,
                                                "cancelled": 0}}
    assert c.get("/api/v1/peer-reviews", headers=h["ann"]).status_code == 403
    assert c.get("/api/v1/peer-reviews/summary", headers=h["bob"]).status_code == 403
    # A scored review cannot be scored again.
    again = c.post(f"/api/v1/peer-reviews/{first}/score", headers=h["bob"], json={"score": "1"})
    assert again.status_code == 403
    with rt.db.read_session() as s:
        assert s.scalar(select(PeerReview.score).where(PeerReview.child_case_id == first)) == "2b"


def test_nothing_is_sampled_at_rate_zero(reviewed: dict[str, Any]) -> None:
    reviewed["rt"].settings.peer_review_rate = 0.0
    assert after_final.after_final(reviewed["rt"]) == []
    with reviewed["rt"].db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(PeerReview)) == 0


def test_second_read_is_created_once_for_cases_that_require_one(network, tmp_path: Path,  # noqa: F811
                                                                clock: FrozenClock) -> None:
    rt = network
    rt.settings.peer_review_rate = 0.0
    needs, plain = (make_case(rt, tmp_path / f"c{i}", PatientID=f"P-SR-{i}") for i in range(2))
    with rt.db.session() as s:
        s.execute(update(Case).where(Case.id == needs).values(second_reader_required=True))
    _finalise(rt, needs, "ann")
    _finalise(rt, plain, "ann")
    made = after_final.after_final(rt)
    assert len(made) == 1
    with rt.db.session() as s:  # the same event again (another process, a replay) makes nothing new
        s.execute(update(after_final.ConsumerOffset).values(position=0))
    assert after_final.after_final(rt) == []
    with rt.db.read_session() as s:
        consult = s.scalars(select(Consult)).one()
        child = s.get(Case, consult.child_case_id)
        assert (consult.kind, consult.parent_case_id, child.kind) == ("second_read", needs, "second_read")
        assert get_user(s, "ann").id not in set(s.scalars(select(CaseCandidate.user_id)
                                                        .where(CaseCandidate.case_id == child.id)))
        kinds = set(s.scalars(select(CaseEvent.kind).where(CaseEvent.case_id == needs)))
    assert "consult.requested" in kinds
    with rt.db.session() as s:
        token = create_token(s, get_user(s, "bob"), name="t")[1]
    r = TestClient(create_app(rt)).post(f"/api/v1/consults/{child.id}/answer",
                                        headers={"Authorization": f"Bearer {token}"},
                                        json={"text": "Concur.", "agrees": True})
    assert r.status_code == 200 and r.json()["agrees"] is True and r.json()["kind"] == "second_read"
