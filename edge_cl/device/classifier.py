"""Frame -> preprocess -> frozen extractor -> latent -> AR1* learner -> verdict, on the device.

The learner is held behind a lock and only ever replaced whole (:meth:`Classifier.swap`), never
changed in place, so a prediction always sees one complete model while
:class:`~edge_cl.device.worker.LearnerWorker` trains a copy in the background.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edge_cl.backends import Extractor, open_extractor
from edge_cl.device.config import DeviceConfig
from edge_cl.errors import CheckpointError
from edge_cl.imagenet import head_arrays
from edge_cl.learner.ar1 import AR1Star
from edge_cl.learner.checkpoint import remove_leftovers
from edge_cl.learner.labels import Label
from edge_cl.manifest import Manifest

log = logging.getLogger("edge_cl.device")


@dataclass(frozen=True)
class Verdict:
    """One frame's answer: ``label`` (None before anything is learned), its probability, and
    whether it fell below the unknown threshold."""

    label: Label | None
    confidence: float
    unknown: bool


def new_learner(config: DeviceConfig, extractor_sha256: str, manifest: Manifest) -> AR1Star:
    """A fresh AR1* learner above the configured cut, starting from the pretrained head.

    With ``config.replay_grid``, if the manifest's artifact of ``extractor_sha256`` outputs
    values on a uint8 grid (the int8 models), the replay memory stores those codes alone
    (``AR1Config.replay_grid``).
    """
    head = head_arrays(manifest.head()) if config.cut == "latent" else None
    artifact = next((a for a in manifest.artifacts if a.sha256 == extractor_sha256), None)
    grid = artifact.output_grid if artifact is not None and config.replay_grid else None
    return AR1Star(
        head,
        extractor_sha256,
        depth=config.cut,
        replay_grid=grid,
        replay_mb=config.replay_mb,
        replay_per_epoch=config.replay_per_epoch,
        epochs=config.epochs,
    )


def resume_learner(
    config: DeviceConfig, extractor_sha256: str, manifest: Manifest
) -> tuple[AR1Star, str]:
    """The learner in ``config.checkpoint``, or a fresh one; and a sentence saying which.

    An unusable checkpoint (corrupt, truncated, made with another extractor) is moved aside to
    ``*.corrupt`` (``*.corrupt.1``, ... if that exists: an earlier one is never overwritten) and
    a fresh learner starts, so a bad file never makes the service crash-loop. Temporary files
    left by a write that a crash cut short are deleted first.

    >>> import tempfile
    >>> from pathlib import Path
    >>> config = DeviceConfig(state_dir=Path(tempfile.mkdtemp()), cut="pool")
    >>> config.checkpoint.write_bytes(b"not a checkpoint")
    16
    >>> learner, what = resume_learner(config, "0" * 64, Manifest.load())
    >>> learner.classes_, what.startswith("unusable checkpoint"), config.checkpoint.exists()
    ([], True, False)
    """
    path = config.checkpoint
    for leftover in remove_leftovers(path):
        log.warning("removed %s, left by a checkpoint write cut short", leftover)
    if not path.exists():
        return new_learner(config, extractor_sha256, manifest), f"no checkpoint at {path}: new"
    try:
        learner = AR1Star.load(path, extractor_sha256=extractor_sha256)
    except CheckpointError as e:
        aside = path.with_name(path.name + ".corrupt")
        n = 0
        while aside.exists():  # a wrong-extractor file still holds what was learned: keep each
            n += 1
            aside = path.with_name(f"{path.name}.corrupt.{n}")
        os.replace(path, aside)
        log.error("unusable checkpoint %s (%s): moved it to %s, starting fresh", path, e, aside)
        what = f"unusable checkpoint moved to {aside} ({e}): new learner"
        return new_learner(config, extractor_sha256, manifest), what
    learner.config = replace(
        learner.config, epochs=config.epochs, replay_per_epoch=config.replay_per_epoch
    )
    return learner, f"resumed {path}: {len(learner.classes_)} classes {learner.classes_}"


class Classifier:
    """The extractor and the current learner: ``latents(frames)``, then ``predict(latents)``.

    >>> import tempfile
    >>> from pathlib import Path
    >>> config = DeviceConfig(state_dir=Path(tempfile.mkdtemp()), runtime="onnx")
    >>> clf = Classifier.open(config)
    >>> x = clf.latents([np.zeros((240, 320, 3), np.uint8)])
    >>> x.shape, clf.predict(x)
    ((1, 4, 4, 320), [Verdict(label=None, confidence=0.0, unknown=True)])
    """

    def __init__(self, extractor: Extractor, learner: AR1Star, resumed: str = "") -> None:
        self.extractor = extractor
        self.resumed = resumed
        """What happened to the checkpoint at start (new, resumed, moved aside)."""
        self._learner = learner
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: DeviceConfig, manifest: Manifest | None = None) -> Classifier:
        """Open the configured extractor (sha256-checked), resume or create the learner, and
        run one warm-up frame so the first real one is not slow."""
        manifest = manifest or Manifest.load(config.models)
        extractor = open_extractor(
            config.cut,
            config.runtime,
            config.precision,
            config.resolution,
            config.threads,
            manifest=manifest,
        )
        learner, resumed = resume_learner(config, extractor.artifact.sha256, manifest)
        r = extractor.resolution
        extractor.frames([np.zeros((r, r, 3), np.uint8)])
        return cls(extractor, learner, resumed)

    @property
    def learner(self) -> AR1Star:
        """The model in use now. Treat it as read-only: train a copy and :meth:`swap` it in."""
        with self._lock:
            return self._learner

    def swap(self, learner: AR1Star) -> AR1Star:
        """Put ``learner`` in use for every later prediction; returns the one it replaces."""
        with self._lock:
            old, self._learner = self._learner, learner
        return old

    def latents(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Latents of RGB frames of any size (preprocessed as the manifest says)."""
        return self.extractor.frames(list(frames))

    def predict(self, latents: np.ndarray) -> list[Verdict]:
        """One verdict per latent, from the model in use when the call starts."""
        learner = self.learner
        if not learner.classes_:
            return [Verdict(None, 0.0, True) for _ in range(len(latents))]
        labels, conf, unknown = learner.predict_with_confidence(latents)
        return [
            Verdict(label, float(c), bool(u))
            for label, c, u in zip(labels, conf, unknown, strict=True)
        ]
