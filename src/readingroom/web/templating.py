"""Rendering of the server-side pages, with the security headers every page carries.

Templates autoescape everything. The Content-Security-Policy allows nothing
but this server's own stylesheet and images (and ``data:`` images for the
enrolment QR code): no scripts at all, no framing (clickjacking), and forms
may only post back here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    """A page from ``templates/`` with the security headers."""
    response = templates.TemplateResponse(request, name, context or {}, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def error_page(request: Request, status_code: int, title: str, message: str,
               headers: dict[str, str] | None = None) -> HTMLResponse:
    """A plain error page that says what went wrong and what to do."""
    response = render(request, "error.html", {"title": title, "message": message}, status_code=status_code)
    if headers:
        response.headers.update(headers)
    return response


def safe_next(target: str | None, default: str = "/account") -> str:
    """A post-sign-in destination on this server only (no open redirect to another site)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")) or any(
            c in target for c in "\r\n\\"):
        return default
    return target
