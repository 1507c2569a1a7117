"""AR1* configurations on orderings of a study scenario: the tool behind the tuning notes.

    python experiments/tune_learner.py cifar10-nic --seed 0,1,2 --depth latent \\
        '{"brn_momentum": 1e-3}' '{"replay_per_epoch": 512}'

Each JSON argument is a set of ``AR1Config`` overrides on top of the study's settings (8 MB
replay, 4 epochs, the rest ``AR1Config``'s defaults); ``{}`` is the baseline. ``--grid``
stores replay as codes on the int8 extractor's output grid (``AR1Config.replay_grid``).
``--cumulative`` runs cumulative retraining with the overrides instead. Prints final and
intermediate accuracy, FLOPs and seconds; numpy runs on one thread.
Results are in ``experiments/results/learner_tuning.md``.

``--diagnose`` (AR1* at depth ``latent``) trains over each ordering, then prints where AR1*
loses accuracy, on the held-out test set:

- ``learner``: the learner's own accuracy (with the Gaussian head when it has one);
- ``cw``: CWR*'s consolidated output layer alone;
- ``stale mean`` / ``std ratio``: how far BRN's running statistics are from the population
  statistics of the conv_head's output over the replay memory (mean offset in population
  standard deviations; running std over population std, averaged over channels);
- ``cw, fresh stats``: accuracy with the running statistics replaced by that population's;
- ``memory head``: a fresh output layer trained on the memory's pooled features alone (the
  learner's SGD settings, 4 epochs of minibatches of 64, from zero): what the features the
  device keeps could give;
- ``lda, all``: streaming LDA on the learner's pooled features of the whole stream: what the
  trained latent layers are worth with an ideal head (the device cannot keep that stream).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from edge_cl.bench import study
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.scenarios import DEFAULT_DATASETS, build, image_folder
from edge_cl.extractor import open_extractor
from edge_cl.extractor.imagenet import PretrainedHead, head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.ar1 import AR1Star
from edge_cl.learner.baselines import StreamingLDA
from edge_cl.learner.config import POOL_CHANNELS
from edge_cl.learner.cumulative import Cumulative
from edge_cl.learner.layers import SGD, BatchRenorm, Linear, softmax_cross_entropy

CACHE = Path.home() / ".cache" / "edge_cl"


def pooled(learner: AR1Star, x: np.ndarray, chunk: int = 128) -> np.ndarray:
    """Eval-mode pooled features of the learner's latent layers."""
    return np.concatenate(
        [learner._features(x[i : i + chunk].copy(), train=False) for i in range(0, len(x), chunk)]
    )


def memory_head(learner: AR1Star, feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """An output layer trained from zero on ``feats`` with the learner's SGD settings."""
    c = learner.config
    n = learner.labels.size
    layer = Linear(POOL_CHANNELS, n, weight=np.zeros((POOL_CHANNELS, n)), input_grad=False)
    sgd = SGD(c.lr, c.momentum, c.weight_decay)
    rng = np.random.default_rng(0)
    for _ in range(4):
        for idx in np.array_split(rng.permutation(len(labels)), max(1, len(labels) // 64)):
            _, dlogits = softmax_cross_entropy(layer.forward(feats[idx], train=True), labels[idx])
            layer.backward(dlogits)
            sgd.step([layer])
    return layer.params["weight"]


def diagnose(learner: AR1Star, stream: study.Stream) -> dict[str, float]:
    """The figures of the module docstring for a learner trained on ``stream``."""
    assert learner.memory is not None
    test_y = learner.labels.transform(stream.test_y)

    def acc(feats: np.ndarray, weight: np.ndarray) -> float:
        return round(100 * float(np.mean((feats @ weight).argmax(1) == test_y)), 1)

    conv, norm = learner.latent[0], learner.latent[1]
    assert isinstance(norm, BatchRenorm)
    mem_x, mem_y = learner.memory.all()
    pre = np.concatenate(
        [conv.forward(mem_x[i : i + 128], False) for i in range(0, len(mem_x), 128)]
    ).reshape(-1, POOL_CHANNELS)
    mean, std = pre.mean(0), np.sqrt(pre.var(0) + norm.eps)
    test = pooled(learner, stream.test_x)
    out = {
        "learner": round(100 * study.accuracy(learner, stream.test_x, stream.test_y), 1),
        "cw": acc(test, learner.cw),
        "stale mean": round(float(np.mean(np.abs(norm.running_mean - mean)) / std.mean()), 3),
        "std ratio": round(float(np.mean(norm.running_std / std)), 3),
        "memory head": acc(test, memory_head(learner, pooled(learner, mem_x), mem_y)),
    }
    saved = {k: v.copy() for k, v in norm.buffers.items()}
    norm.buffers["running_mean"][...], norm.buffers["running_std"][...] = mean, std
    out["cw, fresh stats"] = acc(pooled(learner, stream.test_x), learner.cw)
    for k, v in saved.items():
        norm.buffers[k][...] = v
    lda = StreamingLDA()
    for x, y in stream.batches:
        lda.partial_fit(pooled(learner, x), y)
    out["lda, all"] = round(100 * study.accuracy(lda, test, stream.test_y), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("configs", nargs="+", help="JSON objects of AR1Config overrides")
    parser.add_argument("--seed", default="0", help="ordering seeds, comma-separated: 0,1,2")
    parser.add_argument("--cumulative", action="store_true", help="run cumulative retraining")
    parser.add_argument("--depth", choices=["latent", "pool"], default="latent")
    parser.add_argument("--grid", action="store_true", help="replay codes on the output grid")
    parser.add_argument("--diagnose", action="store_true", help="where AR1* loses accuracy")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    args = parser.parse_args()
    if args.diagnose and (args.cumulative or args.depth != "latent"):
        parser.error("--diagnose takes AR1* at depth latent")

    manifest = Manifest.load()
    head = head_arrays(manifest.head())
    extractor = open_extractor("latent", "litert", "int8", threads=1, manifest=manifest)
    cache = LatentCache(CACHE / "latents", extractor)
    kind = Cumulative if args.cumulative else AR1Star
    for seed in [int(part) for part in args.seed.split(",")]:
        scenario = build(
            args.scenario, args.datasets, seed, CACHE / "images" / image_folder(args.scenario)
        )
        with threadpool_limits(1):
            stream = study.load_stream(scenario, cache)
            if args.depth == "pool":
                stream = study.pooled(stream, PretrainedHead.from_arrays(head))
            points = study.evaluation_points(len(stream.batches), 3)
            for text in args.configs:
                options: dict[str, Any] = {"depth": args.depth, "epochs": 4}
                if not args.cumulative:
                    options["replay_mb"] = 8.0
                    if args.depth == "latent" and args.grid:
                        options["replay_grid"] = extractor.artifact.output_grid
                options.update(json.loads(text))
                strategy = study.Strategy(
                    kind.__name__, args.depth, study.learner_maker(kind, **options)
                )
                if args.diagnose:
                    learner = strategy.make(head, seed)
                    assert isinstance(learner, AR1Star)
                    for x, y in stream.batches:
                        learner.partial_fit(x, y)
                    figures = diagnose(learner, stream)
                    print(f"{args.scenario} seed {seed} {text}: {figures}", flush=True)
                    continue
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
