"""Every registered learner against the one protocol: learning a new class in a later batch,
scores in ``classes_`` order, confidence, forgetting, checkpoints (round trip, truncation,
another extractor), refused input leaving the learner unchanged; the registry's option checks;
and real COIL-100 features through each learner."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_cl.errors import (
    CheckpointError,
    ConfigError,
    FrameError,
    LabelError,
    MissingExtraError,
    NotFittedError,
)
from edge_cl.extractor import open_extractor
from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image
from edge_cl.learner.checkpoint import save_state
from edge_cl.learner.protocol import Learner
from edge_cl.learner.registry import (
    LEARNERS,
    learner_depth,
    learner_name,
    load_learner,
    make_learner,
    validate,
)

SHA = "5" * 64
SHAPES = {"latent": (4, 4, 320), "pool": (1280,)}
CASES = [(name, depth) for name, spec in LEARNERS.items() for depth in spec.eats]
SKLEARN = {"sgd", "knn"}
LEARNERS_OF_AR1 = {"ar1", "cwr", "naive", "cumulative"}
PROTOCOL = (
    "partial_fit",
    "predict",
    "predict_proba",
    "decision_function",
    "predict_with_confidence",
    "calibrate_unknown",
    "classes_",
    "forget",
    "rename",
    "save",
    "load",
    "nbytes",
    "last_update_flops",
    "predict_flops",
    "batches_seen",
    "extractor_sha256",
)


def needs(name: str) -> None:
    if name in SKLEARN:
        pytest.importorskip("sklearn")


def fast(name: str) -> dict[str, Any]:
    """Options that keep the AR1* family quick on random data."""
    return {"epochs": 2} if "epochs" in LEARNERS[name].options else {}


def blobs(depth: str, labels: list[str], seed: int) -> np.ndarray:
    """Non-negative random patterns around a fixed centre per label."""
    rng = np.random.default_rng(seed)
    centres = {
        label: np.random.default_rng(i).uniform(0, 3, SHAPES[depth])
        for i, label in enumerate("abc")
    }
    x = np.stack([centres[label] for label in labels])
    return np.clip(x + rng.normal(0, 0.5, x.shape), 0, 6).astype(np.float32)


FIRST = ["a"] * 10 + ["b"] * 10
SECOND = ["b"] * 10 + ["c"] * 10
PROBE = ["a", "b", "c"] * 5


@pytest.fixture(params=CASES, ids=[f"{n}-{d}" for n, d in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str]:
    name, depth = request.param
    needs(name)
    return name, depth


def fitted(name: str, depth: str) -> Learner:
    learner = make_learner(name, None, SHA, depth, **fast(name))
    learner.partial_fit(blobs(depth, FIRST, 1), FIRST)
    return learner.partial_fit(blobs(depth, SECOND, 2), SECOND)


def test_the_protocol_on_two_batches_with_a_new_class(case: tuple[str, str]) -> None:
    name, depth = case
    learner = make_learner(name, None, SHA, depth, **fast(name))
    assert all(hasattr(learner, member) for member in PROTOCOL)
    assert (learner_name(learner), learner_depth(learner)) == (name, depth)
    assert learner.classes_ == [] and learner.batches_seen == 0
    assert learner.extractor_sha256 == SHA
    assert learner.predict_flops == 0  # nothing to classify yet
    probe = blobs(depth, PROBE, 3)
    with pytest.raises(NotFittedError):
        learner.predict(probe)
    assert learner.partial_fit(blobs(depth, FIRST, 1), FIRST) is learner
    assert learner.classes_ == ["a", "b"] and learner.predict_proba(probe).shape == (15, 2)
    learner.partial_fit(blobs(depth, SECOND, 2), SECOND)
    assert learner.classes_ == ["a", "b", "c"] and learner.batches_seen == 2
    assert isinstance(learner.last_update_flops, int) and learner.last_update_flops >= 0
    assert (learner.last_update_flops > 0) == (name != "knn")  # kNN stores, it does not compute
    assert isinstance(learner.predict_flops, int) and learner.predict_flops > 0  # kNN's too
    assert learner.nbytes > 0

    predicted = learner.predict(probe)
    proba, scores = learner.predict_proba(probe), learner.decision_function(probe)
    assert len(predicted) == 15 and set(predicted) <= {"a", "b", "c"}
    assert proba.shape == scores.shape == (15, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (proba >= 0).all() and (proba <= 1).all()
    assert [learner.classes_[i] for i in proba.argmax(axis=1)] == predicted  # columns' order
    assert [learner.classes_[i] for i in scores.argmax(axis=1)] == predicted

    labels, confidence, unknown = learner.predict_with_confidence(probe)
    assert labels == predicted and not unknown.any()  # threshold 0: never unknown
    np.testing.assert_allclose(confidence, proba.max(axis=1), rtol=1e-6)
    learner.calibrate_unknown(probe, accept=0.5)  # a probability, or a novelty (AR1*)
    _, _, unknown = learner.predict_with_confidence(probe)
    assert unknown.mean() <= 0.5
    with pytest.raises(ValueError, match="accept"):
        learner.calibrate_unknown(probe, accept=0.0)

    three = learner.predict_flops
    learner.forget("b")
    assert learner.classes_ == ["a", "c"]
    assert 0 < learner.predict_flops < three  # one class fewer to score (kNN: its patterns)
    assert learner.predict_proba(probe).shape == (15, 2)
    assert "b" not in learner.predict(probe)
    with pytest.raises(LabelError, match="unknown label 'b'"):
        learner.forget("b")
    learner.partial_fit(blobs(depth, ["b"] * 4, 4), ["b"] * 4)  # relearned: a fresh class
    assert learner.classes_ == ["a", "c", "b"]


def test_a_checkpoint_round_trip_predicts_and_learns_identically(
    case: tuple[str, str], tmp_path: Path
) -> None:
    name, depth = case
    learner = fitted(name, depth)
    learner.forget("a")
    path = tmp_path / "learner.ckpt"
    size = learner.save(path)
    assert size == path.stat().st_size
    loaded = load_learner(path, extractor_sha256=SHA)
    assert type(loaded) is type(learner) and loaded.classes_ == ["b", "c"]
    assert loaded.batches_seen == learner.batches_seen and loaded.extractor_sha256 == SHA
    assert loaded.predict_flops == learner.predict_flops
    probe = blobs(depth, PROBE, 3)
    assert np.array_equal(loaded.predict_proba(probe), learner.predict_proba(probe))
    assert np.array_equal(loaded.decision_function(probe), learner.decision_function(probe))
    assert type(learner).load(path).predict(probe) == learner.predict(probe)
    more = ["c", "a"] * 5
    learner.partial_fit(blobs(depth, more, 5), more)
    loaded.partial_fit(blobs(depth, more, 5), more)
    assert np.array_equal(loaded.predict_proba(probe), learner.predict_proba(probe))
    assert loaded.classes_ == learner.classes_ == ["b", "c", "a"]


def test_rename_changes_only_the_name_and_survives_a_checkpoint(
    case: tuple[str, str], tmp_path: Path
) -> None:
    name, depth = case
    learner = fitted(name, depth)
    probe = blobs(depth, PROBE, 3)
    before, scores = learner.predict(probe), learner.decision_function(probe)
    learner.rename("b", "mug")
    assert learner.classes_ == ["a", "mug", "c"]
    assert learner.predict(probe) == ["mug" if p == "b" else p for p in before]
    assert np.array_equal(learner.decision_function(probe), scores)
    with pytest.raises(LabelError, match="'c' is already a class"):
        learner.rename("a", "c")
    with pytest.raises(LabelError, match="unknown label 'b'"):
        learner.rename("b", "pen")
    with pytest.raises(LabelError, match="control characters"):
        learner.rename("a", "a\nb")
    assert learner.classes_ == ["a", "mug", "c"]  # the refusals changed nothing
    learner.save(tmp_path / "learner.ckpt")
    loaded = load_learner(tmp_path / "learner.ckpt", extractor_sha256=SHA)
    assert loaded.classes_ == ["a", "mug", "c"] and loaded.predict(probe) == learner.predict(probe)
    views = ["b"] * 6 + ["a"] * 6  # b's blob under its new name; the old name is free again
    learner.partial_fit(blobs(depth, views, 6), ["mug"] * 6 + ["b"] * 6)
    assert learner.classes_ == ["a", "mug", "c", "b"]


def test_an_unfitted_learner_saves_and_loads(case: tuple[str, str], tmp_path: Path) -> None:
    name, depth = case
    path = tmp_path / "learner.ckpt"
    make_learner(name, None, SHA, depth, **fast(name)).save(path)
    loaded = load_learner(path)
    assert loaded.classes_ == [] and learner_depth(loaded) == depth
    loaded.partial_fit(blobs(depth, FIRST, 1), FIRST)
    assert loaded.classes_ == ["a", "b"]


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


def test_a_damaged_or_foreign_checkpoint_is_a_checkpoint_error(
    case: tuple[str, str], tmp_path: Path
) -> None:
    name, depth = case
    path = tmp_path / "learner.ckpt"
    fitted(name, depth).save(path)
    blob = path.read_bytes()
    with pytest.raises(CheckpointError, match="made with extractor"):
        load_learner(path, extractor_sha256="6" * 64)
    damaged = {
        "truncated": blob[: len(blob) // 2],
        "a header only": blob[:20],
        "bit-flipped": flip(blob, len(blob) - 30),
        "empty": b"",
    }
    for what, data in damaged.items():
        path.write_bytes(data)
        for load in (load_learner, LEARNERS[name].cls.load):
            with pytest.raises(CheckpointError):
                load(path)
                pytest.fail(f"a {what} checkpoint was loaded by {load.__qualname__}")


def test_a_checkpoint_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    save_state(path, {"kind": "Perceptron", "extractor_sha256": None}, {})
    with pytest.raises(CheckpointError, match="'Perceptron', which no learner reads"):
        load_learner(path)
    with pytest.raises(CheckpointError, match="not a 'StreamingLDA'"):
        LEARNERS["slda"].cls.load(path)


SHAPE = r"must have shape \(N, |takes \(N, "  # AR1Star words it its own way for now


def bad_batches(depth: str) -> list[tuple[Any, Any, type[Exception], str]]:
    x = blobs(depth, ["a", "c"], 6)
    nan, inf = x.copy(), x.copy()
    nan.reshape(-1)[7] = np.nan
    inf.reshape(-1)[3] = np.inf
    wrong = np.zeros((2, 4, 4, 64) if depth == "latent" else (2, 640), np.float32)
    return [
        (x[0], ["a"], FrameError, SHAPE),
        (wrong, ["a", "c"], FrameError, SHAPE),
        (
            x.reshape(2, -1)[:, :5] if depth == "latent" else x[:, None],
            ["a"] * 2,
            FrameError,
            SHAPE,
        ),
        (nan, ["a", "c"], FrameError, "NaN or infinite"),
        (inf, ["a", "c"], FrameError, "NaN or infinite"),
        (x[:0], [], FrameError, "empty batch"),
        (x, ["a"], LabelError, "2 patterns but 1 labels"),
        (x, ["a", "c", "c"], LabelError, "2 patterns but 3 labels"),
        (x, ["new", 1.5], LabelError, "str or an int"),
        (x, ["new", True], LabelError, "str or an int"),
        (x, ["x" * 65, "a"], LabelError, "1 to 64 characters"),
    ]


def test_a_refused_batch_leaves_the_learner_unchanged(
    case: tuple[str, str], tmp_path: Path
) -> None:
    name, depth = case
    learner = fitted(name, depth)
    probe = blobs(depth, PROBE, 3)
    proba = learner.predict_proba(probe)
    learner.save(tmp_path / "before.ckpt")
    for x, y, error, message in bad_batches(depth):
        with pytest.raises(error, match=message):
            learner.partial_fit(x, y)
        if error is FrameError:
            with pytest.raises(FrameError):
                learner.predict(x)
    learner.save(tmp_path / "after.ckpt")
    assert (tmp_path / "after.ckpt").read_bytes() == (tmp_path / "before.ckpt").read_bytes()
    assert np.array_equal(learner.predict_proba(probe), proba)
    assert learner.classes_ == ["a", "b", "c"] and learner.batches_seen == 2


def refused_by_the_shared_checks(learner: Learner, depth: str) -> None:
    """Batches that only :func:`check_batch` and :func:`check_labels` refuse so far."""
    x = blobs(depth, ["a", "c"], 6)
    for wrong in (x.astype(str), x > 1):
        with pytest.raises(FrameError, match="numeric"):
            learner.partial_fit(wrong, ["a", "c"])
    with pytest.raises(LabelError, match="got a str"):
        learner.partial_fit(x, "ac")
    assert learner.batches_seen == 2


@pytest.mark.parametrize(("name", "depth"), [c for c in CASES if c[0] not in LEARNERS_OF_AR1])
def test_strings_booleans_and_one_str_of_labels_are_refused(name: str, depth: str) -> None:
    needs(name)
    refused_by_the_shared_checks(fitted(name, depth), depth)


def test_ar1_refuses_strings_booleans_and_one_str_of_labels() -> None:
    refused_by_the_shared_checks(fitted("ar1", "pool"), "pool")


# ---------------------------------------------------------------------------------- registry
@pytest.mark.parametrize(
    ("name", "depth", "options", "message"),
    [
        ("perceptron", None, {}, "unknown learner 'perceptron'"),
        ("sdla", None, {}, "did you mean 'slda'"),
        ("ncm", "latent", {}, "learner 'ncm' eats pool features, not 'latent'"),
        ("ar1", "middle", {}, "eats latent or pool features, not 'middle'"),
        ("ar1", None, {"repaly_mb": 4}, "'repaly_mb' is not an option.*did you mean 'replay_mb'"),
        ("ncm", None, {"shrinkage": 0.1}, "not an option of learner 'ncm'.*option of slda"),
        ("ar1", None, {"replay_per_epoch": -1}, "replay_per_epoch must be >= 0 or None, got -1"),
        ("ar1", None, {"replay_mb": -1.0}, "replay_mb must be >= 0"),
        ("ar1", None, {"replay_mb": "4"}, "replay_mb = '4': expected a number"),
        ("ar1", None, {"replay_mb": float("inf")}, "replay_mb = inf: expected a number"),
        ("ar1", None, {"epochs": 1.5}, "epochs = 1.5: expected an integer"),
        ("ar1", None, {"epochs": True}, "epochs = True: expected an integer"),
        ("ar1", None, {"epochs": 0}, "epochs must be >= 1"),
        ("ar1", None, {"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ("ar1", None, {"replay_codec": "jpeg"}, "replay_codec must be one of .* got .jpeg."),
        ("ar1", None, {"replay_grid": (0.5, 300)}, "zero must be an int code"),
        ("cwr", None, {"unknown_threshold": 2.0}, r"unknown_threshold must be in \[0, 1\]"),
        ("slda", None, {"shrinkage": 0.0}, r"shrinkage must be .oas. or a number in \(0, 1\]"),
        ("slda", None, {"streaming_covariance": "yes"}, "expected true or false"),
        ("ncm", None, {"unknown_threshold": -0.1}, r"unknown_threshold must be in \[0, 1\]"),
        ("sgd", None, {"max_classes": 2}, "max_classes must be an int >= 3"),
        ("knn", None, {"k": 0}, "k must be an int >= 1"),
    ],
)
def test_bad_learners_options_and_values_are_config_errors(
    name: str, depth: str | None, options: dict[str, Any], message: str
) -> None:
    needs(name)
    with pytest.raises(ConfigError, match=message):
        make_learner(name, None, SHA, depth, **options)
    with pytest.raises(ConfigError, match=message):
        validate(name, depth, options)


def test_depth_is_not_an_option() -> None:
    with pytest.raises(ConfigError, match=r"'depth' is not an option.*the extractor's cut"):
        validate("ar1", None, {"depth": "pool"})


def test_options_are_converted_and_reach_the_learner() -> None:
    ar1 = make_learner("ar1", depth="pool", replay_mb=2, replay_per_epoch=None, seed=3)
    assert ar1.config.replay_mb == 2.0 and ar1.config.replay_per_epoch is None  # type: ignore[attr-defined]
    assert ar1.config.depth == "pool" and ar1.config.seed == 3  # type: ignore[attr-defined]
    cwr = make_learner("cwr", depth="pool", epochs=3)
    assert cwr.config.replay_mb == 0.0 and cwr.config.epochs == 3  # type: ignore[attr-defined]
    slda = make_learner("slda", None, SHA, shrinkage=1, streaming_covariance=False)
    assert (slda.shrinkage, slda.streaming_covariance) == (1.0, False)  # type: ignore[attr-defined]
    assert validate("ar1", "latent", {"replay_grid": [0.5, 3]}) == {"replay_grid": (0.5, 3)}
    assert all(spec.describe().startswith(f"{spec.name}: ") for spec in LEARNERS.values())


def test_sklearn_heads_prediction_flops_match_a_hand_count_and_knns_grow() -> None:
    """SGD scores the live classes linearly; kNN compares the frame with every pattern it
    stores, so its prediction cost grows with the stream while its update costs nothing."""
    pytest.importorskip("sklearn")
    d = 1280
    sgd = fitted("sgd", "pool")
    assert sgd.predict_flops == 2 * d * 3 + 3  # coefficients of 3 live classes, intercepts
    knn = make_learner("knn", None, SHA, "pool")
    costs = []
    for batch in (FIRST, SECOND, PROBE):
        knn.partial_fit(blobs("pool", batch, 1), batch)
        assert knn.last_update_flops == 0
        costs.append(knn.predict_flops)
    stored = np.cumsum([len(FIRST), len(SECOND), len(PROBE)])
    # both sides normalised (3 an element, the stored side each call), dot products, 1 - s
    assert costs == [int(5 * d * n + 3 * d + 2 * n) for n in stored]
    knn.forget("a")
    n = stored[-1] - FIRST.count("a") - PROBE.count("a")
    assert knn.predict_flops == 5 * d * n + 3 * d + 2 * n


def test_the_sklearn_learners_need_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    for name in SKLEARN:
        with pytest.raises(MissingExtraError, match=r"pip install 'edge-cl\[study\]'"):
            make_learner(name)
    assert learner_name(make_learner("ncm")) == "ncm"  # the others do not


# ------------------------------------------------------------------------------- real data
OBJECTS = ("obj3", "obj11", "obj25")


@pytest.fixture(scope="module")
def real(datasets: Path, manifest: Manifest) -> dict[str, tuple[dict[str, np.ndarray], str]]:
    """Latents and pooled features (int8 ONNX, 128 px) of 18 COIL-100 views of 3 objects."""
    images = datasets / "coil100" / "images"
    out = {}
    for cut in ("latent", "pool"):
        extractor = open_extractor(cut, "onnx", "int8", 128, 2, manifest=manifest)
        features = {}
        for obj in OBJECTS:
            files = sorted(images.glob(f"{obj}__*.png"), key=lambda p: int(p.stem.split("__")[1]))
            features[obj] = extractor.frames([read_image(f) for f in files[::4]])
        out[cut] = (features, extractor.artifact.sha256)
    return out


FORGETFUL = {"naive", "cwr"}
"""Learners without replay or statistics of the past: they need not remember earlier batches."""


def test_real_features_are_learned_by_every_learner(
    case: tuple[str, str],
    real: dict[str, tuple[dict[str, np.ndarray], str]],
    manifest: Manifest,
    tmp_path: Path,
) -> None:
    name, depth = case
    features, sha = real[depth]
    head = head_arrays(manifest.head())
    learner = make_learner(name, head, sha, depth)
    first = np.concatenate([features[o][0::2] for o in OBJECTS[:2]])
    learner.partial_fit(first, [o for o in OBJECTS[:2] for _ in range(9)])
    learner.partial_fit(features["obj25"][0::2], ["obj25"] * 9)
    assert learner.predict(features["obj25"][1::2]) == ["obj25"] * 9
    test = np.concatenate([features[o][1::2] for o in OBJECTS])
    truth = [o for o in OBJECTS for _ in range(9)]
    accuracy = np.mean([p == t for p, t in zip(learner.predict(test), truth, strict=True)])
    if name not in FORGETFUL:
        assert accuracy >= 0.9, accuracy
    learner.save(tmp_path / "real.ckpt")
    loaded = load_learner(tmp_path / "real.ckpt", extractor_sha256=sha)
    assert np.array_equal(loaded.predict_proba(test), learner.predict_proba(test))
