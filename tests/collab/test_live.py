"""Live updates end to end: a real server, real SSE streams, a comment with a mention.

User B (the case's ordering clinician) and user C (a reader with no
relationship to the case) hold GET /api/v1/events open; user A (the reader
assigned to the case) posts a comment mentioning B. B's stream carries the
comment; C's carries nothing about that case. "Nothing" is proven without
waiting for a timeout: C then comments on a case of C's own, and that event
is the first one C's stream delivers after ``ready``.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import update

from readingroom.governance.sites import create_site
from readingroom.governance.users import create_token, create_user
from readingroom.workflow.cases import create_case_for_order
from readingroom.workflow.models import Case
from tests.support.servers import ServerInfo

WAIT = 30.0  # seconds an expected event may take on a loaded machine (never reached when things work)


def _setup(info: ServerInfo) -> dict[str, Any]:
    rt = info.runtime()
    try:
        with rt.db.session() as s:
            site = create_site(s, "LIVE", "Live Test Hospital")
            users = {name: create_user(s, name, password="pw", role=role, site_id=site.id)
                     for name, role in (("reader_a", "radiologist"), ("clin_b", "referring_clinician"),
                                        ("reader_c", "radiologist"))}
            users["clin_b"].physician_name = "Brandt^Berta"
            case = create_case_for_order(s, accession_number="LIVE-1", site_id=site.id, modality="CT",
                                         ordering_physician="Brandt^Berta")
            own_c = create_case_for_order(s, accession_number="LIVE-2", site_id=site.id, modality="CT")
            s.execute(update(Case).where(Case.id == case.id).values(assignee=users["reader_a"].id))
            s.execute(update(Case).where(Case.id == own_c.id).values(assignee=users["reader_c"].id))
            tokens = {name: create_token(s, u, name="live")[1] for name, u in users.items()}
            return {"case": case.id, "own_c": own_c.id, "tokens": tokens}
    finally:
        rt.close()


class Stream:
    """One user's SSE stream read on a thread; parsed events land in a queue."""

    def __init__(self, base_url: str, token: str) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._client = httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=None))
        self._token = token
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        kind, data = "message", ""
        try:
            with self._client.stream("GET", "/api/v1/events",
                                     headers={"Authorization": f"Bearer {self._token}"}) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif not line and data:
                        self.events.put((kind, json.loads(data)))
                        kind, data = "message", ""
        except (httpx.HTTPError, RuntimeError):
            return  # closed by the test

    def next(self, skip: Callable[[str], bool] = lambda kind: kind == "ping") -> tuple[str, dict[str, Any]]:
        while True:
            kind, data = self.events.get(timeout=WAIT)
            if not skip(kind):
                return kind, data

    def close(self) -> None:
        self._client.close()


def test_a_mention_reaches_the_connected_user_and_no_one_else(server_factory) -> None:
    info = server_factory()
    w = _setup(info)
    b = Stream(info.base_url, w["tokens"]["clin_b"])
    c = Stream(info.base_url, w["tokens"]["reader_c"])
    try:
        assert b.next()[0] == "ready" and c.next()[0] == "ready"  # both subscribed before anything happens
        with httpx.Client(base_url=info.base_url, timeout=30) as api:
            r = api.post(f"/api/v1/cases/{w['case']}/comments",
                         headers={"Authorization": f"Bearer {w['tokens']['reader_a']}"},
                         json={"body": "@clin_b critical finding discussed, please call the patient back"})
            assert r.status_code == 201, r.text
            comment_id = r.json()["comment"]["id"]
            assert r.json()["mentions"] == [{"username": "clin_b", "notified": True, "reason": ""}]

            kind, data = b.next()
            assert kind == "comment.added"
            assert data["case_id"] == w["case"] and data["comment_id"] == comment_id
            assert data["author"] == "reader_a" and data["mentioned"] == ["clin_b"]
            assert "body" not in data  # ids and a summary only: the text is fetched through the audited route

            own = api.post(f"/api/v1/cases/{w['own_c']}/comments",
                           headers={"Authorization": f"Bearer {w['tokens']['reader_c']}"},
                           json={"body": "my own case"})
            assert own.status_code == 201, own.text
        kind, data = c.next()
        assert (kind, data["case_id"]) == ("comment.added", w["own_c"])  # the first event C saw is its own
        assert c.events.empty() or all(e[1].get("case_id") != w["case"] for e in list(c.events.queue))
    finally:
        b.close()
        c.close()
