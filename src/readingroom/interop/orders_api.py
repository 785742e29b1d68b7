"""REST edge of the orders service: ``/api/v1/orders`` (for RIS/EHR without HL7, the UI and scripts).

The same service as the HL7 and FHIR edges (``interop.orders``), so an order
placed here behaves exactly like an ORM^O01: a waiting case, priority from
the order, reconciliation with the study when it arrives.

Visibility: admins see every order; site admins and technologists their
sites' orders; a referring clinician the orders they placed (ordering
provider = their physician name). Placing or cancelling needs
``orders.write`` at the order's site.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from readingroom.api_errors import error_response
from readingroom.governance import policy
from readingroom.governance.api import PrincipalDep, RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.governance.models import Site
from readingroom.interop import orders
from readingroom.interop.models import Order
from readingroom.workflow.cases import Actor

router = APIRouter(tags=["orders"])
Orderer = Annotated[Principal, Depends(require(policy.ORDERS_WRITE))]
ERRORS: dict[int | str, dict[str, Any]] = {404: error_response("No such order (or not visible to the caller)"),
                                            409: error_response("The order cannot change in its state"),
                                            422: error_response("The order is incomplete or invalid")}


class OrderIn(BaseModel):
    """A new or changed order; one of placer number, filler number or accession is required."""

    placer_order_number: str = Field("", max_length=64)
    placer_authority: str = Field("", max_length=64)
    filler_order_number: str = Field("", max_length=64)
    accession_number: str = Field("", max_length=64)
    site: str = Field("", max_length=32, description="Site code of the ordering site")
    patient_id: str = Field(..., min_length=1, max_length=64)
    patient_issuer: str = Field("", max_length=64, description="Issuer of Patient ID (default: the site's)")
    patient_name: str = Field("", max_length=324, description="DICOM PN: Family^Given")
    birth_date: str = Field("", pattern=r"^(\d{8})?$")
    sex: str = Field("", max_length=16)
    procedure_code: str = Field("", max_length=64)
    procedure_text: str = Field("", max_length=255)
    modality: str = Field("", max_length=16)
    body_part: str = Field("", max_length=64)
    priority: str = Field("routine", description="critical, stat, urgent or routine (HL7 S/A/R accepted)")
    patient_class: str = Field("", description="ED, inpatient or outpatient (HL7 E/I/O accepted)")
    ordering_provider: str = Field("", max_length=255, description="DICOM PN of the ordering physician")
    reason: str = Field("", max_length=4000)
    requested_at: datetime | None = None

    def to_input(self) -> orders.OrderInput:
        data = self.model_dump(exclude={"site"})
        return orders.OrderInput(**data, site_code=self.site, source="api")


class CancelIn(BaseModel):
    reason: str = Field("", max_length=1000)


class OrderOut(BaseModel):
    id: int
    status: str
    placer_order_number: str
    placer_authority: str
    filler_order_number: str
    accession_number: str
    site_id: int | None
    patient_id: str
    patient_issuer: str
    procedure_code: str
    procedure_text: str
    modality: str
    body_part: str
    priority: str
    patient_class: str
    ordering_provider: str
    reason: str
    case_id: int | None
    study_pk: int | None
    source: str
    requested_at: str | None
    created_at: str
    updated_at: str


def _out(order: Order) -> OrderOut:
    data = orders.order_dict(order)
    return OrderOut(**{k: data.get(k) for k in OrderOut.model_fields})


def _visible(s: Any, principal: Principal, order_id: int) -> Order:
    q = select(Order).where(Order.id == order_id)
    scope = orders.visible_orders(principal)
    if scope is not None:
        q = q.where(scope)
    order = s.scalars(q).first()
    if order is None:
        raise HTTPException(404, f"no order {order_id}")
    return order


def _site_id(s: Any, code: str) -> int | None:
    if not code:
        return None
    site_id = s.scalar(select(Site.id).where(Site.code == code))
    if site_id is None:
        raise HTTPException(422, f"unknown site {code!r}")
    return site_id


def _may_order(principal: Principal, site_id: int | None) -> None:
    if not policy.at_site(principal, policy.ORDERS_WRITE, site_id):
        raise HTTPException(403, "placing or changing orders for this site is not allowed")


def _actor(p: Principal) -> Actor:
    return Actor(name=p.username, user_id=p.user_id)


@router.get("/orders", response_model=list[OrderOut])
def list_orders(rt: RuntimeDep, p: PrincipalDep, status: str | None = None, accession_number: str | None = None,
                patient_id: str | None = None, site: str | None = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                offset: Annotated[int, Query(ge=0)] = 0) -> list[OrderOut]:
    """Orders the caller may see, newest first, filtered by status, accession, patient or site."""
    q = select(Order)
    scope = orders.visible_orders(p)
    if scope is not None:
        q = q.where(scope)
    with rt.db.read_session() as s:
        if status:
            q = q.where(Order.status == status)
        if accession_number:
            q = q.where(Order.accession_number == accession_number)
        if patient_id:
            q = q.where(Order.patient_id == patient_id)
        if site:
            q = q.where(Order.site_id == _site_id(s, site))
        return [_out(o) for o in s.scalars(q.order_by(Order.id.desc()).limit(limit).offset(offset))]


@router.get("/orders/{order_id}", response_model=OrderOut, responses=ERRORS)
def get_order(order_id: int, rt: RuntimeDep, p: PrincipalDep) -> OrderOut:
    """One order, with the case it created and the study it was reconciled with."""
    with rt.db.read_session() as s:
        return _out(_visible(s, p, order_id))


@router.post("/orders", response_model=OrderOut, status_code=201, responses=ERRORS)
def place(body: OrderIn, rt: RuntimeDep, p: Orderer) -> OrderOut:
    """Place an order: it creates a waiting case that the study completes when it arrives."""
    try:
        with rt.db.session() as s:
            _may_order(p, _site_id(s, body.site))
            order = orders.place_order(s, body.to_input(), _actor(p))
            return _out(order)
    except orders.DuplicateOrder as exc:
        raise HTTPException(409, str(exc)) from exc
    except orders.OrderError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.put("/orders/{order_id}", response_model=OrderOut, responses=ERRORS)
def change(order_id: int, body: OrderIn, rt: RuntimeDep, p: Orderer) -> OrderOut:
    """Change an order (priority, procedure, reason ...); its open case follows."""
    try:
        with rt.db.session() as s:
            order = _visible(s, p, order_id)
            _may_order(p, order.site_id)
            return _out(orders.change_order(s, order, body.to_input(), _actor(p)))
    except orders.OrderError as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/orders/{order_id}/cancel", response_model=OrderOut, responses=ERRORS)
def cancel(order_id: int, body: CancelIn, rt: RuntimeDep, p: Orderer) -> OrderOut:
    """Cancel an order; its read is cancelled unless it is already final."""
    try:
        with rt.db.session() as s:
            order = _visible(s, p, order_id)
            _may_order(p, order.site_id)
            return _out(orders.cancel_order(s, order, body.reason, _actor(p)))
    except orders.OrderError as exc:
        raise HTTPException(409, str(exc)) from exc
