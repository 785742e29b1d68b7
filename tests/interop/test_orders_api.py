"""Orders over REST: placing creates a waiting case; changes and cancellations follow to the case; scoping."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from readingroom.app import create_app
from readingroom.governance import audit
from readingroom.governance.models import Site
from readingroom.governance.users import create_token, create_user, get_user
from readingroom.interop.models import Order
from readingroom.workflow.cases import case_events
from readingroom.workflow.models import Case
from tests.workflow.conftest import network  # noqa: F401  (fixture)


@pytest.fixture()
def api(network) -> Iterator[dict[str, Any]]:  # noqa: F811
    rt = network
    with rt.db.session() as s:
        hub = s.scalar(select(Site.id).where(Site.code == "HUB"))
        lks = s.scalar(select(Site.id).where(Site.code == "LKS"))
        create_user(s, "hubadm", password="pw", role="site_admin", site_id=hub)
        create_user(s, "lksadm", password="pw", role="site_admin", site_id=lks)
        create_user(s, "doc", password="pw", role="referring_clinician", site_id=hub)
        get_user(s, "doc").physician_name = "Hartmann^Lena"
        create_user(s, "tech", password="pw", role="technologist", site_id=hub)
        headers = {n: {"Authorization": f"Bearer {create_token(s, get_user(s, n), name='t')[1]}"}
                   for n in ("hubadm", "lksadm", "doc", "tech")}
    yield {"rt": rt, "c": TestClient(create_app(rt)), "h": headers}
    audit.flush(rt.db)


def _order(**changes: Any) -> dict[str, Any]:
    return {"placer_order_number": "PL-1", "placer_authority": "EPIC", "accession_number": "ACC-1", "site": "HUB",
            "patient_id": "MRN-1", "patient_name": "Doe^Jane", "birth_date": "19700101", "sex": "F",
            "procedure_code": "CTHEAD", "procedure_text": "CT head without contrast", "modality": "CT",
            "priority": "S", "patient_class": "E", "ordering_provider": "Hartmann^Lena", "reason": "fall, GCS 13",
            **changes}


def _count(rt: Any) -> tuple[int, int]:
    with rt.db.read_session() as s:
        return s.scalar(select(func.count()).select_from(Order)), s.scalar(select(func.count()).select_from(Case))


def test_place_change_cancel(api: dict[str, Any]) -> None:
    c, h, rt = api["c"], api["h"], api["rt"]
    r = c.post("/api/v1/orders", json=_order(), headers=h["doc"])
    assert r.status_code == 201, r.text
    order = r.json()
    assert order["priority"] == "stat" and order["patient_class"] == "ED" and order["status"] == "active"
    with rt.db.read_session() as s:
        case = s.get(Case, order["case_id"])
        assert case.state == "waiting" and case.priority == "stat" and case.priority_source == "order"
        assert case.ordering_physician == "Hartmann^Lena" and case.accession_number == "ACC-1"
        hub = s.scalar(select(Site).where(Site.code == "HUB"))
        assert order["patient_issuer"] == hub.issuer_of_patient_id  # the site's issuer qualifies the ID
    r = c.put(f"/api/v1/orders/{order['id']}", json=_order(priority="routine", reason="follow-up"),
              headers=h["hubadm"])
    assert r.status_code == 200, r.text
    with rt.db.read_session() as s:
        case = s.get(Case, order["case_id"])
        assert case.priority == "routine"
        assert [e.kind for e in case_events(s, case.id)] == ["ordered", "priority_changed"]
    r = c.post(f"/api/v1/orders/{order['id']}/cancel", json={"reason": "duplicate order"}, headers=h["hubadm"])
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    with rt.db.read_session() as s:
        assert s.get(Case, order["case_id"]).state == "cancelled"
    assert c.post(f"/api/v1/orders/{order['id']}/cancel", json={}, headers=h["hubadm"]).status_code == 409


def test_bad_orders_change_nothing(api: dict[str, Any]) -> None:
    c, h, rt = api["c"], api["h"], api["rt"]
    assert c.post("/api/v1/orders", json=_order(), headers=h["doc"]).status_code == 201
    before = _count(rt)
    for body, status, reason in [
        (_order(), 409, "already exists"),
        (_order(placer_order_number="PL-2", site="NOPE"), 422, "unknown site"),
        (_order(placer_order_number="PL-3", priority="whenever"), 422, "unknown priority"),
        (_order(placer_order_number="", accession_number=""), 422, "needs a placer"),
        ({"site": "HUB"}, 422, "patient_id"),
        (_order(placer_order_number="PL-4", birth_date="1970-01-01"), 422, "birth_date"),
    ]:
        r = c.post("/api/v1/orders", json=body, headers=h["hubadm"])
        assert r.status_code == status, r.text
        assert reason in r.text
    r = c.post("/api/v1/orders", content=b"{not json", headers={**h["hubadm"], "Content-Type": "application/json"})
    assert r.status_code == 422
    assert _count(rt) == before


def test_scoping(api: dict[str, Any]) -> None:
    c, h = api["c"], api["h"]
    mine = c.post("/api/v1/orders", json=_order(), headers=h["doc"]).json()
    theirs = c.post("/api/v1/orders", json=_order(placer_order_number="PL-9", ordering_provider="Other^Doc"),
                    headers=h["hubadm"]).json()
    ids = lambda who: {o["id"] for o in c.get("/api/v1/orders", headers=h[who]).json()}  # noqa: E731
    assert ids("doc") == {mine["id"]}  # a clinician sees the orders they placed
    assert ids("tech") == ids("hubadm") == {mine["id"], theirs["id"]}  # the site sees its orders
    assert ids("lksadm") == set()
    assert c.get(f"/api/v1/orders/{theirs['id']}", headers=h["doc"]).status_code == 404
    assert c.post("/api/v1/orders", json=_order(placer_order_number="PL-5"), headers=h["lksadm"]).status_code == 403
    assert c.post(f"/api/v1/orders/{mine['id']}/cancel", json={}, headers=h["lksadm"]).status_code == 404
    assert c.get("/api/v1/orders").status_code == 401
