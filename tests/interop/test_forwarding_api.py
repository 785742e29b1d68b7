"""Forwarding over REST: rule CRUD validated, scoped by the destination's site, audited; status and forward-now."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from readingroom.app import create_app
from readingroom.governance import audit
from readingroom.governance.models import AuditRecord, Site
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.interop.models import ForwardingRule, OutboxItem
from tests.interop.forwarding_support import add_destination, ingest_complete, write_study
from tests.workflow.conftest import network  # noqa: F401  (fixture)


@pytest.fixture()
def api(network) -> Iterator[dict[str, Any]]:  # noqa: F811
    rt = network
    with rt.db.session() as s:
        hub = s.scalar(select(Site.id).where(Site.code == "HUB"))
        lks = s.scalar(select(Site.id).where(Site.code == "LKS"))
        create_user(s, "hubadm", password="pw", role="site_admin", site_id=hub)
        create_user(s, "lksadm", password="pw", role="site_admin", site_id=lks)
        headers = {n: {"Authorization": f"Bearer {create_token(s, get_user(s, n), name='t')[1]}"}
                   for n in ("hubadm", "lksadm", "ann")}
    add_destination(rt, "hub-pacs", "dicom", peer=("HUBPACS", "127.0.0.1", 104), site_id=hub)
    yield {"rt": rt, "c": TestClient(create_app(rt)), "h": headers}
    audit.flush(rt.db)


def _rules(rt: Any) -> int:
    with rt.db.read_session() as s:
        return s.scalar(select(func.count()).select_from(ForwardingRule)) or 0


def test_rule_crud_validation_and_scope(api: dict[str, Any]) -> None:
    c, h, rt = api["c"], api["h"], api["rt"]
    body = {"name": "ct-out", "match": {"modality": "ct", "description": "head|brain"}, "destination": "hub-pacs"}
    for bad, status in (({**body, "match": {"description": "(("}}, 422), ({**body, "destination": "nowhere"}, 422),
                        ({**body, "match": {"priority": "someday"}}, 422), ({"name": "x"}, 422)):
        r = c.post("/api/v1/interop/forwarding-rules", json=bad, headers=h["hubadm"])
        assert r.status_code == status, r.text
    assert _rules(rt) == 0
    assert c.post("/api/v1/interop/forwarding-rules", json=body, headers=h["lksadm"]).status_code == 403
    assert c.post("/api/v1/interop/forwarding-rules", json=body, headers=h["ann"]).status_code == 403
    r = c.post("/api/v1/interop/forwarding-rules", json=body, headers=h["hubadm"])
    assert r.status_code == 201, r.text
    rule = r.json()
    assert rule["match"] == {"modality": "CT", "description": "head|brain"} and rule["destination"] == "hub-pacs"
    assert c.post("/api/v1/interop/forwarding-rules", json=body, headers=h["hubadm"]).status_code == 409
    assert [x["name"] for x in c.get("/api/v1/interop/forwarding-rules", headers=h["hubadm"]).json()] == ["ct-out"]
    assert c.get("/api/v1/interop/forwarding-rules", headers=h["lksadm"]).json() == []
    url = f"/api/v1/interop/forwarding-rules/{rule['id']}"
    assert c.put(url, json={"enabled": False}, headers=h["lksadm"]).status_code == 404
    r = c.put(url, json={"enabled": False}, headers=h["hubadm"])
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert c.delete(url, headers=h["hubadm"]).status_code == 204
    assert _rules(rt) == 0
    audit.flush(rt.db)
    with rt.db.read_session() as s:
        actions = s.scalars(select(AuditRecord.action).where(AuditRecord.resource_type == "forwarding_rule")).all()
    assert sorted(actions) == ["forwarding_rule.create", "forwarding_rule.delete", "forwarding_rule.update"]


def test_forward_now_and_status(api: dict[str, Any], tmp_path: Path) -> None:
    c, h, rt = api["c"], api["h"], api["rt"]
    study_uid = ingest_complete(rt, write_study(tmp_path, patient=7, days_ago=0, accession="API1"))
    r = c.post("/api/v1/interop/forwarding", json={"study_uid": "1.2.3.4", "destination": "hub-pacs"},
               headers=h["hubadm"])
    assert r.status_code == 404
    r = c.post("/api/v1/interop/forwarding", json={"study_uid": study_uid, "destination": "hub-pacs"},
               headers=h["hubadm"])
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "pending" and r.json()["operation"] == "c-store"
    status = c.get("/api/v1/interop/forwarding", params={"study_uid": study_uid}, headers=h["hubadm"]).json()
    assert [(f["destination"], f["state"]) for f in status] == [("hub-pacs", "pending")]
    assert c.get("/api/v1/interop/forwarding", params={"study_uid": study_uid},
                 headers=h["lksadm"]).status_code == 404
    with rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxItem)) == 1
