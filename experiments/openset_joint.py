"""Is the "unknown" gap the continual learner's, or the features'? (issue 17)

The default AR1* learns the first half of a stream batch by batch, as in ``edge-cl
bench-openset``. Beside it, the same network is trained *jointly* on all of that half at once
(``Cumulative`` given the whole half in one ``partial_fit``: i.i.d. epochs over every pattern,
no forgetting possible), the upper bound any continual learner of this shape can reach. Both
are scored by their novelty (minus the largest output-layer logit) as detectors of the test
views of classes not taught by then: AUROC, TPR at 5% FPR, FPR95, and top-1 accuracy on the
known views.

    python experiments/openset_joint.py --scenario coil100-clutter --seeds 0 1 2 \\
        --json experiments/results/openset_joint_dev.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from openset_probe import emit, figures, half_taught, write_rows

from edge_cl.bench.scenarios import DEFAULT_DATASETS
from edge_cl.bench.study import Stream
from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.cumulative import Cumulative
from edge_cl.learner.network import LatentNetwork


def scored(learner: LatentNetwork, stream: Stream) -> dict[str, float]:
    """The open-set figures of ``learner``'s novelty on ``stream``'s test views, and its
    accuracy on the known ones."""
    seen = set(learner.classes_)
    known = np.array([label in seen for label in stream.test_y], dtype=bool)
    novelty = learner.novelty(stream.test_x).astype(np.float64)
    kn, un = novelty[known], novelty[~known]
    predicted = learner.predict(stream.test_x)
    hits = np.array([p == t for p, t in zip(predicted, stream.test_y, strict=True)])
    return {**figures(kn, un), "accuracy_known": round(float(hits[known].mean()), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", nargs="+", default=["coil100-clutter"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge_cl")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    manifest = Manifest.load()
    head = head_arrays(manifest.head())
    rows: list[dict[str, Any]] = []
    for name, seed, _, stream, learner in half_taught(
        args.scenario, args.seeds, DEFAULT_DATASETS, args.cache
    ):
        half = stream.batches[: len(stream.batches) // 2]
        joint = Cumulative(head, learner.extractor_sha256, depth="latent", seed=seed)
        joint.partial_fit(np.concatenate([x for x, _ in half]), [y for _, ys in half for y in ys])
        for strategy, model in (("ar1_stream", learner), ("joint", joint)):
            row = {"scenario": name, "seed": seed, "learner": strategy, **scored(model, stream)}
            emit(rows, row)
    write_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
