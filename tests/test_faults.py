"""Faults, limits and bad input on the device: kill -9 during checkpoint writes, a full disk, a
tampered model, unusable checkpoints, bad frames, bad labels and requests, garbled serial
frames, and the loop overloaded on one thread under a memory limit.

The longer runs of the same checks: ``tests/harness/crash_checkpoints.py`` (200 kills),
``tests/harness/fuzz_decoder.py`` (1e6 streams) and ``scripts/soak.py`` (100k frames); their figures
are in ``docs/results/faults.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness import crash_checkpoints as crash
from harness import fuzz_decoder as fuzz
from harness.classified import Classified
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_cl.device.classifier import Classifier, new_learner, resume_learner
from edge_cl.device.config import DeviceConfig
from edge_cl.device.control import ControlError, send_command
from edge_cl.device.loop import DeviceLoop
from edge_cl.errors import CheckpointError, FrameError
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.ar1 import AR1Star
from firmware_bridge.protocol import MAX_ENCODED_FRAME, encode
from firmware_bridge.sources import CapturedFrame, FrameSource, SyntheticScene

REPO = Path(__file__).resolve().parent.parent


def edge_cl_run(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_cl.cli", "run", *args], cwd=REPO, text=True, **kwargs
    )


# --- checkpoints: kill -9, disk full, unusable files ------------------------------------------


def test_kill_9_during_checkpoint_writes_leaves_the_previous_or_the_new_state(
    tmp_path: Path,
) -> None:
    summary = crash.run_trials(6, tmp_path, window=0.3, seed=7)
    print(json.dumps(summary))
    assert summary["failures"] == 0, summary["failure_details"]
    assert summary["loads_ok"] == 6
    assert summary["kept_previous"] + summary["got_new"] == 6
    assert summary["saves_completed"] > 6  # the kills came during runs of saves
    assert summary["save_after_leftovers_ok"]


def serve(state: Path, sock: Path, log: Path) -> subprocess.Popen[bytes]:
    """``edge-cl run`` on the synthetic camera with its control socket, in its own process."""
    args = ["run", "--source", "synthetic", "--state-dir", str(state)]
    args += ["--set", f"control_socket={sock}", "--set", "fps=30", "--set", "threads=1"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_cl.cli", *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )


def ask(sock: Path, proc: subprocess.Popen[Any], request: dict[str, Any]) -> dict[str, Any]:
    """``request``'s reply, once the service answers (it may still be starting)."""
    for _ in range(600):
        assert proc.poll() is None, "edge-cl run exited"
        try:
            return send_command(sock, request, timeout=60)
        except ControlError:
            threading.Event().wait(0.1)
    raise AssertionError("the control socket never answered")


def teach(sock: Path, proc: subprocess.Popen[Any], label: str, wait: bool) -> dict[str, Any]:
    """Teach ``label`` until the service counted five camera frames of it, then stop."""
    assert ask(sock, proc, {"cmd": "teach", "label": label})["ok"]
    while ask(sock, proc, {"cmd": "status"})["teach_frames"] < 5:  # camera frames, counted
        threading.Event().wait(0.02)
    return ask(sock, proc, {"cmd": "stop", "wait": wait})


def test_kill_9_mid_learn_and_restart_loses_no_acknowledged_label(tmp_path: Path) -> None:
    """Five times: teach a label and wait for its acknowledgement (learned and checkpointed),
    start teaching another and kill -9 the service somewhere inside that learn, restart. The
    checkpoint always resumes (never moved aside) and holds every acknowledged label."""
    state, sock, log = tmp_path / "state", tmp_path / "ctl.sock", tmp_path / "run.log"
    rng = random.Random(11)
    acknowledged: list[str] = []
    for trial in range(5):
        proc = serve(state, sock, log)
        try:
            labels = ask(sock, proc, {"cmd": "labels"})["labels"]
            assert set(acknowledged) <= set(labels), (acknowledged, labels)
            done = teach(sock, proc, f"kept{trial}", wait=True)
            assert done["ok"], done
            acknowledged.append(f"kept{trial}")
            assert teach(sock, proc, f"cut{trial}", wait=False)["ok"]  # learning now
            threading.Event().wait(rng.uniform(0.0, 0.3))  # a kill point inside the update
        finally:
            proc.kill()
            proc.wait(60)
        assert not (state / "learner.ckpt.corrupt").exists()
    proc = serve(state, sock, log)
    try:
        status = ask(sock, proc, {"cmd": "status"})
        assert set(acknowledged) <= set(status["classes"]), status["classes"]
    finally:
        proc.kill()
        proc.wait(60)
    assert not list(state.glob("*.corrupt*")) and "unusable" not in log.read_text()


DISK_FULL = """
import json, resource, sys
from edge_cl.learner.ar1 import AR1Star
learner = AR1Star.load(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
try:
    learner.save(sys.argv[1])  # Python ignores SIGXFSZ: the write fails with EFBIG
except Exception as e:
    print(json.dumps([type(e).__name__, str(e)]))
"""


def test_disk_full_during_save_is_a_checkpoint_error_and_the_previous_state_stays(
    tmp_path: Path,
) -> None:
    (old, _), probe, _ = crash.make_states(tmp_path / "refs")
    target = tmp_path / "state" / "learner.ckpt"
    old.save(target)
    before = target.read_bytes()
    limit = len(before) // 2  # the new state's write stops half way
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            DISK_FULL,
            str(target),
            str(tmp_path / "refs" / "1.ckpt"),
            str(limit),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    kind, message = json.loads(result.stdout)
    assert kind == "CheckpointError", result.stderr
    assert "File too large" in message and "previous checkpoint there is unchanged" in message
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["learner.ckpt"]  # temporary removed
    assert np.array_equal(AR1Star.load(target).predict_proba(probe), old.predict_proba(probe))


def device_checkpoint(state: Path, label: str) -> bytes:
    """A checkpoint of the device's default learner (litert int8 latent) that knows ``label``,
    written to ``state``; returns its bytes."""
    config = DeviceConfig(state_dir=state, runtime="litert", precision="int8")
    manifest = Manifest.load()
    sha = manifest.find("latent", "tflite", "int8").sha256
    learner = new_learner(config, sha, manifest)
    latents = np.random.default_rng(0).uniform(0, 6, (24, 4, 4, 320)).astype(np.float32)
    learner.partial_fit(latents, [label] * len(latents))
    learner.save(config.checkpoint)
    return config.checkpoint.read_bytes()


def limit_file_size(size: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


def test_disk_full_on_the_device_is_reported_and_keeps_learning_and_the_old_state(
    tmp_path: Path,
) -> None:
    state, sock = tmp_path / "state", tmp_path / "c.sock"
    before = device_checkpoint(state, "mug")
    proc = edge_cl_run(
        "--source", "synthetic", "--state-dir", str(state), "--set", f"control_socket={sock}",
        "--set", "fps=30", "--set", "runtime=litert", "--set", "precision=int8",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: limit_file_size(len(before) // 2),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    try:
        assert ask(sock, proc, {"cmd": "labels"})["labels"] == ["mug"]
        reply = teach(sock, proc, "wall", wait=True)
        labels = ask(sock, proc, {"cmd": "labels"})["labels"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert not reply["ok"] and "cannot write the checkpoint" in reply["error"], reply
    assert "File too large" in reply["error"] and "unchanged" in reply["error"]
    assert labels == ["mug", "wall"]  # learned and in use; saving again may succeed later
    assert proc.returncode == 0, err[-2000:]
    assert json.loads(out)["classes"] == ["mug", "wall"]
    assert (state / "learner.ckpt").read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["learner.ckpt"]


def test_tampered_model_is_refused_and_the_learned_state_is_untouched(tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    extractor = models / "lite0_latent_int8.tflite"
    data = bytearray(extractor.read_bytes())
    data[len(data) // 2] ^= 0x10
    extractor.write_bytes(bytes(data))
    state = tmp_path / "state"
    before = device_checkpoint(state, "mug")
    result = subprocess.run(
        [
            sys.executable, "-m", "edge_cl.cli", "run", "--source", "synthetic",
            "--state-dir", str(state), "--max-frames", "5",
            "--set", f"control_socket={tmp_path / 'c.sock'}",
            "--set", "runtime=litert", "--set", "precision=int8",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "EDGE_CL_MODELS": str(models)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "edge-cl: error: lite0_latent_int8.tflite: sha256" in result.stderr
    assert "does not match the manifest" in result.stderr and "restore it" in result.stderr
    assert result.stdout == ""
    assert sorted(p.name for p in state.iterdir()) == ["learner.ckpt"]
    assert (state / "learner.ckpt").read_bytes() == before


def pool_checkpoint(path: Path, sha: str, label: str) -> AR1Star:
    """A small pool-depth learner that knows ``label``, saved to ``path``."""
    learner = AR1Star(depth="pool", extractor_sha256=sha, replay_mb=1, epochs=1)
    x = np.random.default_rng(len(label)).normal(size=(12, 1280)).astype(np.float32)
    learner.partial_fit(x, [label] * 12)
    learner.save(path)
    return learner


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1 :]


BAD_CHECKPOINTS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (lambda b: b[: len(b) - 100], "truncated"),
    "bit-flipped": (lambda b: flip(b, len(b) - 50), "checksum mismatch"),
    "wrong-format-version": (lambda b: b[:8] + (2).to_bytes(4, "little") + b[12:], "version 2"),
}


@pytest.mark.parametrize("case", [*BAD_CHECKPOINTS, "wrong-extractor"])
def test_unusable_checkpoint_is_moved_aside_not_deleted_so_nothing_learned_is_lost(
    tmp_path: Path, manifest: Manifest, case: str
) -> None:
    config = DeviceConfig(state_dir=tmp_path, cut="pool")
    mine, other = "a" * 64, "b" * 64
    learned = pool_checkpoint(
        config.checkpoint, other if case == "wrong-extractor" else mine, "cup"
    )
    if case in BAD_CHECKPOINTS:
        damage, reason = BAD_CHECKPOINTS[case]
        config.checkpoint.write_bytes(damage(config.checkpoint.read_bytes()))
    else:
        reason = "made with extractor bbbbbbbbbbbbbbbb..., not the loaded one"
    bad = config.checkpoint.read_bytes()
    learner, what = resume_learner(config, mine, manifest)
    aside = tmp_path / "learner.ckpt.corrupt"
    assert learner.classes_ == [] and learner.extractor_sha256 == mine
    assert what.startswith(f"unusable checkpoint moved to {aside}") and reason in what, what
    assert not config.checkpoint.exists() and aside.read_bytes() == bad
    if case == "wrong-extractor":  # a valid state for the other model: still recoverable
        assert AR1Star.load(aside, extractor_sha256=other).classes_ == learned.classes_


def reseal(blob: bytes, edit: Callable[[Any], Any]) -> bytes:
    """``blob`` with its metadata JSON replaced by ``edit(meta)`` (the arrays' bytes unchanged)
    and its header's lengths and checksum recomputed: damage the checksum cannot catch."""
    header = struct.Struct("<8sIIQ32s")
    magic, version, meta_len, data_len, _ = header.unpack_from(blob)
    body = blob[header.size :]
    meta = json.loads(body[:meta_len])
    edited = edit(meta)
    meta_bytes = edited if isinstance(edited, bytes) else json.dumps(edited).encode()
    data = body[meta_len:]
    digest = hashlib.sha256(meta_bytes + data).digest()
    return header.pack(magic, version, len(meta_bytes), data_len, digest) + meta_bytes + data


def arrays_entry(name: str, value: list[Any]) -> Callable[[Any], Any]:
    def edit(meta: Any) -> Any:
        meta["arrays"][name] = value
        return meta

    return edit


def first_column_only(meta: Any) -> Any:  # cw of (1280, 1): too few columns for its labels
    meta["arrays"]["cw"][1] = [1280, 1]
    meta["labels"]["labels"].append("ghost")
    return meta


def cw_flat(meta: Any) -> Any:  # the same bytes read as a 1-D cw
    meta["arrays"]["cw"][1] = [int(np.prod(meta["arrays"]["cw"][1]))]
    return meta


def replay_budget(meta: Any) -> Any:
    meta["replay"]["max_bytes"] = 2**50
    return meta


def twice(meta: Any) -> Any:
    meta["labels"]["labels"] = meta["labels"]["labels"] * 2
    return meta


CRAFTED: dict[str, Callable[[Any], Any]] = {
    "metadata-a-string": lambda meta: "a string",
    "metadata-a-number": lambda meta: 7,
    "metadata-nested-50k-deep": lambda meta: b"[" * 50_000 + b"]" * 50_000,
    "arrays-not-an-object": lambda meta: {**meta, "arrays": [1, 2]},
    "cw-1-d": cw_flat,
    "cw-columns-not-the-labels": first_column_only,
    "replay-budget-2-to-the-50": replay_budget,
    "a-label-twice": twice,
    "object-dtype": arrays_entry("cw", ["|O", [2], 0]),
    "overflowing-shape": arrays_entry("cw", ["<f4", [2**62, 2**62, 16], 0]),
    "negative-offset": arrays_entry("cw", ["<f4", [1], -4]),
    "shape-not-a-list": arrays_entry("cw", ["<f4", "1280", 0]),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_a_crafted_checkpoint_with_a_valid_checksum_is_refused_and_moved_aside(
    tmp_path: Path, manifest: Manifest, case: str
) -> None:
    config = DeviceConfig(state_dir=tmp_path, cut="pool")
    sha = "a" * 64
    pool_checkpoint(config.checkpoint, sha, "cup")
    config.checkpoint.write_bytes(reseal(config.checkpoint.read_bytes(), CRAFTED[case]))
    bad = config.checkpoint.read_bytes()
    with pytest.raises(CheckpointError):
        AR1Star.load(config.checkpoint)
    learner, what = resume_learner(config, sha, manifest)
    assert learner.classes_ == [] and what.startswith("unusable checkpoint moved to"), what
    assert (tmp_path / "learner.ckpt.corrupt").read_bytes() == bad


def test_a_resealed_but_untouched_checkpoint_still_resumes(
    tmp_path: Path, manifest: Manifest
) -> None:
    config = DeviceConfig(state_dir=tmp_path, cut="pool")
    pool_checkpoint(config.checkpoint, "a" * 64, "cup")
    config.checkpoint.write_bytes(reseal(config.checkpoint.read_bytes(), lambda meta: meta))
    learner, what = resume_learner(config, "a" * 64, manifest)
    assert what.startswith("resumed") and learner.classes_ == ["cup"], what


def test_temporaries_of_writes_cut_short_are_removed_at_start(tmp_path: Path) -> None:
    config = DeviceConfig(state_dir=tmp_path, cut="pool")
    sha = "0" * 64
    new_learner(config, sha, Manifest.load()).save(config.checkpoint)
    leftover = tmp_path / ".learner.ckpt.k9x2.tmp"  # what save_state's mkstemp names
    leftover.write_bytes(config.checkpoint.read_bytes()[:100])
    other = tmp_path / ".other.ckpt.k9x2.tmp"
    other.write_bytes(b"not ours")
    _, what = resume_learner(config, sha, Manifest.load())
    assert what.startswith("resumed") and not leftover.exists() and other.exists()


def test_a_second_unusable_checkpoint_does_not_overwrite_the_first_one_moved_aside(
    tmp_path: Path, manifest: Manifest
) -> None:
    config = DeviceConfig(state_dir=tmp_path, cut="pool")
    firsts = []
    for label in ("cup", "pen", "mug"):  # e.g. the models folder switched back and forth
        pool_checkpoint(config.checkpoint, "b" * 64, label)
        firsts.append(config.checkpoint.read_bytes())
        resume_learner(config, "a" * 64, manifest)
    kept = ["learner.ckpt.corrupt", "learner.ckpt.corrupt.1", "learner.ckpt.corrupt.2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    assert [(tmp_path / name).read_bytes() for name in kept] == firsts


# --- bad frames --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    state = tmp_path_factory.mktemp("classifier")
    return Classifier.open(DeviceConfig(state_dir=state, threads=1))


def nan_frame() -> np.ndarray:
    frame = np.full((48, 64, 3), 100.0, np.float32)
    frame[3, 4, 1] = np.nan
    return frame


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (np.zeros((48, 64), np.uint8), "grey frame"),
        (np.zeros((48, 64, 5), np.uint8), "must be \\(H, W, 3\\)"),
        (np.zeros((2, 48, 64, 3), np.uint8), "must be \\(H, W, 3\\)"),
        (np.zeros((48, 64, 3), np.int32), "dtype int32"),
        (np.zeros((48, 64, 3), bool), "dtype bool"),
        (np.zeros((0, 0, 3), np.uint8), "empty frame"),
        (np.zeros((0, 64, 3), np.uint8), "empty frame"),
        (nan_frame(), "NaN"),
        (np.full((48, 64, 3), np.inf, np.float32), "NaN or infinite"),
        ([[0, 0, 0]], "must be a numpy array"),
        (None, "must be a numpy array"),
        (np.zeros((2, 4000, 3), np.uint8), "more than 32 times as long as it is wide"),
        (np.zeros((200_000, 1, 3), np.uint8), "more than 32 times as long as it is wide"),
    ],
    ids=lambda value: getattr(value, "shape", type(value).__name__),
)
def test_bad_frames_raise_frame_error(classifier: Classifier, frame: Any, error: str) -> None:
    with pytest.raises(FrameError, match=error):
        classifier.latents([frame])


@pytest.mark.parametrize(
    "frame",
    [
        np.full((1, 1, 3), 200, np.uint8),
        np.zeros((3000, 4000, 3), np.uint8),  # 36 MB, a 12 MP still
        np.full((2, 64, 3), 30, np.uint8),  # 32:1, the longest strip a frame may be
        np.full((4096, 4096, 3), 30, np.uint8),
        np.full((48, 64, 4), 90, np.uint8),  # RGBA: alpha dropped
        np.full((48, 64, 3), 1e6, np.float64),  # float: clipped to [0, 255]
    ],
    ids=lambda frame: f"{frame.shape}-{frame.dtype}",
)
def test_tiny_huge_and_odd_but_valid_frames_give_latents(
    classifier: Classifier, frame: np.ndarray
) -> None:
    latents = classifier.latents([frame])
    assert latents.shape == (1, 4, 4, 320) and np.isfinite(latents).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hnp.arrays(
        st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.bool_]),
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
    )  # float elements include NaN and infinities
)
def test_any_array_is_a_latent_or_a_frame_error(classifier: Classifier, frame: np.ndarray) -> None:
    valid = (
        frame.ndim == 3
        and frame.size > 0
        and frame.shape[2] in (3, 4)
        and max(frame.shape[:2]) <= 32 * min(frame.shape[:2])
        and (frame.dtype == np.uint8 or (frame.dtype.kind == "f" and np.isfinite(frame).all()))
    )
    if valid:
        latents = classifier.latents([frame])
        assert latents.shape == (1, 4, 4, 320) and np.isfinite(latents).all()
    else:
        with pytest.raises(FrameError):
            classifier.latents([frame])


class GlitchySource(FrameSource):
    """A camera that sometimes delivers an empty buffer, read on demand so the loop sees every
    frame (the reader waits for each to be taken before reading the next)."""

    name = "glitchy"

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        self.shapes = shapes
        self.index = 0

    @property
    def on_demand(self) -> bool:
        return True

    def read(self) -> CapturedFrame | None:
        if self.index == len(self.shapes):
            return None
        image = np.full((*self.shapes[self.index], 3), 128, np.uint8)
        self.index += 1
        return CapturedFrame(image, time.monotonic(), self.index - 1)


def test_the_loop_drops_and_counts_unusable_frames_from_its_source(tmp_path: Path) -> None:
    shapes = [(120, 160), (0, 0), (120, 160), (0, 160), (1, 1), (120, 0), (2000, 3000), (0, 0)]
    config = DeviceConfig(state_dir=tmp_path, control_socket=tmp_path / "c.sock", threads=1)
    summary = DeviceLoop(config, GlitchySource(shapes)).run()
    assert summary["stopped_by"] == "end of source"
    assert summary["source"]["dropped"] == 0  # on demand: each frame reached the loop
    assert (summary["frames"], summary["bad_frames"]) == (4, 4)


# --- bad labels and requests over the real control socket --------------------------------------


@pytest.fixture(scope="module")
def device(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DeviceLoop, Path, Classified]]:
    """A real device loop on a synthetic scene, serving its control socket, and its observer."""
    folder = tmp_path_factory.mktemp("device")
    path = folder / "ctl.sock"
    config = DeviceConfig(state_dir=folder / "state", control_socket=path, threads=1)
    classified = Classified()
    loop = DeviceLoop(config, SyntheticScene(size=(160, 120), fps=30), observer=classified)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        assert loop.ready.wait(60), "the loop did not classify a frame within 60 s"
        yield loop, path, classified
    finally:
        loop.request_stop()
        thread.join(60)


def raw(path: Path, data: bytes) -> dict[str, Any]:
    """Send ``data`` as is and return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        with sock.makefile("rb") as reader:
            reply = json.loads(reader.readline())
    assert isinstance(reply, dict)
    return reply


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b'{"cmd": "teach", "label": "' + b"x" * 60_000 + b'"}\n', "1 to 64 characters"),
        (b'{"cmd": "teach", "label": "' + b"x" * 100_000 + b'"}\n', "longer than 65536 bytes"),
        (b'{"cmd": "teach", "label": "\\ud800"}\n', "is not valid Unicode text"),
        (b'{"cmd": "teach", "label": "cup\\n[ERROR] fake"}\n', "control characters"),
        (b'{"cmd": "teach", "label": "cup\\u0000"}\n', "control characters"),
        (b'{"cmd": "teach", "label": "\\u001b[31mcup"}\n', "control characters"),
        (b'{"cmd": "teach", "label": "cup\\u0085"}\n', "control characters"),
        (b'{"cmd": "teach", "label": ' + b"9" * 5000 + b"}\n", "malformed JSON"),
        (b'{"cmd": "teach", "label": ["cup"]}\n', "teach needs a label"),
        (b'{"cmd": "teach", "label": {"name": "cup"}}\n', "teach needs a label"),
        (b'{"cmd": "teach", "label": null}\n', "teach needs a label"),
        (b'{"cmd": "teach", "label": 7}\n', "teach needs a label"),
        (b'{"cmd": "forget", "label": "' + b"y" * 5000 + b'"}\n', "forget needs a known label"),
        (b'{"cmd": "forget", "label": ""}\n', "forget needs a known label"),
        (b'{"cmd": 7}\n', "unknown command 7"),
        (b'{"cmd": ["teach"]}\n', "unknown command ['teach']"),
        (b'{"cmd": "TEACH"}\n', "unknown command 'TEACH'"),
        (b'{"cmd": "' + b"z" * 10_000 + b'"}\n', "unknown command 'zzz"),
        (b"[" * 50_000 + b"\n", "malformed JSON"),
        (b'{"a":' * 12_000 + b"\n", "malformed JSON"),
        (bytes(range(1, 256)).replace(b"\n", b"") + b"\n", "malformed JSON"),
    ],
    ids=lambda value: value[:24].decode(errors="replace") if isinstance(value, bytes) else "",
)
def test_bad_requests_get_a_clear_error_and_the_device_keeps_serving(
    device: tuple[DeviceLoop, Path, Classified], data: bytes, error: str
) -> None:
    loop, path, classified = device
    frames = classified.count
    reply = raw(path, data)
    assert reply["ok"] is False and error in reply["error"], reply
    assert "internal error" not in reply["error"]
    assert send_command(path, {"cmd": "labels"}) == {"ok": True, "labels": []}
    assert loop.status()["teaching"] is None
    classified.beyond(frames)  # still classifying


ODD_CHARACTERS = "\ud800\udfff\x00\n\u200b"
"""Lone surrogates (JSON can carry them, UTF-8 cannot), NUL, newline, zero-width space."""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.characters() | st.sampled_from(ODD_CHARACTERS), max_size=80).map("".join))
def test_any_label_is_taught_or_refused_with_a_label_error(
    device: tuple[DeviceLoop, Path, Classified], label: str
) -> None:
    loop, path, _ = device
    reply = send_command(path, {"cmd": "teach", "label": label})
    loop.abandon_teach()
    received = json.loads(json.dumps(label))  # JSON joins an escaped surrogate pair into one
    try:
        fits = 0 < len(received) <= 64 and len(received.encode()) <= 64
    except UnicodeEncodeError:  # a lone surrogate
        fits = False
    fits = fits and not any(unicodedata.category(c) == "Cc" for c in received)
    assert reply["ok"] is fits, reply
    if fits:
        assert reply["label"] == received
    else:
        assert "label" in reply["error"] and "internal error" not in reply["error"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.binary(max_size=300), st.dictionaries(st.text(max_size=8), st.text(max_size=8)))
)
def test_any_request_line_gets_a_json_reply(
    device: tuple[DeviceLoop, Path, Classified], request: bytes | dict[str, str]
) -> None:
    loop, path, _ = device
    line = json.dumps(request).encode() if isinstance(request, dict) else request
    assume(line.strip())  # blank lines are skipped without a reply
    reply = raw(path, line.replace(b"\n", b" ") + b"\n")
    loop.abandon_teach()
    assert isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert isinstance(reply["error"], str) and reply["error"]
        assert "internal error" not in reply["error"]


# --- garbled serial frames ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False))
def test_garbled_serial_streams_are_accounted_for_exactly(rng: random.Random) -> None:
    """The exact model of ``tests/harness/fuzz_decoder.py`` (long run: docs/results/faults.md)."""
    fuzz.check_stream(fuzz.random_stream(rng))  # asserts the exact accounting


def test_the_fuzz_model_counts_a_long_tail_as_oversized() -> None:
    frame = encode(fuzz.random_message(random.Random(1)), 3)
    stats = fuzz.check_stream([frame, b"\x01" * (MAX_ENCODED_FRAME + 1)])
    assert (stats.frames, stats.oversized) == (1, 1)


# --- limits: one thread, a memory cap, a slow sink ---------------------------------------------

LIMITS = """
import json, sys, threading, time
from pathlib import Path
from edge_cl.device.config import DeviceConfig
from edge_cl.device.loop import DeviceLoop
from firmware_bridge.sources import FrameSource, SyntheticScene

def vm(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024

class Counted(FrameSource):
    # The scene, counting what its reader thread stored: the reader asks for a frame only once
    # it has stored the one before in its slot (taken or not).
    name = "synthetic"

    def __init__(self, scene):
        self.scene, self.cond = scene, threading.Condition()
        self.reads, self.stored, self.last, self.newest, self.read_number = 0, 0, -1, -1, {}

    def open(self):
        self.scene.open()

    def close(self):
        self.scene.close()

    def read(self):
        with self.cond:
            self.stored, self.newest = self.reads, self.last
            self.cond.notify_all()
        frame = self.scene.read()
        with self.cond:
            self.reads += 1
            self.last, self.read_number[frame.index] = frame.index, self.reads
        return frame

latency, rss, taken = [], [], []
def slow_sink(frame, verdict):  # a sink slower than the camera, on the loop's thread
    latency.append(1000 * (time.monotonic() - frame.timestamp))
    rss.append(vm("VmRSS"))
    with source.cond:  # done once three newer frames were stored: two of them are dropped
        ahead = lambda: source.stored >= source.read_number[frame.index] + 3
        assert source.cond.wait_for(ahead, 60), "the camera stopped"
        taken.append([frame.index, source.newest])

state = Path(sys.argv[1])
config = DeviceConfig(state_dir=state, control_socket=state / "c.sock", threads=1, max_frames=100)
scene = SyntheticScene(size=(320, 240), fps=500)
scene.show("red cube")
source = Counted(scene)
summary = DeviceLoop(config, source, observer=slow_sink).run()
out = {"summary": summary, "latency": latency, "rss": rss, "taken": taken, "peak": vm("VmPeak")}
print(json.dumps(out))
"""
MEMORY_LIMIT = 1 << 30
"""Address space allowed: VmPeak measured 675 MiB here (one extractor thread, single-threaded
BLAS), 87 MiB resident."""


def test_overloaded_loop_drops_old_frames_keeps_the_newest_and_does_not_grow(
    tmp_path: Path,
) -> None:
    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, resource.RLIM_INFINITY))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", LIMITS, str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=limits, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    summary, latency, rss = out["summary"], np.array(out["latency"]), np.array(out["rss"])
    source = summary["source"]
    print(
        f"processed {summary['frames']} of {source['read']} frames ({source['dropped']} dropped),"
        f" latency median {np.median(latency):.1f} ms p95 {np.percentile(latency, 95):.1f} ms,"
        f" RSS {rss[10]:.0f} -> {rss[-1]:.0f} MiB, VmPeak {out['peak']:.0f} MiB"
    )
    assert summary["stopped_by"] == "max_frames" and summary["frames"] == len(latency) == 100
    assert source["delivered"] == summary["frames"]
    assert source["dropped"] >= 2 * summary["frames"]  # the sink waited for 3 newer each
    # the frame taken next is the newest stored while the sink ran, never an older, queued one
    taken = out["taken"]
    assert all(later >= newest for (_, newest), (later, _) in itertools.pairwise(taken)), taken
    assert rss[-1] - rss[10] < 10  # MiB, after warm-up
    assert out["peak"] < MEMORY_LIMIT / 2**20
