"""Pixel phantoms for the synthetic demo studies.

Viewers, codecs and benchmarks need images that look like anatomy and that
compress like real ones: smooth organs with soft edges, slice-to-slice change
and seeded noise. Everything is plain numpy on small grids (no filtering
libraries) so a few thousand images render in seconds, and every function takes
a ``numpy.random.Generator`` so identical seeds give identical pixels.

Axial images use the radiological convention: image top is anterior, image left
is the patient's right, coordinates are normalised to ``[-1, 1]``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# (cx, cy, semi-axis x, semi-axis y, rotation in degrees, tissue)
Shape = tuple[float, float, float, float, float, str]

CT_HU: dict[str, float] = {
    "air": -1000, "fat": -100, "soft": 40, "muscle": 50, "bone": 900, "gm": 40, "wm": 28,
    "csf": 5, "lung": -850, "blood": 45, "liver": 60, "kidney": 35, "table": 250, "fluid": 8,
}
CT_CONTRAST: dict[str, float] = {"blood": 230, "kidney": 170, "liver": 110}

# Relative signal per tissue for each MR weighting (12-bit scale).
MR_SIGNAL: dict[str, dict[str, float]] = {
    "T1": {"fat": 900, "soft": 400, "muscle": 350, "bone": 90, "gm": 450, "wm": 620, "csf": 130,
           "lung": 20, "blood": 120, "liver": 560, "kidney": 420, "fluid": 100},
    "T2": {"fat": 700, "soft": 320, "muscle": 200, "bone": 70, "gm": 720, "wm": 500, "csf": 1500,
           "lung": 20, "blood": 90, "liver": 260, "kidney": 820, "fluid": 1600},
    "FLAIR": {"fat": 600, "soft": 300, "muscle": 220, "bone": 60, "gm": 650, "wm": 480, "csf": 110,
              "lung": 20, "blood": 80, "liver": 280, "kidney": 500, "fluid": 120},
    "DWI": {"fat": 60, "soft": 200, "muscle": 150, "bone": 30, "gm": 380, "wm": 330, "csf": 60,
            "lung": 10, "blood": 30, "liver": 220, "kidney": 400, "fluid": 50},
    "T1 POST": {"fat": 900, "soft": 520, "muscle": 420, "bone": 90, "gm": 480, "wm": 640, "csf": 130,
                "lung": 20, "blood": 1100, "liver": 900, "kidney": 1000, "fluid": 100},
}


@lru_cache(maxsize=16)
def _axes(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised 1-D axes, cached: every slice of a series shares them."""
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)
    x = np.linspace(-1.0, 1.0, cols, dtype=np.float32)
    y.flags.writeable = False
    x.flags.writeable = False
    return y, x


def _paint(img: np.ndarray, shapes: list[Shape], values: dict[str, float]) -> np.ndarray:
    """Draw soft-edged ellipses in order (later ones on top), only inside their bounding box."""
    rows, cols = img.shape
    y, x = _axes(rows, cols)
    for cx, cy, a, b, angle, tissue in shapes:
        if a <= 0 or b <= 0 or tissue not in values:
            continue
        r = max(a, b)
        r0, r1 = np.searchsorted(y, [cy - r, cy + r])
        c0, c1 = np.searchsorted(x, [cx - r, cx + r])
        if r1 <= r0 or c1 <= c0:
            continue
        dy = y[r0:r1, None] - cy
        dx = x[None, c0:c1] - cx
        if angle:
            cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            dx, dy = dx * cos + dy * sin, dy * cos - dx * sin
        weight = np.clip((1.0 - (dx / a) ** 2 - (dy / b) ** 2) * 25.0, 0.0, 1.0)
        box = img[r0:r1, c0:c1]
        box += (values[tissue] - box) * weight
    return img


def _texture(rows: int, cols: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Low-frequency ripple so organs are not flat plateaus (real tissue never is)."""
    y, x = _axes(rows, cols)
    fx, fy, px, py = rng.uniform(2.0, 7.0, 2).tolist() + rng.uniform(0, 6.28, 2).tolist()
    return (amplitude * np.sin(fy * y[:, None] + py) * np.cos(fx * x[None, :] + px)).astype(np.float32)


def _head(t: float) -> list[Shape]:
    """Head from vertex (t=0) to skull base (t=1)."""
    s = 0.3 + 0.7 * math.sin(min(t / 0.6, 1.0) * math.pi / 2) if t <= 0.6 else 1.0 - 0.35 * (t - 0.6)
    shapes: list[Shape] = [
        (0, 0, 0.74 * s, 0.9 * s, 0, "soft"), (0, 0, 0.7 * s, 0.86 * s, 0, "bone"),
        (0, 0, 0.64 * s, 0.8 * s, 0, "gm"), (0, 0.02, 0.5 * s, 0.64 * s, 0, "wm"),
    ]
    if 0.3 < t < 0.7:
        v = math.sin((t - 0.3) / 0.4 * math.pi)
        shapes += [(-0.1, -0.05, 0.06 * v, 0.3 * v, -12, "csf"), (0.1, -0.05, 0.06 * v, 0.3 * v, 12, "csf")]
    if t > 0.75:
        shapes += [(-0.3, -0.72, 0.14, 0.12, 0, "fat"), (0.3, -0.72, 0.14, 0.12, 0, "fat"),
                   (0, -0.55, 0.12, 0.1, 0, "air")]
    return shapes


def _chest(t: float) -> list[Shape]:
    """Thorax from lung apices (t=0) to the domes of the diaphragm (t=1)."""
    lung = 0.55 + 0.45 * math.sin(math.pi * min(t * 1.3, 1.0) / 2)
    shapes: list[Shape] = [
        (0, 0.05, 0.9, 0.64, 0, "fat"), (0, 0.05, 0.84, 0.58, 0, "muscle"),
        (-0.4, 0.0, 0.3 * lung, 0.44 * lung, 0, "lung"), (0.4, 0.0, 0.3 * lung, 0.44 * lung, 0, "lung"),
        (0, 0.5, 0.1, 0.1, 0, "bone"), (0.06, 0.36, 0.06, 0.06, 0, "blood"),
    ]
    if t > 0.4:
        h = math.sin(math.pi * min((t - 0.4) / 0.7, 1.0))
        shapes.append((0.08, -0.05, 0.3 * h, 0.26 * h, 20, "blood"))
    else:
        shapes.append((-0.05, -0.1, 0.07, 0.07, 0, "blood"))
    if t > 0.85:
        shapes.append((-0.4, 0.05, 0.3 * (t - 0.85) / 0.15, 0.35 * (t - 0.85) / 0.15, 0, "liver"))
    return [*shapes, (0, 0.92, 0.8, 0.04, 0, "table")]


def _abdomen(t: float) -> list[Shape]:
    """Abdomen and pelvis from the diaphragm (t=0) to the symphysis (t=1)."""
    shapes: list[Shape] = [(0, 0.05, 0.92, 0.68, 0, "fat"), (0, 0.05, 0.82, 0.58, 0, "soft"),
                           (0, 0.48, 0.11, 0.1, 0, "bone"), (0.06, 0.3, 0.06, 0.06, 0, "blood")]
    if t < 0.5:
        liver = 1.0 - t * 1.6
        shapes.append((-0.38, -0.02, 0.42 * liver, 0.42 * liver, 10, "liver"))
    if 0.2 < t < 0.6:
        k = math.sin((t - 0.2) / 0.4 * math.pi)
        shapes += [(-0.35, 0.3, 0.12 * k, 0.18 * k, -25, "kidney"), (0.35, 0.3, 0.12 * k, 0.18 * k, 25, "kidney")]
    for i in range(4):
        shapes.append((0.45 * math.sin(7 * t + 2 * i), -0.1 + 0.12 * i, 0.07, 0.05, 0, "air"))
    if t > 0.7:
        shapes += [(-0.5, 0.3, 0.2, 0.08, -30, "bone"), (0.5, 0.3, 0.2, 0.08, 30, "bone")]
    if t > 0.85:
        shapes.append((0, -0.05, 0.22, 0.16, 0, "fluid"))
    return [*shapes, (0, 0.92, 0.8, 0.04, 0, "table")]


_REGIONS = {"head": _head, "chest": _chest, "abdomen": _abdomen}


def ct_slice(region: str, t: float, rows: int, cols: int, rng: np.random.Generator, *,
             contrast: bool = False, noise_hu: float = 8.0) -> np.ndarray:
    """One CT slice as stored values (HU + 1024), padding -2000 outside the scan circle."""
    values = CT_HU | (CT_CONTRAST if contrast else {})
    img = np.full((rows, cols), values["air"], dtype=np.float32)
    _paint(img, _REGIONS[region](t), values)
    body = img > -900
    img += _texture(rows, cols, rng, 6.0) * body
    img += rng.standard_normal((rows, cols), dtype=np.float32) * noise_hu
    stored = np.clip(np.rint(img) + 1024, 0, 4000)
    y, x = _axes(rows, cols)
    stored[(y[:, None] ** 2 + x[None, :] ** 2) > 0.98] = -2000
    return stored.astype(np.int16)


def mr_slice(region: str, weighting: str, t: float, rows: int, cols: int,
             rng: np.random.Generator) -> np.ndarray:
    """One magnitude MR slice: tissue contrast by weighting, coil shading and Rician noise."""
    values = MR_SIGNAL[weighting] | {"air": 0.0}
    img = np.zeros((rows, cols), dtype=np.float32)
    _paint(img, _REGIONS[region](t), values)
    y, x = _axes(rows, cols)
    img *= 1.0 + 0.25 * (y[:, None] * 0.6 - x[None, :] * 0.4) + _texture(rows, cols, rng, 0.05)
    sigma = 18.0
    real = img + rng.standard_normal((rows, cols), dtype=np.float32) * sigma
    imag = rng.standard_normal((rows, cols), dtype=np.float32) * sigma
    return np.clip(np.rint(np.hypot(real, imag)), 0, 4095).astype(np.uint16)


def cr_image(view: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A chest radiograph (MONOCHROME2, 12 bit): bright bone, dark lungs, ribs and spine."""
    values = {"body": 2300.0, "lung": 1100.0, "heart": 2600.0, "bone": 3300.0, "bg": 180.0}
    img = np.full((rows, cols), values["bg"], dtype=np.float32)
    y, x = _axes(rows, cols)
    if view == "LAT":
        _paint(img, [(0, 0.1, 0.62, 1.15, 0, "body"), (0, -0.1, 0.45, 0.58, 0, "lung"),
                     (-0.2, 0.2, 0.22, 0.28, 0, "heart"), (0.5, 0.1, 0.07, 1.1, 0, "bone")], values)
    else:
        _paint(img, [(0, 0.1, 0.85, 1.15, 0, "body"), (-0.36, -0.1, 0.27, 0.58, 5, "lung"),
                     (0.36, -0.1, 0.27, 0.58, -5, "lung"), (0.1, 0.22, 0.3, 0.3, 0, "heart"),
                     (-0.33, -0.7, 0.3, 0.03, 12, "bone"), (0.33, -0.7, 0.3, 0.03, -12, "bone")], values)
        img[:, np.abs(x) < 0.06] += 500.0 * (img[:, np.abs(x) < 0.06] > 2000)
    ribs = np.sin(22.0 * (y[:, None] - 0.25 * x[None, :] ** 2)) > 0.75
    img += 350.0 * (ribs & (img > 900) & (img < 1600))
    img += _texture(rows, cols, rng, 60.0) + rng.standard_normal((rows, cols), dtype=np.float32) * 25.0
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def us_frames(organ: str, n_frames: int, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Sector-scan B-mode cine as RGB uint8 ``(frames, rows, cols, 3)`` with breathing motion.

    Speckle is Rayleigh noise times an echogenicity map; a red/blue Doppler
    vessel and yellow depth ticks make the colour channels genuinely differ.
    """
    out = np.zeros((n_frames, rows, cols, 3), dtype=np.uint8)
    rr = np.arange(rows, dtype=np.float32)[:, None] + rows * 0.08
    cc = np.arange(cols, dtype=np.float32)[None, :] - cols / 2
    radius, theta = np.hypot(rr, cc) / rows, np.arctan2(cc, rr)
    sector = (np.abs(theta) < 0.62) & (radius > 0.12) & (radius < 1.02)
    gain = (1.1 - 0.5 * radius).astype(np.float32)
    organs = {
        "kidney": [(0, 0.1, 0.55, 0.35, 15, "organ"), (0, 0.1, 0.3, 0.12, 15, "sinus")],
        "bladder": [(0, 0.1, 0.5, 0.4, 0, "fluid")],
    }.get(organ, [(-0.1, 0.0, 0.9, 0.7, 0, "organ"), (0.25, 0.2, 0.22, 0.12, 20, "fluid")])
    vessel: list[Shape] = [(-0.3, -0.3, 0.09, 0.06, 0, "vessel")]
    echo = {"organ": 0.55, "sinus": 1.0, "fluid": 0.03, "vessel": 0.02}
    for f in range(n_frames):
        shift = 0.06 * math.sin(2 * math.pi * f / 24)
        moved = [(cx, cy + shift, a, b, ang, tissue) for cx, cy, a, b, ang, tissue in organs + vessel]
        tissue = _paint(np.full((rows, cols), 0.35, dtype=np.float32), moved, echo)
        speckle = rng.rayleigh(1.0, (rows, cols)).astype(np.float32)
        speckle = (speckle + np.roll(speckle, 1, axis=0) + np.roll(speckle, 1, axis=1)) / 3.0
        gray = np.clip(tissue * speckle * gain * 300.0, 0, 255) * sector
        out[f] = np.rint(gray).astype(np.uint8)[:, :, None]
        flow = _paint(np.zeros((rows, cols), dtype=np.float32), moved[-1:], {"vessel": 1.0}) > 0.5
        out[f][flow & sector] = (210, 40, 40) if math.sin(2 * math.pi * f / 12) >= 0 else (40, 60, 220)
        out[f, :: max(rows // 12, 1), cols - 6: cols - 2] = (230, 210, 40)
    return out


def render(modality: str, region: str, label: str, t: float, rows: int, cols: int, rng: np.random.Generator,
           *, contrast: bool = False, frames: int = 1) -> np.ndarray:
    """Pixels for one instance: ``label`` is the CT reconstruction, MR weighting, X-ray view or US organ.

    ``t`` in [0, 1] is the position in the stack; US returns ``frames`` frames
    when more than one is asked for (a cine), otherwise a single RGB frame.
    """
    if modality == "CT":
        noise = 20.0 if label in ("BONE", "LUNG") else 8.0  # sharp kernels are noisier
        return ct_slice(region, t, rows, cols, rng, contrast=contrast, noise_hu=noise)
    if modality == "MR":
        return mr_slice(region, label, t, rows, cols, rng)
    if modality in ("CR", "DX"):
        return cr_image(label, rows, cols, rng)
    organ = "kidney" if "KIDNEY" in label else "bladder" if label == "BLADDER" else "liver"
    arr = us_frames(organ, frames, rows, cols, rng)
    return arr if frames > 1 else arr[0]
