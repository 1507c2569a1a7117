"""The interface every frame source implements and what the sources share.

:class:`CapturedFrame` (one RGB frame with its timestamp, index and ground-truth label) and
:class:`FrameSource` (``open``, ``read`` until ``None``, ``close``), the ``Size`` type, the
accepted file extensions and source strings (``SOURCE_FORMS``), and the small helpers the
sources use to check their arguments and convert and resize frames.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import cv2
import numpy as np

from edge_cl.errors import CameraError, FrameError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".mjpeg", ".mjpg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")

SOURCE_FORMS = """\
  synthetic                         a scene rendered on the device (no camera needed)
  v4l2:N or /dev/videoN             a USB or V4L2 camera
  gst:PIPELINE                      a GStreamer pipeline ending in appsink (Jetson CSI camera)
  picamera2 or picamera2:N          a Raspberry Pi camera
  video:PATH or PATH.mp4|.avi|.mkv|.mov|.mjpeg   a video file
  folder:DIR or DIR                 the images under DIR (label: their subfolder)
  filelist:FILE[@ROOT] or FILE.txt  a CORe50-style filelist 'relative/path label'"""
"""The source strings :func:`open_source` accepts, for error messages and ``--help``."""

Size = tuple[int, int]
_S = TypeVar("_S", bound="FrameSource")


@dataclass(frozen=True, eq=False)
class CapturedFrame:
    """One frame: ``image`` (H, W, 3) uint8 RGB, C-contiguous; ``timestamp`` from
    ``time.monotonic()`` at capture; ``index`` 0, 1, 2, ... per source (a gap means frames were
    skipped); ``truth`` the ground-truth label when the source knows it, else ``None``.

    >>> import time
    >>> frame = CapturedFrame(np.zeros((240, 320, 3), np.uint8), time.monotonic(), 0, "cup")
    >>> frame.image.shape, frame.index, frame.truth
    ((240, 320, 3), 0, 'cup')
    """

    image: np.ndarray
    timestamp: float
    index: int
    truth: str | None = None

    def __post_init__(self) -> None:
        image = self.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise FrameError(f"a captured frame must be an (H, W, 3) array, got {image!r:.60}")
        if image.dtype != np.uint8 or not image.flags.c_contiguous:
            raise FrameError(
                f"a captured frame must be C-contiguous uint8, got {image.dtype} "
                f"(contiguous: {image.flags.c_contiguous})"
            )


class FrameSource(ABC):
    """Where frames come from: ``open``, then ``read`` until ``None``, then ``close``.

    ``open`` raises :class:`CameraError` saying what to do; ``read`` returns ``None`` at the end
    of a finite stream and raises :class:`CameraError` if a live device fails; ``close`` may be
    called any number of times. ``with source:`` opens and closes, iterating yields until the
    end of the stream.

    >>> import time
    >>> class Countdown(FrameSource):
    ...     name = "countdown"
    ...     left = 2
    ...     def read(self) -> CapturedFrame | None:
    ...         if self.left == 0:
    ...             return None
    ...         self.left -= 1
    ...         image = np.zeros((2, 2, 3), np.uint8)
    ...         return CapturedFrame(image, time.monotonic(), 1 - self.left)
    >>> with Countdown() as source:
    ...     [frame.index for frame in source]
    [0, 1]
    """

    name: str = "source"

    @property
    def on_demand(self) -> bool:
        """Whether frames are made when asked for (an unpaced replay), rather than arriving at
        their own pace (a camera, a paced replay): :class:`LatestFrame` then reads the next
        frame only once the last one was taken, instead of reading and dropping frames."""
        return False

    def open(self) -> None:  # noqa: B027 (sources without a device have nothing to open)
        """Start delivering frames; raises :class:`CameraError` saying what to do."""

    @abstractmethod
    def read(self) -> CapturedFrame | None:
        """The next frame; ``None`` at the end of a finite stream."""

    def close(self) -> None:  # noqa: B027 (sources without a device have nothing to release)
        """Release the device or files; safe to call twice."""

    def __enter__(self: _S) -> _S:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[CapturedFrame]:
        while (frame := self.read()) is not None:
            yield frame

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _check_size(size: Size | None) -> Size | None:
    if size is None:
        return None
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise CameraError(f"size must be (width, height) in pixels, got {size!r}")
    return (size[0], size[1])


def _check_fps(fps: float | None) -> float | None:
    if fps is None or fps == 0:
        return None
    if not math.isfinite(fps) or fps < 0:
        raise CameraError(
            f"fps must be a positive number, or None/0 for as fast as possible: {fps}"
        )
    return float(fps)


def _fit(image: np.ndarray, size: Size | None) -> np.ndarray:
    """``image`` resized to ``size`` (width, height) if given, as a C-contiguous writable array."""
    if size is not None and (image.shape[1], image.shape[0]) != size:
        resized: np.ndarray = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return resized
    return np.require(image, np.uint8, ["C", "W"])


def _bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or grey) as RGB."""
    if image.ndim == 2 or image.shape[2] == 1:
        code = cv2.COLOR_GRAY2RGB
    elif image.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB
    else:
        code = cv2.COLOR_BGR2RGB
    rgb: np.ndarray = cv2.cvtColor(image, code)
    return rgb
