"""Kill -9 a process at random moments while it rewrites its checkpoint, many times over.

Why: ``edge_cl.learner.checkpoint`` promises that a crash at any point leaves either the previous
or the new complete checkpoint. This checks the promise against real ``SIGKILL``s, not a mock.

Each trial starts a child process (this script with ``--child``) holding two real AR1* learners
(latent depth, the pretrained head, uint8 replay), which saves them alternately to one path,
back to back, each save stamped with the next generation number (``batches_seen``) and reported
on stdout once complete. The parent kills the child at a time drawn uniformly over ``--window``
seconds (many saves long), then checks:

- the checkpoint loads (checksum, lengths, extractor) and is bit-identical in its predictions
  to the learner of its generation's parity;
- its generation is the last one reported complete, or the one being written when the kill
  came (the rename may have happened before the report), never older, never newer; and
  exactly the last one reported if the kill came inside a write (before the rename);
- a temporary file left by the kill marks a kill inside a write; leftovers are kept on purpose
  across trials, and must not break the next child's saves nor a final save.

Usage: ``python tests/harness/crash_checkpoints.py [--trials 200] [--window 0.5] [--json OUT]``
(prints a JSON summary; exit status 1 if any trial failed).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.errors import CheckpointError
from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.ar1 import AR1Star

CHECKPOINT = "learner.ckpt"
LATENT_SHAPE = (4, 4, 320)


def make_states(folder: Path) -> tuple[list[AR1Star], np.ndarray, str]:
    """Two learners with real state (the second learned one more class), saved to ``folder``
    as ``0.ckpt`` and ``1.ckpt``; also probe latents and the extractor sha256 they belong to."""
    manifest = Manifest.load()
    sha = manifest.find().sha256
    rng = np.random.default_rng(0)

    def latents(n: int, shift: float) -> np.ndarray:
        return np.clip(rng.normal(shift, 1.0, (n, *LATENT_SHAPE)), 0, 6).astype(np.float32)

    first = AR1Star(head_arrays(manifest.head()), sha, replay_mb=2, epochs=1)
    first.partial_fit(np.concatenate([latents(20, 0.5), latents(20, 1.5)]), ["a"] * 20 + ["b"] * 20)
    second = copy.deepcopy(first)
    second.partial_fit(latents(20, 1.0), ["c"] * 20)
    folder.mkdir(parents=True, exist_ok=True)
    for i, learner in enumerate((first, second)):
        learner.save(folder / f"{i}.ckpt")
    return [first, second], latents(16, 1.0), sha


def child(target: Path, refs: Path, start: int) -> None:
    """Save the two reference states to ``target`` alternately, forever, generation ``start``
    onwards; print each generation once its save returned."""
    states = [AR1Star.load(refs / f"{i}.ckpt") for i in (0, 1)]
    print("ready", flush=True)
    for generation in itertools.count(start):
        learner = states[generation % 2]
        learner.batches_seen = generation
        learner.save(target)
        print(generation, flush=True)


def temporaries(folder: Path) -> set[str]:
    """Names of the temporary files ``save_state`` makes next to the checkpoint."""
    return {p.name for p in folder.glob(f".{CHECKPOINT}.*.tmp")}


def run_trials(trials: int, workdir: Path, *, window: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """Run ``trials`` kill -9 trials in ``workdir``; returns the summary (see module doc)."""
    started = time.monotonic()
    states, probe, sha = make_states(workdir / "refs")
    expected = [s.predict_proba(probe) for s in states]
    folder = workdir / "state"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / CHECKPOINT
    states[0].batches_seen = 0
    states[0].save(target)
    on_disk = 0
    rng = random.Random(seed)
    counts = {"kills_inside_write": 0, "loads_ok": 0, "kept_previous": 0, "got_new": 0}
    failures: list[dict[str, Any]] = []
    saves = 0
    for trial in range(trials):
        before = temporaries(folder)
        proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                str(target),
                str(workdir / "refs"),
                str(on_disk + 1),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        if proc.stdout.readline().strip() != "ready":
            proc.kill()
            proc.wait()
            failures.append({"trial": trial, "error": f"child failed: {proc.stderr.read()[-500:]}"})
            continue
        time.sleep(rng.uniform(0.0, window))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reported = [int(line) for line in proc.stdout.read().split()]
        proc.stdout.close()
        proc.stderr.close()
        saves += len(reported)
        last = reported[-1] if reported else on_disk
        inside_write = bool(temporaries(folder) - before)
        counts["kills_inside_write"] += inside_write
        try:
            learner = AR1Star.load(target, extractor_sha256=sha)
        except CheckpointError as e:
            failures.append({"trial": trial, "error": f"unloadable after the kill: {e}"})
            continue
        generation = learner.batches_seen
        if generation not in (last, last + 1) or (inside_write and generation != last):
            error = f"generation {generation} on disk, last complete save was {last}"
            failures.append({"trial": trial, "error": error, "inside_write": inside_write})
        elif not np.array_equal(learner.predict_proba(probe), expected[generation % 2]):
            failures.append({"trial": trial, "error": f"generation {generation}: wrong state"})
        else:
            counts["loads_ok"] += 1
            counts["kept_previous" if generation == last else "got_new"] += 1
        on_disk = generation
    leftovers = temporaries(folder)
    states[1].batches_seen = on_disk + 1
    states[1].save(target)  # with every leftover temporary still there
    final_ok = AR1Star.load(target, extractor_sha256=sha).batches_seen == on_disk + 1
    return {
        "trials": trials,
        **counts,
        "failures": len(failures),
        "failure_details": failures[:20],
        "saves_completed": saves,
        "checkpoint_bytes": target.stat().st_size,
        "leftover_temporaries": len(leftovers),
        "save_after_leftovers_ok": final_ok,
        "window_s": window,
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--window", type=float, default=0.5, help="kill time: uniform 0..this s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument(
        "--child", nargs=3, metavar=("TARGET", "REFS", "START"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), int(args.child[2]))
        return 0
    with tempfile.TemporaryDirectory(prefix="crash-ckpt-") as tmp:
        summary = run_trials(args.trials, Path(tmp), window=args.window, seed=args.seed)
    summary["command"] = "python tests/harness/crash_checkpoints.py " + " ".join(sys.argv[1:])
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 1 if summary["failures"] or not summary["save_after_leftovers_ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
