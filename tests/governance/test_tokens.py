"""Scoped, expiring, revocable API tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest

from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.users import create_token, get_user
from tests.governance.auth_support import add_user, audits, frozen_clock, second_client, signed_in, web_client


@pytest.fixture()
def client(rt):
    rt.settings.login_rate_per_minute = 1000
    add_user(rt, "reader")
    add_user(rt, "boss", role="admin")
    with rt.db.session() as s:
        _, reader_token = create_token(s, get_user(s, "reader"))
        _, boss_token = create_token(s, get_user(s, "boss"))
    c = web_client(rt)
    c.reader, c.boss = bearer(reader_token), bearer(boss_token)
    return c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_scopes_must_be_actions_the_role_allows(rt, client) -> None:
    r = client.post("/api/v1/tokens", json={"name": "viewer", "scopes": ["archive.read"]}, headers=client.reader)
    assert r.status_code == 201 and r.json()["scopes"] == ["archive.read"] and r.json()["token"].startswith("rr_")
    beyond = client.post("/api/v1/tokens", json={"scopes": ["users.admin"]}, headers=client.reader)
    assert beyond.status_code == 422 and "users.admin" in beyond.json()["detail"]
    unknown = client.post("/api/v1/tokens", json={"scopes": ["archive.everything"]}, headers=client.reader)
    assert unknown.status_code == 422
    created = audits(rt, "auth.token_create")
    assert len(created) == 1 and created[0].detail["scopes"] == ["archive.read"]


def test_a_scoped_token_is_limited_to_its_scopes(rt, client) -> None:
    scoped = bearer(client.post("/api/v1/tokens", json={"scopes": ["archive.read"]},
                                headers=client.reader).json()["token"])
    assert client.get("/api/v1/worklist", headers=client.reader).status_code == 200
    assert client.get("/api/v1/worklist", headers=scoped).status_code == 403  # worklist.read is outside
    assert client.get("/dicomweb/studies", headers=scoped).status_code in (200, 204)
    # a scoped caller cannot mint a broader token; without scopes it passes its own on
    wider = client.post("/api/v1/tokens", json={"scopes": ["worklist.read"]}, headers=scoped)
    assert wider.status_code == 422 and "own scopes" in wider.json()["detail"]
    child = client.post("/api/v1/tokens", json={"name": "child"}, headers=scoped)
    assert child.status_code == 201 and child.json()["scopes"] == ["archive.read"]


def test_expired_tokens_are_refused(rt, client) -> None:
    for days in (0, -1, 4000):
        assert client.post("/api/v1/tokens", json={"expires_in_days": days},
                           headers=client.reader).status_code == 422
    with frozen_clock() as clock:
        token = bearer(client.post("/api/v1/tokens", json={"expires_in_days": 1},
                                   headers=client.reader).json()["token"])
        assert client.get("/api/v1/me", headers=token).status_code == 200
        clock.advance(timedelta(days=1, seconds=1))
        forget_cached_credentials()
        r = client.get("/api/v1/me", headers=token)
        assert r.status_code == 401 and "expired" in r.json()["detail"]
    never = client.post("/api/v1/tokens", json={"expires_in_days": None}, headers=client.reader)
    assert never.status_code == 201 and never.json()["expires_at"] is None


def test_revoked_tokens_stop_working_at_once(rt, client) -> None:
    made = client.post("/api/v1/tokens", json={"name": "script"}, headers=client.reader).json()
    token = bearer(made["token"])
    assert client.get("/api/v1/me", headers=token).status_code == 200  # now cached
    other = client.post("/api/v1/tokens", json={}, headers=client.boss).json()
    assert client.delete(f"/api/v1/tokens/{other['id']}", headers=client.reader).status_code == 404
    assert client.delete(f"/api/v1/tokens/{made['id']}", headers=client.reader).status_code == 204
    assert client.get("/api/v1/me", headers=token).status_code == 401
    assert client.delete(f"/api/v1/tokens/{made['id']}", headers=client.reader).status_code == 409
    assert [a.resource_id for a in audits(rt, "auth.token_revoke")] == [str(made["id"])]


def test_listing_own_tokens_and_an_admin_listing_a_users(rt, client) -> None:
    client.post("/api/v1/tokens", json={"name": "one", "scopes": ["archive.read"]}, headers=client.reader)
    mine = client.get("/api/v1/tokens", headers=client.reader)
    assert mine.status_code == 200
    rows = mine.json()
    assert {r["name"] for r in rows} >= {"one"} and all("token" not in r for r in rows)
    assert all(r["username"] == "reader" for r in rows)
    assert client.get("/api/v1/tokens?username=boss", headers=client.reader).status_code == 403
    theirs = client.get("/api/v1/tokens?username=reader", headers=client.boss)
    assert theirs.status_code == 200 and {r["id"] for r in theirs.json()} == {r["id"] for r in rows}
    assert client.get("/api/v1/tokens?username=ghost", headers=client.boss).status_code == 404
    # admins may revoke a user's token
    victim = rows[0]["id"]
    assert client.delete(f"/api/v1/tokens/{victim}", headers=client.boss).status_code == 204
    assert victim not in {r["id"] for r in client.get("/api/v1/tokens", headers=client.reader).json()}
    ended = client.get("/api/v1/tokens?include_ended=true", headers=client.reader).json()
    assert any(r["id"] == victim and r["revoked_at"] for r in ended)


def test_a_browser_session_creates_tokens_with_csrf(rt, client) -> None:
    browser = second_client(client)
    csrf = signed_in(browser, "reader")
    assert browser.post("/api/v1/tokens", json={"name": "from ui"}).status_code == 403
    r = browser.post("/api/v1/tokens", json={"name": "from ui"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    assert client.get("/api/v1/me", headers=bearer(r.json()["token"])).json()["username"] == "reader"


def _cli(rt, *args: str):
    from typer.testing import CliRunner

    from readingroom.cli import app

    env = {"READINGROOM_DATABASE_URL": rt.settings.database_url or ""}
    return CliRunner().invoke(app, [*args, "--data-dir", str(rt.settings.data_dir)], env=env)


def test_cli_creates_scoped_tokens_lists_and_revokes_them(rt, client) -> None:
    bad = _cli(rt, "token", "create", "reader", "--scope", "users.admin")
    assert bad.exit_code == 1 and "not allowed for role" in bad.output
    made = _cli(rt, "token", "create", "reader", "--name", "pacs-bridge", "--scope", "archive.read", "--days", "7")
    assert made.exit_code == 0, made.output
    token = bearer(made.output.strip())
    assert client.get("/api/v1/me", headers=token).status_code == 200
    assert client.get("/api/v1/worklist", headers=token).status_code == 403
    listed = _cli(rt, "token", "list", "reader")
    flat = "".join(listed.output.split())  # the table may wrap cells on a narrow terminal
    assert listed.exit_code == 0 and "pacs" in flat and "archive" in flat
    [row] = [r for r in client.get("/api/v1/tokens", headers=client.reader).json() if r["name"] == "pacs-bridge"]
    assert _cli(rt, "token", "revoke", str(row["id"])).exit_code == 0
    assert client.get("/api/v1/me", headers=token).status_code == 401
    assert _cli(rt, "token", "revoke", str(row["id"])).exit_code == 1
    assert audits(rt, "auth.token_revoke")[-1].actor.startswith("cli")
