"""One AR1* configuration on one ordering of a study scenario: the tool behind the tuning notes.

    python scripts/tune_learner.py cifar10-nic --seed 0 --depth latent \\
        '{"brn_momentum": 1e-3}' '{"replay_per_epoch": 512}'

Each JSON argument is a set of ``AR1Config`` overrides on top of the study's settings (8 MB
replay, 4 epochs, and for depth ``latent`` 256 replayed patterns per batch); ``{}`` is the
baseline. Prints final and intermediate accuracy, FLOPs and seconds; numpy runs on one thread.
Results are in ``docs/results/learner_tuning.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from edge_cl.backends import open_extractor
from edge_cl.bench import study
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.scenarios import DEFAULT_DATASETS, build
from edge_cl.imagenet import PretrainedHead, head_arrays
from edge_cl.learner.ar1 import AR1Star
from edge_cl.manifest import Manifest

CACHE = Path.home() / ".cache" / "edge_cl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("configs", nargs="+", help="JSON objects of AR1Config overrides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", choices=["latent", "pool"], default="latent")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    args = parser.parse_args()

    manifest = Manifest.load()
    head = head_arrays(manifest.head())
    extractor = open_extractor("latent", "litert", "int8", threads=1, manifest=manifest)
    cache = LatentCache(CACHE / "latents", extractor)
    scenario = build(args.scenario, args.datasets, args.seed, CACHE / "images" / args.scenario)
    with threadpool_limits(1):
        stream = study.load_stream(scenario, cache)
        if args.depth == "pool":
            stream = study.pooled(stream, PretrainedHead.from_arrays(head))
        points = study.evaluation_points(len(stream.batches), 3)
        for text in args.configs:
            options: dict[str, object] = {"replay_mb": 8.0, "epochs": 4}
            if args.depth == "latent":
                options["replay_per_epoch"] = 256
            options.update(json.loads(text))
            strategy = study.Strategy(
                "tuned",
                args.depth,
                lambda h, seed, o=options: AR1Star(h, depth=args.depth, seed=seed, **o),
            )
            start = time.perf_counter()
            r = study.run(strategy, stream, head, args.seed, points)
            accuracy = {k: round(100 * v, 1) for k, v in r["accuracy"].items()}
            print(
                f"{args.scenario} seed {args.seed} {args.depth} {text}: accuracy {accuracy} "
                f"{sum(r['flops']) / 1e9:.0f} GFLOP {time.perf_counter() - start:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
