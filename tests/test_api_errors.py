"""The answers every route shares: bad values that reach the database, and their place in /openapi.json."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from readingroom.api_errors import api_routes
from readingroom.app import create_app
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.users import create_token, create_user

TOO_BIG = "1" + "0" * 25  # beyond any 64-bit integer column


@pytest.fixture()
def api(rt: Any) -> tuple[TestClient, dict[str, str]]:
    forget_cached_credentials()
    with rt.db.session() as s:
        admin = create_user(s, "boss", role="admin")
        headers = {"Authorization": f"Bearer {create_token(s, admin)[1]}"}
    return TestClient(create_app(rt), raise_server_exceptions=False), headers


@pytest.mark.parametrize("method, path", [
    ("GET", f"/api/v1/cases/{TOO_BIG}"),
    ("POST", f"/api/v1/cases/{TOO_BIG}/complete"),
    ("POST", f"/api/v1/cases/{TOO_BIG}/heartbeat"),
    ("DELETE", f"/api/v1/tokens/{TOO_BIG}"),
])
def test_an_id_beyond_the_database_is_bad_input_not_a_server_error(api: Any, method: str, path: str) -> None:
    client, headers = api
    r = client.request(method, path, headers=headers)
    assert r.status_code in (404, 422), r.text
    if r.status_code == 422:
        assert "out of range" in r.json()["detail"]


def test_a_nul_character_is_bad_input_on_every_database(api: Any) -> None:
    """PostgreSQL text cannot hold NUL; SQLite can. Either way the answer is not a 500."""
    client, headers = api
    r = client.get("/api/v1/worklist", params={"priority": "a\x00b"}, headers=headers)
    assert r.status_code in (200, 422), r.text


def test_the_document_promises_the_common_answers(api: Any) -> None:
    client, _ = api
    doc = client.get("/openapi.json").json()
    assert "ErrorOut" in doc["components"]["schemas"]
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "basic", "session"}
    me = doc["paths"]["/api/v1/me"]["get"]
    assert {"401", "403", "503"} <= set(me["responses"]) and me["security"]
    case = doc["paths"]["/api/v1/cases/{case_id}"]["get"]["responses"]
    assert {"401", "403", "404", "422"} <= set(case)
    assert case["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    health = doc["paths"]["/healthz"]["get"]
    assert "401" not in health["responses"] and "security" not in health
    qido = doc["paths"]["/dicomweb/studies"]["get"]["responses"]["200"]["content"]
    assert "application/dicom+json" in qido


def test_routes_are_found_inside_included_routers(api: Any) -> None:
    """FastAPI 0.16x keeps included routers as branches; the enumeration still sees every route."""
    client, _ = api
    paths = {r.path_format for r in api_routes(client.app)}  # type: ignore[arg-type]
    assert {"/api/v1/me", "/api/v1/cases/{case_id}", "/dicomweb/studies/{study}", "/healthz"} <= paths
