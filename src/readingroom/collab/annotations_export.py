"""Annotations as DICOM: a Grayscale Softcopy Presentation State or a Comprehensive SR measurement report.

Why DICOM objects: any PACS or viewer displays a GSPS over the images, and
an SR (TID 1500 Measurement Report) carries the numbers with their codes and
regions, so measurements made here travel with the study to systems that
know nothing of ReadingRoom. Both are built with highdicom, which writes
the references to the annotated instances (and frames) the standard needs.
Optionally the object is stored into the study through the archive's own
ingest, so it is indexed, audited and found by QIDO like any received
instance.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from readingroom import __version__
from readingroom.archive.ingest import ingest_staged
from readingroom.archive.retrieve import find_instances
from readingroom.collab import annotations
from readingroom.collab.annotations_models import Annotation
from readingroom.governance import audit
from readingroom.governance.auth import Principal
from readingroom.runtime import Runtime

FORMATS = frozenset({"gsps", "sr"})
LAYER = "READINGROOM"
MANUFACTURER = "ReadingRoom"
#: Series numbers of exported objects (high, so they sort after the acquired series).
SERIES_NUMBER = {"gsps": 9901, "sr": 9902}
#: Kinds an SR measurement report carries (arrows and free text are presentation only: GSPS).
SR_KINDS = frozenset({"point", "line", "angle", "rectangle", "ellipse"})

_UNITS = {
    "mm": hd.sr.CodedConcept("mm", "UCUM", "millimeter"),
    "px": hd.sr.CodedConcept("{pixels}", "UCUM", "pixels"),
    "mm2": hd.sr.CodedConcept("mm2", "UCUM", "square millimeter"),
    "px2": hd.sr.CodedConcept("{pixels}2", "UCUM", "square pixels"),
    "deg": hd.sr.CodedConcept("deg", "UCUM", "degree"),
    "HU": hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit"),
    "": hd.sr.CodedConcept("1", "UCUM", "no units"),
}


class ExportError(ValueError):
    """Nothing to export, or the annotations cannot be expressed as the requested object."""


@dataclass(frozen=True)
class Exported:
    """The DICOM object written, and whether (and how) it went into the archive."""

    data: bytes
    sop_class_uid: str
    sop_uid: str
    series_uid: str
    study_uid: str
    stored: bool = False
    store_status: str = ""


def _sources(rt: Runtime, study_uid: str, rows: list[Annotation]) -> dict[str, Dataset]:
    """The annotated instances' headers (no pixel data), by SOP Instance UID."""
    with rt.db.read_session() as s:
        refs = find_instances(s, study_uid, sop_uids=sorted({r.sop_uid for r in rows}))
    out = {}
    for ref in refs:
        with rt.blobs.open(ref.blob_key) as fh:
            out[ref.sop_uid] = dcmread(fh, stop_before_pixels=True)
    return out


def _multiframe(ds: Dataset) -> bool:
    return int(ds.get("NumberOfFrames", 1) or 1) > 1


def _polygon(row: Annotation) -> np.ndarray:
    """A rectangle's two corners as a closed polyline (GSPS and SR have no rectangle type)."""
    (c0, r0), (c1, r1) = row.points
    return np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=np.float64)


def _summary(row: Annotation) -> str:
    m = row.measurements
    parts = [row.label] if row.label else []
    if "length" in m:
        parts.append(f"{m['length']:.1f} {m['length_unit']}")
    if "angle" in m:
        parts.append(f"{m['angle']:.1f} deg")
    if "area" in m:
        parts.append(f"{m['area']:.1f} {m['area_unit']}")
    if "mean" in m:
        parts.append(f"mean {m['mean']:.1f} sd {m['sd']:.1f} {m.get('value_unit', '')}".rstrip())
    if "value" in m:
        parts.append(f"{m['value']:.1f} {m.get('value_unit', '')}".rstrip())
    return ", ".join(parts)[:64]  # Unformatted Text Value is free text; keep it to what a viewer can show


def _graphic(row: Annotation) -> hd.pr.GraphicObject | None:
    points = np.asarray(row.points, dtype=np.float64)
    shapes = {"point": ("POINT", points), "line": ("POLYLINE", points), "arrow": ("POLYLINE", points),
              "angle": ("POLYLINE", points), "ellipse": ("ELLIPSE", points)}
    if row.kind == "rectangle":
        return hd.pr.GraphicObject("POLYLINE", _polygon(row), "PIXEL", tracking_id=f"annotation-{row.id}",
                                   tracking_uid=generate_uid())
    if row.kind not in shapes:
        return None
    kind, data = shapes[row.kind]
    return hd.pr.GraphicObject(kind, data, "PIXEL", tracking_id=f"annotation-{row.id}", tracking_uid=generate_uid())


def build_gsps(rows: list[Annotation], sources: dict[str, Dataset], *, author: str) -> Dataset:
    """One presentation state drawing every annotation on its instance and frame, with its measurements as text."""
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="ReadingRoom annotations")
    groups: dict[tuple[str, int], list[Annotation]] = {}
    for row in rows:
        groups.setdefault((row.sop_uid, row.frame), []).append(row)
    graphic_annotations = []
    for (sop_uid, frame), members in groups.items():
        ds = sources[sop_uid]
        graphics = [g for g in (_graphic(r) for r in members) if g is not None]
        texts = [hd.pr.TextObject(text, "PIXEL", anchor_point=tuple(r.points[-1 if r.kind == "arrow" else 0]))
                 for r in members if (text := _summary(r))]
        graphic_annotations.append(hd.pr.GraphicAnnotation(
            referenced_images=[ds], graphic_layer=layer, graphic_objects=graphics or None,
            text_objects=texts or None, referenced_frame_number=frame if _multiframe(ds) else None))
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=list(sources.values()), series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["gsps"], sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MANUFACTURER, software_versions=__version__,
        device_serial_number="0", content_label="ANNOTATIONS", content_description="ReadingRoom annotations",
        graphic_annotations=graphic_annotations, graphic_layers=[layer], content_creator_name=f"{author}^")


def _measurements(row: Annotation) -> list[hd.sr.Measurement]:
    m = row.measurements
    found: list[tuple[Any, float, str]] = []
    if "length" in m:
        found.append((codes.SCT.Length, m["length"], m["length_unit"]))
    if "angle" in m:
        found.append((codes.SCT.Angle, m["angle"], "deg"))
    if "area" in m:
        found.append((codes.SCT.Area, m["area"], m["area_unit"]))
    unit = m.get("value_unit", "")
    for key, code in (("mean", codes.SCT.Mean), ("sd", codes.SCT.StandardDeviation),
                      ("min", codes.SCT.Minimum), ("max", codes.SCT.Maximum)):
        if key in m:
            found.append((code, m[key], unit))
    return [hd.sr.Measurement(name=name, value=float(value),
                              unit=_UNITS.get(u) or hd.sr.CodedConcept(u, "UCUM", u))
            for name, value, u in found]


def _region(row: Annotation, ds: Dataset) -> hd.sr.ImageRegion:
    source = hd.sr.SourceImageForRegion.from_source_image(
        ds, referenced_frame_numbers=[row.frame] if _multiframe(ds) else None)
    if row.kind == "rectangle":
        return hd.sr.ImageRegion("POLYLINE", _polygon(row), source)
    kind = {"point": "POINT", "line": "POLYLINE", "angle": "POLYLINE", "ellipse": "ELLIPSE"}[row.kind]
    return hd.sr.ImageRegion(kind, np.asarray(row.points, dtype=np.float64), source)


def build_sr(rows: list[Annotation], sources: dict[str, Dataset], *, author: str) -> Dataset:
    """A TID 1500 measurement report: one planar ROI group per measurable annotation, tracked by its id."""
    groups = []
    for row in rows:
        if row.kind not in SR_KINDS:
            continue
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"annotation-{row.id}"),
            referenced_region=_region(row, sources[row.sop_uid]), measurements=_measurements(row) or None))
    if not groups:
        raise ExportError("none of the annotations is a measurement (points, lines, angles, rectangles, ellipses)")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=f"{author}^"))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_person_context=observer),
                                     procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups)
    return hd.sr.ComprehensiveSR(
        evidence=list(sources.values()), content=report[0], series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["sr"], sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True)


def export(rt: Runtime, principal: Principal, study_uid: str, *, fmt: str, sop_uids: list[str] | None = None,
           annotation_ids: list[int] | None = None, store: bool = False) -> Exported:
    """The study's (selected) annotations as a GSPS or SR Part-10 file; stored into the study if asked."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of gsps, sr")
    rows = annotations.for_study(rt, principal, study_uid, ids=annotation_ids)
    if sop_uids:
        rows = [r for r in rows if r.sop_uid in set(sop_uids)]
    if annotation_ids:
        missing = sorted(set(annotation_ids) - {r.id for r in rows})
        if missing:
            raise ExportError(f"no annotation(s) {', '.join(map(str, missing))} in study {study_uid}")
    if not rows:
        raise ExportError(f"study {study_uid} has no annotations to export")
    sources = _sources(rt, study_uid, rows)
    build = build_gsps if fmt == "gsps" else build_sr
    ds = build(rows, sources, author=principal.username)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    patient_id = str(next(iter(sources.values())).get("PatientID", ""))
    result = Exported(data, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), study_uid)
    audit.record_soon(rt.db, actor=principal.username, action="annotation.export", resource_type="study",
                      resource_id=study_uid, patient_id=patient_id,
                      detail={"format": fmt, "annotations": [r.id for r in rows], "sop_uid": result.sop_uid,
                              "stored": store})
    if not store:
        return result
    staged = rt.blobs.new_staging_path(".dcm")
    staged.write_bytes(data)
    outcome = ingest_staged(rt, staged, actor=principal.username, source="annotations")
    return Exported(data, result.sop_class_uid, result.sop_uid, result.series_uid, study_uid,
                    stored=outcome.ok, store_status=outcome.reason or outcome.status)
