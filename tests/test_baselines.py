"""NCM and Streaming LDA baselines: accuracy against the Bayes rule, the streaming covariance
update against the per-pattern online rule, labels, forgetting, state, input checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_cl.errors import CheckpointError, EdgeClError, LabelError, NotFittedError
from edge_cl.learner.baselines import NearestClassMean, StreamingLDA
from edge_cl.learner.checkpoint import load_state, save_state

LEARNERS = [NearestClassMean, StreamingLDA]
K, D = 5, 32


def gaussian_task(seed: int = 0) -> dict[str, Any]:
    """5 classes in 32-d sharing one strongly anisotropic, non-diagonal covariance.

    The mean differences are small next to the high-variance directions, so Euclidean distance
    is misled and the Bayes rule (LDA with the true parameters) is far better than NCM.
    """
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(D, D)))
    cov = (q * np.geomspace(0.05, 20.0, D)) @ q.T
    chol = np.linalg.cholesky(cov)
    means = rng.normal(size=(K, D)) * 0.3

    def sample(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(K), per_class)
        x = means[y] + rng.normal(size=(len(y), D)) @ chol.T
        return x.astype(np.float32), y

    x_train, y_train = sample(200)
    x_test, y_test = sample(1000)
    return {
        "cov": cov,
        "means": means,
        "train": (x_train, y_train),
        "test": (x_test, y_test),
    }


def bayes_accuracy(task: dict[str, Any]) -> float:
    """Accuracy of the Bayes-optimal rule (true means, true covariance, equal priors)."""
    x, y = task["test"]
    w = task["means"] @ np.linalg.inv(task["cov"])
    scores = x @ w.T - 0.5 * (w * task["means"]).sum(axis=1)
    return float((scores.argmax(axis=1) == y).mean())


def class_incremental(x: np.ndarray, y: np.ndarray, size: int = 50) -> list[tuple[Any, Any]]:
    """Batches of one class at a time, the classes in order: the hard continual stream."""
    order = np.argsort(y, kind="stable")
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(y), size)]


def accuracy(model: NearestClassMean | StreamingLDA, x: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(model.predict(x)) == y).mean())


def welford_pooled(
    x: np.ndarray, y: np.ndarray
) -> tuple[dict[int, np.ndarray], dict[int, int], np.ndarray]:
    """The per-pattern online rule: ``S += c/(c+1) (x - mu_y)(x - mu_y)^T``, then the mean."""
    means: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    scatter = np.zeros((x.shape[1], x.shape[1]))
    for xi, yi in zip(x.astype(np.float64), y.tolist(), strict=True):
        c = counts.get(yi, 0)
        mu = means.get(yi, np.zeros(x.shape[1]))
        diff = xi - mu
        scatter += c / (c + 1) * np.outer(diff, diff)
        means[yi] = mu + diff / (c + 1)
        counts[yi] = c + 1
    return means, counts, scatter / len(x)


def fitted(cls: type[NearestClassMean | StreamingLDA]) -> NearestClassMean | StreamingLDA:
    """A learner trained on three batches with str and int labels, one class arriving late."""
    rng = np.random.default_rng(1)
    model = cls()
    centres = {"cup": 0.0, 7: 4.0, "pen": -4.0}
    for labels in (["cup", 7] * 10, [7, "cup"] * 5, ["pen", "cup"] * 6):
        x = rng.normal(size=(len(labels), 6)) + np.array([[centres[lab]] for lab in labels])
        model.partial_fit(x.astype(np.float32), labels)
    return model


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            assert value.dtype == b[key].dtype and np.array_equal(value, b[key]), key
        else:
            assert value == b[key], key


# ------------------------------------------------------------------------------- accuracy
def test_slda_beats_ncm_and_approaches_the_bayes_rule() -> None:
    task = gaussian_task()
    x_test, y_test = task["test"]
    ncm, slda = NearestClassMean(), StreamingLDA()
    for xb, yb in class_incremental(*task["train"]):
        ncm.partial_fit(xb, yb)
        slda.partial_fit(xb, yb)
    bayes = bayes_accuracy(task)
    acc_ncm, acc_slda = accuracy(ncm, x_test, y_test), accuracy(slda, x_test, y_test)
    assert bayes > 0.85, "the task should be learnable"
    assert acc_slda >= bayes - 0.03, (acc_slda, bayes)
    assert acc_slda >= acc_ncm + 0.25, (acc_slda, acc_ncm)


def test_fixed_covariance_stays_that_of_the_first_batch() -> None:
    task = gaussian_task()
    batches = class_incremental(*task["train"])
    fixed, streaming = StreamingLDA(streaming_covariance=False), StreamingLDA()
    fixed.partial_fit(*batches[0])
    first = fixed.covariance_.copy()
    for xb, yb in batches[1:]:
        fixed.partial_fit(xb, yb)
    for xb, yb in batches:
        streaming.partial_fit(xb, yb)
    np.testing.assert_array_equal(fixed.covariance_, first)
    np.testing.assert_allclose(fixed.means_, streaming.means_, rtol=1e-12, atol=1e-12)
    assert not np.allclose(streaming.covariance_, first)
    x_test, y_test = task["test"]
    assert accuracy(fixed, x_test, y_test) > accuracy(
        NearestClassMean().partial_fit(*task["train"]), x_test, y_test
    )


# ------------------------------------------------------------------- streaming covariance
def test_batched_update_equals_the_per_pattern_online_rule() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=60)
    y[:20] = rng.integers(0, 2, size=20)  # classes 2 and 3 only appear in later batches
    x = rng.normal(size=(60, 6)) @ rng.normal(size=(6, 6)) + 3.0 * rng.normal(size=(4, 6))[y]
    model = StreamingLDA()
    start = 0
    for size in (1, 7, 12, 1, 2, 30, 7):
        model.partial_fit(x[start : start + size], y[start : start + size])
        start += size
    assert start == len(x)
    means, counts, sigma = welford_pooled(x, y)
    np.testing.assert_allclose(model.covariance_, sigma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.means_, np.stack([means[c] for c in model.classes_]))
    assert model.counts_.tolist() == [counts[c] for c in model.classes_]
    # and both equal the offline pooled within-class covariance
    centred = x - np.stack([x[y == c].mean(axis=0) for c in range(4)])[y]
    np.testing.assert_allclose(model.covariance_, centred.T @ centred / len(x), rtol=1e-10)


def test_precision_is_recomputed_only_when_the_covariance_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    inv = np.linalg.inv

    def counting_inv(a: np.ndarray) -> np.ndarray:
        calls.append(a.shape)
        return inv(a)

    monkeypatch.setattr(np.linalg, "inv", counting_inv)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), ["a", "b", "c"] * 10
    streaming = StreamingLDA().partial_fit(x, y)
    streaming.predict(x)
    streaming.predict_proba(x)
    streaming.forget("c")
    streaming.predict(x)
    assert len(calls) == 1
    streaming.partial_fit(x, y)
    streaming.predict(x)
    assert len(calls) == 2
    fixed = StreamingLDA(streaming_covariance=False).partial_fit(x, y)
    fixed.predict(x)
    fixed.partial_fit(x + 1.0, y)
    fixed.predict(x)
    assert len(calls) == 3


# ---------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("cls", LEARNERS)
def test_classes_can_appear_in_later_batches_with_str_and_int_labels(
    cls: type[NearestClassMean | StreamingLDA],
) -> None:
    model = fitted(cls)
    assert model.classes_ == ["cup", 7, "pen"]
    probe = np.array([[0.0] * 6, [4.0] * 6, [-4.0] * 6], np.float32)
    assert model.predict(probe) == ["cup", 7, "pen"]
    model.partial_fit(np.full((3, 6), 9.0), [np.int64(3)] * 3)
    assert model.classes_ == ["cup", 7, "pen", 3]
    prediction = model.predict(np.full((1, 6), 9.0))
    assert prediction == [3] and type(prediction[0]) is int


@pytest.mark.parametrize("cls", LEARNERS)
def test_predict_proba_rows_sum_to_one_in_classes_order(
    cls: type[NearestClassMean | StreamingLDA],
) -> None:
    model = fitted(cls)
    x = np.random.default_rng(5).normal(scale=4.0, size=(50, 6))
    p = model.predict_proba(x)
    assert p.shape == (50, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert (p >= 0).all()
    assert [model.classes_[i] for i in p.argmax(axis=1)] == model.predict(x)


def test_ncm_proba_is_the_softmax_of_negative_distances() -> None:
    ncm = NearestClassMean().partial_fit(np.array([[-1.0], [1.0], [3.0]]), ["a", "a", "b"])
    e = np.exp([-1.0, -2.0])  # x = 1 lies 1 from mean(a) = 0 and 2 from mean(b) = 3
    np.testing.assert_allclose(ncm.predict_proba(np.array([[1.0]])), [e / e.sum()])
    np.testing.assert_allclose(ncm.decision_function(np.array([[1.0]])), [[-1.0, -2.0]])


# ------------------------------------------------------------------------------ forgetting
@pytest.mark.parametrize("cls", LEARNERS)
def test_forget_removes_a_class(cls: type[NearestClassMean | StreamingLDA]) -> None:
    model = fitted(cls)
    x = np.random.default_rng(6).normal(scale=4.0, size=(300, 6)).astype(np.float32)
    before = model.predict(x)
    assert before.count(7) > 30
    model.forget(7)
    after = model.predict(x)
    assert 7 not in after and model.classes_ == ["cup", "pen"]
    assert model.predict_proba(x).shape == (300, 2)
    state = model.state_dict()
    assert state["counts"].sum() == model.counts_.sum() == 27, "its count is erased"
    assert np.count_nonzero(np.abs(state["means"]).sum(axis=1)) == 2, "its mean is erased"
    if cls is NearestClassMean:
        assert [a for a, b in zip(after, before, strict=True) if b != 7] == [
            b for b in before if b != 7
        ]
    with pytest.raises(LabelError, match="unknown label 7"):
        model.forget(7)
    model.partial_fit(np.full((2, 6), 4.0), [7, 7])
    assert model.predict(np.full((1, 6), 4.0)) == [7]
    assert model.counts_.tolist()[-1] == 2, "a relearned label starts a fresh class"


@pytest.mark.parametrize("cls", LEARNERS)
def test_not_fitted(cls: type[NearestClassMean | StreamingLDA]) -> None:
    x = np.zeros((1, 6), np.float32)
    for method in (cls().predict, cls().predict_proba, cls().decision_function):
        with pytest.raises(NotFittedError, match="partial_fit"):
            method(x)
    model = cls().partial_fit(x, ["only"])
    model.forget("only")
    with pytest.raises(NotFittedError):
        model.predict(x)


# ----------------------------------------------------------------------------------- state
@pytest.mark.parametrize("cls", LEARNERS)
def test_state_round_trip_is_exact(
    cls: type[NearestClassMean | StreamingLDA], tmp_path: Path
) -> None:
    model = fitted(cls)
    model.forget("pen")
    x = np.random.default_rng(7).normal(scale=4.0, size=(100, 6)).astype(np.float32)
    proba = model.predict_proba(x)  # fills the caches, which the state leaves out
    state = model.state_dict()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    meta = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
    save_state(tmp_path / "state.ckpt", meta, arrays)
    meta, arrays = load_state(tmp_path / "state.ckpt", kind=cls.kind)
    clone = cls.from_state_dict({**meta, **arrays})
    assert clone.classes_ == model.classes_ and clone.nbytes <= model.nbytes
    assert np.array_equal(clone.predict_proba(x), proba)
    batch = (x[:10] + 1.0, ["cup", 7, "new"] * 3 + [7])
    model.partial_fit(*batch)
    clone.partial_fit(*batch)
    assert_same_state(clone.state_dict(), model.state_dict())
    assert np.array_equal(clone.predict_proba(x), model.predict_proba(x))
    assert_same_state(cls.from_state_dict(cls().state_dict()).state_dict(), cls().state_dict())


def test_state_of_another_kind_or_shape_is_refused() -> None:
    ncm_state = fitted(NearestClassMean).state_dict()
    with pytest.raises(CheckpointError, match="not a 'StreamingLDA'"):
        StreamingLDA.from_state_dict(ncm_state)
    with pytest.raises(CheckpointError, match="means"):
        NearestClassMean.from_state_dict({**ncm_state, "means": ncm_state["means"][:, :3]})
    slda_state = fitted(StreamingLDA).state_dict()
    with pytest.raises(CheckpointError, match="shrinkage"):
        StreamingLDA.from_state_dict({**slda_state, "params": {"shrinkage": 0.0}})


@pytest.mark.parametrize("cls", LEARNERS)
def test_nbytes_counts_the_state_not_the_scoring_caches(
    cls: type[NearestClassMean | StreamingLDA],
) -> None:
    """The footprint is the statistics alone, the same before and after predicting (SLDA's
    cached precision and scoring weights are rebuilt from them, and left out)."""
    assert cls().nbytes == 0
    model = fitted(cls)
    unscored = model.nbytes
    model.predict(np.zeros((1, 6)))
    statistics = 3 * 6 * 8 + 3 * 8  # means (float64) and counts (int64) of 3 classes
    if cls is NearestClassMean:
        assert model.nbytes == unscored == statistics
    else:  # plus the scatter (float64 6x6)
        assert isinstance(model, StreamingLDA) and model._weights is not None  # cached now
        assert model.nbytes == unscored == statistics + 6 * 6 * 8


def test_prediction_flops_match_a_hand_count() -> None:
    """One frame of 6 features over the 3 live classes; forgetting a class drops its share."""
    d, k = 6, 3
    ncm, slda = fitted(NearestClassMean), fitted(StreamingLDA)
    # NCM: |x|^2 and 2x, dot products, the means' norms (each call), combine, clip/root/sign
    assert ncm.predict_flops == (2 * d + d) + 2 * d * k + 2 * d * k + 2 * k + 3 * k
    assert slda.predict_flops == 2 * d * k + k  # cached weights, bias
    ncm.forget("pen")
    slda.forget("pen")
    assert (ncm.predict_flops, slda.predict_flops) == (4 * d * 2 + 3 * d + 10, 2 * d * 2 + 2)
    assert NearestClassMean().predict_flops == StreamingLDA().predict_flops == 0


# ----------------------------------------------------------------------------- bad input
BAD_BATCHES = [
    (np.zeros(6), ["a"], "shape \\(N, 6\\), got \\(6,\\)"),
    (np.zeros((2, 6, 1)), ["a", "a"], "shape \\(N, 6\\)"),
    (np.zeros((2, 2, 2, 6)), ["a", "a"], "pooled first"),
    (np.zeros((2, 5)), ["a", "a"], "got \\(2, 5\\).*same extractor cut"),
    (np.array([[np.nan] * 6]), ["a"], "NaN"),
    (np.array([[np.inf] * 6]), ["a"], "infinite"),
    (np.zeros((0, 6)), [], "empty batch"),
    (np.array([["x"] * 6]), ["a"], "numeric"),
    (np.zeros((2, 6)), ["a"], "2 patterns but 1 labels"),
    (np.zeros((2, 6)), "ab", "got a str"),
    (np.zeros((2, 6)), ["new", True], "str or an int"),
    (np.zeros((2, 6)), ["new", 1.5], "str or an int"),
    (np.zeros((1, 6)), [""], "1 to 64 characters"),
]


@pytest.mark.parametrize("cls", LEARNERS)
@pytest.mark.parametrize(("x", "y", "message"), BAD_BATCHES)
def test_bad_input_raises_and_leaves_the_model_unchanged(
    cls: type[NearestClassMean | StreamingLDA], x: np.ndarray, y: Any, message: str
) -> None:
    model = fitted(cls)
    probe = np.random.default_rng(8).normal(scale=4.0, size=(20, 6))
    proba, state = model.predict_proba(probe), model.state_dict()
    with pytest.raises(ValueError, match=message) as info:
        model.partial_fit(x, y)
    assert isinstance(info.value, EdgeClError)
    assert_same_state(model.state_dict(), state)
    assert np.array_equal(model.predict_proba(probe), proba)
    if len(y) == len(x) and not isinstance(info.value, LabelError):
        with pytest.raises(ValueError, match=message):
            model.predict(x)


def test_bad_shrinkage() -> None:
    for shrinkage in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="shrinkage"):
            StreamingLDA(shrinkage=shrinkage)


def test_update_flops_are_counted_for_the_lifecycle_study() -> None:
    x = np.ones((10, 4))
    ncm = NearestClassMean().partial_fit(x, ["a"] * 10)
    assert ncm.last_update_flops == 2 * 10 * 4
    slda = StreamingLDA().partial_fit(x, ["a"] * 10)
    assert slda.last_update_flops == 2 * 10 * 4 + 2 * 10 * 16 + 2 * 64
    fixed = StreamingLDA(streaming_covariance=False).partial_fit(x, ["a"] * 10)
    assert fixed.partial_fit(x, ["b"] * 10).last_update_flops == 2 * 10 * 4
