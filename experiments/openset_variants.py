"""Cheap variants of the chosen novelty score (minus the largest CWR* logit), on dev streams:
normalised per predicted class by the replay memory's logits, the top-two margin, the cosine
of features and output weights, the feature norm. Tried after ``openset_probe.py`` chose the
max logit, to see whether a per-class normalisation lifts the low-rejection end.

    python experiments/openset_variants.py --scenario coil100-clutter cifar10-nic --seeds 0 1 \
        --json experiments/results/openset_variants_dev.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from openset_probe import emit, figures, half_taught, write_rows

from edge_cl.bench.scenarios import DEFAULT_DATASETS
from edge_cl.learner.ar1 import AR1Star


def variants(learner: AR1Star, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each variant's novelty (higher = more novel) of the patterns ``x``."""
    assert learner.memory is not None
    live = learner.labels.transform(learner.labels.labels)
    cw = learner.cw[:, live]
    feats = learner._features(x, train=False)
    logits = feats @ cw
    memory_x, memory_y = learner.memory.all()
    memory_logits = learner._features(memory_x, train=False) @ cw
    column = {c: i for i, c in enumerate(live)}
    memory_col = np.array([column[c] for c in np.asarray(memory_y)])
    own = [memory_logits[memory_col == i, i] for i in range(len(live))]
    mu, sd = np.array([o.mean() for o in own]), np.array([o.std() + 1e-6 for o in own])
    pred, top, two = logits.argmax(1), logits.max(1), np.sort(logits, 1)
    norms = np.linalg.norm(feats, axis=1)
    cos = (feats / norms[:, None]) @ (cw / np.linalg.norm(cw, axis=0))
    return {
        "cwr_maxlogit": -top,
        "cwr_z_replay": -(top - mu[pred]) / sd[pred],
        "cwr_minus_mu": -(top - mu[pred]),
        "cwr_ratio_mu": -(top / mu[pred]),
        "cwr_margin": -(two[:, -1] - two[:, -2]),
        "cwr_cos": -cos.max(1),
        "feat_norm": -norms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", nargs="+", default=["coil100-clutter", "cifar10-nic"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge_cl")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name, seed, _, stream, learner in half_taught(
        args.scenario, args.seeds, args.datasets, args.cache
    ):
        seen = set(learner.classes_)
        known = np.array([label in seen for label in stream.test_y])
        for key, v in variants(learner, stream.test_x).items():
            row = {"scenario": name, "seed": seed, "score": key, **figures(v[known], v[~known])}
            emit(rows, row)
    write_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
