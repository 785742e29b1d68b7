"""``GET /api/v1/audit``: who may search, every filter, cursor paging, readable errors, the search audited."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from readingroom.app import create_app
from readingroom.clock import utcnow
from readingroom.governance import audit
from readingroom.governance.audit_chain import seal
from readingroom.governance.models import AuditRecord
from readingroom.governance.users import create_token, create_user


@pytest.fixture()
def api(rt: Any) -> tuple[TestClient, dict[str, dict[str, str]]]:
    headers: dict[str, dict[str, str]] = {}
    with rt.db.session() as s:
        for name, role in (("audra", "auditor"), ("root", "admin"), ("rad.chen", "radiologist")):
            user = create_user(s, name, password="pw-" + name, role=role)
            headers[name] = {"Authorization": f"Bearer {create_token(s, user)[1]}"}
        for i in range(6):
            audit.record(s, actor="rad.chen", source="10.0.0.1", action="study.retrieve", resource_type="study",
                         resource_id=f"1.2.3.{i}", patient_id="P-1" if i % 2 else "P-2")
        audit.record(s, actor="rad.osei", action="study.metadata", resource_type="study", resource_id="1.2.3.0",
                     patient_id="P-2")
        audit.record(s, actor="CTSCANNER", action="association.reject", outcome="failure", reason="unknown AE")
        audit.record(s, actor="rad.osei", action="access.break_glass", resource_type="study", resource_id="1.2.9",
                     patient_id="P-3", flagged=True, reason="unconscious patient in the emergency department")
    return TestClient(create_app(rt)), headers


def _ids(client: TestClient, headers: dict[str, str], **params: Any) -> list[int]:
    response = client.get("/api/v1/audit", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def test_only_auditors_and_admins_search(api: Any) -> None:
    client, h = api
    assert client.get("/api/v1/audit").status_code == 401
    assert client.get("/api/v1/audit", headers=h["rad.chen"]).status_code == 403
    assert client.get("/api/v1/audit", headers=h["root"]).status_code == 200
    assert client.get("/api/v1/audit", headers=h["audra"]).status_code == 200


def test_filters(api: Any, rt: Any) -> None:
    client, h = api
    a = h["audra"]
    with rt.db.read_session() as s:
        rows = {r.id: r for r in s.scalars(select(AuditRecord))}

    def expect(**params: Any) -> list[int]:
        found = _ids(client, a, **params)
        assert found == sorted(found, reverse=True)  # newest first
        return found

    assert {rows[i].actor for i in expect(actor="rad.osei")} == {"rad.osei"}
    assert len(expect(actor="rad.chen")) == 6
    assert {rows[i].action for i in expect(action="study.*")} == {"study.retrieve", "study.metadata"}
    assert len(expect(action="study.retrieve")) == 6
    assert len(expect(action="study.%")) == 0  # a LIKE wildcard is matched literally
    assert {rows[i].patient_id for i in expect(patient_id="P-2")} == {"P-2"} and len(expect(patient_id="P-2")) == 4
    assert len(expect(resource_type="study", resource_id="1.2.3.0")) == 2
    assert [rows[i].action for i in expect(outcome="failure")] == ["association.reject"]
    flagged = expect(flagged="true")
    assert [rows[i].action for i in flagged] == ["access.break_glass"]
    assert rows[flagged[0]].reason.startswith("unconscious")
    assert len(expect(flagged="false", actor="rad.osei")) == 1
    now = utcnow()
    assert len(expect(since=(now - timedelta(hours=1)).isoformat(), actor="rad.chen")) == 6
    assert expect(until=(now - timedelta(hours=1)).isoformat(), actor="rad.chen") == []


def test_cursor_pages_through_everything_once(api: Any) -> None:
    client, h = api
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, "actor": "rad.chen"}
        if cursor:
            params["cursor"] = cursor
        body = client.get("/api/v1/audit", params=params, headers=h["audra"]).json()
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 2 and len(seen) == 6 and seen == sorted(set(seen), reverse=True)


def test_items_show_their_seal(api: Any, rt: Any) -> None:
    client, h = api
    before = client.get("/api/v1/audit", params={"actor": "CTSCANNER"}, headers=h["audra"]).json()["items"][0]
    assert before["seal"] is None and before["reason"] == "unknown AE" and before["outcome"] == "failure"
    seal(rt)
    after = client.get("/api/v1/audit", params={"actor": "CTSCANNER"}, headers=h["audra"]).json()["items"][0]
    assert after["seal"]["seq"] >= 1 and len(after["seal"]["mac"]) == 64


@pytest.mark.parametrize(("params", "words"), [
    ({"since": "2025-01-01T00:00:00"}, "time zone"),
    ({"since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "since is after until"),
    ({"since": "yesterday"}, "datetime"),
    ({"limit": 0}, "greater than or equal to 1"),
    ({"limit": 10_000}, "less than or equal to 500"),
    ({"cursor": "abc"}, "pattern"),
    ({"flagged": "maybe"}, "boolean"),
])
def test_bad_parameters_get_a_readable_422(api: Any, params: dict[str, Any], words: str) -> None:
    client, h = api
    response = client.get("/api/v1/audit", params=params, headers=h["audra"])
    assert response.status_code == 422
    assert words in response.text


def test_the_search_itself_is_audited(api: Any, rt: Any) -> None:
    client, h = api
    assert client.get("/api/v1/audit", params={"patient_id": "P-1", "limit": 2}, headers=h["audra"]).status_code == 200
    with rt.db.read_session() as s:
        row = s.scalars(select(AuditRecord).where(AuditRecord.action == "audit.search")).one()
    assert row.actor == "audra" and row.resource_type == "audit"
    assert row.detail["filters"] == {"patient_id": "P-1"} and row.detail["returned"] == 2
