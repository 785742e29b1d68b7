"""Single sign-on with OpenID Connect (authorization code flow + PKCE), through Authlib.

Authlib does the protocol: discovery from ``<oidc_issuer>/.well-known/
openid-configuration``, the PKCE verifier (S256), ``state`` and ``nonce``, the
code exchange, and the ID token check (signature against the provider's
JWKS, refetched when the provider rotates keys; ``iss``, ``aud``, ``exp``,
``iat``, ``nonce``, ``at_hash``). ``oidc.py`` decides which account signs in.

Between the redirect to the provider and the callback, Authlib's per-flow
data (state, nonce, PKCE verifier, redirect URI) waits in a short-lived
``rr_oidc`` cookie (HttpOnly, SameSite=Lax, Path=/auth/oidc). It binds the
callback to the browser that started the flow (RFC 6749 section 10.12): a
callback whose ``state`` is not in the cookie is refused, and a user who
edits their own cookie can only break their own sign-in (nonce and PKCE
would no longer match). Nothing is kept on the server, so the callback
may reach any server process.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import warnings
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from joserfc.errors import JoseError

from readingroom.governance import audit, cookies, oidc, signin
from readingroom.governance.api import RuntimeDep
from readingroom.runtime import Runtime
from readingroom.web.templating import error_page, safe_next

with warnings.catch_warnings():
    # Authlib asks for the "httpx2" fork and falls back to httpx, the client this project ships and tests.
    # Its module adds an "always" filter on import, so ours goes in after it.
    import authlib.deprecate  # noqa: F401

    warnings.filterwarnings("ignore", message="The httpx module is deprecated")
    from authlib.integrations.base_client import OAuthError
    from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App

log = logging.getLogger(__name__)
#: Browser-facing (redirects and HTML), so not part of the REST API's OpenAPI document.
router = APIRouter(prefix="/auth/oidc", tags=["single sign-on"], include_in_schema=False)

FLOW_COOKIE = "rr_oidc"
FLOW_PATH = "/auth/oidc"
FLOW_SECONDS = 600
_MAX_COOKIE = 3800


def configured(rt: Runtime) -> bool:
    """Whether single sign-on is set up (issuer and client id)."""
    return bool(rt.settings.oidc_issuer and rt.settings.oidc_client_id)


def _issuer(rt: Runtime) -> str:
    return (rt.settings.oidc_issuer or "").rstrip("/")


def client_for(rt: Runtime) -> StarletteOAuth2App:
    """The Authlib client of this server's provider (discovery and keys are fetched once, then reused)."""

    def build() -> StarletteOAuth2App:
        settings = rt.settings
        oauth = OAuth()
        return oauth.register(
            "readingroom", client_id=settings.oidc_client_id, client_secret=settings.oidc_client_secret,
            server_metadata_url=f"{_issuer(rt)}/.well-known/openid-configuration",
            client_kwargs={"scope": settings.oidc_scopes, "code_challenge_method": "S256", "timeout": 15,
                           "token_endpoint_auth_method": "client_secret_basic" if settings.oidc_client_secret
                           else "none"})

    return rt.cached("governance.oidc-client", math.inf, build)


def _redirect_uri(rt: Runtime) -> str:
    return f"{rt.settings.base_url}{FLOW_PATH}/callback"


def _encode(flow: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(flow, separators=(",", ":")).encode()).decode()


def _decode(value: str | None) -> dict[str, Any]:
    if not value or len(value) > _MAX_COOKIE:
        return {}
    try:
        flow = json.loads(base64.urlsafe_b64decode(value.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return {}
    return flow if isinstance(flow, dict) else {}


def _unavailable(request: Request) -> Response:
    return error_page(request, 404, "Single sign-on is not set up",
                      "This server has no identity provider configured. Sign in with your username and password.")


@router.get("/login", response_class=Response)
async def oidc_login(request: Request, rt: RuntimeDep, next: str = "/account") -> Response:
    """Send the browser to the organisation's identity provider."""
    if not configured(rt):
        return _unavailable(request)
    request.scope["session"] = {}
    try:
        await _check_issuer(rt)
        response = await client_for(rt).authorize_redirect(request, _redirect_uri(rt))
    except (httpx.HTTPError, ValueError, RuntimeError) as exc:
        log.warning("identity provider unreachable or misconfigured: %s", exc)
        return error_page(request, 502, "Identity provider unavailable",
                          "The sign-in service of your organisation did not answer properly. Try again later, or "
                          "sign in with your username and password.")
    flow = {**request.scope["session"], "next": safe_next(next)}
    response.set_cookie(FLOW_COOKIE, _encode(flow), max_age=FLOW_SECONDS, path=FLOW_PATH, httponly=True,
                        samesite="lax", secure=rt.settings.session_cookie_secure)
    return response


async def _check_issuer(rt: Runtime) -> None:
    """The discovery document must name the configured issuer (OpenID Connect Discovery section 4.3)."""
    metadata = await client_for(rt).load_server_metadata()
    if str(metadata.get("issuer", "")).rstrip("/") != _issuer(rt):
        raise ValueError(f"discovery names issuer {metadata.get('issuer')!r}, expected {_issuer(rt)!r}")


async def _claims(rt: Runtime, request: Request) -> dict[str, Any]:
    """Exchange the code and return the identity's claims (validated ID token, plus UserInfo)."""
    client = client_for(rt)
    token = await client.authorize_access_token(request)
    id_claims = token.get("userinfo")
    if not id_claims:
        raise OAuthError(error="invalid_token", description="the provider returned no ID token")
    claims: dict[str, Any] = {}
    metadata = await client.load_server_metadata()
    if metadata.get("userinfo_endpoint"):
        info = await client.userinfo(token=token)
        if info.get("sub") == id_claims.get("sub"):  # OpenID Connect Core 5.3.2: else it must not be used
            claims.update(info)
    claims.update(id_claims)
    return claims


@router.get("/callback", response_class=Response)
async def oidc_callback(request: Request, rt: RuntimeDep) -> Response:
    """Where the provider sends the browser back: check everything, then open a session."""
    if not configured(rt):
        return _unavailable(request)
    flow = _decode(request.cookies.get(FLOW_COOKIE))
    request.scope["session"] = dict(flow)
    source = cookies.client_address(request)
    try:
        claims = await _claims(rt, request)
    except (OAuthError, JoseError) as exc:
        reason = getattr(exc, "description", None) or getattr(exc, "error", None) or str(exc) or type(exc).__name__
        return await _refuse(request, rt, f"the sign-in response was not valid ({reason})", source)
    except httpx.HTTPError as exc:
        log.warning("identity provider call failed: %s", exc)
        return await _refuse(request, rt, "the identity provider did not answer", source, status_code=502)
    try:
        signed = await run_in_threadpool(_sign_in, rt, claims, source, request.headers.get("user-agent", ""))
    except oidc.OidcError as exc:
        return await _refuse(request, rt, str(exc), source, status_code=403, claims=claims)
    response = RedirectResponse(safe_next(flow.get("next")) if signed.mfa_state in ("off", "passed")
                                else "/account", status_code=303)
    cookies.set_session_cookie(response, signed.secret, rt.settings)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


def _sign_in(rt: Runtime, claims: dict[str, Any], source: str, user_agent: str) -> signin.SignedIn:
    failed: oidc.OidcError | None = None
    with rt.db.session() as s:
        try:
            user = oidc.user_for_identity(s, rt.settings, claims, source=source)
        except oidc.OidcError as exc:
            failed = exc
        else:
            return signin.oidc_sign_in(s, rt.settings, user, amr=claims.get("amr"), issuer=str(claims["iss"]),
                                       source=source, user_agent=user_agent)
    raise failed  # after the commit: the refusal's audit records are kept


async def _refuse(request: Request, rt: Runtime, reason: str, source: str, *, status_code: int = 400,
                  claims: dict[str, Any] | None = None) -> Response:
    subject = str((claims or {}).get("sub") or "")
    await run_in_threadpool(audit.record_now, rt.db, actor=f"oidc:{subject}" if subject else "anonymous",
                            source=source, action="auth.login", resource_type="user", outcome="failure",
                            detail={"method": "oidc"}, reason=reason)
    response = error_page(request, status_code, "Single sign-on failed",
                          f"Sign-in through your organisation did not complete: {reason}.")
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response
