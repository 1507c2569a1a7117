"""What a user would pick instead of a continual learner: scikit-learn on frozen pooled features.

- :class:`SGDHead`: ``SGDClassifier.partial_fit`` one batch at a time (linear model, hinge loss,
  the scikit-learn defaults), the textbook "online learning" answer.
- :class:`KNNHead`: k-nearest neighbours (cosine) over every feature seen so far, the Teachable
  Machine approach; its memory grows with the stream like cumulative retraining's.

Both implement the :class:`~edge_cl.learner.protocol.Learner` protocol, checkpoints included:
``save`` stores their numeric arrays (the linear model's coefficients and intercepts, the kNN's
stored features and labels) through :mod:`edge_cl.learner.checkpoint`, never a pickle, and
``load`` rebuilds the estimator from them. scikit-learn is an optional extra
(``pip install 'edge-cl[study]'``) so that it never lands on a device that does not ask for it:
building either head without it raises ``MissingExtraError``. ``SGDClassifier.partial_fit``
needs every class up front, while classes arrive over time, so :class:`SGDHead` declares
``max_classes`` slots on its first batch and maps labels to them as they come (a slot not yet
seen is only ever trained as a negative).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from edge_cl.errors import CheckpointError, LabelError, MissingExtraError, NotFittedError
from edge_cl.learner.checkpoint import load_state, save_state
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

_H = TypeVar("_H", bound="_SklearnHead")


def _sklearn() -> Any:
    try:
        import sklearn.linear_model
        import sklearn.neighbors
    except ImportError as e:
        raise MissingExtraError(
            "the scikit-learn baselines need scikit-learn: pip install 'edge-cl[study]'"
        ) from e
    return sklearn


def _int_option(value: object, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return int(value)


class _SklearnHead(ABC):
    """Labels, input checks, confidence, and checkpoints shared by the two heads."""

    kind: ClassVar[str] = ""

    def __init__(self, extractor_sha256: str | None, unknown_threshold: float) -> None:
        _sklearn()
        self.extractor_sha256 = extractor_sha256
        self.unknown_threshold = check_threshold(unknown_threshold)
        self.labels = LabelMap()
        self.n_features: int | None = None
        self.batches_seen = 0
        self.last_update_flops = 0

    @property
    def classes_(self) -> list[Label]:
        """Known labels in the order they were first seen (the score columns' order)."""
        return self.labels.labels

    def _live(self) -> np.ndarray:
        return self.labels.transform(self.labels.labels)

    def _check(self, X: object) -> np.ndarray:
        return check_batch(X, (self.n_features or "d",))

    def _batch(self, X: object, y: Sequence[object]) -> tuple[np.ndarray, LabelMap, np.ndarray]:
        """Checked features, a copy of the label map with ``y`` added, and ``y``'s indices."""
        x = self._check(X)
        probe = LabelMap.from_state_dict(self.labels.state_dict())
        return x, probe, probe.fit(check_labels(y, len(x)))

    def _fitted(self, X: object) -> np.ndarray:
        if len(self.labels) == 0:
            raise NotFittedError(f"{self.kind} has not learned any class yet: call partial_fit")
        return self._check(X)

    @abstractmethod
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Scores ``(N, n_classes)`` over ``classes_``: higher is more likely."""

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Scores in [0, 1] over ``classes_``, rows summing to 1."""

    @abstractmethod
    def forget(self, label: object) -> None:
        """Drop a class; ``LabelError`` if it is not known."""

    def rename(self, old: object, new: object) -> None:
        """Call class ``old`` ``new``: only the name changes (:meth:`LabelMap.rename`)."""
        self.labels.rename(old, new)

    @property
    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of the model's arrays."""

    @property
    @abstractmethod
    def predict_flops(self) -> int:
        """FLOPs to classify one frame alone (``predict`` on a batch of one, as the device
        does) with the current state, counted analytically; 0 before the first class."""

    def predict(self, X: np.ndarray) -> list[Label]:
        """The best-scoring known label of each pattern."""
        best = self.decision_function(X).argmax(axis=1)
        return self.labels.inverse(self._live()[best])

    def predict_with_confidence(self, X: np.ndarray) -> tuple[list[Label], np.ndarray, np.ndarray]:
        """Labels, their probability, and an ``unknown`` mask (below ``unknown_threshold``)."""
        return with_confidence(self.predict_proba(X), self.classes_, self.unknown_threshold)

    def calibrate_unknown(self, X: np.ndarray, accept: float = 0.95) -> float:
        """Set ``unknown_threshold`` so that ``accept`` of these known-class patterns pass."""
        self.unknown_threshold = calibrated_threshold(self.predict_proba(X), accept)
        return self.unknown_threshold

    # ------------------------------------------------------------------------ checkpoints
    def _params(self) -> dict[str, Any]:
        """The constructor's arguments (but the extractor's sha256)."""
        return {"unknown_threshold": self.unknown_threshold}

    def _meta(self) -> dict[str, Any]:
        """JSON-able state beyond the shared part."""
        return {}

    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """The numeric state, stored as arrays."""

    @abstractmethod
    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Rebuild from :meth:`_meta` and :meth:`_arrays`; ``ValueError`` if they do not fit."""

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the state atomically: the numeric arrays as arrays (no pickle), the rest as the
        checkpoint's metadata; returns the bytes written."""
        meta = {
            "kind": self.kind,
            "extractor_sha256": self.extractor_sha256,
            "params": self._params(),
            "labels": self.labels.state_dict(),
            "n_features": self.n_features,
            "batches_seen": self.batches_seen,
            **self._meta(),
        }
        return save_state(path, meta, self._arrays())

    @classmethod
    def load(
        cls: type[_H], path: str | os.PathLike[str], extractor_sha256: str | None = None
    ) -> _H:
        """A head from :meth:`save`'s file; ``CheckpointError`` if it is truncated, corrupt, of
        another kind, or (with ``extractor_sha256``) made with another extractor."""
        meta, arrays = load_state(Path(path), kind=cls.kind, extractor_sha256=extractor_sha256)
        try:
            head = cls(**meta["params"], extractor_sha256=meta["extractor_sha256"])
            head.labels = load_label_map(meta["labels"])
            n_features = meta["n_features"]
            if n_features is not None:
                head.n_features = _int_option(n_features, "n_features", 1)
            head.batches_seen = _int_option(meta["batches_seen"], "batches_seen", 0)
            head._restore(meta, arrays)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{path} does not hold a usable {cls.kind}: {e!r}") from e
        return head


def _stored(arrays: dict[str, np.ndarray], name: str, dtype: type[np.generic], shape: Any) -> Any:
    arr = np.ascontiguousarray(arrays[name], dtype=dtype)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


class SGDHead(_SklearnHead):
    """A linear classifier trained with ``SGDClassifier.partial_fit`` on pooled features.

    ``predict_proba`` is the softmax of the linear scores (hinge loss has no probabilities): a
    monotone confidence, not a calibrated one. ``forget`` zeroes the class's slot, which is
    never predicted again.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 8)).astype(np.float32)
    >>> x[:20] += 3.0
    >>> head = SGDHead(seed=0).partial_fit(x, ["cup"] * 20 + ["pen"] * 20)
    >>> head.predict(x[:2]), head.classes_
    (['cup', 'cup'], ['cup', 'pen'])
    """

    kind = "SGDHead"

    def __init__(
        self,
        max_classes: int = 256,
        seed: int = 0,
        *,
        extractor_sha256: str | None = None,
        unknown_threshold: float = 0.0,
    ) -> None:
        super().__init__(extractor_sha256, unknown_threshold)
        self.max_classes = _int_option(max_classes, "max_classes", 3)  # 2 would be one binary
        self.seed = _int_option(seed, "seed", 0)
        self.model = _sklearn().linear_model.SGDClassifier(random_state=self.seed)
        self._t = 1.0  # the SGD step count its learning rate schedule follows

    def partial_fit(self, X: np.ndarray, y: Sequence[object]) -> SGDHead:
        """One pass of SGD over this batch; a refused batch changes nothing."""
        x, labels, index = self._batch(X, y)
        if labels.size > self.max_classes:
            raise LabelError(
                f"SGDHead holds at most {self.max_classes} classes (forgotten ones included): "
                "build it with a larger max_classes"
            )
        self.model.partial_fit(x, index, classes=np.arange(self.max_classes))
        self.labels = labels
        self.n_features = x.shape[1]
        self.batches_seen += 1
        self._t = float(self.model.t_)
        self.last_update_flops = 3 * 2 * x.shape[0] * x.shape[1] * self.max_classes  # one pass
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The linear scores ``x @ coef.T + intercept`` over ``classes_``."""
        x = self._fitted(X)
        live = self._live()
        out: np.ndarray = x @ self.model.coef_[live].T + self.model.intercept_[live]
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax of :meth:`decision_function`; rows sum to 1, columns follow ``classes_``."""
        return softmax(self.decision_function(X))

    def forget(self, label: object) -> None:
        """Drop a class: its weights are zeroed and it is never predicted again."""
        index = self.labels.remove(label)
        self.model.coef_[index] = 0.0
        self.model.intercept_[index] = 0.0

    @property
    def predict_flops(self) -> int:
        """The linear scores over the live classes, ``2dk + k``.

        >>> SGDHead(seed=0).partial_fit(np.eye(4), ["a", "b", "c", "d"]).predict_flops
        36
        """
        if self.n_features is None or len(self.labels) == 0:
            return 0
        k = len(self.labels)
        return 2 * self.n_features * k + k

    @property
    def nbytes(self) -> int:
        """Bytes of the linear model's weights."""
        if self.n_features is None:
            return 0
        return int(self.model.coef_.nbytes + self.model.intercept_.nbytes)

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "max_classes": self.max_classes, "seed": self.seed}

    def _meta(self) -> dict[str, Any]:
        return {"t": self._t}

    def _arrays(self) -> dict[str, np.ndarray]:
        if self.n_features is None:
            return {}
        return {"coef": self.model.coef_, "intercept": self.model.intercept_}

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Rebuild the fitted estimator from its arrays: what ``partial_fit`` reads to go on."""
        if self.labels.size > self.max_classes:
            raise ValueError(f"{self.labels.size} labels but {self.max_classes} slots")
        if self.n_features is None:
            return
        t = meta["t"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not 1.0 <= t < np.inf:
            raise ValueError(f"t must be a number >= 1, got {t!r}")
        self._t = float(t)
        slots = self.max_classes
        self.model.coef_ = _stored(arrays, "coef", np.float32, (slots, self.n_features))
        self.model.intercept_ = _stored(arrays, "intercept", np.float32, (slots,))
        self.model.classes_ = np.arange(slots)
        self.model.t_ = self._t
        self.model.n_features_in_ = self.n_features


class KNNHead(_SklearnHead):
    """k-nearest neighbours (cosine distance) over every pooled feature seen so far.

    ``decision_function`` and ``predict_proba`` are the share of the ``k`` nearest stored
    patterns in each class. Learning stores the batch (no arithmetic: ``last_update_flops`` is
    0); the neighbour index is rebuilt on the next prediction, and every prediction compares
    the frame with every stored pattern (``predict_flops`` grows with the stream). ``forget``
    deletes the class's stored patterns.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 8)).astype(np.float32)
    >>> x[:20] += 3.0
    >>> KNNHead(k=3).partial_fit(x, ["cup"] * 20 + ["pen"] * 20).predict(x[-2:])
    ['pen', 'pen']
    """

    kind = "KNNHead"

    def __init__(
        self, k: int = 3, *, extractor_sha256: str | None = None, unknown_threshold: float = 0.0
    ) -> None:
        super().__init__(extractor_sha256, unknown_threshold)
        self.k = _int_option(k, "k", 1)
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._model: Any = None

    def partial_fit(self, X: np.ndarray, y: Sequence[object]) -> KNNHead:
        """Store the batch (the index is rebuilt on the next prediction)."""
        x, labels, index = self._batch(X, y)
        self._x.append(x.copy())
        self._y.append(index)
        self.labels = labels
        self.n_features = x.shape[1]
        self.batches_seen += 1
        self._model = None
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """The share of the ``k`` nearest stored patterns in each of ``classes_``."""
        x = self._fitted(X)
        if self._model is None:
            stored = np.concatenate(self._x)
            k = min(self.k, len(stored))
            self._model = _sklearn().neighbors.KNeighborsClassifier(k, metric="cosine")
            self._model.fit(stored, np.concatenate(self._y))
        live = self._live()
        out = np.zeros((len(x), len(live)))
        out[:, np.searchsorted(live, self._model.classes_)] = self._model.predict_proba(x)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """The neighbours' votes, as :meth:`decision_function`."""
        return self.decision_function(X)

    def forget(self, label: object) -> None:
        """Drop a class and every stored pattern of it."""
        index = self.labels.remove(label)
        keep = [yy != index for yy in self._y]
        self._x = [xx[k] for xx, k in zip(self._x, keep, strict=True)]
        self._y = [yy[k] for yy, k in zip(self._y, keep, strict=True)]
        self._model = None

    @property
    def predict_flops(self) -> int:
        """Cosine distances to all ``n`` stored ``d``-d patterns as scikit-learn computes them
        on every call: both sides L2-normalised (square, add, divide: ``3d(n + 1)``, the stored
        side again each call), their dot products (``2dn``) and one minus them (``2n``). Picking
        the ``k`` nearest and counting their votes are comparisons and counts, not counted.

        >>> KNNHead(k=1).partial_fit(np.eye(4), ["a", "b", "c", "d"]).predict_flops
        100
        """
        if self.n_features is None or not self._x:
            return 0
        n, d = sum(len(x) for x in self._x), self.n_features
        return 5 * d * n + 3 * d + 2 * n

    @property
    def nbytes(self) -> int:
        """Bytes of every stored feature and label (grows with the stream)."""
        return sum(a.nbytes for a in self._x + self._y)

    def _params(self) -> dict[str, Any]:
        return {**super()._params(), "k": self.k}

    def _arrays(self) -> dict[str, np.ndarray]:
        if not self._x:
            return {}
        return {"x": np.concatenate(self._x), "y": np.concatenate(self._y)}

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if self.n_features is None:
            return
        y = _stored(arrays, "y", np.int64, arrays["y"].shape[:1])
        x = _stored(arrays, "x", np.float32, (len(y), self.n_features))
        if not np.isin(y, self._live()).all() or set(y.tolist()) != set(self._live().tolist()):
            raise ValueError("the stored labels do not match the known classes")
        self._x, self._y = [x], [y]
