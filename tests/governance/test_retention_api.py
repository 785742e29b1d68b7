"""Retention over HTTP (site administrators see and touch only their sites) and from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from readingroom.app import create_app
from readingroom.archive.stability import complete_stable_studies
from readingroom.config import load_settings
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.models import AuditRecord
from readingroom.governance.users import create_token, create_user
from readingroom.runtime import Runtime
from tests.governance.retention_support import (
    LAKE,
    add_study,
    close_case,
    complete_all,
    days_ago,
    make_sites,
    study_exists,
)
from tests.support.dicom import new_study
from tests.support.servers import create_test_database, drop_test_database


@pytest.fixture()
def api(rt, tmp_path):
    """Two sites with two old studies each, an admin, a HUB site admin and a radiologist."""
    forget_cached_credentials()
    sites = make_sites(rt)
    studies = {
        "hub": add_study(rt, tmp_path, study_date=days_ago(4000), patient="P-hub"),
        "hub2": add_study(rt, tmp_path, study_date=days_ago(4000), patient="P-both"),
        "lake": add_study(rt, tmp_path, site=LAKE, study_date=days_ago(4000), patient="P-lake"),
        "lake2": add_study(rt, tmp_path, site=LAKE, study_date=days_ago(4000), patient="P-both"),
    }
    complete_all(rt)
    for uid in studies.values():
        close_case(rt, uid)
    tokens = {}
    with rt.db.session() as s:
        for name, role, site in (("root", "admin", None), ("hubadmin", "site_admin", sites["HUB"]),
                                 ("reader", "radiologist", sites["HUB"])):
            user = create_user(s, name, password="pw", role=role, site_id=site)
            tokens[name] = {"Authorization": f"Bearer {create_token(s, user)[1]}"}
    client = TestClient(create_app(rt))
    return client, tokens, sites, studies


def test_site_admin_manages_only_their_sites(api, rt) -> None:
    client, tok, sites, studies = api
    root, hub, reader = tok["root"], tok["hubadmin"], tok["reader"]
    assert client.get("/api/v1/retention/rules", headers=reader).status_code == 403
    assert client.get("/api/v1/retention/rules").status_code == 401

    def post_rule(headers: dict[str, str], **body: object) -> object:
        return client.post("/api/v1/retention/rules", json={"min_age_days": 365, **body}, headers=headers)

    mine = post_rule(hub, name="hub-1y", site_id=sites["HUB"], modality="ct")
    assert mine.status_code == 201 and mine.json()["modality"] == "CT" and mine.json()["created_by"] == "hubadmin"
    assert post_rule(hub, name="lake-1y", site_id=sites["LKS"]).status_code == 404
    assert post_rule(hub, name="everyone").status_code == 403
    lake_rule = post_rule(root, name="lake-10y", site_id=sites["LKS"], min_age_days=3650)
    network_rule = post_rule(root, name="network-8y", min_age_days=3000)
    assert lake_rule.status_code == network_rule.status_code == 201
    assert {r["name"] for r in client.get("/api/v1/retention/rules", headers=hub).json()} == {"hub-1y", "network-8y"}
    assert len(client.get("/api/v1/retention/rules", headers=root).json()) == 3
    assert client.delete(f"/api/v1/retention/rules/{lake_rule.json()['id']}", headers=hub).status_code == 404
    assert client.delete(f"/api/v1/retention/rules/{network_rule.json()['id']}", headers=hub).status_code == 403

    def post_hold(headers: dict[str, str], **body: str) -> object:
        return client.post("/api/v1/retention/holds", json={"reason": "subpoena 7", **body}, headers=headers)

    study_hold = post_hold(hub, study_uid=studies["hub"])
    assert study_hold.status_code == 201 and study_hold.json()["studies"] == 1
    assert post_hold(hub, study_uid=studies["lake"]).status_code == 404
    assert post_hold(hub, patient_id="P-lake").status_code == 404
    both = post_hold(hub, patient_id="P-both")  # one of the patient's studies is at HUB: allowed, covers both
    assert both.status_code == 201 and both.json()["studies"] == 2
    lake_hold = post_hold(root, study_uid=studies["lake"])
    assert lake_hold.status_code == 201
    listed = {h["id"] for h in client.get("/api/v1/retention/holds", headers=hub).json()}
    assert listed == {study_hold.json()["id"], both.json()["id"]}
    assert client.post(f"/api/v1/retention/holds/{lake_hold.json()['id']}/release", headers=hub).status_code == 404
    # The patient hold also protects a study of LKS: only a network administrator may lift it.
    assert client.post(f"/api/v1/retention/holds/{both.json()['id']}/release", headers=hub).status_code == 403
    released = client.post(f"/api/v1/retention/holds/{study_hold.json()['id']}/release",
                           json={"reason": "released by counsel"}, headers=hub)
    assert released.status_code == 200 and released.json()["active"] is False
    assert released.json()["released_by"] == "hubadmin"

    report = client.post("/api/v1/retention/run", json={"dry_run": True}, headers=hub).json()
    assert {s["study_uid"] for s in report["studies"]} == {studies["hub"], studies["hub2"]}  # HUB only
    actions = {s["study_uid"]: (s["action"], [r["code"] for r in s["reasons"]]) for s in report["studies"]}
    assert actions == {studies["hub"]: ("would_purge", []), studies["hub2"]: ("keep", ["legal_hold"])}
    purged = client.post("/api/v1/retention/run", json={"dry_run": False}, headers=hub)
    assert purged.status_code == 200 and purged.json()["totals"]["purge"] == 1
    assert not study_exists(rt, studies["hub"])
    assert all(study_exists(rt, studies[k]) for k in ("hub2", "lake", "lake2"))  # LKS untouched by a HUB admin

    with rt.db.read_session() as s:
        audited = {(a.actor, a.action) for a in s.scalars(select(AuditRecord)
                                                          .where(AuditRecord.action.like("retention.%")))}
    assert {("hubadmin", "retention.rule.create"), ("root", "retention.rule.create"),
            ("hubadmin", "retention.hold.create"), ("hubadmin", "retention.hold.release"),
            ("hubadmin", "retention.dry_run"), ("hubadmin", "retention.run"),
            ("hubadmin", "retention.purge")} <= audited


def test_bad_requests_get_readable_errors(api) -> None:
    client, tok, _sites, studies = api
    root = tok["root"]
    rules, holds = "/api/v1/retention/rules", "/api/v1/retention/holds"
    assert client.post(rules, json={"name": "x", "min_age_days": 0}, headers=root).status_code == 422
    bad_modality = client.post(rules, json={"name": "x", "min_age_days": 9, "modality": "C T!"}, headers=root)
    assert bad_modality.status_code == 422 and "modality" in bad_modality.json()["detail"]
    assert client.post(rules, json={"name": "x", "min_age_days": 9, "site_id": 999}, headers=root).status_code == 404
    assert client.post(rules, json={"name": "dup", "min_age_days": 9}, headers=root).status_code == 201
    duplicate = client.post(rules, json={"name": "dup", "min_age_days": 9}, headers=root)
    assert duplicate.status_code == 409 and "already exists" in duplicate.json()["detail"]
    assert client.delete(f"{rules}/4242", headers=root).status_code == 404
    both = client.post(holds, json={"reason": "r", "study_uid": studies["hub"], "patient_id": "P-hub"}, headers=root)
    assert both.status_code == 422 and "exactly one" in str(both.json()["detail"])
    assert client.post(holds, json={"reason": "r", "study_uid": "not-a-uid"}, headers=root).status_code == 422
    assert client.post(holds, json={"reason": "   ", "patient_id": "P-hub"}, headers=root).status_code == 422
    placed = client.post(holds, json={"reason": "r", "patient_id": "P-hub"}, headers=root).json()
    assert client.post(f"{holds}/{placed['id']}/release", headers=root).status_code == 200
    again = client.post(f"{holds}/{placed['id']}/release", headers=root)
    assert again.status_code == 409 and "already released" in again.json()["detail"]
    assert client.post(f"{holds}/999/release", headers=root).status_code == 404
    assert client.post("/api/v1/retention/run", json={"dry_run": "maybe"}, headers=root).status_code == 422


def test_cli_rules_holds_runs_and_check(tmp_path: Path) -> None:
    db_url, db_name = create_test_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("READINGROOM_")}
    env["READINGROOM_DATA_DIR"] = str(tmp_path / "data")
    env["COLUMNS"] = "300"  # Rich wraps tables to the terminal width; keep each row on one line
    if db_url:
        env["READINGROOM_DATABASE_URL"] = db_url

    def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "readingroom", *args], env=env, capture_output=True,
                              text=True, timeout=300)
        if ok:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    try:
        new_study("CT_small.dcm", tmp_path / "old", 2, StudyDate=days_ago(4000), PatientID="P-old")
        new_study("CT_small.dcm", tmp_path / "held", 1, StudyDate=days_ago(4000), PatientID="P-held")
        cli("import", str(tmp_path / "old"), str(tmp_path / "held"))
        cli("retention", "rules", "add", "all-5y", "--days", "1825", "--modality", "CT")
        assert "all-5y" in cli("retention", "rules").stdout
        cli("retention", "hold", "add", "--patient", "P-held", "--reason", "matter 12")
        assert "matter 12" in cli("retention", "hold", "list").stdout
        # Imported studies stay 'receiving' until a server's stability job runs: the dry run says so.
        dry = cli("retention", "run", "--dry-run").stdout
        assert "instances are still arriving" in dry and "would purge" in dry
        rt = Runtime.open(load_settings(tmp_path / "data", database_url=db_url), migrate=False)
        complete_stable_studies(rt, stable_age=0)
        rt.close()
        run = cli("retention", "run").stdout
        assert "purged" in run and "legal hold #1 on patient P-held" in run
        assert "instances 1," in cli("check").stdout
        cli("retention", "hold", "release", "1", "--reason", "settled")
        assert "purged" in cli("retention", "run").stdout
        checked = cli("check").stdout
        assert "instances 0, blobs 0" in checked and "clean" in checked
        cli("retention", "rules", "remove", "all-5y")
        assert "all-5y" not in cli("retention", "rules").stdout
    finally:
        drop_test_database(db_name)
