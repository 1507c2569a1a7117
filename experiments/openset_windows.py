"""Is "unknown" easier decided over several views of an object than over one? (issue 17)

A camera sees an object for many frames, often turning. Here the default AR1* learns the first
half of a COIL-100 stream (as ``edge-cl bench-openset``), and its novelty (``LatentNetwork.
novelty``) is averaged over windows of ``k`` test views of one object in one session, taken in
order of their angle (COIL-100's test views of an object in a session are 9, 40 degrees apart):
``k = 1`` is the per-frame detector the device runs today, ``k = 9`` one whole turn. Each window
is scored as a detector of never-taught objects: AUROC, TPR at 5% FPR, FPR95.

``--views frames`` asks what a camera gets instead: windows of ``k`` *consecutive* frames
(5 degrees apart) sliding over each later training batch of one object, an arc the learner has
not learned yet; its known windows come from batches of classes taught by the half, its unseen
ones from the first batch of each class not taught yet (``k`` up to 13, a whole batch).

    python experiments/openset_windows.py --scenario coil100-clutter --seeds 0 1 2 \\
        --json experiments/results/openset_windows_dev.json
    python experiments/openset_windows.py --views frames --scenario coil100-clutter \\
        --seeds 0 1 2 --json experiments/results/openset_frames_dev.json
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from openset_probe import emit, figures, half_taught, write_rows

from edge_cl.bench.filelists import Scenario
from edge_cl.bench.scenarios import DEFAULT_DATASETS
from edge_cl.bench.study import Stream
from edge_cl.learner.ar1 import AR1Star

WINDOWS = {"test": (1, 3, 9), "frames": (1, 3, 5, 9, 13)}


def groups(paths: list[str]) -> list[list[int]]:
    """Indices of the test views of each (session, object), in order of angle."""
    by: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for i, p in enumerate(paths):
        session, obj = p.split("/")[:2]
        angle = int(re.findall(r"__(\d+)", p)[-1])
        by[(session, obj)].append((angle, i))
    return [[i for _, i in sorted(views)] for views in by.values()]


Arc = tuple[np.ndarray, bool]
"""The novelty of one object's views in order (of angle, or of frames), and whether it is of a
taught class."""


def test_arcs(scenario: Scenario, stream: Stream, learner: AR1Star) -> list[Arc]:
    """The test views of each (session, object), in order of angle."""
    novelty = learner.novelty(stream.test_x)
    seen = set(learner.classes_)
    return [
        (novelty[views], stream.test_y[views[0]] in seen)
        for views in groups(list(scenario.test[0]))
    ]


def frame_arcs(stream: Stream, learner: AR1Star) -> list[Arc]:
    """The frames of each later one-object batch, in order: of classes already taught, and
    the first batch of each class not taught yet."""
    seen = set(learner.classes_)
    arrived: set[object] = set()
    arcs: list[Arc] = []
    for x, y in stream.batches[len(stream.batches) // 2 :]:
        if len(set(y)) != 1 or (y[0] not in seen and y[0] in arrived):
            continue
        arrived.add(y[0])
        arcs.append((learner.novelty(x), y[0] in seen))
    return arcs


def windows(arcs: list[Arc], k: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean novelty of the windows of ``k`` views of each arc, one every ``step`` views
    (``step == k``: disjoint; 1: sliding, as a device would decide): (known, unseen)."""
    known: list[float] = []
    unseen: list[float] = []
    for novelty, taught in arcs:
        means = [float(novelty[i : i + k].mean()) for i in range(0, len(novelty) - k + 1, step)]
        (known if taught else unseen).extend(means)
    return np.array(known), np.array(unseen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", nargs="+", default=["coil100-clutter"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--views", choices=sorted(WINDOWS), default="test")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge_cl")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name, seed, scenario, stream, learner in half_taught(
        args.scenario, args.seeds, DEFAULT_DATASETS, args.cache
    ):
        test = args.views == "test"
        arcs = test_arcs(scenario, stream, learner) if test else frame_arcs(stream, learner)
        for k in WINDOWS[args.views]:
            kn, un = windows(arcs, k, step=k if test else 1)
            row = {
                "scenario": name,
                "seed": seed,
                "views": k,
                "windows_known": len(kn),
                "windows_unseen": len(un),
                **figures(kn, un),
            }
            emit(rows, row)
    write_rows(args.json, rows, views=args.views)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
