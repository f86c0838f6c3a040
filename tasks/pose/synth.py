"""Synthetic human-pose dataset written in the HRNet/mmpose MPII layout.

The point is to exercise the real MPII loader and PCKh evaluation end to end without the real
images: ``write_synthetic_mpii`` draws articulated cartoon people on cluttered backgrounds and
writes ``images/*.jpg``, ``annot/{train,valid}.json`` and ``annot/gt_valid.mat`` exactly as the
MPII files HRNet ships (1-based MATLAB pixel coordinates, scale = person height / 200).

Each figure is posed in 3-D (a kinematic tree in head-height units, pelvis at the origin), turned
by a body yaw and projected orthographically, so left/right is only recoverable from the facing
cues (face or back of the head, shirt collar, feet, depth order), never from colour coding.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from scipy.io import savemat

JOINT_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow",
    "l_wrist",
)  # fmt: skip
# The short names the real gt_valid.mat carries (HRNet looks joints up by these).
_MAT_JOINT_NAMES = (
    "rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor", "neck", "head", "rwri",
    "relb", "rsho", "lsho", "lelb", "lwri",
)  # fmt: skip
_AUX_NAMES = (
    "r_hand", "l_hand", "r_toe", "l_toe", "head_c", "face_c", "r_eye", "l_eye", "nose_a",
    "nose_b", "r_mouth", "l_mouth", "r_collar", "l_collar", "sternum", "print",
)  # fmt: skip
_N_TORSO_CORNERS = 8
_IDX = {name: i for i, name in enumerate(JOINT_NAMES + _AUX_NAMES)}
_TORSO0 = len(JOINT_NAMES) + len(_AUX_NAMES)  # shirt hull corners, then trouser hull corners
_PELVIS0 = _TORSO0 + _N_TORSO_CORNERS

_GENERATOR = "dnas-synth-mpii"
_VERSION = 1
_SPLITS = (("train", 0), ("valid", 1))
_SHIFT = 4  # cv2 fixed-point bits: figures are drawn with sub-pixel accurate joints
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA
_MAT_HEADER = f"MATLAB 5.0 MAT-file, Platform: posix, Created by: {_GENERATOR}".encode()

_SKIN = np.array(
    [(205, 220, 245), (170, 195, 235), (140, 170, 220), (110, 140, 190), (80, 110, 160),
     (55, 80, 120)], dtype=np.float64,
)  # fmt: skip
_HAIR = np.array(
    [(25, 25, 30), (30, 45, 70), (40, 70, 110), (110, 170, 210), (150, 150, 155),
     (40, 70, 160)], dtype=np.float64,
)  # fmt: skip


@dataclass
class _Style:
    """Per-person colours (BGR) and build."""

    skin: tuple
    hair: tuple
    shirt: tuple
    forearm: tuple  # shirt colour (long sleeves) or skin
    trousers: tuple
    shin: tuple  # trouser colour or skin (shorts)
    shoes: tuple
    print_colour: tuple | None  # a chest print on the shirt front, or none
    build: float  # limb thickness multiplier


@dataclass
class _Person:
    """A posed figure: 3-D points in the camera frame plus its placement in the image.

    ``pts`` holds the 16 MPII joints followed by auxiliary drawing points, in head-height units
    with the pelvis at the origin, x to the image right, y down and z towards the camera (body yaw
    already applied, in-plane rotation not). The image position of point k is
    ``R(angle) @ (pts[k, :2] - torso_mid) * unit + anchor``.
    """

    pts: np.ndarray
    yaw: float
    face_z: float  # camera-z of the head's forward axis: > 0 when the face is visible
    chest_z: float  # camera-z of the torso's forward axis
    height: float  # head top to ankle when standing, head units
    style: _Style
    unit: float  # pixels per head unit
    angle: float  # in-plane rotation, radians
    anchor: np.ndarray  # image position of the pelvis-thorax midpoint

    @property
    def facing_camera(self) -> bool:
        """True when the body faces the camera (its right side shows on the image left)."""
        return bool(np.cos(self.yaw) > 0.0)

    def project(self) -> np.ndarray:
        """Image coordinates (0-based pixels) of every point, shape (K, 2)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        rot = np.array([[c, -s], [s, c]])
        mid = 0.5 * (self.pts[_IDX["pelvis"], :2] + self.pts[_IDX["thorax"], :2])
        return (self.pts[:, :2] - mid) @ rot.T * self.unit + self.anchor


def _rot(axis: int, a: float) -> np.ndarray:
    """3x3 rotation by ``a`` radians about coordinate axis 0 (x), 1 (y) or 2 (z)."""
    c, s = float(np.cos(a)), float(np.sin(a))
    if axis == 0:
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == 1:
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


_DOWN = np.array([0.0, 1.0, 0.0])
_UP = -_DOWN
_LAT = np.array([1.0, 0.0, 0.0])  # the person's left
_FWD = np.array([0.0, 0.0, 1.0])


def _bgr(v: Iterable[float]) -> tuple:
    """A cv2 colour: ints clipped to 0..255."""
    return tuple(min(255, max(0, int(c))) for c in v)


def _hsv_colour(rng: np.random.Generator, s: tuple, v: tuple) -> tuple:
    """A random BGR colour with any hue and saturation/value drawn from the given ranges."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s) / 255, rng.uniform(*v))
    return int(b), int(g), int(r)


def _skin_colour(rng: np.random.Generator) -> tuple:
    """A skin tone between very light and very dark."""
    t = rng.uniform(0, len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    base = _SKIN[i] + (t - i) * (_SKIN[i + 1] - _SKIN[i])
    return _bgr(base + rng.normal(0, 8, 3))


def _sample_style(rng: np.random.Generator) -> _Style:
    """Random clothing and skin; nothing differs between the left and right side."""
    skin = _skin_colour(rng)
    shirt = _hsv_colour(rng, (0, 255), (40, 250))
    if rng.random() < 0.4:  # jeans / dark / khaki trousers are common
        trousers = _bgr(
            [(120, 70, 30), (35, 35, 40), (110, 160, 180)][rng.integers(3)] + rng.normal(0, 12, 3)
        )
    else:
        trousers = _hsv_colour(rng, (0, 220), (30, 220))
    return _Style(
        skin=skin,
        hair=_bgr(_HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 10, 3)),
        shirt=shirt,
        forearm=shirt if rng.random() < 0.5 else skin,
        trousers=trousers,
        shin=trousers if rng.random() < 0.75 else skin,
        shoes=_hsv_colour(rng, (0, 150), (15, 110)),
        print_colour=_hsv_colour(rng, (0, 255), (30, 255)) if rng.random() < 0.5 else None,
        build=rng.uniform(0.85, 1.2),
    )


def _sample_pose(rng: np.random.Generator) -> dict:
    """Pose one figure in 3-D; returns the pose fields of ``_Person``."""
    jit = rng.uniform(0.92, 1.08, 8)
    ln = {
        "torso": 2.7 * jit[0], "neck": 0.45 * jit[1], "upper_arm": 1.5 * jit[2],
        "forearm": 1.3 * jit[3], "thigh": 2.0 * jit[4], "shin": 2.0 * jit[5],
        "shoulder": 1.0 * jit[6], "hip": 0.65 * jit[7],
    }  # fmt: skip
    p: dict[str, np.ndarray] = {"pelvis": np.zeros(3)}
    lean = np.clip(rng.normal(0, 0.22), -0.52, 0.52)  # sideways torso lean, radians (<= 30 deg)
    bend = rng.uniform(0, 0.45) if rng.random() < 0.5 else 0.0  # forward torso bend
    r_torso = _rot(2, lean) @ _rot(0, -bend)
    up_t, lat_t, fwd_t = r_torso @ _UP, r_torso @ _LAT, r_torso @ _FWD
    p["thorax"] = up_t * ln["torso"]
    r_head = (
        _rot(2, lean + rng.normal(0, 0.15))
        @ _rot(0, -rng.uniform(-0.25, 0.25))
        @ _rot(1, rng.uniform(-0.5, 0.5))
    )
    up_h, lat_h, fwd_h = r_head @ _UP, r_head @ _LAT, r_head @ _FWD
    p["upper_neck"] = p["thorax"] + up_h * ln["neck"]
    p["head_top"] = p["upper_neck"] + up_h
    hc = p["upper_neck"] + 0.5 * up_h
    p["head_c"] = hc
    p["face_c"] = hc + 0.15 * fwd_h - 0.08 * up_h
    p["nose_a"] = hc + 0.40 * fwd_h + 0.02 * up_h
    p["nose_b"] = hc + 0.42 * fwd_h - 0.12 * up_h
    r_pelvis = _rot(2, 0.3 * lean + rng.normal(0, 0.06))
    up_p, lat_p, fwd_p = r_pelvis @ _UP, r_pelvis @ _LAT, r_pelvis @ _FWD

    for side, s in (("r", -1.0), ("l", 1.0)):
        p[f"{side}_eye"] = hc + 0.02 * up_h + s * 0.17 * lat_h + 0.34 * fwd_h
        p[f"{side}_mouth"] = hc - 0.27 * up_h + s * 0.11 * lat_h + 0.31 * fwd_h
        p[f"{side}_collar"] = p["thorax"] + 0.05 * up_t + s * 0.35 * lat_t + 0.47 * fwd_t
        # Arm: flex forwards, then abduct away from the body, all in the torso frame.
        sho = p["thorax"] + s * ln["shoulder"] * lat_t
        abd = rng.uniform(0, 1.75) if rng.random() < 0.8 else rng.uniform(1.75, 2.95)
        flex = rng.uniform(-0.5, 1.75) if rng.random() < 0.8 else rng.uniform(1.75, 2.95)
        r_arm = r_torso @ _rot(2, -s * abd) @ _rot(0, flex)
        elb = sho + ln["upper_arm"] * (r_arm @ _DOWN)
        r_fore = r_arm @ _rot(1, rng.uniform(-1.4, 1.4)) @ _rot(0, rng.uniform(0, 2.6))
        wri = elb + ln["forearm"] * (r_fore @ _DOWN)
        p[f"{side}_shoulder"], p[f"{side}_elbow"], p[f"{side}_wrist"] = sho, elb, wri
        p[f"{side}_hand"] = wri + 0.45 * (r_fore @ _DOWN)
        # Leg: mostly downward, knee bends backwards, foot points forwards.
        hip = 0.15 * (r_pelvis @ _DOWN) + s * ln["hip"] * lat_p
        flex = rng.uniform(-0.4, 1.0) if rng.random() < 0.85 else rng.uniform(1.0, 2.0)
        r_thigh = r_pelvis @ _rot(2, -s * rng.uniform(-0.15, 0.7)) @ _rot(0, flex)
        knee = hip + ln["thigh"] * (r_thigh @ _DOWN)
        r_shin = r_thigh @ _rot(0, -2.6 * rng.random() ** 2)
        ank = knee + ln["shin"] * (r_shin @ _DOWN)
        p[f"{side}_hip"], p[f"{side}_knee"], p[f"{side}_ankle"] = hip, knee, ank
        p[f"{side}_toe"] = ank + r_shin @ _rot(0, rng.uniform(-0.3, 0.4)) @ np.array(
            [0.0, 0.15, 0.75]
        )
    p["sternum"] = p["thorax"] - 0.6 * up_t + 0.5 * fwd_t
    p["print"] = p["thorax"] - 1.2 * up_t + rng.uniform(-0.4, 0.4) * lat_t + 0.46 * fwd_t

    corners = []
    for lvl, half_w, half_d in (
        (p["thorax"] + 0.1 * up_t, ln["shoulder"] + 0.15, 0.45),
        (0.6 * up_t, 0.8, 0.42),
    ):
        for a in (-1.0, 1.0):
            corners += [lvl + a * half_w * lat_t + b * half_d * fwd_t for b in (-1.0, 1.0)]
    for lvl, half_w in ((0.7 * up_p, 0.8), (0.45 * (r_pelvis @ _DOWN), ln["hip"] + 0.4)):
        for a in (-1.0, 1.0):
            corners += [lvl + a * half_w * lat_p + b * 0.42 * fwd_p for b in (-1.0, 1.0)]

    pts = np.stack([p[n] for n in JOINT_NAMES + _AUX_NAMES] + corners)
    yaw = rng.uniform(-np.pi, np.pi)
    r_yaw = _rot(1, yaw)
    pts = pts @ r_yaw.T
    height = 1.0 + ln["neck"] + ln["torso"] + 0.15 + ln["thigh"] + ln["shin"]
    return {
        "pts": pts,
        "yaw": float(yaw),
        "face_z": float((r_yaw @ fwd_h)[2]),
        "chest_z": float((r_yaw @ fwd_t)[2]),
        "height": height,
    }


def _sample_angle(rng: np.random.Generator) -> float:
    """In-plane rotation: mostly within +-40 degrees, occasionally anything."""
    if rng.random() < 0.06:
        return rng.uniform(-np.pi, np.pi)
    return float(np.clip(rng.normal(0, 0.35), -0.7, 0.7))


def _sample_person(rng: np.random.Generator, image_size: int) -> _Person:
    """The annotated person: 35%-85% of the image height, torso kept inside the image."""
    pose = _sample_pose(rng)
    unit = rng.uniform(0.35, 0.85) * image_size / pose["height"]
    anchor = rng.uniform(0.2, 0.8, 2) * image_size
    return _Person(
        **pose, style=_sample_style(rng), unit=unit, angle=_sample_angle(rng), anchor=anchor
    )


def _sample_distractor(rng: np.random.Generator, image_size: int, main: _Person) -> _Person:
    """An un-annotated bystander: usually smaller, often partly outside, sometimes overlapping."""
    pose = _sample_pose(rng)
    unit = main.unit * rng.uniform(0.45, 1.0)
    if rng.random() < 0.35:
        d = rng.uniform(0.3, 0.6) * main.height * main.unit
        a = rng.uniform(0, 2 * np.pi)
        anchor = main.anchor + d * np.array([np.cos(a), np.sin(a)])
    else:
        anchor = rng.uniform(-0.1, 1.1, 2) * image_size
    return _Person(
        **pose, style=_sample_style(rng), unit=unit, angle=_sample_angle(rng), anchor=anchor
    )


def _fx(pt: Sequence[float]) -> tuple[int, int]:
    """A point in cv2 fixed-point coordinates."""
    return math.floor(pt[0] * _ONE + 0.5), math.floor(pt[1] * _ONE + 0.5)


def _shade(colour: tuple, f: float, add: float = 0.0) -> tuple:
    """COLOUR scaled by F plus ADD (rims, shadows, highlights)."""
    return _bgr([c * f + add for c in colour])


def _capsule(
    img: np.ndarray, a: Sequence[float], b: Sequence[float], width: float, colour: tuple
) -> None:
    """A limb segment: dark rim, body colour, and a thin highlight along one side."""
    ax, ay, bx, by = float(a[0]), float(a[1]), float(b[0]), float(b[1])
    pa, pb = _fx((ax, ay)), _fx((bx, by))
    w = max(1, round(width))
    rim = max(1, round(0.12 * width))
    cv2.line(img, pa, pb, _shade(colour, 0.55), w + 2 * rim, _AA, _SHIFT)
    cv2.line(img, pa, pb, colour, w, _AA, _SHIFT)
    n = math.hypot(bx - ax, by - ay)
    if w >= 5 and n > 1e-6:
        ox, oy = (ay - by) / n * 0.22 * width, (bx - ax) / n * 0.22 * width
        cv2.line(
            img,
            _fx((ax + ox, ay + oy)),
            _fx((bx + ox, by + oy)),
            _shade(colour, 1.12, 18),
            max(1, w // 4),
            _AA,
            _SHIFT,
        )


def _hull(img: np.ndarray, pts: np.ndarray, colour: tuple, rim: float) -> None:
    """The filled, outlined convex hull of PTS (a projected torso box)."""
    hull = cv2.convexHull(np.round(pts * _ONE).astype(np.int32))
    cv2.fillConvexPoly(img, hull, colour, _AA, _SHIFT)
    cv2.polylines(img, [hull], True, _shade(colour, 0.55), max(1, int(round(rim))), _AA, _SHIFT)


def _ellipse(img: np.ndarray, centre: np.ndarray, axes: tuple, angle: float, colour: tuple) -> None:
    """A filled anti-aliased ellipse with sub-pixel centre and semi-axes."""
    ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(img, _fx(centre), ax, angle, 0, 360, colour, -1, _AA, _SHIFT)


def _head_ellipse(q: np.ndarray, unit: float) -> tuple[np.ndarray, tuple, float]:
    """(centre, semi-axes, angle in degrees) of the drawn head, spanning upper neck to head top."""
    neck, top = q[_IDX["upper_neck"]], q[_IDX["head_top"]]
    d = top - neck
    along = max(0.5 * float(np.hypot(*d)), 0.4 * unit)
    return 0.5 * (neck + top), (along, 0.4 * unit), float(np.degrees(np.arctan2(d[1], d[0])))


def _head_box(q: np.ndarray, unit: float) -> np.ndarray:
    """Axis-aligned box [[x1, y1], [x2, y2]] around the drawn head ellipse (0-based)."""
    centre, (a, b), deg = _head_ellipse(q, unit)
    t = np.radians(deg)
    half = np.array(
        [np.hypot(a * np.cos(t), b * np.sin(t)), np.hypot(a * np.sin(t), b * np.cos(t))]
    )
    return np.stack([centre - half, centre + half])


def _draw_head(img: np.ndarray, person: _Person, q: np.ndarray) -> None:
    """Back of the head (hair only) or a face, depending on where the head points."""
    st, u = person.style, person.unit
    centre, axes, deg = _head_ellipse(q, u)
    _ellipse(img, centre, (axes[0] + 0.06 * u, axes[1] + 0.06 * u), deg, _shade(st.hair, 0.6))
    _ellipse(img, centre, axes, deg, st.hair)
    if person.face_z < -0.3:
        return
    width = 0.3 * u * (0.55 + 0.45 * max(person.face_z, 0.0))
    _ellipse(img, q[_IDX["face_c"]], (0.36 * u, width), deg, st.skin)
    if person.face_z < 0.1:
        return
    ink = max(1, int(round(0.07 * u)))
    hc = person.pts[_IDX["head_c"], 2]
    for side in ("r", "l"):
        if person.pts[_IDX[f"{side}_eye"], 2] - hc > 0.05:
            cv2.circle(
                img,
                _fx(q[_IDX[f"{side}_eye"]]),
                max(_ONE, int(0.08 * u * _ONE)),
                (30, 25, 25),
                -1,
                _AA,
                _SHIFT,
            )
    cv2.line(
        img, _fx(q[_IDX["nose_a"]]), _fx(q[_IDX["nose_b"]]), _shade(st.skin, 0.7), ink, _AA, _SHIFT
    )
    cv2.line(img, _fx(q[_IDX["r_mouth"]]), _fx(q[_IDX["l_mouth"]]), (60, 50, 150), ink, _AA, _SHIFT)


def _draw_person(img: np.ndarray, person: _Person) -> None:
    """Draw body parts back to front (sorted by camera depth)."""
    q = person.project()
    z = person.pts[:, 2]
    st, u, b = person.style, person.unit, person.style.build
    parts: list[tuple[float, Callable[[], None]]] = []

    def limb(names: tuple, width: float, colour: tuple) -> None:
        ids = [_IDX[n] for n in names]
        depth = float(np.mean(z[ids[:2]]))
        col = _shade(colour, 0.82) if depth < -0.3 else colour  # far limbs sit in shadow

        def draw() -> None:
            _capsule(img, q[ids[0]], q[ids[1]], width * u * b, col)
            if len(ids) == 3:  # hand or foot
                end_col = st.skin if names[2].endswith("hand") else st.shoes
                _capsule(img, q[ids[1]], q[ids[2]], 0.62 * width * u * b, end_col)

        parts.append((depth, draw))

    torso_depth = 0.5 * float(z[_IDX["pelvis"]] + z[_IDX["thorax"]]) - 0.3

    def torso() -> None:
        rim = 0.08 * u
        _hull(img, q[_PELVIS0 : _PELVIS0 + _N_TORSO_CORNERS], st.trousers, rim)
        _hull(img, q[_TORSO0 : _TORSO0 + _N_TORSO_CORNERS], st.shirt, rim)
        if person.chest_z > 0.2:  # the shirt front: a collar and maybe a print
            dark = _shade(st.shirt, 0.45)
            ink = max(1, int(round(0.1 * u)))
            for side in ("r", "l"):
                cv2.line(
                    img,
                    _fx(q[_IDX[f"{side}_collar"]]),
                    _fx(q[_IDX["sternum"]]),
                    dark,
                    ink,
                    _AA,
                    _SHIFT,
                )
            if st.print_colour is not None:
                cv2.circle(
                    img,
                    _fx(q[_IDX["print"]]),
                    max(_ONE, int(0.3 * u * _ONE)),
                    st.print_colour,
                    -1,
                    _AA,
                    _SHIFT,
                )

    def head() -> None:
        neck = q[_IDX["upper_neck"]]
        _capsule(img, neck + 0.7 * (q[_IDX["thorax"]] - neck), neck, 0.4 * u * b, st.skin)
        _draw_head(img, person, q)

    parts.append((torso_depth, torso))
    parts.append((float(z[_IDX["head_c"]]) - 0.25, head))
    for side in ("r", "l"):
        limb((f"{side}_hip", f"{side}_knee"), 0.7, st.trousers)
        limb((f"{side}_knee", f"{side}_ankle", f"{side}_toe"), 0.5, st.shin)
        limb((f"{side}_shoulder", f"{side}_elbow"), 0.5, st.shirt)
        limb((f"{side}_elbow", f"{side}_wrist", f"{side}_hand"), 0.42, st.forearm)
    for _, draw in sorted(parts, key=lambda t: t[0]):
        draw()


@lru_cache(maxsize=4)
def _noise_bank(size: int) -> np.ndarray:
    """Fixed Gaussian noise, twice the image size; images take a random window of it."""
    return np.random.default_rng(0x5EED).standard_normal((2 * size, 2 * size, 3), np.float32)


def _pattern(rng: np.random.Generator, size: int, period: float) -> np.ndarray:
    """A 0/255 texture mask: stripes or a checkerboard at a random angle and period (pixels)."""
    n = max(2, int(round(period)))
    tile = np.zeros((2 * n, 2 * n), np.uint8)
    if rng.random() < 0.5:
        tile[:, : max(1, int(2 * n * rng.uniform(0.3, 0.7)))] = 255
    else:
        tile[:n, :n] = tile[n:, n:] = 255
    # Warping a pre-tiled sheet is several times faster than cv2.BORDER_WRAP on the tile.
    reps = int(0.75 * size / period) + 3
    sheet = np.tile(tile, (reps, reps))
    t, k = rng.uniform(0, np.pi), n / period
    c, s = k * np.cos(t), k * np.sin(t)
    ox, oy = reps * n + rng.uniform(0, 2 * n, 2) - 0.5 * size * np.array([c + s, c - s])
    m = np.array([[c, s, ox], [-s, c, oy]], np.float32)
    return cv2.warpAffine(sheet, m, (size, size), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)


def _random_polygon(rng: np.random.Generator, centre: np.ndarray, radius: float) -> np.ndarray:
    """Vertices of a random star-shaped polygon around CENTRE."""
    n = rng.integers(3, 8)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.5, 1.0, n)
    return centre + np.stack([r * np.cos(ang), r * np.sin(ang)], 1)


def _shape_mask(
    rng: np.random.Generator, size: int, centre: np.ndarray, half: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A filled rotated rectangle, ellipse or polygon: 0/255 mask and fixed-point outline."""
    kind = rng.integers(3)
    deg = rng.uniform(0, 180)
    if kind == 0:
        outline = cv2.boxPoints(((float(centre[0]), float(centre[1])), tuple(2 * half), deg))
    elif kind == 1:
        t = np.radians(deg)
        a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        ex, ey = half[0] * np.cos(a), half[1] * np.sin(a)
        outline = centre + np.stack(
            [ex * np.cos(t) - ey * np.sin(t), ex * np.sin(t) + ey * np.cos(t)], 1
        )
    else:
        outline = _random_polygon(rng, centre, float(half.max()))
    outline = np.round(outline * _ONE).astype(np.int32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [outline], 255, cv2.LINE_8, _SHIFT)
    return mask, outline


def _paint(img: np.ndarray, mask: np.ndarray, colour: tuple, alpha: float = 1.0) -> None:
    """Blend a flat colour into IMG where MASK is set."""
    flat = cv2.add(np.zeros_like(img), (*colour, 0))
    if alpha < 1.0:
        flat = cv2.addWeighted(img, 1.0 - alpha, flat, alpha, 0.0)
    cv2.copyTo(flat, mask, img)


def _clutter_colour(rng: np.random.Generator) -> tuple:
    """Colours that people are drawn in (skin, clothing), so clutter makes hard negatives."""
    return _skin_colour(rng) if rng.random() < 0.4 else _hsv_colour(rng, (0, 255), (30, 240))


def _draw_background(rng: np.random.Generator, size: int, unit: float) -> np.ndarray:
    """Smooth colour field plus textured regions, blobs, polygons and limb-like strokes."""
    k = int(rng.integers(2, 4))
    field = np.array(
        [_hsv_colour(rng, (0, 200), (40, 230)) for _ in range(k * k)], np.uint8
    ).reshape(k, k, 3)
    img = cv2.resize(field, (size, size), interpolation=cv2.INTER_LINEAR)

    for _ in range(rng.integers(1, 4)):  # textured regions
        mask = _pattern(rng, size, unit * rng.uniform(0.3, 2.5))
        if rng.random() < 0.6:
            half = rng.uniform(0.15, 0.5, 2) * size
            region, _ = _shape_mask(rng, size, rng.uniform(0, size, 2), half)
            mask = cv2.bitwise_and(mask, region)
        _paint(img, mask, _hsv_colour(rng, (0, 255), (20, 250)), rng.uniform(0.25, 1.0))

    for _ in range(rng.integers(2, 9)):  # blobs and polygons
        centre = rng.uniform(-0.1, 1.1, 2) * size
        radius = rng.uniform(0.03, 0.25) * size
        col = _hsv_colour(rng, (0, 255), (20, 250))
        if rng.random() < 0.5:
            _ellipse(
                img, centre, (radius, radius * rng.uniform(0.3, 1.0)), rng.uniform(0, 180), col
            )
        else:
            poly = np.round(_random_polygon(rng, centre, radius) * _ONE).astype(np.int32)
            cv2.fillPoly(img, [poly], col, _AA, _SHIFT)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))

    for _ in range(rng.integers(2, 7)):  # limb-like strokes, sometimes a head-like blob
        a = rng.uniform(0, size, 2)
        col = _clutter_colour(rng)
        width = rng.uniform(0.3, 0.8) * unit
        if rng.random() < 0.2:
            _ellipse(img, a, (0.5 * unit, 0.4 * unit), rng.uniform(0, 180), col)
            continue
        for _ in range(rng.integers(1, 3)):
            ang = rng.uniform(0, 2 * np.pi)
            b = a + rng.uniform(1.2, 2.5) * unit * np.array([np.cos(ang), np.sin(ang)])
            _capsule(img, a, b, width, col)
            a = b
    return img


def _draw_occluders(img: np.ndarray, rng: np.random.Generator, person: _Person) -> None:
    """1-2 opaque, often textured shapes over the annotated person's limbs."""
    q = person.project()[: len(JOINT_NAMES)]
    size = img.shape[0]
    inside = np.flatnonzero(((q >= 0) & (q <= size - 1)).all(1))
    limbs = [j for j in (0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15) if j in inside]
    for _ in range(rng.integers(1, 3)):
        target = q[rng.choice(limbs)] if limbs else person.anchor
        centre = target + rng.normal(0, 0.4 * person.unit, 2)
        half = person.unit * rng.uniform([0.6, 0.5], [2.0, 1.4])
        mask, outline = _shape_mask(rng, size, centre, half)
        col = _hsv_colour(rng, (0, 255), (20, 240))
        _paint(img, mask, col)
        if rng.random() < 0.6:
            stripes = _pattern(rng, size, person.unit * rng.uniform(0.3, 1.2))
            _paint(img, cv2.bitwise_and(mask, stripes), _hsv_colour(rng, (0, 255), (20, 240)))
        cv2.polylines(img, [outline], True, _shade(col, 0.5), 1, _AA, _SHIFT)


def _finish(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, colour cast, brightness/contrast and sensor noise."""
    size = img.shape[0]
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 0.9))
    ox, oy = rng.integers(0, size, 2)
    out = img.astype(np.float32)
    cv2.scaleAdd(_noise_bank(size)[oy : oy + size, ox : ox + size], rng.uniform(0, 8), out, out)
    gain = rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, 3)
    affine = np.hstack([np.diag(gain), np.full((3, 1), rng.uniform(-30, 30))]).astype(np.float32)
    out = cv2.transform(out, affine)
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def _render(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, _Person]:
    """One image and its annotated person."""
    person = _sample_person(rng, image_size)
    img = _draw_background(rng, image_size, person.unit)
    others = [_sample_distractor(rng, image_size, person) for _ in range(rng.integers(0, 3))]
    front = []
    for other in others:
        # Bystanders in front of the annotated person never stand on its torso.
        far = np.hypot(*(other.anchor - person.anchor)) > 0.3 * person.height * person.unit
        if far and rng.random() < 0.4:
            front.append(other)
        else:
            _draw_person(img, other)
    _draw_person(img, person)
    for other in front:
        _draw_person(img, other)
    if rng.random() < 0.5:
        _draw_occluders(img, rng, person)
    return _finish(img, rng), person


def _annotate(person: _Person, image: str, image_size: int) -> tuple[dict, np.ndarray]:
    """The HRNet MPII json entry (1-based coordinates) and the 1-based head box."""
    q = person.project()
    joints = q[: len(JOINT_NAMES)]
    vis = ((joints >= 0) & (joints <= image_size - 1)).all(1)
    lo, hi = joints.min(0), joints.max(0)
    centre = np.clip(0.5 * (lo + hi), 0, image_size - 1)
    extent = max(person.height * person.unit, float((hi - lo).max()))
    entry = {
        "image": image,
        "center": [round(float(c) + 1, 2) for c in centre],
        "scale": round(extent / 200.0, 4),
        "joints": [
            [round(float(x) + 1, 2), round(float(y) + 1, 2)] if v else [0.0, 0.0]
            for (x, y), v in zip(joints, vis, strict=True)
        ],
        "joints_vis": [int(v) for v in vis],
    }
    return entry, np.round(_head_box(q, person.unit) + 1, 2)


def _write_gt_mat(path: Path, entries: list[dict], head_boxes: list[np.ndarray]) -> None:
    """gt_valid.mat as HRNet reads it, with a fixed header so the bytes are reproducible."""
    n = len(entries)
    names = np.empty((1, len(_MAT_JOINT_NAMES)), dtype=object)
    for i, name in enumerate(_MAT_JOINT_NAMES):
        names[0, i] = np.array([name])
    pos = np.array([e["joints"] for e in entries], np.float64).reshape(n, 16, 2)
    missing = 1 - np.array([e["joints_vis"] for e in entries], np.int64).reshape(n, 16)
    boxes = np.array(head_boxes, np.float64).reshape(n, 2, 2)
    buf = io.BytesIO()
    savemat(
        buf,
        {
            "dataset_joints": names,
            "jnt_missing": missing.T,
            "pos_gt_src": pos.transpose(1, 2, 0),
            "headboxes_src": boxes.transpose(1, 2, 0),
        },
    )
    data = buf.getvalue()
    path.write_bytes(_MAT_HEADER.ljust(116, b"\0") + data[116:])  # savemat stamps the time


def write_synthetic_mpii(
    out: Path, n_train: int, n_val: int, seed: int, image_size: int = 256
) -> dict:
    """Draw the dataset into OUT and return its manifest (also written as OUT/synth.json).

    Every image is drawn from ``np.random.default_rng([seed, split, index])``, so the output is
    reproducible and neither split's size changes the other's content.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annot").mkdir(parents=True, exist_ok=True)
    for split, split_id in _SPLITS:
        count = n_train if split == "train" else n_val
        entries, head_boxes = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_id, i])
            img, person = _render(rng, image_size)
            name = f"{split}_{i:06d}.jpg"
            quality = int(rng.integers(75, 96))
            if not cv2.imwrite(
                str(out / "images" / name), img, [cv2.IMWRITE_JPEG_QUALITY, quality]
            ):
                raise OSError(f"could not write {out / 'images' / name}")
            entry, head_box = _annotate(person, name, image_size)
            entries.append(entry)
            head_boxes.append(head_box)
        (out / "annot" / f"{split}.json").write_text(json.dumps(entries))
        if split == "valid":
            _write_gt_mat(out / "annot" / "gt_valid.mat", entries, head_boxes)
    manifest = {
        "format": "mpii",
        "generator": _GENERATOR,
        "version": _VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "seed": seed,
        "image_size": image_size,
    }
    (out / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
