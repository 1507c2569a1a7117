"""The synthetic scene: frames rendered on the device, so the whole path runs without a camera.

:class:`SyntheticScene` shows one object (or none) over a seeded background, with the jitter,
lighting changes and noise of a real camera; each object's sprite is drawn from the words of
its name (a colour and a shape, ``DEFAULT_OBJECTS`` by default).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable

import cv2
import numpy as np

from edge_cl.errors import CameraError, LabelError
from firmware_bridge.sources.base import CapturedFrame, Size
from firmware_bridge.sources.replay import _Replay

DEFAULT_OBJECTS = ("red cube", "blue ball", "green cone", "yellow star", "purple ring")


_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 75, 215),
    "green": (40, 165, 60),
    "yellow": (240, 205, 35),
    "purple": (135, 55, 175),
    "orange": (245, 135, 25),
    "pink": (240, 125, 175),
    "cyan": (35, 195, 205),
    "brown": (125, 80, 40),
    "white": (235, 235, 230),
    "black": (35, 35, 40),
    "grey": (130, 130, 130),
    "gray": (130, 130, 130),
}
_SHAPE_WORDS = {
    "cube": "cube",
    "box": "cube",
    "ball": "ball",
    "sphere": "ball",
    "cone": "cone",
    "star": "star",
    "ring": "ring",
    "donut": "ring",
    "torus": "ring",
    "cross": "cross",
    "plus": "cross",
    "diamond": "diamond",
}
_Sprite = tuple[np.ndarray, np.ndarray]  # float32 (S, S, 3) shade factors in RGB, uint8 mask


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates relative to the sprite centre, in units of the side."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    return (xx + 0.5) / side - 0.5, (yy + 0.5) / side - 0.5


def _polygon_mask(side: int, points: np.ndarray) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    cv2.fillPoly(mask, [np.round(points * side + side / 2).astype(np.int32)], 255, cv2.LINE_AA)
    return mask


def _disc_mask(r: np.ndarray, outer: float, inner: float, side: int) -> np.ndarray:
    """Anti-aliased annulus ``inner <= r <= outer`` (radii in units of the side)."""
    edge = np.minimum(outer - r, r - inner) * side + 0.5
    return (np.clip(edge, 0.0, 1.0) * 255).astype(np.uint8)


def _cube(side: int) -> _Sprite:
    """An isometric cube: three faces lit differently, with a 3 x 3 grid of dark grooves."""
    angles = np.deg2rad([-90, -30, 30, 90, 150, 210])
    v = 0.42 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    centre = np.zeros(2)
    faces = [((v[5], v[0], v[1], centre), 1.2), ((centre, v[1], v[2], v[3]), 0.55)]
    faces.append(((v[5], centre, v[3], v[4]), 0.85))
    shade = np.zeros((side, side, 3), np.float32)
    mask = np.zeros((side, side), np.uint8)
    groove = max(1, side // 60)
    for corners, light in faces:
        quad = np.array(corners)
        face = _polygon_mask(side, quad)
        shade[face > 0] = light
        mask = np.maximum(mask, face)
        a, b, c, d = quad  # corners in order around the face
        for t in (1 / 3, 2 / 3):  # grooves parallel to both pairs of opposite edges
            for start, end in (
                (a + (b - a) * t, d + (c - d) * t),
                (a + (d - a) * t, b + (c - b) * t),
            ):
                (x0, y0), (x1, y1) = np.round(np.array([start, end]) * side + side / 2).astype(int)
                cv2.line(shade, (int(x0), int(y0)), (int(x1), int(y1)), (0.25, 0.25, 0.25), groove)
    return shade, mask


def _ball(side: int) -> _Sprite:
    """A Lambert-shaded sphere with a specular highlight and lighter bands along meridians."""
    x, y = _grid(side)
    u, w = x / 0.4, y / 0.4
    nz = np.sqrt(np.clip(1 - u * u - w * w, 0.0, 1.0))
    light = np.array([-0.45, -0.55, 0.7], np.float32)
    light /= np.linalg.norm(light)
    diffuse = np.clip(u * light[0] + w * light[1] + nz * light[2], 0.0, 1.0)
    bands = np.cos(5 * np.arctan2(u, nz + 1e-6)) > 0.55
    shade = (0.3 + 0.85 * diffuse) * np.where(bands, 1.35, 1.0)
    specular = np.clip(diffuse, 0.0, 1.0) ** 40 * 1.5
    rgb = np.repeat(shade[:, :, None], 3, axis=2) + specular[:, :, None]
    return rgb.astype(np.float32), _disc_mask(np.hypot(x, y), 0.4, -1.0, side)


def _cone(side: int) -> _Sprite:
    """A traffic cone: a triangle shaded left to right, two white bands, an elliptic base."""
    x, y = _grid(side)
    mask = _polygon_mask(side, np.array([[0.0, -0.42], [0.27, 0.3], [-0.27, 0.3]]))
    base = np.zeros((side, side), np.uint8)
    centre = (side // 2, int(0.8 * side))
    cv2.ellipse(base, centre, (int(0.27 * side), int(0.07 * side)), 0, 0, 360, 255, -1, cv2.LINE_AA)
    shade = 1.2 - 1.3 * np.abs(x + 0.08)
    bands = ((y > -0.08) & (y < 0.0)) | ((y > 0.12) & (y < 0.2))
    rgb = np.repeat(shade[:, :, None], 3, axis=2)
    rgb[bands] = 12.0  # saturates to white for any colour with no channel below 22
    return rgb.astype(np.float32), np.maximum(mask, base)


def _star(side: int) -> _Sprite:
    """A five-pointed star with diagonal two-tone stripes and a dark outline."""
    x, y = _grid(side)
    angles = np.deg2rad(np.arange(10) * 36 - 90)
    radii = np.where(np.arange(10) % 2 == 0, 0.46, 0.19)
    points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    stripes = np.floor((x + y) * 9) % 2 == 0
    rgb = np.repeat(np.where(stripes, 1.1, 0.6)[:, :, None], 3, axis=2).astype(np.float32)
    outline = np.round(points * side + side / 2).astype(np.int32)
    cv2.polylines(rgb, [outline], True, (0.15, 0.15, 0.15), max(2, side // 40), cv2.LINE_AA)
    return rgb, _polygon_mask(side, points)


def _ring(side: int) -> _Sprite:
    """A torus seen from above: tube shading across the ring and a row of light dots on it."""
    x, y = _grid(side)
    r = np.hypot(x, y)
    across = np.clip((r - 0.33) / 0.12, -1.0, 1.0)
    shade = 0.35 + 0.85 * np.sqrt(1 - across * across) - 0.2 * (x + y)
    rgb = np.repeat(shade[:, :, None], 3, axis=2).astype(np.float32)
    for k in range(10):
        angle = 2 * np.pi * k / 10
        centre = (
            int(side / 2 + 0.33 * side * np.cos(angle)),
            int(side / 2 + 0.33 * side * np.sin(angle)),
        )
        cv2.circle(rgb, centre, max(2, side // 30), (3.0, 3.0, 3.0), -1, cv2.LINE_AA)
    return rgb, _disc_mask(r, 0.45, 0.21, side)


def _cross(side: int) -> _Sprite:
    """A plus sign with a checkerboard texture."""
    x, y = _grid(side)
    arm = 0.12
    inside = ((np.abs(x) < arm) & (np.abs(y) < 0.42)) | ((np.abs(y) < arm) & (np.abs(x) < 0.42))
    checks = (np.floor(x * 12) + np.floor(y * 12)) % 2 == 0
    rgb = np.repeat(np.where(checks, 1.15, 0.55)[:, :, None], 3, axis=2).astype(np.float32)
    return rgb, (inside * 255).astype(np.uint8)


def _diamond(side: int) -> _Sprite:
    """A rhombus lit from the left, with concentric lighter outlines."""
    x, y = _grid(side)
    points = np.array([[0.0, -0.44], [0.3, 0.0], [0.0, 0.44], [-0.3, 0.0]])
    level = np.abs(x) / 0.3 + np.abs(y) / 0.44
    rings = np.floor(level * 6) % 2 == 0
    shade = (1.1 - 0.6 * (x + 0.3)) * np.where(rings, 1.0, 0.7)
    return np.repeat(shade[:, :, None], 3, axis=2).astype(np.float32), _polygon_mask(side, points)


_SHAPES: dict[str, Callable[[int], _Sprite]] = {
    "cube": _cube,
    "ball": _ball,
    "cone": _cone,
    "star": _star,
    "ring": _ring,
    "cross": _cross,
    "diamond": _diamond,
}


def _sprite(name: str, side: int) -> np.ndarray:
    """The RGBA (side, side, 4) uint8 picture of an object, from the words of its name.

    A colour word (red, blue, ...) and a shape word (cube, ball, cone, star, ring, cross,
    diamond) are used if present; otherwise both are chosen from a hash of the name, so every
    name always looks the same.
    """
    words = name.lower().split()
    digest = zlib.crc32(name.encode("utf-8"))
    colour = next((_COLOURS[w] for w in words if w in _COLOURS), None)
    if colour is None:
        hsv = np.array([[[digest % 180, 200, 210]]], np.uint8)
        red, green, blue = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
        colour = (int(red), int(green), int(blue))
    shape = next((_SHAPE_WORDS[w] for w in words if w in _SHAPE_WORDS), None)
    if shape is None:
        shape = sorted(_SHAPES)[(digest >> 8) % len(_SHAPES)]
    shade, mask = _SHAPES[shape](side)
    rgb = np.clip(shade * np.array(colour, np.float32), 0, 255).astype(np.uint8)
    return np.dstack([rgb, mask])


class SyntheticScene(_Replay):
    """A scene rendered here (no files, no network): one object in view, or none.

    ``objects`` are the names of the objects that can be shown; their look comes from the
    words of their name (see ``DEFAULT_OBJECTS``: a colour and a shape, each with its own
    texture, distinct for an ImageNet CNN). ``show(label)`` puts an object in view (``None``:
    the empty background). Every frame varies like a real camera: position jitter, rotation,
    scale, illumination and colour cast, sensor noise; frame ``i`` depends only on ``seed``,
    ``i`` and the object shown, so a scene replays identically. ``fps`` paces it in real time.

    >>> with SyntheticScene(seed=1) as scene:
    ...     empty = scene.read()
    ...     scene.show("red cube")
    ...     cube = scene.read()
    >>> empty.truth, cube.truth, cube.index, cube.image.shape, cube.image.dtype
    (None, 'red cube', 1, (240, 320, 3), dtype('uint8'))
    """

    def __init__(
        self,
        size: Size = (320, 240),
        fps: float | None = None,
        seed: int = 0,
        objects: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__("synthetic", fps=fps, size=size, loop=True)
        width, height = size
        self._frame_size = (width, height)
        if min(width, height) < 32:
            raise CameraError(f"a synthetic scene needs at least 32 x 32 pixels, got {size}")
        if not isinstance(seed, int) or seed < 0:
            raise CameraError(f"seed must be a non-negative integer, got {seed!r}")
        self.objects = tuple(objects) if objects is not None else DEFAULT_OBJECTS
        if not self.objects or len(set(self.objects)) != len(self.objects):
            raise CameraError(f"objects must be distinct names, at least one: {self.objects}")
        if not all(isinstance(o, str) and o.strip() for o in self.objects):
            raise CameraError(f"object names must be non-empty strings: {self.objects}")
        self.seed = seed
        self._lock = threading.Lock()
        self._showing: str | None = None
        rng = np.random.default_rng(seed)
        self._shake = max(2, min(width, height) // 40)
        self._background = _background(rng, width + 2 * self._shake, height + 2 * self._shake)
        self._side = int(0.5 * min(width, height))
        self._sprites = {name: _sprite(name, self._side) for name in self.objects}
        noise = np.rint(rng.normal(0.0, 3.5, (height + 32, width + 32, 3)))
        self._noise = noise.astype(np.int16)

    def show(self, label: str | None) -> None:
        """Put ``label`` in view (``None``: nothing); thread-safe, the next frame shows it."""
        if label is not None and label not in self._sprites:
            raise LabelError(f"unknown object {label!r}: this scene shows {list(self.objects)}")
        with self._lock:
            self._showing = label

    @property
    def showing(self) -> str | None:
        """The object in view now, ``None`` for the empty background."""
        with self._lock:
            return self._showing

    def read(self) -> CapturedFrame:
        """Render the next frame (never ``None``: the scene has no end)."""
        index = self._due()
        self.late += index - self._next
        label = self.showing
        return self._deliver(self.render(index, label), index, label)

    def render(self, index: int, label: str | None) -> np.ndarray:
        """Frame ``index`` with ``label`` in view: (H, W, 3) uint8 RGB, a function of the seed."""
        width, height = self._frame_size
        rng = np.random.default_rng([self.seed, index])
        dx, dy = rng.integers(0, 2 * self._shake + 1, 2)
        frame = self._background[dy : dy + height, dx : dx + width].copy()
        if label is not None:
            centre = (
                width / 2 + float(np.clip(rng.normal(0, 0.05), -0.12, 0.12)) * width,
                height / 2 + float(np.clip(rng.normal(0, 0.05), -0.12, 0.12)) * height,
            )
            angle = float(rng.normal(0.0, 12.0))
            scale = float(rng.uniform(0.85, 1.15))
            _paste(frame, self._sprites[label], centre, angle, scale)
        gain = rng.uniform(0.8, 1.2) * rng.uniform(0.96, 1.04, 3)
        light = np.hstack([np.diag(gain), rng.uniform(-12.0, 12.0, (3, 1))])
        frame = cv2.transform(frame, light)
        nx, ny = rng.integers(0, 33, 2)
        noisy: np.ndarray = cv2.add(
            frame, self._noise[ny : ny + height, nx : nx + width], dtype=cv2.CV_8U
        )
        return noisy


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A seeded room: a mottled wall over a wooden table with grain, (H, W, 3) uint8 RGB."""
    wall_tint = rng.uniform(110, 170, 3)
    low = rng.uniform(-1, 1, (5, 7, 4))  # light and shade, then a faint colour mottling
    blotches = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (height, width)), (0, 0), 1.5)[:, :, None]
    image = wall_tint + 25 * blotches[:, :, :1] + 7 * blotches[:, :, 1:] + 12 * grain
    horizon = int(height * rng.uniform(0.6, 0.72))
    wood = np.array([150, 105, 70]) * rng.uniform(0.8, 1.2)
    rows = np.arange(height - horizon, dtype=np.float64)[:, None]
    streaks = np.sin(rows * 0.9 + 6 * np.sin(np.arange(width)[None, :] / 37.0 + rows / 11.0))
    image[horizon:] = wood * (0.85 + 0.1 * streaks[:, :, None]) + 8 * grain[horizon:]
    image[horizon : horizon + 2] *= 0.6  # the table's edge
    return np.clip(image, 0, 255).astype(np.uint8)


def _paste(
    frame: np.ndarray, sprite: np.ndarray, centre: tuple[float, float], angle: float, scale: float
) -> None:
    """Alpha-blend the RGBA ``sprite``, rotated and scaled about ``centre``, into ``frame``."""
    side = sprite.shape[0]
    half = side * scale / 2 + 1
    height, width = frame.shape[:2]
    x0, y0 = max(0, int(centre[0] - half)), max(0, int(centre[1] - half))
    x1, y1 = min(width, int(centre[0] + half) + 1), min(height, int(centre[1] + half) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    m = cv2.getRotationMatrix2D((side / 2, side / 2), angle, scale)
    m[:, 2] += (centre[0] - x0 - side / 2, centre[1] - y0 - side / 2)
    warped = cv2.warpAffine(sprite, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
    alpha = warped[:, :, 3:].astype(np.float32) * np.float32(1 / 255)
    roi = frame[y0:y1, x0:x1]
    blend = roi + (warped[:, :, :3] - roi.astype(np.float32)) * alpha
    roi[...] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
