"""AR1* configurations on orderings of a study scenario: the tool behind the tuning notes.

    python scripts/tune_learner.py cifar10-nic --seed 0,1,2 --depth latent \\
        '{"brn_momentum": 1e-3}' '{"replay_per_epoch": 512}'

Each JSON argument is a set of ``AR1Config`` overrides on top of the study's settings (8 MB
replay, 4 epochs, and for depth ``latent`` ``study.LATENT_REPLAY`` (512) replayed patterns per
batch); ``{}`` is the baseline. ``--grid`` stores replay as codes on the int8 extractor's output
grid (``AR1Config.replay_grid``). ``--cumulative`` runs cumulative retraining with the overrides
instead. Prints final and intermediate accuracy, FLOPs and seconds; numpy runs on one thread.
Results are in ``docs/results/learner_tuning.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from edge_cl.backends import open_extractor
from edge_cl.bench import study
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.scenarios import DEFAULT_DATASETS, build
from edge_cl.imagenet import PretrainedHead, head_arrays
from edge_cl.learner.ar1 import AR1Star, Cumulative
from edge_cl.manifest import Manifest

CACHE = Path.home() / ".cache" / "edge_cl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("configs", nargs="+", help="JSON objects of AR1Config overrides")
    parser.add_argument("--seed", default="0", help="ordering seeds, comma-separated: 0,1,2")
    parser.add_argument("--cumulative", action="store_true", help="run cumulative retraining")
    parser.add_argument("--depth", choices=["latent", "pool"], default="latent")
    parser.add_argument("--grid", action="store_true", help="replay codes on the output grid")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    args = parser.parse_args()

    manifest = Manifest.load()
    head = head_arrays(manifest.head())
    extractor = open_extractor("latent", "litert", "int8", threads=1, manifest=manifest)
    cache = LatentCache(CACHE / "latents", extractor)
    kind = Cumulative if args.cumulative else AR1Star
    for seed in [int(part) for part in args.seed.split(",")]:
        scenario = build(args.scenario, args.datasets, seed, CACHE / "images" / args.scenario)
        with threadpool_limits(1):
            stream = study.load_stream(scenario, cache)
            if args.depth == "pool":
                stream = study.pooled(stream, PretrainedHead.from_arrays(head))
            points = study.evaluation_points(len(stream.batches), 3)
            for text in args.configs:
                options: dict[str, Any] = {"depth": args.depth, "epochs": 4}
                if not args.cumulative:
                    options["replay_mb"] = 8.0
                    if args.depth == "latent":
                        options["replay_per_epoch"] = study.LATENT_REPLAY
                        if args.grid:
                            options["replay_grid"] = extractor.artifact.output_grid
                options.update(json.loads(text))
                strategy = study.Strategy(
                    kind.__name__, args.depth, study.learner_maker(kind, **options)
                )
                start = time.perf_counter()
                r = study.run(strategy, stream, head, seed, points)
                accuracy = {k: round(100 * v, 1) for k, v in r["accuracy"].items()}
                print(
                    f"{args.scenario} seed {seed} {args.depth} {kind.__name__} {text}: "
                    f"accuracy {accuracy} {sum(r['flops']) / 1e9:.0f} GFLOP "
                    f"{time.perf_counter() - start:.0f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
