"""ClassGaussians: exact streaming statistics, OAS shrinkage, LDA scores, state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from edge_cl.errors import FrameError
from edge_cl.learner.gaussian import ClassGaussians


def data(rng: np.random.Generator, n: int = 300, dim: int = 6, classes: int = 4) -> tuple:
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) + 2.0 * y[:, None]
    return x, y


def test_batches_in_any_order_give_the_statistics_of_their_union() -> None:
    rng = np.random.default_rng(0)
    x, y = data(rng)
    whole = ClassGaussians(6).partial_fit(x, y)
    parts = ClassGaussians(6)
    for idx in np.array_split(rng.permutation(len(x)), 7):
        parts.partial_fit(x[idx], y[idx])
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    centred = x - means[y]
    np.testing.assert_allclose(whole.means, means, atol=1e-12)
    np.testing.assert_allclose(parts.means, means, atol=1e-12)
    np.testing.assert_allclose(parts.scatter, centred.T @ centred, rtol=1e-10)
    assert (parts.patterns, parts.classes_seen) == (300, 4)
    assert parts.counts.tolist() == np.bincount(y).tolist()


def test_oas_shrinks_hard_on_few_patterns_and_little_on_many() -> None:
    rng = np.random.default_rng(1)
    x, y = data(rng, n=4000, dim=20)
    few = ClassGaussians(20).partial_fit(x[:12], y[:12]).covariance()[1]
    many = ClassGaussians(20).partial_fit(x, y).covariance()[1]
    assert 0.0 <= many < 0.05 < few <= 1.0
    shrunk, rho = ClassGaussians(20).partial_fit(x[:200], y[:200]).covariance()
    assert np.all(np.linalg.eigvalsh(shrunk) > 0)
    g = ClassGaussians(20).partial_fit(x[:200], y[:200])
    cov = g.scatter / (g.patterns - g.classes_seen)
    mu = np.trace(cov) / 20
    expected = (1 - rho) * cov + rho * mu * np.eye(20)
    np.testing.assert_allclose(shrunk, expected, rtol=1e-12)


def test_scores_are_the_lda_discriminants_and_classify_separable_data() -> None:
    rng = np.random.default_rng(2)
    x, y = data(rng, n=2000)
    g = ClassGaussians(6).partial_fit(x, y)
    slots = np.array([2, 0])
    p = np.linalg.inv(g.covariance()[0])
    m = g.means[slots]
    expected = x @ p @ m.T - 0.5 * np.einsum("kd,de,ke->k", m, p, m)
    np.testing.assert_allclose(g.scores(x, slots), expected, rtol=1e-4, atol=1e-3)
    assert (g.scores(x, np.arange(4)).argmax(1) == y).mean() > 0.9


def test_forget_erases_a_class_and_state_round_trips() -> None:
    rng = np.random.default_rng(3)
    x, y = data(rng)
    g = ClassGaussians(6).partial_fit(x, y)
    g.forget(1)
    assert g.counts[1] == 0 and not g.means[1].any()
    back = ClassGaussians.from_state_dict(g.state_dict())
    np.testing.assert_array_equal(back.scores(x, np.array([0, 2, 3])), g.scores(x, [0, 2, 3]))
    state = g.state_dict()
    with pytest.raises(ValueError, match="do not fit"):
        ClassGaussians.from_state_dict({**state, "counts": state["counts"][:2]})
    with pytest.raises(ValueError, match="square"):
        ClassGaussians.from_state_dict({**state, "scatter": np.zeros((6, 5))})
    with pytest.raises(ValueError, match="NaN"):
        ClassGaussians.from_state_dict({**state, "means": np.full_like(state["means"], np.nan)})


def test_bad_batches_are_refused_before_anything_changes() -> None:
    g = ClassGaussians(3)
    with pytest.raises(FrameError):
        g.partial_fit(np.zeros((2, 4)), np.array([0, 1]))
    with pytest.raises(FrameError):
        g.partial_fit(np.zeros((2, 3)), np.array([0]))
    assert g.patterns == 0 and len(g.counts) == 0


def test_cached_weights_follow_every_change_of_the_statistics() -> None:
    """Scoring reuses weights between frames; after a batch, a forget or other slots, the scores
    are those of a head rebuilt from the same statistics (nothing stale is served)."""
    rng = np.random.default_rng(3)
    g = ClassGaussians(8).partial_fit(rng.normal(size=(60, 8)), rng.integers(0, 3, 60))
    x = rng.normal(size=(5, 8))

    def fresh(slots: np.ndarray) -> np.ndarray:
        return ClassGaussians.from_state_dict(g.state_dict()).scores(x, slots)

    all3 = np.arange(3)
    assert np.array_equal(g.scores(x, all3), fresh(all3))
    g.partial_fit(rng.normal(size=(20, 8)) + 3.0, np.full(20, 1))
    assert np.array_equal(g.scores(x, all3), fresh(all3))
    g.forget(2)
    assert np.array_equal(g.scores(x, all3), fresh(all3))
    assert np.array_equal(g.scores(x, np.array([0, 1])), fresh(np.array([0, 1])))


def test_nbytes_is_the_statistics_whether_or_not_it_has_scored() -> None:
    """The precision and scoring weights cached by ``scores`` are not state: the footprint does
    not depend on when the head last scored (the lifecycle study's memory series must not move
    with its evaluation points)."""
    rng = np.random.default_rng(4)
    x, y = data(rng, dim=8)
    g = ClassGaussians(8).partial_fit(x, y)
    before = g.nbytes
    g.scores(x[:2], np.arange(4))
    assert g.nbytes == before == 4 * 8 * 8 + 4 * 8 + 8 * 8 * 8  # means, counts, scatter


def test_score_flops_count_the_product_and_the_bias() -> None:
    assert ClassGaussians.score_flops(8, 4) == 2 * 8 * 4 + 4
