"""Brute-force protection: account lockout (login route and HTTP Basic), per-address rate limit, audit."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest

from readingroom.governance.login import INVALID, LOCKED
from readingroom.governance.users import create_token, get_user
from tests.governance.auth_support import (
    PASSWORD,
    add_user,
    audits,
    frozen_clock,
    login,
    second_client,
    user_row,
    web_client,
)


@pytest.fixture()
def client(rt):
    rt.settings.login_max_failures = 3
    rt.settings.login_lockout_minutes = 10
    rt.settings.login_rate_per_minute = 1000
    add_user(rt, "reader")
    return web_client(rt)


def basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def test_failures_in_a_row_lock_the_account_until_the_lock_expires(rt, client) -> None:
    with frozen_clock() as clock:
        assert [login(client, "reader", "wrong").status_code for _ in range(2)] == [401, 401]
        third = login(client, "reader", "wrong")
        assert third.status_code == 423 and third.json()["detail"] == LOCKED
        right = login(client, "reader")  # even the right password, so the lock is no oracle
        assert right.status_code == 423 and right.json()["detail"] == LOCKED
        assert "rr_session" not in client.cookies
        lockouts = audits(rt, "auth.lockout")
        assert len(lockouts) == 1 and lockouts[0].flagged and lockouts[0].actor == "reader"
        assert len(audits(rt, "auth.login", "failure")) == 4
        clock.advance(timedelta(minutes=10, seconds=1))
        assert login(client, "reader").status_code == 200
        assert user_row(rt, "reader").failed_logins == 0


def test_a_success_resets_the_count(rt, client) -> None:
    for _ in range(2):
        assert login(client, "reader", "wrong").status_code == 401
    assert login(client, "reader").status_code == 200
    for _ in range(2):
        assert login(second_client(client), "reader", "wrong").status_code == 401
    assert login(second_client(client), "reader").status_code == 200


def test_unknown_users_look_like_wrong_passwords(rt, client) -> None:
    answers = [login(client, "nobody", "wrong") for _ in range(5)]
    assert {(r.status_code, r.json()["detail"]) for r in answers} == {(401, INVALID)}
    assert login(client, "reader", "wrong").json()["detail"] == INVALID
    unknown = audits(rt, "auth.login", "failure")
    assert unknown[0].actor == "nobody" and unknown[0].reason == "unknown user"


def test_basic_failures_count_and_a_locked_account_refuses_basic(rt, client) -> None:
    for _ in range(3):
        r = client.get("/api/v1/me", headers=basic("reader", "wrong"))
        assert r.status_code == 401
    assert r.json()["detail"] == LOCKED
    assert client.get("/api/v1/me", headers=basic("reader", PASSWORD)).status_code == 401
    assert login(client, "reader").status_code == 423
    assert [a.detail["method"] for a in audits(rt, "auth.lockout")] == ["basic"]


def test_an_administrator_can_lift_a_lockout(rt, client) -> None:
    add_user(rt, "boss", role="admin")
    with rt.db.session() as s:
        _, token = create_token(s, get_user(s, "boss"))
    for _ in range(3):
        login(client, "reader", "wrong")
    assert login(client, "reader").status_code == 423
    admin = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/users/nobody/unlock", headers=admin).status_code == 404
    assert client.post("/api/v1/users/reader/unlock", headers=admin).status_code == 204
    assert audits(rt, "auth.unlock")[0].resource_id == "reader"
    assert login(client, "reader").status_code == 200
    # not for everyone
    plain = second_client(client)
    csrf = plain.post("/api/v1/auth/login", json={"username": "reader", "password": PASSWORD}).json()["csrf_token"]
    assert plain.post("/api/v1/users/boss/unlock", headers={"X-CSRF-Token": csrf}).status_code == 403


def test_rate_limit_per_client_address(rt, client) -> None:
    rt.settings.login_rate_per_minute = 4
    for name in ("a", "b", "c", "d"):  # spraying several accounts, none of them locks
        assert login(client, name, "wrong").status_code == 401
    limited = login(client, "reader")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "too many sign-in attempts" in limited.json()["detail"]
    assert "rr_session" not in client.cookies
    basic_limited = client.get("/api/v1/me", headers=basic("reader", "wrong"))
    assert basic_limited.status_code == 429 and basic_limited.headers["retry-after"]
    assert user_row(rt, "reader").failed_logins == 0  # refused before the password was even checked


def test_failed_basic_attempts_use_up_the_rate_limit(rt, client) -> None:
    rt.settings.login_rate_per_minute = 3
    for _ in range(3):
        assert client.get("/api/v1/me", headers=basic("nobody", "wrong")).status_code == 401
    assert client.get("/api/v1/me", headers=basic("nobody", "wrong")).status_code == 429
    assert login(client, "reader").status_code == 429


def test_accounts_with_a_second_factor_cannot_use_basic(rt, client) -> None:
    rt.settings.mfa_required_roles = ["radiologist"]
    r = client.get("/api/v1/me", headers=basic("reader", PASSWORD))
    assert r.status_code == 401 and "second factor" in r.json()["detail"]
    rt.settings.mfa_required_roles = []
    assert client.get("/api/v1/me", headers=basic("reader", PASSWORD)).status_code == 200


def test_cli_unlocks_and_signs_out(rt, client) -> None:
    from typer.testing import CliRunner

    from readingroom.cli import app

    def cli(*args: str):
        env = {"READINGROOM_DATABASE_URL": rt.settings.database_url or ""}
        return CliRunner().invoke(app, [*args, "--data-dir", str(rt.settings.data_dir)], env=env)

    browser = second_client(client)
    assert login(browser, "reader").status_code == 200
    for _ in range(3):
        login(client, "reader", "wrong")
    assert login(client, "reader").status_code == 423
    assert cli("user", "unlock", "reader").exit_code == 0
    assert login(client, "reader").status_code == 200
    signed_out = cli("user", "sign-out", "reader")
    assert signed_out.exit_code == 0 and "2 session(s) ended" in signed_out.output
    assert browser.get("/api/v1/me").status_code == 401
    assert cli("user", "unlock", "ghost").exit_code == 1
