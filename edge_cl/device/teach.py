"""Teaching the device one object at a time: keep the frames' latents while teach is held, then
hand an evenly spaced subset to the learner as one job.

A teach starts from the control socket, the MCU's teach button or the keyboard
(:class:`~edge_cl.device.commands.Commands`); :class:`TeachSession` holds the one in progress
and files a record of every learn job it queued, for ``status`` and the run summary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from edge_cl.device.worker import MAX_QUEUED_UPDATES, JobResult, LearnerWorker, WorkerBusy
from edge_cl.errors import EdgeClError, LabelError
from edge_cl.learner.labels import Label, check_label
from firmware_bridge.protocol import MAX_LABEL_BYTES

log = logging.getLogger("edge_cl.device")


class TeachError(EdgeClError):
    """A teach or stop request does not fit the loop's state (already teaching, not teaching)."""


class TeachBuffer:
    """Latents kept while teach is held: at most ``max_frames``, evenly spread over the whole
    hold (when full, every other one is dropped and later frames are kept half as often).

    >>> buffer = TeachBuffer("cup", max_frames=4)
    >>> for i in range(10):
    ...     buffer.add(np.full((2,), i, np.float32))
    >>> buffer.seen, buffer.take(3)[:, 0].tolist()
    (10, [0.0, 4.0, 8.0])
    """

    def __init__(self, label: Label, max_frames: int) -> None:
        self.label = label
        self.max_frames = max_frames
        self.seen = 0
        self.started = time.monotonic()
        self._kept: list[np.ndarray] = []
        self._stride = 1

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, latent: np.ndarray) -> None:
        """Offer the latent of the next frame."""
        self.seen += 1
        if (self.seen - 1) % self._stride:
            return
        self._kept.append(latent)
        if len(self._kept) > self.max_frames:
            self._kept = self._kept[::2]
            self._stride *= 2

    def take(self, target: int) -> np.ndarray:
        """``target`` of the kept latents (all if fewer), evenly spaced, as one batch."""
        count = min(target, len(self._kept))
        index = np.unique(np.linspace(0, len(self._kept) - 1, count).round().astype(int))
        return np.stack([self._kept[i] for i in index])


def device_label(label: object) -> Label:
    """``label`` checked as the device's classes must be (:func:`check_label`, and at most
    ``MAX_LABEL_BYTES`` of UTF-8 so the MCU can show it); ``LabelError`` otherwise.

    >>> device_label("cup")
    'cup'
    """
    checked = check_label(label)
    try:
        size = len(str(checked).encode())
    except UnicodeEncodeError as e:  # a lone surrogate, e.g. "\ud800" in the JSON request
        raise LabelError(f"label {label!r} is not valid Unicode text: {e.reason}") from e
    if size > MAX_LABEL_BYTES:
        raise LabelError(f"label {label!r} is longer than {MAX_LABEL_BYTES} bytes of UTF-8")
    return checked


class TeachSession:
    """The device's one teach at a time, learned by ``worker``: :meth:`start` a label, offer
    each frame's latent (:meth:`offer`), then :meth:`stop` to queue learning ``target_frames``
    of the (at most ``max_frames``) kept latents, or :meth:`abandon`. :meth:`record` files the
    result of each learn job it queued (:attr:`records`). ``on_change`` is called after a teach
    starts or ends, outside the session's lock (the loop publishes its state then).

    >>> import tempfile
    >>> from pathlib import Path
    >>> from edge_cl.device.classifier import Classifier
    >>> from edge_cl.device.config import DeviceConfig
    >>> state = Path(tempfile.mkdtemp())
    >>> clf = Classifier.open(DeviceConfig(state_dir=state, runtime="onnx", cut="pool"))
    >>> frames = clf.latents([np.full((64, 64, 3), v, np.uint8) for v in range(0, 250, 25)])
    >>> with LearnerWorker(clf, state / "learner.ckpt") as worker:
    ...     session = TeachSession(worker, max_frames=8, target_frames=4)
    ...     started = session.start("cup")
    ...     offered = [session.offer(latent) for latent in frames]
    ...     future, info = session.stop()
    ...     session.record(future.result())
    >>> started, info
    ({'state': 'teaching', 'label': 'cup'}, {'label': 'cup', 'frames': 10, 'kept': 5, 'used': 4})
    >>> session.current, clf.learner.classes_, session.records[0]["ok"], session.offer(frames[0])
    (None, ['cup'], True, False)
    """

    def __init__(
        self,
        worker: LearnerWorker,
        *,
        max_frames: int,
        target_frames: int,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.worker = worker
        self.max_frames = max_frames
        self.target_frames = target_frames
        self.on_change = on_change
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()  # one stop at a time (MCU and socket)
        self._buffer: TeachBuffer | None = None
        self._queued: deque[dict[str, Any]] = deque()  # learn jobs run in order
        self._records: list[dict[str, Any]] = []

    @property
    def current(self) -> TeachBuffer | None:
        """The teach in progress (its label and frames seen so far), or None."""
        with self._lock:
            return self._buffer

    @property
    def records(self) -> list[dict[str, Any]]:
        """One record per learned (or failed) teach so far, oldest first."""
        with self._lock:
            return list(self._records)

    def start(self, label: str) -> dict[str, Any]:
        """Start collecting frames of ``label``. ``LabelError`` for a label the MCU could not
        show, ``WorkerBusy`` if the learner has no room for its job, ``TeachError`` if a teach
        is in progress."""
        checked = device_label(label)
        if not self.worker.has_room():
            raise WorkerBusy(
                f"cannot teach {checked!r} now: the learner has {MAX_QUEUED_UPDATES} updates "
                "waiting; try again when it is idle"
            )
        with self._lock:
            if self._buffer is not None:
                raise TeachError(
                    f"already teaching {self._buffer.label!r}: stop it first (ctl stop)"
                )
            self._buffer = TeachBuffer(checked, self.max_frames)
        log.info("teach %r: collecting frames", checked)
        self.on_change()
        return {"state": "teaching", "label": checked}

    def offer(self, latent: np.ndarray) -> bool:
        """Keep ``latent`` (one frame's) if a teach is in progress; whether one is."""
        with self._lock:
            if self._buffer is None:
                return False
            self._buffer.add(latent)
            return True

    def stop(self) -> tuple[Future[JobResult] | None, dict[str, Any]]:
        """Stop collecting and queue the learning; the job's future (None if no frame came)
        and what was collected. ``TeachError`` if not teaching. The teach ends only once its
        learning is queued: if taking its frames fails, it goes on and a stop can be retried."""
        with self._stop_lock:
            with self._lock:
                buffer = self._buffer
            if buffer is None:
                raise TeachError("not teaching: start with teach LABEL")
            info: dict[str, Any] = {
                "label": buffer.label,
                "frames": buffer.seen,
                "kept": len(buffer),
            }
            future = None
            if len(buffer) == 0:
                log.warning(
                    "teach %r: no frame arrived while teaching, nothing learned", buffer.label
                )
            else:
                latents = buffer.take(self.target_frames)
                info["used"] = len(latents)
                future = self.worker.learn(
                    buffer.label, latents, since=time.monotonic(), reserved=True
                )
                with self._lock:
                    self._queued.append(info)
                log.info(
                    "teach %r: learning %d of %d frames", buffer.label, len(latents), buffer.seen
                )
            with self._lock:
                self._buffer = None
        self.on_change()
        return future, info

    def abandon(self) -> None:
        """Drop a teach in progress without learning from it."""
        with self._lock:
            buffer, self._buffer = self._buffer, None
        if buffer is not None:
            log.warning("teach %r abandoned (%d frames dropped)", buffer.label, buffer.seen)
            self.on_change()

    def record(self, result: JobResult) -> None:
        """File the result of a learn job (other jobs are not teaches): what was collected,
        whether it was learned, and how long it took."""
        if result.job != "learn":
            return
        with self._lock:
            info = self._queued.popleft() if self._queued else {}
            self._records.append(
                {
                    **info,
                    "label": result.label,
                    "ok": result.ok,
                    "error": result.error,
                    "latency_s": round(result.latency_seconds or 0.0, 4),
                    "update_s": round(result.update_seconds, 4),
                }
            )
        if result.ok:
            log.info(
                "learned %r in %.2f s (%.2f s after the label); classes %s",
                result.label,
                result.update_seconds,
                result.latency_seconds or 0.0,
                list(result.classes),
            )
