"""Fixture resources of the interoperability routes for the authorisation matrix (orders ...).

Made fresh per request, at the target's site, so a cancel or change consumes
nothing other cells need.
"""

from __future__ import annotations

from typing import Any

from readingroom.interop import orders
from tests.governance.authz_world import World


def fresh_order(world: World, role: str, target: str) -> dict[str, Any]:
    """An active order of the target's site, placed by someone other than the caller."""
    with world.rt.db.session() as s:
        order = orders.place_order(s, orders.OrderInput(
            placer_order_number=world.unique("ORD-"), accession_number=world.unique("ACC-"),
            site_code=world.site_code(target), patient_id=world.unique("PAT-"), priority="routine",
            procedure_text="CT HEAD", modality="CT", ordering_provider="Other^Orderer"))
        return {"order_id": order.id}


def order_body(world: World, role: str, target: str | None) -> dict[str, Any]:
    """A new order for the target's site (the caller's own site when the route names no target)."""
    return {"json": {"placer_order_number": world.unique("ORD-"), "site": world.site_code(target or "own"),
                     "patient_id": world.unique("PAT-"), "procedure_text": "CT HEAD", "modality": "CT",
                     "priority": "routine"}}


def fresh_forwarding_rule(world: World, role: str, target: str) -> dict[str, Any]:
    """A forwarding rule to a new DICOMweb destination of the target's site (interop/forwarding.py)."""
    from readingroom.clock import utcnow
    from readingroom.interop import forwarding
    from readingroom.interop.models import Destination

    with world.rt.db.session() as s:
        dest = Destination(name=world.unique("fwd-dest-"), kind="dicomweb", url="http://127.0.0.1:9/dicom-web",
                           site_id=world.site_of(target), options={}, events=[], created_at=utcnow())
        s.add(dest)
        s.flush()
        rule = forwarding.create_rule(s, name=world.unique("fwd-rule-"), match={}, destination=dest.id)
        return {"rule_id": rule.id}


def _patient_of(world: World, target: str) -> int:
    from sqlalchemy import select

    from readingroom.archive.models import Study

    with world.rt.db.read_session() as s:
        return s.scalar(select(Study.patient_pk).where(Study.study_uid == world.studies[target].study_uid))


def patient(world: World, role: str, target: str) -> dict[str, Any]:
    """The patient record of the target's study (interop/identity_api.py)."""
    return {"patient_pk": _patient_of(world, target)}


def fresh_patient_link(world: World, role: str, target: str) -> dict[str, Any]:
    """A 'possible' link from the target study's patient to a new record of another issuer (deciding consumes it)."""
    from readingroom.archive.models import Patient
    from readingroom.clock import utcnow
    from readingroom.interop.models import PatientLink

    mine = _patient_of(world, target)
    with world.rt.db.session() as s:
        other = Patient(patient_id=world.unique("LNK-"), issuer="MATRIX-ISSUER", name="", birth_date="", sex="",
                        attrs={}, created_at=utcnow(), updated_at=utcnow())
        s.add(other)
        s.flush()
        link = PatientLink(patient_pk=mine, other_pk=other.id, rule="demographics", state="possible", detail={},
                           created_at=utcnow())
        s.add(link)
        s.flush()
        return {"link_id": link.id}


def fresh_destination(world: World, role: str, target: str) -> dict[str, Any]:
    """A new HL7 destination of the target's site (interop/destinations.py); deleting it starves no other cell."""
    from readingroom.interop import destinations

    with world.rt.db.session() as s:
        dest = destinations.create(s, name=world.unique("dest-"), kind="hl7", host="127.0.0.1", port=9,
                                   site_id=world.site_of(target), actor="matrix")
        return {"name": dest.name}


def fresh_outbox_item(world: World, role: str, target: str) -> dict[str, Any]:
    """A pending outbox item of a new destination of the target's site (interop/outbox.py)."""
    from readingroom.interop import outbox

    name = fresh_destination(world, role, target)["name"]
    with world.rt.db.session() as s:
        from readingroom.interop import destinations

        item = outbox.enqueue(s, destinations.get(s, name).id, "hl7", world.unique("matrix-"),
                              payload="MSH|^~\\&|READINGROOM", control_id="MATRIX")
        return {"item_id": item.id}


def destination_body(world: World, role: str, target: str | None) -> dict[str, Any]:
    """A new HL7 destination of the target's site (the caller's own site when the route names no target)."""
    return {"json": {"name": world.unique("dest-"), "kind": "hl7", "host": "127.0.0.1", "port": 9,
                     "site_id": world.site_of(target or "own")}}


def fresh_procedure(world: World, role: str, target: str | None = None) -> dict[str, Any]:
    """A new canonical procedure (network-wide: the target only names the call; deleting one starves nobody)."""
    from readingroom.interop import procedures

    code = world.unique("MX-").upper()
    with world.rt.db.session() as s:
        procedures.create_procedure(s, procedures.ProcedureInput(code, "Matrix procedure", "CT"), actor="matrix")
    return {"code": code}


def procedure_scope(world: World, role: str, target: str) -> dict[str, Any]:
    """Routes whose body names a site's mapping scope: no path value (the body uses the target's site code)."""
    return {}


def fresh_procedure_mapping(world: World, role: str, target: str) -> dict[str, Any]:
    """A mapping scoped to the target's site (interop/procedure_mappings.py)."""
    from readingroom.interop import procedure_mappings

    code = fresh_procedure(world, role)["code"]
    with world.rt.db.session() as s:
        row, _ = procedure_mappings.create_mapping(s, procedure_mappings.MappingInput(
            world.site_code(target), "description", world.unique("matrix desc "), code), actor="matrix")
        return {"mapping_id": row.id}


def procedure_mapping_body(world: World, role: str, target: str | None) -> dict[str, Any]:
    """A new mapping of the target's site to a new procedure."""
    code = fresh_procedure(world, role)["code"]
    return {"json": {"scope": world.site_code(target or "own"), "source": "description",
                     "value": world.unique("matrix desc "), "procedure_code": code}}


def procedure_import_body(world: World, role: str, target: str | None) -> dict[str, Any]:
    """A one-row mappings CSV for the target's site."""
    code = fresh_procedure(world, role)["code"]
    text = f"scope,source,value,procedure_code\n{world.site_code(target or 'own')},description,matrix csv,{code}\n"
    return {"content": text, "headers": {"Content-Type": "text/csv"}}
