"""What the device loop measures: frames, predictions, accuracy against the frames' truth,
latency, the frame rate of each log interval, and the newest verdict (the ``predict`` command).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_cl.device.classifier import Verdict
from edge_cl.errors import FrameError
from edge_cl.learner.labels import Label
from firmware_bridge.sources import CapturedFrame

log = logging.getLogger("edge_cl.device")

LATENCIES_KEPT = 2000
"""Latest frame latencies the summary's mean and p95 are taken over."""
RECENT_FRAMES = 30
"""Frames :meth:`FrameMetrics.recent_fps` is measured over."""


class FrameMetrics:
    """Counters of the classified frames, updated from the loop's thread and read from any
    (control commands, the log line, the summary). Frames with a truth are scored unless a
    teach was in progress; ``accuracy_known`` counts only truths that are known classes.

    >>> metrics = FrameMetrics()
    >>> metrics.start_interval(0.0)
    >>> image = np.zeros((2, 2, 3), np.uint8)
    >>> for index, truth in enumerate(["cup", "pen", None]):
    ...     frame = CapturedFrame(image, 0.0, index, truth)
    ...     metrics.record(frame, Verdict("cup", 0.9, False), 40.0, 1.0, False, ["cup"])
    >>> metrics.frames, metrics.accuracy(), metrics.latest["frame"], metrics.recent_fps()
    (3, 0.5, 2, None)
    >>> summary = metrics.summary(2.0)
    >>> summary["fps"], summary["accuracy_known"], summary["latency_ms"]
    (1.5, 1.0, {'mean': 40.0, 'p95': 40.0})
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._frames = 0
        self._bad_frames = 0  # unusable frames from the source (empty), dropped
        self._labelled = 0
        self._unknown = 0
        self._empty = 0  # verdicts of the background class: nothing in view
        self._scored = [0, 0]  # frames with a truth (not teaching), correct ones
        self._scored_known = [0, 0]  # the same, only where the truth was a known class
        self._latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)
        self._times: deque[float] = deque(maxlen=RECENT_FRAMES)
        self._interval = {"frames": 0, "latency": 0.0, "start": 0.0}

    @property
    def frames(self) -> int:
        """Frames classified so far."""
        return self._frames

    @property
    def latest(self) -> dict[str, Any] | None:
        """The newest verdict (``verdict``: what the device says, as :meth:`Verdict.text`;
        label, confidence, unknown, empty, latency_ms, frame, truth and its monotonic
        ``time``), or None before the first frame."""
        with self._lock:
            return self._latest

    def recent_fps(self) -> float | None:
        """Frames a second over the latest :data:`RECENT_FRAMES` frames (None before two)."""
        with self._lock:
            if len(self._times) < 2 or self._times[-1] <= self._times[0]:
                return None
            return (len(self._times) - 1) / (self._times[-1] - self._times[0])

    def accuracy(self) -> float | None:
        """Share of the scored frames predicted right (None before any was scored)."""
        with self._lock:
            total, hits = self._scored
        return hits / total if total else None

    def start_interval(self, now: float) -> None:
        """Start the first log interval at ``now`` (``time.monotonic()``)."""
        with self._lock:
            self._interval["start"] = now

    def record(
        self,
        frame: CapturedFrame,
        verdict: Verdict,
        latency_ms: float,
        now: float,
        teaching: bool,
        classes: Sequence[Label],
    ) -> None:
        """Count one classified ``frame`` and keep its ``verdict`` as the newest; ``classes``
        are the learner's, for scoring the known truths."""
        with self._lock:
            self._latest = {
                "verdict": verdict.text(),
                "label": verdict.label,
                "confidence": round(verdict.confidence, 4),
                "unknown": verdict.unknown,
                "empty": verdict.empty,
                "latency_ms": round(latency_ms, 1),
                "frame": frame.index,
                "truth": frame.truth,
                "time": now,
            }
            self._frames += 1
            self._interval["frames"] += 1
            self._interval["latency"] += latency_ms
            self._latencies.append(latency_ms)
            self._times.append(now)
            if verdict.label is not None:
                self._labelled += 1
                self._unknown += verdict.unknown
                self._empty += verdict.empty
                if frame.truth is not None and not teaching:
                    self._score(frame.truth, verdict.label, classes)

    def _score(self, truth: str, label: Label, classes: Sequence[Label]) -> None:
        hit = str(label) == truth
        self._scored[0] += 1
        self._scored[1] += hit
        if any(str(c) == truth for c in classes):
            self._scored_known[0] += 1
            self._scored_known[1] += hit

    def drop(self, frame: CapturedFrame, error: FrameError) -> None:
        """Count an unusable ``frame`` (a camera glitch); warn on the first and every 1000th."""
        self._bad_frames += 1
        if self._bad_frames == 1 or self._bad_frames % 1000 == 0:
            log.warning(
                "dropped unusable frame %d (%d so far): %s", frame.index, self._bad_frames, error
            )

    def log_line(self, now: float, state: str, classes: int) -> None:
        """Log the newest verdict and the interval since the last line (fps, mean latency),
        the accuracy so far, the device ``state`` and the number of ``classes``."""
        with self._lock:
            latest = self._latest
            frames, latency = self._interval["frames"], self._interval["latency"]
            seconds = now - self._interval["start"]
            self._interval.update(frames=0, latency=0.0, start=now)
            scored, known = list(self._scored), list(self._scored_known)
        if latest is None:
            log.info("no frame yet (%.0f s)", seconds)
            return
        accuracy = f"{scored[1] / scored[0]:.3f} of {scored[0]}" if scored[0] else "-"
        if known[0]:
            accuracy += f" ({known[1] / known[0]:.3f} on taught objects)"
        log.info(
            "%s | %.1f fps | %.0f ms | accuracy %s | %s | %d classes",
            latest["verdict"],
            frames / seconds if seconds > 0 else 0.0,
            latency / frames if frames else 0.0,
            accuracy,
            state,
            classes,
        )

    def summary(self, seconds: float) -> dict[str, Any]:
        """The run summary's measures over ``seconds``: frames (and unusable ones dropped),
        fps, predictions, unknown ones, "nothing in view" ones, accuracy (all scored frames,
        and known truths only), latency (mean, p95 of the latest :data:`LATENCIES_KEPT`)."""
        with self._lock:
            latencies = np.array(self._latencies) if self._latencies else np.zeros(1)
            scored, known = list(self._scored), list(self._scored_known)
            frames, labelled, unknown = self._frames, self._labelled, self._unknown
            empty = self._empty
        return {
            "frames": frames,
            "bad_frames": self._bad_frames,
            "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 2) if seconds > 0 else 0.0,
            "predictions": labelled,
            "unknown": unknown,
            "nothing_in_view": empty,
            "accuracy": round(scored[1] / scored[0], 4) if scored[0] else None,
            "scored_frames": scored[0],
            "accuracy_known": round(known[1] / known[0], 4) if known[0] else None,
            "latency_ms": {
                "mean": round(float(latencies.mean()), 2),
                "p95": round(float(np.percentile(latencies, 95)), 2),
            },
        }
