"""Soak ``edge-cl run``: many frames, teaching every few hundred, memory watched throughout.

Why: a device runs for months. Its resident memory must not creep up with frames or teaches, and
the latent replay memory must stay within its cap however often it is taught.

The frames are the synthetic scene's (``firmware_bridge.sources.SyntheticScene``), rendered once
to JPEG files and replayed by a real ``edge-cl run`` subprocess as a looping filelist at
``--source-fps`` (faster than the device classifies, so it drops frames; unpaced, the replay's
JPEG decoding alone took a whole core and starved the classifier). Each object stays in view
for ``SEGMENT`` frames of the stream, then the next one, so every frame carries its truth.

Every ``--teach-every`` classified frames this script asks the control socket what is in view
(``predict``: its truth and stream position) and, if the object stays in view long enough,
teaches it (``teach``, about ``TEACH_FRAMES`` frames, ``stop``), so the taught labels rotate
through the objects. It samples the process's VmRSS (``/proc/PID/status``) every
``--sample-seconds``, noting whether a teach or a learning job was under way (drift is measured
on the idle samples, peaks on all), and after each teach reads the checkpoint the device wrote
to measure its replay memory (bytes held, patterns, cap). After ``--frames`` classified frames
the device stops by itself and prints its summary.

Usage: ``python scripts/soak.py [--frames 100000] [--teach-every 300] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_cl.device.control import ControlError, send_command
from edge_cl.errors import CheckpointError
from edge_cl.learner.ar1 import AR1Star
from firmware_bridge.sources import DEFAULT_OBJECTS, SyntheticScene

REPO = Path(__file__).resolve().parent.parent
VIEWS = 40
"""Rendered views per object (and of the empty scene)."""
SEGMENT = 300
"""Stream frames each object stays in view."""
TEACH_FRAMES = 30
"""Frames collected per teach."""


def render(folder: Path, seed: int = 0) -> Path:
    """JPEG views of each object and a filelist of segments (object names with ``_`` for
    spaces: a filelist label is one word); returns the filelist."""
    scene = SyntheticScene(size=(320, 240), seed=seed)
    lines: list[str] = []
    for k, name in enumerate(DEFAULT_OBJECTS):
        label = name.replace(" ", "_")
        for i in range(VIEWS):
            path = folder / f"{label}_{i:02d}.jpg"
            image = scene.render(k * VIEWS + i, name)
            cv2.imwrite(
                str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92]
            )
        lines += [f"{label}_{j % VIEWS:02d}.jpg {label}" for j in range(SEGMENT)]
    listing = folder / "stream.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MiB (None once it has exited)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:"))
    return kb / 1024


def replay_footprint(checkpoint: Path) -> dict[str, int] | None:
    """The replay memory held in ``checkpoint``: bytes, cap, patterns (None if unreadable)."""
    try:
        memory = AR1Star.load(checkpoint).memory
    except CheckpointError:
        return None
    if memory is None:
        return None
    return {"nbytes": memory.nbytes, "max_bytes": memory.max_bytes, "patterns": len(memory)}


def teach_in_view(sock: Path) -> str | None:
    """Teach the object in view if it stays in view for the whole teach; its label or None."""
    latest = send_command(sock, {"cmd": "predict"})
    truth = latest.get("truth")
    if not latest.get("ok") or truth is None or latest["frame"] % SEGMENT > SEGMENT // 3:
        return None
    if not send_command(sock, {"cmd": "teach", "label": truth})["ok"]:
        return None
    deadline = time.monotonic() + 10
    while send_command(sock, {"cmd": "status"})["teach_frames"] < TEACH_FRAMES:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    send_command(sock, {"cmd": "stop"})  # queued; the next teach waits for it
    return str(truth)


def drift_per_10k(samples: list[tuple[int, float, bool]]) -> float | None:
    """Least-squares slope of RSS (MiB) against frames, per 10,000 frames, over the idle samples
    after the first tenth of the run (warm-up: first teaches, replay memory allocated)."""
    if not samples:
        return None
    start = samples[-1][0] // 10
    late = [(f, r) for f, r, busy in samples if f >= start and not busy]
    if len(late) < 3:
        return None
    frames, rss = np.array(late, dtype=np.float64).T
    return float(np.polyfit(frames, rss, 1)[0] * 10_000)


def soak(
    frames: int, teach_every: int, sample_seconds: float, source_fps: float, workdir: Path
) -> dict[str, Any]:
    """Run the soak in ``workdir``; returns the report (see module doc)."""
    listing = render(workdir)
    state, sock = workdir / "state", workdir / "ctl.sock"
    command = [
        sys.executable, "-m", "edge_cl.cli", "run",
        "--source", f"filelist:{listing}@{workdir}",
        "--state-dir", str(state),
        "--max-frames", str(frames),
        "--set", f"control_socket={sock}",
        "--set", "loop=true",
        "--set", f"fps={source_fps}",
        "--set", "log_interval=60",
    ]  # fmt: skip
    log = (workdir / "run.log").open("w")
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    started = time.monotonic()
    samples: list[tuple[int, float, bool]] = []
    replay: list[dict[str, int]] = []
    taught: list[str] = []
    next_teach, next_sample, done = teach_every, 0.0, 0
    try:
        while proc.poll() is None:
            try:
                status = send_command(sock, {"cmd": "status"}, timeout=30)
            except ControlError:
                time.sleep(0.2)  # starting, or stopping after the last frame
                continue
            done = int(status["frames"])
            now = time.monotonic()
            if now >= next_sample and (rss := rss_mb(proc.pid)) is not None:
                busy = bool(status["jobs_pending"] or status["teaching"])
                samples.append((done, rss, busy))
                next_sample = now + sample_seconds
            if done >= next_teach and not status["jobs_pending"]:
                if taught:  # the previous teach's checkpoint is written by now
                    footprint = replay_footprint(state / "learner.ckpt")
                    if footprint is not None:
                        replay.append(footprint)
                label = teach_in_view(sock)
                if label is not None:
                    taught.append(label)
                    next_teach = done + teach_every
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
        log.close()
    if proc.returncode != 0:
        tail = (workdir / "run.log").read_text()[-3000:]
        raise RuntimeError(f"edge-cl run exited with {proc.returncode}:\n{tail}")
    summary = json.loads(out)
    trace = [r for _, r, _ in samples]
    idle = [r for _, r, busy in samples if not busy]
    caps = {r["max_bytes"] for r in replay}
    return {
        "frames": summary["frames"],
        "seconds": round(time.monotonic() - started, 1),
        "fps": summary["fps"],
        "teaches": len(taught),
        "teaches_ok": sum(t["ok"] for t in summary["teaches"]),
        "taught_labels": sorted(set(taught)),
        "accuracy": summary["accuracy"],
        "frames_read": summary["source"]["read"],
        "frames_dropped": summary["source"]["dropped"],
        "bad_frames": summary["bad_frames"],
        "latency_ms": summary["latency_ms"],
        "rss_mb": {
            "first": round(trace[0], 1),
            "idle_middle": round(idle[len(idle) // 2], 1),
            "idle_end": round(idle[-1], 1),
            "max": round(max(trace), 1),
            "samples": len(trace),
            "idle_samples": len(idle),
        },
        "rss_drift_mb_per_10k_frames": drift_per_10k(samples),
        "rss_trace": [[f, round(r, 1), b] for f, r, b in samples[:: max(1, len(samples) // 40)]],
        "replay": {
            "checkpoints_read": len(replay),
            "max_nbytes": max((r["nbytes"] for r in replay), default=None),
            "cap_bytes": sorted(caps),
            "within_cap": all(r["nbytes"] <= r["max_bytes"] for r in replay),
            "max_patterns": max((r["patterns"] for r in replay), default=None),
        },
        "checkpoint_bytes": (state / "learner.ckpt").stat().st_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames to classify")
    parser.add_argument("--teach-every", type=int, default=300, help="frames between teaches")
    parser.add_argument("--sample-seconds", type=float, default=2.0, help="RSS sampling period")
    parser.add_argument("--source-fps", type=float, default=250.0, help="replay pace")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        report = soak(
            args.frames, args.teach_every, args.sample_seconds, args.source_fps, Path(tmp)
        )
    report["command"] = "python scripts/soak.py " + " ".join(sys.argv[1:])
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if report["replay"]["within_cap"] else 1


if __name__ == "__main__":
    sys.exit(main())
