"""REST API basics in process: health, authentication, peers, accounts."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from readingroom.app import create_app
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.users import create_token, create_user


@pytest.fixture()
def client(rt):
    forget_cached_credentials()
    with rt.db.session() as s:
        admin = create_user(s, "root", password="pw", role="admin")
        reader = create_user(s, "reader", password="pw2", role="radiologist")
        _, admin_token = create_token(s, admin)
        _, reader_token = create_token(s, reader)
    c = TestClient(create_app(rt))
    c.tokens = {"admin": admin_token, "reader": reader_token}
    return c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health(client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/readyz").json()["status"] == "ready"


def test_authentication(client) -> None:
    assert client.get("/api/v1/me").status_code == 401
    r = client.get("/api/v1/me", headers=bearer("rr_not-a-token"))
    assert r.status_code == 401 and "invalid" in r.json()["detail"]
    assert client.get("/api/v1/me", headers={"Authorization": "Digest abc"}).status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": "Basic !!!"}).status_code == 401
    me = client.get("/api/v1/me", headers=bearer(client.tokens["reader"])).json()
    assert me["username"] == "reader" and "archive.read" in me["actions"]
    basic = base64.b64encode(b"root:pw").decode()
    assert client.get("/api/v1/me", headers={"Authorization": f"Basic {basic}"}).json()["role"] == "admin"
    wrong = base64.b64encode(b"root:nope").decode()
    assert client.get("/api/v1/me", headers={"Authorization": f"Basic {wrong}"}).status_code == 401


def test_peers_need_admin(client) -> None:
    body = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 4242}
    assert client.post("/api/v1/peers", json=body, headers=bearer(client.tokens["reader"])).status_code == 403
    admin = bearer(client.tokens["admin"])
    created = client.post("/api/v1/peers", json=body, headers=admin)
    assert created.status_code == 201 and created.json()["ae_title"] == "PACS"
    assert client.post("/api/v1/peers", json=body, headers=admin).status_code == 409
    bad = client.post("/api/v1/peers", json={**body, "name": "x", "port": 0}, headers=admin)
    assert bad.status_code == 422
    # An AE title outside the DICOM default repertoire would only fail later, at association time.
    non_ascii = client.post("/api/v1/peers", json={**body, "name": "y", "ae_title": "6\u00e9"}, headers=admin)
    assert non_ascii.status_code == 422 and "AE title" in non_ascii.text
    for host in (",", "", "a b", "h\u00f6st", "x..y"):
        r = client.post("/api/v1/peers", json={**body, "name": "z", "host": host}, headers=admin)
        assert r.status_code == 422 and "host" in r.text, host
    assert [p["name"] for p in client.get("/api/v1/peers", headers=admin).json()] == ["pacs"]
    assert client.delete("/api/v1/peers/pacs", headers=admin).status_code == 204
    assert client.delete("/api/v1/peers/pacs", headers=admin).status_code == 404


def test_tokens_and_users(client) -> None:
    admin = bearer(client.tokens["admin"])
    r = client.post("/api/v1/users", json={"username": "tech", "password": "long enough", "role": "technologist"},
                    headers=admin)
    assert r.status_code == 201
    short = client.post("/api/v1/users", json={"username": "t2", "password": "pw"}, headers=admin)
    assert short.status_code == 422 and "password" in short.text
    assert client.post("/api/v1/users", json={"username": "x", "role": "wizard"}, headers=admin).status_code == 422
    assert client.post("/api/v1/users", json={"username": "y"},
                       headers=bearer(client.tokens["reader"])).status_code == 403
    token = client.post("/api/v1/tokens", json={"name": "viewer", "expires_in_days": 1},
                        headers=bearer(client.tokens["reader"])).json()["token"]
    assert client.get("/api/v1/me", headers=bearer(token)).json()["username"] == "reader"


def test_expired_and_revoked_tokens(rt, client) -> None:
    from datetime import timedelta

    from readingroom.governance.users import get_user, revoke_token

    with rt.db.session() as s:
        user = get_user(s, "reader")
        _expired, expired_secret = create_token(s, user, expires_in=timedelta(seconds=-1))
        revoked, revoked_secret = create_token(s, user)
        revoke_token(s, revoked.id)
    assert client.get("/api/v1/me", headers=bearer(expired_secret)).status_code == 401
    assert client.get("/api/v1/me", headers=bearer(revoked_secret)).status_code == 401
