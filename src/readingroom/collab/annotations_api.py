"""REST edge of image annotations and measurements (parse, authorise, call annotations.*, format)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response, status
from pydantic import BaseModel, Field

from readingroom.api_errors import error_response
from readingroom.collab import annotations as svc
from readingroom.collab.annotations_export import ExportError, export
from readingroom.collab.annotations_measure import KINDS
from readingroom.collab.annotations_models import Annotation, AnnotationVersion
from readingroom.governance import policy
from readingroom.governance.api import RuntimeDep, require
from readingroom.governance.auth import Principal

router = APIRouter(tags=["annotations"])
Reader = Annotated[Principal, Depends(require(policy.ARCHIVE_READ))]
Writer = Annotated[Principal, Depends(require(policy.ANNOTATIONS_WRITE))]
Kind = Literal["point", "line", "angle", "ellipse", "rectangle", "arrow", "text"]
assert set(Kind.__args__) == KINDS  # type: ignore[attr-defined]
Point = Annotated[list[float], Field(min_length=2, max_length=2, description="[column, row] in image pixels")]
INVALID = error_response("The geometry, frame or label cannot be stored (the reasons are listed)")
STALE = {409: error_response("The annotation changed since the version sent (body 'version'); reload it"),
         412: error_response("If-Match names an older version of the annotation; reload it")}
DICOM = {200: {"content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
               "description": "The presentation state or SR as a DICOM Part-10 file"},
         422: error_response("Unknown format, or nothing in the selection can be exported")}


class AnnotationIn(BaseModel):
    """A new annotation: where it is and its geometry (the server measures it)."""

    series_uid: str = Field(max_length=64)
    sop_uid: str = Field(max_length=64, description="SOP Instance UID of the annotated image")
    frame: int = Field(1, ge=1, description="1-based frame number")
    kind: Kind
    points: list[Point] = Field(max_length=16)
    label: str = Field("", max_length=svc.MAX_LABEL)


class AnnotationEdit(BaseModel):
    """New geometry and/or label for the version the client last saw."""

    version: int | None = Field(None, ge=1, description="The version edited (or send If-Match)")
    points: list[Point] | None = Field(None, max_length=16)
    label: str | None = Field(None, max_length=svc.MAX_LABEL)


class AnnotationOut(BaseModel):
    id: int
    study_uid: str
    series_uid: str
    sop_uid: str
    frame: int
    case_id: int | None
    kind: str
    points: list[list[float]]
    label: str
    measurements: dict[str, Any] = Field(description="Computed by the server: length, angle, area, mean, sd, "
                                                     "min, max, pixel_count, units, spacing_source, notes")
    author: str
    updated_by: str
    created_at: datetime
    updated_at: datetime
    deleted: bool
    version: int


class AnnotationVersionOut(BaseModel):
    version: int
    action: str
    kind: str
    points: list[list[float]]
    label: str
    measurements: dict[str, Any]
    by: str
    at: datetime


class ExportIn(BaseModel):
    format: Literal["gsps", "sr"] = Field(description="gsps: Grayscale Softcopy Presentation State; "
                                                      "sr: Comprehensive SR measurement report (TID 1500)")
    sop_uids: list[str] | None = Field(None, max_length=1000, description="Only these instances' annotations")
    annotation_ids: list[int] | None = Field(None, max_length=1000, description="Only these annotations")
    store: bool = Field(False, description="Also store the object into the study (needs annotations.write)")


def _out(row: Annotation) -> AnnotationOut:
    return AnnotationOut(id=row.id, study_uid=row.study_uid, series_uid=row.series_uid, sop_uid=row.sop_uid,
                         frame=row.frame, case_id=row.case_id, kind=row.kind, points=row.points, label=row.label,
                         measurements=row.measurements, author=row.author, updated_by=row.updated_by,
                         created_at=row.created_at, updated_at=row.updated_at, deleted=row.deleted_at is not None,
                         version=row.version)


def _version_out(v: AnnotationVersion) -> AnnotationVersionOut:
    return AnnotationVersionOut(version=v.version, action=v.action, kind=v.kind, points=v.points, label=v.label,
                                measurements=v.measurements, by=v.by, at=v.at)


def _etag(row: Annotation) -> str:
    return f'"annotation-{row.id}-v{row.version}"'


def _expected(if_match: str | None, body_version: int | None, annotation_id: int) -> tuple[int, int]:
    """The version the client edits and the status a stale one gets (412 for If-Match, 409 for the body)."""
    if if_match:
        tag = if_match.strip().removeprefix("W/").strip('"')
        prefix = f"annotation-{annotation_id}-v"
        if not tag.startswith(prefix) or not tag[len(prefix):].isdigit():
            raise HTTPException(status.HTTP_412_PRECONDITION_FAILED,
                                f"If-Match {if_match} does not name a version of annotation {annotation_id}")
        return int(tag[len(prefix):]), status.HTTP_412_PRECONDITION_FAILED
    if body_version is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            "say which version you edit: 'version' in the body or an If-Match header")
    return body_version, status.HTTP_409_CONFLICT


def _not_found(exc: svc.AnnotationNotFound) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))


def _invalid(exc: svc.InvalidAnnotation) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, {"message": "invalid annotation",
                                                                 "reasons": exc.reasons})


@router.get("/studies/{study_uid}/annotations", response_model=list[AnnotationOut])
def list_annotations(study_uid: str, rt: RuntimeDep, p: Reader, sop_uid: str | None = None,
                     frame: Annotated[int | None, Query(ge=1)] = None,
                     include_deleted: bool = False) -> list[AnnotationOut]:
    """The study's annotations (optionally of one instance and frame), with their measurements."""
    try:
        rows = svc.for_study(rt, p, study_uid, sop_uid=sop_uid, frame=frame, include_deleted=include_deleted)
    except svc.AnnotationNotFound as exc:
        raise _not_found(exc) from None
    return [_out(r) for r in rows]


@router.post("/studies/{study_uid}/annotations", response_model=AnnotationOut, status_code=201,
             responses={422: INVALID})
def create_annotation(study_uid: str, body: AnnotationIn, rt: RuntimeDep, p: Writer,
                      response: Response) -> AnnotationOut:
    """Annotate one frame; lengths, angles, areas and ROI statistics are measured on the stored pixels."""
    try:
        row = svc.create(rt, p, study_uid=study_uid, series_uid=body.series_uid, sop_uid=body.sop_uid,
                         frame=body.frame, kind=body.kind, points=[list(pt) for pt in body.points],
                         label=body.label)
    except svc.AnnotationNotFound as exc:
        raise _not_found(exc) from None
    except svc.InvalidAnnotation as exc:
        raise _invalid(exc) from None
    response.headers["ETag"] = _etag(row)
    response.headers["Location"] = f"/api/v1/annotations/{row.id}"
    return _out(row)


@router.get("/annotations/{annotation_id}", response_model=AnnotationOut)
def get_annotation(annotation_id: int, rt: RuntimeDep, p: Reader, response: Response) -> AnnotationOut:
    """One annotation (ETag: its version, for If-Match on edit)."""
    try:
        row = svc.get(rt, p, annotation_id)
    except svc.AnnotationNotFound as exc:
        raise _not_found(exc) from None
    response.headers["ETag"] = _etag(row)
    return _out(row)


@router.put("/annotations/{annotation_id}", response_model=AnnotationOut, responses={422: INVALID, **STALE})
def edit_annotation(annotation_id: int, body: AnnotationEdit, rt: RuntimeDep, p: Writer, response: Response,
                    if_match: Annotated[str | None, Header()] = None) -> AnnotationOut:
    """Move or relabel an annotation; re-measured, the old version kept in its history."""
    version, stale_status = _expected(if_match, body.version, annotation_id)
    try:
        row = svc.update_annotation(rt, p, annotation_id, expected_version=version,
                                    points=None if body.points is None else [list(pt) for pt in body.points],
                                    label=body.label)
    except svc.AnnotationNotFound as exc:
        raise _not_found(exc) from None
    except svc.InvalidAnnotation as exc:
        raise _invalid(exc) from None
    except svc.StaleVersion as exc:
        raise HTTPException(stale_status, str(exc)) from None
    response.headers["ETag"] = _etag(row)
    return _out(row)


@router.delete("/annotations/{annotation_id}", response_model=AnnotationOut, responses=STALE)
def delete_annotation(annotation_id: int, rt: RuntimeDep, p: Writer,
                      version: Annotated[int | None, Query(ge=1, description="The version deleted")] = None,
                      if_match: Annotated[str | None, Header()] = None) -> AnnotationOut:
    """Delete an annotation (its history stays, as does every object exported from it)."""
    expected, stale_status = _expected(if_match, version, annotation_id)
    try:
        row = svc.update_annotation(rt, p, annotation_id, expected_version=expected, delete=True)
    except svc.AnnotationNotFound as exc:
        raise _not_found(exc) from None
    except svc.StaleVersion as exc:
        raise HTTPException(stale_status, str(exc)) from None
    return _out(row)


@router.get("/annotations/{annotation_id}/history", response_model=list[AnnotationVersionOut])
def annotation_history(annotation_id: int, rt: RuntimeDep, p: Reader) -> list[AnnotationVersionOut]:
    """Every version of the annotation, oldest first: who changed what, when."""
    try:
        return [_version_out(v) for v in svc.history(rt, p, annotation_id)]
    except svc.AnnotationNotFound as exc:
        raise _not_found(exc) from None


@router.post("/studies/{study_uid}/annotations/export", response_class=Response, responses=DICOM)
def export_annotations(study_uid: str, body: ExportIn, rt: RuntimeDep, p: Reader) -> Response:
    """The annotations as DICOM (GSPS or SR), optionally stored into the study (Content-Location says where)."""
    if body.store and not policy.allowed(p, policy.ANNOTATIONS_WRITE):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"not allowed: {policy.ANNOTATIONS_WRITE} (to store)")
    try:
        out = export(rt, p, study_uid, fmt=body.format, sop_uids=body.sop_uids, annotation_ids=body.annotation_ids,
                     store=body.store)
    except svc.AnnotationNotFound as exc:
        raise _not_found(exc) from None
    except ExportError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    headers = {"Content-Disposition": f'attachment; filename="{out.sop_uid}.dcm"',
               "X-SOP-Instance-UID": out.sop_uid}
    if body.store:
        if not out.stored:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                f"the archive did not store the object: {out.store_status}")
        headers["Content-Location"] = (f"/dicomweb/studies/{out.study_uid}/series/{out.series_uid}"
                                       f"/instances/{out.sop_uid}")
    return Response(out.data, media_type="application/dicom", headers=headers)
