"""A real OpenID Provider for the single sign-on tests, and a browser-like walk through its pages.

The provider is panva/oidc-provider (``tests/support/oidc_provider``, pinned in
its package-lock.json; ``scripts/test`` runs ``npm ci`` there). Nothing of the
client side is mocked: ReadingRoom's Authlib client talks to it over HTTP like
it would to Keycloak.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx

from tests.support.tools import missing

PROVIDER_DIR = Path(__file__).parent / "oidc_provider"
CLIENT_ID = "readingroom"
CLIENT_SECRET = "readingroom-test-secret"


@dataclass
class Provider:
    issuer: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_provider(port: int, redirect_uris: list[str], log_dir: Path, timeout: float = 30) -> Provider:
    """Run the provider on 127.0.0.1:``port`` for these ReadingRoom callbacks; wait until discovery answers."""
    node = shutil.which("node")
    if node is None:
        missing("node not installed (apt-get install nodejs npm): the OIDC tests run a real OpenID Provider")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        missing(f"run `npm ci` in {PROVIDER_DIR} (scripts/test does it) for the OIDC tests' provider")
    log_path = log_dir / f"oidc-provider-{port}.log"
    env = {**os.environ, "PORT": str(port), "REDIRECT_URIS": ",".join(redirect_uris), "CLIENT_ID": CLIENT_ID,
           "CLIENT_SECRET": CLIENT_SECRET}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(node), "provider.js"], cwd=PROVIDER_DIR, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    provider = Provider(issuer=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"OpenID Provider exited with {process.returncode}:\n{provider.log()}")
        try:
            if httpx.get(f"{provider.issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                return provider
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    provider.stop()
    raise RuntimeError(f"OpenID Provider did not start in {timeout}s:\n{provider.log()}")


class _Forms(HTMLParser):
    """The POST forms of a page: action and their hidden inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and values.get("method", "").lower() == "post":
            self.forms.append((values.get("action", ""), {}))
        elif tag == "input" and self.forms and values.get("type") == "hidden":
            self.forms[-1][1][values.get("name", "")] = values.get("value", "")


def _post_form(client: httpx.Client, page: httpx.Response, fields: dict[str, str]) -> httpx.Response:
    parser = _Forms()
    parser.feed(page.text)
    assert parser.forms, f"no form on {page.url}: {page.text[:500]}"
    action, hidden = parser.forms[0]
    return client.post(urljoin(str(page.url), action), data={**hidden, **fields})


def walk_to_callback(client: httpx.Client, login_url: str, account: str, max_steps: int = 20) -> str:
    """Start single sign-on at ReadingRoom's ``login_url`` and go through the provider's sign-in and consent
    pages like a browser; returns the URL of ReadingRoom's callback (not yet requested)."""
    response = client.get(login_url)
    for _ in range(max_steps):
        if response.is_redirect:
            target = urljoin(str(response.url), response.headers["location"])
            if "/auth/oidc/callback" in target:
                return target
            response = client.get(target)
        elif response.status_code == 200 and 'name="prompt" value="login"' in response.text:
            response = _post_form(client, response, {"login": account, "password": "any"})
        elif response.status_code == 200 and 'name="prompt" value="consent"' in response.text:
            response = _post_form(client, response, {})
        else:
            raise AssertionError(f"unexpected page {response.status_code} {response.url}: {response.text[:800]}")
    raise AssertionError("too many steps before reaching the callback")
