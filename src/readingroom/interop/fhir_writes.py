"""What the FHIR writes do: ServiceRequest create/update through the order service, Task status changes.

Each write is one transaction that either happens completely or changes
nothing: the resource is validated before the session opens, refusals
(:class:`FhirError`, the order service's :class:`OrderError`, the case
state machine's :class:`IllegalTransition`) roll back whatever was begun,
and each refusal carries its HTTP status and reason to the edge.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.task import Task
from pydantic import ValidationError
from sqlalchemy import select

from readingroom.collab import live
from readingroom.governance import policy
from readingroom.governance.auth import Principal
from readingroom.governance.models import Site
from readingroom.interop import orders
from readingroom.interop.fhir_resources_orders import order_input, parse_service_request
from readingroom.interop.fhir_resources_work import change_task_status
from readingroom.interop.fhir_search import FhirError, int_id, validation_error
from readingroom.interop.models import Order
from readingroom.interop.orders import visible_orders as order_scope
from readingroom.runtime import Runtime
from readingroom.workflow.cases import Actor, CaseNotFound
from readingroom.workflow.models import Case
from readingroom.workflow.states import IllegalTransition, NotEligible


def _actor(principal: Principal) -> Actor:
    return Actor(name=principal.username, user_id=principal.user_id)


def _same_id(body: dict[str, Any], ident: str, resource_type: str) -> None:
    if "id" in body and str(body["id"]) != ident:
        raise FhirError(400, f"the resource's id {body['id']!r} is not the {resource_type}/{ident} of the URL",
                        "invalid", [f"{resource_type}.id"])


def _order_errors(exc: orders.OrderError) -> FhirError:
    if isinstance(exc, orders.DuplicateOrder):
        return FhirError(409, str(exc), "duplicate")
    return FhirError(422, str(exc), "business-rule")


def create_order(rt: Runtime, principal: Principal, body: Any) -> int:
    """Place the order a ServiceRequest describes (status active); the new order's id.

    The ordering site defaults to the caller's home site; the ordering
    provider to the caller's physician name, so a clinician finds the
    orders they placed.
    """
    sr = parse_service_request(body)
    if sr.status != "active":
        raise FhirError(422, f"a new order has status active, not {sr.status!r}", "business-rule",
                        ["ServiceRequest.status"])
    with rt.db.session() as s:
        data = order_input(s, sr, physician_name=principal.physician_name)
        if not data.site_code and principal.site_id is not None:
            data.site_code = s.scalar(select(Site.code).where(Site.id == principal.site_id)) or ""
        site_id = s.scalar(select(Site.id).where(Site.code == data.site_code)) if data.site_code else None
        if data.site_code and site_id is None:
            raise FhirError(422, f"unknown site {data.site_code!r}", "business-rule", ["ServiceRequest.locationCode"])
        if not policy.at_site(principal, policy.ORDERS_WRITE, site_id):
            raise FhirError(403, "placing orders for this site is not allowed", "forbidden")
        try:
            order = orders.place_order(s, data, _actor(principal))
        except orders.OrderError as exc:
            raise _order_errors(exc) from None
        return order.id


def update_order(rt: Runtime, principal: Principal, ident: str, body: Any) -> None:
    """Change an order from a ServiceRequest, or cancel it (``status: revoked``)."""
    key = int_id(ident)
    if key is None:
        raise FhirError(404, f"ServiceRequest/{ident} is not known", "not-found")
    sr = parse_service_request(body)
    _same_id(body, ident, "ServiceRequest")
    with rt.db.session() as s:
        q = select(Order).where(Order.id == key)
        scope = order_scope(principal)
        order = s.scalars(q.where(scope) if scope is not None else q).first()
        if order is None:
            raise FhirError(404, f"ServiceRequest/{ident} is not known (or not visible to you)", "not-found")
        if not policy.at_site(principal, policy.ORDERS_WRITE, order.site_id):
            raise FhirError(403, "changing orders of this site is not allowed", "forbidden")
        try:
            if sr.status == orders.REVOKED:
                orders.cancel_order(s, order, "revoked through FHIR", _actor(principal))
            elif sr.status in (orders.ACTIVE, orders.COMPLETED):
                orders.change_order(s, order, order_input(s, sr), _actor(principal))
            else:
                raise FhirError(422, f"status {sr.status!r} cannot be set here (active, or revoked to cancel)",
                                "business-rule", ["ServiceRequest.status"])
        except orders.OrderError as exc:
            raise _order_errors(exc) from None


def update_task(rt: Runtime, principal: Principal, ident: str, body: Any) -> None:
    """Apply a Task's new status to its case (see ``change_task_status``)."""
    key = int_id(ident)
    if key is None:
        raise FhirError(404, f"Task/{ident} is not known", "not-found")
    if not isinstance(body, dict) or body.get("resourceType") != "Task":
        raise FhirError(400, "the body must be a Task resource", "structure", ["resourceType"])
    try:
        task = Task.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc, "Task") from None
    _same_id(body, ident, "Task")
    try:
        with rt.db.session() as s:
            case = s.get(Case, key)
            if case is None or not policy.can_see_case(s, principal, case):
                raise FhirError(404, f"Task/{ident} is not known (or not visible to you)", "not-found")
            case = change_task_status(s, key, str(task.status), principal)
            state, claimed_by = case.state, case.claimed_by
    except CaseNotFound as exc:
        raise FhirError(404, str(exc), "not-found") from None
    except NotEligible as exc:
        raise FhirError(403, str(exc), "forbidden") from None
    except IllegalTransition as exc:
        raise FhirError(409, str(exc), "conflict") from None
    live.publish(rt, "case.changed", {"state": state, "claimed_by": claimed_by}, case_id=key)
