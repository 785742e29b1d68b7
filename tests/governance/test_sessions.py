"""Browser sessions: cookie flags, CSRF on JSON routes and forms, logout, sign-out everywhere, idle and
absolute expiry, revocation on password change and deactivation."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from readingroom.governance import sessions
from readingroom.governance.models import ApiToken, UserSession
from readingroom.governance.users import create_token
from tests.governance.auth_support import (
    PASSWORD,
    add_user,
    audits,
    frozen_clock,
    login,
    second_client,
    signed_in,
    web_client,
)


@pytest.fixture()
def client(rt):
    rt.settings.login_rate_per_minute = 1000
    add_user(rt, "reader")
    return web_client(rt)


def _set_cookie(response) -> str:
    return next(v for v in response.headers.get_list("set-cookie") if v.startswith("rr_session="))


def _token_count(rt) -> int:
    with rt.db.read_session() as s:
        return s.scalar(select(func.count()).select_from(ApiToken))


def _form_csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_login_sets_a_hardened_cookie_whose_secret_is_not_stored(rt, client) -> None:
    r = login(client, "reader")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["username"] == "reader" and body["mfa"] == "off" and body["csrf_token"]
    assert r.headers["cache-control"] == "no-store"
    cookie = _set_cookie(r)
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path=/", "samesite=lax", "secure"} <= flags
    secret = cookie.split(";")[0].split("=", 1)[1]
    with rt.db.read_session() as s:
        hashes = list(s.scalars(select(UserSession.token_hash)))
    assert hashes == [hashlib.sha256(secret.encode()).hexdigest()]
    me = client.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["username"] == "reader"
    assert [a.outcome for a in audits(rt, "auth.login")] == ["success"]


def test_secure_flag_can_be_turned_off_for_plain_http_deployments(rt, client) -> None:
    rt.settings.session_cookie_secure = False
    flags = {p.strip().lower() for p in _set_cookie(login(client, "reader")).split(";")[1:]}
    assert "secure" not in flags and "httponly" in flags


def test_json_route_needs_the_csrf_token_with_the_cookie(rt, client) -> None:
    csrf = signed_in(client, "reader")
    missing = client.post("/api/v1/tokens", json={"name": "x"})
    assert missing.status_code == 403 and "CSRF" in missing.json()["detail"]
    wrong = client.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": "not-it"})
    assert wrong.status_code == 403
    assert _token_count(rt) == 0
    right = client.post("/api/v1/tokens", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
    assert right.status_code == 201 and _token_count(rt) == 1
    # reads need no token; a bearer request is not ambient, so it needs none either
    assert client.get("/api/v1/tokens").status_code == 200
    bearer = {"Authorization": f"Bearer {right.json()['token']}"}
    assert client.post("/api/v1/tokens", json={"name": "y"}, headers=bearer).status_code == 201


def test_csrf_refusal_on_delete_leaves_the_session_alive(rt, client) -> None:
    signed_in(client, "reader")
    session_id = client.get("/api/v1/auth/session").json()["session_id"]
    assert client.delete(f"/api/v1/auth/sessions/{session_id}").status_code == 403
    assert client.get("/api/v1/me").status_code == 200


def test_account_form_needs_the_csrf_field(rt, client) -> None:
    signed_in(client, "reader")
    other = second_client(client)
    signed_in(other, "reader")
    page = client.get("/account")
    assert page.status_code == 200 and "Sign out other sessions" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    refused = client.post("/account/sessions/revoke-others", data={"csrf_token": "forged"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    assert other.get("/api/v1/me").status_code == 200
    done = client.post("/account/sessions/revoke-others", data={"csrf_token": _form_csrf(page.text)},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/account?done=signed-out-others"
    assert other.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me").status_code == 200


def test_login_form_uses_a_double_submit_cookie(rt, client) -> None:
    forged = client.post("/login", data={"username": "reader", "password": PASSWORD, "csrf_token": "x" * 40},
                         follow_redirects=False)
    assert forged.status_code == 403 and "rr_session" not in client.cookies
    form = client.get("/login?next=/api/v1/me")
    assert form.status_code == 200 and 'name="password"' in form.text
    token = _form_csrf(form.text)
    wrong = client.post("/login", data={"username": "reader", "password": "nope", "csrf_token": token,
                                        "next": "/api/v1/me"}, follow_redirects=False)
    assert wrong.status_code == 401 and "Invalid username or password" in wrong.text
    ok = client.post("/login", data={"username": "reader", "password": PASSWORD, "csrf_token": token,
                                     "next": "/api/v1/me"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/api/v1/me"
    assert client.get("/api/v1/me").json()["username"] == "reader"
    # the destination must stay on this server
    token = _form_csrf(second_client(client).get("/login").text)
    evil = second_client(client)
    evil.cookies.set("rr_login_csrf", token)
    away = evil.post("/login", data={"username": "reader", "password": PASSWORD, "csrf_token": token,
                                     "next": "//evil.example/x"}, follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"] == "/account"


def test_logout_ends_the_session_and_clears_the_cookie(rt, client) -> None:
    csrf = signed_in(client, "reader")
    assert client.post("/api/v1/auth/logout").status_code == 403  # CSRF applies to logout too
    r = client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204 and 'rr_session=""' in r.headers["set-cookie"]
    assert client.get("/api/v1/me").status_code == 401
    assert audits(rt, "auth.session_revoke")


def test_sign_out_everywhere_and_one_session(rt, client) -> None:
    csrf = signed_in(client, "reader")
    laptop, tablet = second_client(client), second_client(client)
    signed_in(laptop, "reader")
    signed_in(tablet, "reader")
    listed = client.get("/api/v1/auth/sessions").json()
    assert len(listed) == 3 and sum(s["current"] for s in listed) == 1
    laptop_id = laptop.get("/api/v1/auth/session").json()["session_id"]
    assert client.delete(f"/api/v1/auth/sessions/{laptop_id}", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert laptop.get("/api/v1/me").status_code == 401
    assert client.delete(f"/api/v1/auth/sessions/{laptop_id}", headers={"X-CSRF-Token": csrf}).status_code == 404
    r = client.delete("/api/v1/auth/sessions", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json() == {"revoked": 1}
    assert tablet.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me").status_code == 200
    # another user's session cannot be ended
    add_user(rt, "someone")
    stranger = second_client(client)
    signed_in(stranger, "someone")
    their_id = stranger.get("/api/v1/auth/session").json()["session_id"]
    assert client.delete(f"/api/v1/auth/sessions/{their_id}", headers={"X-CSRF-Token": csrf}).status_code == 404
    assert stranger.get("/api/v1/me").status_code == 200


def test_idle_timeout_absolute_lifetime_and_cheap_touch(rt, client) -> None:
    rt.settings.session_idle_minutes = 30
    rt.settings.session_hours = 2
    with frozen_clock() as clock:
        signed_in(client, "reader")
        with rt.db.read_session() as s:
            first_seen = s.scalars(select(UserSession.last_seen_at)).one()
        clock.advance(20)
        sessions.forget_cached_sessions()
        assert client.get("/api/v1/me").status_code == 200
        with rt.db.read_session() as s:
            assert s.scalars(select(UserSession.last_seen_at)).one() == first_seen  # not written within a minute
        for _ in range(4):  # active every 25 minutes: alive past the idle limit, until the absolute end
            clock.advance(timedelta(minutes=25))
            sessions.forget_cached_sessions()
            assert client.get("/api/v1/me").status_code == 200
        with rt.db.read_session() as s:
            assert s.scalars(select(UserSession.last_seen_at)).one() > first_seen
        clock.advance(timedelta(minutes=25))  # 2 h 5 min after sign-in
        ended = client.get("/api/v1/me")
        assert ended.status_code == 401 and "sign in again" in ended.json()["detail"]
        signed_in(client, "reader")
        clock.advance(timedelta(minutes=31))
        assert client.get("/api/v1/me").status_code == 401


def test_password_change_ends_other_sessions(rt, client) -> None:
    csrf = signed_in(client, "reader")
    other = second_client(client)
    signed_in(other, "reader")
    short = client.post("/api/v1/auth/password", headers={"X-CSRF-Token": csrf},
                        json={"current_password": PASSWORD, "new_password": "short"})
    assert short.status_code == 422 and "at least" in short.json()["detail"]
    wrong = client.post("/api/v1/auth/password", headers={"X-CSRF-Token": csrf},
                        json={"current_password": "nope", "new_password": "a much longer passphrase"})
    assert wrong.status_code == 422 and audits(rt, "auth.password_change", "failure")
    assert other.get("/api/v1/me").status_code == 200
    r = client.post("/api/v1/auth/password", headers={"X-CSRF-Token": csrf},
                    json={"current_password": PASSWORD, "new_password": "a much longer passphrase"})
    assert r.status_code == 200 and r.json() == {"revoked": 1}
    assert other.get("/api/v1/me").status_code == 401
    assert client.get("/api/v1/me").status_code == 200
    assert login(second_client(client), "reader").status_code == 401
    assert login(second_client(client), "reader", "a much longer passphrase").status_code == 200


def test_deactivating_the_account_ends_its_sessions_at_once(rt, client) -> None:
    add_user(rt, "boss", role="admin")
    with rt.db.session() as s:
        from readingroom.governance.users import get_user

        _, admin_token = create_token(s, get_user(s, "boss"))
    signed_in(client, "reader")
    assert client.get("/api/v1/me").status_code == 200  # now remembered by the session cache
    r = second_client(client).patch("/api/v1/users/reader", json={"active": False},
                                    headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200, r.text
    assert client.get("/api/v1/me").status_code == 401
    assert login(second_client(client), "reader").status_code == 401


def test_unknown_or_garbage_cookie_is_refused(rt, client) -> None:
    client.cookies.set("rr_session", "x" * 500)
    assert client.get("/api/v1/me").status_code == 401
    client.cookies.set("rr_session", "made-up")
    r = client.get("/api/v1/me")
    assert r.status_code == 401 and "sign in again" in r.json()["detail"]
    assert client.get("/account", follow_redirects=False).headers["location"] == "/login?next=/account"


def test_ended_sessions_are_pruned_after_a_week(rt, client) -> None:
    with frozen_clock() as clock:
        csrf = signed_in(client, "reader")
        assert client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        clock.advance(timedelta(days=6))
        assert sessions.prune_ended_sessions(rt) == 0
        clock.advance(timedelta(days=2))
        signed_in(client, "reader")
        assert sessions.prune_ended_sessions(rt) == 1
        with rt.db.read_session() as s:
            assert s.scalar(select(func.count()).select_from(UserSession)) == 1
        assert client.get("/api/v1/me").status_code == 200
