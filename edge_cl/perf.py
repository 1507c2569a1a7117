"""``edge-cl bench-perf``: speed and footprint of the extractor, the learner and the device loop.

Every figure that is compared with another is measured in the same run: numpy's float32 matmul
peak at each thread count (threadpoolctl), then the extractors, the learner's updates (their
GFLOP/s as a fraction of that peak) and ``edge-cl run`` as a real process. The report prints
each figure next to its target from the issue, with "met" or "missed". Under aarch64 emulation
(qemu) absolute timings say nothing about a real device; only the ratios are meaningful.

>>> QUICK.batches, QUICK.resolutions, QUICK.news
((1, 8), (128,), (30,))
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl import __version__
from edge_cl.device.config import DeviceConfig
from edge_cl.errors import BackendUnavailableError, EdgeClError, MissingExtraError
from edge_cl.extractor.manifest import Artifact, Manifest
from edge_cl.learner.ar1 import LATENT_CHANNELS, POOL_CHANNELS, AR1Config, AR1Star
from edge_cl.learner.protocol import Learner, replay_memory
from edge_cl.learner.registry import learner_spec
from edge_cl.sysinfo import cores, cpu_features, cpu_model, emulation

DEFAULT_REPLAYED = AR1Config().replay_per_epoch or 0
"""Replayed patterns per update of the default learner (``AR1Config.replay_per_epoch``)."""

SECTIONS = ("extractor", "learner", "loop")
"""Sections ``--only`` can select; the machine section (matmul peak) always runs."""

Log = Callable[[str], None]
BUSY_LOAD = 0.5
"""A 1-minute load average above this at the start flags the run's timings as unreliable."""


class PerfError(EdgeClError):
    """A benchmark could not run: the device loop did not start or answer, a bad option."""


@dataclass(frozen=True)
class PerfSettings:
    """What ``bench-perf`` measures and how often.

    - ``sections``: among ``extractor``, ``learner``, ``loop``.
    - ``threads``: thread counts for the matmul peak, the extractors and the learner.
    - ``runtimes``, ``precisions``, ``batches``, ``resolutions``: the extractor grid.
    - ``repeats``: timings per figure (the median is kept; the best for the matmul peak);
      ``min_seconds``: a fast call is looped until one timing lasts at least this long.
    - ``peak_size``: the square float32 matmul (n x n @ n x n) of the peak.
    - ``news``, ``replay``, ``replay_per_epoch``, ``epochs``: a learner update learns N new
      latents with ``replay`` patterns in memory, replaying all of them or ``replay_per_epoch``
      (the device loop's memory is filled with as many as its ``replay_mb`` holds, at most
      ``replay``).
    - ``camera``: (width, height) of the camera frames preprocessed and rendered.
    - ``loop_seconds``: the steady window of the device loop; ``teach_frames``: frames a teach
      collects; ``loop_set``: ``KEY=VALUE`` overrides of the device configuration.
    """

    sections: tuple[str, ...] = SECTIONS
    threads: tuple[int, ...] = (1, 2)
    runtimes: tuple[str, ...] = ("onnx", "litert")
    precisions: tuple[str, ...] = ("fp32", "int8")
    batches: tuple[int, ...] = (1, 8, 32)
    resolutions: tuple[int, ...] = (128, 224)
    repeats: int = 5
    min_seconds: float = 0.2
    peak_size: int = 1024
    news: tuple[int, ...] = (30, 100, 300)
    replay: int = 1500
    replay_per_epoch: int = DEFAULT_REPLAYED
    epochs: int = 4
    camera: tuple[int, int] = (640, 480)
    loop_seconds: float = 10.0
    teach_frames: int = 30
    loop_set: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise PerfError(f"unknown section(s) {unknown}; choose among {', '.join(SECTIONS)}")
        for name in ("threads", "batches", "resolutions", "news"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise PerfError(f"{name} must be positive integers, got {values}")
        for name in ("repeats", "peak_size", "replay", "epochs", "teach_frames"):
            if getattr(self, name) < 1:
                raise PerfError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_seconds < 0 or self.loop_seconds <= 0 or self.replay_per_epoch < 0:
            raise PerfError("min_seconds, replay_per_epoch must be >= 0 and loop_seconds > 0")


QUICK = PerfSettings(
    batches=(1, 8), resolutions=(128,), repeats=2, min_seconds=0.05, news=(30,), loop_seconds=3.0
)
"""``--quick``: fewer batch sizes, one resolution, one N, short timings (about 30 s)."""


# ------------------------------------------------------------------------------------ helpers
def _threadpoolctl() -> Any:
    """threadpoolctl, which sets numpy's BLAS threads (``MissingExtraError`` if absent)."""
    try:
        import threadpoolctl
    except ImportError as e:
        raise MissingExtraError(
            "edge-cl bench-perf sets numpy's BLAS threads with threadpoolctl: "
            "pip install threadpoolctl"
        ) from e
    return threadpoolctl


def time_call(
    fn: Callable[[], object], repeats: int, min_seconds: float = 0.0, warmup: int = 1
) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timings, after ``warmup`` calls.

    A call faster than ``min_seconds`` is looped so each timing lasts about that long, which
    keeps the clock's resolution and a scheduler hiccup out of millisecond figures.

    >>> time_call(lambda: sum(range(100)), repeats=3, min_seconds=0.001) > 0
    True
    """
    for _ in range(max(0, warmup - 1)):
        fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    loops = max(1, math.ceil(min_seconds / max(once, 1e-9)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - start) / loops)
    return float(np.median(times))


def matmul_peak(size: int, repeats: int) -> float:
    """Best GFLOP/s of a float32 ``size x size @ size x size`` matmul at the current threads.

    >>> matmul_peak(64, 2) > 0
    True
    """
    rng = np.random.default_rng(0)
    a = rng.random((size, size), np.float32)
    b = rng.random((size, size), np.float32)
    out = np.empty((size, size), np.float32)
    np.matmul(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / max(best, 1e-9) / 1e9


def _numpy_blas() -> dict[str, Any]:
    """The BLAS numpy was built against (``numpy.show_config``)."""
    try:
        config: Any = np.show_config(mode="dicts")
    except TypeError:  # numpy older than 1.26 only prints
        return {}
    blas = (config or {}).get("Build Dependencies", {}).get("blas", {})
    keys = ("name", "version", "openblas configuration")
    return {k: blas[k] for k in keys if k in blas}


def _blas_runtime() -> list[dict[str, Any]]:
    """The BLAS libraries loaded now and their thread counts (threadpoolctl)."""
    keys = ("internal_api", "version", "architecture", "num_threads")
    info = _threadpoolctl().threadpool_info()
    return [{k: i.get(k) for k in keys} for i in info if i.get("user_api") == "blas"]


def _blas_threads() -> list[int]:
    return [int(i["num_threads"]) for i in _blas_runtime()]


def _memory(learner: Learner) -> int:
    memory = replay_memory(learner)
    return len(memory) if memory is not None else 0


def _per(value: float | None, by: float | None) -> float | None:
    return None if value is None or not by else value / by


# ------------------------------------------------------------------------------------ machine
def bench_machine(settings: PerfSettings, log: Log) -> dict[str, Any]:
    """CPU, SIMD features, numpy's BLAS, and the float32 matmul peak at each thread count."""

    tpc = _threadpoolctl()
    peaks = []
    for threads in settings.threads:
        with tpc.threadpool_limits(threads):
            gflops = matmul_peak(settings.peak_size, max(settings.repeats, 5))
            peaks.append({"threads": threads, "gflops": gflops, "blas_threads": _blas_threads()})
        log(f"matmul peak, {threads} thread(s): {gflops:.1f} GFLOP/s")
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": cores(),
        "cpu_features": cpu_features(),
        "numpy_blas": _numpy_blas(),
        "blas_runtime": _blas_runtime(),
        "matmul": f"float32 {settings.peak_size}x{settings.peak_size} @ same, best of "
        f"{max(settings.repeats, 5)}",
        "peaks": peaks,
        "emulation": emulation(),
    }


def peak_at(machine: Mapping[str, Any], threads: int) -> float | None:
    """The matmul peak measured at ``threads`` (None if it was not measured).

    >>> peak_at({"peaks": [{"threads": 1, "gflops": 80.0}]}, 1)
    80.0
    """
    for p in machine.get("peaks", []):
        if p["threads"] == threads:
            return float(p["gflops"])
    return None


# ---------------------------------------------------------------------------------- extractor
def conv_macs(artifact: Artifact, resolution: int) -> int | None:
    """Multiply-accumulates of one frame through the Conv nodes of an ONNX extractor.

    The graph (read with the ``onnx`` package) is run once with every Conv output exposed, so
    the output sizes come from ONNX Runtime itself; None without ``onnx`` or for a graph whose
    conv weights are not initializers. Adds, clips and pads are not counted.

    >>> fp32 = Manifest.load().find(cut="latent", format="onnx", precision="fp32")
    >>> round(conv_macs(fp32, 224) / 1e6)  # Lite0 below the head at 224 px (needs onnx: dev)
    364
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        return None
    model = onnx.load(str(artifact.verify()))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs or any(n.input[1] not in shapes for n in convs):
        return None
    for node in convs:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    r = resolution
    x = np.zeros((1, 3, r, r) if artifact.layout == "NCHW" else (1, r, r, 3), np.float32)
    outs = session.run([n.output[0] for n in convs], {artifact.input_name: x})
    # weight (out, in / group, kh, kw): each output value takes prod(weight[1:]) MACs
    macs: int = sum(
        math.prod(out.shape[1:]) * math.prod(shapes[n.input[1]][1:])
        for n, out in zip(convs, outs, strict=True)
    )
    return macs


def bench_extractor(
    settings: PerfSettings, manifest: Manifest, peaks: Mapping[str, Any], log: Log
) -> dict[str, Any]:
    """frames/s of the ``latent`` cut over runtime x precision x threads x resolution x batch,
    achieved GFLOP/s against the model's conv MACs, and the cost of preprocessing a frame."""
    from edge_cl.extractor import RUNTIME_FORMATS, open_extractor

    rng = np.random.default_rng(0)
    reference = manifest.find(cut="latent", format="onnx", precision="fp32")
    macs = {r: conv_macs(reference, r) for r in settings.resolutions}
    source = (
        f"conv MACs of {reference.name} (onnx graph, run once)"
        if all(m is not None for m in macs.values())
        else "n/a: the onnx package is not installed (pip install onnx)"
    )
    width, height = settings.camera
    frame = rng.integers(0, 256, (height, width, 3), np.uint8)
    preprocessing = []
    for r in settings.resolutions:
        prep = reference.preprocessing_at(r)
        seconds = time_call(partial(prep, frame), settings.repeats, settings.min_seconds)
        preprocessing.append({"camera": f"{width}x{height}", "resolution": r, "ms": 1e3 * seconds})
        log(f"preprocess {width}x{height} -> {r} px: {1e3 * seconds:.2f} ms/frame")
    rows: list[dict[str, Any]] = []
    skipped: dict[tuple[str, str], str] = {}
    grid = itertools.product(
        settings.runtimes, settings.precisions, settings.threads, settings.resolutions
    )
    for runtime, precision, threads, r in grid:
        if runtime not in RUNTIME_FORMATS:
            raise PerfError(f"unknown runtime {runtime!r}; choose among onnx, litert")
        if (runtime, precision) in skipped:
            continue
        try:
            ex = open_extractor("latent", runtime, precision, r, threads, None, manifest)
        except BackendUnavailableError as e:
            skipped[runtime, precision] = str(e)
            log(f"{runtime} {precision}: skipped ({e})")
            continue
        mac = macs[r]
        flop = 2 * mac / 1e9 if mac is not None else None
        peak = peak_at(peaks, threads)
        for batch in settings.batches:
            x = rng.uniform(-1, 1, (batch, r, r, 3)).astype(np.float32)
            seconds = time_call(partial(ex, x), settings.repeats, settings.min_seconds, warmup=2)
            fps = batch / seconds
            gflops = fps * flop if flop is not None else None
            rows.append(
                {
                    "runtime": runtime,
                    "backend": ex.runtime,
                    "artifact": ex.artifact.name,
                    "precision": precision,
                    "threads": threads,
                    "resolution": r,
                    "batch": batch,
                    "ms_per_batch": 1e3 * seconds,
                    "ms_per_frame": 1e3 * seconds / batch,
                    "fps": fps,
                    "gflop_per_frame": flop,
                    "gflops": gflops,
                    "of_peak": _per(gflops, peak) if precision == "fp32" else None,
                }
            )
            log(f"{runtime} {precision} {r} px, {threads} thread(s), batch {batch}: {fps:.1f} fps")
    return {
        "cut": "latent",
        "flops_source": source,
        "macs_per_frame": {str(r): m for r, m in macs.items()},
        "preprocessing": preprocessing,
        "rows": rows,
        "skipped": [{"runtime": k[0], "precision": k[1], "why": v} for k, v in skipped.items()],
    }


# ------------------------------------------------------------------------------------ learner
LATENT_SHAPES = {"latent": (4, 4, LATENT_CHANNELS), "pool": (POOL_CHANNELS,)}
"""Pattern shapes at 128 px: the latent cut's (4, 4, 320) and the pooled 1280 features."""


def _filled_learner(
    depth: str, settings: PerfSettings, head: dict[str, np.ndarray] | None
) -> AR1Star:
    """An AR1* learner (device defaults) whose replay memory holds ``settings.replay``
    patterns of 10 classes, filled by one cheap 1-epoch update (it is not timed)."""
    from edge_cl.learner.replay import LABEL_DTYPE, Codec

    shape = LATENT_SHAPES[depth]
    config = AR1Config()
    codec = Codec(config.replay_codec, config.stored_shape(shape))
    per_pattern = codec.bytes_per_pattern + LABEL_DTYPE.itemsize
    replay_mb = (settings.replay + 0.5) * per_pattern / 2**20
    learner = AR1Star(head if depth == "latent" else None, depth=depth, replay_mb=replay_mb)
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(size=(settings.replay, *shape))).astype(np.float32)
    learner.config = replace(learner.config, epochs=1)
    learner.partial_fit(x, [f"c{i % 10}" for i in range(settings.replay)])
    learner.config = replace(learner.config, epochs=settings.epochs)
    assert learner.memory is not None and len(learner.memory) == settings.replay
    return learner


def bench_learner(
    settings: PerfSettings, manifest: Manifest, machine: Mapping[str, Any], log: Log
) -> dict[str, Any]:
    """One incremental update's time and GFLOP/s (ratio to the matmul peak at the same threads)
    for N new latents with a full memory, replaying all of it or ``replay_per_epoch``; head
    inference per frame; checkpoint size and save/load time."""
    from edge_cl.extractor.imagenet import head_arrays

    tpc = _threadpoolctl()
    head = head_arrays(manifest.head())
    rng = np.random.default_rng(2)
    rows: list[dict[str, Any]] = []
    inference: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    for depth in ("latent", "pool"):
        filled = _filled_learner(depth, settings, head)
        shape = LATENT_SHAPES[depth]
        for threads in settings.threads:
            learner = copy.deepcopy(filled)
            peak = peak_at(machine, threads)
            with tpc.threadpool_limits(threads):
                blas = _blas_threads()
                for per_epoch in (None, settings.replay_per_epoch):
                    learner.config = replace(learner.config, replay_per_epoch=per_epoch)
                    for new in settings.news:
                        x = np.abs(rng.normal(size=(new, *shape))).astype(np.float32)
                        labels = [f"c{i % 12}" for i in range(new)]
                        seconds = time_call(
                            partial(learner.partial_fit, x, labels), settings.repeats
                        )
                        gflop = learner.last_update_flops / 1e9
                        memory = _memory(learner)
                        row = {
                            "threads": threads,
                            "blas_threads": blas,
                            "depth": depth,
                            "new": new,
                            "memory": memory,
                            "replay_per_epoch": per_epoch,
                            "replayed": memory if per_epoch is None else min(per_epoch, memory),
                            "epochs": learner.config.epochs,
                            "latent_epochs": learner.config.latent_epochs,
                            "seconds": seconds,
                            "gflop": gflop,
                            "gflops": gflop / seconds,
                            "peak_gflops": peak,
                            "ratio_to_peak": _per(gflop / seconds, peak),
                        }
                        rows.append(row)
                        log(
                            f"update {depth} N={new} + {row['replayed']} replayed, "
                            f"{threads} thread(s): {seconds:.3f} s, {row['gflops']:.1f} GFLOP/s"
                        )
                for batch in (1, 32):
                    x = np.abs(rng.normal(size=(batch, *shape))).astype(np.float32)
                    seconds = time_call(
                        partial(learner.predict_with_confidence, x),
                        settings.repeats,
                        settings.min_seconds,
                    )
                    inference.append(
                        {
                            "threads": threads,
                            "depth": depth,
                            "batch": batch,
                            "ms_per_frame": 1e3 * seconds / batch,
                        }
                    )
        with tempfile.TemporaryDirectory(prefix="edge-cl-perf-") as tmp:
            path = Path(tmp) / "learner.ckpt"
            save = time_call(partial(filled.save, path), settings.repeats)
            load = time_call(partial(AR1Star.load, path), settings.repeats)
            size = path.stat().st_size
        checkpoints.append(
            {
                "depth": depth,
                "memory": _memory(filled),
                "bytes": size,
                "save_s": save,
                "load_s": load,
            }
        )
        log(f"checkpoint {depth}: {size / 2**20:.2f} MiB, save {save:.3f} s, load {load:.3f} s")
    return {"updates": rows, "inference": inference, "checkpoints": checkpoints}


# -------------------------------------------------------------------------------- device loop
def _reap(pid: int, timeout: float) -> tuple[int, resource.struct_rusage] | None:
    """Wait up to ``timeout`` s for child ``pid``: (exit code, its own rusage), None if alive."""
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _device_process(
    command: list[str], env: dict[str, str], log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` with its output in ``log_dir``; kill it on the way out if still alive
    (the caller reaps it normally, which sets ``returncode``)."""
    with (log_dir / "run.out").open("wb") as out, (log_dir / "run.log").open("wb") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=env)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            reaped = _reap(proc.pid, 10.0)
            proc.returncode = reaped[0] if reaped else -signal.SIGKILL


def _wait_ready(notify: socket.socket, pid: int, timeout: float, log_file: Path) -> float:
    """Wait for the loop's ``READY=1`` (sent after its first prediction); returns its time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = notify.recv(4096)
        except TimeoutError:
            done, _, _ = os.wait4(pid, os.WNOHANG)
            if done:
                raise PerfError(
                    f"edge-cl run exited before its first prediction:\n{_tail(log_file)}"
                ) from None
            continue
        if b"READY=1" in message.split(b"\n"):
            return time.monotonic()
    raise PerfError(f"edge-cl run made no prediction within {timeout:.0f} s:\n{_tail(log_file)}")


def seed_checkpoint(config: DeviceConfig, replay: int) -> int:
    """Write the checkpoint a device of ``config.learner`` has after a while: 10 classes from
    ``replay`` patterns, which fill its replay memory if it has one (up to ``replay``), so a
    teach replays what it would in service; returns the fill. Learners with ``epochs`` learn
    them in one (the resumed learner takes the configured ones)."""
    from edge_cl.device.classifier import new_learner
    from edge_cl.extractor import RUNTIME_FORMATS

    manifest = Manifest.load(config.models)
    fmt = RUNTIME_FORMATS[config.runtime]
    sha = manifest.find(cut=config.cut, format=fmt, precision=config.precision).sha256
    seeding = config
    if "epochs" in learner_spec(config.learner).options:
        seeding = replace(config, learner_options={**config.learner_options, "epochs": 1})
    learner = new_learner(seeding, sha, manifest)
    side = config.resolution // 32
    shape = (side, side, LATENT_CHANNELS) if config.cut == "latent" else (POOL_CHANNELS,)
    x = np.abs(np.random.default_rng(3).normal(size=(replay, *shape))).astype(np.float32)
    learner.partial_fit(x, [f"c{i % 10}" for i in range(replay)])
    config.state_dir.mkdir(parents=True, exist_ok=True)
    learner.save(config.checkpoint)
    return _memory(learner)


def _render_seconds(settings: PerfSettings) -> float:
    """Seconds the synthetic scene takes to render one camera frame here (it bounds the loop)."""
    from firmware_bridge.sources import SyntheticScene

    scene = SyntheticScene(size=settings.camera)
    render = partial(scene.render, 0, scene.objects[0])
    return time_call(render, settings.repeats, settings.min_seconds)


def _drive(ctl: Callable[..., dict[str, Any]], settings: PerfSettings, log: Log) -> dict[str, Any]:
    """Steady frames/s from two frame counts ``loop_seconds`` apart, then one teach of
    ``teach_frames`` frames, stopped with ``wait`` (the reply comes once the model is in use)."""
    time.sleep(min(1.0, settings.loop_seconds))
    first, t1 = ctl({"cmd": "status"})["frames"], time.monotonic()
    time.sleep(settings.loop_seconds)
    last, t2 = ctl({"cmd": "status"})["frames"], time.monotonic()
    fps = (last - first) / (t2 - t1)
    log(f"device loop: {fps:.1f} frames/s steady")
    ctl({"cmd": "teach", "label": "perf"})
    deadline = time.monotonic() + 60.0
    while ctl({"cmd": "status"})["teach_frames"] < settings.teach_frames:
        if time.monotonic() > deadline:
            raise PerfError(f"no {settings.teach_frames} frames within 60 s of teach")
        time.sleep(0.01)
    sent = time.monotonic()
    reply = ctl({"cmd": "stop", "wait": True}, timeout=150.0)
    log(f"device loop: teach learned {_fmt(reply.get('latency_s'))} s after stop")
    teach = {k: reply.get(k) for k in ("frames", "used", "latency_s")}
    return {
        "steady_fps": fps,
        "steady_window_s": t2 - t1,
        "teach": teach | {"reply_s": time.monotonic() - sent},
    }


def bench_loop(settings: PerfSettings, models: Path | None, log: Log) -> dict[str, Any]:
    """``edge-cl run`` on the synthetic scene as a real process: start-up to first prediction
    (its systemd READY=1), steady frames/s (frame counts from the control socket), the latency
    of a ``teach_frames`` teach, and its peak RSS (its own VmHWM, from its summary at exit)."""
    try:
        from edge_cl.device.config import load_config, parse_assignments
        from edge_cl.device.control import send_command
    except ImportError as e:
        return {"skipped": f"edge_cl.device is not usable yet: {e}"}
    with tempfile.TemporaryDirectory(prefix="edge-cl-perf-") as name:
        tmp = Path(name)
        width, height = settings.camera
        overrides = {
            "source": "synthetic",
            "capture_size": f"{width}x{height}",
            "state_dir": str(tmp / "state"),
            "control_socket": str(tmp / "ctl.sock"),
            "log_interval": "3600",
            "max_seconds": str(180 + settings.loop_seconds),
            **({"models": str(models)} if models is not None else {}),
            **parse_assignments(settings.loop_set),
        }
        config = load_config(None, overrides)
        render = _render_seconds(settings)
        memory = seed_checkpoint(config, settings.replay)
        log(f"device loop: checkpoint with 10 classes and {memory} replay patterns")
        sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
        keys = ("runtime", "precision", "resolution", "threads", "cut", "learner")
        options = {**learner_spec(config.learner).options, **config.learner_options}
        schedule = {k: options[k] for k in ("epochs", "replay_per_epoch") if k in options}
        result: dict[str, Any] = {
            "command": "edge-cl run " + " ".join(sets),
            "config": {k: getattr(config, k) for k in keys}
            | schedule
            | {"camera": f"{width}x{height}"},
            "memory": memory,
            "render_ms": 1e3 * render,
        }

        def ctl(request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
            reply = send_command(config.socket_path, request, timeout)
            if not reply.get("ok"):
                raise PerfError(f"edge-cl run refused {request}: {reply.get('error')}")
            return reply

        env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_USEC"}
        env["NOTIFY_SOCKET"] = str(tmp / "notify.sock")
        command = [sys.executable, "-m", "edge_cl.cli", "run", *sets]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(env["NOTIFY_SOCKET"])
            notify.settimeout(0.2)
            start = time.monotonic()
            with _device_process(command, env, tmp) as proc:
                result["startup_s"] = _wait_ready(notify, proc.pid, 120.0, tmp / "run.log") - start
                log(f"device loop: first prediction {result['startup_s']:.2f} s after start")
                result |= _drive(ctl, settings, log)
                per_epoch = schedule.get("replay_per_epoch")
                result["teach"]["replayed"] = (
                    memory if per_epoch is None else min(per_epoch, memory)
                )
                proc.send_signal(signal.SIGTERM)
                reaped = _reap(proc.pid, 60.0)
                if reaped is None:
                    raise PerfError(
                        f"edge-cl run did not stop 60 s after SIGTERM:\n{_tail(tmp / 'run.log')}"
                    )
                proc.returncode, usage = reaped
        result["exit_code"] = proc.returncode
        try:
            summary = json.loads((tmp / "run.out").read_text())
        except (OSError, json.JSONDecodeError):
            summary = {}
        # the loop's own VmHWM: wait4's ru_maxrss would count this (larger) process too, whose
        # memory the child had between fork and exec
        peak = (summary.get("memory_mb") or {}).get("peak")
        result["peak_rss_mb"] = peak if peak is not None else usage.ru_maxrss / 1024
        log(f"device loop: peak RSS {result['peak_rss_mb']:.0f} MB")
        kept = ("frames", "seconds", "fps", "latency_ms", "resumed", "memory_mb")
        result["summary"] = {k: summary.get(k) for k in kept}
    return result


# ------------------------------------------------------------------------------------ targets
@dataclass(frozen=True)
class Target:
    """One target from the issue: ``value`` (None: not measured) against ``limit``."""

    text: str
    unit: str
    op: str
    limit: float
    value: float | None
    where: str = ""
    relative: bool = False

    def status(self, emulated: bool) -> str:
        """``met``, ``missed``, ``not measured``, or ``n/a (emulated)`` for absolute figures.

        >>> Target("fast", "frames/s", ">=", 200, 250.0).status(False)
        'met'
        >>> Target("small", "MB", "<=", 200, 250.0).status(True)
        'n/a (emulated)'
        """
        if self.value is None:
            return "not measured"
        if emulated and not self.relative:
            return "n/a (emulated)"
        ok = self.value >= self.limit if self.op == ">=" else self.value <= self.limit
        return "met" if ok else "missed"

    def line(self, emulated: bool) -> str:
        """The report's line: figure, where it comes from, target, verdict.

        >>> Target("start-up", "s", "<=", 2, 1.25, "edge-cl run").line(False)
        'start-up: 1.25 s (edge-cl run); target <= 2 s: met'
        """
        value = "-" if self.value is None else f"{_fmt(self.value)} {self.unit}".strip()
        where = f" ({self.where})" if self.where else ""
        limit = f"{self.limit:g} {self.unit}".strip()
        return f"{self.text}: {value}{where}; target {self.op} {limit}: {self.status(emulated)}"


def _best(rows: Sequence[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return max(found, key=lambda r: float(r["fps"])) if found else None


def _epochs(update: Mapping[str, Any]) -> str:
    """The epochs of an update as text, naming how many train the latent layers if not all."""
    text = f"{update['epochs']} epochs"
    deep = update.get("latent_epochs")
    if update.get("depth") == "latent" and deep is not None and deep < update["epochs"]:
        text += f" ({deep} through the latent layers)"
    return text


def _learner_targets(updates: Sequence[Mapping[str, Any]]) -> list[Target]:
    """Teach update time at the most threads, and the ratio to the matmul peak per thread count,
    for the smallest N at the latent depth (the device's)."""
    latent = [u for u in updates if u["depth"] == "latent"]
    if not latent:
        return [
            Target("teach update (30 new + all 1500 replayed)", "s", "<=", 0.5, None),
            Target("learner update, of matmul peak", "", ">=", 0.5, None, relative=True),
        ]
    new = min(u["new"] for u in latent)
    top = max(u["threads"] for u in latent)
    times, ratios = [], []
    for u in latent:
        if u["new"] != new:
            continue
        some = "all" if u["replay_per_epoch"] is None else f"{u['replayed']} of"
        mix = f"{u['new']} new + {some} {u['memory']} replayed, {_epochs(u)}"
        if u["threads"] == top:
            where = f"latent depth, {top} thread(s)"
            if u.get("ratio_to_peak"):  # its FLOPs at the matmul peak: no code runs faster
                where += f"; {_fmt(u['seconds'] * u['ratio_to_peak'])} s at the matmul peak"
            times.append(Target(f"teach update ({mix})", "s", "<=", 0.5, u["seconds"], where))
        if u["replay_per_epoch"] is None:
            text = f"learner update, {u['threads']} thread(s), of matmul peak"
            value = u["ratio_to_peak"]
            ratios.append(Target(text, "", ">=", 0.5, value, f"latent, {mix}", relative=True))
    return times + ratios


def targets(result: Mapping[str, Any]) -> list[Target]:
    """The issue's targets, each with the figure of this run that answers it."""
    out: list[Target] = []
    rows = result.get("extractor", {}).get("rows", [])
    for text, threads, precision, limit in (
        ("steady inference, 128 px int8, both cores", 2, "int8", 200),
        ("single-threaded inference, 128 px fp32", 1, "fp32", 60),
    ):
        best = _best(rows, resolution=128, precision=precision, threads=threads)
        where = f"{best['runtime']}, batch {best['batch']}" if best else ""
        value = float(best["fps"]) if best else None
        out.append(Target(text, "frames/s", ">=", limit, value, where))
    out += _learner_targets(result.get("learner", {}).get("updates", []))
    loop = result.get("loop", {})
    teach = loop.get("teach", {})
    out += [
        Target(
            f"device loop teach latency ({teach.get('used', 30)} frames + "
            f"{teach.get('replayed', DEFAULT_REPLAYED)} replayed)",
            "s",
            "<=",
            0.5,
            teach.get("latency_s"),
            "stop -> new model in use",
        ),
        Target("device loop peak RSS", "MB", "<=", 200, loop.get("peak_rss_mb")),
        Target("device loop start-up to first prediction", "s", "<=", 2, loop.get("startup_s")),
    ]
    return out


# -------------------------------------------------------------------------------------- run
def run(settings: PerfSettings, models: Path | None = None, log: Log = print) -> dict[str, Any]:
    """Run the selected sections; returns the JSON-ready result (with ``targets``)."""
    manifest = Manifest.load(models)
    result: dict[str, Any] = {
        "edge_cl": __version__,
        "command": "edge-cl " + " ".join(sys.argv[1:]),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "load_average_start": list(os.getloadavg()),
    }
    result["machine"] = bench_machine(settings, log)
    if result["machine"]["emulation"] is not None:
        log(f"emulated ({result['machine']['emulation']}): only relative figures mean anything")
    if "extractor" in settings.sections:
        result["extractor"] = bench_extractor(settings, manifest, result["machine"], log)
    if "learner" in settings.sections:
        result["learner"] = bench_learner(settings, manifest, result["machine"], log)
    if "loop" in settings.sections:
        result["loop"] = bench_loop(settings, models, log)
    result["load_average_end"] = list(os.getloadavg())
    emulated = result["machine"]["emulation"] is not None
    result["targets"] = [
        asdict(t) | {"status": t.status(emulated), "line": t.line(emulated)}
        for t in targets(result)
    ]
    return result


def _fmt(value: Any) -> str:
    """A number to 3 significant digits (whole above 100), None as ``n/a``.

    >>> _fmt(1413.4), _fmt(123.456), _fmt(None), _fmt(0.05123), _fmt(7)
    ('1413', '123', 'n/a', '0.0512', '7')
    """
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _table(columns: Mapping[str, str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Markdown table: ``columns`` maps each header to the key of its value in a row.

    >>> _table({"N": "new", "s": "seconds"}, [{"new": 30, "seconds": 0.25}])
    ['| N | s |', '|---|---|', '| 30 | 0.25 |']
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_fmt(r[k]) for k in columns.values()) + " |" for r in rows]


EXTRACTOR_COLUMNS = {
    "runtime": "runtime",
    "precision": "precision",
    "px": "resolution",
    "threads": "threads",
    "batch": "batch",
    "ms/batch": "ms_per_batch",
    "ms/frame": "ms_per_frame",
    "frames/s": "fps",
    "GFLOP/s": "gflops",
    "of peak": "of_peak",
}
UPDATE_COLUMNS = {
    "threads": "threads",
    "BLAS threads": "blas",
    "depth": "depth",
    "N": "new",
    "replay": "mode",
    "replayed": "replayed",
    "epochs": "epochs",
    "seconds": "seconds",
    "GFLOP": "gflop",
    "GFLOP/s": "gflops",
    "of peak": "ratio_to_peak",
}


def _machine_lines(machine: Mapping[str, Any]) -> list[str]:
    blas = machine["numpy_blas"]
    loaded = ", ".join(
        f"{b['internal_api']} {b['version']} {b['architecture']}" for b in machine["blas_runtime"]
    )
    peaks = ", ".join(f"{p['gflops']:.1f} GFLOP/s at {p['threads']}" for p in machine["peaks"])
    return [
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']} ({machine['machine']}), {machine['cores']} usable cores; "
        f"SIMD: {' '.join(machine['cpu_features']) or 'unknown'}",
        f"- numpy {machine['numpy']} built with {blas.get('name', '?')} {blas.get('version', '')}"
        f"; BLAS loaded: {loaded}",
        f"- matmul peak ({machine['matmul']}), by threads: {peaks}",
        "",
    ]


def _extractor_lines(ex: Mapping[str, Any]) -> list[str]:
    out = [
        "## Extractor (latent cut)",
        "",
        f"FLOPs: {ex['flops_source']}. GFLOP/s counts conv MACs x 2; the ratio to the matmul "
        "peak (same threads) is given for fp32 only, int8 runs integer kernels.",
        "",
        *_table(EXTRACTOR_COLUMNS, ex["rows"]),
        "",
    ]
    out += [f"Skipped {s['runtime']} {s['precision']}: {s['why']}" for s in ex["skipped"]]
    out += [""] if ex["skipped"] else []
    columns = {"camera": "camera", "px": "resolution", "ms/frame": "ms"}
    return [*out, "Preprocessing one camera frame:", "", *_table(columns, ex["preprocessing"]), ""]


def _learner_lines(le: Mapping[str, Any]) -> list[str]:
    updates = [
        u
        | {
            "blas": ",".join(map(str, u["blas_threads"])),
            "mode": "all" if u["replay_per_epoch"] is None else f"sample {u['replay_per_epoch']}",
        }
        for u in le["updates"]
    ]
    checkpoints = [c | {"mib": c["bytes"] / 2**20} for c in le["checkpoints"]]
    return [
        "## Learner (AR1*)",
        "",
        "One incremental update: N new latents with the replay memory full, replaying all of it "
        "every epoch (reference AR1*) or one sample of it (the device default); FLOPs from "
        "`AR1Star.last_update_flops`, the matmul peak at the same threads.",
        "",
        *_table(UPDATE_COLUMNS, updates),
        "",
        "Head inference:",
        "",
        *_table(
            {"threads": "threads", "depth": "depth", "batch": "batch", "ms/frame": "ms_per_frame"},
            le["inference"],
        ),
        "",
        "Checkpoints:",
        "",
        *_table(
            {"depth": "depth", "replay patterns": "memory", "MiB": "mib", "save s": "save_s"}
            | {"load s": "load_s"},
            checkpoints,
        ),
        "",
    ]


def _loop_lines(loop: Mapping[str, Any]) -> list[str]:
    out = ["## Device loop (`edge-cl run`, synthetic scene)", ""]
    if "skipped" in loop:
        return [*out, f"Not measured: {loop['skipped']}", ""]
    teach, latency = loop["teach"], loop["summary"].get("latency_ms") or {}
    return [
        *out,
        f"`{loop['command']}`, resuming a checkpoint of 10 classes with {loop['memory']} replay "
        f"patterns; {', '.join(f'{k} {v}' for k, v in loop['config'].items())}.",
        "",
        f"- start-up (process start to first prediction): {_fmt(loop['startup_s'])} s",
        f"- steady: {_fmt(loop['steady_fps'])} frames/s over {_fmt(loop['steady_window_s'])} s; "
        f"the synthetic scene it reads takes {_fmt(loop['render_ms'])} ms a frame to render "
        "(measured here, in the same run)",
        f"- frame to verdict (its summary): mean {_fmt(latency.get('mean'))} ms, "
        f"p95 {_fmt(latency.get('p95'))} ms",
        f"- teach of {teach['used']} frames + {teach['replayed']} replayed: new model in use "
        f"{_fmt(teach['latency_s'])} s after stop, reply after {_fmt(teach['reply_s'])} s",
        f"- peak RSS: {_fmt(loop['peak_rss_mb'])} MB; exit code {loop['exit_code']}",
        "",
    ]


def markdown_report(result: Mapping[str, Any]) -> str:
    """The results as Markdown: targets first, then one section per measurement."""
    machine = result["machine"]
    load = result["load_average_start"][0], result["load_average_end"][0]
    out = [
        "# edge-cl bench-perf",
        "",
        f"Command: `{result['command']}` (edge_cl {result['edge_cl']}, {result['started_utc']}); "
        f"1-minute load average {load[0]:.2f} at start, {load[1]:.2f} at end, "
        f"{machine['cores']} cores.",
        "",
    ]
    if load[0] >= BUSY_LOAD:
        out += [
            f"**The machine was busy when this run started (load average {load[0]:.2f}): its "
            "timings are not valid results.**",
            "",
        ]
    if machine["emulation"] is not None:
        out += [
            f"**Emulated ({machine['emulation']}): only relative figures (ratios to the matmul "
            "peak, one runtime against another) mean anything; absolute timings do not.**",
            "",
        ]
    out += ["## Targets", "", *(f"- {t['line']}" for t in result["targets"]), ""]
    out += _machine_lines(machine)
    if "extractor" in result:
        out += _extractor_lines(result["extractor"])
    if "learner" in result:
        out += _learner_lines(result["learner"])
    if "loop" in result:
        out += _loop_lines(result["loop"])
    return "\n".join(out)


# ---------------------------------------------------------------------------------------- CLI
def _ints(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)`` (an argparse type).

    >>> _ints("1, 8,32")
    (1, 8, 32)
    """
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def settings_from_args(args: argparse.Namespace) -> PerfSettings:
    """``--quick`` (or full) settings, with every option given on the command line applied."""
    base = QUICK if args.quick else PerfSettings()
    given = {f.name: getattr(args, f.name) for f in fields(PerfSettings)}
    if args.loop_set is not None:
        given["loop_set"] = tuple(args.loop_set)
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def cmd_bench_perf(args: argparse.Namespace) -> int:
    """Speed and footprint: extractor frames/s, learner update cost vs matmul peak, device loop."""
    settings = settings_from_args(args)
    result = run(settings, args.models, log=lambda line: print(line, file=sys.stderr, flush=True))
    report = markdown_report(result)
    print("\n" + report)
    for path, text in (
        (args.json, json.dumps(result, indent=1, default=str) + "\n"),
        (args.markdown, report + "\n"),
    ):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    return 0


def add_perf_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench-perf`` to the ``edge-cl`` sub-command parser."""
    p = sub.add_parser(
        "bench-perf", help=cmd_bench_perf.__doc__, description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--only",
        dest="sections",
        type=_names,
        default=None,
        help=f"comma-separated sections among {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument("--quick", action="store_true", help="small repeat counts (about 30 s)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--markdown", type=Path, default=None, help="write the report here")
    p.add_argument("--threads", type=_ints, default=None, help="thread counts (1,2)")
    p.add_argument("--runtimes", type=_names, default=None, help="extractor runtimes (onnx,litert)")
    p.add_argument("--precisions", type=_names, default=None, help="fp32,int8")
    p.add_argument("--batches", type=_ints, default=None, help="extractor batch sizes (1,8,32)")
    p.add_argument("--resolutions", type=_ints, default=None, help="input sizes (128,224)")
    p.add_argument("--repeats", type=int, default=None, help="timings per figure (median)")
    p.add_argument("--peak-size", type=int, default=None, help="matmul side of the peak (1024)")
    p.add_argument("--news", type=_ints, default=None, help="new latents per update (30,100,300)")
    p.add_argument("--replay", type=int, default=None, help="patterns in replay memory (1500)")
    p.add_argument("--replay-per-epoch", type=int, default=None, help="device default (256)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per update (4)")
    p.add_argument("--loop-seconds", type=float, default=None, help="steady window (10 s)")
    p.add_argument("--teach-frames", type=int, default=None, help="frames of the teach (30)")
    p.add_argument(
        "--loop-set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a device config override for the loop (repeatable), e.g. runtime=onnx",
    )
    p.set_defaults(func=cmd_bench_perf, min_seconds=None, camera=None)
