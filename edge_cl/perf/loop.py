"""The device loop section: ``edge-cl run`` on the synthetic scene as a real child process.

It resumes a seeded checkpoint (``seed_checkpoint``), reports start-up to its first prediction
(systemd ``READY=1`` on a notify socket), steady frames/s and one teach through the control
socket, and its peak RSS from the summary it prints at exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.device.config import DeviceConfig, load_config, parse_assignments
from edge_cl.device.control import send_command
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.config import LATENT_CHANNELS, POOL_CHANNELS
from edge_cl.learner.registry import learner_spec
from edge_cl.perf.learner import memory_size
from edge_cl.perf.machine import time_call
from edge_cl.perf.report import fmt
from edge_cl.perf.settings import Log, PerfError, PerfSettings


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
    return memory_size(learner)


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
    log(f"device loop: teach learned {fmt(reply.get('latency_s'))} s after stop")
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
