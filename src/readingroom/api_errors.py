"""The error answers every HTTP route can give: handled once, and written into the OpenAPI document.

Clients generate code and tests from ``/openapi.json``, so an answer the
document does not promise is a bug even when it is the right answer. Some
answers do not belong to any one route: the authentication dependency
answers 401 and 403 (no or bad credentials, a scope or CSRF refusal, a
relationship the caller lacks), a route with path parameters answers 404
for a resource that does not exist or that the caller may not know of, the
database handler answers 503, and handlers raise 422 with a plain message
besides FastAPI's list of field errors. Writing those here, once, keeps the
document honest for every route, including the ones added later; answers
particular to a route (409, 406, 415 ...) are declared on the route itself.

Input that passed validation can still not fit the database: an id beyond
SQLite's 64-bit integers, a name longer than a PostgreSQL ``varchar``, a NUL
character PostgreSQL text cannot hold, a duration that overflows a date. Without a handler each is a 500 (and a
stack trace in the log) on one database and not the other; it is bad input,
so it is answered 422, the same on both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError

log = logging.getLogger(__name__)

ERROR_SCHEMA = "ErrorOut"
#: The ways a caller authenticates (any one of them), as OpenAPI security schemes.
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API token (readingroom token create USER)"},
    "basic": {"type": "http", "scheme": "basic", "description": "Username and password"},
    "session": {"type": "apiKey", "in": "cookie", "name": "rr_session",
                "description": "The browser session of /login; unsafe methods also need X-CSRF-Token"},
}


class ErrorOut(BaseModel):
    """The body of every error answer: ``detail`` says why, in words a person can act on."""

    detail: str | list[dict[str, Any]] | dict[str, Any] = Field(
        description="The reason: a message, FastAPI's list of field errors, or a structured explanation")


def error_response(description: str) -> dict[str, Any]:
    """A documented error answer for a route's ``responses={status: ...}``: the reason, as ErrorOut in JSON.

    The media type is explicit: with ``"model"`` FastAPI would document the error under the route's own
    media type (text/html for an HTML page), while errors are always JSON. The ErrorOut schema itself is
    added to the document by :func:`install_error_docs`.
    """
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}}



def _depends_on(dependant: Dependant, calls: tuple[Callable[..., Any], ...]) -> bool:
    stack = list(dependant.dependencies)
    while stack:
        dep = stack.pop()
        if dep.call in calls:
            return True
        stack.extend(dep.dependencies)
    return False


def _params(dependant: Dependant) -> tuple[bool, bool]:
    """Whether the route (with its dependencies) takes path parameters, and query or header parameters."""
    path = query = False
    stack = [dependant]
    while stack:
        dep = stack.pop()
        path = path or bool(dep.path_params)
        query = query or bool(dep.query_params or dep.header_params)
        stack.extend(dep.dependencies)
    return path, query


def api_routes(app: FastAPI) -> Iterator[APIRoute]:
    """Every API route of ``app`` as it is served (with its router's prefix), including hidden ones.

    FastAPI (0.16x) keeps included routers as branches of ``app.routes``;
    ``iter_route_contexts`` walks them and answers each route's effective
    path and dependencies. Older FastAPI flattened them into ``app.routes``.
    """
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before the included-router branches
        yield from (r for r in app.routes if isinstance(r, APIRoute))
        return
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context  # type: ignore[misc]  # a RouteContext answers every APIRoute attribute


def common_errors(route: APIRoute, authenticated: bool) -> dict[str, dict[str, Any]]:
    """The answers ``route`` can give whatever its handler does."""
    errors = {"503": error_response("The database is unavailable; retry after the Retry-After seconds")}
    if authenticated:
        errors["401"] = error_response("No, malformed, expired or revoked credentials (see WWW-Authenticate)")
        errors["403"] = error_response("Authenticated, but not allowed: role, site, relationship, token scope or CSRF")
    path, query = _params(route.dependant)
    if path:
        errors["404"] = error_response("No such resource, or none the caller may know of")
    if route.body_field:
        errors["400"] = error_response("The body cannot be parsed (not JSON, or not the declared media type)")
    if path or query or route.body_field:
        errors["422"] = error_response("Invalid input: a message, or the list of fields in error")
    return errors


def install_error_docs(app: FastAPI, *authenticate: Callable[..., Any]) -> None:
    """Generate ``app``'s OpenAPI document with the common error answers added to every operation.

    ``authenticate`` are the dependencies that authenticate callers: routes that
    depend on it (directly or through another dependency) answer 401 and 403
    and carry the security requirements, so clients and the Swagger UI know.
    Answers a route declares itself are left as they are, except that a 422
    is widened to :class:`ErrorOut`, which includes FastAPI's field errors.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                          summary=app.summary, description=app.description, routes=app.routes,
                          tags=app.openapi_tags, servers=app.servers)
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {}).setdefault(
            ERROR_SCHEMA, ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}"))
        components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
        for route in api_routes(app):
            if not route.include_in_schema:
                continue
            operations = doc["paths"].get(route.path_format, {})
            authenticated = _depends_on(route.dependant, authenticate)
            errors = common_errors(route, authenticated)
            for method in route.methods:
                op = operations.get(method.lower())
                if op is None:
                    continue
                if authenticated:
                    op.setdefault("security", [{name: []} for name in SECURITY_SCHEMES])
                responses = op.setdefault("responses", {})
                for status, answer in errors.items():
                    if status == "422" and status in responses:
                        if "application/json" in responses[status].get("content", {"application/json": {}}):
                            # (a route answering in its own media type, e.g. FHIR's OperationOutcome, keeps it)
                            responses[status] = {**answer, "description": responses[status]["description"]}
                    elif status not in responses:
                        responses[status] = answer
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def install_input_error_handlers(app: FastAPI) -> None:
    """Answer 422 for request values the database or the calendar cannot hold (see the module docstring)."""

    def does_not_fit(request: Request, exc: Exception) -> JSONResponse:
        log.warning("%s %s: a request value does not fit: %s", request.method, request.url.path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return JSONResponse({"detail": "a value in the request cannot be stored or compared: too long, out of "
                                       "range or containing a NUL character"}, status_code=422)

    app.add_exception_handler(DataError, does_not_fit)
    app.add_exception_handler(OverflowError, does_not_fit)
