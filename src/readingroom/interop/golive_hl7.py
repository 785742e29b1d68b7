"""The HL7 part of go-live validation: an order in through our own inbound handler, a report out to the RIS.

* ``hl7-order``: a synthetic ORM^O01 for the go-live test patient goes
  through ``hl7_inbound.receive`` exactly as one from the site's RIS would
  (it must be acknowledged AA); the order it created is cancelled right
  after, so no test read stays on any worklist;
* ``hl7-report``: a synthetic ORU^R01 test report is sent over MLLP to the
  site's HL7 destination (``mllp_client``), which must answer AA.

Both are skipped, with the reason, when the peer's site has no HL7 destination.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from readingroom.archive.peers import PeerInfo
from readingroom.clock import utcnow
from readingroom.interop.models import Destination
from readingroom.runtime import Runtime

TEST_PATIENT_ID = "RR-GOLIVE-TEST"
TEST_PATIENT_NAME = "ZZTEST^GOLIVE^READINGROOM"


def _msh(kind: str, control_id: str, sending: tuple[str, str], receiving: tuple[str, str]) -> str:
    now = utcnow().strftime("%Y%m%d%H%M%S")
    return (f"MSH|^~\\&|{sending[0]}|{sending[1]}|{receiving[0]}|{receiving[1]}|{now}||{kind}|{control_id}|P|"
            "2.5.1")


def test_orm(placer: str, site_code: str) -> str:
    """A new-order ORM^O01 for the go-live test patient."""
    control = f"RRGL{uuid.uuid4().hex[:12].upper()}"
    return "\r".join([
        # as the site's RIS would send it: the site is the sending facility (MSH-4)
        _msh("ORM^O01", control, ("GOLIVE-TEST", site_code), ("READINGROOM", "READINGROOM")),
        f"PID|1||{TEST_PATIENT_ID}^^^READINGROOM-TEST||{TEST_PATIENT_NAME}||19000101|O",
        "PV1|1|O",
        f"ORC|NW|{placer}^GOLIVE|||||^^^^^R",
        f"OBR|1|{placer}^GOLIVE||GOLIVE^Go-live test^L|||||||||||||||{placer}",
    ])


def test_oru(dest: Destination) -> str:
    """A final ORU^R01 test report (clearly marked) for the site's RIS."""
    control = f"RRGL{uuid.uuid4().hex[:12].upper()}"
    options = dest.options or {}
    receiving = (str(options.get("receiving_application", "")), str(options.get("receiving_facility", "")))
    now = utcnow().strftime("%Y%m%d%H%M%S")
    return "\r".join([
        _msh("ORU^R01", control, ("READINGROOM", "READINGROOM"), receiving),
        f"PID|1||{TEST_PATIENT_ID}^^^READINGROOM-TEST||{TEST_PATIENT_NAME}||19000101|O",
        f"OBR|1|GOLIVE^GOLIVE||GOLIVE^Go-live test^L|||{now}|||||||||||||||{now}||||F",
        "OBX|1|TX|GOLIVE^Go-live test report^L||ReadingRoom go-live test message. Discard.||||||F",
    ])


def _order_step(rt: Runtime, peer: PeerInfo, site_code: str, actor: str) -> dict[str, Any]:
    from readingroom.interop import hl7_inbound, mllp_client, orders
    from readingroom.workflow.cases import Actor

    placer = f"GL{uuid.uuid4().hex[:10].upper()}"
    start = time.perf_counter()
    ack = hl7_inbound.receive(rt, test_orm(placer, site_code).encode(), peer="go-live")
    ms = (time.perf_counter() - start) * 1000
    try:
        accepted = mllp_client.parse_ack(ack).code == "AA"
    except mllp_client.MllpError:
        accepted = False
    with rt.db.session() as s:
        order = orders.find_order(s, placer_order_number=placer, placer_authority="GOLIVE")
        if order is not None:
            orders.cancel_order(s, order, "go-live validation test order", Actor(name=actor))
    if accepted and order is not None:
        return {"name": "hl7-order", "ok": True, "latency_ms": ms,
                "detail": f"test ORM^O01 accepted (AA), order {placer} created and cancelled"}
    return {"name": "hl7-order", "ok": False, "latency_ms": ms,
            "detail": f"test ORM^O01 not accepted: {ack.replace(chr(13), ' | ')[:300]}"}


def _report_step(rt: Runtime, dest: Destination) -> dict[str, Any]:
    from readingroom.interop import mllp_client

    if not dest.host or not dest.port:
        return {"name": "hl7-report", "ok": False, "detail": f"HL7 destination {dest.name!r} has no host/port"}
    start = time.perf_counter()
    try:
        ack = mllp_client.send(dest.host, dest.port, test_oru(dest),
                               connect_timeout=rt.settings.hl7_connect_timeout_seconds,
                               ack_timeout=rt.settings.hl7_ack_timeout_seconds)
    except mllp_client.MllpError as exc:
        return {"name": "hl7-report", "ok": False, "detail": f"{dest.host}:{dest.port}: {exc}"}
    ms = (time.perf_counter() - start) * 1000
    ok = ack.code == "AA"
    return {"name": "hl7-report", "ok": ok, "latency_ms": ms,
            "detail": f"test ORU^R01 to {dest.host}:{dest.port} answered {ack.code} {ack.text}".rstrip()}


def steps(rt: Runtime, peer: PeerInfo, dest: Destination | None, *, actor: str) -> Iterator[dict[str, Any]]:
    """The two HL7 steps (skipped when the peer's site has no HL7 destination)."""
    if dest is None:
        why = "no HL7 destination for the peer's site" if peer.site_id else "the peer belongs to no site"
        yield {"name": "hl7-order", "ok": None, "detail": why}
        yield {"name": "hl7-report", "ok": None, "detail": why}
        return
    from readingroom.governance.models import Site

    with rt.db.read_session() as s:
        site = s.get(Site, peer.site_id)
        site_code = site.code if site else ""
    yield _order_step(rt, peer, site_code, actor)
    yield _report_step(rt, dest)
