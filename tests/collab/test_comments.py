"""Case comments: threads, @mentions (notified only if they may see the case), revisions, tombstones, access."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from readingroom.app import create_app
from readingroom.collab.comments import parse_mentions
from readingroom.collab.comments_models import CaseComment, CaseCommentRevision
from readingroom.governance.models import User
from readingroom.governance.users import create_token
from readingroom.workflow.cases import case_events
from tests.workflow.conftest import make_case, network  # noqa: F401  (fixture)


@pytest.fixture()
def world(network, tmp_path: Path) -> dict[str, Any]:  # noqa: F811
    """A HUB case routed to ann and bob; cat (LKS) has no relationship to it; boss is an admin."""
    rt = network
    case_id = make_case(rt, tmp_path / "case", PatientID="P-COMMENTS")
    other_case = make_case(rt, tmp_path / "other", PatientID="P-OTHER")
    with rt.db.session() as s:
        headers = {u.username: {"Authorization": f"Bearer {create_token(s, u, name='t')[1]}"}
                   for u in s.scalars(select(User))}
    return {"rt": rt, "case": case_id, "other": other_case, "h": headers, "client": TestClient(create_app(rt))}


def _post(w: dict[str, Any], who: str, body: str, parent: int | None = None, case: int | None = None) -> Any:
    return w["client"].post(f"/api/v1/cases/{case or w['case']}/comments", headers=w["h"][who],
                            json={"body": body, "parent_id": parent})


def _count(w: dict[str, Any], model: Any = CaseComment) -> int:
    with w["rt"].db.read_session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_mentions_notify_only_people_who_may_see_the_case(world) -> None:
    r = _post(world, "ann", "@bob please compare with the prior; cc @cat @ghost and me @ann.")
    assert r.status_code == 201, r.text
    mentions = {m["username"]: (m["notified"], m["reason"]) for m in r.json()["mentions"]}
    assert mentions["bob"] == (True, "")
    assert mentions["cat"][0] is False and "may not see this case" in mentions["cat"][1]
    assert mentions["ghost"] == (False, "no such user")
    assert mentions["ann"] == (False, "is the author")
    comment = r.json()["comment"]
    assert comment["mentions"] == ["bob"] and "@cat" in comment["body"]  # kept as text
    with world["rt"].db.read_session() as s:
        added = [e for e in case_events(s, world["case"]) if e.kind == "comment.added"]
    assert len(added) == 1 and added[0].actor == "ann" and added[0].data["comment_id"] == comment["id"]


def test_threads_nest_replies(world) -> None:
    first = _post(world, "ann", "Is there a prior chest CT?").json()["comment"]
    reply = _post(world, "bob", "Yes, 2020.", parent=first["id"]).json()["comment"]
    _post(world, "boss", "Thanks both.", parent=reply["id"])
    _post(world, "bob", "Separate point: dose report missing.")
    threads = world["client"].get(f"/api/v1/cases/{world['case']}/comments", headers=world["h"]["bob"]).json()
    assert [t["body"] for t in threads] == ["Is there a prior chest CT?", "Separate point: dose report missing."]
    assert threads[0]["replies"][0]["body"] == "Yes, 2020."
    assert threads[0]["replies"][0]["replies"][0]["author"] == "boss"
    foreign = _post(world, "ann", "reply to another case's comment", parent=first["id"], case=world["other"])
    assert foreign.status_code == 422 and "is not a comment of case" in foreign.json()["detail"]


def test_a_user_without_access_can_neither_read_nor_write(world) -> None:
    comment = _post(world, "ann", "Findings discussed with Dr Hartmann.").json()["comment"]
    before = (_count(world), _count(world, CaseCommentRevision))
    assert world["client"].get(f"/api/v1/cases/{world['case']}/comments", headers=world["h"]["cat"]).status_code \
        == 403
    assert _post(world, "cat", "let me in").status_code == 403
    assert _post(world, "cat", "reply", parent=comment["id"]).status_code == 403
    cid = comment["id"]
    assert world["client"].put(f"/api/v1/comments/{cid}", headers=world["h"]["cat"],
                               json={"body": "x"}).status_code == 403
    assert world["client"].delete(f"/api/v1/comments/{cid}", headers=world["h"]["cat"]).status_code == 403
    assert world["client"].get(f"/api/v1/comments/{cid}/revisions", headers=world["h"]["cat"]).status_code == 403
    assert _post(world, "ann", "   ").status_code == 422
    assert (_count(world), _count(world, CaseCommentRevision)) == before
    anonymous = world["client"].get(f"/api/v1/cases/{world['case']}/comments")
    assert anonymous.status_code == 401


def test_edits_keep_every_revision(world) -> None:
    comment = _post(world, "ann", "Nodule 6 mm.").json()["comment"]
    url = f"/api/v1/comments/{comment['id']}"
    r = world["client"].put(url, headers=world["h"]["ann"], json={"body": "Nodule 8 mm, @bob agree?", "revision": 1})
    assert r.status_code == 200, r.text
    assert r.json()["comment"]["revision"] == 2 and r.json()["comment"]["edited_at"]
    assert [m["username"] for m in r.json()["mentions"] if m["notified"]] == ["bob"]
    stale = world["client"].put(url, headers=world["h"]["ann"], json={"body": "Nodule 7 mm", "revision": 1})
    assert stale.status_code == 409 and "revision 2" in stale.json()["detail"]
    assert world["client"].put(url, headers=world["h"]["bob"], json={"body": "mine now"}).status_code == 403
    history = world["client"].get(f"{url}/revisions", headers=world["h"]["bob"]).json()
    assert [(h["revision"], h["body"], h["author"]) for h in history] == [
        (1, "Nodule 6 mm.", "ann"), (2, "Nodule 8 mm, @bob agree?", "ann")]
    with world["rt"].db.read_session() as s:
        edited = [e for e in case_events(s, world["case"]) if e.kind == "comment.edited"]
    assert [e.data["revision"] for e in edited] == [2]


def test_deletion_leaves_a_tombstone(world) -> None:
    parent = _post(world, "ann", "Wrong patient? check.").json()["comment"]
    _post(world, "bob", "Checked: right patient.", parent=parent["id"])
    url = f"/api/v1/comments/{parent['id']}"
    assert world["client"].delete(url, headers=world["h"]["bob"]).status_code == 403  # not the author
    r = world["client"].delete(url, headers=world["h"]["ann"])
    assert r.status_code == 200 and r.json()["deleted"] and r.json()["body"] is None
    assert world["client"].delete(url, headers=world["h"]["ann"]).status_code == 409
    assert world["client"].put(url, headers=world["h"]["ann"], json={"body": "undo"}).status_code == 409
    threads = world["client"].get(f"/api/v1/cases/{world['case']}/comments", headers=world["h"]["bob"]).json()
    assert threads[0]["deleted"] and threads[0]["deleted_by"] == "ann" and threads[0]["body"] is None
    assert threads[0]["replies"][0]["body"] == "Checked: right patient."
    assert [h["body"] for h in world["client"].get(f"{url}/revisions", headers=world["h"]["bob"]).json()] == [None]
    assert [h["body"] for h in world["client"].get(f"{url}/revisions", headers=world["h"]["boss"]).json()] == [
        "Wrong patient? check."]


def test_parse_mentions() -> None:
    assert parse_mentions("@a.b, @c-d. mail x@y.org @a.b again") == ["a.b", "c-d"]
