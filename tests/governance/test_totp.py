"""TOTP second factor: enrolment, enforcement at sign-in, required roles, replay, disabling, reset, the form."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest

from readingroom.governance.users import create_token, get_user
from tests.governance.auth_support import (
    add_user,
    audits,
    code_for,
    frozen_clock,
    login,
    second_client,
    signed_in,
    user_row,
    web_client,
)


@pytest.fixture()
def client(rt):
    rt.settings.login_rate_per_minute = 1000
    rt.settings.login_max_failures = 3
    add_user(rt, "reader")
    with frozen_clock() as clock:
        c = web_client(rt)
        c.clock = clock
        yield c


def enroll(client, csrf: str) -> str:
    """Enrol and confirm a second factor for the signed-in user; returns the secret."""
    r = client.post("/api/v1/auth/totp/enroll", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    r = client.post("/api/v1/auth/totp/confirm", json={"otp": code_for(secret)}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204, r.text
    return secret


def test_enrolment_needs_a_confirming_code(rt, client) -> None:
    csrf = signed_in(client, "reader")
    r = client.post("/api/v1/auth/totp/enroll", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    secret, uri = r.json()["secret"], urlparse(r.json()["otpauth_uri"])
    assert uri.scheme == "otpauth" and uri.netloc == "totp" and uri.path == "/ReadingRoom:reader"
    assert parse_qs(uri.query)["secret"] == [secret]
    wrong = client.post("/api/v1/auth/totp/confirm", json={"otp": "000000"}, headers={"X-CSRF-Token": csrf})
    assert wrong.status_code == 422 and not user_row(rt, "reader").totp_enabled
    ok = client.post("/api/v1/auth/totp/confirm", json={"otp": code_for(secret)}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 204 and user_row(rt, "reader").totp_enabled
    again = client.post("/api/v1/auth/totp/enroll", headers={"X-CSRF-Token": csrf})
    assert again.status_code == 409  # a stolen session cannot swap the phone
    assert [a.detail["step"] for a in audits(rt, "auth.totp_enroll")] == ["begin", "confirm", "confirm"]
    assert client.get("/api/v1/me").status_code == 200


def test_sign_in_owes_the_code_and_codes_cannot_be_replayed(rt, client) -> None:
    secret = enroll(client, signed_in(client, "reader"))
    browser = second_client(client)
    r = login(browser, "reader")
    assert r.status_code == 200 and r.json()["mfa"] == "verify"
    csrf = r.json()["csrf_token"]
    blocked = browser.get("/api/v1/me")
    assert blocked.status_code == 403 and "one-time code" in blocked.json()["detail"]
    assert browser.post("/api/v1/tokens", json={}, headers={"X-CSRF-Token": csrf}).status_code == 403
    assert browser.get("/api/v1/auth/session").json()["mfa"] == "verify"
    assert browser.post("/api/v1/auth/totp/verify", json={"otp": "123456"},
                        headers={"X-CSRF-Token": csrf}).status_code == 401
    client.clock.advance(30)
    code = code_for(secret)
    assert browser.post("/api/v1/auth/totp/verify", json={"otp": code},
                        headers={"X-CSRF-Token": csrf}).status_code == 204
    assert browser.get("/api/v1/me").status_code == 200
    assert browser.get("/api/v1/auth/session").json()["mfa"] == "passed"
    replay = login(second_client(client), "reader", otp=code)
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    client.clock.advance(30)
    fresh = login(second_client(client), "reader", otp=code_for(secret))
    assert fresh.status_code == 200 and fresh.json()["mfa"] == "passed"
    # a code older than the drift window is refused
    client.clock.advance(30)
    assert login(second_client(client), "reader", otp=code_for(secret, -3)).status_code == 401


def test_wrong_codes_count_towards_the_lockout(rt, client) -> None:
    secret = enroll(client, signed_in(client, "reader"))
    for _ in range(2):
        assert login(second_client(client), "reader", otp="111111").status_code == 401
    browser = second_client(client)
    csrf = login(browser, "reader").json()["csrf_token"]  # right password: the count is not reset
    locked = browser.post("/api/v1/auth/totp/verify", json={"otp": "222222"}, headers={"X-CSRF-Token": csrf})
    assert locked.status_code == 423
    client.clock.advance(30)
    still = browser.post("/api/v1/auth/totp/verify", json={"otp": code_for(secret)},
                         headers={"X-CSRF-Token": csrf})
    assert still.status_code == 423
    assert audits(rt, "auth.lockout")


def test_required_role_must_enrol_before_anything_else(rt, client) -> None:
    rt.settings.mfa_required_roles = ["admin"]
    add_user(rt, "boss", role="admin")
    r = login(client, "boss")
    assert r.status_code == 200 and r.json()["mfa"] == "enroll"
    csrf = r.json()["csrf_token"]
    refused = client.get("/api/v1/me")
    assert refused.status_code == 403 and "enrol" in refused.json()["detail"]
    assert client.get("/api/v1/auth/sessions").status_code == 403
    secret = enroll(client, csrf)
    assert client.get("/api/v1/me").json()["role"] == "admin"
    cannot = client.request("DELETE", "/api/v1/auth/totp", json={"otp": code_for(secret, 1)},
                            headers={"X-CSRF-Token": csrf})
    assert cannot.status_code == 409 and "requires" in cannot.json()["detail"]


def test_disable_needs_a_current_code(rt, client) -> None:
    csrf = signed_in(client, "reader")
    secret = enroll(client, csrf)
    client.clock.advance(30)
    wrong = client.request("DELETE", "/api/v1/auth/totp", json={"otp": "000000"}, headers={"X-CSRF-Token": csrf})
    assert wrong.status_code == 403 and user_row(rt, "reader").totp_enabled
    assert user_row(rt, "reader").failed_logins == 1
    ok = client.request("DELETE", "/api/v1/auth/totp", json={"otp": code_for(secret)},
                        headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 204 and not user_row(rt, "reader").totp_enabled
    assert audits(rt, "auth.totp_disable")
    assert login(second_client(client), "reader").json()["mfa"] == "off"


def test_admin_reset_of_a_lost_factor_ends_the_sessions(rt, client) -> None:
    enroll(client, signed_in(client, "reader"))
    add_user(rt, "boss", role="admin")
    with rt.db.session() as s:
        _, token = create_token(s, get_user(s, "boss"))
    r = second_client(client).post("/api/v1/users/reader/reset-second-factor",
                                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 204
    assert client.get("/api/v1/me").status_code == 401
    assert not user_row(rt, "reader").totp_enabled
    assert login(second_client(client), "reader").json()["mfa"] == "off"


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def test_account_page_enrols_and_verifies_with_forms(rt, client) -> None:
    signed_in(client, "reader")
    page = client.get("/account")
    assert "Set up an authenticator app" in page.text
    shown = client.post("/account/totp/enroll", data={"csrf_token": _csrf(page.text)})
    assert shown.status_code == 200 and 'src="data:image/svg+xml' in shown.text
    secret = re.search(r'<code class="secret">([A-Z2-7]+)</code>', shown.text).group(1)
    forged = client.post("/account/totp/confirm", data={"otp": code_for(secret), "csrf_token": "nope"})
    assert forged.status_code == 403 and not user_row(rt, "reader").totp_enabled
    done = client.post("/account/totp/confirm", data={"otp": code_for(secret), "csrf_token": _csrf(shown.text)},
                       follow_redirects=False)
    assert done.status_code == 303 and user_row(rt, "reader").totp_enabled
    # a new browser signs in with the form and is asked for the code on the account page
    browser = second_client(client)
    form = browser.get("/login")
    r = browser.post("/login", data={"username": "reader", "password": "correct horse battery staple",
                                     "csrf_token": _csrf(form.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/account"
    pending = browser.get("/account")
    assert "Enter your one-time code" in pending.text and "Sign out other sessions" not in pending.text
    client.clock.advance(30)
    ok = browser.post("/account/totp/verify", data={"otp": code_for(secret), "csrf_token": _csrf(pending.text)},
                      follow_redirects=False)
    assert ok.status_code == 303
    assert "Sign out other sessions" in browser.get("/account").text
