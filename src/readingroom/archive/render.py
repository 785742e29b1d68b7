"""Rendered images and thumbnails of stored frames (PS3.18 8.3.5 and 9.5).

A frame is decoded with pydicom (pylibjpeg / pyjpegls plug-ins for
compressed syntaxes), only that frame is decoded, then the PS3.3 grayscale
pipeline is applied: Modality LUT (rescale), VOI window (the request's
``window=center,width,function``, else the file's Window Center/Width, else
the frame's min/max), MONOCHROME1 inversion. Colour images are converted to
RGB (YBR by pydicom, PALETTE COLOR through its LUT). The result is scaled to
the ``viewport`` and encoded as JPEG (``quality``) or PNG with Pillow.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

RENDER_PARAMS = frozenset({"window", "viewport", "quality", "annotation", "charset"})
WINDOW_FUNCTIONS = frozenset({"linear", "linear-exact", "sigmoid"})
THUMBNAIL_VIEWPORT = (128, 128)
MAX_VIEWPORT = 8192


class RenderError(ValueError):
    """The frame cannot be rendered (no pixels, unsupported photometric, bad parameters)."""


@dataclass(frozen=True)
class RenderOptions:
    """How to render: output type, VOI window, output size and JPEG quality."""

    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    crop: tuple[int, int, int, int] | None = None
    quality: int = 90


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip() != ""]
    except ValueError as exc:
        raise RenderError(f"invalid {name} {text!r}") from exc
    if not all(math.isfinite(v) for v in values):
        raise RenderError(f"invalid {name} {text!r}")
    return values


def parse_render_params(params: Mapping[str, str], media_type: str,
                        default_viewport: tuple[int, int] | None = None) -> RenderOptions:
    """Validate the query parameters of a rendered request; RenderError says what is wrong."""
    unknown = sorted(set(params) - RENDER_PARAMS)
    if unknown:
        raise RenderError(f"unknown parameter(s) {', '.join(unknown)}; supported: window, viewport, quality")
    window = None
    if params.get("window"):
        parts = params["window"].split(",")
        if len(parts) not in (2, 3):
            raise RenderError("window must be center,width[,function]")
        center, width = _floats(",".join(parts[:2]), "window")
        function = parts[2].strip().lower() if len(parts) == 3 else "linear"
        if function not in WINDOW_FUNCTIONS:
            raise RenderError(f"window function {function!r} not one of linear, linear-exact, sigmoid")
        if width <= 0 or (function == "linear" and width < 1):
            raise RenderError("window width must be positive (at least 1 for linear)")
        window = (center, width, function)
    viewport, crop = default_viewport, None
    if params.get("viewport"):
        values = _floats(params["viewport"], "viewport")
        if len(values) not in (2, 6) or any(v <= 0 for v in values[:2]) or max(values[:2]) > MAX_VIEWPORT:
            raise RenderError(f"viewport must be vw,vh[,sx,sy,sw,sh] with 0 < vw,vh <= {MAX_VIEWPORT}")
        viewport = (int(values[0]), int(values[1]))
        if len(values) == 6:
            sx, sy, sw, sh = (int(v) for v in values[2:])
            if sx < 0 or sy < 0 or sw <= 0 or sh <= 0:
                raise RenderError("viewport source region must have sx,sy >= 0 and sw,sh > 0")
            crop = (sx, sy, sw, sh)
    quality = 90
    if params.get("quality"):
        try:
            quality = int(params["quality"])
        except ValueError as exc:
            raise RenderError("quality must be an integer 1..100") from exc
        if not 1 <= quality <= 100:
            raise RenderError("quality must be an integer 1..100")
    return RenderOptions(media_type=media_type, window=window, viewport=viewport, crop=crop, quality=quality)


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _file_window(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    """Window Center/Width from the top level or the frame's functional groups."""
    sources: list[Dataset] = [ds]
    for seq_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(seq_name)
        if groups:
            item = groups[min(index, len(groups) - 1)] if seq_name.startswith("Per") else groups[0]
            sources.extend(voi for voi in item.get("FrameVOILUTSequence", []))
    for src in sources:
        center, width = _first(src.get("WindowCenter")), _first(src.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            function = str(src.get("VOILUTFunction", "LINEAR") or "LINEAR").lower().replace("_", "-")
            return center, max(width, 1.0), function if function in WINDOW_FUNCTIONS else "linear"
    return None


def apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 VOI window to 0..255 (uint8)."""
    x = values.astype(np.float32, copy=False)
    if function == "sigmoid":
        out = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "linear-exact":
        out = np.clip((x - center) / width + 0.5, 0.0, 1.0) * 255.0
    elif width <= 1:
        out = np.where(x < center - 0.5, 0.0, 255.0)
    else:
        out = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0) * 255.0
    return np.rint(out).astype(np.uint8)


def _minmax(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values.astype(np.float32) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_display(arr: np.ndarray, ds: Dataset, index: int, window: tuple[float, float, str] | None) -> np.ndarray:
    """Decoded pixel values -> 8-bit grayscale (H, W) or RGB (H, W, 3)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return (rgb >> 8).astype(np.uint8) if rgb.dtype.itemsize > 1 and rgb.max() > 255 else rgb.astype(np.uint8)
    if arr.ndim == 3:  # RGB (YBR already converted by pydicom)
        if arr.dtype == np.uint8:
            return arr[..., :3]
        bits = int(ds.get("BitsStored", 16) or 16)
        return np.rint(arr[..., :3].astype(np.float32) * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)
    if not photometric.startswith("MONOCHROME"):
        raise RenderError(f"cannot render photometric interpretation {photometric!r}")
    values = apply_modality_lut(arr, ds)
    chosen = window or _file_window(ds, index)
    out = apply_window(values, *chosen) if chosen else _minmax(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out


def _resize(img: Image.Image, opts: RenderOptions) -> Image.Image:
    if opts.crop:
        sx, sy, sw, sh = opts.crop
        img = img.crop((sx, sy, min(sx + sw, img.width), min(sy + sh, img.height)))
    if opts.viewport:
        vw, vh = opts.viewport
        scale = min(vw / img.width, vh / img.height)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        if size != img.size:
            img = img.resize(size, Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.BICUBIC,
                             reducing_gap=2.0 if scale < 0.5 else None)
    return img


def encode(pixels: np.ndarray, opts: RenderOptions) -> bytes:
    """8-bit pixels -> JPEG or PNG bytes after viewport scaling."""
    img = _resize(Image.fromarray(pixels, "RGB" if pixels.ndim == 3 else "L"), opts)
    out = io.BytesIO()
    if opts.media_type == "image/png":
        img.save(out, format="PNG", compress_level=3)
    else:
        img.save(out, format="JPEG", quality=opts.quality)
    return out.getvalue()


def render_frame(src: Path | BinaryIO, index: int, opts: RenderOptions) -> bytes:
    """Render frame ``index`` (0-based) of a stored instance; RenderError if it has no image."""
    ds = Dataset()
    try:
        arr = pixel_array(src, ds_out=ds, index=index)
    except (AttributeError, KeyError) as exc:
        raise RenderError("the instance has no renderable pixel data") from exc
    except (ValueError, NotImplementedError, RuntimeError) as exc:
        raise RenderError(f"cannot decode the pixel data: {exc}") from exc
    if arr.ndim == 4 or (arr.ndim == 3 and str(ds.get("PhotometricInterpretation", "")).startswith("MONO")):
        arr = arr[0]
    return encode(to_display(arr, ds, index, opts.window), opts)
