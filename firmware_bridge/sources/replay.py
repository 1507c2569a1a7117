"""Replayed sources: image folders, CORe50-style filelists and video files.

:class:`ImageFolder`, :class:`FileList` and :class:`VideoFile` replay files as if a camera
delivered them, optionally paced at ``fps`` in real time and looped; ``_Replay`` (shared with
the synthetic scene) holds the frame index, the pacing and the resizing.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from abc import abstractmethod
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_cl.errors import CameraError, FrameError
from edge_cl.images import read_image
from firmware_bridge.sources.base import (
    IMAGE_EXTENSIONS,
    CapturedFrame,
    FrameSource,
    Size,
    _bgr_to_rgb,
    _check_fps,
    _check_size,
    _fit,
)


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
