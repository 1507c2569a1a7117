"""What ``bench-perf`` measures and how often (``PerfSettings``, ``QUICK``), and its error.

>>> QUICK.batches, QUICK.resolutions, QUICK.news
((1, 8), (128,), (30,))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge_cl.errors import EdgeClError
from edge_cl.learner.config import AR1Config

DEFAULT_REPLAYED = AR1Config().replay_per_epoch or 0
"""Replayed patterns per update of the default learner (``AR1Config.replay_per_epoch``)."""

SECTIONS = ("extractor", "learner", "loop")
"""Sections ``--only`` can select; the machine section (matmul peak) always runs."""

Log = Callable[[str], None]


class PerfError(EdgeClError):
    """A benchmark could not run: the device loop did not start or answer, a bad option."""


@dataclass(frozen=True)
class PerfSettings:
    """What ``bench-perf`` measures and how often.

    - ``sections``: among ``extractor``, ``learner``, ``loop``.
    - ``threads``: thread counts for the matmul peak, the extractors and the learner.
    - ``runtimes``, ``precisions``, ``batches``, ``resolutions``: the extractor grid.
    - ``repeats``: timings per figure (the median is kept; the best for the matmul peak);
      ``min_seconds``: a fast call is looped until one timing lasts at least this long.
    - ``peak_size``: the square float32 matmul (n x n @ n x n) of the peak.
    - ``news``, ``replay``, ``replay_per_epoch``, ``epochs``: a learner update learns N new
      latents with ``replay`` patterns in memory, replaying all of them or ``replay_per_epoch``
      (the device loop's memory is filled with as many as its ``replay_mb`` holds, at most
      ``replay``).
    - ``camera``: (width, height) of the camera frames preprocessed and rendered.
    - ``loop_seconds``: the steady window of the device loop; ``teach_frames``: frames a teach
      collects; ``loop_set``: ``KEY=VALUE`` overrides of the device configuration.

    >>> PerfSettings(sections=("learner",), threads=(1,)).peak_size
    1024
    >>> PerfSettings(repeats=0)
    Traceback (most recent call last):
    ...
    edge_cl.perf.settings.PerfError: repeats must be >= 1, got 0
    """

    sections: tuple[str, ...] = SECTIONS
    threads: tuple[int, ...] = (1, 2)
    runtimes: tuple[str, ...] = ("onnx", "litert")
    precisions: tuple[str, ...] = ("fp32", "int8")
    batches: tuple[int, ...] = (1, 8, 32)
    resolutions: tuple[int, ...] = (128, 224)
    repeats: int = 5
    min_seconds: float = 0.2
    peak_size: int = 1024
    news: tuple[int, ...] = (30, 100, 300)
    replay: int = 1500
    replay_per_epoch: int = DEFAULT_REPLAYED
    epochs: int = 4
    camera: tuple[int, int] = (640, 480)
    loop_seconds: float = 10.0
    teach_frames: int = 30
    loop_set: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise PerfError(f"unknown section(s) {unknown}; choose among {', '.join(SECTIONS)}")
        for name in ("threads", "batches", "resolutions", "news"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise PerfError(f"{name} must be positive integers, got {values}")
        for name in ("repeats", "peak_size", "replay", "epochs", "teach_frames"):
            if getattr(self, name) < 1:
                raise PerfError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_seconds < 0 or self.loop_seconds <= 0 or self.replay_per_epoch < 0:
            raise PerfError("min_seconds, replay_per_epoch must be >= 0 and loop_seconds > 0")


QUICK = PerfSettings(
    batches=(1, 8), resolutions=(128,), repeats=2, min_seconds=0.05, news=(30,), loop_seconds=3.0
)
"""``--quick``: fewer batch sizes, one resolution, one N, short timings (about 30 s)."""
