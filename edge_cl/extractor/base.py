"""The ``Extractor`` interface every runtime backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from edge_cl.errors import FrameError
from edge_cl.extractor.manifest import Artifact
from edge_cl.preprocess import Preprocessing


class Extractor(ABC):
    """A frozen feature extractor: a preprocessed NHWC batch in, latents out.

    Latents always come out channels-last: ``(N, H/32, W/32, C)`` for the ``latent`` cut and
    ``(N, C)`` for the ``pool`` cut, whatever layout the model file uses.
    """

    runtime: str = ""

    def __init__(self, artifact: Artifact, resolution: int | None, threads: int) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.artifact = artifact
        self.preprocessing: Preprocessing = artifact.preprocessing_at(resolution)
        self.threads = threads

    @property
    def resolution(self) -> int:
        """Input height and width in pixels."""
        return self.preprocessing.resolution

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Latents of a preprocessed batch ``(N, R, R, 3)`` float32 (see :mod:`preprocess`)."""
        r = self.resolution
        if not isinstance(batch, np.ndarray) or batch.ndim != 4 or batch.shape[1:] != (r, r, 3):
            shape = getattr(batch, "shape", None)
            raise FrameError(
                f"expected a preprocessed batch of shape (N, {r}, {r}, 3), got {shape}"
            )
        if batch.shape[0] == 0:
            raise FrameError("empty batch: pass at least one preprocessed image")
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))

    def frames(self, frames: list[np.ndarray], color: str = "RGB") -> np.ndarray:
        """Preprocess raw frames and extract their latents in one call."""
        return self(self.preprocessing.batch(frames, color))

    @abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a validated NHWC float32 batch; return channels-last latents."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.artifact.name}, resolution={self.resolution}, "
            f"threads={self.threads})"
        )
