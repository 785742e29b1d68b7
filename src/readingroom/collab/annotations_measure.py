"""Geometry checks and measurements of annotations, computed on the server from the stored pixels.

Why here and not in the viewer: a number that goes into a report must not
depend on which viewer drew it. Lengths use the frame's Pixel Spacing (or
Imager Pixel Spacing, which is at the detector and says so), ROI statistics
use the stored values of the real frame through the Modality LUT (Rescale
Slope/Intercept; Hounsfield units for CT), all with numpy.

Coordinates are (column, row) in image pixel space as DICOM presentation
states and SR use them (PS3.3 C.10.5.1.2): (0, 0) is the top left corner of
the top left pixel, so that pixel's centre is (0.5, 0.5). A pixel belongs
to a region when its centre lies inside it (on the border counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

#: Points each kind takes: line/arrow (from, to), angle (arm end, vertex, arm end), rectangle (two opposite
#: corners, axis-aligned), ellipse (major axis ends, then minor axis ends, as GSPS/SR ELLIPSE).
POINT_COUNTS = {"point": 1, "line": 2, "angle": 3, "arrow": 2, "text": 1, "rectangle": 2, "ellipse": 4}
KINDS = frozenset(POINT_COUNTS)
#: Kinds whose measurements need the frame's pixel values.
NEEDS_PIXELS = frozenset({"point", "rectangle", "ellipse"})
#: How far (pixels) the minor axis's midpoint may be from the major axis's, and degrees off perpendicular.
ELLIPSE_CENTRE_TOLERANCE = 0.5
ELLIPSE_ANGLE_TOLERANCE = 1.0
IMAGER_NOTE = ("measured with Imager Pixel Spacing: distances at the detector plane, not corrected for "
               "geometric magnification")
NO_SPACING_NOTE = "the image has no pixel spacing: distances and areas are in pixels"


@dataclass(frozen=True)
class Calibration:
    """How one frame's pixels map to millimetres and to meaningful values."""

    row_mm: float | None  # distance between the centres of adjacent rows
    col_mm: float | None  # distance between the centres of adjacent columns
    spacing_source: str  # PixelSpacing, ImagerPixelSpacing or none
    value_unit: str  # HU, the Rescale Type, or '' for unitless stored values
    grayscale: bool

    @property
    def calibrated(self) -> bool:
        return self.row_mm is not None and self.col_mm is not None


def _functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The frame's item of a functional-group macro (per-frame first, then shared), for enhanced objects."""
    for groups_name, index in (("PerFrameFunctionalGroupsSequence", frame - 1),
                               ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_name)
        if groups and len(groups) > index:
            items = groups[index].get(sequence)
            if items:
                return items[0]
    return None


def _spacing(value: Any) -> tuple[float, float] | None:
    try:
        row_mm, col_mm = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(row_mm) and math.isfinite(col_mm)) or row_mm <= 0 or col_mm <= 0:
        return None
    return row_mm, col_mm


def calibration(ds: Dataset, frame: int) -> Calibration:
    """Spacing and value unit of ``frame`` (1-based) of a dataset read without its pixel data."""
    measures = _functional_item(ds, frame, "PixelMeasuresSequence")
    found, source = None, "none"
    for src in (measures, ds):
        if src is not None and src.get("PixelSpacing") is not None:
            found, source = _spacing(src.PixelSpacing), "PixelSpacing"
            if found:
                break
    if found is None and ds.get("ImagerPixelSpacing") is not None:
        found = _spacing(ds.ImagerPixelSpacing)
        source = "ImagerPixelSpacing" if found else "none"
    if found is None:
        source = "none"
    transform = _functional_item(ds, frame, "PixelValueTransformationSequence") or ds
    unit = str(transform.get("RescaleType", "") or "")
    if not unit and str(ds.get("Modality", "")) == "CT":
        unit = "HU"
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    grayscale = photometric.startswith("MONOCHROME") and int(ds.get("SamplesPerPixel", 1) or 1) == 1
    return Calibration(found[0] if found else None, found[1] if found else None, source, unit, grayscale)


def modality_values(arr: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    """Stored values of one frame -> modality values (float64), with the frame's own rescale if it has one."""
    transform = _functional_item(ds, frame, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform:
        source = Dataset()
        source.RescaleSlope = transform.RescaleSlope
        source.RescaleIntercept = transform.get("RescaleIntercept", 0)
        ds = source
    return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)


# -- validation ----------------------------------------------------------------------------------------------


def check_geometry(kind: str, points: list[list[float]], rows: int, columns: int, label: str) -> list[str]:
    """Every reason the geometry is unacceptable on a ``rows`` x ``columns`` image (empty: fine)."""
    if kind not in KINDS:
        return [f"unknown kind {kind!r}; one of {', '.join(sorted(KINDS))}"]
    reasons = []
    want = POINT_COUNTS[kind]
    if len(points) != want:
        reasons.append(f"a {kind} takes {want} point(s) [column, row], got {len(points)}")
    for i, pt in enumerate(points):
        if len(pt) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) for v in pt):
            reasons.append(f"point {i + 1} must be [column, row] with two finite numbers")
        elif not (0 <= pt[0] <= columns and 0 <= pt[1] <= rows):
            reasons.append(f"point {i + 1} ({pt[0]}, {pt[1]}) is outside the image "
                           f"(columns 0..{columns}, rows 0..{rows})")
    if kind == "text" and not label.strip():
        reasons.append("a text annotation needs a label")
    if reasons:
        return reasons
    p = np.asarray(points, dtype=np.float64)
    if kind in ("line", "arrow") and np.allclose(p[0], p[1]):
        reasons.append(f"the two points of a {kind} must differ")
    elif kind == "angle" and (np.allclose(p[0], p[1]) or np.allclose(p[2], p[1])):
        reasons.append("each arm of an angle must have a length (its end differs from the vertex)")
    elif kind == "rectangle" and (p[0][0] == p[1][0] or p[0][1] == p[1][1]):
        reasons.append("a rectangle needs two opposite corners with different columns and rows")
    elif kind == "ellipse":
        reasons.extend(_check_ellipse(p))
    return reasons


def _check_ellipse(p: np.ndarray) -> list[str]:
    major, minor = p[1] - p[0], p[3] - p[2]
    a, b = np.linalg.norm(major) / 2, np.linalg.norm(minor) / 2
    if a == 0 or b == 0:
        return ["both axes of an ellipse need a length"]
    reasons = []
    if b > a:
        reasons.append("the first two points must be the major (longer) axis, the last two the minor axis")
    if np.linalg.norm((p[0] + p[1]) / 2 - (p[2] + p[3]) / 2) > ELLIPSE_CENTRE_TOLERANCE:
        reasons.append("the axes of an ellipse must cross at their midpoints")
    cos = abs(float(np.dot(major, minor))) / (2 * a * 2 * b)
    if cos > math.sin(math.radians(ELLIPSE_ANGLE_TOLERANCE)):
        reasons.append("the axes of an ellipse must be perpendicular")
    return reasons


# -- measuring -----------------------------------------------------------------------------------------------


def _distance(a: np.ndarray, b: np.ndarray, cal: Calibration) -> float:
    d = b - a
    if cal.calibrated:
        assert cal.row_mm is not None and cal.col_mm is not None
        d = d * np.array([cal.col_mm, cal.row_mm])
    return float(np.hypot(d[0], d[1]))


def region_mask(kind: str, points: list[list[float]], rows: int, columns: int) -> np.ndarray:
    """Boolean (rows, columns) mask of the pixels whose centres lie inside a rectangle or ellipse."""
    p = np.asarray(points, dtype=np.float64)
    cols = np.arange(columns) + 0.5
    rws = np.arange(rows) + 0.5
    x, y = np.meshgrid(cols, rws)
    if kind == "rectangle":
        (c0, c1), (r0, r1) = sorted((p[0][0], p[1][0])), sorted((p[0][1], p[1][1]))
        return (x >= c0) & (x <= c1) & (y >= r0) & (y <= r1)
    centre = (p[0] + p[1]) / 2
    major = p[1] - p[0]
    a, b = np.linalg.norm(major) / 2, np.linalg.norm(p[3] - p[2]) / 2
    u = major / np.linalg.norm(major)
    dx, dy = x - centre[0], y - centre[1]
    along = dx * u[0] + dy * u[1]
    across = -dx * u[1] + dy * u[0]
    return (along / a) ** 2 + (across / b) ** 2 <= 1.0


def _area_pixels(kind: str, p: np.ndarray) -> float:
    if kind == "rectangle":
        return float(abs(p[1][0] - p[0][0]) * abs(p[1][1] - p[0][1]))
    return float(math.pi * (np.linalg.norm(p[1] - p[0]) / 2) * (np.linalg.norm(p[3] - p[2]) / 2))


def measure(kind: str, points: list[list[float]], cal: Calibration, values: np.ndarray | None) -> dict[str, Any]:
    """What an annotation measures; ``values`` are the frame's modality values (needed for ROIs and points)."""
    p = np.asarray(points, dtype=np.float64)
    unit = "mm" if cal.calibrated else "px"
    out: dict[str, Any] = {"spacing_source": cal.spacing_source}
    notes = []
    if cal.spacing_source == "ImagerPixelSpacing":
        notes.append(IMAGER_NOTE)
    elif not cal.calibrated and kind in ("line", "rectangle", "ellipse"):
        notes.append(NO_SPACING_NOTE)
    if kind == "line":
        out.update(length=_distance(p[0], p[1], cal), length_unit=unit)
    elif kind == "angle":
        scale = np.array([cal.col_mm, cal.row_mm]) if cal.calibrated else np.ones(2)
        arm1, arm2 = (p[0] - p[1]) * scale, (p[2] - p[1]) * scale
        cos = float(np.dot(arm1, arm2) / (np.linalg.norm(arm1) * np.linalg.norm(arm2)))
        out.update(angle=math.degrees(math.acos(max(-1.0, min(1.0, cos)))), angle_unit="deg")
    elif kind in ("rectangle", "ellipse"):
        area = _area_pixels(kind, p)
        if cal.calibrated:
            assert cal.row_mm is not None and cal.col_mm is not None
            area *= cal.row_mm * cal.col_mm
        out.update(area=area, area_unit="mm2" if cal.calibrated else "px2")
        if values is not None and cal.grayscale:
            inside = values[region_mask(kind, points, *values.shape[:2])]
            out.update(_statistics(inside, cal))
            if inside.size == 0:
                notes.append("the region contains no pixel centre: no statistics")
        elif not cal.grayscale:
            notes.append("statistics need a grayscale image")
    elif kind == "point" and values is not None and cal.grayscale:
        rows, columns = values.shape[:2]
        col, row = min(int(p[0][0]), columns - 1), min(int(p[0][1]), rows - 1)
        out.update(value=float(values[row, col]), value_unit=cal.value_unit)
    if notes:
        out["notes"] = notes
    return out


def _statistics(inside: np.ndarray, cal: Calibration) -> dict[str, Any]:
    """Mean, population standard deviation (numpy's default, ddof=0), min and max of the ROI's values."""
    if inside.size == 0:
        return {"pixel_count": 0}
    return {"pixel_count": int(inside.size), "mean": float(inside.mean()), "sd": float(inside.std()),
            "min": float(inside.min()), "max": float(inside.max()), "value_unit": cal.value_unit}
