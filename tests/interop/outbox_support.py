"""Shared by the outbox tests: the reading desk with an outbox, a real MLLP receiver (down until started), helpers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import hl7
import pytest
from sqlalchemy import select

from readingroom.interop import outbox, results
from readingroom.interop.models import OutboxItem
from readingroom.runtime import Runtime
from tests.collab.report_fixtures import Desk, make_desk
from tests.support.hl7_receiver import Hl7Receiver, hl7_receiver

DEST = "/api/v1/interop/destinations"


@pytest.fixture(name="desk")
def desk_fixture(network: Any, tmp_path: Path, clock: Any) -> Desk:
    results.register()  # the app imports it already; explicit so the test does not depend on import order
    return make_desk(network, tmp_path, clock)


@pytest.fixture(name="receiver")
def receiver_fixture() -> Iterator[Hl7Receiver]:
    with hl7_receiver(start=False) as r:
        yield r


def destination(desk: Desk, receiver: Hl7Receiver, **extra: Any) -> dict[str, Any]:
    body = {"name": "ris", "kind": "hl7", "host": "127.0.0.1", "port": receiver.port,
            "options": {"receiving_application": "RIS", "receiving_facility": "HUB", "connect_timeout": 2,
                        "ack_timeout": 5}, **extra}
    r = desk.c.post(DEST, headers=desk.h["boss"], json=body)
    assert r.status_code == 201, r.text
    return r.json()


def sign_all(desk: Desk) -> None:
    """Preliminary, final, then an addendum: three signed versions, three ORU messages queued."""
    draft = desk.put({"findings": "Small lacune.", "impression": "No acute abnormality."},
                     desk.get().headers["ETag"]).json()
    prelim = desk.sign("preliminary", draft["etag"]).json()
    final = desk.sign("final", prelim["etag"]).json()
    desk.addendum("Compared with outside MRI: unchanged.", final["etag"])


def sign_final(desk: Desk) -> dict[str, Any]:
    draft = desk.put({"findings": "Normal.", "impression": "Normal."}, desk.get().headers["ETag"]).json()
    return desk.sign("final", draft["etag"]).json()


def items(rt: Runtime) -> list[OutboxItem]:
    with rt.db.read_session() as s:
        return list(s.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def health(desk: Desk, name: str = "ris") -> dict[str, Any]:
    r = desk.c.get(f"{DEST}/{name}/health", headers=desk.h["boss"])
    assert r.status_code == 200, r.text
    return r.json()


def drain(desk: Desk, rounds: int = 5) -> int:
    """Run delivery until nothing is pending (moving the clock past each back-off)."""
    total = 0
    for _ in range(rounds):
        total += outbox.deliver_due(desk.rt)
        if not any(i.state == "pending" for i in items(desk.rt)):
            break
        desk.clock.advance(timedelta(hours=1))
    return total


def status(message: str) -> str:
    return str(hl7.parse(message).segment("OBR")[25])

