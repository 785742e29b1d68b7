"""DICOM audit messages (ATNA) and their forwarding over syslog to real UDP, TCP and TLS receivers."""

from __future__ import annotations

import base64
import json
import ssl
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from readingroom.governance import atna, audit
from readingroom.governance.audit_chain import COLUMNS, seal
from readingroom.governance.audit_syslog import OFFSET_NAME, SyslogConfigError, SyslogForwarder, SyslogTarget
from readingroom.governance.models import AuditRecord, AuditSeal
from readingroom.workflow.models import ConsumerOffset
from tests.governance.syslog_receiver import StreamReceiver, UdpReceiver, parse, wait_for
from tests.support.pki import Authority

SOURCE = atna.AuditSource(source_id="READINGROOM", host="pacs.example.org")


def _message(rt: Any, **fields: Any) -> ET.Element:
    """Write one record through the audit API, read it back and render it (as forwarding does)."""
    with rt.db.session() as s:
        row = audit.record(s, **fields)
        s.flush()
        record_id = row.id
    with rt.db.read_session() as s:
        record = s.execute(select(*COLUMNS).where(AuditRecord.id == record_id)).one()
    xml = atna.to_bytes(atna.audit_message(record, SOURCE))
    return ET.fromstring(xml)  # well-formed, or this raises


def _code(element: ET.Element | None) -> tuple[str, str, str]:
    assert element is not None
    return element.get("csd-code", ""), element.get("codeSystemName", ""), element.get("originalText", "")


def _objects(message: ET.Element) -> dict[str, ET.Element]:
    return {o.get("ParticipantObjectTypeCode", "") + "/" + o.get("ParticipantObjectTypeCodeRole", ""): o
            for o in message.findall("ParticipantObjectIdentification")}


def test_retrieve_is_instances_transferred_with_patient_and_study(rt: Any) -> None:
    m = _message(rt, actor="rad.chen", source="10.1.2.3", action="study.retrieve", resource_type="study",
                 resource_id="1.2.840.99.1", patient_id="PAT-7")
    event = m.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID")) == ("110104", "DCM", "DICOM Instances Transferred")
    assert event.get("EventActionCode") == "R" and event.get("EventOutcomeIndicator") == "0"
    assert event.get("EventDateTime", "").endswith("Z")
    requestor, archive = m.findall("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("UserIsRequestor")) == ("rad.chen", "true")
    assert (requestor.get("NetworkAccessPointID"), requestor.get("NetworkAccessPointTypeCode")) == ("10.1.2.3", "2")
    assert _code(requestor.find("RoleIDCode"))[0] == "110152"  # the viewer is the destination
    assert (archive.get("UserID"), archive.get("UserIsRequestor")) == ("READINGROOM", "false")
    assert _code(archive.find("RoleIDCode"))[0] == "110153"  # the archive is the source
    source = m.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "READINGROOM"
    objects = _objects(m)
    assert objects["1/1"].get("ParticipantObjectID") == "PAT-7"
    assert _code(objects["1/1"].find("ParticipantObjectIDTypeCode"))[:2] == ("2", "RFC-3881")
    assert objects["2/3"].get("ParticipantObjectID") == "1.2.840.99.1"
    assert _code(objects["2/3"].find("ParticipantObjectIDTypeCode"))[0] == "110180"


def test_query_carries_the_query_base64(rt: Any) -> None:
    m = _message(rt, actor="FINDSCU", source="workstation-3", action="archive.query", resource_type="query",
                 resource_id="STUDY", detail={"model": "1.2.840.10008.5.1.4.1.2.2.1", "filters": {"PatientID": "P*"}})
    event = m.find("EventIdentification")
    assert event is not None and _code(event.find("EventID"))[0] == "110112" and event.get("EventActionCode") == "E"
    requestor = m.findall("ActiveParticipant")[0]
    assert requestor.get("NetworkAccessPointTypeCode") == "1"  # a machine name, not an address
    query = _objects(m)["2/3"]
    assert query.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
    assert json.loads(base64.b64decode(query.findtext("ParticipantObjectQuery") or "")) == {"PatientID": "P*"}


@pytest.mark.parametrize(("fields", "event_id", "type_code", "action", "outcome"), [
    ({"action": "association.reject", "outcome": "failure", "reason": "unknown AE"}, "110113", "110126", "E", "4"),
    ({"action": "auth.login", "outcome": "failure"}, "110114", "110122", "E", "4"),
    ({"action": "auth.lockout"}, "110113", "110137", "U", "0"),
    ({"action": "users.role_change", "resource_type": "user", "resource_id": "rad.osei"}, "110113", "110136", "U",
     "0"),
    ({"action": "access.break_glass", "resource_type": "study", "resource_id": "1.2.3", "flagged": True,
      "reason": "unconscious patient in the ED"}, "110113", "110127", "E", "0"),
    ({"action": "access.denied", "outcome": "failure", "resource_type": "http", "resource_id": "/api/v1/audit"},
     "110113", "110132", "E", "4"),
    ({"action": "audit.search", "resource_type": "audit"}, "110101", None, "R", "0"),
    ({"action": "application.start", "resource_type": "application"}, "110100", "110120", "E", "0"),
    ({"action": "peer.add", "resource_type": "peer", "resource_id": "ct1"}, "110113", "110128", "C", "0"),
    ({"action": "share.create", "resource_type": "study", "resource_id": "1.2.3"}, "110106", None, "R", "0"),
    ({"action": "case.read", "resource_type": "case", "resource_id": "12", "patient_id": "P1"}, "110111", None,
     "R", "0"),
    ({"action": "something.happened", "patient_id": "P1"}, "110110", None, "E", "0"),
    ({"action": "instance.store", "outcome": "error"}, "110104", None, "C", "8"),
])
def test_event_codes(rt: Any, fields: dict[str, Any], event_id: str, type_code: str | None, action: str,
                     outcome: str) -> None:
    m = _message(rt, actor="someone", **fields)
    event = m.find("EventIdentification")
    assert event is not None
    assert _code(event.find("EventID"))[0] == event_id
    assert (_code(event.find("EventTypeCode"))[0] if event.find("EventTypeCode") is not None else None) == type_code
    assert event.get("EventActionCode") == action
    assert event.get("EventOutcomeIndicator") == outcome
    if fields.get("reason"):
        assert event.findtext("EventOutcomeDescription") == fields["reason"]


def test_hostile_characters_are_recorded_and_rendered_safely(rt: Any) -> None:
    """NUL (refused by PostgreSQL) is stored as U+FFFD; control characters XML 1.0 cannot carry are dropped."""
    m = _message(rt, actor="bad\x00actor\x1b<&>", action="study.retrieve", resource_type="study",
                 resource_id="1.2\x07.3")
    assert m.findall("ActiveParticipant")[0].get("UserID") == "bad\ufffdactor<&>"
    assert _objects(m)["2/3"].get("ParticipantObjectID") == "1.2.3"


def test_bad_syslog_urls_are_refused_with_a_reason() -> None:
    for url, words in (("http://h:1", "udp://"), ("udp://:514", "no host"), ("tcp://h:99999", "(?i)port")):
        with pytest.raises(SyslogConfigError, match=words):
            SyslogTarget.parse(url)
    assert SyslogTarget.parse("tls://audit.example.org").port == 6514


def _sealed_records(rt: Any, n: int) -> None:
    for i in range(n):
        audit.record_now(rt.db, actor=f"user{i}", source="10.0.0.9", action="study.retrieve", resource_type="study",
                         resource_id=f"1.2.3.{i}", patient_id=f"P{i}")
    seal(rt)


def _seq_to_record(rt: Any) -> dict[int, int]:
    with rt.db.read_session() as s:
        return {seq: rid for seq, rid in s.execute(select(AuditSeal.seq, AuditSeal.record_id)
                                                   .where(AuditSeal.seq > 0))}


def _position(rt: Any) -> int:
    with rt.db.read_session() as s:
        return s.scalar(select(ConsumerOffset.position).where(ConsumerOffset.name == OFFSET_NAME)) or 0


def test_udp_forwarding_sends_rfc5424_atna_messages(rt: Any) -> None:
    receiver = UdpReceiver()
    try:
        _sealed_records(rt, 5)
        sent = SyslogForwarder(rt, SyslogTarget.parse(receiver.url)).run()
        assert sent == 5
        wait_for(lambda: len(receiver.messages) == 5, what="5 datagrams")
    finally:
        receiver.close()
    messages = sorted((parse(m) for m in receiver.messages), key=lambda m: m.seq)
    assert [m.seq for m in messages] == [1, 2, 3, 4, 5]
    first = messages[0]
    assert first.pri == 85  # authpriv.notice
    assert (first.app_name, first.msgid) == ("readingroom", "IHE+RFC-3881")
    assert first.sd["origin"]["software"] == "readingroom"
    xml = first.xml
    assert xml.tag == "AuditMessage"
    requestor = xml.findall("ActiveParticipant")[0]
    assert requestor.get("UserID") == "user0"
    assert _objects(xml)["1/1"].get("ParticipantObjectID") == "P0"
    assert _position(rt) == 5


def test_tcp_forwarding_waits_for_an_unreachable_receiver_and_resumes_after_restart(rt: Any) -> None:
    placeholder = StreamReceiver()  # reserve a free port, then leave nobody listening on it
    port = placeholder.port
    placeholder.close()
    _sealed_records(rt, 4)
    forwarder = SyslogForwarder(rt, SyslogTarget.parse(f"tcp://127.0.0.1:{port}"))
    forwarder.run_job()  # connection refused: logged, retried later, nothing counted as sent
    assert _position(rt) == 0
    receiver = StreamReceiver(port=port)
    try:
        # a new process (restart) picks up at the durable position
        assert SyslogForwarder(rt, SyslogTarget.parse(receiver.url)).run() == 4
        _sealed_records(rt, 3)
        assert SyslogForwarder(rt, SyslogTarget.parse(receiver.url)).run() == 3
        wait_for(lambda: len(receiver.messages) == 7, what="7 framed messages")
    finally:
        receiver.close()
    assert not receiver.errors
    seqs = [parse(m).seq for m in receiver.messages]
    assert sorted(seqs) == list(range(1, 8))  # every sealed record once, none lost
    mapping = _seq_to_record(rt)
    users = {parse(m).xml.findall("ActiveParticipant")[0].get("UserID") for m in receiver.messages}
    assert len(mapping) == 7 and users == {f"user{i}" for i in range(4)} | {f"user{i}" for i in range(3)}


def test_tls_forwarding_checks_the_receivers_certificate(rt: Any, tmp_path: Path) -> None:
    ca = Authority.create(tmp_path / "pki", "syslog")
    leaf = ca.issue("localhost", server=True, hosts=("localhost", "127.0.0.1"))
    rogue = Authority.create(tmp_path / "rogue", "rogue")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(leaf.cert, leaf.key)
    receiver = StreamReceiver(tls=context)
    try:
        _sealed_records(rt, 3)
        untrusted = SyslogForwarder(rt, SyslogTarget.parse(f"tls://localhost:{receiver.port}", rogue.cert))
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.run()
        assert _position(rt) == 0
        trusted = SyslogForwarder(rt, SyslogTarget.parse(f"tls://localhost:{receiver.port}", ca.cert))
        assert trusted.run() == 3
        wait_for(lambda: len(receiver.messages) == 3, what="3 messages over TLS")
    finally:
        receiver.close()
    assert sorted(parse(m).seq for m in receiver.messages) == [1, 2, 3]


def test_server_forwards_across_a_restart_without_loss(server_factory: Any) -> None:
    receiver = StreamReceiver()
    try:
        info = server_factory(audit_syslog_url=receiver.url)
        with info.client() as client:
            for _ in range(3):
                assert client.get("/api/v1/audit", params={"limit": 5}).status_code == 200
        rt = info.runtime()
        try:
            wait_for(lambda: {parse(m).seq for m in receiver.messages} >= set(_seq_to_record(rt))
                     and len(_seq_to_record(rt)) >= 4, what="the first records forwarded")
            info.stop()  # audits the stop and seals it
            offline = info.cli("audit", "export", "--out", str(info.data_dir / "export.jsonl"))  # audited offline
            assert offline.returncode == 0, offline.stderr
            info.start()
            with rt.db.read_session() as s:
                all_ids = set(s.scalars(select(AuditRecord.id)))
            wait_for(lambda: set(_seq_to_record(rt).values()) >= all_ids, what="everything sealed")
            wait_for(lambda: {parse(m).seq for m in receiver.messages} >= set(_seq_to_record(rt)),
                     what="everything forwarded after the restart")
            actions = {parse(m).xml.find("EventIdentification/EventID").get("originalText")  # type: ignore[union-attr]
                       for m in receiver.messages}
        finally:
            rt.close()
    finally:
        receiver.close()
    assert {"Application Activity", "Audit Log Used"} <= actions
    received = sorted(parse(m).seq for m in receiver.messages)
    assert sorted(set(received)) == list(range(1, received[-1] + 1))  # no gap: nothing lost
