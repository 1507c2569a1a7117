"""Live cameras: V4L2 (USB), GStreamer pipelines (Jetson CSI) and the Raspberry Pi camera.

:class:`V4L2Camera` and :class:`GStreamerCamera` read through ``cv2.VideoCapture``
(``_OpenCVCamera``); :class:`Picamera2Camera` through Picamera2, imported only when opened.
Each raises :class:`CameraError` saying what to do when the camera cannot be opened.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import time
from abc import abstractmethod
from typing import Any

import cv2

from edge_cl.errors import CameraError
from firmware_bridge.sources.base import (
    CapturedFrame,
    FrameSource,
    Size,
    _bgr_to_rgb,
    _check_fps,
    _check_size,
    _fit,
)


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
