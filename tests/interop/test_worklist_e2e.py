"""A study sent by storescu becomes a case on the right reader's worklist once stable."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.interop.dcmtk import run
from tests.support.dicom import new_study


def test_storescu_study_reaches_the_right_worklist(server_factory, tmp_path: Path) -> None:
    server = server_factory(stable_age_seconds=1)
    admin = server.auth_headers
    base = f"{server.base_url}/api/v1"
    with httpx.Client(timeout=30) as c:
        assert c.post(f"{base}/sites", headers=admin, json={
            "code": "STB", "name": "St. Brigid Community Hospital", "timezone": "America/New_York",
            "jurisdiction": "US-NY", "institution_names": ["ST BRIGID CH"]}).status_code == 201
        for name, licence in (("reader1", "US-NY"), ("reader2", "US-CA")):
            assert c.post(f"{base}/users", headers=admin, json={"username": name, "password": "pw-" + name,
                                                                "role": "radiologist"}).status_code == 201
            assert c.put(f"{base}/readers/{name}", headers=admin, json={
                "timezone": "America/New_York", "shifts": ["Mon-Sun 00:00-23:59"],
                "licences": {licence: None}, "credentials": {"STB": None}}).status_code == 200
        files = new_study("CT_small.dcm", tmp_path / "study", 3, InstitutionName="ST BRIGID CH")
        run("storescu", "-aet", "STORESCU", "-aec", server.aet, "127.0.0.1", str(server.dicom_port),
            *[str(f) for f in files])
        deadline = time.monotonic() + 60
        worklist: list = []
        while time.monotonic() < deadline and not worklist:
            worklist = c.get(f"{base}/worklist", auth=("reader1", "pw-reader1")).json()
            time.sleep(0.5)
        assert len(worklist) == 1, server.log()[-3000:]
        case = worklist[0]
        assert case["site"] == "STB" and case["state"] == "available" and case["modality"] == "CT"
        assert c.get(f"{base}/worklist", auth=("reader2", "pw-reader2")).json() == []
        detail = c.get(f"{base}/cases/{case['id']}", headers=admin).json()
        assert "NO_LICENCE" in str(detail["events"][-1]["data"]["excluded"]["reader2"])
        claimed = c.post(f"{base}/cases/{case['id']}/claim", auth=("reader1", "pw-reader1"))
        assert claimed.status_code == 200 and claimed.json()["state"] == "claimed"
