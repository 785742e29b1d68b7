"""Inbound HL7 v2 over MLLP, end to end: the ``hl7`` library's MLLP client against the real listener.

The listener runs on a free port of 127.0.0.1 with an in-process Runtime
(SQLite, or PostgreSQL with READINGROOM_TEST_DATABASE_URL); every message
goes over a real socket and every answer is a real ACK parsed by ``hl7``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy import func, select

from readingroom.archive.ingest import ingest_path
from readingroom.archive.models import Patient, Study
from readingroom.archive.stability import complete_stable_studies
from readingroom.governance.models import AuditRecord, Site
from readingroom.governance.sites import create_site
from readingroom.interop.hl7 import MllpListener
from readingroom.interop.models import Hl7Message, Order, PatientMerge
from readingroom.workflow import jobs
from readingroom.workflow.models import Case, CaseEvent
from tests.support.dicom import new_study
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(120)

MSH = "MSH|^~\\&|RIS|{fac}|READINGROOM|RR|20260301101500||{type}|{ctrl}|P|{ver}"
PID = "PID|1||{pid}||Doe^Jane^Q||19800214|F"
PV1 = "PV1|1|{cls}|{loc}"


def orm(ctrl: str, control: str = "NW", *, placer: str = "P1001", fac: str = "NORTH", pid: str = "MRN1^^^NORTH-MRN",
        priority: str = "S", cls: str = "E", accession: str = "ACC1001", extra_pid: str = "",
        proc: str = "CTHEAD^CT Head without contrast^L", birth: str = "19800214") -> str:
    """An ORM^O01 v2.3 as many RIS send it (priority in ORC-7.6, accession in OBR-18)."""
    segs = [MSH.format(fac=fac, type="ORM^O01", ctrl=ctrl, ver="2.3"),
            f"PID|1||{pid}||Doe^Jane^Q||{birth}|F{extra_pid}" if pid else "",
            PV1.format(cls=cls, loc="ED^1^1"),
            _segment("ORC", {1: control, 2: f"{placer}^RIS", 3: f"F{placer[1:]}^RR", 5: "SC",
                             7: f"^^^20260301110000^^{priority}", 9: "20260301101500",
                             12: "1234^Hartmann^Lena^^^Dr", 16: "chest pain"}),
            _segment("OBR", {1: "1", 2: f"{placer}^RIS", 3: f"F{placer[1:]}^RR", 4: proc, 6: "20260301103000",
                             16: "1234^Hartmann^Lena", 18: accession, 24: "CT", 27: f"^^^^^{priority}",
                             31: "^suspected bleed"})]
    return "\r".join(s for s in segs if s)


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment from its non-empty fields by number (so field positions are explicit)."""
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def omi(ctrl: str) -> str:
    """An OMI^O23 v2.5.1 (IHE SWF.b): TQ1 priority and start time, IPC accession and modality, PV1-3.4 facility."""
    return "\r".join([
        MSH.format(fac="ENTERPRISE", type="OMI^O23^OMI_O23", ctrl=ctrl, ver="2.5.1"),
        "PID|1||S-77^^^SOUTH-MRN^MR~X99^^^OTHER||Roe^Rick||19700101|M",
        "PV1|1|I|W2^201^1^SOUTH",
        "ORC|NW|OMI-1^RIS||||||||||5678^Berg^Ole",
        _segment("TQ1", {1: "1", 7: "20260301140000", 9: "A"}),
        "OBR|1|OMI-1^RIS||MRBRAIN^MR Brain^L",
        "IPC|ACC-OMI-1|RP1|1.2.3.4.5|SPS1|MR",
    ])


def adt(ctrl: str, trigger: str, pid: str, *, mrg: str = "", name: str = "Doe^Janet", birth: str = "19800215",
        sex: str = "F", fac: str = "NORTH") -> str:
    segs = [MSH.format(fac=fac, type=f"ADT^{trigger}", ctrl=ctrl, ver="2.5"),
            "EVN|" + trigger + "|20260301101500",
            f"PID|1||{pid}||{name}||{birth}|{sex}",
            PV1.format(cls="O", loc="")]
    if mrg:
        segs.insert(3, f"MRG|{mrg}")
    return "\r".join(segs)


async def _exchange(port: int, payloads: list[bytes | str]) -> list[hl7.Message | None]:
    """Send each payload on one connection (str: an HL7 message; bytes: raw) and read one ACK after each."""
    reader, writer = await open_hl7_connection("127.0.0.1", port, encoding="utf-8")
    acks: list[hl7.Message | None] = []
    try:
        for payload in payloads:
            if isinstance(payload, str):
                writer.writemessage(hl7.parse(payload))
            else:
                writer.write(payload)
            await writer.drain()
            acks.append(await asyncio.wait_for(reader.readmessage(), 30))
    finally:
        writer.close()
    return acks


def send(port: int, *payloads: bytes | str) -> list[hl7.Message]:
    return [a for a in asyncio.run(_exchange(port, list(payloads))) if a is not None]


def ack_of(ack: hl7.Message) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, ERR-3.1) of an ACK."""
    err = ack.segments("ERR")[0] if any(str(s[0]) == "ERR" for s in ack) else None
    code = str(err.extract_field(1, 3, 1, 1, 1)) if err is not None else ""
    return str(ack["MSA.F1"]), str(ack["MSA.F2"]), code


@pytest.fixture()
def hl7rt(rt: Any) -> Iterator[tuple[Any, int]]:
    """A Runtime with two sites and a running MLLP listener on a free port."""
    with rt.db.session() as s:
        create_site(s, "NORTH", "North Hospital", issuer_of_patient_id="NORTH-MRN", timezone="Europe/Berlin")
        create_site(s, "SOUTH", "South Clinic", issuer_of_patient_id="SOUTH-MRN", timezone="America/Chicago")
    listener = MllpListener(rt, "127.0.0.1", free_port()).start()
    yield rt, listener.port
    listener.stop()


def counts(rt: Any) -> dict[str, int]:
    """Rows of everything a message may change (the HL7 log aside)."""
    with rt.db.read_session() as s:
        return {m.__name__: s.scalar(select(func.count()).select_from(m)) or 0
                for m in (Order, Case, CaseEvent, Patient, PatientMerge, AuditRecord, Study)}


def patient_fields(rt: Any, pid: str, issuer: str) -> tuple[str, str, str, int | None]:
    with rt.db.read_session() as s:
        p = s.scalars(select(Patient).where(Patient.patient_id == pid, Patient.issuer == issuer)).one()
        return p.name, p.birth_date, p.sex, p.merged_into_pk


# -- orders -----------------------------------------------------------------------------------------


def test_orm_new_order_creates_order_and_waiting_case(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    (ack,) = send(port, orm("C-NW-1"))
    assert ack_of(ack) == ("AA", "C-NW-1", "")
    assert str(ack["MSH.F9.R1.C1"]) == "ACK" and str(ack["MSH.F5"]) == "RIS"
    with rt.db.read_session() as s:
        order = s.scalars(select(Order)).one()
        case = s.get(Case, order.case_id)
        patient = s.get(Patient, order.patient_pk)
        logged = s.scalars(select(Hl7Message)).one()
    assert (order.placer_order_number, order.placer_authority, order.filler_order_number) == ("P1001", "RIS", "F1001")
    assert order.accession_number == "ACC1001" and order.status == "active" and order.source == "hl7"
    assert (order.procedure_code, order.procedure_text, order.modality) == ("CTHEAD", "CT Head without contrast", "CT")
    assert order.ordering_provider == "Hartmann^Lena" and order.reason == "suspected bleed"
    assert order.requested_at == datetime(2026, 3, 1, 10, 0, tzinfo=UTC)  # 11:00 in Berlin (ORC-7.4)
    assert case.state == "waiting" and case.priority == "stat" and case.patient_class == "ED"
    assert case.ordering_physician == "Hartmann^Lena" and case.accession_number == "ACC1001"
    assert case.site_id == order.site_id is not None
    assert (patient.patient_id, patient.issuer, patient.name, patient.birth_date) == (
        "MRN1", "NORTH-MRN", "Doe^Jane^Q", "19800214")
    assert (logged.ack_code, logged.control_id, logged.message_type) == ("AA", "C-NW-1", "ORM^O01")
    assert logged.peer_address.startswith("127.0.0.1:")


def test_orm_change_then_cancel(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    acks = send(port, orm("C-1"), orm("C-2", "XO", priority="A", cls="I"), orm("C-3", "CA"))
    assert [ack_of(a)[0] for a in acks] == ["AA", "AA", "AA"]
    with rt.db.read_session() as s:
        order = s.scalars(select(Order)).one()
        case = s.get(Case, order.case_id)
        events = [e.kind for e in s.scalars(select(CaseEvent).where(CaseEvent.case_id == case.id)
                                            .order_by(CaseEvent.id))]
    assert order.status == "revoked" and order.priority == "urgent" and order.patient_class == "INPATIENT"
    assert case.state == "cancelled" and case.priority == "urgent"
    assert events == ["ordered", "priority_changed", "cancelled"]


def test_change_keeps_what_the_message_leaves_out(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    sparse = "\r".join([MSH.format(fac="NORTH", type="ORM^O01", ctrl="C-XO", ver="2.3"),
                        _segment("ORC", {1: "XO", 2: "P1001^RIS", 16: "new reason"})])
    acks = send(port, orm("C-1"), sparse)
    assert [ack_of(a)[0] for a in acks] == ["AA", "AA"]
    with rt.db.read_session() as s:
        order = s.scalars(select(Order)).one()
    assert order.priority == "stat" and order.procedure_code == "CTHEAD" and order.accession_number == "ACC1001"
    assert order.ordering_provider == "Hartmann^Lena" and order.patient_id == "MRN1"
    assert order.reason == "new reason"


def test_omi_o23(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    (ack,) = send(port, omi("OMI-CTRL-1"))
    assert ack_of(ack) == ("AA", "OMI-CTRL-1", "")
    with rt.db.read_session() as s:
        order = s.scalars(select(Order)).one()
        case = s.get(Case, order.case_id)
        issuer = s.scalar(select(Patient.issuer).where(Patient.id == order.patient_pk))
        south = s.scalar(select(Site.id).where(Site.code == "SOUTH"))
    assert (order.accession_number, order.modality, order.priority) == ("ACC-OMI-1", "MR", "urgent")
    assert (order.patient_id, order.patient_issuer, issuer) == ("S-77", "SOUTH-MRN", "SOUTH-MRN")
    assert order.site_id == case.site_id == south  # PV1-3.4 wins over MSH-4
    assert order.requested_at == datetime(2026, 3, 1, 20, 0, tzinfo=UTC)  # 14:00 in Chicago (TQ1-7)
    assert order.attrs["study_instance_uid"] == "1.2.3.4.5" and order.ordering_provider == "Berg^Ole"
    assert case.patient_class == "INPATIENT" and case.modality == "MR" and case.priority == "urgent"


def test_pid3_picks_the_sites_issuer(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    (ack,) = send(port, orm("C-1", pid="E-1^^^EMPI~MRN9^^^NORTH-MRN~MRN9B"))
    assert ack_of(ack)[0] == "AA"
    with rt.db.read_session() as s:
        order = s.scalars(select(Order)).one()
    assert (order.patient_id, order.patient_issuer) == ("MRN9", "NORTH-MRN")


# -- ADT --------------------------------------------------------------------------------------------


def test_adt_a08_updates_patient_and_is_audited(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    acks = send(port, orm("C-1"), adt("A08-1", "A08", "MRN1"), adt("A31-1", "A31", "MRN1^^^NORTH-MRN", sex="U"))
    assert [ack_of(a)[0] for a in acks] == ["AA", "AA", "AA"]
    assert patient_fields(rt, "MRN1", "NORTH-MRN") == ("Doe^Janet", "19800215", "", None)
    with rt.db.read_session() as s:
        audits = s.scalars(select(AuditRecord).where(AuditRecord.action == "patient.update")
                           .order_by(AuditRecord.id)).all()
    assert len(audits) == 2 and audits[0].actor == "hl7:RIS"
    assert audits[0].detail["before"]["name"] == "Doe^Jane^Q" and audits[0].detail["after"]["name"] == "Doe^Janet"


def _ingest_study(rt: Any, tmp_path: Path, patient_id: str, issuer: str, accession: str) -> int:
    paths = new_study("CT_small.dcm", tmp_path / accession, 1, PatientID=patient_id, IssuerOfPatientID=issuer,
                      AccessionNumber=accession, InstitutionName="Elsewhere")
    for p in paths:
        assert ingest_path(rt, p, actor="t").ok
    assert complete_stable_studies(rt, stable_age=0)
    created = jobs.intake(rt)
    assert len(created) == 1
    return created[0]


def test_adt_a40_merges_studies_cases_orders(hl7rt: tuple[Any, int], tmp_path: Path) -> None:
    rt, port = hl7rt
    case_id = _ingest_study(rt, tmp_path, "TEMP1", "NORTH-MRN", "ACC-TEMP")
    assert ack_of(send(port, orm("C-1", pid="TEMP1^^^NORTH-MRN", placer="P2", accession="ACC-2"))[0])[0] == "AA"
    (ack,) = send(port, adt("A40-1", "A40", "MRN1^^^NORTH-MRN", mrg="TEMP1^^^NORTH-MRN", name="Doe^Jane"))
    assert ack_of(ack) == ("AA", "A40-1", "")
    with rt.db.read_session() as s:
        survivor = s.scalars(select(Patient).where(Patient.patient_id == "MRN1")).one()
        merged = s.scalars(select(Patient).where(Patient.patient_id == "TEMP1")).one()
        study_owner = s.scalar(select(Study.patient_pk).where(Study.accession_number == "ACC-TEMP"))
        cases = s.scalars(select(Case).where(Case.patient_pk == survivor.id)).all()
        order = s.scalars(select(Order)).one()
        event = s.scalars(select(CaseEvent).where(CaseEvent.case_id == case_id, CaseEvent.kind == "patient_merged")
                          ).one()
        merge = s.scalars(select(PatientMerge)).one()
        audit = s.scalars(select(AuditRecord).where(AuditRecord.action == "patient.merge")).one()
    assert survivor.name == "Doe^Jane" and merged.merged_into_pk == survivor.id  # survivor created from the PID
    assert study_owner == survivor.id and order.patient_pk == survivor.id
    assert {c.id for c in cases} == {case_id, order.case_id}
    assert event.from_state == event.to_state and event.data["from_patient_pk"] == merged.id
    assert set(merge.moved["cases"]) == {case_id, order.case_id} and merge.moved["orders"] == [order.id]
    assert merge.source == "hl7:A40-1" and audit.resource_id == str(survivor.id)

    # New images still carrying the merged ID index under the survivor.
    later = _ingest_study(rt, tmp_path, "TEMP1", "NORTH-MRN", "ACC-LATER")
    with rt.db.read_session() as s:
        assert s.get(Case, later).patient_pk == survivor.id

    # Merging again, or into itself, is refused and changes nothing.
    before = counts(rt)
    again = send(port, adt("A40-2", "A40", "MRN1^^^NORTH-MRN", mrg="TEMP1^^^NORTH-MRN"),
                 adt("A40-3", "A40", "MRN1^^^NORTH-MRN", mrg="MRN1^^^NORTH-MRN"),
                 adt("A40-4", "A40", "NEW^^^NORTH-MRN", mrg="NOBODY^^^NORTH-MRN"))
    assert [ack_of(a) for a in again] == [("AE", "A40-2", "204"), ("AE", "A40-3", "204"), ("AE", "A40-4", "204")]
    assert "already been merged" in str(again[0]["MSA.F3"])
    assert counts(rt) == before


# -- refusals ---------------------------------------------------------------------------------------

NOT_HL7 = "GET / HTTP/1.1\rHost: example\r"
NO_CONTROL_ID = orm("X").replace("|X|P|2.3", "||P|2.3")
NO_PID = orm("C-NOPID", pid="")
UNKNOWN_TRIGGER = orm("C-O02").replace("ORM^O01", "ORM^O02")
UNKNOWN_TYPE = orm("C-QRY").replace("ORM^O01", "QRY^A19")
CANCEL_UNKNOWN = orm("C-CA", "CA", placer="P9999")
BAD_BIRTH_DATE = orm("C-DATE", birth="19801341")
BAD_PRIORITY = orm("C-PRIO", priority="Q")
BAD_TIME = orm("C-TIME").replace("20260301110000", "2026-03-01")
UNKNOWN_PATIENT = adt("A08-X", "A08", "NOBODY^^^NORTH-MRN")
BAD_VERSION = orm("C-V3").replace("|P|2.3", "|P|3.0")


@pytest.mark.parametrize(("message", "expected"), [
    (NOT_HL7, ("AR", "", "100")),
    (NO_CONTROL_ID, ("AE", "", "101")),
    (NO_PID, ("AE", "C-NOPID", "100")),
    (UNKNOWN_TRIGGER, ("AR", "C-O02", "201")),
    (UNKNOWN_TYPE, ("AR", "C-QRY", "200")),
    (CANCEL_UNKNOWN, ("AE", "C-CA", "204")),
    (BAD_BIRTH_DATE, ("AE", "C-DATE", "102")),
    (BAD_PRIORITY, ("AE", "C-PRIO", "103")),
    (BAD_TIME, ("AE", "C-TIME", "102")),
    (UNKNOWN_PATIENT, ("AE", "A08-X", "204")),
    (BAD_VERSION, ("AR", "C-V3", "203")),
], ids=["not-hl7", "no-msh10", "no-pid", "unknown-trigger", "unknown-type", "cancel-unknown", "bad-birth-date",
        "bad-priority", "bad-time", "unknown-patient", "bad-version"])
def test_bad_messages_are_refused_and_change_nothing(hl7rt: tuple[Any, int], message: str,
                                                      expected: tuple[str, str, str]) -> None:
    rt, port = hl7rt
    assert ack_of(send(port, orm("C-SETUP"))[0])[0] == "AA"  # something to leave alone
    before = counts(rt)
    payload: str | bytes = message if message.startswith("MSH") else b"\x0b" + message.encode() + b"\x1c\r"
    (ack,) = send(port, payload)
    assert ack_of(ack) == expected
    err = ack.segments("ERR")[0]
    assert str(err.extract_field(1, 8, 1, 1, 1)) and str(ack["MSA.F3"])  # a readable reason, twice
    assert counts(rt) == before
    with rt.db.read_session() as s:
        logged = s.scalars(select(Hl7Message).order_by(Hl7Message.id.desc()).limit(1)).one()
    assert logged.ack_code == expected[0] and logged.error.startswith(expected[2])


def test_one_bad_group_rejects_the_whole_message(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    good = orm("C-2G", placer="P1").split("\r")
    bad = orm("C-2G", placer="P2", priority="Q").split("\r")
    message = "\r".join(good + bad[3:])  # two order groups; the second has a bad priority
    before = counts(rt)
    (ack,) = send(port, message)
    assert ack_of(ack) == ("AE", "C-2G", "103")
    assert str(ack.segments("ERR")[0].extract_field(1, 2, 1, 1, 1)) == "ORC"
    assert str(ack.segments("ERR")[0].extract_field(1, 2, 1, 2, 1)) == "2"  # the second group
    assert counts(rt) == before


def test_duplicate_control_id_gets_the_same_ack_and_is_processed_once(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    first, second = send(port, orm("C-DUP"), orm("C-DUP"))
    (third,) = send(port, orm("C-DUP"))  # a new connection: the sender reconnected after a timeout
    assert str(first) == str(second) == str(third)
    assert ack_of(first) == ("AA", "C-DUP", "")
    with rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 1
        logged = s.scalars(select(Hl7Message).order_by(Hl7Message.id)).all()
    assert [m.ack_code for m in logged] == ["AA", "AA", "AA"]
    assert logged[0].error == "" and logged[1].error.startswith("duplicate of message")
    # The same control id from another sender is another message (here a duplicate order: AE 205).
    (other,) = send(port, orm("C-DUP", fac="SOUTH"))
    assert ack_of(other) == ("AE", "C-DUP", "205")


def test_concurrent_connections(hl7rt: tuple[Any, int]) -> None:
    """Several RIS connections at once: distinct orders all land; copies of one message land once."""
    rt, port = hl7rt

    async def burst() -> list[list[hl7.Message | None]]:
        distinct = [_exchange(port, [orm(f"C-PAR-{i}", placer=f"P-PAR-{i}", accession=f"A-PAR-{i}")])
                    for i in range(4)]
        copies = [_exchange(port, [orm("C-SAME", placer="P-SAME", accession="A-SAME")]) for _ in range(4)]
        return await asyncio.gather(*distinct, *copies)

    acks = [a[0] for a in asyncio.run(burst())]
    assert all(a is not None and ack_of(a)[0] == "AA" for a in acks)
    assert len({str(a) for a in acks[4:]}) == 1  # every copy got the one original ACK
    with rt.db.read_session() as s:
        placers = sorted(s.scalars(select(Order.placer_order_number)))
    assert placers == [*(f"P-PAR-{i}" for i in range(4)), "P-SAME"]


def test_listener_survives_garbage(hl7rt: tuple[Any, int]) -> None:
    rt, port = hl7rt
    # Bytes with no MLLP start block, then a non-UTF-8 frame, then a good message, on one connection.
    acks = send(port, b"garbage without a start block\x1c\r", b"\x0b\xff\xfe\x00junk\x1c\r", orm("C-AFTER"))
    assert [ack_of(a)[0] for a in acks] == ["AR", "AR", "AA"]
    # A peer that disconnects mid-frame, and one that sends raw noise and leaves.
    for noise in (b"\x0bMSH|^~\\&|half a mess", b"\x00\x01\x02" * 1000):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(noise)
    (ack,) = send(port, orm("C-LATER", placer="P2"))
    assert ack_of(ack) == ("AA", "C-LATER", "")
    with rt.db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 2


def test_serve_listens_for_hl7(server: Any) -> None:
    """``readingroom serve`` starts the MLLP listener on ``--hl7-port`` (wiring.start_listeners)."""
    (ack,) = send(server.settings.hl7_port, orm("SERVE-1", placer="P-SERVE", accession="ACC-SERVE", fac="NOSITE"))
    assert ack_of(ack) == ("AA", "SERVE-1", "")
    rt = server.runtime()
    try:
        with rt.db.read_session() as s:
            order = s.scalars(select(Order).where(Order.placer_order_number == "P-SERVE")).one()
            assert s.get(Case, order.case_id).state == "waiting" and order.site_id is None
    finally:
        rt.close()


def test_ack_speaks_the_senders_delimiters(rt: Any) -> None:
    """The ACK uses the sender's MSH-1/MSH-2 and escapes them inside the reason text."""
    from readingroom.interop.hl7_inbound import receive

    message = "\r".join([
        "MSH#!*\\@#RIS#NORTH#READINGROOM#RR#20260301101500##ORM!O01#D-1#P#2.4",
        "PID#1##MRN1!!!NORTH-MRN##Doe!Jane",
        "ORC#NW#P1!RIS",
        "OBR#1#P1!RIS##CT!CT Head" + "#" * 23 + "!!!!!Q\\F\\X#",  # OBR-27.6 'Q#' + 'X': no such priority
    ])
    ack = hl7.parse(receive(rt, message.encode(), "test"))
    assert str(ack).startswith("MSH#!*\\@#")
    assert ack_of(ack) == ("AE", "D-1", "103")
    assert "'Q#X'" in ack.unescape(str(ack.segment("MSA")(3)))  # escaped in the ACK, the reader gets it back
    assert str(ack.segments("ERR")[0].extract_field(1, 2, 1, 1, 1)) == "OBR"


def test_an_unexpected_failure_is_ae_207_and_rolls_back(rt: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that breaks half-way (a bug, the database) leaves nothing behind."""
    from readingroom.interop import hl7_inbound

    def half_then_boom(session: Any, m: Any) -> None:
        hl7_inbound.hl7_orders.handle_order_message(session, m)  # places the order ...
        raise RuntimeError("disk on fire")  # ... then fails before the commit

    monkeypatch.setitem(hl7_inbound.HANDLERS, ("ORM", "O01"), half_then_boom)
    before = counts(rt)
    ack = hl7.parse(hl7_inbound.receive(rt, orm("C-BOOM", fac="NOSITE").encode(), "test"))
    assert ack_of(ack) == ("AE", "C-BOOM", "207") and "disk on fire" in str(ack["MSA.F3"])
    assert counts(rt) == before
