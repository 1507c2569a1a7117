"""Frame -> preprocess -> frozen extractor -> features -> learner -> verdict, on the device.

The learner is any of :mod:`edge_cl.learner.registry` (``DeviceConfig.learner``). It is held
behind a lock and only ever replaced whole (:meth:`Classifier.swap`), never changed in place, so
a prediction always sees one complete model while :class:`~edge_cl.device.worker.LearnerWorker`
trains a copy in the background.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from edge_cl.device.config import DeviceConfig
from edge_cl.errors import CheckpointError, EdgeClError, ManifestError
from edge_cl.extractor import RUNTIME_FORMATS, Extractor, open_extractor
from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.checkpoint import remove_leftovers
from edge_cl.learner.config import LATENT_CHANNELS, POOL_CHANNELS
from edge_cl.learner.labels import Label
from edge_cl.learner.network import LatentNetwork
from edge_cl.learner.protocol import Learner
from edge_cl.learner.registry import (
    learner_depth,
    learner_name,
    learner_spec,
    load_learner,
    make_learner,
)

log = logging.getLogger("edge_cl.device")

RESUMED_OPTIONS = ("epochs", "replay_per_epoch")
"""Options of the AR1* family a resumed checkpoint takes from the configuration (its training
schedule); everything else stays as the checkpoint was made."""


NOTHING_IN_VIEW = "nothing in view"
"""What the device says when the answer is the background class (``background_label``)."""


@dataclass(frozen=True)
class Verdict:
    """One frame's answer: ``label`` (None before anything is learned), its probability,
    whether it fell below the unknown threshold (``label`` is then the best guess), and whether
    it is the background class, taught with nothing in view (``empty``: never with ``unknown``).

    >>> Verdict("cup", 0.93, False).text(), Verdict("cup", 0.412, True).text()
    ('cup 0.93', 'unknown (best guess cup 0.41)')
    >>> Verdict("nothing", 0.97, False, empty=True).text(), Verdict(None, 0.0, True).text()
    ('nothing in view', 'nothing learned yet')
    """

    label: Label | None
    confidence: float
    unknown: bool
    empty: bool = False

    def text(self) -> str:
        """What the device says, for people (log line, preview, replies, the demo): the label
        and its confidence, ``unknown (best guess ...)``, or ``nothing in view``."""
        if self.label is None:
            return "nothing learned yet"
        if self.unknown:
            return f"unknown (best guess {self.label} {self.confidence:.2f})"
        if self.empty:
            return NOTHING_IN_VIEW
        return f"{self.label} {self.confidence:.2f}"


def new_learner(config: DeviceConfig, extractor_sha256: str, manifest: Manifest) -> Learner:
    """A fresh ``config.learner`` above ``config.cut`` with ``config.learner_options``; the AR1*
    family at depth latent starts from the pretrained head.

    With ``learner.replay_grid`` (AR1* family), if the manifest's artifact of
    ``extractor_sha256`` outputs values on a uint8 grid (the int8 models), the replay memory
    stores those codes alone (``AR1Config.replay_grid``).
    """
    options = dict(config.learner_options)
    if "replay_grid" in learner_spec(config.learner).options:
        artifact = next((a for a in manifest.artifacts if a.sha256 == extractor_sha256), None)
        use_grid = bool(options.get("replay_grid"))
        options["replay_grid"] = artifact.output_grid if use_grid and artifact else None
    head = head_arrays(manifest.head()) if config.cut == "latent" else None
    return make_learner(config.learner, head, extractor_sha256, config.cut, **options)


def extractor_sha256_at(manifest: Manifest, extractor_sha256: str, cut: str) -> str | None:
    """The sha256 of the manifest's extractor at ``cut`` in the format and precision of the one
    whose sha256 is ``extractor_sha256`` (None if the manifest has no such pair)."""
    for artifact in manifest.artifacts:
        if artifact.sha256 == extractor_sha256:
            try:
                return manifest.find(cut, artifact.format, artifact.precision).sha256
            except ManifestError:
                return None
    return None


def _load_checkpoint(config: DeviceConfig, extractor_sha256: str, manifest: Manifest) -> Learner:
    """The learner in ``config.checkpoint``, whichever learner and depth it is, checked against
    the extractor it needs; ``CheckpointError`` (or ``MissingExtraError``) if it is unusable."""
    path = config.checkpoint
    learner = load_learner(path)
    depth = learner_depth(learner)
    expected = (
        extractor_sha256
        if depth == config.cut
        else extractor_sha256_at(manifest, extractor_sha256, depth)
    )
    if learner.extractor_sha256 is None or learner.extractor_sha256 != expected:
        raise CheckpointError(
            f"{path} was made with extractor {str(learner.extractor_sha256)[:16]}..., not the "
            f"loaded one ({str(expected)[:16]}...): its features mean something else. Start a "
            "new state or load the matching model"
        )
    side = config.resolution // 32
    probe = np.zeros((1, side, side, LATENT_CHANNELS) if depth == "latent" else (1, POOL_CHANNELS))
    try:
        if learner.classes_:  # with none, it predicts nothing and the loop says so
            learner.decision_function(probe.astype(np.float32))
    except Exception as e:  # a state that loads but cannot predict would crash the first frame
        raise CheckpointError(f"{path} loads but cannot predict: {e!r}") from e
    return learner


def resume_learner(
    config: DeviceConfig, extractor_sha256: str, manifest: Manifest
) -> tuple[Learner, str]:
    """The learner in ``config.checkpoint``, or a fresh one; and a sentence saying which.

    ``extractor_sha256`` is the extractor at ``config.cut``. A checkpoint of another learner or
    depth than configured is kept (never discard what was learned): it is checked against the
    manifest's extractor at its own depth, and a warning says how to switch. An AR1* checkpoint
    of the configured learner takes the configured :data:`RESUMED_OPTIONS`.

    An unusable checkpoint (corrupt, truncated, made with another extractor, of a learner this
    installation cannot run) is moved aside to ``*.corrupt`` (``*.corrupt.1``, ... if that
    exists: an earlier one is never overwritten) and a fresh learner starts, so a bad file never
    makes the service crash-loop. Temporary files left by a write that a crash cut short are
    deleted first.

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
        learner = _load_checkpoint(config, extractor_sha256, manifest)
    except Exception as e:  # whatever a crafted file provokes, it must not crash-loop the service
        aside = path.with_name(path.name + ".corrupt")
        n = 0
        while aside.exists():  # a wrong-extractor file still holds what was learned: keep each
            n += 1
            aside = path.with_name(f"{path.name}.corrupt.{n}")
        os.replace(path, aside)
        reason = str(e) if isinstance(e, EdgeClError) else repr(e)
        log.error("unusable checkpoint %s (%s): moved to %s, starting fresh", path, reason, aside)
        what = f"unusable checkpoint moved to {aside} ({reason}): new learner"
        return new_learner(config, extractor_sha256, manifest), what
    name, depth = learner_name(learner), learner_depth(learner)
    if (name, depth) != (config.learner, config.cut):
        log.warning(
            "%s holds a %r learner at depth %r, but the configuration names %r at %r: keeping "
            "the checkpoint's, with what it learned. To switch, move %s aside (what it learned "
            "is then not used) and restart",
            path,
            name,
            depth,
            config.learner,
            config.cut,
            path,
        )
    elif isinstance(learner, LatentNetwork):
        spec = learner_spec(name)
        schedule = {k: config.learner_options.get(k, spec.options[k]) for k in RESUMED_OPTIONS}
        learner.config = replace(learner.config, **schedule)
    what = f"resumed {path}: {name} at depth {depth}, {len(learner.classes_)} classes"
    return learner, f"{what} {learner.classes_}"


class Classifier:
    """The extractor and the current learner: ``latents(frames)``, then ``predict(latents)``.

    The extractor's cut is what the learner eats: ``config.cut``, or a resumed checkpoint's
    depth where that differs (:func:`resume_learner`).

    >>> import tempfile
    >>> from pathlib import Path
    >>> config = DeviceConfig(state_dir=Path(tempfile.mkdtemp()), runtime="onnx")
    >>> clf = Classifier.open(config)
    >>> x = clf.latents([np.zeros((240, 320, 3), np.uint8)])
    >>> x.shape, clf.predict(x)
    ((1, 4, 4, 320), [Verdict(label=None, confidence=0.0, unknown=True, empty=False)])
    """

    def __init__(
        self,
        extractor: Extractor,
        learner: Learner,
        resumed: str = "",
        *,
        background_label: str | None = None,
    ) -> None:
        self.extractor = extractor
        self.resumed = resumed
        """What happened to the checkpoint at start (new, resumed, moved aside)."""
        self.background_label = background_label
        """The class taught with nothing in view (None: none); its verdicts are ``empty``."""
        self._learner = learner
        self._lock = threading.Lock()

    @classmethod
    def open(cls, config: DeviceConfig, manifest: Manifest | None = None) -> Classifier:
        """Resume or create the learner, open the extractor it eats (sha256-checked), and run
        one warm-up frame so the first real one is not slow."""
        manifest = manifest or Manifest.load(config.models)
        fmt = RUNTIME_FORMATS[config.runtime]
        sha = manifest.find(config.cut, fmt, config.precision).sha256
        learner, resumed = resume_learner(config, sha, manifest)
        extractor = open_extractor(
            learner_depth(learner),
            config.runtime,
            config.precision,
            config.resolution,
            config.threads,
            manifest=manifest,
        )
        r = extractor.resolution
        extractor.frames([np.zeros((r, r, 3), np.uint8)])
        return cls(extractor, learner, resumed, background_label=config.background_label)

    @property
    def learner(self) -> Learner:
        """The model in use now. Treat it as read-only: train a copy and :meth:`swap` it in."""
        with self._lock:
            return self._learner

    def swap(self, learner: Learner) -> Learner:
        """Put ``learner`` in use for every later prediction; returns the one it replaces."""
        with self._lock:
            old, self._learner = self._learner, learner
        return old

    def latents(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """The extractor's features of RGB frames of any size (preprocessed as the manifest
        says): latents or pooled features, whichever the learner eats."""
        return self.extractor.frames(list(frames))

    def predict(self, latents: np.ndarray) -> list[Verdict]:
        """One verdict per pattern, from the model in use when the call starts; ``empty`` where
        the answer is ``background_label`` and not unknown (an unfamiliar sight whose best
        guess is the empty scene is unknown, not empty)."""
        learner = self.learner
        if not learner.classes_:
            return [Verdict(None, 0.0, True) for _ in range(len(latents))]
        labels, conf, unknown = learner.predict_with_confidence(latents)
        background = self.background_label
        return [
            Verdict(label, float(c), bool(u), empty=not u and str(label) == background)
            for label, c, u in zip(labels, conf, unknown, strict=True)
        ]
