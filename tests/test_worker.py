from __future__ import annotations

import copy
import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_cl.device.classifier import Classifier, Verdict, new_learner, resume_learner
from edge_cl.device.commands import unknown_threshold
from edge_cl.device.config import DeviceConfig
from edge_cl.device.state import DeviceState
from edge_cl.device.worker import (
    MAX_QUEUED_UPDATES,
    JobResult,
    LearnerWorker,
    WorkerBusy,
    recalibrate,
)
from edge_cl.errors import ConfigError, LabelError
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image
from edge_cl.learner.ar1 import AR1Star
from edge_cl.learner.registry import learner_depth, learner_name, load_learner

OBJECTS = ("obj3", "obj11", "obj25", "obj40")


def features(classifier: Classifier, datasets: Path) -> dict[str, np.ndarray]:
    """What ``classifier``'s extractor makes of 36 real COIL-100 views of each object (every
    10 degrees)."""
    images = datasets / "coil100" / "images"
    out = {}
    for obj in OBJECTS:
        files = sorted(images.glob(f"{obj}__*.png"), key=lambda p: int(p.stem.split("__")[1]))
        out[obj] = classifier.latents([read_image(f) for f in files[::2]])
    return out


@pytest.fixture(scope="module")
def latents(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Latents of the views (the default learner, ar1, eats the latent cut)."""
    config = DeviceConfig(state_dir=tmp_path_factory.mktemp("unused"))
    return features(Classifier.open(config), datasets)


@pytest.fixture(scope="module")
def pooled(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Pooled features of the views (the pool cut that ncm, slda, sgd and knn eat)."""
    config = DeviceConfig(state_dir=tmp_path_factory.mktemp("unused"), learner="ncm")
    return features(Classifier.open(config), datasets)


@pytest.fixture
def classifier(tmp_path: Path) -> Classifier:
    return Classifier.open(DeviceConfig(state_dir=tmp_path))


def test_learning_swaps_the_model_and_checkpoints(
    classifier: Classifier, latents: dict[str, np.ndarray], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "learner.ckpt"
    states = []
    with LearnerWorker(classifier, checkpoint, on_state=states.append) as worker:
        before = classifier.learner
        first = worker.learn("obj3", latents["obj3"][:30], since=time.monotonic()).result(60)
        assert first.ok and first.classes == ("obj3",) and first.patterns == 30
        assert classifier.learner is not before and before.classes_ == []
        assert AR1Star.load(checkpoint).classes_ == ["obj3"]
        second = worker.learn("obj11", latents["obj11"][:30]).result(60)
        assert second.ok and second.checkpoint_bytes == checkpoint.stat().st_size
        assert not worker.dirty and not worker.busy
    assert 0 < first.update_seconds <= first.latency_seconds
    assert AR1Star.load(checkpoint).classes_ == ["obj3", "obj11"]
    assert [s.name for s in states[:3]] == ["LEARNING", "SAVING", "IDLE"]
    held_out = classifier.predict(latents["obj11"][30:])
    assert [v.label for v in held_out] == ["obj11"] * 6


def test_inference_during_training_answers_with_the_old_model(
    classifier: Classifier,
    latents: dict[str, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An update held inside its training does not hold up predictions (they answer with the
    old model); while it trains for real they answer with the old or the new one, never a
    half-updated one."""
    training, release = threading.Event(), threading.Event()
    fit = AR1Star.partial_fit

    def held_fit(self: AR1Star, *args: Any, **kwargs: Any) -> Any:  # on the learner's thread
        training.set()
        assert release.wait(120), "the test never let the update go"
        return fit(self, *args, **kwargs)

    with LearnerWorker(classifier, tmp_path / "learner.ckpt") as worker:
        worker.learn("obj3", latents["obj3"][:30]).result(60)
        worker.learn("obj11", latents["obj11"][:30]).result(60)
        old = classifier.learner
        probe = np.concatenate([latents[o][30:32] for o in OBJECTS])
        old_answer = classifier.predict(probe)
        big = np.concatenate([latents["obj25"]] * 10)  # 360 latents, every epoch through the
        old.config = replace(old.config, latent_epochs=None)  # latent layers: a long update
        monkeypatch.setattr(AR1Star, "partial_fit", held_fit)
        future = worker.learn("obj25", big)
        held: list[list[Verdict]] = []
        predicting = threading.Thread(
            target=lambda: held.extend(classifier.predict(probe) for _ in range(10))
        )
        try:
            assert training.wait(60), "the update never started"
            predicting.start()
            predicting.join(60)
            assert not predicting.is_alive(), "inference waited for the training"
        finally:
            release.set()
        during: list[list[Verdict]] = []
        while not future.done():
            during.append(classifier.predict(probe))
        result = future.result(120)
    assert result.ok
    assert held == [old_answer] * 10
    new_answer = classifier.predict(probe)
    assert new_answer != old_answer
    assert all(a in (old_answer, new_answer) for a in during), "a half-updated model answered"
    assert old.classes_ == ["obj3", "obj11"]  # the old model was never touched
    assert classifier.predict(probe) == new_answer


def test_a_failing_job_keeps_the_previous_model(
    classifier: Classifier, latents: dict[str, np.ndarray], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "learner.ckpt"
    reported = []
    with LearnerWorker(classifier, checkpoint, on_result=reported.append) as worker:
        worker.learn("obj3", latents["obj3"][:30]).result(60)
        model, saved = classifier.learner, checkpoint.read_bytes()
        too_long = worker.learn("x" * 65, latents["obj11"][:30]).result(60)
        wrong_shape = worker.learn("obj11", latents["obj11"][:30, 0, 0]).result(60)
        unknown = worker.forget("obj99").result(60)
        assert worker.learn("obj11", latents["obj11"][:30]).result(60).ok
    assert not too_long.ok and "1 to 64 characters" in (too_long.error or "")
    assert not wrong_shape.ok and "(N, h, w, 320)" in (wrong_shape.error or "")
    assert not unknown.ok and "unknown label 'obj99'" in (unknown.error or "")
    assert [r.ok for r in reported] == [True, False, False, False, True]
    assert {r.failed_at for r in reported if not r.ok} == {"update"}
    assert model.classes_ == ["obj3"] and classifier.learner.classes_ == ["obj3", "obj11"]
    assert saved != checkpoint.read_bytes()


def test_forget_and_save_write_the_checkpoint(
    classifier: Classifier, latents: dict[str, np.ndarray], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "learner.ckpt"
    with LearnerWorker(classifier, checkpoint, unknown_accept=0.9) as worker:
        for obj in OBJECTS[:3]:
            worker.learn(obj, latents[obj][:30])
        assert worker.wait_idle(120)
        assert unknown_threshold(classifier.learner) not in (None, 0.0)  # calibrated on replay
        forgot = worker.forget("obj11").result(60)
        assert forgot.ok and forgot.classes == ("obj3", "obj25")
        assert AR1Star.load(checkpoint).classes_ == ["obj3", "obj25"]
        checkpoint.unlink()
        saved = worker.save().result(60)
    assert saved.ok and saved.checkpoint_bytes == checkpoint.stat().st_size


def test_rename_keeps_what_was_learned_and_writes_the_checkpoint(
    classifier: Classifier, latents: dict[str, np.ndarray], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "learner.ckpt"
    probe = np.concatenate([latents[o][30:] for o in OBJECTS[:2]])
    with LearnerWorker(classifier, checkpoint) as worker:
        for obj in OBJECTS[:2]:
            worker.learn(obj, latents[obj][:30])
        assert worker.wait_idle(120) and worker.last_update is not None
        before = [v.label for v in classifier.predict(probe)]
        renamed = worker.rename(OBJECTS[0], "mug").result(60)
        taken = worker.rename("mug", OBJECTS[1]).result(60)
        with pytest.raises(LabelError, match="control characters"):
            worker.rename("mug", "a\tb")
    assert renamed.ok and renamed.classes == ("mug", OBJECTS[1])
    assert not taken.ok and "already a class" in str(taken.error)
    after = [v.label for v in classifier.predict(probe)]
    assert after == ["mug" if b == OBJECTS[0] else b for b in before]
    assert AR1Star.load(checkpoint).classes_ == ["mug", OBJECTS[1]]


def test_unknown_accept_is_set_live_and_recalibrates_a_copy(
    classifier: Classifier, latents: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """A bad value is refused before anything is queued; a good one recalibrates on the
    worker's thread, swaps in a new model, checkpoints it, and later updates calibrate with it."""
    checkpoint = tmp_path / "learner.ckpt"
    probe = np.concatenate([latents[o][30:] for o in OBJECTS])
    with LearnerWorker(classifier, checkpoint, unknown_accept=0.95) as worker:
        for obj in OBJECTS[:2]:
            worker.learn(obj, latents[obj][:30])
        assert worker.wait_idle(120)
        before = classifier.learner
        for bad in (0, 0.0, -0.5, 1.5, math.nan, True, "0.9", None):
            with pytest.raises(ConfigError, match=r"must be a number in \(0, 1\]"):
                worker.set_unknown_accept(bad)  # type: ignore[arg-type]
        assert worker.unknown_accept == 0.95 and not worker.busy
        assert classifier.learner is before  # nothing changed
        result = worker.set_unknown_accept(0.5).result(60)
        assert result.ok and result.job == "recalibrate" and result.classes == tuple(OBJECTS[:2])
        assert worker.unknown_accept == 0.5
        after = classifier.learner
        assert after is not before and after.classes_ == before.classes_
        expected = copy.deepcopy(before)  # what calibrating the model in use at 0.5 gives
        recalibrate(expected, 0.5)
        threshold = unknown_threshold(after)
        assert threshold is not None and threshold == unknown_threshold(expected)
        assert unknown_threshold(load_learner(checkpoint)) == threshold  # checkpointed
        flagged = sum(v.unknown for v in classifier.predict(probe))
        worker.learn(OBJECTS[2], latents[OBJECTS[2]][:30]).result(60)
    assert flagged >= int(np.sum(before.predict_with_confidence(probe)[2]))  # fewer pass at 0.5
    assert worker.unknown_accept == 0.5  # a later update keeps the new value


def test_re_teaching_calibrates_on_the_views_scored_before_learning(
    classifier: Classifier, latents: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """Once a known object is taught again, the threshold comes from the novelty of its new
    views scored before they were learned (not from replay); ``unknown_accept`` 1 removes it."""
    with LearnerWorker(classifier, tmp_path / "learner.ckpt", unknown_accept=0.9) as worker:
        for obj in OBJECTS[:2]:
            worker.learn(obj, latents[obj][:18]).result(60)
        model = classifier.learner
        assert isinstance(model, AR1Star) and len(model.novelty_scores) == 0
        on_replay = model.config.novelty_threshold
        assert on_replay is not None  # no teaching scores yet: calibrated on replay
        assert worker.learn(OBJECTS[0], latents[OBJECTS[0]][18:]).result(60).ok
        model = classifier.learner
        assert isinstance(model, AR1Star) and len(model.novelty_scores) == 18
        assert model.config.novelty_threshold is not None  # fewer than 32 scores: replay still
        assert worker.learn(OBJECTS[1], latents[OBJECTS[1]][18:]).result(60).ok
        model = classifier.learner
        assert isinstance(model, AR1Star) and len(model.novelty_scores) == 36
        expected = float(np.quantile(model.novelty_scores.astype(np.float64), 0.9))
        assert model.config.novelty_threshold == expected
        assert worker.set_unknown_accept(1.0).result(60).ok
    model = classifier.learner
    assert isinstance(model, AR1Star) and model.config.novelty_threshold is None
    probe = np.concatenate([latents[o] for o in OBJECTS])
    assert not any(v.unknown for v in classifier.predict(probe))  # 1: nothing is unknown


def test_checkpoint_write_failure_is_reported(
    classifier: Classifier, latents: dict[str, np.ndarray], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with LearnerWorker(classifier, blocker / "learner.ckpt") as worker:
        result = worker.learn("obj3", latents["obj3"][:30]).result(60)
        assert worker.dirty
    assert not result.ok and "cannot write the checkpoint" in (result.error or "")
    assert result.failed_at == "checkpoint"
    assert classifier.learner.classes_ == ["obj3"]  # learned, kept in use, save to retry


@pytest.mark.parametrize("name", ["slda", "ncm"])
def test_a_pooled_learner_is_taught_checkpointed_and_resumed(
    name: str, pooled: dict[str, np.ndarray], latents: dict[str, np.ndarray], tmp_path: Path
) -> None:
    config = DeviceConfig(
        state_dir=tmp_path, learner=name, learner_options={"unknown_threshold": 0.2}
    )
    classifier = Classifier.open(config)
    assert classifier.extractor.artifact.cut == "pool" and config.cut == "pool"
    assert learner_name(classifier.learner) == name and classifier.resumed.startswith("no")
    with LearnerWorker(classifier, config.checkpoint, unknown_accept=0.9) as worker:
        for obj in OBJECTS[:3]:
            result = worker.learn(obj, pooled[obj][:30]).result(60)
            assert result.ok and result.checkpoint_bytes == config.checkpoint.stat().st_size
        wrong = worker.learn("obj40", latents["obj40"][:30]).result(60)
        forgot = worker.forget("obj11").result(60)
    assert not wrong.ok and "pooled first" in (wrong.error or "")
    assert wrong.failed_at == "update" and forgot.classes == ("obj3", "obj25")
    model = classifier.learner
    assert model.classes_ == ["obj3", "obj25"]
    assert model.unknown_threshold == 0.2  # type: ignore[attr-defined]  # no replay: kept
    probe = np.concatenate([pooled[o][30:] for o in ("obj3", "obj25", "obj11")])
    verdicts = classifier.predict(probe)
    assert [v.label for v in verdicts[:12]] == ["obj3"] * 6 + ["obj25"] * 6  # held-out views
    assert {v.label for v in verdicts[12:]} <= {"obj3", "obj25"}  # forgotten: never said

    resumed = Classifier.open(config)
    assert resumed.resumed.startswith(f"resumed {config.checkpoint}: {name} at depth pool, 2 ")
    assert type(resumed.learner) is type(model) and resumed.extractor.artifact.cut == "pool"
    assert resumed.predict(probe) == verdicts
    assert np.array_equal(resumed.learner.predict_proba(probe), model.predict_proba(probe))
    with LearnerWorker(resumed, config.checkpoint) as worker:
        assert worker.learn("obj40", pooled["obj40"][:30]).result(60).ok
    assert load_learner(config.checkpoint).classes_ == ["obj3", "obj25", "obj40"]


def test_a_checkpoint_of_another_learner_is_kept_and_its_cut_followed(
    pooled: dict[str, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    slda = DeviceConfig(state_dir=tmp_path, learner="slda")
    taught = Classifier.open(slda)
    with LearnerWorker(taught, slda.checkpoint) as worker:
        assert worker.learn("obj3", pooled["obj3"][:30]).result(60).ok
        assert worker.learn("obj11", pooled["obj11"][:30]).result(60).ok
    saved = slda.checkpoint.read_bytes()
    probe = np.concatenate([pooled[o][30:] for o in ("obj3", "obj11")])
    default = DeviceConfig(state_dir=tmp_path)  # ar1 on the latent cut
    classifier = Classifier.open(default)
    assert learner_name(classifier.learner) == "slda" and classifier.learner.classes_ == [
        "obj3",
        "obj11",
    ]
    assert classifier.extractor.artifact.cut == "pool"  # what the checkpoint's learner eats
    assert classifier.resumed.startswith("resumed") and slda.checkpoint.read_bytes() == saved
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "holds a 'slda' learner at depth 'pool'" in warning and "'ar1' at 'latent'" in warning
    assert "To switch, move" in warning
    latents = classifier.latents([np.zeros((96, 96, 3), np.uint8)])
    assert latents.shape == (1, 1280)
    assert [v.label for v in classifier.predict(probe)] == ["obj3"] * 6 + ["obj11"] * 6


def test_an_ar1_checkpoint_under_a_pooled_learner_keeps_the_latent_cut(
    latents: dict[str, np.ndarray], manifest: Manifest, tmp_path: Path
) -> None:
    ar1 = DeviceConfig(state_dir=tmp_path, runtime="onnx")
    sha = manifest.find("latent", "onnx", "int8").sha256
    learner = new_learner(ar1, sha, manifest)
    learner.partial_fit(latents["obj3"][:30], ["obj3"] * 30)
    learner.save(ar1.checkpoint)
    ncm = DeviceConfig(state_dir=tmp_path, runtime="onnx", learner="ncm")
    pool_sha = manifest.find("pool", "onnx", "int8").sha256
    resumed, what = resume_learner(ncm, pool_sha, manifest)
    assert learner_name(resumed) == "ar1" and learner_depth(resumed) == "latent"
    assert what.startswith(f"resumed {ar1.checkpoint}: ar1 at depth latent, 1 classes")
    assert resumed.predict(latents["obj3"][30:]) == ["obj3"] * 6
    assert ncm.checkpoint.exists()  # never moved aside


def test_the_queue_is_bounded_and_repeated_saves_are_one_write(
    pooled: dict[str, np.ndarray], tmp_path: Path
) -> None:
    """A flood of requests while the learner is held busy: at most MAX_QUEUED_UPDATES updates
    wait (the rest are refused with WorkerBusy), the teach in progress is always admitted, and
    500 SAVEs queue one write, so what a stop must finish is bounded."""
    clf = Classifier.open(DeviceConfig(state_dir=tmp_path, learner="ncm"))
    running, release = threading.Event(), threading.Event()

    def hold_the_first_job(state: DeviceState) -> None:  # runs on the learner's thread
        if state == DeviceState.LEARNING and not running.is_set():
            running.set()
            release.wait(120)

    results: list[JobResult] = []
    worker = LearnerWorker(
        clf, tmp_path / "learner.ckpt", on_state=hold_the_first_job, on_result=results.append
    ).start()
    try:
        first = worker.learn("obj3", pooled["obj3"])
        assert running.wait(60)
        queued = [
            worker.learn(f"queued{i}", pooled[OBJECTS[i % 4]]) for i in range(MAX_QUEUED_UPDATES)
        ]
        assert not worker.has_room()
        with pytest.raises(WorkerBusy, match="updates waiting"):
            worker.learn("refused", pooled["obj40"])
        with pytest.raises(WorkerBusy):
            worker.forget("obj3")
        teach = worker.learn("teach", pooled["obj40"][:5], reserved=True)
        saves = {id(worker.save()) for _ in range(500)}
        assert len(saves) == 1
    finally:
        release.set()
    assert worker.wait_idle(120)
    worker.stop()
    assert all(f.result().ok for f in [first, *queued, teach])
    assert [r.job for r in results].count("save") == 1
    queued_labels = [f"queued{i}" for i in range(MAX_QUEUED_UPDATES)]
    assert clf.learner.classes_ == ["obj3", *queued_labels, "teach"]
