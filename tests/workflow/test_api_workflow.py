"""The worklist REST API: worklists, claims, rules replacement, dry run, reassign, exceptions, AI."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from readingroom.app import create_app
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.users import create_token, get_user
from tests.workflow.conftest import make_case

RULES = """
version: 2
name: test rules
defaults:
  mode: pull
  pools: [all]
  sla_minutes: {critical: 30, stat: 60, urgent: 240, routine: 1440}
rules:
  - id: ai-ich
    match: {flags_any: [AI_ICH]}
    actions: {raise_priority: critical}
    stop: false
  - id: ct-body
    match: {modality: [CT]}
    actions: {subspecialty: [body]}
"""


@pytest.fixture()
def api(network):
    forget_cached_credentials()
    tokens = {}
    with network.db.session() as s:
        for name in ("ann", "bob", "cat", "boss"):
            tokens[name] = {"Authorization": f"Bearer {create_token(s, get_user(s, name))[1]}"}
    client = TestClient(create_app(network))
    client.h = tokens
    return client


def test_worklists_and_claims(api, network, tmp_path: Path) -> None:
    case_id = make_case(network, tmp_path)
    assert [c["id"] for c in api.get("/api/v1/worklist", headers=api.h["ann"]).json()] == [case_id]
    assert api.get("/api/v1/worklist", headers=api.h["cat"]).json() == []
    assert api.get(f"/api/v1/cases/{case_id}", headers=api.h["cat"]).status_code == 403
    detail = api.get(f"/api/v1/cases/{case_id}", headers=api.h["bob"]).json()
    assert [e["kind"] for e in detail["events"]] == ["received", "routed"] and detail["candidates"] == ["ann", "bob"]
    assert api.post(f"/api/v1/cases/{case_id}/claim", headers=api.h["cat"]).status_code == 403
    assert api.post(f"/api/v1/cases/{case_id}/claim", headers=api.h["bob"]).json()["state"] == "claimed"
    r = api.post(f"/api/v1/cases/{case_id}/claim", headers=api.h["ann"])
    assert r.status_code == 409 and "claimed" in r.json()["detail"]
    assert api.get("/api/v1/worklist", headers=api.h["ann"]).json() == []
    assert api.post(f"/api/v1/cases/{case_id}/complete", headers=api.h["ann"]).status_code == 403
    assert api.post(f"/api/v1/cases/{case_id}/heartbeat", headers=api.h["bob"]).status_code == 204
    assert api.post(f"/api/v1/cases/{case_id}/complete", headers=api.h["bob"]).json()["state"] == "final"
    assert api.post(f"/api/v1/cases/{case_id}/release", headers=api.h["bob"]).status_code == 409
    assert api.get("/api/v1/cases", headers=api.h["ann"]).status_code == 403
    assert api.get("/api/v1/cases?open_only=false", headers=api.h["boss"]).json()[0]["state"] == "final"


def test_rules_replacement_validation_and_dry_run(api, network, tmp_path: Path) -> None:
    assert api.get("/api/v1/routing/rules", headers=api.h["ann"]).json()["version"] == 0
    bad = api.put("/api/v1/routing/rules", content="version: 2\nname: x\nrulez: []\ndefaults: {mode: shove}\n",
                  headers={**api.h["boss"], "Content-Type": "application/yaml"})
    assert bad.status_code == 422
    locs = {tuple(e["loc"]) for e in bad.json()["detail"]["errors"]}
    assert ("rulez",) in locs and ("defaults", "mode") in locs
    assert api.put("/api/v1/routing/rules", content=RULES,
                   headers={**api.h["ann"], "Content-Type": "application/yaml"}).status_code == 403
    ok = api.put("/api/v1/routing/rules", content=RULES, headers={**api.h["boss"], "Content-Type": "application/yaml"})
    assert ok.status_code == 200 and ok.json()["version"] == 2
    again = api.put("/api/v1/routing/rules", content=RULES,
                    headers={**api.h["boss"], "Content-Type": "application/yaml"})
    assert again.status_code == 422 and "version" in str(again.json())
    case_id = make_case(network, tmp_path)
    detail = api.get(f"/api/v1/cases/{case_id}", headers=api.h["boss"]).json()
    assert detail["rule_id"] == "ct-body" and detail["candidates"] == ["bob"]  # ann is neuro
    dry = api.get(f"/api/v1/cases/{case_id}/dry-run", headers=api.h["boss"]).json()
    assert dry["rules_version"] == 2 and dry["eligible"] == ["bob"]
    assert "SUBSPECIALTY" in {r["code"] for r in dry["excluded"]["ann"]}
    # An AI finding raises the priority through the rules and re-routes.
    study = detail["study_uid"]
    ai = api.post(f"/api/v1/studies/{study}/ai-findings", json={"finding_code": "ICH", "confidence": 0.93},
                  headers=api.h["boss"])
    assert ai.status_code == 200 and ai.json()["priority"] == "critical" and "AI_ICH" in ai.json()["flags"]
    assert api.post("/api/v1/studies/1.2.3/ai-findings", json={"finding_code": "ICH"},
                    headers=api.h["boss"]).status_code == 404
    assert api.post(f"/api/v1/studies/{study}/ai-findings", json={"finding_code": "ICH"},
                    headers=api.h["bob"]).status_code == 403


def test_exception_queue_and_reassign(api, network, tmp_path: Path) -> None:
    case_id = make_case(network, tmp_path, institution="Unknown Hospital")
    items = api.get("/api/v1/exceptions", headers=api.h["boss"]).json()
    assert [(i["case_id"], i["kind"]) for i in items] == [(case_id, "no_eligible_reader")]
    r = api.post(f"/api/v1/cases/{case_id}/reassign", json={"to": "ann", "reason": "covering"},
                 headers=api.h["boss"])
    assert r.status_code == 200 and r.json()["state"] == "claimed"
    assert api.get("/api/v1/exceptions", headers=api.h["boss"]).json() == []
    assert [c["id"] for c in api.get("/api/v1/worklist", headers=api.h["ann"]).json()] == [case_id]
    assert api.post("/api/v1/exceptions/999/resolve", json={"reason": "x"}, headers=api.h["boss"]).status_code == 404


def test_sites_and_readers(api) -> None:
    boss = api.h["boss"]
    assert api.post("/api/v1/sites", json={"code": "X1", "name": "X", "timezone": "Mars/Olympus"},
                    headers=boss).status_code == 422
    assert api.post("/api/v1/sites", json={"code": "X1", "name": "X", "timezone": "Europe/Zurich"},
                    headers=boss).status_code == 201
    assert api.post("/api/v1/sites", json={"code": "X1", "name": "X"}, headers=boss).status_code == 409
    body = {"home_site": "X1", "timezone": "Australia/Sydney", "subspecialties": ["neuro"],
            "shifts": ["Mon-Fri 08:00-16:00"], "licences": {"US-NY": "2030-01-01"}, "credentials": {"HUB": None}}
    r = api.put("/api/v1/readers/cat", json=body, headers=boss)
    assert r.status_code == 200 and r.json()["licences"] == {"US-NY": "2030-01-01"}
    assert api.put("/api/v1/readers/cat", json={**body, "shifts": ["someday"]}, headers=boss).status_code == 422
    assert api.put("/api/v1/readers/cat", json={**body, "credentials": {"NOPE": None}},
                   headers=boss).status_code == 422
    assert api.put("/api/v1/readers/nobody", json=body, headers=boss).status_code == 404
    assert api.get("/api/v1/readers/cat", headers=api.h["ann"]).status_code == 403
