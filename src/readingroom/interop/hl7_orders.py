"""ORM^O01 and OMI^O23 (HL7 v2.3 – v2.5.1): imaging orders placed, changed and cancelled.

Each ORC starts an order group (its OBR, TQ1 and IPC follow it); every group
is applied in the message's one transaction, so a message with one bad group
changes nothing. ORC-1 (order control) says what to do:

* ``NW`` — new order: :func:`orders.place_order` (patient, order, waiting case);
* ``XO`` / ``SC`` — change: :func:`orders.change_order`; a field the message
  leaves empty keeps the order's value (a RIS often sends only what changed);
* ``CA`` / ``OC`` / ``DC`` — cancel: :func:`orders.cancel_order`.

Where each order field comes from (first non-empty wins):

=====================  ==========================================================
placer order number    ORC-2.1, OBR-2.1 (authority: component 2, else 3)
filler order number    ORC-3.1, OBR-3.1
accession number       IPC-1 (OMI), OBR-18 (IHE SWF), else the filler order number
priority               TQ1-9, ORC-7.6, OBR-27.6 (S/STAT, A/ASAP, R, C, P1..P4)
ordering provider      ORC-12, OBR-16 (XCN -> ``Family^Given``)
reason                 OBR-31, ORC-16 (text, else code)
procedure              OBR-4 (code ^ text; alternate code/text when no primary)
modality               IPC-5, OBR-24 (table 0074 or a DICOM modality), procedure text
patient class          PV1-2 (E -> ED, I -> inpatient, O -> outpatient)
site                   PV1-3.4, MSH-4.1 matched against the site code
patient                PID-3 (issuer: CX-4), PID-5, PID-7, PID-8
requested time         TQ1-7, ORC-7.4, OBR-6, ORC-9 (no offset: the site's time zone)
=====================  ==========================================================
"""

from __future__ import annotations

import re
from dataclasses import fields, replace
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any

import hl7
from sqlalchemy.orm import Session

from readingroom.interop import orders
from readingroom.interop.adt import demographics, identity, message_site
from readingroom.interop.hl7_fields import (
    APPLICATION_INTERNAL_ERROR,
    DUPLICATE_KEY_IDENTIFIER,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    Hl7Error,
    provider,
    segment,
    site_zone,
    timestamp,
    value,
)

if TYPE_CHECKING:
    from readingroom.governance.models import Site
    from readingroom.interop.hl7_inbound import Inbound

NEW = {"NW"}
CHANGE = {"XO", "SC"}
CANCEL = {"CA", "OC", "DC"}
#: HL7 table 0074 (diagnostic service section) and DICOM codes -> DICOM modality.
SECTION_MODALITY = {"CT": "CT", "MR": "MR", "MRI": "MR", "NMR": "MR", "US": "US", "RUS": "US", "OUS": "US",
                    "VUS": "US", "CUS": "US", "NM": "NM", "NMS": "NM", "PT": "PT", "PET": "PT", "MG": "MG",
                    "MAM": "MG", "XA": "XA", "XRC": "XA", "RF": "RF", "CR": "CR", "DX": "DX", "RX": "DX"}
_TEXT_MODALITY = [(re.compile(p, re.I), m) for p, m in (
    (r"\bCT\b|\bCTA\b|COMPUTED TOMOGRAPHY", "CT"), (r"\bMRI?\b|\bMRA\b|MAGNETIC", "MR"),
    (r"\bPET\b", "PT"), (r"MAMMO", "MG"), (r"\bUS\b|ULTRASOUND|SONO|DOPPLER", "US"),
    (r"\bNM\b|NUCLEAR|SCINTI", "NM"), (r"FLUORO", "RF"), (r"ANGIO", "XA"),
    (r"\bXR\b|X-?RAY|RADIOGRAPH", "DX"))]


class _Group:
    """One ORC and the segments of its order (OBR, TQ1, IPC)."""

    def __init__(self, orc: hl7.Segment, n: int) -> None:
        self.orc, self.n = orc, n
        self.obr: hl7.Segment | None = None
        self.tq1: hl7.Segment | None = None
        self.ipc: hl7.Segment | None = None


def _groups(msg: hl7.Message) -> list[_Group]:
    groups: list[_Group] = []
    for seg in msg:
        name = str(seg[0])
        if name == "ORC":
            groups.append(_Group(seg, len(groups) + 1))
        elif name in ("OBR", "TQ1", "IPC"):
            if not groups:
                raise Hl7Error(SEGMENT_SEQUENCE_ERROR, f"{name} before any ORC segment", segment=name)
            attr = name.lower()
            if getattr(groups[-1], attr) is None:
                setattr(groups[-1], attr, seg)
    if not groups:
        raise Hl7Error(SEGMENT_SEQUENCE_ERROR, "the message has no ORC segment (common order)", segment="ORC")
    return groups


def handle_order_message(session: Session, m: Inbound) -> None:
    """Apply every order group of an ORM^O01 / OMI^O23 (one transaction: all or nothing)."""
    site = message_site(session, m)
    for group in _groups(m.msg):
        control = value(group.orc, 1).upper()
        if not control:
            raise Hl7Error(REQUIRED_FIELD_MISSING, "order control (ORC-1) is missing", segment="ORC", field=1,
                           sequence=group.n)
        try:
            if control in NEW:
                orders.place_order(session, order_input(m, group, site), m.actor)
            elif control in CHANGE:
                existing = _existing(session, group)
                data = _keep_existing(order_input(m, group, site, existing), existing)
                orders.change_order(session, existing, data, m.actor)
            elif control in CANCEL:
                reason = _text(group.orc, 16) or f"cancelled by the placer (ORC-1 {control})"
                orders.cancel_order(session, _existing(session, group), reason, m.actor)
            else:
                raise Hl7Error(TABLE_VALUE_NOT_FOUND, f"order control {control!r} is not supported (NW, XO, SC, "
                               "CA, OC, DC)", segment="ORC", field=1, sequence=group.n)
        except orders.DuplicateOrder as exc:
            raise Hl7Error(DUPLICATE_KEY_IDENTIFIER, str(exc), segment="ORC", field=2, sequence=group.n) from exc
        except orders.OrderError as exc:
            raise Hl7Error(APPLICATION_INTERNAL_ERROR, str(exc), segment="ORC", field=1, sequence=group.n) from exc


def order_input(m: Inbound, g: _Group, site: Site | None,
                existing: orders.Order | None = None) -> orders.OrderInput:
    """The protocol-neutral order a group describes (Hl7Error naming the field when one is wrong)."""
    orc, obr, ipc = g.orc, g.obr, g.ipc
    pid = segment(m.msg, "PID", required=existing is None)
    zone: tzinfo = site_zone(site.timezone if site else "")
    placer, authority = _ei(orc, 2) or _ei(obr, 2) or ("", "")
    filler = value(orc, 3) or value(obr, 3)
    accession = value(ipc, 1) or value(obr, 18) or filler
    data = orders.OrderInput(
        placer_order_number=placer, placer_authority=authority, filler_order_number=filler,
        accession_number=accession, site_code=site.code if site else "",
        priority=_priority(g), ordering_provider=provider(orc, 12) or provider(obr, 16),
        reason=_text(obr, 31) or _text(orc, 16),
        procedure_code=value(obr, 4, 1) or value(obr, 4, 4), procedure_text=value(obr, 4, 2) or value(obr, 4, 5),
        patient_class=value(segment(m.msg, "PV1"), 2), requested_at=_requested(g, zone),
        source="hl7", source_message_id=m.control_id, attrs=_attrs(m, g),
    )
    data.modality = _modality(value(ipc, 5) or value(obr, 24), data.procedure_text or data.procedure_code)
    if pid is not None and (existing is None or value(pid, 3)):  # a change may leave the patient out
        ident = identity(pid, "PID", 3, site)
        info = demographics(pid)
        data.patient_id, data.patient_issuer = ident.id, ident.authority
        data.patient_name, data.birth_date, data.sex = (info.get("name", ""), info.get("birth_date", ""),
                                                        info.get("sex", ""))
    if not (placer or filler or accession):
        raise Hl7Error(REQUIRED_FIELD_MISSING, "the order has no placer (ORC-2), filler (ORC-3) or accession "
                       "number (OBR-18)", segment="ORC", field=2, sequence=g.n)
    return data


def _existing(session: Session, g: _Group) -> orders.Order:
    placer, authority = _ei(g.orc, 2) or _ei(g.obr, 2) or ("", "")
    filler = value(g.orc, 3) or value(g.obr, 3)
    if not (placer or filler):
        raise Hl7Error(REQUIRED_FIELD_MISSING, "the order to change or cancel needs its placer (ORC-2) or filler "
                       "(ORC-3) number", segment="ORC", field=2, sequence=g.n)
    found = orders.find_order(session, placer_order_number=placer, placer_authority=authority,
                              filler_order_number=filler)
    if found is None:
        raise Hl7Error(UNKNOWN_KEY_IDENTIFIER, f"unknown order {placer or filler}"
                       f"{f' (authority {authority})' if placer and authority else ''}", segment="ORC", field=2,
                       sequence=g.n)
    return found


def _keep_existing(data: orders.OrderInput, order: orders.Order) -> orders.OrderInput:
    """A change message's empty fields keep the order's values (an absent priority is not 'routine')."""
    keep: dict[str, Any] = {}
    for f in fields(orders.OrderInput):
        current = getattr(order, f.name, None)
        if current in (None, "") or f.name in ("attrs", "source", "source_message_id"):
            continue
        if getattr(data, f.name) in ("", None):
            keep[f.name] = current
    return replace(data, **keep)


def _ei(seg: hl7.Segment | None, field: int) -> tuple[str, str] | None:
    """An EI (entity identifier): the number and its namespace (assigning authority)."""
    number = value(seg, field, 1)
    if not number:
        return None
    return number, value(seg, field, 2) or value(seg, field, 3)


def _text(seg: hl7.Segment | None, field: int) -> str:
    """A CE/CWE as readable text: the text component, else the code."""
    return value(seg, field, 2) or value(seg, field, 1)


def _priority(g: _Group) -> str:
    for seg, name, field, comp in ((g.tq1, "TQ1", 9, 1), (g.orc, "ORC", 7, 6), (g.obr, "OBR", 27, 6)):
        raw = value(seg, field, comp)
        if raw:
            try:
                return orders.parse_priority(raw).value
            except orders.OrderError as exc:
                raise Hl7Error(TABLE_VALUE_NOT_FOUND, str(exc), segment=name, field=field, sequence=g.n) from exc
    return ""


def _requested(g: _Group, zone: tzinfo) -> datetime | None:
    for seg, name, field, comp in ((g.tq1, "TQ1", 7, 1), (g.orc, "ORC", 7, 4), (g.obr, "OBR", 6, 1),
                                   (g.orc, "ORC", 9, 1)):
        when = timestamp(seg, name, field, zone, comp)
        if when is not None:
            return when
    return None


def _modality(section: str, procedure: str) -> str:
    code = section.strip().upper()
    if code in SECTION_MODALITY:
        return SECTION_MODALITY[code]
    for pattern, modality in _TEXT_MODALITY:
        if pattern.search(procedure):
            return modality
    return ""


def _attrs(m: Inbound, g: _Group) -> dict[str, Any]:
    """What the message says beyond the order columns (kept on the order for people and reconciliation)."""
    found = {"message_type": m.message_type, "order_control": value(g.orc, 1).upper(),
             "requested_procedure_id": value(g.ipc, 2) or value(g.obr, 19),
             "scheduled_procedure_step_id": value(g.ipc, 4) or value(g.obr, 20),
             "study_instance_uid": value(g.ipc, 3), "sending_facility": m.facility_code}
    return {k: v for k, v in found.items() if v}
