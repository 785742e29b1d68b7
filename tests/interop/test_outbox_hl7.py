"""Outbound ORU^R01 through the durable outbox, against a real MLLP receiver on 127.0.0.1.

Downtime mode (receiver down: work queues, then flows in order once each),
crash recovery (an expired lease is taken over, a fresh process delivers),
at-least-once re-sends with the same control id, refusals (AR: failed and
an exception item, the queue moves on), growing back-off. The admin API is
in test_outbox_api.py.
"""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import hl7
import pytest
from sqlalchemy import select, update

from readingroom.clock import utcnow
from readingroom.config import load_settings
from readingroom.interop import outbox
from readingroom.interop.models import Destination, OutboxItem
from readingroom.runtime import Runtime
from readingroom.workflow.models import Case, ExceptionItem
from tests.collab.report_fixtures import Desk, clock  # noqa: F401  (fixture used by desk)
from tests.interop import outbox_support as ob
from tests.interop.outbox_support import desk_fixture, receiver_fixture  # noqa: F401  (fixtures)
from tests.support.hl7_receiver import Hl7Receiver
from tests.workflow.conftest import network  # noqa: F401  (fixture used by desk)


@pytest.mark.timeout(120)
def test_downtime_queues_then_delivers_in_order_once_each(desk: Desk, receiver: Hl7Receiver) -> None:
    ob.destination(desk, receiver)
    ob.sign_all(desk)
    items = ob.items(desk.rt)
    assert [i.state for i in items] == ["pending"] * 3
    ids = [i.control_id for i in items]
    assert len(set(ids)) == 3 and all(c.startswith(f"RR{desk.case}V") for c in ids)

    assert outbox.deliver_due(desk.rt) == 0  # the receiver is down
    health = ob.health(desk)
    assert health["state"] == "down" and health["backlog"] == 3
    assert "cannot connect" in health["last_error"] and health["down_since"] and health["last_success_at"] is None
    assert health["oldest_pending_age_seconds"] is not None
    assert [i.attempts for i in ob.items(desk.rt)] == [1, 0, 0]  # the head holds the rest back

    receiver.start()
    desk.clock.advance(timedelta(minutes=10))
    assert ob.drain(desk) == 3
    got = receiver.received()
    assert [ob.status(m) for m in got] == ["P", "F", "C"]
    assert receiver.control_ids() == ids  # stable: the ids queued at signing
    msh = hl7.parse(got[0]).segment("MSH")
    assert str(msh[5]) == "RIS" and str(msh[6]) == "HUB"
    health = ob.health(desk)
    assert health["state"] == "up" and health["backlog"] == 0 and health["down_since"] is None
    assert health["last_success_at"] and health["last_contact_at"]
    assert all(i.state == "delivered" and i.result["ack_code"] == "AA" for i in ob.items(desk.rt))
    assert outbox.deliver_due(desk.rt) == 0 and len(receiver.received()) == 3  # once each


@pytest.mark.timeout(120)
def test_lost_ack_and_crashed_worker_lose_nothing(desk: Desk, receiver: Hl7Receiver) -> None:
    ob.destination(desk, receiver)
    receiver.lose_acks = 1
    receiver.start()
    final = ob.sign_final(desk)
    assert outbox.deliver_due(desk.rt) == 0  # stored by the receiver, but no ACK came back
    assert len(receiver.received()) == 1 and ob.items(desk.rt)[0].state == "pending"
    desk.clock.advance(timedelta(minutes=1))
    assert outbox.deliver_due(desk.rt) == 1
    first, again = receiver.received()
    assert first == again  # the at-least-once re-send is the same message, same control id
    assert receiver.control_ids() == [f"RR{desk.case}V{final['version']}"] * 2

    # A worker leased the next item and died: nobody delivers it until the lease expires.
    desk.addendum("Late addendum.", final["etag"])
    item = ob.items(desk.rt)[-1]
    with desk.rt.db.session() as s:
        s.execute(update(OutboxItem).where(OutboxItem.id == item.id).values(
            leased_by="dead-worker", leased_until=utcnow() + timedelta(seconds=60)))
    assert outbox.deliver_due(desk.rt) == 0 and len(receiver.received()) == 2
    desk.clock.advance(timedelta(seconds=61))
    fresh = Runtime.open(load_settings(desk.rt.settings.data_dir, database_url=desk.rt.settings.database_url),
                         migrate=False)  # another process on the same database (a restart)
    try:
        assert outbox.deliver_due(fresh) == 1
    finally:
        fresh.close()
    assert [ob.status(m) for m in receiver.received()] == ["F", "F", "C"]
    assert ob.items(desk.rt)[-1].state == "delivered"


def test_a_leased_head_is_taken_by_one_worker_only(desk: Desk, receiver: Hl7Receiver) -> None:
    dest = ob.destination(desk, receiver)
    ob.sign_final(desk)
    lease = desk.rt.settings.outbox_lease_seconds
    assert outbox._lease_head(desk.rt, dest["id"], "w1", lease) is not None
    assert outbox._lease_head(desk.rt, dest["id"], "w2", lease) is None


@pytest.mark.timeout(120)
def test_refused_message_fails_raises_an_exception_item_and_the_queue_moves_on(desk: Desk,
                                                                               receiver: Hl7Receiver) -> None:
    ob.destination(desk, receiver)
    receiver.answer, receiver.answer_text = "AR", "Unknown patient P-REPORT"
    receiver.start()
    draft = desk.put({"findings": "x", "impression": "y"}, desk.get().headers["ETag"]).json()
    prelim = desk.sign("preliminary", draft["etag"]).json()
    assert outbox.deliver_due(desk.rt) == 0
    refused = ob.items(desk.rt)[0]
    assert refused.state == "failed" and refused.result["ack_code"] == "AR"
    assert "Unknown patient" in refused.last_error
    with desk.rt.db.read_session() as s:
        alerts = list(s.scalars(select(ExceptionItem).where(ExceptionItem.kind == "failed_delivery")))
    assert [(a.case_id, a.state) for a in alerts] == [(desk.case, "open")] and "AR" in alerts[0].reason
    health = ob.health(desk)
    assert health["state"] == "up" and health["failed"] == 1  # the peer answered: it is not down

    receiver.answer, receiver.answer_text = "AA", ""
    desk.sign("final", prelim["etag"])
    assert outbox.deliver_due(desk.rt) == 1
    assert [ob.status(m) for m in receiver.received()] == ["P", "F"]
    assert [i.state for i in ob.items(desk.rt)] == ["failed", "delivered"]

    # An admin fixes the cause and retries: delivered again (at least once).
    r = desk.c.post(f"/api/v1/interop/outbox/{refused.id}/retry", headers=desk.h["boss"])
    assert r.status_code == 200 and r.json()["state"] == "pending"
    assert outbox.deliver_due(desk.rt) == 1 and ob.status(receiver.received()[-1]) == "P"


def test_backoff_grows_to_its_cap_and_alerts_once_while_retrying(desk: Desk, receiver: Hl7Receiver) -> None:
    desk.rt.settings.outbox_alert_after_attempts = 3
    ob.destination(desk, receiver)
    ob.sign_final(desk)
    waits = []
    rng = random.Random(7)
    for _ in range(10):
        before = utcnow()
        assert outbox.deliver_due(desk.rt, rng=rng) == 0
        item = ob.items(desk.rt)[0]
        waits.append((item.next_attempt_at - before).total_seconds())
        desk.clock.set(item.next_attempt_at)
    settings = desk.rt.settings
    assert all(b > a for a, b in itertools.pairwise(waits) if b < settings.outbox_backoff_max_seconds * 0.75)
    assert waits[0] <= settings.outbox_backoff_base_seconds and max(waits) <= settings.outbox_backoff_max_seconds
    assert waits[-1] >= settings.outbox_backoff_max_seconds * 0.75
    with desk.rt.db.read_session() as s:
        alerts = list(s.scalars(select(ExceptionItem).where(ExceptionItem.kind == "failed_delivery")))
    assert len(alerts) == 1 and "still retrying" in alerts[0].reason
    assert ob.items(desk.rt)[0].state == "pending" and ob.items(desk.rt)[0].attempts == 10

    receiver.start()
    assert outbox.deliver_due(desk.rt) == 1
    with desk.rt.db.read_session() as s:  # the warning is answered by the delivery
        assert s.get(ExceptionItem, alerts[0].id).state == "resolved"


def test_backoff_formula() -> None:
    waits = [outbox.backoff_seconds(n, base=5, cap=600, rng=random.Random(n)) for n in range(1, 12)]
    assert all(b > a for a, b in itertools.pairwise(waits) if b < 450)
    assert 3.75 <= waits[0] <= 5 and 450 <= waits[-1] <= 600


def test_disabled_destination_holds_its_queue(desk: Desk, receiver: Hl7Receiver) -> None:
    ob.destination(desk, receiver, enabled=False)
    receiver.start()
    ob.sign_final(desk)
    assert outbox.deliver_due(desk.rt) == 0 and receiver.received() == []
    assert ob.health(desk)["state"] == "disabled" and ob.health(desk)["backlog"] == 1
    r = desk.c.patch(f"{ob.DEST}/ris", headers=desk.h["boss"], json={"enabled": True})
    assert r.status_code == 200
    assert outbox.deliver_due(desk.rt) == 1 and len(receiver.received()) == 1


def test_events_and_site_choose_the_destinations(desk: Desk, receiver: Hl7Receiver) -> None:
    with desk.rt.db.read_session() as s:
        case_site = s.get(Case, desk.case).site_id
    ob.destination(desk, receiver, name="finals-only", events=["final"])
    ob.destination(desk, receiver, name="this-site", site_id=case_site)
    other = next(i for i in (1, 2) if i != case_site)
    ob.destination(desk, receiver, name="other-site", site_id=other)
    draft = desk.put({"findings": "x", "impression": "y"}, desk.get().headers["ETag"]).json()
    prelim = desk.sign("preliminary", draft["etag"]).json()
    desk.sign("final", prelim["etag"])
    with desk.rt.db.read_session() as s:
        got = [(s.get(Destination, i.destination_id).name, i.dedupe_key.rsplit(":", 1)[1])
               for i in ob.items(desk.rt)]
    versions = sorted({v for _, v in got})
    assert sorted(got) == sorted([("this-site", versions[0]), ("finals-only", versions[1]),
                                  ("this-site", versions[1])])


def test_enqueue_is_idempotent(desk: Desk, receiver: Hl7Receiver) -> None:
    dest = ob.destination(desk, receiver)
    with desk.rt.db.session() as s:
        a = outbox.enqueue(s, dest["id"], "hl7", "k1", payload="MSH|first")
        b = outbox.enqueue(s, dest["id"], "hl7", "k1", payload="MSH|second")
        assert a.id == b.id and b.payload == "MSH|first"
    assert len(ob.items(desk.rt)) == 1


def test_an_ack_for_another_message_is_not_a_delivery(desk: Desk, receiver: Hl7Receiver) -> None:
    ob.destination(desk, receiver)
    receiver.ack_control_id = "SOMETHING-ELSE"
    receiver.start()
    ob.sign_final(desk)
    assert outbox.deliver_due(desk.rt) == 0
    item = ob.items(desk.rt)[0]
    assert item.state == "pending" and "SOMETHING-ELSE" in item.last_error  # transient: sent again later
    receiver.ack_control_id = ""
    desk.clock.advance(timedelta(minutes=1))
    assert outbox.deliver_due(desk.rt) == 1 and len(set(receiver.control_ids())) == 1


def test_ae_is_retried_when_the_destination_says_so(desk: Desk, receiver: Hl7Receiver) -> None:
    ob.destination(desk, receiver, options={"retry_ack_codes": ["AE"]})
    receiver.answer, receiver.answer_text = "AE", "busy"
    receiver.start()
    ob.sign_final(desk)
    assert outbox.deliver_due(desk.rt) == 0
    assert ob.items(desk.rt)[0].state == "pending" and ob.health(desk)["state"] == "up"
    receiver.answer = "AA"
    desk.clock.advance(timedelta(minutes=1))
    assert outbox.deliver_due(desk.rt) == 1


@pytest.mark.timeout(120)
def test_two_workers_at_once_deliver_each_message_once_in_order(desk: Desk, receiver: Hl7Receiver) -> None:
    import threading

    ob.destination(desk, receiver)
    ob.sign_all(desk)
    receiver.start()
    counts: list[int] = []
    workers = [threading.Thread(target=lambda: counts.append(outbox.deliver_due(desk.rt))) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    ob.drain(desk)  # whatever a worker left behind when it met the other's lease
    assert [ob.status(m) for m in receiver.received()] == ["P", "F", "C"]
    assert len(set(receiver.control_ids())) == 3


def test_the_serve_scheduler_runs_the_outbox(desk: Desk, receiver: Hl7Receiver) -> None:
    from readingroom.app import build_scheduler

    ob.destination(desk, receiver)
    receiver.start()
    ob.sign_final(desk)
    scheduler = build_scheduler(desk.rt)
    assert "interop-outbox" in [j.name for j in scheduler.jobs]
    next(j for j in scheduler.jobs if j.name == "interop-outbox").run()
    assert len(receiver.received()) == 1 and ob.items(desk.rt)[0].state == "delivered"
