"""Renderer of the demo data: synthetic face-like identities drawn with OpenCV, and per-image nuisances.

An `Identity` holds what defines a person (face and feature geometry, skin tone, hair, accessories,
moles and freckles); a `View` holds what changes between photos of that person (head pose, expression,
lighting, colour cast, background, clothes, occluders, blur, noise, JPEG quality). Every shape is
defined in the *face frame*, a 112x112 frame in which the person's eyes sit near the ArcFace template
eyes. `render(identity, view, matrix, size)` projects the shapes through the head pose and then through
the 2x3 similarity `matrix` (face frame -> pixels) into an image of any size, so the same sample can be
drawn aligned (the matrix is the 5-point alignment of its own landmarks) or as a loose crop (any
similarity), and `landmarks(identity, view, matrix)` gives the exact 5 points of that drawing.

Skin and hair colours come from small palettes, so many identities share them and differ only in
geometry and texture.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from eval.align import ARCFACE_TEMPLATE, estimate_similarity
from utils.opencv import cv2

SKIN_TONES = np.array([[236, 196, 170], [206, 156, 120], [160, 110, 80], [105, 70, 50]], np.float32)
HAIR_COLOURS = np.array([[30, 24, 22], [80, 52, 34], [170, 130, 80], [120, 120, 125]], np.float32)
EYE_COLOURS = np.array([[70, 45, 30], [60, 100, 150], [80, 110, 70]], np.float32)
FRAME_COLOURS = np.array([[20, 20, 20], [150, 110, 60], [190, 190, 200]], np.float32)

CENTRE_X = 56.0  # vertical axis of the face in the face frame
EYE_Y = 50.0  # eye height in the face frame before alignment
HEAD_CENTRE_Y = 62.0  # centre of the head ellipsoid used for depth
HAIR_STYLES = ("buzz", "short", "long", "fringe", "side_part", "curly")
BEARD_STYLES = ("none", "moustache", "goatee", "full")
_SHIFT = 4  # sub-pixel bits of OpenCV's polygon coordinates
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Identity:
    """Latent parameters of one synthetic person, in face-frame pixels unless stated."""

    skin: int  # index into SKIN_TONES
    hair_colour: int  # index into HAIR_COLOURS
    eye_colour: int  # index into EYE_COLOURS
    face_half_width: float
    crown_height: float  # from the eyes up to the top of the head
    jaw_power: float  # superellipse exponent of the lower face: < 2 pointed chin, > 2 square jaw
    chin_length: float  # from the mouth down to the chin
    eye_distance: float
    eye_width: float
    eye_height: float
    eye_tilt: float  # degrees, outer corners up when positive
    brow_gap: float  # from the eye centre up to the brow
    brow_thickness: float
    brow_arch: float  # height of the brow's middle above its ends
    brow_tilt: float  # degrees, outer ends up when positive
    nose_length: float  # from the eyes down to the nose tip
    nose_width: float
    mouth_gap: float  # from the nose tip down to the mouth
    mouth_width: float
    lip_upper: float
    lip_lower: float
    ear_size: float
    hair_style: int  # index into HAIR_STYLES
    hairline: float  # hairline height above the eyes
    hairline_slant: float  # hairline difference between the two sides
    hair_volume: float  # how far hair stands off the head
    beard: int  # index into BEARD_STYLES
    glasses: int  # -1 none, else index into FRAME_COLOURS
    glasses_round: bool
    moles: np.ndarray  # [M, 3] x, y, radius
    freckles: np.ndarray  # [F, 2] x, y
    strands: np.ndarray  # [S, 2] hair strand offsets that give the hair its texture

    def fingerprint(self) -> str:
        """A stable text of the geometry, to check that two splits share no person."""
        numbers = [self.skin, self.hair_colour, self.face_half_width, self.eye_distance, self.nose_length,
                   self.mouth_width, self.brow_gap, self.jaw_power]
        return ",".join(f"{value:.6f}" for value in numbers)


class Occluder(NamedTuple):
    """Something in front of the face, in face-frame pixels."""

    kind: int  # 0 a hand-like blob, 1 a bar (sunglasses, a scarf edge), 2 a mask over the lower face
    x: float
    y: float
    width: float
    height: float
    angle: float  # degrees
    grey: float  # grey level mixed with the clothes colour


@dataclass(frozen=True)
class View:
    """One photo of a person: pose, expression, scene and camera."""

    yaw: float  # degrees, out-of-plane turn
    pitch: float  # degrees
    smile: float  # 0..1
    mouth_open: float  # 0..1
    blink: float  # 0..1, 1 = closed
    brow_raise: float  # face-frame pixels
    gaze: float  # iris shift, face-frame pixels
    wear_glasses: bool
    light_angle: float  # radians, direction the light comes from
    light_strength: float  # relative brightness change across the face
    brightness: float
    colour_gain: tuple[float, float, float]
    background: tuple[tuple[float, float, float], tuple[float, float, float]]  # two colours
    background_angle: float  # radians, direction of the background stripes
    clothes: tuple[float, float, float]
    occluder: Occluder | None
    blur_sigma: float  # pixels of the 112x112 aligned image
    noise_sigma: float  # grey levels
    jpeg_quality: int
    seed: int  # seed of the pixel noise


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a person. Geometry ranges are wide so that shape, not colour, tells people apart."""
    face_half_width = _uniform(rng, 33, 47)
    num_moles = int(rng.integers(0, 4))
    moles = np.column_stack([rng.uniform(CENTRE_X - 30, CENTRE_X + 30, num_moles),
                             rng.uniform(EYE_Y - 20, EYE_Y + 45, num_moles),
                             rng.uniform(1.0, 2.2, num_moles)])
    num_freckles = int(rng.choice([0, 0, 25, 60]))
    freckles = np.column_stack([CENTRE_X + rng.normal(0, 14, num_freckles),
                                EYE_Y + 16 + rng.normal(0, 6, num_freckles)])
    strands = rng.uniform(-1, 1, size=(int(rng.integers(6, 16)), 2))
    return Identity(
        skin=int(rng.integers(len(SKIN_TONES))),
        hair_colour=int(rng.integers(len(HAIR_COLOURS))),
        eye_colour=int(rng.integers(len(EYE_COLOURS))),
        face_half_width=face_half_width,
        crown_height=_uniform(rng, 34, 50),
        jaw_power=_uniform(rng, 1.4, 3.5),
        chin_length=_uniform(rng, 10, 22),
        eye_distance=_uniform(rng, 28, 44),
        eye_width=_uniform(rng, 7, 13),
        eye_height=_uniform(rng, 2.5, 6.0),
        eye_tilt=_uniform(rng, -14, 14),
        brow_gap=_uniform(rng, 6, 13),
        brow_thickness=_uniform(rng, 1.2, 4.5),
        brow_arch=_uniform(rng, -1.5, 5),
        brow_tilt=_uniform(rng, -15, 15),
        nose_length=_uniform(rng, 13, 28),
        nose_width=_uniform(rng, 8, 18),
        mouth_gap=_uniform(rng, 10, 22),
        mouth_width=_uniform(rng, 20, 40),
        lip_upper=_uniform(rng, 1.2, 4.0),
        lip_lower=_uniform(rng, 1.5, 6.0),
        ear_size=_uniform(rng, 7, 15),
        hair_style=int(rng.integers(len(HAIR_STYLES))),
        hairline=_uniform(rng, 16, 34),
        hairline_slant=_uniform(rng, -10, 10),
        hair_volume=_uniform(rng, 2, 12),
        beard=int(rng.choice(len(BEARD_STYLES), p=[0.6, 0.15, 0.1, 0.15])),
        glasses=int(rng.integers(len(FRAME_COLOURS))) if rng.random() < 0.25 else -1,
        glasses_round=bool(rng.random() < 0.5),
        moles=moles,
        freckles=freckles,
        strands=strands,
    )


def sample_view(rng: np.random.Generator, hard: bool = False) -> View:
    """Draw one photo's nuisances; `hard` widens pose, lighting and occlusion."""
    max_yaw, max_pitch = (45.0, 20.0) if hard else (20.0, 10.0)
    occluded = rng.random() < (0.5 if hard else 0.15)
    occluder = None
    if occluded:
        occluder = Occluder(int(rng.integers(3)), _uniform(rng, 30, 82), _uniform(rng, 35, 100),
                            _uniform(rng, 18, 50), _uniform(rng, 10, 30), _uniform(rng, -40, 40),
                            _uniform(rng, 20, 235))
    light = _uniform(rng, 0.2, 0.8) if hard else _uniform(rng, 0.0, 0.45)
    return View(
        yaw=_uniform(rng, -max_yaw, max_yaw),
        pitch=_uniform(rng, -max_pitch, max_pitch),
        smile=float(np.clip(rng.normal(0.3, 0.35), 0, 1)),
        mouth_open=float(np.clip(rng.normal(0.0, 0.4), 0, 1)),
        blink=1.0 if rng.random() < 0.1 else _uniform(rng, 0, 0.3),
        brow_raise=_uniform(rng, -1.5, 2.5),
        gaze=_uniform(rng, -1.5, 1.5),
        wear_glasses=bool(rng.random() < 0.85),
        light_angle=_uniform(rng, 0, 2 * np.pi),
        light_strength=light,
        brightness=_uniform(rng, 0.55, 1.35) if hard else _uniform(rng, 0.75, 1.2),
        colour_gain=tuple(float(g) for g in rng.uniform(0.82, 1.18, 3)),
        background=(tuple(float(c) for c in rng.uniform(0, 255, 3)),
                    tuple(float(c) for c in rng.uniform(0, 255, 3))),
        background_angle=_uniform(rng, 0, np.pi),
        clothes=tuple(float(c) for c in rng.uniform(0, 255, 3)),
        occluder=occluder,
        blur_sigma=_uniform(rng, 0, 1.6) if hard else _uniform(rng, 0, 1.0),
        noise_sigma=_uniform(rng, 0, 10) if hard else _uniform(rng, 0, 6),
        jpeg_quality=int(rng.integers(30 if hard else 50, 96)),
        seed=int(rng.integers(2**31)),
    )


def similarity_matrix(angle_deg: float, scale: float, tx: float, ty: float,
                      centre: tuple[float, float] = (56.0, 56.0)) -> np.ndarray:
    """2x3 matrix: rotate by `angle_deg` and scale about `centre`, then translate by (tx, ty)."""
    matrix = cv2.getRotationMatrix2D(centre, angle_deg, scale)
    matrix[:, 2] += (tx, ty)
    return matrix


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [P, 2] mapped through a 2x3 matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


class _Projector:
    """Face frame -> pixels: a head ellipsoid turned by yaw and pitch (orthographic), then `matrix`."""

    def __init__(self, identity: Identity, view: View, matrix: np.ndarray):
        self.radius_x = identity.face_half_width + 6
        self.radius_y = identity.crown_height + 30
        self.yaw = np.radians(view.yaw)
        self.pitch = np.radians(view.pitch)
        self.matrix = matrix
        self.scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))

    def __call__(self, points: np.ndarray, lift: float | np.ndarray = 0.0) -> np.ndarray:
        """Points [P, 2] in the face frame, raised `lift` (scalar or [P]) off the head surface -> pixels [P, 2]."""
        dx = points[:, 0] - CENTRE_X
        dy = points[:, 1] - HEAD_CENTRE_Y
        inside = 1 - (dx / self.radius_x) ** 2 - (dy / self.radius_y) ** 2
        depth = 0.8 * self.radius_x * np.sqrt(np.clip(inside, 0, None)) + lift
        x = CENTRE_X + dx * np.cos(self.yaw) + depth * np.sin(self.yaw)
        depth = depth * np.cos(self.yaw) - dx * np.sin(self.yaw)
        y = HEAD_CENTRE_Y + dy * np.cos(self.pitch) - depth * np.sin(self.pitch)
        return apply_matrix(self.matrix, np.column_stack([x, y]))


def _ellipse(cx: float, cy: float, ax: float, ay: float, angle_deg: float = 0.0,
             num_points: int = 28) -> np.ndarray:
    """Points [num_points, 2] on an ellipse with half-axes (ax, ay) rotated by `angle_deg`."""
    t = np.linspace(0, 2 * np.pi, num_points, endpoint=False)
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    x, y = ax * np.cos(t), ay * np.sin(t)
    return np.column_stack([cx + c * x - s * y, cy + s * x + c * y])


def _arc(x0: float, x1: float, y0: float, y1: float, bulge: float, num_points: int = 12) -> np.ndarray:
    """A parabola from (x0, y0) to (x1, y1) whose middle rises `bulge` (up = negative y)."""
    t = np.linspace(0, 1, num_points)
    return np.column_stack([x0 + (x1 - x0) * t, y0 + (y1 - y0) * t - bulge * 4 * t * (1 - t)])


def _stroke(points: np.ndarray, width: float) -> np.ndarray:
    """Closed outline [2P, 2] of a polyline [P, 2] thickened to `width`, thinner at the ends."""
    tangent = np.gradient(points, axis=0)
    normal = np.column_stack([-tangent[:, 1], tangent[:, 0]])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    taper = 0.35 + 0.65 * np.sin(np.linspace(0, np.pi, len(points)))
    offset = normal * (width / 2 * taper)[:, None]
    return np.concatenate([points + offset, (points - offset)[::-1]])


class _Painter:
    """Draws face-frame shapes on an RGB float canvas through a `_Projector`."""

    def __init__(self, canvas: np.ndarray, project: _Projector):
        self.canvas = canvas
        self.project = project

    def fill(self, points: np.ndarray, colour, lift: float = 0.0) -> None:
        pixels = np.round(self.project(points, lift) * _ONE).astype(np.int32)
        cv2.fillPoly(self.canvas, [pixels], tuple(float(c) for c in colour), cv2.LINE_AA, _SHIFT)

    def dots(self, centres: np.ndarray, radius: np.ndarray | float, colour, lift: float = 0.0) -> None:
        """Small filled circles at `centres` [P, 2] (moles, freckles) in one call."""
        if len(centres) == 0:
            return
        sides = 8
        t = np.linspace(0, 2 * np.pi, sides, endpoint=False)
        ring = np.column_stack([np.cos(t), np.sin(t)])  # [8, 2]
        radius = np.broadcast_to(np.asarray(radius, np.float64), (len(centres),))
        points = centres[:, None, :] + radius[:, None, None] * ring  # [P, 8, 2]
        pixels = np.round(self.project(points.reshape(-1, 2), lift) * _ONE).astype(np.int32)  # [P*8, 2]
        polygons = list(pixels.reshape(len(centres), sides, 2))  # P polygons of [8, 2]
        cv2.fillPoly(self.canvas, polygons, tuple(float(c) for c in colour), cv2.LINE_AA, _SHIFT)

    def line(self, points: np.ndarray, colour, width: float, lift: float = 0.0, closed: bool = False) -> None:
        pixels = np.round(self.project(points, lift) * _ONE).astype(np.int32)
        thickness = max(1, round(width * self.project.scale))
        cv2.polylines(self.canvas, [pixels], closed, tuple(float(c) for c in colour), thickness,
                      cv2.LINE_AA, _SHIFT)


def landmarks_face_frame(identity: Identity, view: View) -> np.ndarray:
    """The 5 landmarks [5, 2] of this person with this expression, in the face frame (before pose)."""
    half_eyes = identity.eye_distance / 2
    nose_y = EYE_Y + identity.nose_length
    mouth_y = nose_y + identity.mouth_gap - 3.0 * view.smile + 1.5 * view.mouth_open
    half_mouth = identity.mouth_width / 2 + 2.5 * view.smile
    return np.array([[CENTRE_X - half_eyes, EYE_Y], [CENTRE_X + half_eyes, EYE_Y], [CENTRE_X, nose_y],
                     [CENTRE_X - half_mouth, mouth_y], [CENTRE_X + half_mouth, mouth_y]])


_LANDMARK_LIFT = np.array([4.0, 4.0, 14.0, 3.0, 3.0])  # how far each landmark stands off the head


def landmarks(identity: Identity, view: View, matrix: np.ndarray) -> np.ndarray:
    """The 5 landmarks [5, 2] in pixels of the image drawn with `matrix`."""
    project = _Projector(identity, view, matrix)
    return project(landmarks_face_frame(identity, view), _LANDMARK_LIFT)


def _skin(identity: Identity) -> np.ndarray:
    return SKIN_TONES[identity.skin]


def _face_outline(identity: Identity) -> np.ndarray:
    """Forehead half-ellipse above the cheeks, superellipse jaw below: [P, 2]."""
    cheek_y = EYE_Y + 8
    chin_y = EYE_Y + identity.nose_length + identity.mouth_gap + identity.chin_length
    t = np.linspace(0, np.pi, 24)
    width = identity.face_half_width
    upper = np.column_stack([CENTRE_X + width * np.cos(t), cheek_y - (cheek_y - EYE_Y + identity.crown_height)
                             * np.sin(t)])
    exponent = 2.0 / identity.jaw_power
    t = np.linspace(np.pi, 2 * np.pi, 24)
    lower = np.column_stack([CENTRE_X + width * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** exponent,
                             cheek_y + (chin_y - cheek_y) * np.abs(np.sin(t)) ** exponent])
    return np.concatenate([upper, lower[::-1]])


def _face_frame_coordinates(shape: tuple[int, int], matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-frame (u, v) of every pixel of an image of `shape` (height, width) drawn with `matrix`."""
    height, width = shape
    inverse = cv2.invertAffineTransform(matrix).astype(np.float32)
    xs = np.arange(width, dtype=np.float32)[None, :]  # [1, W]
    ys = np.arange(height, dtype=np.float32)[:, None]  # [H, 1]
    u = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]  # [H, W]
    v = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]  # [H, W]
    return u, v


def _draw_background(canvas: np.ndarray, view: View, matrix: np.ndarray) -> None:
    """Two-colour stripes fixed in the face frame, so aligned and loose drawings agree."""
    u, v = _face_frame_coordinates(canvas.shape[:2], matrix)
    phase = u * np.cos(view.background_angle) + v * np.sin(view.background_angle)
    mix = (0.5 + 0.5 * np.sin(phase / 9.0))[..., None]  # [H, W, 1]
    first, second = (np.array(colour, np.float32) for colour in view.background)
    canvas[:] = second + mix * (first - second)


def _draw_hair_back(paint: _Painter, identity: Identity, colour: np.ndarray) -> None:
    style = HAIR_STYLES[identity.hair_style]
    width = identity.face_half_width + identity.hair_volume
    top = EYE_Y - identity.crown_height - identity.hair_volume
    if style == "long":
        outline = np.concatenate([_arc(CENTRE_X - width, CENTRE_X + width, EYE_Y + 10, EYE_Y + 10,
                                       EYE_Y + 10 - top, 20),
                                  [[CENTRE_X + width + 4, 140.0], [CENTRE_X - width - 4, 140.0]]])
        paint.fill(outline, colour * 0.85, lift=-20)
    elif style == "curly":
        bumps = _ellipse(CENTRE_X, EYE_Y - 4, width + 8, EYE_Y - 4 - top + 6, num_points=40)
        bumps += np.where(np.arange(40)[:, None] % 2 == 0, 2.5, -1.0) * (bumps - (CENTRE_X, EYE_Y - 4)) / 30
        paint.fill(bumps, colour * 0.9, lift=-20)


def _draw_hair_front(paint: _Painter, identity: Identity, colour: np.ndarray) -> None:
    """The cap of hair above the hairline, with strands that give it an identity-specific texture."""
    style = HAIR_STYLES[identity.hair_style]
    width = identity.face_half_width + identity.hair_volume * 0.5
    top = EYE_Y - identity.crown_height - identity.hair_volume * 0.6
    hairline = EYE_Y - identity.hairline
    if style == "fringe":
        hairline = EYE_Y - identity.brow_gap - 6
    left = hairline + max(identity.hairline_slant, 0) if style == "side_part" else hairline
    right = hairline - min(identity.hairline_slant, 0) if style == "side_part" else hairline
    t = np.linspace(np.pi, 0, 26)
    outer = np.column_stack([CENTRE_X + width * np.cos(t), EYE_Y + 2 - (EYE_Y + 2 - top) * np.sin(t)])
    face = identity.face_half_width
    inner = _arc(CENTRE_X + 0.8 * face, CENTRE_X - 0.8 * face, right, left, 1.0 if style == "side_part" else 4.0,
                 9 if style == "fringe" else 7)
    if style == "fringe":
        inner[1:-1:2, 1] += 4.0  # a jagged fringe
    temples = [[CENTRE_X + face, EYE_Y - 2]], [[CENTRE_X - face, EYE_Y - 2]]
    cap = np.concatenate([outer, temples[0], inner, temples[1]])
    tone = colour if style != "buzz" else 0.55 * colour + 0.45 * _skin(identity)
    paint.fill(cap, tone, lift=1)
    if style == "buzz":
        return
    for dx, dy in identity.strands:
        x = CENTRE_X + dx * width * 0.7
        y0 = top + 6 + abs(dy) * 6
        paint.line(_arc(x, x + dy * 8, y0, y0 + 12, 2 * dx), colour * 0.6, 0.6, lift=2)


def _draw_eye(paint: _Painter, identity: Identity, view: View, side: int) -> None:
    """side = -1 for the left eye of the image, +1 for the right."""
    cx = CENTRE_X + side * identity.eye_distance / 2
    tilt = -side * identity.eye_tilt
    open_height = identity.eye_height * (1 - 0.9 * view.blink)
    paint.fill(_ellipse(cx, EYE_Y, identity.eye_width, open_height + 1.2, tilt), _skin(identity) * 0.8,
               lift=4)
    if open_height > 0.8:
        paint.fill(_ellipse(cx, EYE_Y, identity.eye_width, open_height, tilt), (235, 230, 225), lift=4)
        iris = min(open_height, identity.eye_height * 0.8)
        paint.fill(_ellipse(cx + view.gaze, EYE_Y, iris, iris, num_points=16), EYE_COLOURS[identity.eye_colour],
                   lift=5)
        paint.fill(_ellipse(cx + view.gaze, EYE_Y, iris * 0.45, iris * 0.45, num_points=12), (15, 10, 10),
                   lift=5)
    lid = _arc(cx - identity.eye_width, cx + identity.eye_width, EYE_Y, EYE_Y, open_height)
    lid[:, 1] -= side * np.tan(np.radians(identity.eye_tilt)) * (lid[:, 0] - cx)
    paint.line(lid, (40, 30, 30), 0.9, lift=5)
    brow_y = EYE_Y - identity.brow_gap - view.brow_raise
    half = identity.eye_width * 1.2
    rise = np.tan(np.radians(identity.brow_tilt)) * half
    inner_end, outer_end = (brow_y + rise, brow_y - rise)
    x0, x1 = cx - half, cx + half
    y0, y1 = (outer_end, inner_end) if side < 0 else (inner_end, outer_end)
    brow = _arc(x0, x1, y0, y1, identity.brow_arch)
    paint.fill(_stroke(brow, identity.brow_thickness), HAIR_COLOURS[identity.hair_colour] * 0.8, lift=4)


def _draw_nose(paint: _Painter, identity: Identity, skin: np.ndarray) -> None:
    tip_y = EYE_Y + identity.nose_length
    half = identity.nose_width / 2
    shadow = skin * 0.72
    bridge = np.array([[CENTRE_X - 3, EYE_Y + 4], [CENTRE_X - half * 0.6, tip_y - 2],
                       [CENTRE_X - half, tip_y + 1]])
    paint.line(bridge, shadow, 1.0, lift=9)
    paint.fill(_ellipse(CENTRE_X, tip_y, half * 0.55, 3.2), skin * 0.9, lift=14)
    for side in (-1, 1):
        paint.fill(_ellipse(CENTRE_X + side * half * 0.45, tip_y + 2, half * 0.25, 1.3, num_points=12),
                   skin * 0.45, lift=12)


def _draw_mouth(paint: _Painter, identity: Identity, view: View, skin: np.ndarray) -> None:
    corners = landmarks_face_frame(identity, view)[3:]
    (x0, y0), (x1, y1) = corners
    lip_colour = 0.6 * skin + 0.4 * np.array([170.0, 60.0, 70.0])
    opening = 7.0 * view.mouth_open
    middle = (y0 + y1) / 2 + 2.5 * view.smile
    upper_top = _arc(x0, x1, y0, y1, identity.lip_upper)
    lower_bottom = _arc(x1, x0, y1, y0, -(identity.lip_lower + opening + 2.5 * view.smile))
    paint.fill(np.concatenate([upper_top, lower_bottom]), lip_colour, lift=3)
    if opening > 0.8:
        inner = _ellipse((x0 + x1) / 2, middle + opening / 2, (x1 - x0) * 0.4, opening / 2)
        paint.fill(inner, (50, 20, 25), lift=3)
    seam = _arc(x0, x1, y0, y1, -2.5 * view.smile)
    paint.line(seam, lip_colour * 0.55, 0.7, lift=3)


def _draw_beard(paint: _Painter, identity: Identity, view: View, colour: np.ndarray) -> None:
    style = BEARD_STYLES[identity.beard]
    if style == "none":
        return
    (x0, y0), (x1, y1) = landmarks_face_frame(identity, view)[3:]
    nose_y = EYE_Y + identity.nose_length
    if style in ("moustache", "full"):
        moustache = np.concatenate([_arc(x0 - 2, x1 + 2, y0 - 1, y1 - 1, 3, 10),
                                    _arc(x1 - 2, x0 + 2, nose_y + 4, nose_y + 4, 1.5, 10)])
        paint.fill(moustache, colour, lift=4)
    chin_y = EYE_Y + identity.nose_length + identity.mouth_gap + identity.chin_length
    if style == "goatee":
        goatee = _ellipse(CENTRE_X, (y0 + chin_y) / 2 + 3, identity.mouth_width * 0.3, (chin_y - y0) / 2 + 1)
        paint.fill(goatee, colour, lift=2)
    if style == "full":
        outline = _face_outline(identity)
        jaw = outline[outline[:, 1] > y0 - 6]
        below_lip = _arc(x1 + 2, x0 - 2, y1 + identity.lip_lower + 2, y0 + identity.lip_lower + 2, -2, 10)
        paint.fill(np.concatenate([jaw, below_lip]), colour * 0.95, lift=1)


def _draw_glasses(paint: _Painter, identity: Identity) -> None:
    colour = FRAME_COLOURS[identity.glasses]
    radius = identity.eye_width + 3
    for side in (-1, 1):
        cx = CENTRE_X + side * identity.eye_distance / 2
        if identity.glasses_round:
            rim = _ellipse(cx, EYE_Y, radius, radius * 0.85)
        else:
            rim = np.array([[cx - radius, EYE_Y - radius * 0.65], [cx + radius, EYE_Y - radius * 0.65],
                            [cx + radius, EYE_Y + radius * 0.7], [cx - radius, EYE_Y + radius * 0.7]])
        paint.line(rim, colour, 1.3, lift=9, closed=True)
        temple = np.array([[cx + side * radius, EYE_Y - 2], [CENTRE_X + side * identity.face_half_width, EYE_Y]])
        paint.line(temple, colour, 1.2, lift=6)
    bridge = _arc(CENTRE_X - identity.eye_distance / 2 + radius, CENTRE_X + identity.eye_distance / 2 - radius,
                  EYE_Y - 1, EYE_Y - 1, 2, 6)
    paint.line(bridge, colour, 1.2, lift=11)


def _draw_occluder(paint: _Painter, view: View) -> None:
    kind, x, y, width, height, angle, grey = view.occluder
    colour = np.array(view.clothes) * 0.5 + grey * 0.5
    if kind == 0:  # a hand-like blob
        shape = _ellipse(x, y, width / 2, height / 2, angle)
    elif kind == 1:  # a bar (sunglasses, a scarf edge, a microphone)
        c, s = np.cos(np.radians(angle / 3)), np.sin(np.radians(angle / 3))
        corners = np.array([[-width, -height / 3], [width, -height / 3], [width, height / 3], [-width, height / 3]])
        shape = corners @ np.array([[c, s], [-s, c]]) + (x, y)
    else:  # a mask over the lower face
        shape = np.concatenate([_arc(x - width, x + width, y, y, 6), [[x + width * 0.8, y + height],
                                                                      [x - width * 0.8, y + height]]])
    paint.fill(shape, colour, lift=30)


def _light_field(shape: tuple[int, int], view: View, matrix: np.ndarray) -> np.ndarray:
    """Multiplicative lighting [H, W, 1]: brighter towards `light_angle`, defined in the face frame."""
    u, v = _face_frame_coordinates(shape, matrix)
    along = ((u - CENTRE_X) * np.cos(view.light_angle) + (v - HEAD_CENTRE_Y) * np.sin(view.light_angle)) / 56.0
    return (view.brightness * (1 + view.light_strength * np.clip(along, -1.5, 1.5)))[..., None]


def render(identity: Identity, view: View, matrix: np.ndarray, size: tuple[int, int] = (112, 112),
           degrade: bool = True) -> np.ndarray:
    """The photo of `identity` in `view` drawn through `matrix` (face frame -> pixels): uint8 RGB [H, W, 3].

    `size` is (width, height). `degrade=False` leaves out blur and noise (JPEG happens when encoding).
    """
    width, height = size
    canvas = np.empty((height, width, 3), np.float32)
    _draw_background(canvas, view, matrix)
    paint = _Painter(canvas, _Projector(identity, view, matrix))
    skin = _skin(identity)
    hair = HAIR_COLOURS[identity.hair_colour]
    _draw_hair_back(paint, identity, hair)
    chin_y = EYE_Y + identity.nose_length + identity.mouth_gap + identity.chin_length
    paint.fill(np.array([[CENTRE_X - 17, chin_y - 20], [CENTRE_X + 17, chin_y - 20], [CENTRE_X + 19, chin_y + 12],
                         [CENTRE_X - 19, chin_y + 12]]), skin * 0.8, lift=-10)
    paint.fill(np.array([[CENTRE_X - 60, chin_y + 8], [CENTRE_X + 60, chin_y + 8], [CENTRE_X + 75, 170],
                         [CENTRE_X - 75, 170]]), view.clothes, lift=-10)
    for side in (-1, 1):
        ear_x = CENTRE_X + side * (identity.face_half_width - 1)
        paint.fill(_ellipse(ear_x, EYE_Y + 10, identity.ear_size * 0.45, identity.ear_size), skin * 0.88,
                   lift=-4)
    paint.fill(_face_outline(identity), skin)
    paint.dots(identity.moles[:, :2], identity.moles[:, 2], skin * 0.4, lift=3)
    paint.dots(identity.freckles, 0.7, skin * 0.7, lift=3)
    _draw_hair_front(paint, identity, hair)
    for side in (-1, 1):
        _draw_eye(paint, identity, view, side)
    _draw_nose(paint, identity, skin)
    _draw_mouth(paint, identity, view, skin)
    _draw_beard(paint, identity, view, hair)
    if identity.glasses >= 0 and view.wear_glasses:
        _draw_glasses(paint, identity)
    if view.occluder is not None:
        _draw_occluder(paint, view)
    canvas *= _light_field((height, width), view, matrix)
    canvas *= np.array(view.colour_gain, np.float32)
    if degrade:
        scale = paint.project.scale
        if view.blur_sigma > 0.2:
            canvas = cv2.GaussianBlur(canvas, (0, 0), view.blur_sigma * scale)
        noise = np.random.default_rng(view.seed).normal(0, view.noise_sigma, canvas.shape).astype(np.float32)
        canvas += noise
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 image (OpenCV encodes BGR)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return data.tobytes()


# ---- framing: aligned crops and loose crops ----

def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix of `inner` followed by `outer`."""
    return outer[:, :2] @ inner + np.concatenate([np.zeros((2, 2)), outer[:, 2:]], axis=1)


def alignment_matrix(identity: Identity, view: View) -> np.ndarray:
    """Face frame -> 112x112 aligned crop: the 5-point similarity of this photo's own landmarks onto the
    ArcFace template, as a landmark detector plus alignment would give it."""
    posed = landmarks(identity, view, np.eye(2, 3))
    return estimate_similarity(posed, ARCFACE_TEMPLATE)


def sample_jitter(rng: np.random.Generator, hard: bool = False) -> np.ndarray:
    """A small similarity in the aligned crop, standing for landmark-detector error."""
    spread = 1.6 if hard else 1.0
    return similarity_matrix(_uniform(rng, -6, 6) * spread, 1 + _uniform(rng, -0.06, 0.06) * spread,
                             *(rng.uniform(-3, 3, 2) * spread))


def sample_aligned(identity: Identity, rng: np.random.Generator, hard: bool = False) -> tuple[np.ndarray, View]:
    """A new photo of `identity` as a 112x112 aligned crop: (uint8 RGB [112, 112, 3], its view)."""
    view = sample_view(rng, hard)
    matrix = compose(sample_jitter(rng, hard), alignment_matrix(identity, view))
    return render(identity, view, matrix), view


def vary_view(view: View, rng: np.random.Generator) -> View:
    """The next frame of a video: the same scene, the head and face moved a little."""
    return replace(
        view,
        yaw=view.yaw + _uniform(rng, -6, 6),
        pitch=view.pitch + _uniform(rng, -3, 3),
        smile=float(np.clip(view.smile + rng.normal(0, 0.15), 0, 1)),
        mouth_open=float(np.clip(view.mouth_open + rng.normal(0, 0.15), 0, 1)),
        blink=1.0 if rng.random() < 0.1 else _uniform(rng, 0, 0.3),
        gaze=_uniform(rng, -1.5, 1.5),
        seed=int(rng.integers(2**31)))


def sample_placement(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Aligned crop -> loose crop: (2x3 similarity, (width, height)) with the face at a random position,
    scale and in-plane rotation, wholly inside a canvas of 150 to 250 pixels a side."""
    width, height = (int(v) for v in rng.integers(150, 251, 2))
    scale = _uniform(rng, 0.9, 1.6)
    angle = _uniform(rng, -30, 30)
    face_radius = 62 * scale  # the aligned crop's face fits in this circle around its centre
    centre = [_uniform(rng, min(face_radius, side / 2), max(side - face_radius, side / 2))
              for side in (width, height)]
    rotation = cv2.getRotationMatrix2D((56.0, 64.0), angle, scale)
    rotation[:, 2] += (centre[0] - 56.0, centre[1] - 64.0)
    return rotation, (width, height)


@dataclass(frozen=True)
class LooseFace:
    """One IJB-style image: a loose crop, its 5 detected landmarks and the detector's faceness score."""

    image: np.ndarray  # uint8 RGB [H, W, 3]
    landmarks: np.ndarray  # [5, 2] pixels, with small detector noise
    faceness: float
    view: View
    matrix: np.ndarray  # face frame -> loose crop pixels


def faceness_score(view: View, rng: np.random.Generator) -> float:
    """A detector-like confidence in [0.6, 1.0]: lower for turned, occluded, dark or blurred faces."""
    score = (1.0 - 0.25 * abs(view.yaw) / 45 - 0.12 * (view.occluder is not None)
             - 0.08 * view.blur_sigma - 0.1 * max(0.0, 0.8 - view.brightness) + rng.normal(0, 0.03))
    return float(np.clip(score, 0.6, 1.0))


def render_loose(identity: Identity, view: View, rng: np.random.Generator) -> LooseFace:
    """`view` of `identity` placed in a loose crop, with noisy landmarks and a faceness score."""
    placement, size = sample_placement(rng)
    matrix = compose(placement, alignment_matrix(identity, view))
    image = render(identity, view, matrix, size)
    scale = float(np.sqrt(abs(np.linalg.det(placement[:, :2]))))
    points = landmarks(identity, view, matrix) + rng.normal(0, 0.5 * scale, (5, 2))
    return LooseFace(image, points, faceness_score(view, rng), view, matrix)
