"""The admin API of destinations and the outbox: field-level validation, site scoping, retry, cancel, health."""

from __future__ import annotations

from sqlalchemy import select

from readingroom.archive.peers import add_peer
from readingroom.governance.users import create_token, create_user
from readingroom.interop import outbox
from readingroom.interop.models import Destination
from readingroom.workflow.models import Case
from tests.collab.report_fixtures import Desk, clock  # noqa: F401  (fixture used by desk)
from tests.interop import outbox_support as ob
from tests.interop.outbox_support import desk_fixture, receiver_fixture  # noqa: F401  (fixtures)
from tests.support.hl7_receiver import Hl7Receiver
from tests.workflow.conftest import network  # noqa: F401  (fixture used by desk)


def test_destination_validation_is_per_field_and_stores_nothing(desk: Desk) -> None:
    r = desk.c.post(ob.DEST, headers=desk.h["boss"], json={"name": "bad", "kind": "hl7", "host": "", "port": 70000,
                                                           "events": ["draft"], "options": {"colour": "red"}})
    assert r.status_code == 422
    fields = {tuple(e["loc"][1:]) for e in r.json()["detail"]}
    assert {("host",), ("port",), ("events",), ("options",)} <= fields
    r = desk.c.post(ob.DEST, headers=desk.h["boss"], json={"name": "pacs", "kind": "dicom", "peer": "nowhere"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "peer"]
    r = desk.c.post(ob.DEST, headers=desk.h["boss"], json={"name": "web", "kind": "dicomweb", "url": "ftp://x",
                                                           "options": {"token": ""}})
    assert r.status_code == 422
    assert {tuple(e["loc"][1:]) for e in r.json()["detail"]} == {("url",), ("options", "token")}
    assert desk.c.get(ob.DEST, headers=desk.h["boss"]).json() == []
    ok = desk.c.post(ob.DEST, headers=desk.h["boss"], json={
        "name": "web", "kind": "dicomweb", "url": "https://pacs.example/dicom-web/",
        "options": {"token": "s3cret"}})
    assert ok.status_code == 201 and ok.json()["options"]["token"] == "********"
    assert ok.json()["url"] == "https://pacs.example/dicom-web"
    again = desk.c.post(ob.DEST, headers=desk.h["boss"], json={"name": "web", "kind": "dicomweb",
                                                               "url": "https://x.example"})
    assert again.status_code == 409
    with desk.rt.db.session() as s:
        add_peer(s, "site-pacs", "SITEPACS", "127.0.0.1", 104)
    pacs = desk.c.post(ob.DEST, headers=desk.h["boss"], json={"name": "pacs", "kind": "dicom", "peer": "site-pacs",
                                                              "prior_source": True})
    assert pacs.status_code == 201 and pacs.json()["peer"] == "site-pacs" and pacs.json()["peer_id"]
    # Sending the masked secret back keeps the stored one.
    r = desk.c.patch(f"{ob.DEST}/web", headers=desk.h["boss"], json={
        "options": {"token": "********", "timeout": 10}})
    assert r.status_code == 200
    with desk.rt.db.read_session() as s:
        stored = s.scalar(select(Destination).where(Destination.name == "web"))
        assert stored.options["token"] == "s3cret" and stored.options["timeout"] == 10


def test_outbox_api_lists_retries_cancels_with_site_scoping(desk: Desk, receiver: Hl7Receiver) -> None:
    with desk.rt.db.session() as s:
        case_site = s.get(Case, desk.case).site_id
        other = next(i for i in (1, 2) if i != case_site)
        for name, site in (("here_admin", case_site), ("there_admin", other)):
            user = create_user(s, name, password="pw", role="site_admin", site_id=site)
            desk.h[name] = {"Authorization": f"Bearer {create_token(s, user, name='t')[1]}"}
    ob.destination(desk, receiver, site_id=case_site)
    ob.sign_all(desk)
    assert outbox.deliver_due(desk.rt) == 0  # down: three pending

    page = desk.c.get("/api/v1/interop/outbox", headers=desk.h["here_admin"],
                      params={"destination": "ris", "state": "pending", "limit": 2})
    assert page.status_code == 200
    body = page.json()
    assert body["total"] == 3 and len(body["items"]) == 2 and body["next_offset"] == 2
    assert all(i["payload"] is None for i in body["items"])
    rest = desk.c.get("/api/v1/interop/outbox", headers=desk.h["here_admin"],
                      params={"case_id": desk.case, "offset": 2, "limit": 2}).json()
    assert len(rest["items"]) == 1 and rest["next_offset"] is None
    head_id = rest["items"][0]["id"]
    one = desk.c.get(f"/api/v1/interop/outbox/{head_id}", headers=desk.h["here_admin"]).json()
    assert one["payload"].startswith("MSH|") and one["attempts"] == 1

    # Another site's admin sees nothing of it; readers may not call the routes at all.
    assert desk.c.get("/api/v1/interop/outbox", headers=desk.h["there_admin"]).json()["total"] == 0
    assert desk.c.get(f"/api/v1/interop/outbox/{head_id}", headers=desk.h["there_admin"]).status_code == 404
    assert desk.c.post(f"/api/v1/interop/outbox/{head_id}/cancel",
                       headers=desk.h["there_admin"]).status_code == 404
    assert desk.c.get(f"{ob.DEST}/ris/health", headers=desk.h["there_admin"]).status_code == 404
    assert desk.c.get("/api/v1/interop/health", headers=desk.h["there_admin"]).json() == []
    for who in ("ann", "ref"):
        assert desk.c.get("/api/v1/interop/outbox", headers=desk.h[who]).status_code == 403
        assert desk.c.post(f"/api/v1/interop/outbox/{head_id}/retry", headers=desk.h[who]).status_code == 403
    assert desk.c.get("/api/v1/interop/outbox").status_code == 401
    assert desk.c.post(ob.DEST, headers=desk.h["here_admin"], json={
        "name": "net", "kind": "hl7", "host": "h", "port": 1}).status_code == 403  # network-wide: admins only

    # Cancel the head (the preliminary): the queue moves on; a cancelled item cannot be retried.
    r = desk.c.post(f"/api/v1/interop/outbox/{head_id}/cancel", headers=desk.h["here_admin"])
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert desk.c.post(f"/api/v1/interop/outbox/{head_id}/retry", headers=desk.h["boss"]).status_code == 409
    receiver.start()
    pending = [i for i in ob.items(desk.rt) if i.state == "pending"]
    r = desk.c.post(f"/api/v1/interop/outbox/{pending[0].id}/retry", headers=desk.h["here_admin"])
    assert r.status_code == 200  # due now, without waiting for the back-off
    assert outbox.deliver_due(desk.rt) == 2
    assert [ob.status(m) for m in receiver.received()] == ["F", "C"]
    health = desk.c.get("/api/v1/interop/health", headers=desk.h["here_admin"]).json()
    assert [(h["name"], h["state"], h["backlog"]) for h in health] == [("ris", "up", 0)]
    assert desk.c.delete(f"{ob.DEST}/ris", headers=desk.h["here_admin"]).status_code == 204


def test_a_destination_with_pending_work_is_not_deleted(desk: Desk, receiver: Hl7Receiver) -> None:
    ob.destination(desk, receiver)
    ob.sign_final(desk)
    r = desk.c.delete(f"{ob.DEST}/ris", headers=desk.h["boss"])
    assert r.status_code == 409 and "pending" in r.json()["detail"]
    assert len(ob.items(desk.rt)) == 1
