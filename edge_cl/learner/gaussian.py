"""Class-conditional Gaussians with one shared covariance, learned in closed form from a stream.

The statistics behind linear discriminant analysis (LDA): per class a running mean and count,
and the pooled within-class scatter ``S`` (the sum over classes of each class's scatter around
its own mean). A batch is merged with Chan et al.'s parallel update, per class
``S += S_batch + n_a * n_b / (n_a + n_b) * (m_b - m_a)(m_b - m_a)^T``, so learning batch after
batch gives, to rounding, the statistics of their union in any order: no learning rate, no
replay, no forgetting.

Scores are the LDA log-posteriors up to a per-pattern constant,
``x @ (P @ mu_k) - 0.5 * mu_k @ P @ mu_k`` with ``P`` the inverse of the covariance shrunk
towards a multiple of the identity by the Oracle Approximating Shrinkage rule (Chen, Wiesel,
Eldar, Hero, IEEE TSP 2010, in scikit-learn's form): ``rho`` is near 1 when few patterns back a
large covariance (the first batches) and falls towards 0 as they accumulate, with no parameter
to tune. The precision, and the per-class weights and biases scoring uses, are recomputed only
when the statistics changed since they were last used: a frame costs one ``(1, dim) @ (dim, k)``.
"""

from __future__ import annotations

import numpy as np

from edge_cl.errors import FrameError


def merge_means(
    means: np.ndarray, counts: np.ndarray, x: np.ndarray, y: np.ndarray, scatter: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Class means and counts after a batch ``x`` with class slots ``y`` (new arrays, grown to
    hold every slot in ``y``), and the within-class scatter the batch adds (None without
    ``scatter``): Chan et al.'s parallel merge, ``m += n_b / (n_a + n_b) * (m_b - m_a)``.

    >>> m, n, s = merge_means(np.zeros((0, 1)), np.zeros(0, int), np.array([[1.0], [3.0]]),
    ...                       np.array([0, 0]))
    >>> m.tolist(), n.tolist(), s.tolist()
    ([[2.0]], [2], [[2.0]])
    """
    slots = max(len(counts), int(y.max()) + 1)
    new_means = np.zeros((slots, x.shape[1]), np.float64)
    new_counts = np.zeros(slots, np.int64)
    new_means[: len(counts)] = means
    new_counts[: len(counts)] = counts
    classes, inverse, n_b = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros((len(classes), x.shape[1]), np.float64)
    np.add.at(sums, inverse, x)
    batch_mean = sums / n_b[:, None]
    n_a = new_counts[classes]
    total = n_a + n_b
    shift = batch_mean - new_means[classes]
    new_means[classes] += shift * (n_b / total)[:, None]
    new_counts[classes] = total
    if not scatter:
        return new_means, new_counts, None
    centred = x - batch_mean[inverse]
    weighted = shift * np.sqrt(n_a * n_b / total)[:, None]
    return new_means, new_counts, centred.T @ centred + weighted.T @ weighted


def oas_covariance(scatter: np.ndarray, dof: int) -> tuple[np.ndarray, float]:
    """The covariance ``scatter / dof`` shrunk towards ``mu * I`` (``mu`` its mean variance)
    by the Oracle Approximating Shrinkage rule, and the shrinkage ``rho`` in [0, 1].

    >>> cov, rho = oas_covariance(np.diag([4.0, 0.0]), dof=1)
    >>> rho, cov.tolist()
    (1.0, [[2.0, 0.0], [0.0, 2.0]])
    """
    dim = scatter.shape[0]
    dof = max(dof, 1)
    cov = scatter / dof
    mu = float(np.trace(cov)) / dim
    alpha = float(np.mean(cov**2))
    den = (dof + 1) * (alpha - mu**2 / dim)
    rho = 1.0 if den <= 0 else min((alpha + mu**2) / den, 1.0)
    shrunk = (1.0 - rho) * cov
    shrunk[np.diag_indices(dim)] += rho * max(mu, 1e-12)
    return shrunk, rho


class ClassGaussians:
    """Running class means and a shared, shrunk covariance over ``dim``-d features.

    Classes are integer slots ``0..slots-1`` (the caller's label indices); :meth:`scores`
    takes the slots to score.

    >>> rng = np.random.default_rng(0)
    >>> g = ClassGaussians(dim=4)
    >>> x = rng.normal(size=(60, 4))
    >>> y = np.arange(60) % 3
    >>> x[:, 0] += 3.0 * y
    >>> g.partial_fit(x[:30], y[:30]).partial_fit(x[30:], y[30:]).counts.tolist()
    [20, 20, 20]
    >>> bool((g.scores(x, np.arange(3)).argmax(1) == y).mean() > 0.9)
    True
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.means = np.zeros((0, dim), np.float64)
        self.counts = np.zeros(0, np.int64)
        self.scatter = np.zeros((dim, dim), np.float64)
        self.patterns = 0  # patterns the scatter sums over
        self.classes_seen = 0  # classes that contributed to it (its degrees of freedom)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None  # precision, shrinkage
        self._weights: tuple[bytes, np.ndarray, np.ndarray] | None = None  # slots, w, bias

    def partial_fit(self, x: np.ndarray, y: np.ndarray) -> ClassGaussians:
        """Merge a batch of features ``x`` (n, dim) with class slots ``y`` (n,)."""
        x = np.asarray(x, np.float64)
        y = np.asarray(y)
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) != len(y) or len(x) == 0:
            raise FrameError(
                f"need (n, {self.dim}) features and n labels, got {x.shape}, {y.shape}"
            )
        old = np.zeros(int(y.max()) + 1, np.int64)
        old[: len(self.counts)] = self.counts[: len(old)]
        self.classes_seen += int((old[np.unique(y)] == 0).sum())
        self.means, self.counts, added = merge_means(self.means, self.counts, x, y)
        assert added is not None
        self.scatter += added
        self.patterns += len(x)
        self._cache = self._weights = None
        return self

    @staticmethod
    def update_flops(n: int, dim: int) -> int:
        """FLOPs of :meth:`partial_fit` on ``n`` patterns plus the precision it invalidates."""
        return 2 * n * dim + 2 * n * dim * dim + 2 * dim**3

    @staticmethod
    def score_flops(dim: int, classes: int) -> int:
        """FLOPs of :meth:`scores` on one pattern for ``classes`` slots: the product with the
        cached weights and the bias (the weights themselves are rebuilt once per change of the
        statistics, which :meth:`update_flops` pays for with the precision).

        >>> ClassGaussians.score_flops(640, 10)
        12810
        """
        return 2 * dim * classes + classes

    def forget(self, slot: int) -> None:
        """Erase a class's mean and count; its past share of the shared scatter stays."""
        if slot < len(self.counts):
            self.means[slot] = 0.0
            self.counts[slot] = 0
            self._weights = None

    def covariance(self) -> tuple[np.ndarray, float]:
        """The shrunk covariance and its shrinkage ``rho`` in [0, 1] (:func:`oas_covariance`
        with the pooled scatter's degrees of freedom, patterns minus classes)."""
        return oas_covariance(self.scatter, self.patterns - self.classes_seen)

    def precision(self) -> np.ndarray:
        """The inverse of :meth:`covariance`, cached until the statistics change."""
        if self._cache is None:
            shrunk, rho = self.covariance()
            self._cache = (np.linalg.inv(shrunk), np.array(rho))
        return self._cache[0]

    def scores(self, x: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """LDA log-posteriors (up to a per-row constant) of ``x`` for classes ``slots``."""
        key = np.asarray(slots, np.int64).tobytes()
        if self._weights is None or self._weights[0] != key:
            means = self.means[slots]
            w = self.precision() @ means.T
            bias = 0.5 * (means.T * w).sum(axis=0)
            self._weights = (key, w.astype(np.float32), bias.astype(np.float32))
        _, w32, bias32 = self._weights
        out: np.ndarray = np.asarray(x, np.float32) @ w32 - bias32
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the statistics (means, counts, scatter): the state the head keeps to go on
        learning and scoring. The precision and scoring weights cached from them are left out:
        they are rebuilt from the statistics on demand, and counting them made the footprint
        depend on whether the head had scored since its last batch."""
        return self.means.nbytes + self.counts.nbytes + self.scatter.nbytes

    def state_dict(self) -> dict[str, np.ndarray]:
        """The statistics as arrays (for a checkpoint)."""
        return {
            "means": self.means,
            "counts": self.counts,
            "scatter": self.scatter,
            "totals": np.array([self.patterns, self.classes_seen], np.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, np.ndarray]) -> ClassGaussians:
        """Rebuild from :meth:`state_dict`; ``ValueError`` if the arrays do not fit together."""
        scatter = np.asarray(state["scatter"], np.float64)
        if scatter.ndim != 2 or scatter.shape[0] != scatter.shape[1] or scatter.shape[0] < 1:
            raise ValueError(f"scatter must be a square matrix, got {scatter.shape}")
        g = cls(scatter.shape[0])
        means = np.asarray(state["means"], np.float64)
        counts = np.asarray(state["counts"], np.int64)
        totals = np.asarray(state["totals"], np.int64)
        if means.ndim != 2 or means.shape[1] != g.dim or counts.shape != (len(means),):
            raise ValueError(f"means {means.shape} and counts {counts.shape} do not fit")
        if totals.shape != (2,) or (counts < 0).any() or (totals < 0).any():
            raise ValueError("counts and totals must be non-negative")
        if not (np.isfinite(means).all() and np.isfinite(scatter).all()):
            raise ValueError("the statistics hold NaN or infinite values")
        g.means, g.counts, g.scatter = means.copy(), counts.copy(), scatter.copy()
        g.patterns, g.classes_seen = int(totals[0]), int(totals[1])
        return g
