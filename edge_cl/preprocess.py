"""Camera frame -> model input. The one preprocessing path every caller uses.

A frame of any size up to :data:`MAX_ASPECT` times as long as it is wide (OpenCV BGR or
PIL/numpy RGB, uint8 or float in [0, 255]) becomes what resizing its shorter side to
``target = resolution / crop_fraction`` and centre-cropping ``resolution`` x ``resolution``
gives, normalised to ``(rgb - mean) / std``. How, by size:

- **Larger than the target** (camera frames): the centre square that would be kept is cropped
  first and resized alone, so only the pixels the model sees are resized (a 640x480 frame
  resizes 421x421 pixels, not all 307,200) and memory never grows past the frame. Shrinking
  averages whole blocks of ``k`` x ``k`` pixels (``k`` the integer part of the ratio: area
  interpolation at an integer ratio, OpenCV's fast path), then bilinear interpolation covers the
  rest, a ratio under 1.5; a ratio under 2 uses area interpolation alone. No output pixel is
  read from fewer source pixels than its share (no aliasing).
- **Smaller** (CIFAR-10, tiny-imagenet, COIL-100's 128 px photos): the whole frame is enlarged
  bilinearly, then cropped, so the border of the crop interpolates real neighbours. Cropping
  first would replicate the square's edge instead: measured on tinyimagenet-nc, that cost
  streaming LDA on the latent summary 0.8 points (46.1 -> 45.2). Such a frame is small (at most
  ``target`` x ``MAX_ASPECT * target`` after resizing), so this costs nothing.

Resizing is done in uint8 for uint8 frames. The result is NHWC float32; backends convert to
their own layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge_cl.errors import FrameError

MAX_ASPECT = 32
"""Longest side over shortest that a frame may have; beyond it a frame is refused. No camera
makes one, its centre square says nothing about it, and a small frame is enlarged whole: a
1 x 200,000 strip would become 146 x 29 million pixels (14 GB); at 32 a frame enlarged is at
most 146 x 4,672 (2 MB of uint8)."""

ALGORITHM = "centre-square, box then bilinear; small frames enlarged whole, v3"
"""Names the resampling this module does. Caches of latents include it in their key, so a
change here (which changes every latent a little) never reads latents made the old way."""


@dataclass(frozen=True)
class Preprocessing:
    """How frames become model input (read from the model manifest).

    >>> p = Preprocessing(resolution=128)
    >>> p(np.zeros((480, 640, 3), np.uint8)).shape
    (128, 128, 3)
    """

    resolution: int = 128
    mean: float = 127.0
    std: float = 128.0
    crop_fraction: float = 0.875

    def __call__(self, frame: np.ndarray, color: str = "RGB") -> np.ndarray:
        """Preprocess one frame (H, W, 3) into a (resolution, resolution, 3) float32 array."""
        return preprocess(frame, self.resolution, color, self.mean, self.std, self.crop_fraction)

    def batch(self, frames: Sequence[np.ndarray], color: str = "RGB") -> np.ndarray:
        """Preprocess several frames into one (N, resolution, resolution, 3) float32 batch."""
        if len(frames) == 0:
            raise FrameError("empty batch: pass at least one frame")
        return np.stack([self(f, color) for f in frames])


def check_frame(frame: object) -> np.ndarray:
    """Validate a frame and return it as an (H, W, 3) array; raise ``FrameError`` otherwise."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"a frame must be a numpy array, got {type(frame).__name__}")
    if frame.size == 0:
        raise FrameError(f"empty frame of shape {frame.shape}")
    if frame.ndim == 2:
        raise FrameError(
            f"grey frame of shape {frame.shape}: convert it to 3 channels "
            "(cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB))"
        )
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise FrameError(f"a frame must be (H, W, 3) or (H, W, 4), got shape {frame.shape}")
    if frame.dtype != np.uint8 and not np.issubdtype(frame.dtype, np.floating):
        raise FrameError(f"a frame must be uint8 or float in [0, 255], got dtype {frame.dtype}")
    if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
        raise FrameError("frame holds NaN or infinite values")
    return frame[:, :, :3]


def preprocess(
    frame: np.ndarray,
    resolution: int = 128,
    color: str = "RGB",
    mean: float = 127.0,
    std: float = 128.0,
    crop_fraction: float = 0.875,
) -> np.ndarray:
    """Centre-crop, resize and normalise one frame; ``color`` is ``"RGB"`` or ``"BGR"``.

    >>> x = preprocess(np.full((32, 32, 3), 255, np.uint8), resolution=64)
    >>> x.shape, x.dtype, float(x.max())
    ((64, 64, 3), dtype('float32'), 1.0)
    """
    if color not in ("RGB", "BGR"):
        raise FrameError(f"color must be 'RGB' or 'BGR', got {color!r}")
    if resolution < 1 or not 0 < crop_fraction <= 1:
        raise FrameError(f"bad resolution {resolution} or crop fraction {crop_fraction}")
    img = check_frame(frame)
    h, w = img.shape[:2]
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise FrameError(
            f"a {w}x{h} frame is more than {MAX_ASPECT} times as long as it is wide: no camera "
            "makes one, and its centre square would say nothing about the frame; crop it first"
        )
    target = max(resolution, round(resolution / crop_fraction))
    try:
        if min(h, w) < target:
            square = _centre(_enlarge(_pixels(img), target), resolution)
        else:
            side = round(min(h, w) * resolution / target)
            square = _resize_square(_pixels(_centre(img, side)), resolution)
    except cv2.error as e:  # e.g. out of memory: a bad frame, not a crashed loop
        raise FrameError(f"cannot resize a {w}x{h} frame: {e}") from e
    if color == "BGR":
        square = square[:, :, ::-1]
    return (square.astype(np.float32) - np.float32(mean)) / np.float32(std)


def _centre(img: np.ndarray, side: int) -> np.ndarray:
    """The centred ``side`` x ``side`` square of ``img``, a view (OpenCV reads strided rows, so
    nothing is copied)."""
    h, w = img.shape[:2]
    top, left = (h - side) // 2, (w - side) // 2
    square: np.ndarray = img[top : top + side, left : left + side]
    return square


def _pixels(img: np.ndarray) -> np.ndarray:
    """A uint8 image as it is, a float one clipped to [0, 255] as float32 (a copy): applied to
    the centre square of a large frame and to a small frame whole, never to a large frame."""
    if img.dtype == np.uint8:
        return img
    clipped: np.ndarray = np.clip(img, 0, 255).astype(np.float32)
    return clipped


def _enlarge(img: np.ndarray, short: int) -> np.ndarray:
    """Enlarge a small frame bilinearly so its shorter side is ``short`` pixels."""
    h, w = img.shape[:2]
    scale = short / min(h, w)
    size = (max(short, round(w * scale)), max(short, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_LINEAR)


def _resize_square(square: np.ndarray, size: int) -> np.ndarray:
    """Shrink a square image to ``size`` x ``size`` (see the module docstring for how)."""
    side = square.shape[0]
    k = side // size
    if k >= 2:
        block = side // k
        trim = (side - block * k) // 2
        square = square[trim : trim + block * k, trim : trim + block * k]
        square = cv2.resize(square, (block, block), interpolation=cv2.INTER_AREA)
        if block == size:
            return square
        return cv2.resize(square, (size, size), interpolation=cv2.INTER_LINEAR)
    if side == size:
        return square
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
