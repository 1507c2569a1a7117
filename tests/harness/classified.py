"""A device-loop observer that tests wait on, instead of sleeping and hoping frames went by."""

from __future__ import annotations

import threading
from collections.abc import Callable

from firmware_bridge.sources import CapturedFrame


class Classified:
    """Counts the frames a ``DeviceLoop`` classified (pass it as ``observer=``) and keeps the
    last one, so that a test can wait for a condition to hold after some frame.

    The loop calls it on its own thread after each frame, outside its locks, so a condition may
    ask the loop for its ``status()``.

    >>> import numpy as np
    >>> classified = Classified()
    >>> classified(CapturedFrame(np.zeros((2, 2, 3), np.uint8), 0.0, 7, "cup"), None)
    >>> classified.until(lambda: classified.count >= 1)
    >>> classified.beyond(0); classified.seeing("cup")
    >>> classified.count, classified.last.index if classified.last else None
    (1, 7)
    """

    def __init__(self) -> None:
        self.count = 0
        self.last: CapturedFrame | None = None
        self._cond = threading.Condition()

    def __call__(self, frame: CapturedFrame, verdict: object) -> None:
        with self._cond:
            self.count += 1
            self.last = frame
            self._cond.notify_all()

    def until(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Return once ``condition`` holds, checked after each frame; AssertionError if it does
        not within ``timeout`` seconds (a safety net: the loop stopped classifying)."""
        with self._cond:
            done = self._cond.wait_for(condition, timeout)
        assert done, f"not reached after {self.count} classified frames"

    def beyond(self, count: int, timeout: float = 60.0) -> None:
        """Return once more than ``count`` frames were classified."""
        self.until(lambda: self.count > count, timeout)

    def seeing(self, truth: str | None, timeout: float = 60.0) -> None:
        """Return once a frame whose ``truth`` (the object in view) is ``truth`` was classified:
        the frames after it were all taken with that object in view."""
        self.until(lambda: self.last is not None and self.last.truth == truth, timeout)
