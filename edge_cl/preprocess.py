"""Camera frame -> model input. The one preprocessing path every caller uses.

A frame of any size up to :data:`MAX_ASPECT` times as long as it is wide (OpenCV BGR or
PIL/numpy RGB, uint8 or float in [0, 255]) is resized so its
shorter side is ``resolution / crop_fraction``, centre-cropped to ``resolution`` x ``resolution``
and normalised to ``(rgb - mean) / std``. Shrinking uses area interpolation (no aliasing on large
camera frames); enlarging (small images such as CIFAR-10) uses bilinear interpolation.
The result is NHWC float32; backends convert to their own layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from edge_cl.errors import FrameError

MAX_ASPECT = 32
"""Longest side over shortest that a frame may have. Beyond it a frame is refused: its short
side is resized up to the crop size first, so a 1 x 200,000 strip would become 146 x 29 million
pixels (14 GB); at 32 the resized frame is at most 146 x 4,672 (8 MB as float32)."""


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
    """Resize, centre-crop and normalise one frame; ``color`` is ``"RGB"`` or ``"BGR"``.

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
            "makes one, and resizing its short side would make a huge image; crop it first"
        )
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.float32)
    short = max(resolution, round(resolution / crop_fraction))
    scale = short / min(h, w)
    nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    if (nh, nw) != (h, w):
        try:
            img = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)
        except cv2.error as e:  # e.g. out of memory: a bad frame, not a crashed loop
            raise FrameError(f"cannot resize a {w}x{h} frame: {e}") from e
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    crop = img[top : top + resolution, left : left + resolution]
    if color == "BGR":
        crop = crop[:, :, ::-1]
    return (crop.astype(np.float32) - np.float32(mean)) / np.float32(std)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an RGB uint8 array; ``FrameError`` if it is missing or corrupt."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise FrameError(f"cannot read image {os.fspath(path)!r}: {e}") from e
