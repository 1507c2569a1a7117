"""Classical continual-learning baselines on frozen pooled features: NCM and Deep SLDA.

Both learn from per-class running statistics, so any batch size (one pattern included) and any
class order work without replay or gradient steps, and learning one batch after another gives the
same model, to rounding, as learning their union (for SLDA: with its streaming covariance).

They take pooled ``(N, d)`` features (``d = 1280`` for EfficientNet-Lite0: the extractor's
``pool`` cut, or :meth:`edge_cl.extractor.imagenet.PretrainedHead.pool` on latents) and implement
the :class:`~edge_cl.learner.protocol.Learner` protocol: ``partial_fit``, ``predict``,
``predict_proba``, ``decision_function``, ``predict_with_confidence`` (with an
``unknown_threshold`` and ``calibrate_unknown``), ``classes_``, ``forget``, ``nbytes``,
``last_update_flops`` and ``predict_flops``, ``save`` / ``load`` through
:mod:`edge_cl.learner.checkpoint`, plus ``state_dict`` / ``from_state_dict``.

A state dict holds numpy arrays and JSON-able values only; :meth:`~_ClassMeanLearner.save`
stores the arrays as arrays and the rest as the checkpoint's metadata.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from edge_cl.errors import CheckpointError, NotFittedError
from edge_cl.learner.checkpoint import load_state, save_state
from edge_cl.learner.gaussian import ClassGaussians, merge_means, oas_covariance
from edge_cl.learner.labels import Label, LabelMap
from edge_cl.learner.layers import softmax
from edge_cl.learner.protocol import (
    calibrated_threshold,
    check_batch,
    check_labels,
    check_threshold,
    load_label_map,
    with_confidence,
)

STATE_VERSION = 1

_L = TypeVar("_L", bound="_ClassMeanLearner")


class _ClassMeanLearner(ABC):
    """Labels, per-class counts and running means, input checks and the shared API.

    ``extractor_sha256`` ties checkpoints to the extractor whose features they were learned
    on; ``unknown_threshold``: below this top probability a prediction is flagged unknown.
    """

    kind: ClassVar[str] = ""

    def __init__(
        self, *, extractor_sha256: str | None = None, unknown_threshold: float = 0.0
    ) -> None:
        self.extractor_sha256 = extractor_sha256
        self.unknown_threshold = check_threshold(unknown_threshold)
        self.labels = LabelMap()
        self.n_features: int | None = None
        self.batches_seen = 0
        self._means = np.zeros((0, 0), np.float64)  # (slots, d): running mean per label index
        self._counts = np.zeros(0, np.int64)  # (slots,): patterns learned per label index
        self._version = 0  # bumped on every change of the model, keys the score caches
        self.last_update_flops = 0  # FLOPs of the last partial_fit, counted analytically

    # ------------------------------------------------------------------------------ input
    def _check_features(self, x: object) -> np.ndarray:
        """``x`` as a float64 (N, d) array, or a ``FrameError`` saying what to pass instead."""
        return check_batch(x, (self.n_features or "d",), dtype=np.float64)

    def _check_labels(self, y: Iterable[object], n: int) -> tuple[LabelMap, np.ndarray]:
        """A copy of the label map with ``y`` added, and the indices of ``y``; nothing changes."""
        labels = check_labels(y, n)
        probe = LabelMap.from_state_dict(self.labels.state_dict())
        return probe, probe.fit(labels)

    def _check_fitted(self) -> None:
        if len(self.labels) == 0:
            raise NotFittedError("the learner knows no class yet: call partial_fit first")

    # ---------------------------------------------------------------------------- learning
    def partial_fit(self: _L, X: np.ndarray, y: Iterable[object]) -> _L:
        """Learn one incremental batch; new classes may appear in any batch.

        Everything is checked before anything changes, so a refused batch leaves the model as
        it was.
        """
        x = self._check_features(X)
        labels, idx = self._check_labels(y, len(x))
        self._learn(x, idx, labels)
        self.last_update_flops = self._update_flops(*x.shape)
        self.labels = labels
        self.n_features = x.shape[1]
        self.batches_seen += 1
        self._version += 1
        return self

    def _merge(
        self, x: np.ndarray, idx: np.ndarray, scatter: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """New means and counts after the batch, and the within-class scatter it adds (with
        ``scatter``): :func:`~edge_cl.learner.gaussian.merge_means`, on copies."""
        d = x.shape[1]
        return merge_means(self._means.reshape(len(self._counts), d), self._counts, x, idx, scatter)

    def _learn(self, x: np.ndarray, idx: np.ndarray, labels: LabelMap) -> None:
        self._means, self._counts, _ = self._merge(x, idx)

    def _update_flops(self, n: int, d: int) -> int:
        """FLOPs of learning ``n`` patterns of ``d`` features: the class sums and mean moves."""
        return 2 * n * d

    @property
    def predict_flops(self) -> int:
        """FLOPs to classify one frame alone (``predict`` on a batch of one, as the device does)
        with the current state, counted analytically; 0 before the first class."""
        if len(self.labels) == 0 or self.n_features is None:
            return 0
        return self._predict_flops(self.n_features, len(self.labels))

    @abstractmethod
    def _predict_flops(self, d: int, k: int) -> int:
        """FLOPs of :meth:`_scores` on one pattern of ``d`` features over ``k`` live classes."""

    # -------------------------------------------------------------------------- predicting
    @property
    def classes_(self) -> list[Label]:
        """Known labels, in the order of ``predict_proba``'s columns."""
        return self.labels.labels

    def _live(self) -> np.ndarray:
        return self.labels.transform(self.labels.labels)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Scores ``(n, n_classes)`` over ``classes_``: higher is more likely."""
        self._check_fitted()
        return self._scores(self._check_features(X))

    @abstractmethod
    def _scores(self, x: np.ndarray) -> np.ndarray:
        """Scores of checked features over the live classes."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of :meth:`decision_function`; rows sum to 1, columns follow ``classes_``."""
        return softmax(self.decision_function(X))

    def predict(self, X: np.ndarray) -> list[Label]:
        """The best-scoring known label of each pattern."""
        best = self.decision_function(X).argmax(axis=1)
        return self.labels.inverse(self._live()[best])

    def predict_with_confidence(self, X: np.ndarray) -> tuple[list[Label], np.ndarray, np.ndarray]:
        """Labels, their probability, and an ``unknown`` mask (probability below
        ``unknown_threshold``)."""
        return with_confidence(self.predict_proba(X), self.classes_, self.unknown_threshold)

    def calibrate_unknown(self, X: np.ndarray, accept: float = 0.95) -> float:
        """Set ``unknown_threshold`` so that ``accept`` of these known-class patterns pass."""
        self.unknown_threshold = calibrated_threshold(self.predict_proba(X), accept)
        return self.unknown_threshold

    @property
    def means_(self) -> np.ndarray:
        """Class means ``(n_classes, d)`` float64, rows in the order of ``classes_``."""
        out: np.ndarray = self._means[self._live()]
        return out

    @property
    def counts_(self) -> np.ndarray:
        """Patterns learned per class, in the order of ``classes_``."""
        out: np.ndarray = self._counts[self._live()]
        return out

    # ------------------------------------------------------------------------- forgetting
    def forget(self, label: object) -> None:
        """Drop a class: its mean and count are erased and it is never predicted again.

        Its index stays retired; learning the same label later starts a fresh class.
        """
        index = self.labels.remove(label)
        self._means[index] = 0.0
        self._counts[index] = 0
        self._version += 1

    def rename(self, old: object, new: object) -> None:
        """Call class ``old`` ``new``: only the name changes (:meth:`LabelMap.rename`)."""
        self.labels.rename(old, new)

    # -------------------------------------------------------------------------- footprint
    def _arrays(self) -> list[np.ndarray]:
        return [self._means, self._counts]

    @property
    def nbytes(self) -> int:
        """Bytes of the state the model keeps to go on learning and predicting (its statistics);
        arrays cached from them for scoring are left out, so the footprint does not depend on
        whether the model has predicted since its last batch."""
        return sum(a.nbytes for a in self._arrays())

    # ------------------------------------------------------------------------------ state
    def _params(self) -> dict[str, Any]:
        return {"unknown_threshold": self.unknown_threshold}

    def state_dict(self) -> dict[str, Any]:
        """The whole state: numpy arrays (copies) and JSON-able values."""
        return {
            "kind": self.kind,
            "version": STATE_VERSION,
            "extractor_sha256": self.extractor_sha256,
            "params": self._params(),
            "labels": self.labels.state_dict(),
            "n_features": self.n_features,
            "batches_seen": self.batches_seen,
            "means": self._means.copy(),
            "counts": self._counts.copy(),
        }

    def _load(self, state: dict[str, Any]) -> None:
        self.labels = load_label_map(state["labels"])
        self.n_features = None if state["n_features"] is None else _count(state, "n_features", 1)
        self.batches_seen = _count(state, "batches_seen")
        slots, d = self.labels.size, self.n_features or 0
        self._means = _array(state["means"], np.float64, (slots, d), "means")
        self._counts = _array(state["counts"], np.int64, (slots,), "counts")
        if (self._counts < 0).any():
            raise ValueError("counts must be >= 0")

    @classmethod
    def from_state_dict(cls: type[_L], state: dict[str, Any]) -> _L:
        """Rebuild a learner from :meth:`state_dict` (``CheckpointError`` if it does not fit)."""
        if state.get("kind") != cls.kind:
            raise CheckpointError(f"the state holds a {state.get('kind')!r}, not a {cls.kind!r}")
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"the state has version {state.get('version')}; this edge_cl reads {STATE_VERSION}"
            )
        try:
            learner = cls(**state["params"], extractor_sha256=state["extractor_sha256"])
            learner._load(state)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"the state is not a usable {cls.kind}: {e!r}") from e
        return learner

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write :meth:`state_dict` atomically (arrays as arrays, the rest as the checkpoint's
        metadata, see :mod:`edge_cl.learner.checkpoint`); returns the bytes written."""
        state = self.state_dict()
        arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in state.items() if k not in arrays}
        return save_state(path, meta, arrays)

    @classmethod
    def load(
        cls: type[_L], path: str | os.PathLike[str], extractor_sha256: str | None = None
    ) -> _L:
        """A learner from :meth:`save`'s file; ``CheckpointError`` if it is truncated, corrupt,
        of another kind, or (with ``extractor_sha256``) made with another extractor."""
        meta, arrays = load_state(Path(path), kind=cls.kind, extractor_sha256=extractor_sha256)
        try:
            return cls.from_state_dict({**meta, **arrays})
        except CheckpointError as e:
            raise CheckpointError(f"{path} does not hold a usable {cls.kind}: {e}") from e


def _count(state: dict[str, Any], key: str, least: int = 0) -> int:
    value = state[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{key} must be an int >= {least}, got {value!r}")
    return value


def _array(value: object, dtype: type[np.generic], shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.array(value, dtype=dtype)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


class NearestClassMean(_ClassMeanLearner):
    """Nearest class mean: predict the class whose running mean is closest (Euclidean).

    ``predict_proba`` is the softmax of the negative Euclidean distances (temperature 1): a
    monotone confidence, not a calibrated probability. ``forget`` touches no other class, so the
    remaining classes' predictions do not change.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 8)).astype(np.float32)
    >>> x[:20] += 3.0
    >>> ncm = NearestClassMean().partial_fit(x[:20], ["cup"] * 20).partial_fit(x[20:], [7] * 20)
    >>> ncm.predict(x[[0, 39]]), ncm.classes_
    (['cup', 7], ['cup', 7])
    >>> ncm.predict_proba(x[:2]).sum(axis=1).round(6).tolist()
    [1.0, 1.0]
    """

    kind = "NearestClassMean"

    def _scores(self, x: np.ndarray) -> np.ndarray:
        """Negative Euclidean distances to the live class means."""
        means = self._means[self._live()]
        sq = (x * x).sum(axis=1)[:, None] - 2.0 * x @ means.T + (means * means).sum(axis=1)
        out: np.ndarray = -np.sqrt(np.maximum(sq, 0.0))
        return out

    def _predict_flops(self, d: int, k: int) -> int:
        """``|x|^2`` and ``2x`` (``3d``), the dot products with the ``k`` means (``2dk``), the
        means' squared norms (``2dk``: :meth:`_scores` recomputes them on every call), combining
        the three (``2k``) and the clip, root and sign (``3k``).

        >>> x = np.eye(4)
        >>> NearestClassMean().partial_fit(x[:3], ["a", "b", "c"]).predict_flops
        75
        """
        return 4 * d * k + 3 * d + 5 * k


class StreamingLDA(_ClassMeanLearner):
    """Deep Streaming LDA (Hayes & Kanan, CVPR-W 2020): class means + one shared covariance.

    Scores are ``x @ (Lambda @ mu_k) - 0.5 * mu_k @ Lambda @ mu_k`` with the precision
    ``Lambda = inv((1 - shrinkage) * Sigma + shrinkage * I)``; ``predict_proba`` is their softmax,
    which is the LDA posterior under equal class priors (the shared quadratic term cancels).
    ``shrinkage="oas"`` chooses it from the data instead (Oracle Approximating Shrinkage towards
    the mean variance, :func:`~edge_cl.learner.gaussian.oas_covariance`): strong while few
    patterns back the covariance, weak once many do.

    ``Sigma`` is the pooled within-class covariance ``S / n``: ``S`` is the sum over classes of
    the scatter of each class around its own mean, ``n`` the patterns it holds. A batch is merged
    with Chan et al.'s parallel update, per class ``S += S_batch + n_a * n_b / (n_a + n_b) *
    (m_b - m_a)(m_b - m_a)^T``; this equals, to rounding, the per-pattern online rule
    ``S += c / (c + 1) * (x - mu_y)(x - mu_y)^T`` (``c``: the class's count before ``x``) applied
    to the same patterns in any order, and the offline pooled within-class covariance. The
    reference code of the paper weights that rule by the total count ``t / (t + 1)`` instead of
    ``c / (c + 1)``, which is not the within-class covariance (a new class's first pattern adds
    its full outer product); this class keeps the exact statistic.

    With ``streaming_covariance=False`` the covariance is fixed after the first batch (the
    paper's base-initialisation variant); the means keep learning. The covariance is float64;
    the precision is recomputed lazily, only when the covariance changed since it was last
    computed (a ``d = 1280`` inverse takes about 0.1 s), and scoring runs in float32. ``forget``
    erases the class's mean and count; its past contribution to the shared covariance (its
    within-class spread, no trace of its location) stays.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    >>> y = ["cup", "pen", "key"] * 20
    >>> x[0::3] += 4.0
    >>> x[1::3] -= 4.0
    >>> slda = StreamingLDA().partial_fit(x[:30], y[:30]).partial_fit(x[30:], y[30:])
    >>> slda.predict(x[:3]), slda.classes_
    (['cup', 'pen', 'key'], ['cup', 'pen', 'key'])
    """

    kind = "StreamingLDA"

    def __init__(
        self,
        shrinkage: float | str = 1e-4,
        streaming_covariance: bool = True,
        *,
        extractor_sha256: str | None = None,
        unknown_threshold: float = 0.0,
    ) -> None:
        if shrinkage != "oas" and not (
            isinstance(shrinkage, int | float) and 0.0 < shrinkage <= 1.0
        ):
            raise ValueError(f"shrinkage must be 'oas' or a number in (0, 1], got {shrinkage!r}")
        super().__init__(extractor_sha256=extractor_sha256, unknown_threshold=unknown_threshold)
        self.shrinkage: float | str = shrinkage if isinstance(shrinkage, str) else float(shrinkage)
        self.streaming_covariance = bool(streaming_covariance)
        self._scatter = np.zeros((0, 0), np.float64)  # (d, d) pooled within-class scatter S
        self._n_cov = 0  # patterns that S sums over
        self._cov_version = 0  # bumped when S changes, keys the precision cache
        self._precision: np.ndarray | None = None
        self._precision_version = -1
        self._weights: tuple[np.ndarray, np.ndarray] | None = None  # float32 (d, K), (K,)
        self._weights_version = -1

    def _params(self) -> dict[str, Any]:
        return {
            **super()._params(),
            "shrinkage": self.shrinkage,
            "streaming_covariance": self.streaming_covariance,
        }

    def _learn(self, x: np.ndarray, idx: np.ndarray, labels: LabelMap) -> None:
        covariance = self.streaming_covariance or self.batches_seen == 0
        means, counts, scatter = self._merge(x, idx, scatter=covariance)
        if scatter is not None:
            if self._n_cov:
                scatter += self._scatter
            self._scatter = scatter
            self._n_cov += len(x)
            self._cov_version += 1
        self._means, self._counts = means, counts

    def _update_flops(self, n: int, d: int) -> int:
        """Class sums, the batch scatter ``2 n d^2``, and refreshing the precision matrix
        (``2 d^3``, an inverse) so that the device can predict after the batch."""
        if not (self.streaming_covariance or self.batches_seen == 0):
            return 2 * n * d
        return 2 * n * d + 2 * n * d * d + 2 * d**3

    @property
    def covariance_(self) -> np.ndarray:
        """The shared covariance ``Sigma`` (d, d) float64, before shrinkage."""
        self._check_fitted()
        out: np.ndarray = self._scatter / self._n_cov
        return out

    def _current_precision(self) -> np.ndarray:
        if self._precision is None or self._precision_version != self._cov_version:
            if isinstance(self.shrinkage, str):
                classes = int((self._counts > 0).sum())
                shrunk, _ = oas_covariance(self._scatter, self._n_cov - classes)
            else:
                shrunk = (1.0 - self.shrinkage) * (self._scatter / self._n_cov)
                shrunk[np.diag_indices(len(shrunk))] += self.shrinkage
            self._precision = np.linalg.inv(shrunk)
            self._precision_version = self._cov_version
        return self._precision

    def _scores(self, x: np.ndarray) -> np.ndarray:
        if self._weights is None or self._weights_version != self._version:
            means = self._means[self._live()]
            w = self._current_precision() @ means.T
            bias = 0.5 * (means.T * w).sum(axis=0)
            self._weights = (w.astype(np.float32), bias.astype(np.float32))
            self._weights_version = self._version
        w32, bias32 = self._weights
        out: np.ndarray = x.astype(np.float32) @ w32 - bias32
        return out

    def _predict_flops(self, d: int, k: int) -> int:
        """The product with the cached weights and the bias, ``2dk + k`` (the weights are
        rebuilt once per change of the model; the precision behind them is counted in
        ``last_update_flops``).

        >>> x = np.eye(4)
        >>> StreamingLDA().partial_fit(x[:3], ["a", "b", "c"]).predict_flops
        27
        """
        return ClassGaussians.score_flops(d, k)

    def _arrays(self) -> list[np.ndarray]:
        """The statistics (means, counts, scatter); the precision and scoring weights cached
        from them are not state (``nbytes`` leaves them out)."""
        return [*super()._arrays(), self._scatter]

    def state_dict(self) -> dict[str, Any]:
        """The whole state (caches excluded): numpy arrays (copies) and JSON-able values."""
        return {**super().state_dict(), "scatter": self._scatter.copy(), "n_cov": self._n_cov}

    def _load(self, state: dict[str, Any]) -> None:
        super()._load(state)
        self._n_cov = _count(state, "n_cov")
        d = self.n_features or 0
        self._scatter = _array(
            state["scatter"], np.float64, (d, d) if self._n_cov else (0, 0), "scatter"
        )
