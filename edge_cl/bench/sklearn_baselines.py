"""What a user would pick instead of a continual learner: scikit-learn on frozen pooled features.

- :class:`SGDHead`: ``SGDClassifier.partial_fit`` one batch at a time (linear model, hinge loss,
  the scikit-learn defaults), the textbook "online learning" answer.
- :class:`KNNHead`: k-nearest neighbours (cosine) over every feature seen so far, the Teachable
  Machine approach; its memory grows with the stream like cumulative retraining's.

scikit-learn is an optional extra (``pip install 'edge-cl[study]'``) so that it never lands on
the device. ``SGDClassifier.partial_fit`` needs every class up front, while the study's classes
arrive over time, so :class:`SGDHead` declares ``max_classes`` slots on its first batch and maps
labels to them as they come (a slot not yet seen is only ever trained as a negative).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_cl.errors import FrameError, LabelError, MissingExtraError, NotFittedError
from edge_cl.learner.labels import Label, LabelMap


def _sklearn() -> Any:
    try:
        import sklearn.linear_model
        import sklearn.neighbors
    except ImportError as e:
        raise MissingExtraError(
            "the scikit-learn baselines need scikit-learn: pip install 'edge-cl[study]'"
        ) from e
    return sklearn


def _features(x: object) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[0] == 0:
        shape = getattr(x, "shape", None)
        raise FrameError(f"features must be a non-empty (n, d) numpy array, got shape {shape}")
    return np.asarray(x, dtype=np.float32)


class SGDHead:
    """A linear classifier trained with ``SGDClassifier.partial_fit`` on pooled features.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 8)).astype(np.float32)
    >>> x[:20] += 3.0
    >>> head = SGDHead(seed=0).partial_fit(x, ["cup"] * 20 + ["pen"] * 20)
    >>> head.predict(x[:2]), head.classes_
    (['cup', 'cup'], ['cup', 'pen'])
    """

    def __init__(self, max_classes: int = 256, seed: int = 0) -> None:
        self.max_classes = max_classes
        self.labels = LabelMap()
        self.model = _sklearn().linear_model.SGDClassifier(random_state=seed)
        self.last_update_flops = 0

    @property
    def classes_(self) -> list[Label]:
        """Known labels in the order they were first seen."""
        return self.labels.labels

    def partial_fit(self, x: np.ndarray, y: Sequence[object]) -> SGDHead:
        """One pass of SGD over this batch."""
        x = _features(x)
        if len(y) != len(x):
            raise LabelError(f"{len(x)} patterns but {len(y)} labels")
        index = self.labels.fit(list(y))
        if self.labels.size > self.max_classes:
            raise LabelError(f"SGDHead holds at most {self.max_classes} classes")
        self.model.partial_fit(x, index, classes=np.arange(self.max_classes))
        self.last_update_flops = 3 * 2 * x.shape[0] * x.shape[1] * self.max_classes  # one pass
        return self

    def predict(self, x: np.ndarray) -> list[Label]:
        """The best-scoring known label of each pattern."""
        if len(self.labels) == 0:
            raise NotFittedError("SGDHead has not learned any class yet: call partial_fit")
        scores = self.model.decision_function(_features(x))
        live = self.labels.transform(self.labels.labels)
        return self.labels.inverse(live[scores[:, live].argmax(1)])

    @property
    def nbytes(self) -> int:
        """Bytes of the linear model's weights."""
        if not hasattr(self.model, "coef_"):
            return 0
        return int(self.model.coef_.nbytes + self.model.intercept_.nbytes)


class KNNHead:
    """k-nearest neighbours (cosine distance) over every pooled feature seen so far.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 8)).astype(np.float32)
    >>> x[:20] += 3.0
    >>> KNNHead(k=3).partial_fit(x, ["cup"] * 20 + ["pen"] * 20).predict(x[-2:])
    ['pen', 'pen']
    """

    def __init__(self, k: int = 3) -> None:
        self.k = k
        self.labels = LabelMap()
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._model: Any = None
        self._sk = _sklearn()

    @property
    def classes_(self) -> list[Label]:
        """Known labels in the order they were first seen."""
        return self.labels.labels

    def partial_fit(self, x: np.ndarray, y: Sequence[object]) -> KNNHead:
        """Store the batch (the index is rebuilt on the next ``predict``)."""
        x = _features(x)
        if len(y) != len(x):
            raise LabelError(f"{len(x)} patterns but {len(y)} labels")
        self._y.append(self.labels.fit(list(y)))
        self._x.append(x.copy())
        self._model = None
        return self

    def predict(self, x: np.ndarray) -> list[Label]:
        """Majority label among the ``k`` nearest stored patterns."""
        if not self._x:
            raise NotFittedError("KNNHead has not learned any class yet: call partial_fit")
        if self._model is None:
            stored = np.concatenate(self._x)
            k = min(self.k, len(stored))
            self._model = self._sk.neighbors.KNeighborsClassifier(k, metric="cosine")
            self._model.fit(stored, np.concatenate(self._y))
        return self.labels.inverse(self._model.predict(_features(x)))

    @property
    def nbytes(self) -> int:
        """Bytes of every stored feature and label (grows with the stream)."""
        return sum(a.nbytes for a in self._x + self._y)
