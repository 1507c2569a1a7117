"""How well the "unknown" output rejects objects the learner has not been taught yet.

AR1* learns the first half of a scenario's stream; by then only some classes have been seen.
Test images of seen classes are split in two: one half calibrates the confidence threshold
(``calibrate_unknown(accept=...)``), the other half and every test image of an unseen class are
then classified. Rejection is scored as a detector of unseen classes: precision and recall of
"unknown", plus accuracy on the accepted known-class images.

    python experiments/unknown_rejection.py --scenario coil100-sessions \
        --json experiments/results/unknown_rejection.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.bench.latents import LatentCache
from edge_cl.bench.scenarios import DEFAULT_DATASETS, build
from edge_cl.bench.study import load_stream
from edge_cl.extractor import open_extractor
from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.ar1 import AR1Star


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="coil100-sessions")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge_cl")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    manifest = Manifest.load()
    head = head_arrays(manifest.head())
    ex = open_extractor("latent", "litert", "int8", threads=2, manifest=manifest)
    cache = LatentCache(args.cache / "latents", ex)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        scenario = build(args.scenario, args.datasets, seed, args.cache / "images" / args.scenario)
        stream = load_stream(scenario, cache)
        learner = AR1Star(head, ex.artifact.sha256, depth="latent", seed=seed)
        for x, y in stream.batches[: len(stream.batches) // 2]:
            learner.partial_fit(x, y)
        seen = set(learner.classes_)
        known = np.array([y in seen for y in stream.test_y])
        rng = np.random.default_rng(seed)
        calib = known & (rng.random(len(known)) < 0.5)
        evaluate = ~calib
        for accept in (0.90, 0.95):
            learner.calibrate_unknown(stream.test_x[calib], accept=accept)
            labels, _, unknown = learner.predict_with_confidence(stream.test_x[evaluate])
            truth_unknown = ~known[evaluate]
            hit = unknown & truth_unknown
            kept_known = ~unknown & ~truth_unknown
            truth = np.array(stream.test_y, dtype=object)[evaluate]
            correct = np.array([a == b for a, b in zip(labels, truth, strict=True)])
            row = {
                "seed": seed,
                "accept": accept,
                "threshold": learner.config.unknown_threshold,
                "seen_classes": len(seen),
                "unseen_test_images": int(truth_unknown.sum()),
                "rejection_precision": float(hit.sum() / max(1, unknown.sum())),
                "rejection_recall": float(hit.sum() / max(1, truth_unknown.sum())),
                "known_rejected": float((unknown & ~truth_unknown).sum() / (~truth_unknown).sum()),
                "accuracy_on_accepted_known": float(correct[kept_known].mean()),
            }
            rows.append(row)
            print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps({"scenario": args.scenario, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
