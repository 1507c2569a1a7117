"""Image transforms behind the hard scenario variants: segmentation, compositing, conditions.

COIL-100 is too easy for a continual-learning study (cumulative and streaming LDA reach 100%):
every view shows one object, centred, on the same black background, under the same light. These
functions give each acquisition *session* its own background and optics, as between CORe50
sessions: the object is cut out of its dark background (:func:`object_mask`), placed on a
texture or a real photograph (:func:`composite`), then lit and imaged under the session's
:class:`Conditions` (gain, gamma, colour cast, blur, sensor noise).

Every function is pure: arrays in, new arrays out, randomness only from the ``rng`` passed in,
so a scenario renders identically from its seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge_cl.errors import DatasetError, FrameError

RGB = tuple[float, float, float]


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3:
        raise FrameError(f"expected an (H, W, 3) image, got shape {image.shape}")


def object_mask(
    image: np.ndarray, margin: float = 18.0, min_area: float = 0.002, close: int = 7
) -> np.ndarray:
    """Boolean (H, W) mask of the object in a COIL-style photo on a dark, uniform background.

    The background level is the median of the image border; pixels brighter than it by
    ``margin`` (in any channel) are object. A morphological closing joins the object's parts,
    holes (dark labels, shadows inside the silhouette) are filled, and components smaller than
    ``min_area`` of the image (sensor specks) are dropped.

    >>> img = np.full((64, 64, 3), 25, np.uint8)
    >>> img[16:48, 16:48] = 200
    >>> img[28:36, 28:36] = 20  # a dark spot inside the object
    >>> m = object_mask(img)
    >>> int(m.sum()), bool(m[32, 32]), bool(m[0, 0])
    (1024, True, False)
    """
    _check_rgb(image)
    h, w = image.shape[:2]
    bright = image.max(axis=2).astype(np.float32)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    raw = (bright > float(np.median(border)) + margin).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close))
    closed = cv2.morphologyEx(raw, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    keep = np.zeros(count, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area * h * w
    solid = keep[labels].astype(np.uint8)
    padded = np.pad(solid, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return np.asarray((solid == 1) | holes)


def soft_alpha(mask: np.ndarray, feather: float = 0.8) -> np.ndarray:
    """Float32 alpha in [0, 1] from a boolean mask, edges feathered by a Gaussian of ``feather`` px.

    Interior pixels stay exactly 1 and far background exactly 0, so :func:`composite` keeps the
    object's own pixels untouched.

    >>> a = soft_alpha(np.pad(np.ones((8, 8), bool), 8))
    >>> float(a[12, 12]), float(a[0, 0]), 0 < float(a[8, 8]) < 1
    (1.0, 0.0, True)
    """
    alpha = mask.astype(np.float32)
    if feather > 0:
        alpha = np.asarray(cv2.GaussianBlur(alpha, (0, 0), feather), np.float32)
        alpha[alpha > 0.999] = 1.0
        alpha[alpha < 0.001] = 0.0
    return alpha


def place(
    image: np.ndarray, alpha: np.ndarray, scale: float, shift: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Scale the object about the image centre and shift it by ``(dx, dy)`` pixels.

    >>> img, a = place(np.ones((32, 32, 3), np.uint8), np.ones((32, 32), np.float32), 0.5, (4, 0))
    >>> float(a.sum()), float(a[16, 20])
    (256.0, 1.0)
    """
    h, w = alpha.shape
    matrix = np.array(
        [[scale, 0, (1 - scale) * w / 2 + shift[0]], [0, scale, (1 - scale) * h / 2 + shift[1]]],
        np.float32,
    )
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    moved = cv2.warpAffine(image, matrix, (w, h), flags=interp, borderValue=(0, 0, 0))
    moved_alpha = cv2.warpAffine(alpha, matrix, (w, h), flags=interp, borderValue=0)
    return moved, np.clip(moved_alpha, 0.0, 1.0)


def composite(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``alpha * foreground + (1 - alpha) * background`` as float32 in [0, 255].

    >>> fg, bg = np.full((2, 2, 3), 200, np.uint8), np.zeros((2, 2, 3), np.uint8)
    >>> composite(fg, np.array([[1, 0], [0.5, 0]], np.float32), bg)[:, :, 0].tolist()
    [[200.0, 0.0], [100.0, 0.0]]
    """
    _check_rgb(foreground)
    _check_rgb(background)
    if foreground.shape != background.shape or alpha.shape != foreground.shape[:2]:
        raise FrameError(
            f"foreground {foreground.shape}, alpha {alpha.shape} and background "
            f"{background.shape} must have the same height and width"
        )
    a = alpha[:, :, None]
    return np.asarray(
        a * foreground.astype(np.float32) + (1 - a) * background.astype(np.float32), np.float32
    )


def texture(
    shape: tuple[int, int], colour: RGB, amplitude: float, scale: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random background (cloth, wall, table): ``colour`` plus low-frequency noise.

    ``amplitude`` is the noise's standard deviation in grey levels, ``scale`` its grain in pixels.

    >>> t = texture((64, 64), (120, 80, 40), 20.0, 8.0, np.random.default_rng(0))
    >>> t.shape, t.dtype, abs(float(t[:, :, 0].mean()) - 120) < 15, float(t.std()) > 5
    ((64, 64, 3), dtype('uint8'), True, True)
    """
    h, w = shape
    small = rng.standard_normal((max(2, round(h / scale)), max(2, round(w / scale)), 3))
    noise = np.asarray(
        cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC), np.float32
    )
    noise *= np.float32(amplitude / max(float(noise.std()), 1e-6))
    tex = np.asarray(colour, np.float32) + noise
    return np.asarray(np.clip(tex, 0, 255).astype(np.uint8))


def random_crop(
    photo: np.ndarray, size: int, rng: np.random.Generator, min_fraction: float = 0.4
) -> np.ndarray:
    """A random square crop of ``photo`` (side ``min_fraction`` to 1 of its shorter side), resized.

    >>> random_crop(np.zeros((256, 340, 3), np.uint8), 128, np.random.default_rng(0)).shape
    (128, 128, 3)
    """
    _check_rgb(photo)
    h, w = photo.shape[:2]
    side = round(min(h, w) * rng.uniform(min_fraction, 1.0))
    side = max(1, min(side, h, w))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = np.ascontiguousarray(photo[top : top + side, left : left + side])
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(crop, (size, size), interpolation=interp))


@dataclass(frozen=True)
class Conditions:
    """How one session lights and images the scene; the defaults change nothing.

    ``gain`` scales the light, ``gamma`` bends the tone curve (> 1 darkens mid-tones), ``cast``
    multiplies R, G, B (white balance), ``blur`` is a Gaussian sigma in pixels (focus, motion),
    ``noise`` the standard deviation of Gaussian sensor noise in grey levels.

    >>> c = Conditions(gain=1.5)
    >>> float(c.apply(np.full((4, 4, 3), 100, np.uint8), np.random.default_rng(0)).mean())
    150.0
    >>> Conditions.random(np.random.default_rng(0)).gain > 0
    True
    """

    gain: float = 1.0
    gamma: float = 1.0
    cast: RGB = (1.0, 1.0, 1.0)
    blur: float = 0.0
    noise: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator, strength: float = 1.0) -> Conditions:
        """Random session conditions: ``strength`` 0 is the identity, 1 a clearly new session."""
        s = strength
        return cls(
            gain=float(np.exp(rng.uniform(-0.45, 0.35) * s)),
            gamma=float(np.exp(rng.uniform(-0.35, 0.35) * s)),
            cast=(
                float(np.exp(rng.uniform(-0.2, 0.2) * s)),
                1.0,
                float(np.exp(rng.uniform(-0.2, 0.2) * s)),
            ),
            blur=float(rng.uniform(0.0, 1.4) * s),
            noise=float(rng.uniform(2.0, 9.0) * s),
        )

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The image as seen under these conditions (uint8); ``image`` may be uint8 or float."""
        _check_rgb(image)
        x = image.astype(np.float32) * np.float32(1 / 255)
        x *= np.asarray(self.cast, np.float32) * np.float32(self.gain)
        np.clip(x, 0.0, 1.0, out=x)
        if self.gamma != 1.0:
            np.power(x, np.float32(self.gamma), out=x)
        x *= np.float32(255)
        if self.blur > 0:
            x = np.asarray(cv2.GaussianBlur(x, (0, 0), self.blur), np.float32)
        if self.noise > 0:
            x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(self.noise)
        return np.asarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


@dataclass
class SessionRenderer:
    """Renders a dark-background object photo as seen in one of several acquisition sessions.

    Session ``s`` has its own :class:`Conditions` and its own background images (textures or
    real photographs): each rendered view takes a random crop of one of them, as a hand-held
    camera sees a slightly different part of the same room. ``scale`` and ``shift`` (a fraction
    of the free margin) move the object in the frame.

    >>> rng = np.random.default_rng(0)
    >>> bg = texture((96, 96), (0, 90, 0), 5, 8, rng)
    >>> r = SessionRenderer([Conditions(gain=0.5)], [[bg]], jitter=0.0)
    >>> img = np.full((64, 64, 3), 25, np.uint8)
    >>> img[16:48, 16:48] = 250
    >>> out = r.render(img, 0, np.random.default_rng(1))
    >>> out.shape, int(out[32, 32, 0]), int(out[2, 2, 1]) > 20
    ((64, 64, 3), 125, True)
    """

    conditions: list[Conditions]
    backgrounds: list[list[np.ndarray]]
    scale: tuple[float, float] = (1.0, 1.0)
    shift: float = 0.0
    crop_fraction: float = 0.6
    jitter: float = 0.05
    feather: float = 0.8
    erode: int = 1

    def __post_init__(self) -> None:
        if len(self.conditions) != len(self.backgrounds) or not self.conditions:
            raise ValueError("give one Conditions and one list of backgrounds per session")
        if any(not bgs for bgs in self.backgrounds):
            raise ValueError("every session needs at least one background image")

    def render(self, image: np.ndarray, session: int, rng: np.random.Generator) -> np.ndarray:
        """``image`` (object on a dark background) re-shot in ``session``; uint8 RGB, same size."""
        _check_rgb(image)
        h, w = image.shape[:2]
        mask = object_mask(image)
        if self.erode:  # drop the dark fringe the original background leaves around the object
            mask = cv2.erode(
                mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=self.erode
            )
        alpha = soft_alpha(mask.astype(bool), self.feather)
        scale = float(rng.uniform(*self.scale))
        free = (1 - scale) / 2 * self.shift
        dx, dy = (float(v) for v in rng.uniform(-free, free, 2) * (w, h))
        if scale != 1.0 or dx or dy:
            image, alpha = place(image, alpha, scale, (dx, dy))
        options = self.backgrounds[session]
        photo = options[int(rng.integers(len(options)))]
        background = random_crop(photo, max(h, w), rng, self.crop_fraction)[:h, :w]
        scene = composite(image, alpha, background)
        base = self.conditions[session]
        gain = base.gain * float(np.exp(rng.uniform(-self.jitter, self.jitter)))
        cond = Conditions(gain, base.gamma, base.cast, base.blur, base.noise)
        return cond.apply(scene, rng)


def session_backgrounds(
    sessions: int, rng: np.random.Generator, size: int = 192
) -> list[list[np.ndarray]]:
    """One random textured background (colour, grain, contrast) per session.

    >>> [len(b) for b in session_backgrounds(3, np.random.default_rng(0))]
    [1, 1, 1]
    """
    result = []
    for _ in range(sessions):
        colour = tuple(float(c) for c in rng.uniform(20, 230, 3))
        amplitude, grain = float(rng.uniform(5, 35)), float(rng.uniform(3, 24))
        result.append(
            [texture((size, size), (colour[0], colour[1], colour[2]), amplitude, grain, rng)]
        )
    return result


def pick_photos(
    photos: Sequence[np.ndarray], sessions: int, per_session: int
) -> list[list[np.ndarray]]:
    """Split ``photos`` into ``sessions`` disjoint groups of ``per_session`` (in the given order).

    >>> [len(g) for g in pick_photos([np.zeros((4, 4, 3), np.uint8)] * 7, 3, 2)]
    [2, 2, 2]
    """
    if len(photos) < sessions * per_session:
        raise DatasetError(f"need {sessions * per_session} photos, got {len(photos)}")
    return [list(photos[s * per_session : (s + 1) * per_session]) for s in range(sessions)]
