"""Where one teach of the device goes: time and memory of each step of a learn job.

    python experiments/profile_teach.py [--replay 1500] [--frames 30] [--repeats 3] [--cprofile]

Builds the device's default learner (latent depth, LiteRT int8 at 128 px) with its replay memory
full of ``--replay`` patterns, then runs what ``LearnerWorker`` runs for one teach of
``--frames`` camera frames: copy the model, ``partial_fit``, calibrate the unknown threshold,
write the checkpoint. Prints seconds per step (median of ``--repeats``) and the peak of traced
numpy/Python memory per step (tracemalloc, over what was live before the step), and with
``--cprofile`` the functions the update spends its time in. Figures are in
``experiments/results/perf_profile.md``.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_cl.device.classifier import Classifier
from edge_cl.device.config import load_config
from edge_cl.device.worker import recalibrate
from edge_cl.learner.protocol import Learner
from edge_cl.perf.loop import seed_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replay", type=int, default=1500)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cprofile", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        config = load_config(None, {"source": "synthetic", "state_dir": str(tmp / "state")})
        filled = seed_checkpoint(config, args.replay)
        classifier = Classifier.open(config)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (480, 640, 3), np.uint8) for _ in range(args.frames)]
        latents = classifier.latents(frames)
        print(f"learner: {config.cut} depth, {filled} replay patterns, {args.frames} new latents")

        model: Learner = classifier.learner

        def step_copy() -> None:
            nonlocal model
            model = copy.deepcopy(classifier.learner)

        def step_fit() -> None:
            model.partial_fit(latents, ["new"] * len(latents))

        def step_calibrate() -> None:
            recalibrate(model, config.unknown_accept)

        def step_save() -> None:
            model.save(tmp / "profile.ckpt")

        steps: dict[str, Callable[[], None]] = {
            "copy the model": step_copy,
            "partial_fit": step_fit,
            "calibrate unknown": step_calibrate,
            "write checkpoint": step_save,
        }
        seconds: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.repeats):
            for key, step in steps.items():
                start = time.perf_counter()
                step()
                seconds[key].append(time.perf_counter() - start)
        tracemalloc.start()
        print(f"{'step':<20} {'seconds':>8} {'peak MiB above live':>20}")
        for key, step in steps.items():
            live = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            step()
            peak = (tracemalloc.get_traced_memory()[1] - live) / 2**20
            print(f"{key:<20} {statistics.median(seconds[key]):>8.3f} {peak:>20.1f}")
        tracemalloc.stop()
        if args.cprofile:
            step_copy()
            profiler = cProfile.Profile()
            profiler.runcall(step_fit)
            pstats.Stats(profiler).sort_stats("tottime").print_stats(10)


if __name__ == "__main__":
    main()
