"""HTTP edge of share links: the creator's API under /api/v1 and the recipient's pages under /share.

The public routes need no account: the capability is the link. Their
answers carry ``Referrer-Policy: no-referrer`` (a capability URL must not
leak to other sites through the Referer header), ``Cache-Control:
no-store`` and a Content-Security-Policy that allows nothing but this
server's own images and inline styles.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, HTTPException, Path, Request, Response, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, Field

from readingroom.api_errors import error_response
from readingroom.archive.render import RenderError, parse_render_params
from readingroom.governance import audit, policy, share_access, share_content, shares
from readingroom.governance.api import PrincipalDep, RuntimeDep
from readingroom.governance.models import ShareLink
from readingroom.runtime import Runtime

router = APIRouter(tags=["shares"])
public_router = APIRouter(tags=["shared (public)"])

UNLOCK_COOKIE = "rr_share_unlock"
VISIT_COOKIE = "rr_share_visit"
_STATUS = {"invalid": 422, "forbidden": 403, "not_found": 404, "conflict": 409, "gone": 410,
           "passcode_required": 401, "passcode_wrong": 403}
_HEADERS = {
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY", "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
}
_HTML = {"text/html": {"schema": {"type": "string"}}}


def _refusal(description: str) -> dict[str, Any]:
    """A refusal of the public routes: JSON for programs, a small page for browsers (Accept: text/html)."""
    answer = error_response(description)
    return {**answer, "content": {**answer["content"], **_HTML}}


#: What the public routes answer when a link does not open (documented in the OpenAPI document).
_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: _refusal("The link needs its passcode (POST .../unlock first)"),
    403: _refusal("Wrong passcode, or the link does not allow this (e.g. downloading from a view-only link)"),
    404: _refusal("No such link, or nothing of that name in the shared study"),
    410: _refusal("The link expired, was revoked, was locked after wrong passcodes or is used up"),
}
_PNG = {200: {"description": "The image", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        400: error_response("A malformed rendering parameter"), 406: error_response("The image cannot be rendered")}
_UNLOCK_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["passcode"],
                                    "properties": {"passcode": {"type": "string"}}}},
    "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {
        "passcode": {"type": "string"}}}}}}}
_templates = Environment(loader=PackageLoader("readingroom.governance", "templates"),
                         autoescape=select_autoescape(["html"]))


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


# -- creator's API -----------------------------------------------------------------------------------------------


class ShareIn(BaseModel):
    study_uid: str = Field(min_length=1, max_length=64)
    case_id: int | None = None
    mode: str = Field(default="view", description="view (rendered images) or download (also the DICOM files)")
    expires_in_hours: float = Field(default=72.0, description="Lifetime; at most share_max_days * 24")
    passcode: str | None = Field(default=None, description="Optional second secret the recipient must type")
    deidentify: bool = Field(default=False, description="Apply the PS3.15 Basic Profile to everything shown")
    recipient: str = Field(min_length=1, max_length=255, description="Who receives the link (for the audit)")
    recipient_region: str = Field(default="", max_length=32, description="Recipient's data residency region")
    max_accesses: int | None = Field(default=None, description="Visits allowed (None: unlimited until expiry)")


class ShareOut(BaseModel):
    id: int
    prefix: str
    study_uid: str
    case_id: int | None
    mode: str
    deidentify: bool
    recipient: str
    recipient_region: str
    has_passcode: bool
    created_by: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    max_accesses: int | None
    access_count: int
    last_access_at: datetime | None
    status: str


class ShareCreated(ShareOut):
    url: str = Field(description="The link to send; shown only now (only its hash is stored)")
    token: str


def _out(rt: Runtime, share: ShareLink) -> ShareOut:
    return ShareOut(
        id=share.id, prefix=share.prefix, study_uid=share.study_uid, case_id=share.case_id, mode=share.mode,
        deidentify=share.deidentify, recipient=share.recipient, recipient_region=share.recipient_region,
        has_passcode=share.passcode_hash is not None, created_by=share.created_by, created_at=share.created_at,
        expires_at=share.expires_at, revoked_at=share.revoked_at, max_accesses=share.max_accesses,
        access_count=share.access_count, last_access_at=share.last_access_at,
        status=shares.status_of(share, rt.settings.share_passcode_attempts),
    )


def _fail(exc: shares.ShareError) -> HTTPException:
    return HTTPException(status_code=_STATUS[exc.kind], detail=exc.reason)


def _may_share(rt: Runtime, principal: PrincipalDep, request: Request, action: str) -> None:
    """403 (audited) unless the caller holds ``shares.create``."""
    if policy.allowed(principal, policy.SHARES_CREATE):
        return
    reason = f"not allowed: {policy.SHARES_CREATE}"
    audit.record_now(rt.db, actor=principal.username, source=_source(request), action=action,
                     resource_type="share", outcome="failure", reason=reason)
    raise HTTPException(status_code=403, detail=reason)


@router.post("/shares", response_model=ShareCreated, status_code=201, responses={
    404: error_response("No such study, or not one the caller may read")})
def create_share(body: ShareIn, request: Request, rt: RuntimeDep, principal: PrincipalDep) -> ShareCreated:
    """Create a share link to a study you may read; the URL is returned once."""
    _may_share(rt, principal, request, "share.create")
    req = shares.ShareRequest(**body.model_dump())
    try:
        share, secret = shares.create_share(rt, principal, req, source=_source(request))
    except shares.ShareError as exc:
        raise _fail(exc) from exc
    return ShareCreated(**_out(rt, share).model_dump(), url=f"{rt.settings.base_url}/share/{secret}", token=secret)


@router.get("/shares", response_model=list[ShareOut])
def list_shares(request: Request, rt: RuntimeDep, principal: PrincipalDep,
                study_uid: str | None = None) -> list[ShareOut]:
    """Your share links (administrators: everyone's), optionally of one study."""
    _may_share(rt, principal, request, "share.list")
    with rt.db.read_session() as s:
        return [_out(rt, share) for share in shares.list_shares(s, principal, study_uid=study_uid)]


@router.delete("/shares/{share_id}", response_model=ShareOut)
def revoke_share(share_id: int, request: Request, rt: RuntimeDep, principal: PrincipalDep) -> ShareOut:
    """Revoke a link at once (its creator or an administrator)."""
    _may_share(rt, principal, request, "share.revoke")
    try:
        share = shares.revoke_share(rt, principal, share_id, source=_source(request))
    except shares.ShareError as exc:
        raise _fail(exc) from exc
    return _out(rt, share)


# -- the recipient's side -------------------------------------------------------------------------------------------


def _page(template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(template).render(**context), status_code=status_code,
                        headers=_HEADERS)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _denied(request: Request, rt: Runtime, token: str, exc: shares.ShareError, action: str, *,
            html: bool) -> Response:
    """The refusal (audited) as a small page for browsers, JSON for programs."""
    share_access.audit_denial(rt, token, exc, action=action, source=_source(request),
                        detail={"path": request.url.path.replace(token, token[:10] + "…")})
    code = _STATUS[exc.kind]
    headers = dict(_HEADERS)
    if code == 401:
        headers["WWW-Authenticate"] = 'Passcode realm="share"'
    if html:
        template = "share_unlock.html" if exc.kind in ("passcode_required", "passcode_wrong") else "share_error.html"
        return HTMLResponse(_templates.get_template(template).render(reason=exc.reason, token=token),
                            status_code=code, headers=headers)
    return JSONResponse({"detail": exc.reason}, status_code=code, headers=headers)


def _set_cookie(response: Response, rt: Runtime, token: str, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=f"/share/{token}", httponly=True, samesite="strict",
                        secure=rt.settings.session_cookie_secure)


def _open(request: Request, rt: Runtime, token: str, what: str) -> tuple[shares.ShareState, bool]:
    return share_access.open_share(rt, token, unlock_cookie=request.cookies.get(UNLOCK_COOKIE),
                             visit_cookie=request.cookies.get(VISIT_COOKIE), what=what, source=_source(request))


def _finish(response: Response, rt: Runtime, token: str, share: shares.ShareState, new_visit: bool) -> Response:
    for key, value in _HEADERS.items():
        response.headers.setdefault(key, value)
    if new_visit:
        _set_cookie(response, rt, token, VISIT_COOKIE, share_access.sign_cookie(share, "visit"), shares.VISIT_SECONDS)
    return response


class Opened(NamedTuple):
    share: shares.ShareState
    new_visit: bool
    study: share_content.SharedStudy


def _view(request: Request, rt: Runtime, token: str, what: str, *, html: bool = False) -> Opened | Response:
    """Open the link and load what it shows, or the (audited) refusal response."""
    try:
        share, new_visit = _open(request, rt, token, what)
        study = share_content.load_study(rt, share)
    except shares.ShareError as exc:
        return _denied(request, rt, token, exc, f"share.{what}", html=html)
    except share_content.ContentNotFound as exc:
        return _denied(request, rt, token, shares.ShareGone(str(exc)), f"share.{what}", html=html)
    return Opened(share, new_visit, study)


@public_router.get("/share/{token}", response_class=HTMLResponse, include_in_schema=False)
def share_page(token: str, request: Request, rt: RuntimeDep) -> Response:
    """The recipient's page: study, series with thumbnails, image links, download button (if allowed)."""
    opened = _view(request, rt, token, "page", html=True)
    if isinstance(opened, Response):
        return opened
    share, new_visit, study = opened
    response = _page("share.html", study=study, share=share, base=f"/share/{token}",
                     date=_date(study.date), manifest=share_content.manifest(study, share))
    return _finish(response, rt, token, share, new_visit)


def _date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else value


@public_router.get("/share/{token}/manifest", tags=["shared (public)"], responses=_REFUSALS)
def share_manifest(token: str, request: Request, rt: RuntimeDep) -> Response:
    """The shared study as JSON: series, instances, image and download paths (relative to the link)."""
    opened = _view(request, rt, token, "manifest")
    if isinstance(opened, Response):
        return opened
    share, new_visit, study = opened
    return _finish(JSONResponse(share_content.manifest(study, share)), rt, token, share, new_visit)


def _image(request: Request, rt: Runtime, token: str, uid: str, frame: int | None, *, thumbnail: bool) -> Response:
    opened = _view(request, rt, token, "image")
    if isinstance(opened, Response):
        return opened
    share, new_visit, study = opened
    try:
        opts = None if thumbnail else parse_render_params(dict(request.query_params.items()), "image/png")
    except RenderError as exc:
        return _finish(JSONResponse({"detail": str(exc)}, status_code=400), rt, token, share, new_visit)
    try:
        png = share_content.render(rt, study, uid, frame, opts)
    except share_content.ContentNotFound as exc:
        return _finish(JSONResponse({"detail": str(exc)}, status_code=404), rt, token, share, new_visit)
    except RenderError as exc:
        return _finish(JSONResponse({"detail": str(exc)}, status_code=406), rt, token, share, new_visit)
    audit.record_soon(rt.db, actor=share.actor, source=_source(request), action="share.view", resource_type="study",
                      resource_id=share.study_uid, detail={"share_id": share.id, "thumbnail": thumbnail,
                                                           "instance": uid, "frame": frame})
    return _finish(Response(png, media_type="image/png"), rt, token, share, new_visit)


@public_router.get("/share/{token}/instances/{uid}/thumbnail", tags=["shared (public)"],
                   responses={**_REFUSALS, **_PNG})
def share_thumbnail(token: str, uid: str, request: Request, rt: RuntimeDep) -> Response:
    """A 128-pixel PNG of an instance's middle frame."""
    return _image(request, rt, token, uid, None, thumbnail=True)


@public_router.get("/share/{token}/instances/{uid}/frames/{frame}/rendered", tags=["shared (public)"],
                   responses={**_REFUSALS, **_PNG})
def share_rendered(token: str, uid: str, request: Request, rt: RuntimeDep,
                   frame: Annotated[int, Path(ge=1)]) -> Response:
    """A frame rendered as PNG (``window=center,width`` and ``viewport=w,h`` as in DICOMweb)."""
    return _image(request, rt, token, uid, frame, thumbnail=False)


@public_router.get("/share/{token}/download", tags=["shared (public)"], responses={**_REFUSALS, 200: {
    "description": "The DICOM files as a ZIP", "content": {"application/zip": {"schema": {"type": "string",
                                                                                      "format": "binary"}}}}})
def share_download(token: str, request: Request, rt: RuntimeDep) -> Response:
    """The study's DICOM files as a streamed ZIP (links created with mode=download only)."""
    opened = _view(request, rt, token, "download", html=_wants_html(request))
    if isinstance(opened, Response):
        return opened
    share, new_visit, study = opened
    if share.mode != "download":
        exc = shares.ShareForbidden("this share link is view-only; it does not allow downloading the files")
        return _finish(_denied(request, rt, token, exc, "share.download", html=_wants_html(request)),
                       rt, token, share, new_visit)
    audit.record_now(rt.db, actor=share.actor, source=_source(request), action="share.download",
                     resource_type="study", resource_id=share.study_uid,
                     detail={"share_id": share.id, "instances": len(study.instances),
                             "deidentified": share.deidentify})
    name = "shared-study" + ("-deidentified" if share.deidentify else "")
    response = StreamingResponse(share_content.zip_stream(rt, study, share), media_type="application/zip",
                                 headers={"Content-Disposition": f'attachment; filename="{name}.zip"'})
    return _finish(response, rt, token, share, new_visit)


class UnlockIn(BaseModel):
    passcode: str


@public_router.post("/share/{token}/unlock", tags=["shared (public)"], openapi_extra=_UNLOCK_BODY, responses={
    **_REFUSALS, 303: {"description": "Unlocked (form post): back to the link's page"},
    422: error_response("The body is not {\"passcode\": ...}")})
async def share_unlock(token: str, request: Request, rt: RuntimeDep) -> Response:
    """Check the passcode (JSON ``{"passcode": ...}`` or the page's form); sets a short-lived cookie."""
    from fastapi.concurrency import run_in_threadpool

    html = "application/json" not in request.headers.get("content-type", "")
    try:
        if html:
            form = await request.form()
            passcode = str(form.get("passcode") or "")
        else:
            passcode = UnlockIn.model_validate_json(await request.body()).passcode
    except ValueError as exc:
        return JSONResponse({"detail": f"expected {{\"passcode\": \"...\"}}: {exc}"}, status_code=422,
                            headers=_HEADERS)
    try:
        share = await run_in_threadpool(share_access.unlock, rt, token, passcode, source=_source(request))
    except shares.ShareError as exc:
        if not exc.audited:  # wrong passcodes were audited with the counter update; the rest here
            share_access.audit_denial(rt, token, exc, action="share.unlock", source=_source(request))
        code = _STATUS[exc.kind]
        if html:
            template = "share_unlock.html" if exc.kind == "passcode_wrong" else "share_error.html"
            return HTMLResponse(_templates.get_template(template).render(reason=exc.reason, token=token),
                                status_code=code, headers=_HEADERS)
        return JSONResponse({"detail": exc.reason}, status_code=code, headers=_HEADERS)
    response: Response = RedirectResponse(f"/share/{token}", status_code=status.HTTP_303_SEE_OTHER) if html \
        else JSONResponse({"unlocked": True, "expires_in_seconds": shares.UNLOCK_SECONDS})
    for key, value in _HEADERS.items():
        response.headers.setdefault(key, value)
    _set_cookie(response, rt, token, UNLOCK_COOKIE, share_access.sign_cookie(share, "unlock"), shares.UNLOCK_SECONDS)
    return response
