"""Single sign-on against a real OpenID Provider (panva/oidc-provider on 127.0.0.1), through real servers.

The browser is httpx following the redirects and submitting the provider's
sign-in and consent forms; ReadingRoom's Authlib client does discovery, PKCE,
the code exchange and the ID token check against the provider's keys.
"""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import httpx
import pytest
from sqlalchemy import select

from readingroom.governance.models import AuditRecord, User
from readingroom.governance.users import create_user
from tests.governance.auth_support import web_client
from tests.support.oidc import CLIENT_ID, CLIENT_SECRET, start_provider, walk_to_callback
from tests.support.servers import free_port


@pytest.fixture(scope="module")
def sso(server_factory, tmp_path_factory):
    provider_port, open_port, strict_port = free_port(), free_port(), free_port()
    provider = start_provider(provider_port, [f"http://127.0.0.1:{p}/auth/oidc/callback"
                                              for p in (open_port, strict_port)],
                              tmp_path_factory.mktemp("oidc"))
    common = {"oidc_issuer": provider.issuer, "oidc_client_id": CLIENT_ID, "oidc_client_secret": CLIENT_SECRET,
              "oidc_scopes": "openid email profile roles", "oidc_role_claim": "roles",
              "session_cookie_secure": False}
    try:
        open_server = server_factory(port=open_port, oidc_auto_create=True,
                                     oidc_default_role="referring_clinician", **common)
        strict_server = server_factory(port=strict_port, oidc_auto_create=False, mfa_required_roles=["admin"],
                                       **common)
        yield SimpleNamespace(provider=provider, open=open_server, strict=strict_server)
    finally:
        provider.stop()


def _users(server, **where) -> list[User]:
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            query = select(User)
            for column, value in where.items():
                query = query.where(getattr(User, column) == value)
            return list(s.scalars(query))
    finally:
        rt.close()


def _audits(server, action: str) -> list[AuditRecord]:
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.id)))
    finally:
        rt.close()


def _sign_in(server, account: str, next_path: str = "/api/v1/me") -> tuple[httpx.Client, httpx.Response]:
    browser = httpx.Client(timeout=30)
    callback = walk_to_callback(browser, f"{server.base_url}/auth/oidc/login?next={next_path}", account)
    return browser, browser.get(callback)


def test_first_sign_on_creates_the_account_with_the_role_claim(sso) -> None:
    browser, done = _sign_in(sso.open, "dr.sso")
    assert done.status_code == 303 and done.headers["location"] == "/api/v1/me", done.text
    assert "rr_session" in browser.cookies
    me = browser.get(f"{sso.open.base_url}/api/v1/me")
    assert me.status_code == 200 and me.json()["username"] == "dr.sso" and me.json()["role"] == "radiologist"
    session = browser.get(f"{sso.open.base_url}/api/v1/auth/session").json()
    assert session["auth_method"] == "oidc" and session["mfa"] == "off"
    [user] = _users(sso.open, oidc_subject="dr.sso")
    assert user.oidc_issuer == sso.provider.issuer and user.email == "dr.sso@hospital.example"
    assert [a.detail["via"] for a in _audits(sso.open, "users.create")] == ["oidc"]
    # the next sign-on finds the same account by (issuer, subject)
    again, done = _sign_in(sso.open, "dr.sso")
    assert again.get(f"{sso.open.base_url}/api/v1/me").json()["username"] == "dr.sso"
    assert len(_users(sso.open, oidc_subject="dr.sso")) == 1
    logins = [a for a in _audits(sso.open, "auth.login") if a.outcome == "success"]
    assert [a.detail["method"] for a in logins][-2:] == ["oidc", "oidc"]


def test_links_an_existing_account_by_verified_email_only_once(sso) -> None:
    rt = sso.open.runtime()
    with rt.db.session() as s:
        create_user(s, "existing", password="a long local password", role="consultant",
                    email="existing@hospital.example")
    rt.close()
    browser, done = _sign_in(sso.open, "linked.by.email")
    assert done.status_code == 303
    assert browser.get(f"{sso.open.base_url}/api/v1/me").json()["username"] == "existing"
    [linked] = _users(sso.open, username="existing")
    assert linked.oidc_subject == "linked.by.email"
    # another identity with the same verified email may not take the account over
    intruder, refused = _sign_in(sso.open, "second.identity")
    assert refused.status_code == 403 and "linked to another identity" in refused.text
    assert "rr_session" not in intruder.cookies
    # an unverified email links nothing: auto-creation makes a separate account
    other, done = _sign_in(sso.open, "unverified.email")
    assert other.get(f"{sso.open.base_url}/api/v1/me").json()["username"] == "nobody-here"


def _with_query(url: str, **changes: str) -> str:
    parts = urlparse(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunparse(parts._replace(query=urlencode(query)))


def test_a_tampered_state_is_refused(sso) -> None:
    browser = httpx.Client(timeout=30)
    callback = walk_to_callback(browser, f"{sso.open.base_url}/auth/oidc/login", "dr.sso")
    tampered = browser.get(_with_query(callback, state="attacker-chosen-state"))
    assert tampered.status_code == 400 and "not valid" in tampered.text
    assert "rr_session" not in browser.cookies
    assert browser.get(f"{sso.open.base_url}/api/v1/me").status_code == 401
    failures = [a for a in _audits(sso.open, "auth.login") if a.outcome == "failure"]
    assert failures and failures[-1].detail["method"] == "oidc"
    # a genuine callback reaching a browser that did not start the flow is refused too
    stranger = httpx.Client(timeout=30)
    assert stranger.get(callback).status_code == 400 and "rr_session" not in stranger.cookies


def test_a_forged_code_is_refused(sso) -> None:
    browser = httpx.Client(timeout=30)
    callback = walk_to_callback(browser, f"{sso.open.base_url}/auth/oidc/login", "dr.sso")
    forged = browser.get(_with_query(callback, code="forged-code"))
    assert forged.status_code == 400 and "rr_session" not in browser.cookies


def test_unknown_identity_is_refused_without_auto_creation(sso) -> None:
    browser, refused = _sign_in(sso.strict, "dr.sso")
    assert refused.status_code == 403 and "no ReadingRoom account" in refused.text
    assert "rr_session" not in browser.cookies
    assert _users(sso.strict, oidc_subject="dr.sso") == []


def test_role_claim_and_a_required_second_factor(sso) -> None:
    rt = sso.strict.runtime()
    with rt.db.session() as s:
        create_user(s, "mfa.user", role="radiologist")
    rt.close()
    browser, done = _sign_in(sso.strict, "mfa.user")
    assert done.status_code == 303 and done.headers["location"] == "/account"  # must enrol first
    [user] = _users(sso.strict, username="mfa.user")
    assert user.role == "admin" and user.oidc_subject == "mfa.user"  # linked by preferred_username
    assert browser.get(f"{sso.strict.base_url}/api/v1/me").status_code == 403
    session = browser.get(f"{sso.strict.base_url}/api/v1/auth/session").json()
    assert session["mfa"] == "enroll" and session["auth_method"] == "oidc"
    assert "Your role requires an authenticator app" in browser.get(f"{sso.strict.base_url}/account").text
    assert _audits(sso.strict, "users.role_change")[-1].detail == {"from": "radiologist", "to": "admin",
                                                                    "claim": "roles"}


def test_login_page_offers_single_sign_on_only_when_configured(sso, rt) -> None:
    assert "Sign in with your organisation" in httpx.get(f"{sso.open.base_url}/login").text
    local = web_client(rt)
    assert "Sign in with your organisation" not in local.get("/login").text
    assert local.get("/auth/oidc/login").status_code == 404
