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

import os
import re
from pathlib import Path

from edge_cl.errors import CameraError
from firmware_bridge.sources.base import (
    IMAGE_EXTENSIONS,
    SOURCE_FORMS,
    VIDEO_EXTENSIONS,
    CapturedFrame,
    FrameSource,
    Size,
)
from firmware_bridge.sources.cameras import (
    GStreamerCamera,
    Picamera2Camera,
    V4L2Camera,
    gstreamer_available,
)
from firmware_bridge.sources.latest import LatestFrame
from firmware_bridge.sources.photographs import ImageScene
from firmware_bridge.sources.replay import FileList, ImageFolder, VideoFile
from firmware_bridge.sources.synthetic import DEFAULT_OBJECTS, SyntheticScene

__all__ = [
    "DEFAULT_OBJECTS",
    "IMAGE_EXTENSIONS",
    "SOURCE_FORMS",
    "VIDEO_EXTENSIONS",
    "CapturedFrame",
    "FileList",
    "FrameSource",
    "GStreamerCamera",
    "ImageFolder",
    "ImageScene",
    "LatestFrame",
    "Picamera2Camera",
    "Size",
    "SyntheticScene",
    "V4L2Camera",
    "VideoFile",
    "gstreamer_available",
    "open_source",
]


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
