"""Reading a source in a background thread, keeping only its newest frame.

:class:`LatestFrame` lets inference take frames at its own pace without falling behind the
camera, and reopens a camera that failed (unplugged) with exponential back-off.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TypeVar

from edge_cl.errors import CameraError
from firmware_bridge.sources.base import CapturedFrame, FrameSource

_L = TypeVar("_L", bound="LatestFrame")


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

    >>> from firmware_bridge.sources import SyntheticScene
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
