"""The authorisation matrix: every route x every role x own-site / other-site / related resources.

The routes come from the running app (its ``/openapi.json`` plus any route
hidden from the schema), so a new route fails here until someone writes down
who may call it in ``authz_expectations.py``. Each route is one test; a
failure lists every wrong cell as ``role target: expected ..., got ...``.
See docs/security/testing.md.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from readingroom.api_errors import api_routes
from readingroom.app import create_app
from readingroom.config import load_settings
from readingroom.governance.auth import forget_cached_credentials
from readingroom.runtime import Runtime
from readingroom.workflow.rulestore import BUILTIN_RULES
from tests.collab import authz_fixtures as critical_comments
from tests.collab import authz_resources as collab_resources
from tests.governance import authz_fhir as fhir_resources
from tests.governance import authz_interop as interop_resources
from tests.governance.authz_expectations import EXPECTATIONS, PENDING_SCOPING, Route
from tests.governance.authz_world import (
    ANONYMOUS,
    MATRIX_ROLES,
    SHARE_PASSCODE,
    World,
    build_world,
    password_of,
)
from tests.support.servers import create_test_database, drop_test_database

SKIPPED_METHODS = {"HEAD", "OPTIONS"}
STUDY_UID_TAG = "0020000D"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One app and one fixture world for the whole matrix (SQLite or PostgreSQL)."""
    forget_cached_credentials()
    db_url, db_name = create_test_database()
    base = tmp_path_factory.mktemp("authz")
    # Every request comes from one address: the per-address sign-in rate limit (tested in
    # test_login_protection.py) would answer 429 to most sign-in, password and code cells.
    rt = Runtime.open(load_settings(base / "data", database_url=db_url, stable_age_seconds=1,
                                    login_rate_per_minute=1_000_000))
    try:
        # Server errors become 500 answers, judged like any other cell (and listed with them).
        with TestClient(create_app(rt), raise_server_exceptions=False) as client:
            yield build_world(rt, base / "files", client)
    finally:
        rt.close()
        drop_test_database(db_name)


@functools.cache
def app_routes(client: TestClient) -> frozenset[str]:
    """``METHOD /path`` of every route: the published OpenAPI document and routes left out of it."""
    spec = client.get("/openapi.json")
    assert spec.status_code == 200, spec.text
    found = {f"{method.upper()} {path}" for path, ops in spec.json()["paths"].items() for method in ops
             if method.upper() not in SKIPPED_METHODS}
    for r in api_routes(client.app):  # type: ignore[arg-type]
        found.update(f"{m} {r.path_format}" for m in r.methods if m not in SKIPPED_METHODS)
    return frozenset(found)


def test_every_route_has_an_expectation(world: World) -> None:
    routes = app_routes(world.client)
    missing = sorted(routes - set(EXPECTATIONS))
    stale = sorted(set(EXPECTATIONS) - routes)
    stale_pending = sorted(set(PENDING_SCOPING) - routes)
    problems = [f"add an expectation for {r} to tests/governance/authz_expectations.py" for r in missing]
    problems += [f"{r} is no longer a route of the app: remove its expectation" for r in stale]
    problems += [f"{r} is no longer a route of the app: remove it from PENDING_SCOPING" for r in stale_pending]
    assert not problems, "\n".join(problems)


# -- building one request ------------------------------------------------------------------------------------


@dataclass
class Call:
    method: str
    url: str
    kwargs: dict[str, Any]


def _study_params(world: World, role: str, target: str) -> dict[str, Any]:
    ref = world.studies[target]
    return {"study": ref.study_uid, "study_uid": ref.study_uid, "series": ref.series_uid, "instance": ref.sop_uid,
            "frame_list": "1", "tag": "7FE00010"}


def _share_link(world: World, role: str, target: str, locked: bool = False) -> dict[str, Any]:
    _, secret = world.locked_share(target) if locked else world.fresh_share(target)
    study = "own" if target == "own" else "other"
    return {"token": secret, "uid": world.studies[study].sop_uid, "frame": 1}


def _membership(world: World, role: str, target: str) -> dict[str, Any]:
    """A site-A user's membership of site A, or a site-B user's of site B (made if a previous cell removed it)."""
    world.ensure_membership(world.readers[target], target)
    return {"username": world.readers[target], "site_code": world.site_code(target)}


def _annotation(world: World, role: str, target: str) -> dict[str, Any]:
    """A fresh point annotation on the target study's instance (an edit or delete consumes its version)."""
    from readingroom.clock import utcnow
    from readingroom.collab.annotations_models import Annotation

    ref, now = world.studies[target], utcnow()
    with world.rt.db.session() as s:
        row = Annotation(study_uid=ref.study_uid, series_uid=ref.series_uid, sop_uid=ref.sop_uid, frame=1,
                         kind="point", points=[[1.0, 1.0]], label="", measurements={}, author="matrix",
                         updated_by="matrix", created_at=now, updated_at=now, version=1)
        s.add(row)
        s.flush()
        return {"annotation_id": row.id}


#: How a fixture resource fills a path: resource kind -> (world, calling role, target) -> path parameter values.
#: Resources a request may consume (delete, release, revoke) are made fresh for every request.
PATH_VALUES: dict[str, Callable[[World, str, str], dict[str, Any]]] = {
    "study": _study_params,
    "case": lambda w, r, t: {"case_id": w.cases[t]},
    "peer": lambda w, r, t: {"name": w.fresh_peer(t)},
    "reader": lambda w, r, t: {"username": w.readers[t]},
    "user": lambda w, r, t: {"username": w.readers[t], "site_code": w.site_code(t)},
    "membership": _membership,
    "exception": lambda w, r, t: {"item_id": w.exception_items[t]},
    "rule": lambda w, r, t: {"rule_id": w.fresh_rule(t)},
    "hold": lambda w, r, t: {"hold_id": w.fresh_hold(t)},
    "review": lambda w, r, t: {"grant_id": w.fresh_review(t)},
    "token": lambda w, r, t: {"token_id": w.fresh_token(w.owner(r, t))},
    "session": lambda w, r, t: {"session_id": w.fresh_session(w.owner(r, t))},
    "share": lambda w, r, t: {"share_id": w.fresh_share(t, creator=w.owner(r, t))[0]},
    "share_link": _share_link,
    "locked_share_link": lambda w, r, t: _share_link(w, r, t, locked=True),
    "critical": critical_comments.fresh_critical,
    "comment": critical_comments.fresh_comment,
    "annotation": _annotation,
    "conference": collab_resources.conference,
    "referral": collab_resources.referral,
    "order": interop_resources.fresh_order,
    **fhir_resources.PATH_VALUES,
    "forwarding_rule": interop_resources.fresh_forwarding_rule,
    "destination": interop_resources.fresh_destination,
    "outbox_item": interop_resources.fresh_outbox_item,
    "patient": interop_resources.patient,
    "patient_link": interop_resources.fresh_patient_link,
    "procedure": interop_resources.fresh_procedure,
    "procedure_scope": interop_resources.procedure_scope,
    "procedure_mapping": interop_resources.fresh_procedure_mapping,
}


def _stow(world: World, role: str, target: str | None) -> dict[str, Any]:
    boundary = "matrix-boundary-4f1c"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + world.instance_bytes(target)
            + f"\r\n--{boundary}--\r\n".encode())
    return {"content": body,
            "headers": {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}}


_rules_version = iter(range(100, 100_000))


def _rules(world: World, role: str, target: str | None) -> dict[str, Any]:
    doc = BUILTIN_RULES.replace("version: 1", f"version: {next(_rules_version)}", 1)
    return {"content": doc, "headers": {"Content-Type": "application/yaml"}}


def _login_form(world: World, role: str, target: str | None) -> dict[str, Any]:
    """The sign-in form as a browser posts it: the double-submit CSRF value as cookie and field."""
    username = "reader_a" if role == ANONYMOUS else role
    csrf = "matrix-login-csrf-" + "x" * 16
    return {"data": {"username": username, "password": password_of(username), "csrf_token": csrf},
            "headers": {"Cookie": f"rr_login_csrf={csrf}"}}


def _own_password(world: World, role: str, target: str | None) -> dict[str, Any]:
    name = "reader_a" if role == ANONYMOUS else role
    return {"json": {"current_password": password_of(name), "new_password": password_of(name) + "-new"}}


def _form(**fields: str) -> Callable[[World, str, str | None], dict[str, Any]]:
    return lambda w, r, t: {"data": fields}


#: Request bodies of the routes that need one: route -> (world, calling role, target) -> httpx keyword arguments.
BODIES: dict[str, Callable[[World, str, str | None], dict[str, Any]]] = {
    "POST /api/v1/procedures": lambda w, r, t: {"json": {"code": w.unique("MX-"), "name": "Matrix procedure"}},
    "PUT /api/v1/procedures/{code}": lambda w, r, t: {"json": {"name": "Renamed by the matrix"}},
    "POST /api/v1/procedure-mappings": interop_resources.procedure_mapping_body,
    "POST /api/v1/procedure-mappings/import": interop_resources.procedure_import_body,
    "POST /api/v1/orders": interop_resources.order_body,
    "PUT /api/v1/orders/{order_id}": interop_resources.order_body,
    "POST /api/v1/orders/{order_id}/cancel": lambda w, r, t: {"json": {"reason": "matrix"}},
    "PUT /api/v1/interop/forwarding-rules/{rule_id}": lambda w, r, t: {"json": {"enabled": False}},
    "POST /api/v1/interop/destinations": interop_resources.destination_body,
    "PATCH /api/v1/interop/destinations/{name}": lambda w, r, t: {"json": {"enabled": False}},
    "POST /api/v1/auth/login": lambda w, r, t: {"json": {"username": "reader_a" if r == ANONYMOUS else r,
                                                         "password": password_of("reader_a" if r == ANONYMOUS
                                                                                 else r)}},
    "POST /api/v1/auth/password": _own_password,
    "POST /api/v1/auth/totp/confirm": lambda w, r, t: {"json": {"otp": "000000"}},
    "POST /api/v1/auth/totp/verify": lambda w, r, t: {"json": {"otp": "000000"}},
    "DELETE /api/v1/auth/totp": lambda w, r, t: {"json": {"otp": "000000"}},
    "POST /login": _login_form,
    "POST /account/password": lambda w, r, t: {"data": {
        "current_password": password_of(r), "new_password": password_of(r) + "-new",
        "confirm_password": password_of(r) + "-new"}},
    "POST /account/totp/confirm": _form(otp="000000"),
    "POST /account/totp/verify": _form(otp="000000"),
    "POST /account/totp/disable": _form(otp="000000"),
    "POST /api/v1/tokens": lambda w, r, t: {"json": {"name": "matrix"}},
    "POST /api/v1/users": lambda w, r, t: {"json": {"username": w.unique("user-"), "role": "technologist",
                                                     "site_id": w.site_of(t or "own")}},
    "PATCH /api/v1/users/{username}": lambda w, r, t: {"json": {"full_name": "Renamed by the matrix"}},
    "PUT /api/v1/users/{username}/memberships/{site_code}": lambda w, r, t: {"json": {"role": ""}},
    "POST /api/v1/peers": lambda w, r, t: {"json": {"name": w.unique("peer-"), "ae_title": "MATRIX",
                                                     "host": "127.0.0.1", "port": 104,
                                                     "site_id": w.site_of(t or "own")}},
    "POST /api/v1/sites": lambda w, r, t: {"json": {"code": w.unique("S"), "name": "Matrix site"}},
    "PUT /api/v1/readers/{username}": lambda w, r, t: {"json": {"home_site": w.site_code(t or "own")}},
    "PUT /api/v1/routing/rules": _rules,
    "POST /api/v1/cases/{case_id}/reassign": lambda w, r, t: {"json": {"to": "radiologist", "reason": "matrix"}},
    "POST /api/v1/cases/{case_id}/cancel": lambda w, r, t: {"json": {"reason": "matrix"}},
    "POST /api/v1/exceptions/{item_id}/resolve": lambda w, r, t: {"json": {"reason": "matrix"}},
    "POST /api/v1/cases/{case_id}/consults": lambda w, r, t: {"json": {"question": "matrix consult"}},
    "POST /api/v1/consults/{case_id}/answer": lambda w, r, t: {"json": {"text": "matrix answer"}},
    "PUT /api/v1/cases/{case_id}/report": lambda w, r, t: {"json": {"sections": {"findings": "matrix"}}},
    "POST /api/v1/cases/{case_id}/report/sign": lambda w, r, t: {"json": {"status": "final"}},
    "POST /api/v1/cases/{case_id}/report/addenda": lambda w, r, t: {"json": {"text": "matrix addendum"}},
    "POST /api/v1/peer-reviews/{case_id}/score": lambda w, r, t: {"json": {"score": "1"}},
    "POST /api/v1/studies/{study_uid}/ai-findings": lambda w, r, t: {"json": {"finding_code": "ICH",
                                                                              "positive": False}},
    "POST /api/v1/access/break-glass": lambda w, r, t: {"json": {
        "study_uid": w.studies[t or "own"].study_uid,
        "reason": "matrix check: patient in resuscitation, outside images needed now"}},
    "POST /api/v1/access/reviews/{grant_id}": lambda w, r, t: {"json": {"note": "matrix: reviewed, justified"}},
    "POST /api/v1/shares": lambda w, r, t: {"json": {"study_uid": w.studies[t or "own"].study_uid, "mode": "view",
                                                      "expires_in_hours": 1, "recipient": "matrix recipient"}},
    "POST /share/{token}/unlock": lambda w, r, t: {"json": {"passcode": SHARE_PASSCODE}},
    "POST /api/v1/retention/rules": lambda w, r, t: {"json": {"name": w.unique("rule-"),
                                                               "site_id": w.site_of(t or "own"),
                                                               "min_age_days": 36_500}},
    "POST /api/v1/retention/holds": lambda w, r, t: {"json": {"study_uid": w.studies[t or "own"].study_uid,
                                                               "reason": "matrix hold"}},
    "POST /api/v1/retention/run": lambda w, r, t: {"json": {"dry_run": True}},
    "POST /api/v1/studies/{study_uid}/annotations": lambda w, r, t: {"json": {
        "series_uid": w.studies[t or "own"].series_uid, "sop_uid": w.studies[t or "own"].sop_uid, "kind": "point",
        "points": [[1, 1]]}},
    "PUT /api/v1/annotations/{annotation_id}": lambda w, r, t: {"json": {"version": 1, "label": "matrix"}},
    "DELETE /api/v1/annotations/{annotation_id}": lambda w, r, t: {"params": {"version": 1}},
    "POST /api/v1/studies/{study_uid}/annotations/export": lambda w, r, t: {"json": {"format": "gsps"}},
    "POST /api/v1/cases/{case_id}/critical-results": lambda w, r, t: {"json": {
        "category": "matrix", "level": "1", "finding": "matrix finding"}},
    "PUT /api/v1/me/critical-delegate": lambda w, r, t: {"json": {"delegate": "reader_a"}},
    "POST /api/v1/cases/{case_id}/comments": lambda w, r, t: {"json": {"body": "matrix comment"}},
    "PUT /api/v1/comments/{comment_id}": lambda w, r, t: {"json": {"body": "matrix edit"}},
    "POST /dicomweb/studies": _stow,
    "POST /dicomweb/studies/{study}": _stow,
    **collab_resources.BODIES,
    **fhir_resources.BODIES,
}


def build_call(world: World, key: str, expect: Route, role: str, target: str | None) -> Call:
    method, path = key.split(" ", 1)
    params: dict[str, Any] = {}
    if expect.resource and target:
        if expect.resource not in PATH_VALUES:
            pytest.fail(f"no fixture resource {expect.resource!r} for {key}: add it to PATH_VALUES")
        params = PATH_VALUES[expect.resource](world, role, target)
    names = re.findall(r"{(\w+)}", path)
    unfilled = [n for n in names if n not in params]
    if unfilled:
        pytest.fail(f"{key}: no fixture value for path parameter(s) {unfilled}: name the resource in "
                    "authz_expectations.py and fill it in PATH_VALUES")
    url = re.sub(r"{(\w+)}", lambda m: str(params[m.group(1)]), path)
    kwargs = BODIES[key](world, role, target) if key in BODIES else {}
    return Call(method, url, kwargs)


def send(world: World, role: str, call: Call, credentials: str) -> httpx.Response:
    kwargs = dict(call.kwargs)
    auth = world.session_headers(role) if credentials == "session" else world.headers[role]
    headers = {**kwargs.get("headers", {}), **auth}
    if "Cookie" in kwargs.get("headers", {}) and "Cookie" in auth:
        headers["Cookie"] = f"{kwargs['headers']['Cookie']}; {auth['Cookie']}"
    kwargs["headers"] = headers
    # Streamed so an endless answer (the live events stream) does not hang the matrix: only its status
    # and headers are judged.
    with world.client.stream(call.method, call.url, follow_redirects=False, **kwargs) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
    return response


# -- judging one cell ----------------------------------------------------------------------------------------


def _text(response: httpx.Response) -> str:
    try:
        return response.text
    except httpx.ResponseNotRead:
        return f"<{response.headers.get('content-type', 'stream')}>"


def _has_results(response: httpx.Response) -> bool:
    if response.status_code == 204 or not response.content:
        return False
    body = response.json()
    return bool(body)


def _to_sign_in(response: httpx.Response) -> bool:
    """A page's way of refusing a caller without a session: a redirect to the sign-in page."""
    return response.is_redirect and response.headers.get("location", "").startswith("/login")


def judge(expect: Route, role: str, target: str | None, response: httpx.Response) -> str | None:
    """None if the response is what the table says, else why not."""
    access = expect.access_of(role)
    want = access.allowed and (target is None or target in access.targets)
    status = response.status_code
    detail = _text(response)[:120].replace("\n", " ")
    if status >= 500:
        return f"server error {status}: {detail}"
    if role == ANONYMOUS and not want:
        return None if status == 401 or _to_sign_in(response) else f"expected 401, got {status}: {detail}"
    if status == 401 and role != ANONYMOUS:
        return f"expected {'allow' if want else 'deny'}, got 401 for an authenticated caller: {detail}"
    refused = status in (401, 403, 404) or _to_sign_in(response)
    if expect.search and status in (200, 204):
        refused = not _has_results(response)
    if want and refused and status not in expect.let_through:
        return f"expected allow, got {status}{' (no results)' if status in (200, 204) else ''}: {detail}"
    if not want and not refused:
        return f"expected deny, got {status}: {detail}"
    return None


def _listed(world: World, kind: str, response: httpx.Response) -> set[str]:
    """The fixture targets that appear in a listing."""
    items = response.json()
    if isinstance(items, dict) and items.get("resourceType") == "Bundle":
        return fhir_resources.listed(world, kind, items)
    if kind == "study":
        by_uid = {ref.study_uid: name for name, ref in world.studies.items()}
        uids = {i.get(STUDY_UID_TAG, {}).get("Value", [None])[0] for i in items}
        return {by_uid[u] for u in uids if u in by_uid}
    by_id = {"case": world.cases, "exception": world.exception_items, "hold": world.holds}
    by_name = {"peer": world.peers, "user": world.readers, "rule": world.rules}
    if kind in by_id:
        ids = {i.get("id") for i in items}
        return {name for name, key in by_id[kind].items() if key in ids}
    field = "username" if kind == "user" else "name"
    names = {i.get(field) for i in items}
    return {name for name, key in by_name[kind].items() if key in names}


def check_listing(world: World, expect: Route, role: str, response: httpx.Response) -> str | None:
    access = expect.access_of(role)
    if not access.allowed or response.status_code != 200 or expect.listing is None:
        return None
    want = access.targets & set(expect.targets)
    seen = _listed(world, expect.listing, response)
    if seen != want:
        return f"listing shows {sorted(seen) or 'nothing'}, expected {sorted(want) or 'nothing'}"
    return None


# -- the matrix ----------------------------------------------------------------------------------------------


def _allowed(expect: Route, role: str, target: str | None) -> bool:
    access = expect.access_of(role)
    return access.allowed and (target is None or target in access.targets)


def _pending_cells(key: str) -> set[tuple[str, str]]:
    return {(role, target) for role, targets in PENDING_SCOPING.get(key, {}).items() for target in targets}


@pytest.mark.parametrize("key", list(EXPECTATIONS))
def test_route(world: World, key: str) -> None:
    """Every role against every fixture target of one route."""
    if key not in app_routes(world.client):
        pytest.fail(f"{key} is in the expectations but not in the app (see test_every_route_has_an_expectation)")
    expect = EXPECTATIONS[key]
    writes = not key.startswith("GET ")
    wrong: dict[tuple[str, str], str] = {}
    for role in MATRIX_ROLES:
        for target in expect.targets if expect.resource else (None,):
            call = build_call(world, key, expect, role, target)
            before = world.fingerprint() if writes else None
            response = send(world, role, call, expect.credentials)
            cell = (role, target or "*")
            problem = judge(expect, role, target, response)
            changed = writes and world.fingerprint() != before
            if changed and problem is None and not _allowed(expect, role, target):
                problem = f"refused with {response.status_code} but the request changed stored state"
            if expect.listing and problem is None:
                problem = check_listing(world, expect, role, response)
            if problem:
                wrong[cell] = problem
            if changed:
                world.restore()
    pending = _pending_cells(key)
    unexpected = {c: p for c, p in wrong.items() if c not in pending or p.startswith("server error")}
    now_passing = sorted(pending - set(wrong))
    lines = [f"{role:<20} {target:<14} {problem}" for (role, target), problem in sorted(unexpected.items())]
    lines += [f"{role:<20} {target:<14} now as the table says: delete it from PENDING_SCOPING"
              for role, target in now_passing]
    assert not lines, f"{key}:\n" + "\n".join(lines)
    if wrong:
        pytest.xfail(f"{len(wrong)} cell(s) wait for scoping: "
                     + "; ".join(f"{r}/{t}: {p}" for (r, t), p in sorted(wrong.items())))


def test_matrix_fixture_is_what_the_table_assumes(world: World) -> None:
    """Guards the meaning of the cells: the relationships exist as documented, the admin reaches everything."""
    admin = world.headers["admin"]
    for name, ref in world.studies.items():
        r = world.client.get(f"/dicomweb/studies/{ref.study_uid}/metadata", headers=admin)
        assert r.status_code == 200 and r.json(), name
    for name, case_id in world.cases.items():
        detail = world.client.get(f"/api/v1/cases/{case_id}", headers=admin).json()
        expected_state = "final" if name == "other_prior" else "claimed"
        assert detail["state"] == expected_state, (name, detail["state"])
    related = world.client.get("/api/v1/worklist", headers=world.headers["radiologist"]).json()
    assert {c["id"] for c in related} == {world.cases["own"], world.cases["other_related"]}
    prior_uid = world.studies["other_prior"].study_uid
    detail = world.client.get(f"/api/v1/cases/{world.cases['other_related']}", headers=admin).json()
    assert prior_uid in detail["priors"]
