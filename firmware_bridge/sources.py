"""Camera frame sources behind one small interface, for the device loop and the demo.

A :class:`FrameSource` delivers :class:`CapturedFrame` objects (RGB uint8, a monotonic
timestamp, a per-source index and, when the source knows it, the ground-truth label) until it
returns ``None`` at the end of a finite stream. :func:`open_source` builds one from the string
the user passes on the command line (``SOURCE_FORMS`` lists them): a V4L2 camera, a GStreamer
pipeline (Jetson CSI cameras), a Raspberry Pi camera through Picamera2, a video file, a folder
of images, a CORe50-style filelist, or :class:`SyntheticScene`, a scene rendered here so that
the whole device path runs without a camera.

Replayed sources (files and the synthetic scene) can be paced at ``fps`` in real time, skipping
the frames whose time has passed when the consumer is late, as a camera would. Live cameras
pace themselves; :class:`LatestFrame` reads any source in a background thread, keeps only the
newest frame so that inference never works on stale ones, and reopens an unplugged camera with
exponential back-off.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import threading
import time
import warnings
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import cv2
import numpy as np

from edge_cl.errors import CameraError, FrameError, LabelError
from edge_cl.preprocess import read_image

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".mjpeg", ".mjpg")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")
DEFAULT_OBJECTS = ("red cube", "blue ball", "green cone", "yellow star", "purple ring")

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
_L = TypeVar("_L", bound="LatestFrame")


@dataclass(frozen=True, eq=False)
class CapturedFrame:
    """One frame: ``image`` (H, W, 3) uint8 RGB, C-contiguous; ``timestamp`` from
    ``time.monotonic()`` at capture; ``index`` 0, 1, 2, ... per source (a gap means frames were
    skipped); ``truth`` the ground-truth label when the source knows it, else ``None``.

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


class _Replay(FrameSource):
    """Shared by the file and synthetic sources: frame index, real-time pacing, resizing.

    With ``fps``, frame ``i`` is due at ``t0 + i / fps`` (``t0``: the first read after
    ``open``): ``read`` sleeps until the next frame is due, or, if the consumer is late, skips
    to the newest frame whose time has passed, counting the frames skipped in ``late``.
    """

    def __init__(self, name: str, *, fps: float | None, size: Size | None, loop: bool) -> None:
        self.name = name
        self.fps = _check_fps(fps)
        self.size = _check_size(size)
        self.loop = loop
        self.late = 0
        self._next = 0
        self._t0: float | None = None
        self._is_open = False
        self._ended = False

    @property
    def on_demand(self) -> bool:
        """True without ``fps``: frames are read (rendered, decoded) as fast as they are taken."""
        return self.fps is None

    def open(self) -> None:
        """Start the stream from its first frame (a second ``open`` restarts it)."""
        self.close()
        self._start()
        self._next, self._t0, self.late, self._ended, self._is_open = 0, None, 0, False, True

    def close(self) -> None:
        """Release the files; safe to call twice."""
        if self._is_open:
            self._is_open = False
            self._stop()

    def _start(self) -> None:
        """Open the files (subclasses); raise :class:`CameraError` naming what is missing."""

    def _stop(self) -> None:
        """Release the files (subclasses)."""

    def _due(self) -> int:
        """Index of the frame to deliver now, after sleeping until it is due (see class doc)."""
        if not self._is_open:
            raise CameraError(f"{self.name} is not open: call open() or use it in a `with` block")
        index = self._next
        if self.fps is not None:
            now = time.monotonic()
            if self._t0 is None:
                self._t0 = now
            latest = math.floor((now - self._t0) * self.fps)
            if latest > index:
                index = latest
            else:
                time.sleep(max(0.0, self._t0 + index / self.fps - now))
        return index

    def _deliver(self, image: np.ndarray, index: int, truth: str | None) -> CapturedFrame:
        self._next = index + 1
        return CapturedFrame(_fit(image, self.size), time.monotonic(), index, truth)


class _ImageList(_Replay):
    """Replays a list of image files; unreadable ones are skipped, counted in ``skipped``."""

    def __init__(self, name: str, *, fps: float | None, size: Size | None, loop: bool) -> None:
        super().__init__(name, fps=fps, size=size, loop=loop)
        self.skipped = 0
        self.items: list[tuple[Path, str | None]] = []

    @abstractmethod
    def _list(self) -> list[tuple[Path, str | None]]:
        """The images and their labels, in replay order; :class:`CameraError` if none."""

    def _start(self) -> None:
        self.items = self._list()
        self.skipped = 0

    def read(self) -> CapturedFrame | None:
        """The next readable image (``index`` is its position in the list, counting loops)."""
        count = len(self.items)
        unreadable_in_a_row = 0
        while not self._ended:
            index = self._due()
            if index >= count and not self.loop:
                self.late += count - min(self._next, count)
                self._next, self._ended = count, True
                break
            self.late += index - self._next
            path, truth = self.items[index % count]
            try:
                image = read_image(path)
            except FrameError as exc:
                self._next = index + 1
                self.skipped += 1
                warnings.warn(
                    f"{self.name}: skipped {exc} ({self.skipped} skipped so far)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                unreadable_in_a_row += 1
                self._ended = unreadable_in_a_row >= count
                continue
            return self._deliver(image, index, truth)
        return None


class ImageFolder(_ImageList):
    """Every image (jpg, png, ppm, bmp) under ``folder``, sorted by path.

    An image in a subfolder has the subfolder's name as ``truth`` (``DIR/cup/0001.png`` ->
    ``"cup"``, the usual one-folder-per-class layout); an image directly in ``folder`` has
    ``None``. ``fps`` paces the replay in real time, ``loop`` restarts it at the end.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     os.mkdir(f"{tmp}/cup")
    ...     _ = cv2.imwrite(f"{tmp}/cup/0.png", np.zeros((48, 64, 3), np.uint8))
    ...     with ImageFolder(tmp, size=(32, 24)) as source:
    ...         frames = list(source)
    >>> [(f.index, f.truth, f.image.shape) for f in frames]
    [(0, 'cup', (24, 32, 3))]
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        fps: float | None = None,
        size: Size | None = None,
        loop: bool = False,
    ) -> None:
        self.folder = Path(folder)
        super().__init__(f"folder:{self.folder}", fps=fps, size=size, loop=loop)

    def _list(self) -> list[tuple[Path, str | None]]:
        root = self.folder
        if not root.is_dir():
            raise CameraError(f"image folder {root} does not exist (or is not a folder)")
        paths: list[Path] = []
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            paths.extend(
                Path(folder, name)
                for name in files
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
            )
        if not paths:
            raise CameraError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
        return [(p, p.parent.name if p.parent != root else None) for p in sorted(paths)]


class FileList(_ImageList):
    """The images of a CORe50-style filelist, one ``relative/path label`` a line.

    Paths are relative to ``root`` (default: the filelist's folder); ``truth`` is the label as
    written. ``fps`` paces the replay in real time, ``loop`` restarts it at the end.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = cv2.imwrite(f"{tmp}/a.png", np.zeros((8, 8, 3), np.uint8))
    ...     _ = Path(tmp, "list.txt").write_text("a.png 7\\na.png 8\\n")
    ...     with FileList(f"{tmp}/list.txt") as source:
    ...         [frame.truth for frame in source]
    ['7', '8']
    """

    def __init__(
        self,
        filelist: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] | None = None,
        fps: float | None = None,
        size: Size | None = None,
        loop: bool = False,
    ) -> None:
        self.filelist = Path(filelist)
        self.root = Path(root) if root is not None else self.filelist.parent
        super().__init__(f"filelist:{self.filelist}", fps=fps, size=size, loop=loop)

    def _list(self) -> list[tuple[Path, str | None]]:
        try:
            text = self.filelist.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CameraError(f"cannot read filelist {self.filelist}: {exc}") from exc
        if not self.root.is_dir():
            raise CameraError(f"image root {self.root} of {self.filelist} does not exist")
        items: list[tuple[Path, str | None]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.rsplit(maxsplit=1)
            if len(fields) != 2:
                raise CameraError(
                    f"{self.filelist}:{number}: expected 'relative/path label', got {line!r}"
                )
            items.append((self.root / fields[0].strip(), fields[1]))
        if not items:
            raise CameraError(f"filelist {self.filelist} lists no images")
        if not items[0][0].is_file():
            raise CameraError(
                f"{items[0][0]}, the first image of {self.filelist}, does not exist: are its "
                f"paths relative to {self.root}? Name the image root with filelist:FILE@ROOT"
            )
        return items


class VideoFile(_Replay):
    """The frames of a video file, decoded by OpenCV (FFmpeg); ``truth`` is ``None``.

    ``fps`` paces the replay in real time (frames whose time has passed are grabbed but not
    decoded), ``loop`` restarts the file at the end.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = cv2.VideoWriter(f"{tmp}/v.avi", cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    ...     for _ in range(3):
    ...         _ = out.write(np.zeros((48, 64, 3), np.uint8))
    ...     out.release()
    ...     with VideoFile(f"{tmp}/v.avi") as video:
    ...         [frame.index for frame in video]
    [0, 1, 2]
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float | None = None,
        size: Size | None = None,
        loop: bool = False,
    ) -> None:
        self.path = Path(path)
        self._cap: Any = None
        super().__init__(f"video:{self.path}", fps=fps, size=size, loop=loop)

    def _start(self) -> None:
        if not self.path.is_file():
            raise CameraError(f"video file {self.path} does not exist")
        self._cap = self._capture()

    def _capture(self) -> Any:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise CameraError(
                f"OpenCV {cv2.__version__} cannot decode {self.path}: convert it, e.g. "
                "`ffmpeg -i IN -c:v mjpeg OUT.avi`"
            )
        return cap

    def _stop(self) -> None:
        self._cap.release()
        self._cap = None

    def _grab(self) -> bool:
        """Advance one frame, restarting the file at its end if looping; False at the end."""
        if self._cap.grab():
            return True
        if not self.loop:
            return False
        self._cap.release()
        self._cap = self._capture()
        return bool(self._cap.grab())

    def read(self) -> CapturedFrame | None:
        """The next frame (``index`` counts frames since ``open``, across loops)."""
        if self._ended:
            return None
        index = self._due()
        while self._next < index:
            if not self._grab():
                self._ended = True
                return None
            self._next += 1
            self.late += 1
        if not self._grab():
            self._ended = True
            return None
        ok, bgr = self._cap.retrieve()
        if not ok:
            self._ended = True
            return None
        return self._deliver(_bgr_to_rgb(bgr), index, None)


class _OpenCVCamera(FrameSource):
    """A live camera through ``cv2.VideoCapture``, BGR converted to RGB."""

    def __init__(self, name: str, *, size: Size | None, fps: float | None) -> None:
        self.name = name
        self.size = _check_size(size)
        self.fps = _check_fps(fps)
        self._cap: Any = None
        self._index = 0

    @abstractmethod
    def _capture(self) -> Any:
        """An opened ``cv2.VideoCapture``; :class:`CameraError` saying what to do otherwise."""

    def open(self) -> None:
        """Open the camera, asking it for ``size`` and ``fps`` (frames are resized anyway)."""
        self.close()
        cap = self._capture()
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.size is not None:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if self.fps is not None:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap, self._index = cap, 0

    def read(self) -> CapturedFrame:
        """The next frame; :class:`CameraError` if the camera stopped delivering."""
        if self._cap is None:
            raise CameraError(f"{self.name} is not open: call open() or use it in a `with` block")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise CameraError(f"{self.name} stopped delivering frames (unplugged? powered off?)")
        frame = CapturedFrame(_fit(_bgr_to_rgb(bgr), self.size), time.monotonic(), self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        """Release the camera; safe to call twice."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class V4L2Camera(_OpenCVCamera):
    """A USB or V4L2 camera, ``/dev/video<device>``.

    >>> camera = V4L2Camera(57)
    >>> camera.name
    'v4l2:57'
    >>> camera.open()
    Traceback (most recent call last):
    ...
    edge_cl.errors.CameraError: no camera at /dev/video57: check the cable, ...
    """

    def __init__(
        self, device: int = 0, *, size: Size | None = None, fps: float | None = None
    ) -> None:
        self.device = device
        super().__init__(f"v4l2:{device}", size=size, fps=fps)

    def _capture(self) -> Any:
        path = f"/dev/video{self.device}"
        if not os.path.exists(path):
            raise CameraError(
                f"no camera at {path}: check the cable, `v4l2-ctl --list-devices`, "
                "or use --source synthetic"
            )
        if not os.access(path, os.R_OK | os.W_OK):
            raise CameraError(
                f"no permission to open {path}: add yourself to the video group "
                "(`sudo usermod -aG video $USER`, then log in again)"
            )
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CameraError(
                f"cannot open {path}: busy in another program, or not a capture device "
                "(`v4l2-ctl --list-devices` names the right one); or use --source synthetic"
            )
        return cap


def gstreamer_available() -> bool:
    """Whether this OpenCV was built with GStreamer (``cv2.getBuildInformation()``)."""
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


class GStreamerCamera(_OpenCVCamera):
    """A GStreamer pipeline ending in ``appsink``, e.g. a Jetson CSI camera::

        nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1
        ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink

    It needs an OpenCV built with GStreamer (JetPack's; the opencv-python wheels lack it).

    >>> GStreamerCamera("videotestsrc ! videoconvert ! appsink").name
    'gst:videotestsrc ! videoconvert ! appsink'
    """

    def __init__(
        self, pipeline: str, *, size: Size | None = None, fps: float | None = None
    ) -> None:
        self.pipeline = pipeline
        super().__init__(f"gst:{pipeline}", size=size, fps=fps)

    def _capture(self) -> Any:
        if not gstreamer_available():
            raise CameraError(
                f"this OpenCV ({cv2.__version__}, {cv2.__file__}) was built without GStreamer "
                "(see cv2.getBuildInformation()): on a Jetson use JetPack's OpenCV, i.e. create "
                "the venv with --system-site-packages and `pip uninstall opencv-python-headless` "
                "in it; or use a v4l2:N camera"
            )
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise CameraError(
                f"GStreamer cannot start {self.pipeline!r}: try it with `gst-launch-1.0` "
                "(fakesink in place of appsink); it must end in "
                "`! videoconvert ! video/x-raw,format=BGR ! appsink`"
            )
        return cap


class Picamera2Camera(FrameSource):
    """A Raspberry Pi camera through Picamera2 (libcamera), imported only when opened.

    >>> Picamera2Camera(1).name
    'picamera2:1'
    """

    def __init__(
        self, camera: int = 0, *, size: Size | None = None, fps: float | None = None
    ) -> None:
        self.camera = camera
        self.name = f"picamera2:{camera}"
        self.size = _check_size(size)
        self.fps = _check_fps(fps)
        self._cam: Any = None
        self._index = 0

    def open(self) -> None:
        """Start the camera in RGB at ``size`` (default 640x480) and ``fps``."""
        self.close()
        try:
            picamera2 = importlib.import_module("picamera2")
        except ImportError as exc:
            raise CameraError(
                "picamera2 is not installed: `sudo apt install python3-picamera2`, and create the "
                "virtual environment with --system-site-packages so that it sees it (pip cannot "
                "install libcamera)"
            ) from exc
        cam: Any = None
        try:
            cam = picamera2.Picamera2(self.camera)
            controls = {"FrameRate": self.fps} if self.fps is not None else {}
            main = {"format": "RGB888", "size": self.size or (640, 480)}
            cam.configure(cam.create_video_configuration(main=main, controls=controls))
            cam.start()
        except Exception as exc:  # libcamera reports a missing camera as IndexError, RuntimeError
            if cam is not None:
                with contextlib.suppress(Exception):  # the first error is the one to report
                    cam.close()
            raise CameraError(
                f"cannot start Raspberry Pi camera {self.camera}: {exc}; check the ribbon cable "
                "and `rpicam-hello --list-cameras`, or use --source synthetic"
            ) from exc
        self._cam, self._index = cam, 0

    def read(self) -> CapturedFrame:
        """The next frame; :class:`CameraError` if the camera stopped delivering."""
        if self._cam is None:
            raise CameraError(f"{self.name} is not open: call open() or use it in a `with` block")
        try:
            bgr = self._cam.capture_array("main")  # libcamera's RGB888 is B, G, R in memory
        except Exception as exc:
            raise CameraError(f"{self.name} stopped delivering frames: {exc}") from exc
        frame = CapturedFrame(_fit(_bgr_to_rgb(bgr), self.size), time.monotonic(), self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        """Stop and release the camera; safe to call twice."""
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()


# --- the synthetic scene -------------------------------------------------------------------------

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


# --- building a source from a string -------------------------------------------------------------


def open_source(
    spec: str,
    *,
    fps: float | None = None,
    size: Size | None = None,
    loop: bool = False,
    seed: int = 0,
) -> FrameSource:
    """Build (not open) the source named by ``spec``, one of ``SOURCE_FORMS``.

    ``size`` (width, height) resizes frames; ``fps`` paces replayed and synthetic sources in
    real time (``None`` or 0: as fast as possible) and is asked of live cameras; ``loop``
    restarts files at their end; ``seed`` seeds the synthetic scene. Unknown or malformed
    specs raise :class:`CameraError` listing the accepted forms.

    >>> source = open_source("synthetic", size=(160, 120), seed=3)
    >>> source
    <SyntheticScene synthetic>
    >>> with source:
    ...     source.read().image.shape
    (120, 160, 3)
    >>> open_source("/dev/video2").name, open_source("picamera2").name
    ('v4l2:2', 'picamera2:0')
    """
    if spec == "synthetic":
        return SyntheticScene(size=size or (320, 240), fps=fps, seed=seed)
    camera = re.fullmatch(r"v4l2:(\d+)|/dev/video(\d+)", spec)
    if camera is not None:
        return V4L2Camera(int(camera.group(1) or camera.group(2)), size=size, fps=fps)
    picamera = re.fullmatch(r"picamera2(?::(\d+))?", spec)
    if picamera is not None:
        return Picamera2Camera(int(picamera.group(1) or 0), size=size, fps=fps)
    kind, colon, rest = spec.partition(":")
    if colon and kind in ("gst", "video", "folder", "filelist"):
        if not rest.strip():
            raise CameraError(f"{spec!r} names nothing after '{kind}:'; accepted:\n{SOURCE_FORMS}")
        if kind == "gst":
            return GStreamerCamera(rest, size=size, fps=fps)
        if kind == "video":
            return VideoFile(rest, fps=fps, size=size, loop=loop)
        if kind == "folder":
            return ImageFolder(rest, fps=fps, size=size, loop=loop)
        filelist, at, root = rest.rpartition("@")
        if not at or Path(rest).is_file():
            filelist, root = rest, ""
        return FileList(filelist, root=root or None, fps=fps, size=size, loop=loop)
    path = Path(spec)
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return VideoFile(path, fps=fps, size=size, loop=loop)
    if path.is_dir():
        return ImageFolder(path, fps=fps, size=size, loop=loop)
    if path.suffix.lower() == ".txt":
        return FileList(path, fps=fps, size=size, loop=loop)
    hint = " (no such file or folder)" if os.sep in spec and not path.exists() else ""
    raise CameraError(f"unknown frame source {spec!r}{hint}; accepted:\n{SOURCE_FORMS}")


# --- reading in the background -------------------------------------------------------------------


class LatestFrame:
    """Reads ``source`` in a background thread and keeps only the newest frame.

    Inference takes frames with :meth:`get` at its own pace and never falls behind the camera:
    a frame not taken before the next one arrives is dropped (counted in ``stats``). A source
    whose frames are made on demand (an unpaced replay, ``FrameSource.on_demand``) is read one
    frame ahead of the consumer instead, so no frame is dropped and no core spins rendering
    frames nobody takes. A source
    that raises :class:`CameraError` (camera unplugged) is closed and reopened, waiting
    ``backoff[0]`` seconds, then twice as long after each failure up to ``backoff[1]``, until it
    delivers again or :meth:`stop` is called; with ``reopen=False`` the stream ends instead.
    The thread never dies of a source error: ``last_error`` and ``stats["errors"]`` record it.

    >>> with LatestFrame(SyntheticScene(fps=100)) as latest:
    ...     frame = latest.get(timeout=5.0)
    >>> frame.image.shape, latest.stats["delivered"], latest.stats["reopens"]
    ((240, 320, 3), 1, 0)
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        reopen: bool = True,
        backoff: tuple[float, float] = (0.5, 8.0),
    ) -> None:
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (shortest, longest) seconds, > 0: {backoff}")
        self.source = source
        self.reopen = reopen
        self.backoff = backoff
        self.last_error: str | None = None
        self._stats = {"read": 0, "delivered": 0, "dropped": 0, "reopens": 0, "errors": 0}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._frame: CapturedFrame | None = None
        self._finished = False
        self._delay = backoff[0]
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the source (its :class:`CameraError` propagates) and start reading it."""
        if self._thread is not None:
            raise RuntimeError("a LatestFrame starts once; make a new one to read again")
        self.source.open()
        self._thread = threading.Thread(
            target=self._run, name=f"LatestFrame({self.source.name})", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (promptly, even during a back-off), then close the source."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.source.close()

    def get(self, timeout: float | None = None) -> CapturedFrame | None:
        """The newest frame not yet returned, waiting up to ``timeout`` seconds (``None``:
        forever) for one; ``None`` on timeout, at the end of the stream or after ``stop``."""
        if self._thread is None:
            raise RuntimeError("call start() (or use `with`) before get()")
        with self._cond:
            self._cond.wait_for(
                lambda: self._frame is not None or self._finished or self._stopping.is_set(),
                timeout,
            )
            frame, self._frame = self._frame, None
            if frame is not None:
                self._stats["delivered"] += 1
                self._cond.notify_all()
            return frame

    @property
    def ended(self) -> bool:
        """No frame is pending and none will come: a finite stream ended, or the source failed
        and is not reopened (see ``last_error``)."""
        with self._cond:
            return self._finished and self._frame is None

    @property
    def stats(self) -> dict[str, int]:
        """Counts: frames ``read`` from the source, ``delivered`` by get, ``dropped`` (replaced
        before being taken), successful ``reopens``, source ``errors`` (failed reads, opens)."""
        with self._cond:
            return dict(self._stats)

    def __enter__(self: _L) -> _L:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, exc: BaseException) -> None:
        with self._cond:
            self._stats["errors"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self.source.on_demand:
                    with self._cond:
                        self._cond.wait_for(lambda: self._frame is None or self._stopping.is_set())
                    if self._stopping.is_set():
                        break
                try:
                    frame = self.source.read()
                except CameraError as exc:
                    self._record(exc)
                    if self.reopen and self._recover():
                        continue
                    break
                if frame is None:
                    break
                self._delay = self.backoff[0]
                with self._cond:
                    self._stats["read"] += 1
                    self._stats["dropped"] += self._frame is not None
                    self._frame = frame
                    self._cond.notify_all()
        except Exception as exc:  # a bug in a source ends the stream, it must not kill silently
            self._record(exc)
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def _recover(self) -> bool:
        """Close and reopen the source with back-off; False if stopped meanwhile."""
        try:
            self.source.close()
        except Exception as exc:  # closing a device that vanished may fail too
            self._record(exc)
        while not self._stopping.wait(self._delay):
            self._delay = min(2 * self._delay, self.backoff[1])
            try:
                self.source.open()
            except CameraError as exc:
                self._record(exc)
                continue
            with self._cond:
                self._stats["reopens"] += 1
            return True
        return False
