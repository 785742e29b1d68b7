"""Helpers of the authentication tests: an in-process app over HTTPS (so Secure cookies flow), users,
sign-in, one-time codes on the test clock, audit look-ups."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pyotp
from fastapi.testclient import TestClient
from sqlalchemy import select

from readingroom.app import create_app
from readingroom.clock import FrozenClock, set_clock, utcnow
from readingroom.governance.auth import forget_cached_credentials
from readingroom.governance.models import AuditRecord, User
from readingroom.governance.users import create_user

PASSWORD = "correct horse battery staple"


def web_client(rt: Any) -> TestClient:
    """A client of a fresh app on ``rt``, speaking HTTPS so the Secure session cookie is sent back."""
    forget_cached_credentials()
    return TestClient(create_app(rt), base_url="https://testserver")


def second_client(client: TestClient) -> TestClient:
    """Another browser on the same app (its own cookie jar)."""
    return TestClient(client.app, base_url="https://testserver")


def add_user(rt: Any, username: str, *, role: str = "radiologist", password: str | None = PASSWORD,
             **fields: Any) -> int:
    with rt.db.session() as s:
        return create_user(s, username, password=password, role=role, **fields).id


def user_row(rt: Any, username: str) -> User:
    with rt.db.read_session() as s:
        user = s.scalars(select(User).where(User.username == username)).one()
        s.expunge(user)
        return user


def login(client: TestClient, username: str, password: str = PASSWORD, otp: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"username": username, "password": password}
    if otp is not None:
        body["otp"] = otp
    return client.post("/api/v1/auth/login", json=body)


def signed_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Sign in (must succeed) and return the session's CSRF token."""
    r = login(client, username, password)
    assert r.status_code == 200, r.text
    return r.json()["csrf_token"]


def code_for(secret: str, step_offset: int = 0) -> str:
    """The one-time code of ``secret`` at the test clock's now (plus some 30-second steps)."""
    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(utcnow()) + step_offset)


def audits(rt: Any, action: str, outcome: str | None = None) -> list[AuditRecord]:
    with rt.db.read_session() as s:
        query = select(AuditRecord).where(AuditRecord.action == action)
        if outcome:
            query = query.where(AuditRecord.outcome == outcome)
        return list(s.scalars(query.order_by(AuditRecord.id)))


@contextmanager
def frozen_clock(start: datetime | None = None) -> Iterator[FrozenClock]:
    """The process clock stands still (moved with ``advance``) for the block; restored afterwards."""
    clock = FrozenClock(start or datetime(2031, 3, 4, 9, 0, 10, tzinfo=UTC))
    previous = set_clock(clock)
    try:
        yield clock
    finally:
        set_clock(previous)
