"""Photographs of objects played like a camera pointed at one of them at a time.

:class:`ImageScene` is what ``edge-cl demo --source`` shows instead of the synthetic scene:
each object's views (COIL-100's turntable shots, one folder of photos per object) are split
into teach views and held-out views, and the scene cycles through one set of the object in view.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from edge_cl.errors import LabelError
from edge_cl.images import read_image
from firmware_bridge.sources.base import CapturedFrame, FrameSource


class ImageScene(FrameSource):
    """Real photographs played like a camera at ``fps`` (``None``: as fast as they are read):
    ``show(label)`` cycles through that object's teach views (even positions),
    ``show(label, held_out=True)`` through the others; nothing in view gives black 128 x 128
    frames without a truth.

    >>> import tempfile
    >>> import cv2
    >>> folder = Path(tempfile.mkdtemp())
    >>> views = [folder / f"cup__{angle}.png" for angle in (0, 5)]
    >>> for value, path in enumerate(views):
    ...     _ = cv2.imwrite(str(path), np.full((24, 32, 3), value, np.uint8))
    >>> with ImageScene({"cup": views}) as scene:
    ...     empty = scene.read()
    ...     scene.show("cup", held_out=True)
    ...     frame = scene.read()
    >>> empty.truth, frame.truth, frame.index, frame.image.shape, int(frame.image.max())
    (None, 'cup', 1, (24, 32, 3), 1)
    """

    name = "photographs"

    def __init__(self, views: dict[str, list[Path]], fps: float | None = None) -> None:
        self.views = {k: (v[0::2], v[1::2] or v[0::2]) for k, v in views.items()}
        self.objects = tuple(views)
        self.fps = fps
        self._lock = threading.Lock()
        self._showing: tuple[str, bool] | None = None
        self._next = 0
        self._t0: float | None = None
        self._blank = np.zeros((128, 128, 3), np.uint8)

    def show(self, label: str | None, held_out: bool = False) -> None:
        """Put ``label`` in view (``None``: nothing); thread-safe."""
        if label is not None and label not in self.views:
            raise LabelError(f"unknown object {label!r}: this scene shows {list(self.objects)}")
        with self._lock:
            self._showing = None if label is None else (label, held_out)

    def read(self) -> CapturedFrame:
        """The next view of the object in view, paced at ``fps``."""
        index = self._next
        self._next += 1
        if self.fps is not None:
            now = time.monotonic()
            self._t0 = now if self._t0 is None else self._t0
            time.sleep(max(0.0, self._t0 + index / self.fps - now))
        with self._lock:
            showing = self._showing
        if showing is None:
            return CapturedFrame(self._blank.copy(), time.monotonic(), index, None)
        label, held_out = showing
        files = self.views[label][1 if held_out else 0]
        image = np.ascontiguousarray(read_image(files[index % len(files)]))
        return CapturedFrame(image, time.monotonic(), index, label)
