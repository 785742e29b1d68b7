"""DICOMweb edge at ``/dicomweb``: QIDO-RS, WADO-RS (+ rendered, thumbnails) and STOW-RS.

Each route authenticates, negotiates the representation, calls one core
function (``query``, ``wado``, ``frames``, ``render``, ``stow``) and shapes
the answer; no DICOM rule lives here. Reads are sync routes (FastAPI runs
them in its thread pool) that stream files in large chunks; STOW is async
so the body is consumed as it arrives and written straight to staging
files. Audit records of reads are written after the response is sent.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from readingroom.archive import dicomweb_openapi as api_doc
from readingroom.archive import frames as fr
from readingroom.archive import media, qido, query, stow, wado
from readingroom.archive.multipart import MultipartError, MultipartWriter
from readingroom.archive.render import THUMBNAIL_VIEWPORT, RenderError, parse_render_params
from readingroom.archive.retrieve import InstanceRef, find_instances
from readingroom.governance import audit, policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal
from readingroom.runtime import Runtime

router = APIRouter(tags=["dicomweb"])
Reader = Annotated[Principal, Depends(require(policy.ARCHIVE_READ))]
Storer = Annotated[Principal, Depends(require(policy.ARCHIVE_STORE))]
INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
DRAIN_LIMIT = 16 * 1024 * 1024
AUDIT_COALESCE_SECONDS = 300.0


# -- helpers -------------------------------------------------------------------------------------------------


_PROXY_HEADERS = ("forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-for")


def _base(rt: Runtime, request: Request) -> str:
    """Base of the URLs handed out (RetrieveURL, BulkDataURI): public_url if set, else as the client called.

    Some clients (dicomweb-client) send ``Host`` without the port; when no
    proxy is involved the port the request actually reached is added back,
    else links would point at port 80. Behind a proxy, set ``public_url``.
    """
    if rt.settings.public_url:
        return rt.settings.public_url.rstrip("/") + "/dicomweb"
    root = str(request.base_url).rstrip("/")
    host = request.headers.get("host", "")
    server = request.scope.get("server")
    if (host and ":" not in host.rsplit("]", 1)[-1] and server and server[1]
            and server[1] != {"http": 80, "https": 443}.get(request.url.scheme)
            and not any(h in request.headers for h in _PROXY_HEADERS)):
        root = f"{request.url.scheme}://{host}:{server[1]}{request.scope.get('root_path', '')}".rstrip("/")
    return root + "/dicomweb"


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def _ranges(request: Request, default: str) -> list[media.MediaRange]:
    """Acceptable media ranges: the ``accept`` query parameter (PS3.18 8.3.3.1) overrides the header."""
    return media.parse_accept(request.query_params.get("accept") or request.headers.get("accept"), default)


def _fail(status: int, reason: str) -> HTTPException:
    return HTTPException(status_code=status, detail=reason)


_recent: dict[tuple[str, str, str], float] = {}
_recent_lock = threading.Lock()


def _audit(bg: BackgroundTasks, rt: Runtime, request: Request, principal: Principal, action: str, *,
           study: str = "", patient_id: str = "", detail: dict[str, Any] | None = None,
           coalesce: bool = False) -> None:
    """Queue one audit record (written in batches by ``audit.record_soon``, so it adds no latency).

    ``coalesce`` keeps per-frame/rendered reads to one record per user, study
    and action every few minutes: a viewer fetches hundreds of frames of a
    study it opened once.
    """
    if coalesce:
        key, now = (principal.username, study, action), time.monotonic()
        with _recent_lock:
            if _recent.get(key, 0.0) > now:
                return
            if len(_recent) > 50_000:
                _recent.clear()
            _recent[key] = now + AUDIT_COALESCE_SECONDS
    audit.record_soon(rt.db, actor=principal.username, source=_source(request), action=action,
                      resource_type="study" if study else "", resource_id=study, patient_id=patient_id,
                      detail=detail or {})


def _instances(rt: Runtime, principal: Principal, study: str, series: str | None = None,
               sop: str | None = None) -> list[InstanceRef]:
    with rt.db.read_session() as s:
        if not policy.can_read_study(s, principal, study):
            raise _fail(404, "study not found")
        refs = find_instances(s, study, series, sop)
    if not refs:
        what = "instance" if sop else "series" if series else "study"
        raise _fail(404, f"{what} not found")
    return refs


def _json(body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, media_type=media.DICOM_JSON, headers=headers)


# -- QIDO-RS -------------------------------------------------------------------------------------------------


def _search(level: str, request: Request, rt: Runtime, principal: Principal, bg: BackgroundTasks,
            study: str | None = None, series: str | None = None) -> Response:
    if not media.accepts_json(_ranges(request, media.DICOM_JSON)):
        raise _fail(406, "search results are available as application/dicom+json only")
    try:
        req = qido.parse_query(list(request.query_params.multi_items()))
        with rt.db.read_session() as s:
            results, more = qido.run(s, level, req, study, series, scope=policy.visible_studies(principal))
    except query.QueryError as exc:
        raise _fail(400, str(exc)) from exc
    headers = {"Warning": '299 readingroom "There are additional results that can be requested"'} if more else {}
    body = query.with_base(results, _base(rt, request))
    _audit(bg, rt, request, principal, "query", study=study or "",
           detail={"level": level, "filters": req.filters, "count": len(results)})
    return _json(body, headers)


_LEVEL_OF = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}


def _level(request: Request) -> str:
    return _LEVEL_OF[request.url.path.rstrip("/").rsplit("/", 1)[-1]]


@router.get("/studies", responses=api_doc.SEARCH)
@router.get("/series", responses=api_doc.SEARCH)
@router.get("/instances", responses=api_doc.SEARCH)
def search(request: Request, rt: RuntimeDep, p: Reader, bg: BackgroundTasks) -> Response:
    """QIDO-RS: search for studies, or for series / instances of all studies."""
    return _search(_level(request), request, rt, p, bg)


@router.get("/studies/{study}/series", responses=api_doc.SEARCH)
@router.get("/studies/{study}/instances", responses=api_doc.SEARCH)
def search_study(study: str, request: Request, rt: RuntimeDep, p: Reader, bg: BackgroundTasks) -> Response:
    """QIDO-RS: search for series or instances of one study."""
    return _search(_level(request), request, rt, p, bg, study)


@router.get("/studies/{study}/series/{series}/instances", responses=api_doc.SEARCH)
def search_series_instances(study: str, series: str, request: Request, rt: RuntimeDep, p: Reader,
                            bg: BackgroundTasks) -> Response:
    """QIDO-RS: search for instances of one series."""
    return _search("IMAGE", request, rt, p, bg, study, series)


# -- WADO-RS: instances and metadata ------------------------------------------------------------------------


def _retrieve(request: Request, rt: Runtime, principal: Principal, bg: BackgroundTasks, study: str,
              series: str | None = None, sop: str | None = None) -> Response:
    unknown = sorted(set(request.query_params) - {"accept", "charset"})
    if unknown:
        raise _fail(400, f"unsupported query parameter(s): {', '.join(unknown)}")
    ranges = _ranges(request, media.DICOM)
    refs = _instances(rt, principal, study, series, sop)
    try:
        plans = wado.plan_instances(refs, ranges)
    except wado.NotAcceptable as exc:
        raise _fail(406, str(exc)) from exc
    plans, missing = wado.present(rt, plans)
    if not plans:
        raise _fail(500, "the stored bytes of the requested instances are missing; run `readingroom check`")
    headers: dict[str, str] = {}
    if missing:
        headers["Warning"] = f'299 readingroom "{len(missing)} instance(s) unavailable: stored bytes missing"'
    _audit(bg, rt, request, principal, "study.retrieve", study=study, patient_id=refs[0].patient_id,
           detail={"series": series, "instance": sop, "instances": len(plans)})
    if sop and media.wants_single_part(ranges, media.DICOM):
        if plans[0].as_stored:
            headers["Content-Length"] = str(plans[0].ref.size)
        return StreamingResponse(wado.stream_single(rt, plans[0]), headers=headers, media_type=media.DICOM)
    writer = MultipartWriter()
    length = wado.stream_length(plans, writer)
    if length is not None:
        headers["Content-Length"] = str(length)
    return StreamingResponse(wado.stream_instances(rt, plans, writer), headers=headers,
                             media_type=writer.content_type(media.DICOM))


@router.get("/studies/{study}", responses=api_doc.INSTANCES)
def retrieve_study(study: str, request: Request, rt: RuntimeDep, p: Reader, bg: BackgroundTasks) -> Response:
    """WADO-RS: every instance of a study, as stored, in one multipart/related body."""
    return _retrieve(request, rt, p, bg, study)


@router.get("/studies/{study}/series/{series}", responses=api_doc.INSTANCES)
def retrieve_series(study: str, series: str, request: Request, rt: RuntimeDep, p: Reader,
                    bg: BackgroundTasks) -> Response:
    """WADO-RS: every instance of a series."""
    return _retrieve(request, rt, p, bg, study, series)


@router.get(INSTANCE, responses=api_doc.INSTANCES)
def retrieve_instance(study: str, series: str, instance: str, request: Request, rt: RuntimeDep, p: Reader,
                      bg: BackgroundTasks) -> Response:
    """WADO-RS: one instance."""
    return _retrieve(request, rt, p, bg, study, series, instance)


def _metadata(request: Request, rt: Runtime, principal: Principal, bg: BackgroundTasks, study: str,
              series: str | None = None, sop: str | None = None) -> Response:
    if not media.accepts_json(_ranges(request, media.DICOM_JSON)):
        raise _fail(406, "metadata is available as application/dicom+json only")
    with rt.db.read_session() as s:
        if not policy.can_read_study(s, principal, study):
            raise _fail(404, "study not found")
        body = wado.metadata_body(s, _base(rt, request), study, series, sop)
    if body is None:
        raise _fail(404, f"{'instance' if sop else 'series' if series else 'study'} not found")
    _audit(bg, rt, request, principal, "study.metadata", study=study, detail={"series": series, "instance": sop})
    return _json(body)


@router.get("/studies/{study}/metadata", responses=api_doc.METADATA)
def study_metadata(study: str, request: Request, rt: RuntimeDep, p: Reader, bg: BackgroundTasks) -> Response:
    """WADO-RS: DICOM JSON metadata of every instance of a study (from the index, no file parsing)."""
    return _metadata(request, rt, p, bg, study)


@router.get("/studies/{study}/series/{series}/metadata", responses=api_doc.METADATA)
def series_metadata(study: str, series: str, request: Request, rt: RuntimeDep, p: Reader,
                    bg: BackgroundTasks) -> Response:
    """WADO-RS: metadata of every instance of a series."""
    return _metadata(request, rt, p, bg, study, series)


@router.get(INSTANCE + "/metadata", responses=api_doc.METADATA)
def instance_metadata(study: str, series: str, instance: str, request: Request, rt: RuntimeDep, p: Reader,
                      bg: BackgroundTasks) -> Response:
    """WADO-RS: metadata of one instance."""
    return _metadata(request, rt, p, bg, study, series, instance)


# -- WADO-RS: frames and bulk data --------------------------------------------------------------------------


def _frame_choice(request: Request, ref: InstanceRef) -> media.FrameChoice:
    """How to send an instance's frames for this request's Accept (404 without pixels, 406 if impossible)."""
    if ref.pixel_offset is None and not ref.rows:
        raise _fail(404, "the instance has no pixel data")
    choice = media.choose_frame_syntax(_ranges(request, "*/*"), ref.transfer_syntax_uid)
    if choice is None:
        raise _fail(406, f"pixel data are stored as {ref.transfer_syntax_uid} "
                         f"({media.frame_media_type(ref.transfer_syntax_uid)}) and cannot be sent as requested")
    return choice


def _frames_response(rt: Runtime, request: Request, ref: InstanceRef, numbers: list[int]) -> Response:
    choice = _frame_choice(request, ref)
    n_frames = max(1, ref.number_of_frames or 1)
    bad = [n for n in numbers if n > n_frames]
    if bad:
        raise _fail(404, f"frame {bad[0]} does not exist (the instance has {n_frames})")
    try:
        data = wado.read_frames(rt, ref, numbers, choice)
    except fr.FrameError as exc:
        raise _fail(500, f"cannot extract the frames: {exc}") from exc
    except (ValueError, RuntimeError, NotImplementedError) as exc:  # no decoder for this syntax
        raise _fail(406, f"cannot decode the frames: {exc}") from exc
    writer = MultipartWriter()
    part_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    return Response(writer.whole([(part_type, d) for d in data]),
                    media_type=writer.content_type(choice.media_type, choice.transfer_syntax))


@router.get(INSTANCE + "/frames/{frame_list}", responses=api_doc.FRAMES)
def retrieve_frames(study: str, series: str, instance: str, frame_list: str, request: Request, rt: RuntimeDep,
                    p: Reader, bg: BackgroundTasks) -> Response:
    """WADO-RS: frames of an instance, read by offset from the stored file (no dataset parsing)."""
    try:
        numbers = fr.parse_frame_list(frame_list)
    except ValueError as exc:
        raise _fail(400, str(exc)) from exc
    ref = _instances(rt, p, study, series, instance)[0]
    _audit(bg, rt, request, p, "study.retrieve", study=study, patient_id=ref.patient_id, coalesce=True,
           detail={"frames": True})
    return _frames_response(rt, request, ref, numbers)


@router.get(INSTANCE + "/bulk/{tag}", responses=api_doc.FRAMES)
def retrieve_bulk(study: str, series: str, instance: str, tag: str, request: Request, rt: RuntimeDep,
                  p: Reader, bg: BackgroundTasks) -> Response:
    """WADO-RS: a bulk data element named by a BulkDataURI of the metadata (7FE00010: pixel data)."""
    try:
        tag_value = int(tag, 16) if len(tag) == 8 else -1
    except ValueError:
        tag_value = -1
    if tag_value < 0:
        raise _fail(404, f"no bulk data {tag!r} (expected an 8-hex-digit tag)")
    ref = _instances(rt, p, study, series, instance)[0]
    _audit(bg, rt, request, p, "study.retrieve", study=study, patient_id=ref.patient_id, coalesce=True,
           detail={"bulk": True})
    if tag_value in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        native = ref.transfer_syntax_uid in media.NATIVE_SYNTAXES
        if not native or ref.pixel_offset is None:
            choice = _frame_choice(request, ref)
            writer = MultipartWriter()
            return StreamingResponse(wado.stream_frames(rt, ref, choice, writer),
                                     media_type=writer.content_type(choice.media_type, choice.transfer_syntax))
        if not any(r.matches(media.OCTET) for r in _ranges(request, media.OCTET)):
            raise _fail(406, "native pixel data is available as application/octet-stream only")
        writer = MultipartWriter()
        return StreamingResponse(wado.native_pixel_stream(rt, ref, writer),
                                 media_type=writer.content_type(media.OCTET))
    data = wado.read_bulk(rt, ref, tag_value)
    if data is None:
        raise _fail(404, f"the instance has no bulk data element {tag.upper()}")
    writer = MultipartWriter()
    return Response(writer.whole([(media.OCTET, data)]), media_type=writer.content_type(media.OCTET))


# -- rendered and thumbnails --------------------------------------------------------------------------------


def _rendered(request: Request, rt: Runtime, principal: Principal, bg: BackgroundTasks, study: str,
              series: str | None = None, sop: str | None = None, frame_list: str | None = None) -> Response:
    """Rendered image(s) or a thumbnail (the route's last path segment says which)."""
    thumbnail = request.url.path.endswith("/thumbnail")
    ranges = _ranges(request, "image/jpeg")
    media_type = media.choose_rendered_type(ranges)
    if media_type is None:
        raise _fail(406, "rendered images are available as image/jpeg or image/png")
    try:
        frame = fr.parse_frame_list(frame_list)[0] if frame_list is not None else None
        params = {k: v for k, v in request.query_params.items() if k != "accept"}
        opts = parse_render_params(params, media_type, THUMBNAIL_VIEWPORT if thumbnail else None)
    except ValueError as exc:
        raise _fail(400, str(exc)) from exc
    refs = _instances(rt, principal, study, series, sop)
    _audit(bg, rt, request, principal, "study.retrieve", study=study, patient_id=refs[0].patient_id,
           coalesce=True, detail={"rendered": True})
    every = not thumbnail and len(refs) > 1 and bool(ranges) and bool(ranges[0].multipart)
    try:
        images = wado.render_instances(rt, refs, frame, opts, thumbnail=thumbnail, every=every)
    except fr.FrameError as exc:
        raise _fail(404, str(exc)) from exc
    except RenderError as exc:
        raise _fail(406, str(exc)) from exc
    if every:
        writer = MultipartWriter()
        return Response(writer.whole([(media_type, img) for img in images]),
                        media_type=writer.content_type(media_type))
    return Response(images[0], media_type=media_type, headers={"Cache-Control": "private, max-age=300"})


@router.get("/studies/{study}/rendered", responses=api_doc.RENDERED)
@router.get("/studies/{study}/thumbnail", responses=api_doc.RENDERED)
def rendered_study(study: str, request: Request, rt: RuntimeDep, p: Reader, bg: BackgroundTasks) -> Response:
    """Rendered study (middle instance, or all if multipart/related is asked) / thumbnail (128 px JPEG)."""
    return _rendered(request, rt, p, bg, study)


@router.get("/studies/{study}/series/{series}/rendered", responses=api_doc.RENDERED)
@router.get("/studies/{study}/series/{series}/thumbnail", responses=api_doc.RENDERED)
def rendered_series(study: str, series: str, request: Request, rt: RuntimeDep, p: Reader,
                    bg: BackgroundTasks) -> Response:
    """Rendered series (middle instance, or all if multipart/related is asked) / thumbnail."""
    return _rendered(request, rt, p, bg, study, series)


@router.get(INSTANCE + "/rendered", responses=api_doc.RENDERED)
@router.get(INSTANCE + "/thumbnail", responses=api_doc.RENDERED)
def rendered_instance(study: str, series: str, instance: str, request: Request, rt: RuntimeDep, p: Reader,
                      bg: BackgroundTasks) -> Response:
    """Rendered first frame (``window=center,width[,function]``, ``viewport=w,h``, ``quality``) / thumbnail."""
    return _rendered(request, rt, p, bg, study, series, instance)


@router.get(INSTANCE + "/frames/{frame_list}/rendered", responses=api_doc.RENDERED)
@router.get(INSTANCE + "/frames/{frame_list}/thumbnail", responses=api_doc.RENDERED)
def rendered_frame(study: str, series: str, instance: str, frame_list: str, request: Request, rt: RuntimeDep,
                   p: Reader, bg: BackgroundTasks) -> Response:
    """Rendered frame (the first of the list) / thumbnail of it."""
    return _rendered(request, rt, p, bg, study, series, instance, frame_list)


# -- STOW-RS -------------------------------------------------------------------------------------------------


async def _drain(body: Any, limit: int = DRAIN_LIMIT) -> None:
    """Read and drop what remains of a rejected body (up to a limit) so the client sees our answer."""
    seen = 0
    try:
        async for chunk in body:
            seen += len(chunk)
            if seen > limit:
                break
    except ClientDisconnect:
        pass


def _problem(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"detail": reason}, status_code=status,
                        headers={"Warning": '299 readingroom "' + reason.replace('"', "'") + '"'})


async def _stow(request: Request, rt: Runtime, principal: Principal, bg: BackgroundTasks,
                study_uid: str | None) -> Response:
    body = request.stream()
    if study_uid is not None:
        with rt.db.read_session() as s:
            may = policy.can_store_to_study(s, principal, study_uid)
        if not may:
            await _drain(body)
            return _problem(403, "not allowed to add instances to this study")
    try:
        parts = await stow.receive(rt, body, request.headers.get("content-type"),
                                   request.headers.get("content-length"))
    except ClientDisconnect:
        return Response(status_code=400)  # nobody is listening; nothing was stored
    except (stow.StowRequestError, MultipartError) as exc:
        status, reason = (exc.status, exc.reason) if isinstance(exc, stow.StowRequestError) else (400, str(exc))
        await _drain(body)
        bg.add_task(audit.record_now, rt.db, actor=principal.username, source=_source(request),
                    action="instance.store", outcome="failure", reason=reason, detail={"status": status})
        response = _problem(status, reason)
        response.background = bg
        return response
    results = await run_in_threadpool(stow.store_parts, rt, parts, study_uid=study_uid,
                                      actor=principal.username, source=_source(request))
    status, answer = stow.build_response(results, _base(rt, request), study_uid)
    response = Response(orjson.dumps(answer), status_code=status, media_type=media.DICOM_JSON)
    for warning in stow.warning_headers(results):
        response.headers.append("Warning", warning)
    return response


@router.post("/studies", responses=api_doc.STORE, openapi_extra=api_doc.STORE_BODY)
async def store_instances(request: Request, rt: RuntimeDep, p: Storer, bg: BackgroundTasks) -> Response:
    """STOW-RS: store the instances of a multipart/related; type="application/dicom" body."""
    return await _stow(request, rt, p, bg, None)


@router.post("/studies/{study}", responses=api_doc.STORE, openapi_extra=api_doc.STORE_BODY)
async def store_study_instances(study: str, request: Request, rt: RuntimeDep, p: Storer,
                                bg: BackgroundTasks) -> Response:
    """STOW-RS: store instances of one study (others are refused with 0xA900)."""
    return await _stow(request, rt, p, bg, study)

