"""What every learner above the frozen extractor offers, and the input checks they share.

:class:`Learner` is the one API of :class:`~edge_cl.learner.ar1.AR1Star` and its variants,
:class:`~edge_cl.learner.baselines.NearestClassMean`,
:class:`~edge_cl.learner.baselines.StreamingLDA` and the scikit-learn heads of
:mod:`edge_cl.learner.sklearn_heads`, so that the device loop and the study can host any of
them (:mod:`edge_cl.learner.registry` names them). :func:`check_batch` and :func:`check_labels`
are the one implementation of "a usable batch" and "one label per pattern", so every learner
refuses bad input with the same ``FrameError`` / ``LabelError`` before anything changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import DTypeLike

from edge_cl.errors import FrameError, LabelError
from edge_cl.learner.labels import Label, LabelMap, check_label
from edge_cl.learner.replay import ReplayMemory

POOLED_HINT = (
    ": (N, h, w, C) latents must be pooled first (the extractor's 'pool' cut, or "
    "edge_cl.extractor.imagenet.PretrainedHead.pool)"
)
LATENT_HINT = (
    ": pooled (N, C) features need a learner at depth 'pool' (or the extractor's 'latent' cut "
    "for this one)"
)
SIZE_HINT = (
    ": a learner keeps the pattern shape it was built for or first learned; use the same "
    "extractor cut and resolution as for training"
)


class Learner(Protocol):
    """A continual learner: ``partial_fit`` one small batch at a time, ``predict`` any time.

    Labels are str or int (:mod:`edge_cl.learner.labels`); ``classes_`` lists the known ones in
    the order of ``predict_proba``'s and ``decision_function``'s columns. ``forget`` drops a
    class for good. ``save`` writes the whole state atomically through
    :mod:`edge_cl.learner.checkpoint` and ``load`` refuses a corrupt file or one made with
    another extractor (``extractor_sha256``) with a ``CheckpointError``. A refused batch
    (``FrameError``, ``LabelError``) leaves the learner as it was.

    >>> from edge_cl.learner.baselines import NearestClassMean
    >>> learner: Learner = NearestClassMean()
    >>> x = np.eye(4, dtype=np.float32)
    >>> learner.partial_fit(x[:2], ["cup", "pen"]).predict(x[:2]), learner.batches_seen
    (['cup', 'pen'], 1)
    """

    @property
    def extractor_sha256(self) -> str | None:
        """The sha256 of the extractor whose features this learner eats (None: unchecked)."""
        ...

    @property
    def classes_(self) -> list[Label]:
        """Known labels, in the order of the score columns."""
        ...

    @property
    def nbytes(self) -> int:
        """Bytes of the state the learner keeps to go on learning and predicting (caches it
        rebuilds from that state for scoring are left out): its footprint, and roughly its
        checkpoint's size."""
        ...

    @property
    def last_update_flops(self) -> int:
        """FLOPs of the last ``partial_fit``, counted analytically."""
        ...

    @property
    def predict_flops(self) -> int:
        """FLOPs to classify one frame alone with the current state (``predict`` on a batch of
        one, as the device does), counted analytically like ``last_update_flops``; 0 before
        the first class. Every learner counts it, so a cost comparison never reads a missing
        count as free (the lifecycle study records it after every batch)."""
        ...

    @property
    def batches_seen(self) -> int:
        """Batches learned so far."""
        ...

    def partial_fit(self, X: np.ndarray, y: Sequence[object], /) -> Learner:
        """Learn one batch (new classes may appear in any); returns the learner."""
        ...

    def predict(self, X: np.ndarray, /) -> list[Label]:
        """The most likely known label of each pattern."""
        ...

    def predict_proba(self, X: np.ndarray, /) -> np.ndarray:
        """``(N, len(classes_))`` scores in [0, 1] whose rows sum to 1."""
        ...

    def decision_function(self, X: np.ndarray, /) -> np.ndarray:
        """``(N, len(classes_))`` scores: higher is more likely."""
        ...

    def predict_with_confidence(
        self, X: np.ndarray, /
    ) -> tuple[list[Label], np.ndarray, np.ndarray]:
        """Labels, their probability, and a mask of those below the unknown threshold."""
        ...

    def calibrate_unknown(self, X: np.ndarray, /, accept: float = 0.95) -> float:
        """Set the unknown threshold so ``accept`` of these known-class patterns pass."""
        ...

    def forget(self, label: object, /) -> None:
        """Drop a class; ``LabelError`` if it is not known."""
        ...

    def rename(self, old: object, new: object, /) -> None:
        """Call class ``old`` ``new`` from now on, keeping all it learned; ``LabelError`` if
        ``old`` is not known or ``new`` already is."""
        ...

    def save(self, path: str | os.PathLike[str], /) -> int:
        """Write the whole state atomically; returns the bytes written."""
        ...

    @classmethod
    def load(cls, path: str | os.PathLike[str], extractor_sha256: str | None = None) -> Learner:
        """A learner from :meth:`save`'s file; ``CheckpointError`` if it is unusable."""
        ...


def describe_shape(pattern: Sequence[int | str]) -> str:
    """The batch shape ``(N, *pattern)`` as text, free sizes by name.

    >>> describe_shape(("h", "w", 320)), describe_shape(("d",))
    ('(N, h, w, 320)', '(N, d)')
    """
    return "(" + ", ".join(["N", *map(str, pattern)]) + ")"


def check_batch(
    x: object,
    pattern: Sequence[int | str],
    *,
    name: str = "features",
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """``x`` as a ``dtype`` array of shape ``(N, *pattern)``, or a ``FrameError`` saying what
    to pass instead; the one check of a batch every learner runs before it changes anything.

    ``pattern`` holds a pattern's sizes: an int must match, a str (``"h"``, ``"d"``) is any
    size of at least 1. The batch must be non-empty, numeric (not bool) and finite. A float32
    array asked for as float32 is returned as is, not copied.

    >>> check_batch(np.zeros((2, 4, 4, 320), np.float32), ("h", "w", 320)).shape
    (2, 4, 4, 320)
    >>> check_batch([[1, 2]], ("d",), dtype=np.float64).dtype
    dtype('float64')
    >>> check_batch(np.zeros((2, 5)), (6,))
    Traceback (most recent call last):
    ...
    edge_cl.errors.FrameError: features must have shape (N, 6), got (2, 5): a learner keeps the \
pattern shape it was built for or first learned; use the same extractor cut and resolution as for \
training
    """
    expected = describe_shape(pattern)
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise FrameError(f"{name} must be a numeric array of shape {expected}: {e}") from e
    if arr.dtype.kind not in "fiu":
        raise FrameError(
            f"{name} must be a numeric array of shape {expected}, got dtype {arr.dtype}"
        )
    if arr.ndim != len(pattern) + 1:
        hint = ""
        if arr.ndim == 4 and len(pattern) == 1:
            hint = POOLED_HINT
        elif arr.ndim == 2 and len(pattern) == 3:
            hint = LATENT_HINT
        raise FrameError(f"{name} must have shape {expected}, got {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise FrameError(f"empty batch: pass at least one pattern of shape {expected}")
    for size, want in zip(arr.shape[1:], pattern, strict=True):
        if size == 0 or (isinstance(want, int) and size != want):
            raise FrameError(f"{name} must have shape {expected}, got {arr.shape}{SIZE_HINT}")
    out = np.asarray(arr, dtype=dtype)
    if not np.isfinite(out).all():
        raise FrameError(f"{name} hold NaN or infinite values: check the extractor output")
    return out


def check_labels(y: object, n: int) -> list[Label]:
    """``y`` as a list of exactly ``n`` valid labels (str or int, numpy ints as int), or a
    ``LabelError`` saying what to pass instead.

    >>> check_labels(["cup", np.int64(7)], 2)
    ['cup', 7]
    >>> check_labels(["cup"], 2)
    Traceback (most recent call last):
    ...
    edge_cl.errors.LabelError: 2 patterns but 1 labels: pass one label per pattern
    """
    if isinstance(y, str | bytes):
        raise LabelError("labels must be a sequence with one label per pattern, got a str")
    try:
        labels = list(y)  # type: ignore[call-overload]
    except TypeError as e:
        raise LabelError(f"labels must be a sequence of str or int, one per pattern: {e}") from e
    if len(labels) != n:
        raise LabelError(f"{n} patterns but {len(labels)} labels: pass one label per pattern")
    return [check_label(label) for label in labels]


def check_threshold(value: object) -> float:
    """An unknown threshold: a probability in [0, 1] (0 never says unknown).

    >>> check_threshold(0.5)
    0.5
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"unknown_threshold must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"unknown_threshold must be in [0, 1], got {value}")
    return float(value)


def with_confidence(
    proba: np.ndarray, classes: Sequence[Label], threshold: float
) -> tuple[list[Label], np.ndarray, np.ndarray]:
    """``predict_with_confidence`` from probabilities over ``classes``: the best label of each
    row, its probability, and whether that falls below ``threshold``.

    >>> with_confidence(np.array([[0.9, 0.1], [0.4, 0.6]]), ["cup", "pen"], 0.7)
    (['cup', 'pen'], array([0.9, 0.6]), array([False,  True]))
    """
    best = proba.argmax(axis=1)
    confidence = proba[np.arange(len(proba)), best]
    return [classes[i] for i in best.tolist()], confidence, confidence < threshold


def calibrated_threshold(proba: np.ndarray, accept: float) -> float:
    """The unknown threshold that lets ``accept`` of these known-class rows pass (0 for
    ``accept`` 1: nothing is unknown).

    >>> p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> calibrated_threshold(p, accept=0.5), calibrated_threshold(p, accept=1.0)
    (0.8, 0.0)
    """
    if not 0 < accept <= 1:
        raise ValueError(f"accept must be in (0, 1], got {accept}")
    if accept == 1:
        return 0.0
    return float(np.quantile(proba.max(axis=1), 1 - accept))


def load_label_map(state: object) -> LabelMap:
    """A :class:`LabelMap` from its stored state; ``ValueError`` if the state is malformed
    (not a label map, an invalid label, a label twice), so a checkpoint never loads one that
    maps two indices to a label.

    >>> load_label_map({"labels": ["cup", None, 7]}).labels
    ['cup', 7]
    """
    if not isinstance(state, dict) or not isinstance(state.get("labels"), list):
        raise ValueError(f"a label map state is {{'labels': [...]}}, got {state!r}")
    labels = LabelMap.from_state_dict(state)
    if len(labels.labels) != len(labels):
        raise ValueError(f"the label map names a label twice: {labels.labels}")
    return labels


def replay_memory(learner: object) -> ReplayMemory | None:
    """The learner's latent replay memory when it keeps one (the AR1* family), else None.

    >>> from edge_cl.learner.baselines import StreamingLDA
    >>> replay_memory(StreamingLDA()) is None
    True
    """
    memory = getattr(learner, "memory", None)
    return memory if isinstance(memory, ReplayMemory) else None


def stored_patterns(learner: object) -> dict[Label, int] | None:
    """Patterns of each known class the learner's replay memory holds (the AR1* family), or
    None for a learner keeping no replay memory.

    >>> from edge_cl.learner.baselines import NearestClassMean
    >>> stored_patterns(NearestClassMean()) is None
    True
    """
    memory = replay_memory(learner)
    labels = getattr(learner, "labels", None)
    if memory is None or not isinstance(labels, LabelMap):
        return None
    counts = memory.counts()
    known = labels.labels
    return {k: counts.get(int(i), 0) for k, i in zip(known, labels.transform(known), strict=True)}
