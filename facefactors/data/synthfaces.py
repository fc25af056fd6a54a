"""SynthFaces: procedural faces drawn from explicit, labelled generative factors.

Every image is a pure function of one row of a factor table, so ``render(factors)``
re-creates any image bit-exactly and counterfactuals ("image A with B's expression")
can be rendered as ground truth. Identities are fixed draws from ``(seed, identity)``;
per-image factors are draws from ``(seed, index)``.

Bit-exactness: per-image quantities (trigonometry included) are computed in float64
with ``math`` or elementwise numpy arithmetic; per-pixel maths uses only correctly
rounded float32 operations (+ - * / sqrt, min/max, floor, comparisons) and integer
hashing for the noise, so the result never depends on batch size or SIMD paths.
Shapes are signed-distance fields turned into one-pixel anti-aliased coverage and
composited back to front with premultiplied alpha; each layer is evaluated only in
a fixed window that bounds it for every factor value (outside, its coverage is 0).
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from facefactors.data.specs import AttributeSpec, ImageDataset
from facefactors.errors import FacefactorsError
from facefactors.io import atomic_path, save_png, write_bytes, write_json

# ----------------------------------------------------------------------------- vocabulary

EXPRESSIONS = ("neutral", "smile", "surprise", "frown")
LIGHTS = ("left", "right", "top", "bottom")
POSES = ("left", "centre", "right")
GLASSES = ("no", "yes")
BACKGROUNDS = ("blue", "green", "grey", "warm")
SKIN_TONES = ("light", "medium", "tan", "dark")
HAIR_COLOURS = ("black", "brown", "blonde", "red", "grey")
HAIR_STYLES = ("short", "long", "fringe", "bun", "bald")

YAW_MAX = 0.35    # radians; pose bins split [-YAW_MAX, YAW_MAX] in thirds
ROLL_MAX = 0.15   # radians
INTENSITY_MIN = 0.3
STRENGTH_MIN = 0.3

# Identity parameters: column -> (low, high) of a uniform draw, or an int class count.
_ID_FLOAT = {
    "id_head_w": (0.50, 0.60),        # half width of the upper head
    "id_head_h": (0.64, 0.74),        # half height of the head
    "id_jaw": (0.78, 0.96),           # lower-face width as a fraction of the upper
    "skin_jitter": (-1.0, 1.0),
    "id_eye_spacing": (0.20, 0.27),   # half distance between the eye centres
    "id_eye_size": (0.085, 0.115),    # half width of an eye
    "id_eye_height": (-0.04, 0.04),   # vertical offset of the eye line
    "id_nose_length": (0.13, 0.21),
    "id_nose_width": (0.05, 0.085),
    "id_mouth_width": (0.19, 0.27),   # half width of the neutral mouth
    "id_brow_thickness": (0.024, 0.042),
    "hair_jitter": (-1.0, 1.0),
}
_ID_INT = {"skin_tone": 4, "hair_colour": 5, "id_hair_style": 5, "id_iris": 4, "id_shirt": 6}
_ID_DRAW_ORDER = ("id_head_w", "id_head_h", "id_jaw", "skin_tone", "skin_jitter", "id_eye_spacing",
                  "id_eye_size", "id_eye_height", "id_nose_length", "id_nose_width", "id_mouth_width",
                  "id_brow_thickness", "hair_colour", "hair_jitter", "id_hair_style", "id_iris", "id_shirt")

# The factor table: column -> dtype, in file order.
FACTOR_COLUMNS: dict[str, type] = {
    "identity": np.int64,
    **{c: (np.int64 if c in _ID_INT else np.float64) for c in _ID_DRAW_ORDER},
    "expression": np.int64, "expression_intensity": np.float64,
    "illumination": np.int64, "light_strength": np.float64,
    "pose": np.int64, "yaw": np.float64, "roll": np.float64,
    "glasses": np.int64,
    "background": np.int64, "background_jitter": np.float64,
    "noise_seed": np.int64, "noise": np.float64,
}

IDENTITY_COLUMNS = ["identity", *_ID_DRAW_ORDER]
FACTOR_GROUPS: dict[str, list[str]] = {
    "identity": IDENTITY_COLUMNS,
    "expression": ["expression", "expression_intensity"],
    "illumination": ["illumination", "light_strength"],
    "pose": ["pose", "yaw", "roll"],
    "glasses": ["glasses"],
    "background": ["background", "background_jitter"],
    "skin_tone": ["skin_tone", "skin_jitter"],
    "hair_colour": ["hair_colour", "hair_jitter"],
}
CONTINUOUS = ("expression_intensity", "light_strength", "yaw", "roll")
# Continuous factors that do not show for some labels: a neutral face (expression 0) lerps the
# neutral mouth and brows to themselves, so its intensity changes no pixel.
FACTOR_HIDDEN: dict[str, dict[str, list[int]]] = {"expression_intensity": {"expression": [0]}}


def attribute_specs(n_identities: int) -> dict[str, AttributeSpec]:
    """The labelled attributes of SynthFaces, in a fixed order."""
    width = max(4, len(str(n_identities - 1)))
    specs = [
        AttributeSpec("identity", "categorical", tuple(f"id{i:0{width}d}" for i in range(n_identities))),
        AttributeSpec("expression", "categorical", EXPRESSIONS),
        AttributeSpec("illumination", "categorical", LIGHTS),
        AttributeSpec("pose", "categorical", POSES),
        AttributeSpec("glasses", "binary", GLASSES),
        AttributeSpec("background", "categorical", BACKGROUNDS),
        AttributeSpec("skin_tone", "categorical", SKIN_TONES, identity_linked=True),
        AttributeSpec("hair_colour", "categorical", HAIR_COLOURS, identity_linked=True),
        *(AttributeSpec(c, "continuous") for c in CONTINUOUS),
    ]
    return {s.name: s for s in specs}


@dataclass
class SynthFacesConfig:
    """How many faces, at what size, from which seed, split how."""

    n: int = 30000
    size: int = 64
    n_identities: int = 100
    seed: int = 0
    test_fraction: float = 0.1
    heldout_identities: int = 0
    noise: float = 0.02

    def validate(self) -> "SynthFacesConfig":
        def bad(key, why):
            raise FacefactorsError(f"synthfaces: {key}={getattr(self, key)!r} {why}")
        if int(self.n) < 1:
            bad("n", "must be at least 1")
        if int(self.size) < 8 or int(self.size) > 1024:
            bad("size", "must be between 8 and 1024 pixels")
        if int(self.n_identities) < 1:
            bad("n_identities", "must be at least 1")
        if not 0.0 <= float(self.test_fraction) < 1.0:
            bad("test_fraction", "must be in [0, 1)")
        if not 0 <= int(self.heldout_identities) < int(self.n_identities):
            bad("heldout_identities", f"must be in [0, n_identities={self.n_identities})")
        if not 0.0 <= float(self.noise) <= 0.5:
            bad("noise", "must be in [0, 0.5]")
        if int(self.seed) < 0:
            bad("seed", "must be non-negative")
        return self


# ----------------------------------------------------------------------------- sampling

def identity_params(seed: int, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-identity parameters; identity ``i`` is a fixed draw from ``(seed, 1, i)``."""
    ids = np.asarray(ids, dtype=np.int64)
    uniq, inv = np.unique(ids, return_inverse=True)
    u = np.stack([np.random.default_rng([int(seed), 1, int(i)]).random(len(_ID_DRAW_ORDER))
                  for i in uniq]) if len(uniq) else np.zeros((0, len(_ID_DRAW_ORDER)))
    out = {}
    for j, name in enumerate(_ID_DRAW_ORDER):
        col = u[:, j]
        if name in _ID_INT:
            k = _ID_INT[name]
            out[name] = np.minimum((col * k).astype(np.int64), k - 1)[inv]
        else:
            lo, hi = _ID_FLOAT[name]
            out[name] = (lo + (hi - lo) * col)[inv]
    return out


def sample_factors(cfg: SynthFacesConfig, indices: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The factor table for images ``indices`` (default: all ``cfg.n``); row i depends only on (seed, i)."""
    cfg.validate()
    idx = np.arange(cfg.n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    u = np.stack([np.random.default_rng([int(cfg.seed), 0, int(i)]).random(12) for i in idx]) \
        if len(idx) else np.zeros((0, 12))
    n_id = int(cfg.n_identities)

    def cls(col, k):
        return np.minimum((col * k).astype(np.int64), k - 1)

    yaw = (2.0 * u[:, 5] - 1.0) * YAW_MAX
    f: dict[str, np.ndarray] = {"identity": cls(u[:, 0], n_id)}
    f.update(identity_params(cfg.seed, f["identity"]))
    f["expression"] = cls(u[:, 1], 4)
    f["expression_intensity"] = INTENSITY_MIN + (1.0 - INTENSITY_MIN) * u[:, 2]
    f["illumination"] = cls(u[:, 3], 4)
    f["light_strength"] = STRENGTH_MIN + (1.0 - STRENGTH_MIN) * u[:, 4]
    f["pose"] = pose_bin(yaw)
    f["yaw"] = yaw
    f["roll"] = (2.0 * u[:, 6] - 1.0) * ROLL_MAX
    f["glasses"] = cls(u[:, 7], 2)
    f["background"] = cls(u[:, 8], 4)
    f["background_jitter"] = 2.0 * u[:, 9] - 1.0
    f["noise_seed"] = (u[:, 10] * 2.0 ** 53).astype(np.int64)
    f["noise"] = np.full(len(idx), float(cfg.noise))
    return {k: np.ascontiguousarray(f[k], dtype=t) for k, t in FACTOR_COLUMNS.items()}


def pose_bin(yaw: np.ndarray) -> np.ndarray:
    """Pose class from yaw: 0 left (< -YAW_MAX/3), 1 centre, 2 right (> YAW_MAX/3)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    return np.where(yaw < -YAW_MAX / 3, 0, np.where(yaw > YAW_MAX / 3, 2, 1)).astype(np.int64)


_CLASS_COUNTS = {"expression": 4, "illumination": 4, "pose": 3, "glasses": 2, "background": 4, **_ID_INT}


def check_factors(factors: Mapping[str, np.ndarray]) -> int:
    """Raise a FacefactorsError naming any missing, ragged, non-finite or out-of-range column; return N."""
    missing = [c for c in FACTOR_COLUMNS if c not in factors]
    if missing:
        raise FacefactorsError(f"synthfaces factor table lacks column(s): {', '.join(missing)}")
    cols = {c: np.asarray(factors[c]).reshape(-1) for c in FACTOR_COLUMNS}
    lengths = {c: len(v) for c, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise FacefactorsError(f"synthfaces factor columns differ in length: {lengths}")
    n = lengths["identity"]
    if n == 0:
        return 0
    for c, v in cols.items():
        if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
            raise FacefactorsError(f"synthfaces factor column {c!r} is not numeric ({v.dtype})")
        if not np.all(np.isfinite(v)):
            raise FacefactorsError(f"synthfaces factor column {c!r} has non-finite values")
        if FACTOR_COLUMNS[c] is np.int64 and np.any(v != np.round(v)):
            raise FacefactorsError(f"synthfaces factor column {c!r} must hold whole numbers")
        k = _CLASS_COUNTS.get(c)
        if k is not None and (v.min() < 0 or v.max() >= k):
            raise FacefactorsError(f"synthfaces factor column {c!r} must lie in [0, {k - 1}], "
                                   f"found {v.min()}..{v.max()}")
    return n


# ----------------------------------------------------------------------------- palettes

_SKIN = np.array([[0.96, 0.80, 0.69], [0.87, 0.66, 0.50], [0.68, 0.46, 0.31], [0.42, 0.27, 0.18]])
_HAIR = np.array([[0.09, 0.075, 0.07], [0.36, 0.22, 0.12], [0.88, 0.74, 0.44], [0.68, 0.28, 0.12],
                  [0.74, 0.74, 0.76]])
_IRIS = np.array([[0.22, 0.13, 0.07], [0.42, 0.26, 0.12], [0.22, 0.42, 0.75], [0.27, 0.50, 0.30]])
_SHIRT = np.array([[0.18, 0.24, 0.42], [0.46, 0.15, 0.18], [0.38, 0.42, 0.22], [0.26, 0.26, 0.28],
                   [0.14, 0.44, 0.45], [0.84, 0.81, 0.73]])
_BG_TOP = np.array([[0.50, 0.66, 0.88], [0.60, 0.78, 0.58], [0.82, 0.82, 0.82], [0.98, 0.80, 0.52]])
_BG_BOTTOM = np.array([[0.18, 0.28, 0.55], [0.26, 0.46, 0.28], [0.48, 0.48, 0.50], [0.78, 0.44, 0.24]])
_LIGHT_DIR = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])   # in-image direction to the light
_MOUTH = (0.20, 0.02, 0.04)
_TEETH = (0.97, 0.95, 0.90)
_SCLERA = (0.97, 0.97, 0.95)
_LASH = (0.10, 0.06, 0.05)
_RIM = (0.04, 0.04, 0.05)
_HEAD_Y = -0.02   # head centre in image coordinates ([-1, 1], y down)

# Hair style geometry (per style): cap hairline centre, hairline curvature, band width (bald),
# top limit (bald), long back hair, bun.
_STYLE = np.array([
    # h0     k     band   top    long bun
    [-0.46, 1.00, 9.00, -9.0, 0.0, 0.0],   # short
    [-0.44, 0.70, 9.00, -9.0, 1.0, 0.0],   # long
    [-0.36, 0.20, 9.00, -9.0, 0.0, 0.0],   # fringe
    [-0.50, 0.90, 9.00, -9.0, 0.0, 1.0],   # bun
    [0.04, 0.00, 0.09, -0.36, 0.0, 0.0],   # bald: a band of hair at the sides only
])

# Mouth shape per expression at full intensity: width (absolute, or <0: x mouth width),
# upper/lower parabola sag, upper/lower half-ellipse, thickness, vertical shift; teeth.
_MOUTH_SHAPE = np.array([
    # w      a_u    a_l    b_u    b_l    th     dy     teeth
    [-1.00, 0.000, 0.000, 0.000, 0.000, 0.060, 0.000, 0.0],   # neutral: closed straight
    [-1.25, 0.060, 0.260, 0.000, 0.000, 0.035, -0.040, 1.0],  # smile: wide upturned crescent
    [0.145, 0.000, 0.000, -0.150, 0.150, 0.000, 0.040, 0.0],  # surprise: tall open O
    [-0.90, -0.220, -0.220, 0.000, 0.000, 0.070, 0.090, 0.0],  # frown: downturned arc
])
# Brow heights (negative = up) at inner, middle, outer point; eye openness.
_BROW_SHAPE = np.array([
    # inner  mid    outer  open
    [0.000, -0.020, 0.005, 1.00],
    [-0.015, -0.035, -0.010, 0.70],
    [-0.100, -0.150, -0.090, 1.45],
    [0.075, 0.015, -0.030, 0.85],
])


# ----------------------------------------------------------------------------- per-image parameters

def _image_params(f: Mapping[str, np.ndarray], size: int, noise: float | None) -> dict[str, np.ndarray]:
    """Every per-image quantity the pixel shader needs, as float32 (N, 1, 1) (colours (3, N, 1, 1)).

    float64 elementwise arithmetic plus ``math`` trigonometry per image: independent of batching.
    """
    g = {k: np.asarray(f[k]).reshape(-1).astype(t) for k, t in FACTOR_COLUMNS.items()}
    fl = {k: g[k] for k in g if FACTOR_COLUMNS[k] is np.float64}
    n = len(g["identity"])
    yaw, roll = fl["yaw"], fl["roll"]
    sy = np.array([math.sin(a) for a in yaw]); cy = np.array([math.cos(a) for a in yaw])
    sr = np.array([math.sin(a) for a in roll]); cr = np.array([math.cos(a) for a in roll])
    p: dict[str, np.ndarray] = {"cr": cr, "sr": sr}

    a = fl["id_head_w"] * (1.0 - 0.28 * np.abs(sy))      # yaw compresses the outline
    b = fl["id_head_h"]
    p["a_top"], p["a_low"], p["b"] = a, a * fl["id_jaw"], b
    p["inv_b"] = 1.0 / b
    hs = -0.10 * sy                                        # hair mass lags behind the turn
    p["hs"] = hs

    # eyes: positions on a sphere-ish head, turned by yaw
    es, esz = fl["id_eye_spacing"], fl["id_eye_size"]
    hw = fl["id_head_w"]
    depth = 0.8 * np.sqrt(np.maximum(hw * hw - es * es, 0.0))
    e_expr = g["expression"]
    # expression strength: intensity 0.3 -> about half the full shape, 1 -> full (readable at 32 px)
    inten = 0.25 + 0.75 * fl["expression_intensity"]
    brow = _BROW_SHAPE[0][None, :] + inten[:, None] * (_BROW_SHAPE[e_expr] - _BROW_SHAPE[0][None, :])
    ey = -0.06 + fl["id_eye_height"]
    p["ey"] = ey
    p["ex0"] = -es * cy + sy * depth
    p["ex1"] = es * cy + sy * depth
    p["ew"] = esz * cy
    p["eh"] = esz * 0.56 * brow[:, 3]
    p["ir"] = esz * 0.56
    p["pr"] = esz * 0.26
    p["gaze"] = 0.35 * esz * sy
    p["e_min"] = np.minimum(p["ew"], p["eh"])

    # brows: two segments per side (inner-mid, mid-outer)
    bw = esz * 1.30
    base = ey - esz * 0.56 - 0.085
    for side, sgn in ((0, -1.0), (1, 1.0)):
        ex = p[f"ex{side}"]
        for j, o in enumerate((-0.85, 0.0, 1.0)):
            p[f"b{side}x{j}"] = ex + sgn * o * bw * cy
            p[f"b{side}y{j}"] = base + brow[:, j]
    p["br"] = fl["id_brow_thickness"]

    # nose
    nx = sy * fl["id_head_w"] * 0.95
    p["nx"] = nx
    p["ntip"] = ey + 0.05 + fl["id_nose_length"]
    p["nw"] = fl["id_nose_width"] * cy
    p["ntop"] = ey + 0.04
    p["nsx"] = 0.7 * fl["id_nose_width"] * cy

    # mouth: lerp neutral -> expression by intensity
    ms = _MOUTH_SHAPE[0][None, :] + inten[:, None] * (_MOUTH_SHAPE[e_expr] - _MOUTH_SHAPE[0][None, :])
    mw_id = fl["id_mouth_width"]
    # width column: negative entries are multiples of the identity's mouth width
    w_n = mw_id
    w_e = np.where(_MOUTH_SHAPE[e_expr, 0] < 0, -_MOUTH_SHAPE[e_expr, 0] * mw_id, _MOUTH_SHAPE[e_expr, 0])
    p["mw"] = (w_n + inten * (w_e - w_n)) * cy
    p["mx"] = sy * fl["id_head_w"] * 0.85
    p["my"] = 0.50 * b + 0.02 + ms[:, 6]
    for j, k in enumerate(("ma_u", "ma_l", "mb_u", "mb_l", "mth"), start=1):
        p[k] = ms[:, j]
    p["teeth"] = ms[:, 7]
    p["inv_mw"] = 1.0 / p["mw"]

    # glasses
    p["glasses"] = g["glasses"].astype(np.float64)
    rx = np.minimum(esz * 1.45 + 0.035, es - 0.035) * cy
    p["grx"], p["gry"] = rx, esz * 1.05 + 0.035
    p["gmin"] = np.minimum(p["grx"], p["gry"])
    p["gy"] = ey + 0.005

    # hair style
    st = _STYLE[g["id_hair_style"]]
    p["h0"], p["hk"], p["hband"], p["htop"] = st[:, 0], st[:, 1], st[:, 2], st[:, 3]
    p["hlong"], p["hbun"] = st[:, 4], st[:, 5]
    p["ears"] = 1.0 - st[:, 4]

    # illumination: light direction rotated into the head frame, Lambert with ambient
    ld = _LIGHT_DIR[g["illumination"]]
    lx, lyy = ld[:, 0] * 0.75, ld[:, 1] * 0.75
    p["lx"] = cr * lx + sr * lyy
    p["ly"] = -sr * lx + cr * lyy
    p["lz"] = np.full(n, 0.66)
    s = fl["light_strength"]
    p["k0"] = 1.0 - s * 0.68          # at full strength: 0.32 in shadow, 1.32 facing the light
    p["k1"] = s * 1.0

    # colours
    skin = _SKIN[g["skin_tone"]] * (1.0 + 0.05 * fl["skin_jitter"])[:, None]
    hair = _HAIR[g["hair_colour"]] * (1.0 + 0.08 * fl["hair_jitter"])[:, None]
    cols = {
        "c_skin": skin, "c_ear": skin * 0.90, "c_neck": skin * 0.78,
        "c_nose": skin * 0.72, "c_nostril": skin * 0.42,
        "c_hair": hair, "c_brow": hair * 0.55 + 0.03,
        "c_iris": _IRIS[g["id_iris"]], "c_shirt": _SHIRT[g["id_shirt"]],
    }
    bj = 1.0 + 0.10 * fl["background_jitter"]
    cols["c_bgt"] = _BG_TOP[g["background"]] * bj[:, None]
    cols["c_bgd"] = (_BG_BOTTOM[g["background"]] - _BG_TOP[g["background"]]) * bj[:, None]

    noise_level = fl["noise"] if noise is None else np.full(n, float(noise))
    p["noise"] = noise_level / _NOISE_STD
    p["nkey"] = (g["noise_seed"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)

    out = {k: v.astype(np.float32).reshape(n, 1, 1) for k, v in p.items() if k != "nkey"}
    out["nkey"] = p["nkey"].astype(np.uint32).reshape(n, 1, 1)
    out.update({k: np.ascontiguousarray(v.T, dtype=np.float32).reshape(3, n, 1, 1) for k, v in cols.items()})
    return out


# ----------------------------------------------------------------------------- pixel shader

# Layer windows in image coordinates (y0, y1, x0, x1); each bounds its layer for all factors.
_WIN = {
    "torso": (0.25, 1.0, -1.0, 1.0),
    "back": (-1.0, 0.86, -0.80, 0.80),
    "ears": (-0.30, 0.34, -0.67, 0.67),
    "face": (-0.81, 0.78, -0.61, 0.61),
    "nose": (-0.17, 0.35, -0.37, 0.37),
    "eyes": (-0.37, 0.20, -0.62, 0.62),
    "brows": (-0.58, 0.05, -0.69, 0.69),
    "mouth": (0.08, 0.72, -0.60, 0.60),
    "cap": (-0.90, 0.18, -0.70, 0.70),
    "glasses": (-0.42, 0.28, -0.69, 0.69),
}


def _window(name: str, size: int, full) -> tuple[slice, slice]:
    if full is True or (full and name in full):
        return slice(0, size), slice(0, size)
    y0, y1, x0, x1 = _WIN[name]
    r0 = max(0, int(math.floor((y0 + 1.0) * 0.5 * size)) - 1)
    r1 = min(size, int(math.ceil((y1 + 1.0) * 0.5 * size)) + 1)
    c0 = max(0, int(math.floor((x0 + 1.0) * 0.5 * size)) - 1)
    c1 = min(size, int(math.ceil((x1 + 1.0) * 0.5 * size)) + 1)
    return slice(r0, r1), slice(c0, c1)


class _Canvas:
    """Painter's-order compositing of premultiplied colour planes over per-layer windows of a chunk."""

    def __init__(self, n: int, size: int, full_windows: bool):
        self.n, self.size, self.full = n, size, full_windows
        self.F = np.zeros((3, n, size, size), np.float32)     # premultiplied colour, planar
        self.A = np.zeros((n, size, size), np.float32)        # accumulated alpha
        t = ((np.arange(size, dtype=np.float64) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
        self.x = t.reshape(1, 1, size)
        self.y = t.reshape(1, size, 1)
        self.inv_px = np.float32(size / 2.0)

    def win(self, name):
        return _window(name, self.size, self.full)

    def cover(self, d, alpha=None):
        """Signed distance -> coverage with a one-pixel linear ramp, times an optional per-image alpha."""
        c = d * self.inv_px
        np.subtract(np.float32(0.5), c, out=c)
        np.clip(c, 0.0, 1.0, out=c)
        if alpha is not None:
            c *= alpha
        return c

    def paint(self, rs, cs, cov, colour):
        """Composite a layer of coverage ``cov`` and colour (3, N, 1, 1) over the window (rs, cs)."""
        keep = np.float32(1.0) - cov
        for ch in range(3):
            F = self.F[ch, :, rs, cs]
            F *= keep
            F += cov * colour[ch]
        A = self.A[:, rs, cs]
        A *= keep
        A += cov


def _ellipse(du, dv, inv_w, inv_h, m):
    """Approximate signed distance to an axis-aligned ellipse (first-order, good near the edge)."""
    px = du * inv_w
    py = dv * inv_h
    f = np.sqrt(px * px + py * py)
    gx = px * inv_w
    gy = py * inv_h
    g = np.sqrt(gx * gx + gy * gy)
    return (f - np.float32(1.0)) * ((f + np.float32(1e-4)) / (g + np.float32(1e-4) / m))


def _ellipse_fast(du, dv, inv_w, inv_h, m):
    """Cheaper ellipse distance (normalised radius minus one, times m): for large, round shapes."""
    px = du * inv_w
    py = dv * inv_h
    return (np.sqrt(px * px + py * py) - np.float32(1.0)) * m


@functools.lru_cache(maxsize=8)
def _torso_cover(size: int, full_windows: bool):
    """Coverage of the shirt (an ellipse with a round collar opening); the same for every image."""
    cv = _Canvas(0, size, full_windows)
    rs, cs = cv.win("torso")
    xw, yw = cv.x[:, :, cs], cv.y[:, rs, :]
    d_t = _ellipse_fast(xw, yw - np.float32(1.45), np.float32(1 / 1.25), np.float32(1 / 0.62), np.float32(0.62))
    d_c = _ellipse(xw, yw - np.float32(0.84), np.float32(1 / 0.24), np.float32(1 / 0.11), np.float32(0.11))
    cov = cv.cover(np.maximum(d_t, np.float32(-1.0) * d_c))
    cov.setflags(write=False)
    return cov


def _segment(u, v, x0, y0, x1, y1, r):
    """Signed distance to a capsule of radius r around the segment (x0, y0)-(x1, y1); params (N,1,1)."""
    bx = x1 - x0
    by = y1 - y0
    inv_bb = np.float32(1.0) / (bx * bx + by * by)
    pax = u - x0
    pay = v - y0
    h = np.clip((pax * bx + pay * by) * inv_bb, 0.0, 1.0)
    dx = pax - bx * h
    dy = pay - by * h
    return np.sqrt(dx * dx + dy * dy) - r


def _back_hair(cv: _Canvas, P, rs, cs, u, v) -> None:
    """Long hair falling behind the head to the shoulders, and the bun on top."""
    one = np.float32(1.0)
    uh = u - P["hs"]
    d_long = _ellipse_fast(uh, v - np.float32(0.10), one / (P["a_top"] * np.float32(1.26)),
                           one / (P["b"] * np.float32(1.10)), P["a_top"] * np.float32(1.26))
    d_long = np.maximum(d_long, v - P["b"] * np.float32(1.02))
    d_long += (one - P["hlong"]) * np.float32(9.0)
    bun_y = v + P["b"] + np.float32(0.05)
    d_bun = np.sqrt(uh * uh + bun_y * bun_y) - np.float32(0.17)
    d_bun += (one - P["hbun"]) * np.float32(9.0)
    cv.paint(rs, cs, cv.cover(np.minimum(d_long, d_bun)), P["c_hair"])


def _glasses(cv: _Canvas, P, rs, cs, u, v) -> None:
    """Thick dark elliptical rims, bridge and temples, with a faint glint on the lenses."""
    one = np.float32(1.0)
    gv = v - P["gy"]
    igx, igy = one / P["grx"], one / P["gry"]
    dl0 = _ellipse(u - P["ex0"], gv, igx, igy, P["gmin"])
    dl1 = _ellipse(u - P["ex1"], gv, igx, igy, P["gmin"])
    d_lens = np.minimum(dl0, dl1)
    cv.paint(rs, cs, cv.cover(d_lens, P["glasses"]) * np.float32(0.22), _GLINT_C)
    rim = np.abs(d_lens) - np.float32(0.032)
    gyb = P["gy"] - np.float32(0.02)
    d_bridge = _segment(u, v, P["ex0"] + P["grx"], gyb, P["ex1"] - P["grx"], gyb, np.float32(0.022))
    ty = P["gy"] - np.float32(0.03)
    d_temp0 = _segment(u, v, P["ex0"] - P["grx"], P["gy"], P["a_top"] * np.float32(-0.99), ty, np.float32(0.02))
    d_temp1 = _segment(u, v, P["ex1"] + P["grx"], P["gy"], P["a_top"] * np.float32(0.99), ty, np.float32(0.02))
    d_g = np.minimum(np.minimum(rim, d_bridge), np.minimum(d_temp0, d_temp1))
    cv.paint(rs, cs, cv.cover(d_g, P["glasses"]), _RIM_C)


def _render_chunk(P: Mapping[str, np.ndarray], size: int, full_windows: bool = False) -> np.ndarray:
    """Render one chunk of per-image parameters (from ``_image_params``) to uint8 (n, H, W, 3)."""
    n = P["a_top"].shape[0]
    cv = _Canvas(n, size, full_windows)
    x, y = cv.x, cv.y
    one = np.float32(1.0)
    yh = y - np.float32(_HEAD_Y)
    # head frame: rotate by -roll about the head centre
    U = P["cr"] * x + P["sr"] * yh
    V = P["cr"] * yh - P["sr"] * x

    def uv(name):
        rs, cs = cv.win(name)
        return rs, cs, U[:, rs, cs], V[:, rs, cs]

    # neck, then the shirt with a round collar opening (image frame: the body does not roll)
    rs, cs = cv.win("torso")
    xw, yw = x[:, :, cs], y[:, rs, :]
    d_n = np.maximum(np.abs(xw) - P["a_top"] * np.float32(0.46), np.float32(0.30) - yw)
    cv.paint(rs, cs, cv.cover(d_n), P["c_neck"])
    cv.paint(rs, cs, _torso_cover(size, full_windows), P["c_shirt"])

    # back hair: long hair behind the head, bun on top (skipped when no image in the chunk has any)
    if np.any(P["hlong"] + P["hbun"]):
        _back_hair(cv, P, *uv("back"))

    # ears
    if np.any(P["ears"]):
        rs, cs, u, v = uv("ears")
        ev = v - P["ey"] - np.float32(0.10)
        ia, ib = np.float32(1 / 0.075), np.float32(1 / 0.135)
        d_ear = np.minimum(_ellipse_fast(u + P["a_top"] * np.float32(0.97), ev, ia, ib, np.float32(0.075)),
                           _ellipse_fast(u - P["a_top"] * np.float32(0.97), ev, ia, ib, np.float32(0.075)))
        cv.paint(rs, cs, cv.cover(d_ear, P["ears"]), P["c_ear"])

    # face: an egg whose width narrows from a_top (above centre) to a_low at the chin
    rs, cs, u, v = uv("face")
    t = np.clip(v * P["inv_b"], 0.0, 1.0)
    A_ = P["a_top"] - (P["a_top"] - P["a_low"]) * t
    fu = u / A_
    fv = v * P["inv_b"]
    f = np.sqrt(fu * fu + fv * fv)
    cv.paint(rs, cs, cv.cover((f - one) * A_), P["c_skin"])

    # nose: soft shadow wedge, tip and nostrils
    rs, cs, u, v = uv("nose")
    d_ridge = _segment(u, v, P["nx"] * np.float32(0.6) + P["nsx"] * np.float32(0.5), P["ntop"],
                       P["nx"] + P["nsx"], P["ntip"] - np.float32(0.02), np.float32(0.012))
    cv.paint(rs, cs, cv.cover(d_ridge) * np.float32(0.45), P["c_nose"])
    nv = v - P["ntip"]
    d_tip = _ellipse(u - P["nx"], nv, one / P["nw"], one / (P["nw"] * np.float32(0.5)), P["nw"] * np.float32(0.5))
    cv.paint(rs, cs, cv.cover(d_tip) * np.float32(0.55), P["c_nose"])
    nr = P["nw"] * np.float32(0.28)
    dn0 = u - P["nx"] + P["nw"] * np.float32(0.55)
    dn1 = u - P["nx"] - P["nw"] * np.float32(0.55)
    nv2 = nv - np.float32(0.012)
    d_nos = np.minimum(np.sqrt(dn0 * dn0 + nv2 * nv2), np.sqrt(dn1 * dn1 + nv2 * nv2)) - nr
    cv.paint(rs, cs, cv.cover(d_nos) * np.float32(0.8), P["c_nostril"])

    # eyes: lash outline, sclera, iris, pupil
    rs, cs, u, v = uv("eyes")
    dv = v - P["ey"]
    iw, ih = one / P["ew"], one / P["eh"]
    du0 = u - P["ex0"]
    du1 = u - P["ex1"]
    d_e0 = _ellipse(du0, dv, iw, ih, P["e_min"])
    d_e1 = _ellipse(du1, dv, iw, ih, P["e_min"])
    d_eye = np.minimum(d_e0, d_e1)
    lash = np.float32(0.022) + np.clip(-dv, 0.0, np.float32(0.02))   # thicker upper lid
    cv.paint(rs, cs, cv.cover(d_eye - lash), _LASH_C)
    cv.paint(rs, cs, cv.cover(d_eye), _SCLERA_C)
    gu0 = du0 - P["gaze"]
    gu1 = du1 - P["gaze"]
    r0 = np.sqrt(gu0 * gu0 + dv * dv)
    r1 = np.sqrt(gu1 * gu1 + dv * dv)
    d_iris = np.minimum(np.maximum(r0 - P["ir"], d_e0), np.maximum(r1 - P["ir"], d_e1))
    cv.paint(rs, cs, cv.cover(d_iris), P["c_iris"])
    d_pup = np.minimum(np.maximum(r0 - P["pr"], d_e0), np.maximum(r1 - P["pr"], d_e1))
    cv.paint(rs, cs, cv.cover(d_pup), _LASH_C)

    # brows: two-segment capsules per side
    rs, cs, u, v = uv("brows")
    d_b = None
    for side in (0, 1):
        for j in (0, 1):
            d = _segment(u, v, P[f"b{side}x{j}"], P[f"b{side}y{j}"], P[f"b{side}x{j + 1}"],
                         P[f"b{side}y{j + 1}"], P["br"])
            d_b = d if d_b is None else np.minimum(d_b, d)
    cv.paint(rs, cs, cv.cover(d_b), P["c_brow"])

    # mouth: region between an upper and a lower curve over |u - mx| < w
    rs, cs, u, v = uv("mouth")
    tt = (u - P["mx"]) * P["inv_mw"]
    q = np.maximum(one - tt * tt, 0.0)
    sq = np.sqrt(q)
    sqe = np.maximum(sq, np.float32(0.08))
    mv = v - P["my"]
    up = P["ma_u"] * q + P["mb_u"] * sq
    lo = P["ma_l"] * q + P["mb_l"] * sq + P["mth"]
    # slopes for a first-order distance: d/du of a*q + b*sqrt(q)
    k = tt * P["inv_mw"]
    # (clamped, so that far from the mouth the estimate never shrinks towards zero)
    s_up = np.clip((np.float32(2.0) * P["ma_u"] + P["mb_u"] / sqe) * k, -4.0, 4.0)
    s_lo = np.clip((np.float32(2.0) * P["ma_l"] + P["mb_l"] / sqe) * k, -4.0, 4.0)
    d_up = (up - mv) / np.sqrt(one + s_up * s_up)
    d_lo = (mv - lo) / np.sqrt(one + s_lo * s_lo)
    d_h = np.abs(u - P["mx"]) - P["mw"]
    d_m = np.maximum(np.maximum(d_up, d_lo), d_h)
    cv.paint(rs, cs, cv.cover(d_m), _MOUTH_C)
    if np.any(P["teeth"]):
        d_teeth = np.maximum(d_m, (mv - (up + (lo - up) * np.float32(0.42))))
        cv.paint(rs, cs, cv.cover(d_teeth + np.float32(0.006), P["teeth"]), _TEETH_C)

    # front hair: a cap above a curved hairline (side tufts only for the bald style)
    rs, cs, u, v = uv("cap")
    uh = u - P["hs"]
    d_hell = _ellipse(uh, v + np.float32(0.03), one / (P["a_top"] * np.float32(1.09)),
                      one / (P["b"] * np.float32(1.07)), P["a_top"] * np.float32(1.09))
    hk = P["hk"]
    line = P["h0"] + hk * uh * uh
    sl = np.float32(2.0) * hk * uh
    d_line = (v - line) / np.sqrt(one + sl * sl)
    d_cap = np.maximum(np.maximum(d_hell, d_line), np.float32(-1.0) * (d_hell + P["hband"]))
    d_cap = np.maximum(d_cap, P["htop"] - v)
    cv.paint(rs, cs, cv.cover(d_cap), P["c_hair"])

    if np.any(P["glasses"]):
        _glasses(cv, P, *uv("glasses"))

    # shading: Lambert on a pseudo-normal of an ellipsoid around the head (head frame)
    nxp = U * (one / (P["a_top"] * np.float32(1.12)))
    nyp = V * (one / (P["b"] * np.float32(1.12)))
    r2 = nxp * nxp + nyp * nyp
    inv = one / np.sqrt(np.maximum(r2, one))
    nxp *= inv
    nyp *= inv
    nz = np.sqrt(np.maximum(one - r2, 0.0))
    lam = np.maximum(nxp * P["lx"] + nyp * P["ly"] + nz * P["lz"], 0.0)
    shade = P["k0"] + P["k1"] * lam
    bg_w = np.float32(1.0) - cv.A
    tg = (y + one) * np.float32(0.5)
    noise = _noise_fields(P["nkey"], size)
    out = np.empty((n, size, size, 3), np.uint8)
    for ch in range(3):
        # lit foreground over a vertical-gradient background, plus noise, rounded to uint8
        c = cv.F[ch]
        c *= shade
        bg = P["c_bgt"][ch] + P["c_bgd"][ch] * tg
        c += bg_w * bg
        z = (noise >> np.uint32(11 * ch)) & np.uint32(0x3FF)
        zf = z.astype(np.float32)
        zf -= np.float32(511.5)
        zf *= P["noise"]
        c += zf
        np.clip(c, 0.0, 1.0, out=c)
        c *= np.float32(255.0)
        c += np.float32(0.5)
        out[..., ch] = c
    return out


_LASH_C = np.array(_LASH, np.float32)
_SCLERA_C = np.array(_SCLERA, np.float32)
_MOUTH_C = np.array(_MOUTH, np.float32)
_TEETH_C = np.array(_TEETH, np.float32)
_RIM_C = np.array(_RIM, np.float32)
_GLINT_C = np.array((0.92, 0.96, 1.0), np.float32)
_NOISE_STD = 1024.0 / math.sqrt(12.0)   # std of a uniform 10-bit field centred on 0


def _noise_fields(key: np.ndarray, size: int) -> np.ndarray:
    """A 32-bit integer hash of (per-image key, pixel): three 10-bit uniform fields, one per channel."""
    x = np.arange(size * size, dtype=np.uint32).reshape(1, size, size) ^ key
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _chunk_size(size: int) -> int:
    return max(1, (1 << 17) // (size * size))


def render(factors: Mapping[str, np.ndarray], size: int = 64, noise: float | None = None,
           *, workers: int | None = None, out: np.ndarray | None = None,
           _full_windows: bool = False) -> np.ndarray:
    """Render factor rows to uint8 (N, size, size, 3); bit-exact for any subset, order or batching.

    ``noise`` overrides the table's per-image noise level (None: use the ``noise`` column).
    ``workers``: threads rendering chunks in parallel (numpy releases the GIL); None picks
    up to 2 for large jobs. ``out``: an optional uint8 (N, size, size, 3) array to fill.
    """
    n = check_factors(factors)
    size = int(size)
    if not 8 <= size <= 1024:
        raise FacefactorsError(f"synthfaces: render size {size} is out of range [8, 1024]")
    P = _image_params(factors, size, noise)
    if out is None:
        out = np.empty((n, size, size, 3), np.uint8)
    elif out.shape != (n, size, size, 3) or out.dtype != np.uint8:
        raise FacefactorsError(f"synthfaces: output buffer has shape {out.shape}, expected {(n, size, size, 3)} uint8")
    # Group images that need the optional layers (glasses, long hair / bun) so that whole
    # chunks can skip them; every image's pixels are the same in any grouping.
    key = (P["glasses"].reshape(-1) > 0).astype(np.int64) * 2 + ((P["hlong"] + P["hbun"]).reshape(-1) > 0)
    order = np.argsort(key, kind="stable")
    step = _chunk_size(size)

    def work(start: int) -> None:
        sel = order[start:start + step]
        Pc = {k: (v[:, sel] if k.startswith("c_") else v[sel]) for k, v in P.items()}
        out[sel] = _render_chunk(Pc, size, _full_windows)

    starts = range(0, n, step)
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if n * size * size >= (1 << 21) else 1
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=int(workers)) as ex:
            list(ex.map(work, starts))
    else:
        for s in starts:
            work(s)
    return out


# ----------------------------------------------------------------------------- dataset

def heldout_identity_ids(cfg: SynthFacesConfig) -> np.ndarray:
    """The identities whose images form the 'unseen' split (a seeded choice of k ids)."""
    k = int(cfg.heldout_identities)
    if k <= 0:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng([int(cfg.seed), 2]).permutation(int(cfg.n_identities))[:k]).astype(np.int64)


def make_splits(cfg: SynthFacesConfig, identity: np.ndarray) -> dict[str, np.ndarray]:
    """Seeded image-level train/test split; images of held-out identities go to 'unseen' only."""
    identity = np.asarray(identity, dtype=np.int64)
    held = heldout_identity_ids(cfg)
    unseen = np.isin(identity, held)
    pool = np.flatnonzero(~unseen)
    perm = np.random.default_rng([int(cfg.seed), 3]).permutation(len(pool))
    n_test = int(round(float(cfg.test_fraction) * len(pool)))
    splits = {"train": np.sort(pool[perm[n_test:]]), "test": np.sort(pool[perm[:n_test]])}
    if len(held):
        splits["unseen"] = np.flatnonzero(unseen)
    return {k: v.astype(np.int64) for k, v in splits.items()}


def labels_from_factors(factors: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Attribute labels (int64 for discrete, float32 for continuous) taken from the factor table."""
    labels = {}
    for name in attribute_specs(1):
        col = np.asarray(factors[name])
        dtype = np.float32 if name in CONTINUOUS else np.int64
        labels[name] = torch.from_numpy(np.ascontiguousarray(col, dtype=dtype))
    return labels


def _dataset(cfg: SynthFacesConfig, images: torch.Tensor, factors: dict[str, np.ndarray],
             splits: dict[str, np.ndarray], extra_meta: dict | None = None) -> ImageDataset:
    meta = {"config": dataclasses.asdict(cfg), "generator": "facefactors.synthfaces", "version": _FORMAT_VERSION}
    meta.update(extra_meta or {})
    return ImageDataset(
        name="synthfaces", images=images, labels=labels_from_factors(factors),
        attributes=attribute_specs(int(cfg.n_identities)), splits=splits, factors=factors,
        renderer=functools.partial(render, size=int(cfg.size)),
        factor_groups={k: list(v) for k, v in FACTOR_GROUPS.items()},
        factor_hidden={k: {a: list(v) for a, v in d.items()} for k, d in FACTOR_HIDDEN.items()}, meta=meta)


def generate(cfg: SynthFacesConfig | None = None, workers: int | None = None) -> ImageDataset:
    """Sample factors and render the whole dataset (images uint8 (N, 3, H, W))."""
    cfg = (cfg or SynthFacesConfig()).validate()
    factors = sample_factors(cfg)
    n, size = int(cfg.n), int(cfg.size)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    nhwc = images.permute(0, 2, 3, 1).numpy()          # a view: render straight into the tensor
    step = max(1, (1 << 23) // (size * size))           # bound the temporary (N, H, W, 3) buffer
    for s in range(0, n, step):
        e = min(n, s + step)
        nhwc[s:e] = render({k: v[s:e] for k, v in factors.items()}, size, workers=workers)
    return _dataset(cfg, images, factors, make_splits(cfg, factors["identity"]))


# Derived binary attributes: name -> (source attribute, the class that means "yes"). Opt-in
# (``data.derived``), so datasets without them keep their attributes and oracle fingerprints.
DERIVED = {"smile": ("expression", EXPRESSIONS.index("smile"))}


def add_derived(ds: ImageDataset, names: Sequence[str]) -> ImageDataset:
    """``ds`` with binary attributes derived from a categorical one (e.g. ``smile``: expression ==
    smile) added to its labels and attributes (labels as int64 0/1). No factor group: a derived
    value has no single counterfactual rendering. Returns ``ds`` itself, updated in place."""
    for name in names:
        if name not in DERIVED:
            raise FacefactorsError(f"unknown derived attribute {name!r}; available: {', '.join(DERIVED)}")
        source, cls = DERIVED[name]
        ds.labels[name] = (ds.labels[source] == cls).to(torch.int64)
        ds.attributes[name] = AttributeSpec(name, "binary", ("no", "yes"))
    if names:
        ds.meta["derived"] = list(dict.fromkeys([*ds.meta.get("derived", []), *names]))
    return ds


# ----------------------------------------------------------------------------- save / load

_FORMAT_VERSION = 1
_FILES = ("images.npy", "factors.csv", "meta.json", "preview.png")


def _format_column(name: str, col: np.ndarray) -> list[str]:
    if FACTOR_COLUMNS[name] is np.float64:
        return [repr(float(v)) for v in np.asarray(col, dtype=np.float64).tolist()]
    return [str(int(v)) for v in np.asarray(col, dtype=np.int64).tolist()]


def factors_to_csv(factors: Mapping[str, np.ndarray]) -> str:
    """One row per image, every factor column; floats as repr so they parse back exactly."""
    check_factors(factors)
    cols = [_format_column(c, factors[c]) for c in FACTOR_COLUMNS]
    lines = [",".join(FACTOR_COLUMNS)]
    lines.extend(",".join(row) for row in zip(*cols))
    return "\n".join(lines) + "\n"


def factors_from_csv(text: str, source: str = "factors.csv") -> dict[str, np.ndarray]:
    """Parse ``factors_to_csv`` output; a FacefactorsError names ``source`` and the bad line."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise FacefactorsError(f"{source}: empty factor table")
    header = rows[0]
    missing = [c for c in FACTOR_COLUMNS if c not in header]
    if missing:
        raise FacefactorsError(f"{source}: missing column(s) {', '.join(missing)}")
    pos = {c: header.index(c) for c in FACTOR_COLUMNS}
    body = rows[1:]
    out = {}
    for c, j in pos.items():
        conv = float if FACTOR_COLUMNS[c] is np.float64 else int
        vals = []
        for i, r in enumerate(body):
            try:
                vals.append(conv(r[j]))
            except (ValueError, IndexError):
                raise FacefactorsError(
                    f"{source}: line {i + 2}: bad or missing value for column {c!r}") from None
        out[c] = np.array(vals, dtype=FACTOR_COLUMNS[c])
    return out


def save(ds: ImageDataset, out_dir: str | Path) -> Path:
    """Write images.npy, factors.csv, meta.json and preview.png (atomically; same seed -> same bytes)."""
    if ds.factors is None:
        raise FacefactorsError(f"dataset {ds.name!r} has no factor table; only SynthFaces datasets can be saved")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nhwc = ds.images.permute(0, 2, 3, 1).numpy()
    with atomic_path(out / "images.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, nhwc, allow_pickle=False)
    write_bytes(out / "factors.csv", factors_to_csv(ds.factors).encode("utf-8"))
    meta = {
        "format": "facefactors.synthfaces",
        "version": _FORMAT_VERSION,
        "config": ds.meta.get("config", {}),
        "image_shape": list(nhwc.shape),
        "attributes": [{"name": a.name, "kind": a.kind, "classes": list(a.classes),
                        "identity_linked": a.identity_linked} for a in ds.attributes.values()],
        "factor_columns": {c: np.dtype(t).name for c, t in FACTOR_COLUMNS.items()},
        "factor_groups": ds.factor_groups,
        "splits": {k: np.asarray(v).tolist() for k, v in ds.splits.items()},
    }
    write_json(out / "meta.json", meta)
    save_png(out / "preview.png", preview_grid(ds, 8, 8))
    return out


def load(path: str | Path) -> ImageDataset:
    """Read a directory written by ``save``; every problem is a FacefactorsError naming the file."""
    root = Path(path)
    if not root.is_dir():
        raise FacefactorsError(f"synthfaces dataset directory not found: {root}")
    for name in ("meta.json", "images.npy", "factors.csv"):
        if not (root / name).is_file():
            raise FacefactorsError(f"synthfaces dataset {root} is missing {root / name}")
    meta_path = root / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FacefactorsError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != "facefactors.synthfaces":
        raise FacefactorsError(f"{meta_path}: not a SynthFaces meta file (format field missing or wrong)")
    try:
        cfg = SynthFacesConfig(**meta["config"]).validate()
        splits = {k: np.asarray(v, dtype=np.int64) for k, v in meta["splits"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise FacefactorsError(f"{meta_path}: bad or missing config/splits ({e})") from None
    img_path = root / "images.npy"
    try:
        arr = np.load(img_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FacefactorsError(f"{img_path}: cannot read the image array ({e})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[1] != arr.shape[2]:
        raise FacefactorsError(f"{img_path}: expected uint8 (N, H, H, 3) images, found {arr.dtype} {arr.shape}")
    if arr.shape[1] != int(cfg.size) or arr.shape[0] != int(cfg.n):
        raise FacefactorsError(f"{img_path}: images {arr.shape} disagree with {meta_path} "
                               f"(n={cfg.n}, size={cfg.size})")
    csv_path = root / "factors.csv"
    try:
        text = csv_path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FacefactorsError(f"{csv_path}: not a text file") from None
    factors = factors_from_csv(text, str(csv_path))
    n_rows = len(factors["identity"])
    if n_rows != arr.shape[0]:
        raise FacefactorsError(f"{csv_path} has {n_rows} rows but {img_path} holds {arr.shape[0]} images")
    for k, v in splits.items():
        if len(v) and (v.min() < 0 or v.max() >= n_rows):
            raise FacefactorsError(f"{meta_path}: split {k!r} indexes outside [0, {n_rows})")
    if len(factors["identity"]) and factors["identity"].max() >= int(cfg.n_identities):
        raise FacefactorsError(f"{csv_path}: identity ids exceed n_identities={cfg.n_identities}")
    images = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
    return _dataset(cfg, images, factors, splits, {"path": str(root)})


# ----------------------------------------------------------------------------- pictures

def _as_nhwc(images) -> np.ndarray:
    if isinstance(images, ImageDataset):
        images = images.images
    if isinstance(images, torch.Tensor):
        arr = images.detach().cpu()
        if arr.dtype != torch.uint8:
            raise FacefactorsError(f"preview_grid wants uint8 images, got {arr.dtype}")
        return arr.permute(0, 2, 3, 1).numpy()
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise FacefactorsError(f"preview_grid wants uint8 (N, H, W, C) images, got {arr.dtype} {arr.shape}")
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    return arr


def preview_grid(images, rows: int = 8, cols: int = 8, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile the first rows*cols images (ImageDataset, uint8 NCHW tensor or NHWC array) into one RGB image."""
    arr = _as_nhwc(images)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    h, w = arr.shape[1:3]
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), pad_value, np.uint8)
    for i in range(min(len(arr), rows * cols)):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = arr[i]
    return grid


def factor_sheet(size: int = 64, seed: int = 0) -> np.ndarray:
    """An illustration of every factor: each row varies one factor of a fixed base face."""
    from PIL import Image, ImageDraw

    base = sample_factors(SynthFacesConfig(n=1, seed=seed, n_identities=100), [0])
    base.update(identity_params(seed, np.array([7])), identity=np.array([7]))
    base.update(expression=np.array([0]), expression_intensity=np.array([1.0]), illumination=np.array([2]),
                light_strength=np.array([0.5]), yaw=np.array([0.0]), pose=np.array([1]), roll=np.array([0.0]),
                glasses=np.array([0]), background=np.array([2]), background_jitter=np.array([0.0]))

    def variant(**kw):
        f = {k: v.copy() for k, v in base.items()}
        for k, v in kw.items():
            f[k] = np.asarray([v], dtype=FACTOR_COLUMNS[k])
        if "yaw" in kw:
            f["pose"] = pose_bin(f["yaw"])
        return f

    def identity(i):
        return {**identity_params(seed, np.array([i])), "identity": np.array([i])}

    rows: list[tuple[str, list[tuple[str, dict]]]] = [
        ("expression", [(EXPRESSIONS[e], variant(expression=e)) for e in range(4)]
         + [(f"{EXPRESSIONS[e]} .3", variant(expression=e, expression_intensity=0.3)) for e in (1, 2, 3)]),
        ("illumination", [(LIGHTS[i], variant(illumination=i, light_strength=1.0)) for i in range(4)]
         + [(f"left {s:.1f}", variant(illumination=0, light_strength=s)) for s in (0.3, 0.6)]),
        ("pose", [(f"yaw {y:+.2f}", variant(yaw=y)) for y in (-YAW_MAX, -0.15, 0.15, YAW_MAX)]
         + [(f"roll {r:+.2f}", variant(roll=r)) for r in (-ROLL_MAX, ROLL_MAX)]),
        ("glasses", [(g, variant(glasses=i)) for i, g in enumerate(GLASSES)]),
        ("background", [(bg, variant(background=i)) for i, bg in enumerate(BACKGROUNDS)]),
        ("hair style", [(st, variant(**{**identity(7), "id_hair_style": i})) for i, st in enumerate(HAIR_STYLES)]),
        ("skin tone", [(t, variant(**{**identity(7), "skin_tone": i, "skin_jitter": 0.0}))
                       for i, t in enumerate(SKIN_TONES)]),
        ("hair colour", [(h, variant(**{**identity(7), "hair_colour": i, "hair_jitter": 0.0}))
                         for i, h in enumerate(HAIR_COLOURS)]),
        ("identity", [(f"id{i:04d}", variant(**identity(i))) for i in range(8)]),
    ]
    label_w, pad, cap = 84, 2, 12
    cell = max(size, 60)
    ncol = max(len(r) for _, r in rows)
    sheet = np.full((len(rows) * (size + cap + pad) + pad, label_w + ncol * (cell + pad) + pad, 3), 255, np.uint8)
    for r, (_, variants) in enumerate(rows):
        table = {k: np.concatenate([v[k] for _, v in variants]) for k in FACTOR_COLUMNS}
        imgs = render(table, size, workers=1)
        for c, im in enumerate(imgs):
            y0, x0 = pad + r * (size + cap + pad), label_w + pad + c * (cell + pad) + (cell - size) // 2
            sheet[y0:y0 + size, x0:x0 + size] = im
    img = Image.fromarray(sheet)
    draw = ImageDraw.Draw(img)
    for r, (name, variants) in enumerate(rows):
        y0 = pad + r * (size + cap + pad)
        draw.text((4, y0 + size // 2 - 6), name, fill=(0, 0, 0))
        for c, (caption, _) in enumerate(variants):
            draw.text((label_w + pad + c * (cell + pad) + 1, y0 + size), caption, fill=(60, 60, 60))
    return np.asarray(img)
