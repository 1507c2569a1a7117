from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge_cl.bench import study
from edge_cl.device.classifier import new_learner
from edge_cl.device.config import DeviceConfig
from edge_cl.errors import CheckpointError, FrameError, LabelError, NotFittedError
from edge_cl.extractor import open_extractor
from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image
from edge_cl.learner.ar1 import AR1Star, CWRStar, NaiveFineTune, latent_summary
from edge_cl.learner.checkpoint import load_state, save_state
from edge_cl.learner.config import BASELINE_SETTINGS
from edge_cl.learner.cumulative import Cumulative
from edge_cl.learner.gaussian import ClassGaussians
from edge_cl.learner.layers import BatchRenorm
from edge_cl.learner.network import NOVELTY_PROBES, NOVELTY_WINDOW


def blobs(
    rng: np.random.Generator, classes: list[int], n: int, shape: tuple[int, ...] = (1280,)
) -> tuple[np.ndarray, list[str]]:
    """Separable synthetic patterns: a shared component (as real features have, and what makes
    a naive learner favour its latest classes) plus a class direction plus noise."""
    fixed = np.random.default_rng(123)
    shared = 2.0 * np.abs(fixed.normal(size=shape))
    centres = fixed.normal(size=(20, *shape))
    x = np.concatenate([shared + centres[c] + 0.5 * rng.normal(size=(n, *shape)) for c in classes])
    return x.astype(np.float32), [f"c{c}" for c in classes for _ in range(n)]


def accuracy(learner: AR1Star, x: np.ndarray, y: list[str]) -> float:
    return float(np.mean([a == b for a, b in zip(learner.predict(x), y, strict=True)]))


def test_cwr_consolidation_matches_the_formula_by_hand() -> None:
    learner = AR1Star(depth="pool", replay_mb=0)
    learner.labels.fit(["a", "b", "c"])
    learner._grow(3)
    learner.cw[:] = 0.0
    learner.cw[:, 0] = 1.0  # class a seen before, 3 patterns
    learner.past[:] = [3, 0, 5]
    w = learner.output.params["weight"]
    w[:] = 0.0
    w[:, 0], w[:, 1], w[:, 2] = 4.0, 2.0, 9.0  # c is not present: must stay untouched
    present = np.array([0, 1])
    cur = np.array([12, 4, 0])
    learner._end_batch(present, cur)
    # g = mean(4, 2) = 3; a: w = 1, alpha = sqrt(3 / 12) = 0.5, cw = (1 * 0.5 + 1) / 1.5 = 1
    # b: new class, cw = 2 - 3 = -1
    assert np.allclose(learner.cw[:, 0], 1.0)
    assert np.allclose(learner.cw[:, 1], -1.0)
    assert np.allclose(learner.cw[:, 2], 0.0)
    assert learner.past.tolist() == [15, 4, 5]
    learner.output.params["weight"][:, 0] = 7.0
    learner.output.params["weight"][:, 1] = 1.0
    learner._end_batch(present, np.array([15, 4, 0]))
    # g = 4; a: w = 3, alpha = 1, cw = (1 + 3) / 2 = 2; b: w = -3, alpha = 1, cw = (-1 - 3) / 2
    assert np.allclose(learner.cw[:, 0], 2.0) and np.allclose(learner.cw[:, 1], -2.0)


def test_minibatches_mix_new_and_replay_like_the_reference() -> None:
    learner = AR1Star(depth="pool", minibatch=128)
    chunks = list(learner._minibatches(300, 1500))
    assert len(chunks) == 14  # (300 + 1500) // 128
    assert {len(new) for new, _ in chunks} <= {21, 22}
    assert {len(old) for _, old in chunks} <= {107, 108}
    assert sorted(np.concatenate([n for n, _ in chunks]).tolist()) == list(range(300))
    assert sorted(np.concatenate([o for _, o in chunks]).tolist()) == list(range(1500))


@pytest.mark.parametrize("depth", ["pool", "latent"])
def test_replay_and_cwr_remember_old_classes_where_naive_forgets(depth: str) -> None:
    rng = np.random.default_rng(0)
    shape = (1280,) if depth == "pool" else (2, 2, 320)
    stream = [blobs(rng, [2 * i, 2 * i + 1], 30, shape) for i in range(4)]
    test_x, test_y = blobs(np.random.default_rng(1), list(range(8)), 10, shape)
    kw = {"depth": depth, "epochs": 4, "lr_first": 0.003, "lr": 0.003}
    ar1, naive = AR1Star(replay_mb=2, **kw), NaiveFineTune(**kw)
    for x, y in stream:
        ar1.partial_fit(x, y)
        naive.partial_fit(x, y)
    assert ar1.classes_ == [f"c{c}" for c in range(8)]
    assert accuracy(ar1, test_x, test_y) >= 0.9
    assert accuracy(naive, test_x, test_y) <= 0.5  # only the last batch's classes survive


def test_first_batch_ramps_batch_renorm_then_slows_its_statistics() -> None:
    rng = np.random.default_rng(0)
    learner = AR1Star(depth="latent", epochs=1, minibatch=16)
    norm = learner.latent[1]
    assert isinstance(norm, BatchRenorm)
    x, y = blobs(rng, [0, 1], 40, (2, 2, 320))
    learner.partial_fit(x, y)
    assert 1.0 < norm.r_max <= 1.25 and 0.0 < norm.d_max <= 0.5
    learner.partial_fit(*blobs(rng, [2], 20, (2, 2, 320)))
    assert norm.momentum == pytest.approx(1e-3)  # AR1Config.brn_momentum, 10x below the first's
    assert (norm.r_max, norm.d_max) == (1.25, 0.5)


def test_references_keep_their_rates_when_ar1_defaults_change() -> None:
    defaults = AR1Star().config
    assert (defaults.lr, defaults.latent_lr_scale, defaults.brn_momentum) == (0.005, 18.0, 1e-3)
    assert defaults.gaussian_head and defaults.balanced_loss and defaults.replay_per_epoch == 512
    pinned = {"lr": 0.03, "latent_lr_scale": 3.0, "brn_momentum": 5e-5}
    plain = {"gaussian_head": False, "balanced_loss": False, "new_per_update": None}
    for kind in (Cumulative, CWRStar, NaiveFineTune):
        config = kind().config
        assert {name: getattr(config, name) for name in BASELINE_SETTINGS} == pinned | plain
    assert study.ALL_POSITIONS_RECIPE.items() >= BASELINE_SETTINGS.items()
    reference = {k: study.REFERENCE_RECIPE[k] for k in BASELINE_SETTINGS}
    assert reference == pinned | plain | {"latent_lr_scale": 1.0}


def test_latent_layers_train_in_the_first_latent_epochs_only() -> None:
    x, y = blobs(np.random.default_rng(0), [0, 1, 2], 20, (2, 2, 320))
    one = AR1Star(depth="latent", epochs=1, latent_epochs=1, replay_mb=0).partial_fit(x, y)
    four = AR1Star(depth="latent", epochs=4, latent_epochs=1, replay_mb=0).partial_fit(x, y)
    joint = AR1Star(depth="latent", epochs=4, latent_epochs=None, replay_mb=0).partial_fit(x, y)
    conv = [m.latent[0].params["weight"] for m in (one, four, joint)]
    np.testing.assert_array_equal(conv[0], conv[1])  # epochs 2-4 left the conv_head alone
    assert not np.array_equal(conv[1], conv[2])
    assert not np.array_equal(one.cw, four.cw)  # ... and trained the output layer
    out = 2 * 2 * 60 * 1280 * 3  # output-only: forward and weight gradient, no input gradient
    assert four.last_update_flops == one.last_update_flops + 3 * out
    gauss = ClassGaussians.update_flops(60, 640)  # once per batch, whatever the epochs
    assert joint.last_update_flops - gauss == 4 * (one.last_update_flops - gauss)


def test_latent_positions_train_and_store_a_random_subset_of_each_latent() -> None:
    rng = np.random.default_rng(0)
    x, y = blobs(rng, [0, 1], 16, (4, 4, 320))
    x[..., 0] = np.arange(32 * 16).reshape(32, 4, 4)  # channel 0 names (pattern, position)
    options = {"depth": "latent", "epochs": 1, "replay_codec": "float32", "gaussian_head": False}
    full = AR1Star(latent_positions=None, **options)
    half = AR1Star(latent_positions=8, **options)
    full.partial_fit(x, y)
    half.partial_fit(x, y)
    assert full.memory is not None and half.memory is not None
    assert full.memory.shape == (4, 4, 320) and half.memory.shape == (1, 8, 320)
    ids = half.memory.all()[0][:, 0, :, 0].astype(int)  # each stored pattern's positions
    assert len(ids) == 32
    assert (ids // 16 == ids[:, :1] // 16).all()  # all from one pattern ...
    assert all(len(set(row % 16)) == 8 for row in ids)  # ... 8 distinct positions of it
    assert len({tuple(sorted(row % 16)) for row in ids}) > 1  # a random subset per pattern
    labels = half.memory.all()[1]
    np.testing.assert_array_equal(labels, half.labels.transform(y)[ids[:, 0] // 16])
    # the conv_head runs on half the positions; the output layer sees each pattern once
    out = 2 * 32 * 1280 * 2
    assert full.last_update_flops - 3 * out == 2 * (half.last_update_flops - 3 * out)
    assert half.memory.capacity > 1.6 * full.memory.capacity  # same bytes, more patterns
    half.partial_fit(*blobs(rng, [2], 16, (4, 4, 320)))  # replay (1, 8) mixes with new (4, 4)
    state = half.rng.bit_generator.state
    p = half.predict_proba(x)  # prediction pools every position: no random draw
    assert half.rng.bit_generator.state == state
    np.testing.assert_array_equal(p, half.predict_proba(x))


def test_latent_positions_of_checkpoints_from_before_the_option_are_all(tmp_path: Path) -> None:
    x, y = blobs(np.random.default_rng(0), [0, 1], 10, (4, 4, 320))
    learner = AR1Star(depth="latent", epochs=1, latent_positions=None, replay_mb=1)
    learner.partial_fit(x, y).save(tmp_path / "new.ckpt")
    meta, arrays = load_state(tmp_path / "new.ckpt")
    del meta["config"]["latent_positions"]
    save_state(tmp_path / "old.ckpt", meta, arrays)
    loaded = AR1Star.load(tmp_path / "old.ckpt")
    assert loaded.config.latent_positions is None
    loaded.partial_fit(x, y)  # the stored (4, 4) patterns still mix with new ones
    loaded.config = replace(loaded.config, latent_positions=8)
    with pytest.raises(FrameError, match="replay memory holds patterns of shape"):
        loaded.partial_fit(x, y)  # 8 positions would not mix with the stored 4 x 4
    assert loaded.batches_seen == 2 and loaded.classes_ == ["c0", "c1"]
    with pytest.raises(ValueError, match="latent_positions"):
        AR1Star(latent_positions=0)


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.0])
def test_latent_lr_scale_scales_the_latent_layers_step_only(scale: float) -> None:
    x, y = blobs(np.random.default_rng(0), [0, 1], 20, (2, 2, 320))
    before = AR1Star(depth="latent", epochs=1, minibatch=64)
    conv0 = before.latent[0].params["weight"].copy()
    steps = {}
    for s in (1.0, scale):
        learner = AR1Star(depth="latent", epochs=1, minibatch=64, latent_lr_scale=s)
        learner.partial_fit(x, y)  # one minibatch: one SGD step from rest, so step = lr * grad
        steps[s] = (learner.latent[0].params["weight"] - conv0, learner.cw.copy())
    full = steps[1.0][0]
    assert np.abs(full).max() > 0
    tol = 1e-2 * np.abs(full).max()  # float32 rounding of weight - initial weight
    np.testing.assert_allclose(steps[scale][0], scale * full, rtol=0, atol=tol)
    np.testing.assert_array_equal(steps[scale][1], steps[1.0][1])  # the output layer: same step


def test_forget_drops_weights_counts_and_replay() -> None:
    rng = np.random.default_rng(0)
    learner = AR1Star(depth="pool", epochs=2, replay_mb=1)
    for classes in ([0, 1], [2], [3]):
        learner.partial_fit(*blobs(rng, classes, 20))
    assert learner.memory is not None
    index = learner.labels.transform(["c1"])[0]
    assert (learner.memory.labels == index).any()
    learner.forget("c1")
    assert learner.classes_ == ["c0", "c2", "c3"]
    assert not (learner.memory.labels == index).any()
    assert learner.past[index] == 0 and not learner.cw[:, index].any()
    x, _ = blobs(rng, [1], 10)
    assert "c1" not in learner.predict(x)
    assert learner.predict_proba(x).shape == (10, 3)
    with pytest.raises(LabelError, match="unknown label"):
        learner.forget("c1")
    learner.partial_fit(*blobs(rng, [1], 20))  # relearning a forgotten label works
    assert "c1" in learner.classes_


def test_bad_input_is_refused_and_changes_nothing() -> None:
    learner = AR1Star(depth="pool", epochs=1, replay_mb=1)
    with pytest.raises(NotFittedError):
        learner.predict(np.zeros((1, 1280), np.float32))
    x, y = blobs(np.random.default_rng(0), [0, 1], 10)
    learner.partial_fit(x, y)
    before = learner.predict_proba(x)
    bad_cases = [
        (np.zeros((4, 1280, 1), np.float32), ["a"] * 4, ValueError),
        (np.full((2, 1280), np.nan, np.float32), ["a", "b"], ValueError),
        (np.zeros((0, 1280), np.float32), [], ValueError),
        (x[:3], ["a", "b"], LabelError),
        (x[:2], ["ok", 3.5], LabelError),
        (x[:2], ["ok", "x" * 65], LabelError),
        (x[:2], ["ok", None], LabelError),
    ]
    for bad_x, bad_y, error in bad_cases:
        with pytest.raises(error):
            learner.partial_fit(bad_x, bad_y)
    assert learner.classes_ == ["c0", "c1"] and learner.batches_seen == 1
    assert np.array_equal(learner.predict_proba(x), before)


def train_stream(learner: AR1Star, batches: int, seed: int = 0) -> AR1Star:
    rng = np.random.default_rng(seed)
    shape = (2, 2, 320) if learner.config.depth == "latent" else (1280,)
    for i in range(batches):
        learner.partial_fit(*blobs(rng, [i % 5, (i + 2) % 5], 12, shape))
    return learner


def test_checkpoint_round_trip_is_bit_identical_mid_stream(tmp_path: Path) -> None:
    learner = train_stream(AR1Star(depth="latent", epochs=2, replay_mb=1, si_lambda=1.0), 3)
    norm = learner.latent[1]
    assert isinstance(norm, BatchRenorm)
    assert learner.si_importance and learner.memory is not None and len(learner.memory) > 0
    path = tmp_path / "state.ckpt"
    learner.save(path)
    loaded = AR1Star.load(path)
    probe, _ = blobs(np.random.default_rng(9), [0, 1, 2, 3, 4], 4, (2, 2, 320))
    assert np.array_equal(learner.predict_proba(probe), loaded.predict_proba(probe))
    loaded_norm = loaded.latent[1]
    assert isinstance(loaded_norm, BatchRenorm)
    assert np.array_equal(norm.running_mean, loaded_norm.running_mean)
    # continued training is identical too (RNG, replay memory, SI state all restored)
    train_stream(learner, 2, seed=5)
    train_stream(loaded, 2, seed=5)
    assert np.array_equal(learner.predict_proba(probe), loaded.predict_proba(probe))
    assert learner.total_flops == loaded.total_flops


def test_corrupt_checkpoints_are_refused_with_clear_errors(tmp_path: Path) -> None:
    learner = train_stream(
        AR1Star(depth="pool", epochs=1, replay_mb=1, extractor_sha256="a" * 64), 2
    )
    path = tmp_path / "state.ckpt"
    learner.save(path)
    blob = path.read_bytes()
    cases = {
        "truncated": blob[: len(blob) // 2],
        "checksum": blob[:-10] + bytes([blob[-10] ^ 1]) + blob[-9:],
        "magic": b"NOTEDGE!" + blob[8:],
        "version": blob[:8] + (99).to_bytes(4, "little") + blob[12:],
        "truncated \\(": blob[:10],
    }
    for message, data in cases.items():
        bad = tmp_path / f"{len(data)}.ckpt"
        bad.write_bytes(data)
        with pytest.raises(CheckpointError, match=message):
            AR1Star.load(bad)
    with pytest.raises(CheckpointError, match="extractor"):
        AR1Star.load(path, extractor_sha256="b" * 64)
    with pytest.raises(CheckpointError, match="not a 'CWRStar'"):
        CWRStar.load(path)
    assert AR1Star.load(path, extractor_sha256="a" * 64).classes_ == learner.classes_


def test_saving_over_an_existing_checkpoint_is_atomic(tmp_path: Path) -> None:
    learner = train_stream(AR1Star(depth="pool", epochs=1, replay_mb=1), 1)
    path = tmp_path / "state.ckpt"
    learner.save(path)
    train_stream(learner, 1, seed=3)
    learner.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.ckpt"]  # no temporary left behind
    assert AR1Star.load(path).batches_seen == 2


def test_synaptic_intelligence_anchors_the_important_weights() -> None:
    def weighted_drift(si_lambda: float) -> float:
        kw = {"epochs": 4, "lr_first": 0.05, "lr": 0.05, "latent_lr_scale": 3.0, "replay_mb": 0}
        learner = train_stream(AR1Star(depth="latent", si_lambda=1.0, latent_epochs=None, **kw), 2)
        importance = {k: v.copy() for k, v in learner.si_importance.items()}
        learner.config = replace(learner.config, si_lambda=si_lambda)
        start = {k: v.copy() for k, v in learner._si_params().items()}
        train_stream(learner, 2, seed=7)
        moved = learner._si_params()
        return sum(float((importance[k] * np.abs(moved[k] - start[k])).sum()) for k in start)

    si = AR1Star(depth="latent", epochs=3, latent_epochs=None, replay_mb=0, si_lambda=1.0)
    learner = train_stream(si, 2)
    importance = np.concatenate([v.ravel() for v in learner.si_importance.values()])
    assert importance.min() >= 0 and importance.max() <= 1e-3 and importance.max() > 0
    # the penalty halves how far the important weights move (1e4 * 1e-3 * the latent layers' lr,
    # 0.15, stays stable)
    assert weighted_drift(1e4) < 0.6 * weighted_drift(1e-9)


def test_calibrated_novelty_flags_the_share_of_known_patterns_asked_and_most_unseen() -> None:
    rng = np.random.default_rng(0)
    learner = AR1Star(depth="pool", epochs=3, minibatch=128, lr_first=0.01, replay_mb=0)
    learner.partial_fit(*blobs(rng, [0, 1, 2], 30))
    known, _ = blobs(rng, [0, 1, 2], 40)
    unseen, _ = blobs(rng, [5, 6], 40)
    assert learner.config.novelty_threshold is None
    assert not learner.predict_with_confidence(unseen)[2].any()  # never unknown uncalibrated
    threshold = learner.calibrate_unknown(known[::2], accept=0.9)
    assert learner.config.novelty_threshold == threshold
    _, _, unknown = learner.predict_with_confidence(known[1::2])
    assert unknown.mean() == pytest.approx(0.1, abs=0.08)
    assert np.array_equal(unknown, learner.novelty(known[1::2]) > threshold)
    assert learner.predict_with_confidence(unseen)[2].mean() > 0.9
    with pytest.raises(ValueError, match="accept must be in"):
        learner.calibrate_unknown(known, accept=0.0)


def test_teaching_keeps_scores_of_new_views_to_calibrate_on_and_they_survive_forget_and_saving(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    learner = AR1Star(depth="pool", epochs=2, replay_mb=1)
    learner.partial_fit(*blobs(rng, [0, 1], 30))
    assert len(learner.novelty_scores) == 0  # nothing was known before the first batch
    assert learner.calibrate_unknown_on_teaching(0.95) is None
    assert learner.config.novelty_threshold is None
    x, y = blobs(rng, [0, 1, 2], 30)  # c2 is new: only c0's and c1's views are scored
    expected = learner.novelty(x[:60][np.linspace(0, 59, NOVELTY_PROBES).astype(int)])
    learner.partial_fit(x, y)
    assert np.allclose(learner.novelty_scores, expected, atol=1e-5)
    assert sorted(set(learner.labels.inverse(learner.novelty_classes))) == ["c0", "c1"]
    threshold = learner.calibrate_unknown_on_teaching(0.95)
    assert threshold == pytest.approx(float(np.quantile(expected, 0.95)), rel=1e-5)
    learner.save(tmp_path / "a.npz")
    loaded = AR1Star.load(tmp_path / "a.npz")
    assert np.array_equal(loaded.novelty_scores, learner.novelty_scores)
    assert loaded.config.novelty_threshold == threshold
    xt, _ = blobs(rng, [0, 1, 2, 7], 10)
    assert np.array_equal(
        loaded.predict_with_confidence(xt)[2], learner.predict_with_confidence(xt)[2]
    )
    learner.forget("c0")
    assert "c0" not in learner.labels.inverse(learner.novelty_classes)
    assert len(learner.novelty_scores) == NOVELTY_PROBES // 2
    for _ in range(NOVELTY_WINDOW // NOVELTY_PROBES + 2):
        learner.partial_fit(*blobs(rng, [1, 2], 20))
    assert len(learner.novelty_scores) == NOVELTY_WINDOW


def test_cumulative_retrains_on_everything_and_grows() -> None:
    rng = np.random.default_rng(0)
    learner = Cumulative(depth="pool", epochs=3, lr_first=0.01)
    sizes = []
    for classes in ([0, 1], [2], [3]):
        learner.partial_fit(*blobs(rng, classes, 20))
        sizes.append(learner.nbytes)
    assert sizes[0] < sizes[1] < sizes[2]
    test_x, test_y = blobs(np.random.default_rng(1), [0, 1, 2, 3], 10)
    assert accuracy(learner, test_x, test_y) >= 0.9
    learner.forget("c0")
    assert sum(len(y) for y in learner.seen_y) == 60


@pytest.fixture(scope="module")
def coil_latents(datasets: Path, manifest: Manifest) -> tuple[np.ndarray, list[str], list[bool]]:
    """Real latents: 4 COIL-100 objects, 24 views each (every 15 degrees); every 3rd held out."""
    ex = open_extractor("latent", "litert", "int8", manifest=manifest)
    files, labels, held = [], [], []
    for obj in (3, 17, 42, 77):
        for k, angle in enumerate(range(0, 360, 15)):
            path = datasets / "coil100" / "images" / f"obj{obj}__{angle}.png"
            if path.exists():
                files.append(path)
                labels.append(f"obj{obj}")
                held.append(k % 3 == 1)
    return ex.frames([read_image(f) for f in files]), labels, held


def test_ar1_learns_real_objects_from_the_pretrained_head(
    coil_latents: tuple[np.ndarray, list[str], list[bool]], manifest: Manifest
) -> None:
    x, y, held = coil_latents
    train = [i for i, h in enumerate(held) if not h]
    test = [i for i, h in enumerate(held) if h]
    learner = AR1Star(head_arrays(manifest.head()), manifest.find().sha256, epochs=2, replay_mb=2)
    for obj in ("obj3", "obj17", "obj42", "obj77"):  # one object per batch: class-incremental
        idx = [i for i in train if y[i] == obj]
        learner.partial_fit(x[idx], [y[i] for i in idx])
    predicted = learner.predict(x[test])
    assert np.mean([p == y[i] for p, i in zip(predicted, test, strict=True)]) >= 0.9


def test_real_int8_latents_are_replayed_exactly_on_the_extractor_grid(
    coil_latents: tuple[np.ndarray, list[str], list[bool]], manifest: Manifest, tmp_path: Path
) -> None:
    x, y, _ = coil_latents
    artifact = manifest.find(cut="latent", format="tflite", precision="int8")
    grid = artifact.output_grid
    assert grid is not None
    config = DeviceConfig(state_dir=tmp_path, runtime="litert", precision="int8")
    assert new_learner(config, artifact.sha256, manifest).config.replay_grid is None  # default
    config = replace(config, learner_options={"replay_grid": True})
    learner = new_learner(config, artifact.sha256, manifest)  # the device passes the grid
    assert learner.config.replay_grid == grid
    first = [i for i, label in enumerate(y) if label in ("obj3", "obj17")]
    rest = [i for i in range(len(y)) if i not in first]
    learner.partial_fit(x[first], [y[i] for i in first])
    assert learner.memory is not None and len(learner.memory) == len(first)
    stored = learner.memory.all()[0]  # (n, 1, 8, 320): 8 positions of each real latent
    real = {p.tobytes() for p in x[first].reshape(-1, 320)}
    assert all(p.tobytes() in real for p in stored.reshape(-1, 320))  # every value exact
    learner.save(tmp_path / "grid.ckpt")
    loaded = AR1Star.load(tmp_path / "grid.ckpt", extractor_sha256=artifact.sha256)
    assert loaded.config.replay_grid == grid and loaded.memory is not None
    assert loaded.memory.grid == grid
    learner.partial_fit(x[rest], [y[i] for i in rest])
    loaded.partial_fit(x[rest], [y[i] for i in rest])
    assert np.array_equal(learner.predict_proba(x), loaded.predict_proba(x))
    fp32 = manifest.find(cut="latent", format="tflite", precision="fp32").sha256
    assert new_learner(config, fp32, manifest).config.replay_grid is None  # ranges per pattern
    with pytest.raises(ValueError, match="codec 'uint4' cannot use one"):
        AR1Star(replay_codec="uint4", replay_grid=grid)


def test_the_gaussian_head_adds_its_lda_scores_to_cwr_logits() -> None:
    rng = np.random.default_rng(0)
    shape = (2, 2, 320)
    learner = AR1Star(depth="latent", epochs=1, replay_mb=1)
    plain = AR1Star(depth="latent", epochs=1, replay_mb=1, gaussian_head=False)
    batches = [blobs(rng, [0, 1], 12, shape), blobs(rng, [2], 12, shape), blobs(rng, [0], 6, shape)]
    for x, y in batches:
        learner.partial_fit(x, y)
        plain.partial_fit(x, y)
    g = learner.gaussians
    assert g is not None and plain.gaussians is None
    x = np.concatenate([b[0] for b in batches])
    means = latent_summary(x)  # the Gaussian head sees each channel's mean and spread
    assert means.shape == (42, 640) and g.dim == 640
    labels = np.concatenate([learner.labels.transform(b[1]) for b in batches])
    for c in range(3):
        np.testing.assert_allclose(g.means[c], means[labels == c].mean(0), rtol=1e-5, atol=1e-5)
    assert g.counts.tolist() == [18, 12, 12] and g.patterns == 42
    probe, _ = blobs(rng, [0, 1, 2], 3, shape)
    live = learner.labels.transform(learner.classes_)
    cwr = learner._features(probe.copy(), train=False) @ learner.cw[:, live]
    expected = cwr + g.scores(latent_summary(probe), live)
    np.testing.assert_allclose(learner.decision_function(probe), expected, rtol=1e-5, atol=1e-4)
    assert learner.last_update_flops > plain.last_update_flops  # its statistics are counted
    learner.forget("c1")
    assert g.counts[1] == 0 and learner.decision_function(probe).shape == (9, 2)


def test_the_gaussian_head_round_trips_and_older_checkpoints_load_without_it(
    tmp_path: Path,
) -> None:
    learner = train_stream(AR1Star(depth="latent", epochs=1, replay_mb=1), 3)
    path = tmp_path / "state.ckpt"
    learner.save(path)
    loaded = AR1Star.load(path)
    probe, _ = blobs(np.random.default_rng(9), [0, 1, 2, 3, 4], 4, (2, 2, 320))
    assert np.array_equal(learner.predict_proba(probe), loaded.predict_proba(probe))
    meta, arrays = load_state(path)
    cut = {k: v for k, v in arrays.items() if k != "gauss.scatter"}
    save_state(tmp_path / "cut.ckpt", meta, cut)
    with pytest.raises(CheckpointError, match="usable"):
        AR1Star.load(tmp_path / "cut.ckpt")  # the head's statistics are part of the state
    for key in ("gaussian_head", "balanced_loss"):
        del meta["config"][key]
    save_state(tmp_path / "old.ckpt", meta, {k: v for k, v in arrays.items() if "gauss" not in k})
    old = AR1Star.load(tmp_path / "old.ckpt")  # before the Gaussian head: CWR* alone decides
    assert old.gaussians is None and not old.config.balanced_loss


def test_the_gaussian_head_on_the_mean_alone_and_checkpoints_from_before_the_spread(
    tmp_path: Path,
) -> None:
    mean = train_stream(AR1Star(depth="latent", epochs=1, replay_mb=1, gaussian_features="mean"), 3)
    assert mean.gaussians is not None and mean.gaussians.dim == 320
    path = tmp_path / "state.ckpt"
    mean.save(path)
    meta, arrays = load_state(path)
    del meta["config"]["gaussian_features"]  # written before the option: the mean alone
    save_state(tmp_path / "old.ckpt", meta, arrays)
    old = AR1Star.load(tmp_path / "old.ckpt")
    probe, _ = blobs(np.random.default_rng(9), [0, 1, 2, 3, 4], 4, (2, 2, 320))
    assert old.config.gaussian_features == "mean"
    assert np.array_equal(mean.predict_proba(probe), old.predict_proba(probe))
    meta["config"]["gaussian_features"] = "mean_std"  # 320-d statistics, 640-d config
    save_state(tmp_path / "mixed.ckpt", meta, arrays)
    with pytest.raises(CheckpointError, match="320-d statistics, its config makes 640-d"):
        AR1Star.load(tmp_path / "mixed.ckpt")
    with pytest.raises(ValueError, match="gaussian_features must be one of"):
        AR1Star(gaussian_features="max")


def test_balanced_loss_gives_every_class_of_a_batch_the_same_weight() -> None:
    cur = np.array([30, 0, 5, 5])
    w = AR1Star._class_weights(cur)
    assert w[1] == 0.0
    np.testing.assert_allclose(w[[0, 2, 3]] * cur[[0, 2, 3]], [40 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose((w * cur).sum(), cur.sum(), rtol=1e-6)  # mean weight 1
    rng = np.random.default_rng(0)
    x, y = blobs(rng, [0, 1], 16)
    steps = {}
    for balanced in (False, True):
        learner = AR1Star(depth="pool", epochs=1, minibatch=64, balanced_loss=balanced)
        learner.partial_fit(x[:20], y[:20])  # 16 of c0, 4 of c1: the weights differ from 1
        steps[balanced] = learner.cw.copy()
    assert not np.allclose(steps[False], steps[True])


def test_one_default_learner_for_the_readme_the_device_and_the_study(tmp_path: Path) -> None:
    manifest = Manifest.load()
    sha = manifest.find(cut="latent", format="tflite", precision="int8").sha256
    head = head_arrays(manifest.head())
    device = new_learner(DeviceConfig(state_dir=tmp_path, runtime="litert"), sha, manifest)
    study_learner = study.strategies()["ar1-latent"].make(head, 0)
    readme = AR1Star(head, sha)
    assert isinstance(study_learner, AR1Star) and isinstance(device, AR1Star)
    for learner in (device, study_learner):
        assert replace(learner.config, seed=0) == readme.config
    with pytest.raises(ValueError, match="replay_per_epoch"):
        AR1Star(head, sha, replay_per_epoch=-1)  # refused when built, not mid-update


def test_a_large_batch_trains_on_a_bounded_sample_and_the_gaussians_see_it_all() -> None:
    rng = np.random.default_rng(0)
    x, y = blobs(rng, [0, 1], 30, (2, 2, 320))
    capped = AR1Star(depth="latent", epochs=1, replay_mb=1, new_per_update=16).partial_fit(x, y)
    some = list(range(8)) + list(range(30, 38))  # 16 patterns of both classes: as many slots
    small = AR1Star(depth="latent", epochs=1, replay_mb=1).partial_fit(
        x[some], [y[i] for i in some]
    )
    gauss = ClassGaussians.update_flops
    assert capped.last_update_flops - gauss(60, 640) == small.last_update_flops - gauss(16, 640)
    assert capped.gaussians is not None and capped.gaussians.counts.tolist() == [30, 30]
    assert capped.past.sum() == 16  # CWR* trained on the sample
    assert capped.memory is not None and len(capped.memory) == 60  # every pattern may be kept
    uncapped = AR1Star(depth="latent", epochs=1, replay_mb=1, new_per_update=None)
    assert uncapped.partial_fit(x, y).past.sum() == 60
    with pytest.raises(ValueError, match="new_per_update"):
        AR1Star(new_per_update=0)


def test_prediction_flops_match_a_hand_count_of_each_layer() -> None:
    """One frame of a (2, 3, 320) latent over 3 classes, counted by hand layer by layer; the
    count of the layers up to the pool is the layers' own ``flops``, and it follows the shape
    learned, the classes known and the Gaussian head."""
    x, y = blobs(np.random.default_rng(0), [0, 1, 2], 4, (2, 3, 320))
    positions, k = 6, 3
    conv, norm = 2 * positions * 320 * 1280, 2 * positions * 1280  # matmul; scale and shift
    relu, pool = 2 * positions * 1280, positions * 1280  # two comparisons; one addition
    output = 2 * 1280 * k
    summary = positions * 320 * (1 + 3)  # mean, then subtract, square, add for the spread
    gauss = 2 * 640 * k + k + k  # its scores, their bias, the sum with the CWR* logits
    ar1 = AR1Star(depth="latent", epochs=1, replay_mb=0.5)
    assert ar1.predict_flops == 0  # nothing learned, nothing to classify
    ar1.partial_fit(x, y)
    assert ar1.predict_flops == conv + norm + relu + pool + output + summary + gauss
    shape: tuple[int, ...] = (1, 2, 3, 320)
    layers = 0
    for layer in ar1.latent:
        layers += layer.flops(shape)
        shape = layer.output_shape(shape)
    assert layers == conv + norm + relu + pool
    plain = AR1Star(depth="latent", epochs=1, replay_mb=0.5, gaussian_head=False)
    assert plain.partial_fit(x, y).predict_flops == conv + norm + relu + pool + output
    for cls in (NaiveFineTune, Cumulative):
        assert cls(depth="latent", epochs=1).partial_fit(x, y).predict_flops == layers + output
    pool_ar1 = AR1Star(depth="pool", epochs=1, replay_mb=0.5)
    xp, yp = blobs(np.random.default_rng(1), [0, 1], 4)
    assert pool_ar1.partial_fit(xp, yp).predict_flops == 2 * 1280 * 2 + (2 * 1280 * 2 + 2) + 2
    assert CWRStar(depth="pool", epochs=1).partial_fit(xp, yp).predict_flops == 2 * 1280 * 2
    ar1.forget("c1")
    assert ar1.predict_flops == conv + norm + relu + pool + summary + (2 * 1280 + 2 * 640 + 2) * 2


def test_prediction_flops_survive_a_checkpoint_and_older_ones_count_from_the_next_batch(
    tmp_path: Path,
) -> None:
    x, y = blobs(np.random.default_rng(0), [0, 1], 4, (4, 4, 320))
    learner = AR1Star(depth="latent", epochs=1, replay_mb=0.5).partial_fit(x, y)
    learner.save(tmp_path / "new.ckpt")
    assert AR1Star.load(tmp_path / "new.ckpt").predict_flops == learner.predict_flops
    meta, arrays = load_state(tmp_path / "new.ckpt")
    del meta["pattern_shape"]
    save_state(tmp_path / "old.ckpt", meta, arrays)
    old = AR1Star.load(tmp_path / "old.ckpt")
    assert old.pattern_shape is None and old.predict_flops == 2 * 1280 * 2 + 2 * 640 * 2 + 4
    assert old.partial_fit(x, y).predict_flops == learner.predict_flops


def test_a_cumulative_retrain_depends_on_the_data_so_far_alone() -> None:
    """Retraining after every batch, only at some batches, or from a checkpoint gives the same
    network at the last batch: each retrain draws from (seed, batches seen), not from what the
    earlier retrains drew."""
    rng = np.random.default_rng(0)
    batches = [blobs(rng, classes, 8) for classes in ([0, 1], [2], [0, 3], [1, 2])]
    test_x, _ = blobs(np.random.default_rng(1), [0, 1, 2, 3], 5)
    every, sparse, once = (Cumulative(depth="pool", epochs=2, seed=3) for _ in range(3))
    for i, (x, y) in enumerate(batches):
        every.partial_fit(x, y)
        sparse.add(x, y)
        if i in (0, 2):
            sparse.retrain()
        once.add(x, y)
    sparse.retrain()
    once.retrain()
    for other in (sparse, once):
        np.testing.assert_array_equal(other.cw, every.cw)
        np.testing.assert_array_equal(other.predict_proba(test_x), every.predict_proba(test_x))
    reseeded = Cumulative(depth="pool", epochs=2, seed=4)
    for x, y in batches:
        reseeded.add(x, y)
    reseeded.retrain()
    assert not np.array_equal(reseeded.cw, every.cw)  # the seed still decides the shuffles
