"""The aarch64 suite, run by ``scripts/arm-harness`` on x86, under emulation, then on x86 again.

Each run writes what it computed to ``$EDGE_CL_ARM_EXCHANGE/<machine>/`` and compares itself with
what the other machines left there; the first run also leaves the shared inputs (a few real images
and the latents every learner trains on, so learners are compared on identical input). Without
the variable the exchange is a fresh temporary folder: on x86 the suite then checks its two
runtimes against each other and round-trips its own checkpoint, so it cannot rot unnoticed.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import serial

from edge_cl.extractor import onnx, open_extractor
from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image
from edge_cl.learner.ar1 import AR1Star
from firmware_bridge.emulator import Emulator
from firmware_bridge.protocol import (
    Ack,
    Hello,
    LearnerState,
    Prediction,
    Save,
    SerialLink,
    Status,
    TeachStart,
    TeachStop,
)

pytestmark = pytest.mark.arm

MACHINE = platform.machine()
EXTRACTORS = [("onnx", "fp32"), ("litert", "fp32"), ("onnx", "int8"), ("litert", "int8")]
COIL = [f"obj{obj}__{angle}.png" for obj in (3, 17, 42) for angle in (0, 90)]
IMAGENET = ["n01440764_tench.JPEG", "n01443537_goldfish.JPEG"]

# Bounds over the measured aarch64 (qemu cortex-a72) vs x86_64 differences, which the harness
# prints. Preprocessing: OpenCV's area resize rounds a few pixels one uint8 level apart, so at
# most one level (1/std) in a small fraction of values. Models run on the same preprocessed batch;
# fp32 latents and logits are compared as max |a - b| / max |b|; int8 latents in steps of their
# output grid, below half a step (they are measured identical), so one wrong code fails. Learner
# logits: on the same latents, reloaded from a checkpoint, or after a step resumed from one.
PIXEL_TOL = 1 / 128
PIXEL_FRACTION_TOL = 1e-3
FP32_LATENT_TOL = 2e-5
INT8_STEP_TOL = 0.5
LOGIT_TOL = 1e-5


@dataclass(frozen=True)
class Inputs:
    """The shared inputs: frames, their preprocessed batch, the learner's latents and labels."""

    frames: list[np.ndarray]
    batch: np.ndarray
    latents: np.ndarray
    labels: list[str]


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``$EDGE_CL_ARM_EXCHANGE``, else a fresh temporary folder."""
    env = os.environ.get("EDGE_CL_ARM_EXCHANGE")
    return Path(env) if env else tmp_path_factory.mktemp("arm-exchange")


@pytest.fixture(scope="module")
def mine(exchange: Path) -> Path:
    """This machine's output folder in the exchange."""
    folder = exchange / MACHINE
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def others(exchange: Path) -> list[Path]:
    """The output folders other machines left in the exchange (dot folders are staging)."""
    return sorted(
        p
        for p in exchange.iterdir()
        if p.is_dir() and p.name not in ("inputs", MACHINE) and not p.name.startswith(".")
    )


def record(mine: Path, key: str, value: float) -> None:
    """Add a measured difference to ``<machine>/diffs.json`` (the harness prints it)."""
    path = mine / "diffs.json"
    diffs = json.loads(path.read_text()) if path.exists() else {}
    diffs[key] = value
    path.write_text(json.dumps(diffs, indent=1, sort_keys=True) + "\n")


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def inputs(exchange: Path, manifest: Manifest, request: pytest.FixtureRequest) -> Inputs:
    """Read the shared inputs, or make them if this run is the first."""
    folder = exchange / "inputs"
    if not folder.is_dir():
        datasets: Path = request.getfixturevalue("datasets")
        staging = exchange / ".inputs.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in COIL:
            shutil.copy(datasets / "coil100" / "images" / name, staging)
        for name in IMAGENET:
            shutil.copy(datasets / "imagenet-samples" / "images" / name, staging)
        ex = open_extractor("latent", "onnx", "fp32", manifest=manifest)
        batch = ex.preprocessing.batch([read_image(staging / name) for name in COIL + IMAGENET])
        np.save(staging / "batch.npy", batch)
        np.save(staging / "latents.npy", ex(batch[: len(COIL)]))
        staging.rename(folder)
    return Inputs(
        frames=[read_image(folder / name) for name in COIL + IMAGENET],
        batch=np.load(folder / "batch.npy"),
        latents=np.load(folder / "latents.npy"),
        labels=[name.split("__")[0] for name in COIL],
    )


@pytest.fixture(scope="module")
def latents(inputs: Inputs, manifest: Manifest, mine: Path) -> dict[str, np.ndarray]:
    """This machine's preprocessing of the frames and every latent extractor on the shared batch,
    saved to its folder."""
    out = {"preprocessed": manifest.find().preprocessing_at(None).batch(inputs.frames)}
    for runtime, precision in EXTRACTORS:
        ex = open_extractor("latent", runtime, precision, manifest=manifest)
        out[f"{runtime}-{precision}"] = ex(inputs.batch)
    np.savez(mine / "latents.npz", **out)
    return out


@pytest.fixture(scope="module")
def trained(inputs: Inputs, manifest: Manifest, mine: Path) -> AR1Star:
    """AR1* from the pretrained head: two objects, then a third one with replay; saved."""
    learner = AR1Star(head_arrays(manifest.head()), manifest.find().sha256, epochs=2, replay_mb=1)
    first = [i for i, label in enumerate(inputs.labels) if label != inputs.labels[-1]]
    last = [i for i, label in enumerate(inputs.labels) if label == inputs.labels[-1]]
    for batch in (first, last):
        learner.partial_fit(inputs.latents[batch], [inputs.labels[i] for i in batch])
    learner.save(mine / "learner.ckpt")
    logits = learner.decision_function(inputs.latents)
    np.savez(mine / "learner.npz", logits=logits, classes=np.array(learner.classes_))
    assert learner.memory is not None and len(learner.memory) > 0
    state = learner.memory.state_dict()
    replay = {k: np.asarray(v) for k, v in state.items() if not isinstance(v, str)}
    np.savez(mine / "replay.npz", **replay)
    return learner


def resumed_step(checkpoint: Path, inputs: Inputs, sha: str) -> np.ndarray:
    """Logits after one more batch (the first object again, with replay) from ``checkpoint``."""
    learner = AR1Star.load(checkpoint, extractor_sha256=sha)
    again = [i for i, label in enumerate(inputs.labels) if label == inputs.labels[0]]
    learner.partial_fit(inputs.latents[again], [inputs.labels[i] for i in again])
    logits: np.ndarray = learner.decision_function(inputs.latents)
    return logits


def test_device_path_imports() -> None:
    for module in (
        "numpy",
        "cv2",
        "PIL.Image",
        "onnxruntime",
        "ai_edge_litert.interpreter",
        "serial",
        "cobs.cobs",
        "crc",
        "edge_cl.extractor.onnx",
        "edge_cl.extractor.litert",
        "edge_cl.learner.baselines",
        "firmware_bridge.emulator",
    ):
        importlib.import_module(module)
    assert "CPUExecutionProvider" in onnx.available()


def test_preprocessing_matches_other_machines(
    latents: dict[str, np.ndarray], exchange: Path, mine: Path
) -> None:
    for other in others(exchange):
        with np.load(other / "latents.npz") as theirs:
            diff = np.abs(latents["preprocessed"] - theirs["preprocessed"])
        record(mine, f"preprocessed vs {other.name}", float(diff.max()))
        record(mine, f"preprocessed vs {other.name}, fraction differing", float(np.mean(diff > 0)))
        assert diff.max() <= PIXEL_TOL and np.mean(diff > 0) <= PIXEL_FRACTION_TOL


@pytest.mark.parametrize("name", [f"{r}-{p}" for r, p in EXTRACTORS])
def test_latents_match_other_machines(
    latents: dict[str, np.ndarray], manifest: Manifest, exchange: Path, mine: Path, name: str
) -> None:
    z = latents[name]
    assert z.shape == (len(COIL) + len(IMAGENET), 4, 4, 320) and np.isfinite(z).all()
    runtime, precision = name.split("-")
    for other in others(exchange):
        with np.load(other / "latents.npz") as theirs:
            if precision == "int8":
                fmt = "onnx" if runtime == "onnx" else "tflite"
                grid = manifest.find("latent", fmt, "int8").output_grid
                assert grid is not None
                diff = float(np.abs(z - theirs[name]).max() / grid[0])  # in steps
                record(mine, f"latents {name} vs {other.name}, steps", diff)
                assert diff < INT8_STEP_TOL
            else:
                diff = relative(z, theirs[name])
                record(mine, f"latents {name} vs {other.name}", diff)
                assert diff <= FP32_LATENT_TOL


def test_onnx_and_litert_agree_on_this_machine(latents: dict[str, np.ndarray], mine: Path) -> None:
    diff = relative(latents["litert-fp32"], latents["onnx-fp32"])
    record(mine, "latents litert-fp32 vs onnx-fp32", diff)
    assert diff <= FP32_LATENT_TOL


def test_learner_learns_the_objects(trained: AR1Star, inputs: Inputs) -> None:
    assert trained.classes_ == ["obj3", "obj17", "obj42"]
    assert trained.predict(inputs.latents) == inputs.labels


def test_learner_matches_other_machines(
    trained: AR1Star, inputs: Inputs, exchange: Path, mine: Path
) -> None:
    logits = trained.decision_function(inputs.latents)
    for other in others(exchange):
        with np.load(other / "learner.npz") as theirs:
            assert theirs["classes"].tolist() == trained.classes_
            diff = relative(logits, theirs["logits"])
        record(mine, f"learner logits vs {other.name}", diff)
        assert diff <= LOGIT_TOL


def test_checkpoints_load_across_machines(
    trained: AR1Star, inputs: Inputs, manifest: Manifest, exchange: Path, mine: Path
) -> None:
    """Every machine's checkpoint (this one's too) loads here and predicts what it did there."""
    for folder in [mine, *others(exchange)]:
        loaded = AR1Star.load(folder / "learner.ckpt", extractor_sha256=manifest.find().sha256)
        assert loaded.classes_ == trained.classes_ and loaded.batches_seen == 2
        with np.load(folder / "learner.npz") as theirs:
            diff = relative(loaded.decision_function(inputs.latents), theirs["logits"])
        record(mine, f"checkpoint from {folder.name} reloaded", diff)
        assert diff <= LOGIT_TOL
        assert loaded.predict(inputs.latents) == inputs.labels


def test_replay_memory_matches_other_machines(trained: AR1Star, exchange: Path, mine: Path) -> None:
    """The replay memory holds the same patterns: codes and labels equal, ranges within
    rounding (a zeroed or shuffled memory fails)."""
    with np.load(mine / "replay.npz") as ours:
        assert int(ours["size"]) > 0
        for other in others(exchange):
            with np.load(other / "replay.npz") as theirs:
                assert sorted(theirs.files) == sorted(ours.files)
                for key in ours.files:
                    a, b = ours[key], theirs[key]
                    assert a.shape == b.shape and a.dtype == b.dtype, key
                    if a.dtype.kind == "f":
                        diff = float(np.abs(a - b).max(initial=0.0))
                        record(mine, f"replay {key} vs {other.name}", diff)
                        assert diff <= LOGIT_TOL * max(1.0, float(np.abs(b).max(initial=0.0)))
                    else:
                        assert np.array_equal(a, b), f"replay {key} differs from {other.name}"


def test_a_step_resumed_from_another_machines_checkpoint_matches_one_from_this_machines(
    trained: AR1Star, inputs: Inputs, manifest: Manifest, exchange: Path, mine: Path
) -> None:
    """Training goes on from the other machine's checkpoint (replay memory, Batch Renorm
    statistics, optimiser state, RNG) exactly as from this machine's own."""
    sha = manifest.find().sha256
    own = resumed_step(mine / "learner.ckpt", inputs, sha)
    for other in others(exchange):
        diff = relative(resumed_step(other / "learner.ckpt", inputs, sha), own)
        record(mine, f"step resumed from {other.name}'s checkpoint", diff)
        assert diff <= LOGIT_TOL


@pytest.fixture
def mcu() -> Iterator[Emulator]:
    # Emulated Python is ~8x slower: generous timeouts, so no request is resent by accident.
    with Emulator.over_pty(ack_timeout=5.0) as emulator:
        yield emulator


def test_protocol_round_trip_over_a_pty(mcu: Emulator) -> None:
    assert mcu.device_path is not None
    with serial.Serial(mcu.device_path, 115200, timeout=0.05) as port:
        host = SerialLink(port, auto_ack=True)
        mcu.start("connect 20; teach cup 0.1; save")
        assert host.request(Hello("edge_cl", (0, 1, 0)), timeout=5.0) == Ack(0)
        seen = []
        for frame in host.frames(idle=20.0):
            seen.append(frame.message)
            if isinstance(frame.message, TeachStart):
                host.send(Prediction("cup", 0.875, latency_ms=41))
                host.send(Status(LearnerState.TEACHING, num_classes=1, replay_bytes=4096))
            if isinstance(frame.message, Save):
                break
        assert mcu.join(timeout=20.0)
    assert seen == [mcu.hello_message, TeachStart("cup"), TeachStop(), Save()]
    received = [frame.message for frame in mcu.received]
    assert Prediction("cup", 0.875, latency_ms=41) in received
    assert Status(LearnerState.TEACHING, 1, 4096) in received
    assert mcu.timeouts == 0 and mcu.duplicates == 0


DEVICE_UNDER_A_CAP = """
import json, resource, sys, threading
from pathlib import Path
from edge_cl.device.config import DeviceConfig
from edge_cl.device.loop import DeviceLoop
from firmware_bridge.sources import SyntheticScene

scene = SyntheticScene(size=(320, 240))
scene.show("red cube")
config = DeviceConfig(state_dir=Path(sys.argv[1]), threads=1, control_socket=Path(sys.argv[2]))
loop = DeviceLoop(config, scene)
taught = {}

def teacher() -> None:
    loop.ready.wait(600)
    loop.teach("red cube")
    while loop.status()["teach_frames"] < 5:
        threading.Event().wait(0.05)
    future, _ = loop.stop_teach()
    taught["ok"] = future.result(600).ok
    loop.request_stop()

threading.Thread(target=teacher, daemon=True).start()
summary = loop.run()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"taught": taught, "classes": summary["classes"], "peak_mib": peak}))
"""
PI_MEMORY = 1 << 30
"""Address space of the capped run: a 1 GB Raspberry Pi's RAM."""


def test_the_device_loop_learns_under_a_raspberry_pis_memory(tmp_path: Path, mine: Path) -> None:
    """``DeviceLoop`` classifies, is taught an object and checkpoints it inside 1 GiB of address
    space (RLIMIT_AS, in a subprocess; under emulation the cap holds qemu's own memory too)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (PI_MEMORY, resource.RLIM_INFINITY))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    state, sock = str(tmp_path / "state"), str(tmp_path / "c.sock")
    result = subprocess.run(
        [sys.executable, "-c", DEVICE_UNDER_A_CAP, state, sock],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=900,
        preexec_fn=cap, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    record(mine, "device loop under 1 GiB, peak RSS MiB", out["peak_mib"])
    assert out["taught"] == {"ok": True} and out["classes"] == ["red cube"], out
    assert AR1Star.load(tmp_path / "state" / "learner.ckpt").classes_ == ["red cube"]
