"""Update cost of the AR1* learner: time per incremental batch and GFLOP/s vs numpy's matmul peak.

One batch = N new latents + a replay memory of 1500 patterns (the reference AR1* mix: every
epoch sweeps the whole memory), 4 epochs, for both trainable depths. FLOPs are counted
analytically by the learner; the matmul peak is measured in the same run, at the same thread
count (threadpoolctl), so the ratio is meaningful on a shared, noisy machine.

    python scripts/bench_learner.py --json docs/results/learner_update.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.ar1 import AR1Star

REPLAY = 1500
SHAPES = {"latent": (4, 4, 320), "pool": (1280,)}


def matmul_peak(seconds: float = 1.0) -> float:
    """Best GFLOP/s of float32 matmuls shaped like the learner's (and one large square)."""
    rng = np.random.default_rng(0)
    best = 0.0
    for m, k, n in ((2048, 320, 1280), (2048, 1280, 320), (1024, 1024, 1024)):
        a = rng.random((m, k), np.float32)
        b = rng.random((k, n), np.float32)
        a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
    return best


def update_cost(depth: str, new: int, head: dict[str, np.ndarray], repeats: int) -> dict[str, Any]:
    """Median seconds and GFLOP/s of ``partial_fit`` on ``new`` latents with a full memory."""
    rng = np.random.default_rng(0)
    shape = SHAPES[depth]
    per_pattern = 6404 if depth == "latent" else 1288
    learner = AR1Star(head, depth=depth, replay_mb=REPLAY * per_pattern / 2**20 + 0.01)
    warm = rng.normal(size=(REPLAY, *shape)).astype(np.float32)
    learner.partial_fit(warm, [f"c{i % 10}" for i in range(REPLAY)])
    assert learner.memory is not None and len(learner.memory) == REPLAY
    times = []
    for r in range(repeats):
        x = rng.normal(size=(new, *shape)).astype(np.float32)
        start = time.perf_counter()
        learner.partial_fit(x, [f"c{(i + r) % 12}" for i in range(new)])
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {
        "depth": depth,
        "new": new,
        "replay": REPLAY,
        "epochs": learner.config.epochs,
        "seconds": seconds,
        "gflop": learner.last_update_flops / 1e9,
        "gflops": learner.last_update_flops / seconds / 1e9,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    head = head_arrays(Manifest.load().head())
    rows = []
    for threads in args.threads:
        with threadpool_limits(threads):
            peak = matmul_peak()
            print(f"threads {threads}: numpy float32 matmul peak {peak:.1f} GFLOP/s")
            for depth in ("latent", "pool"):
                for new in (30, 100, 300):
                    row = update_cost(depth, new, head, args.repeats)
                    row |= {"threads": threads, "peak_gflops": peak}
                    row["ratio_to_peak"] = row["gflops"] / peak
                    rows.append(row)
                    print(
                        f"  {depth:6s} N={new:3d} + {REPLAY} replay, {row['epochs']} epochs: "
                        f"{row['seconds']:.3f} s  {row['gflop']:.1f} GFLOP  "
                        f"{row['gflops']:.1f} GFLOP/s = {row['ratio_to_peak']:.2f} of peak"
                    )
    if args.json:
        blas = [
            {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for i in threadpool_info()
        ]
        machine = {"machine": platform.machine(), "processor": platform.processor(), "blas": blas}
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
