"""Where AR1* loses accuracy on a study stream: its output layer, its features, or Batch Renorm.

    python scripts/diagnose_learner.py cifar10-nic --seed 0 '{}' '{"brn_momentum": 5e-5}'

Trains AR1* (the study's ``ar1-latent`` settings plus each JSON argument's ``AR1Config``
overrides) over one ordering, then prints, on the held-out test set:

- ``cw``: the learner's own accuracy (CWR*'s consolidated output layer);
- ``stale mean`` / ``std ratio``: how far BRN's running statistics are from the population
  statistics of the conv_head's output over the replay memory (mean offset in population
  standard deviations; running std over population std, averaged over channels);
- ``cw, fresh stats``: accuracy with the running statistics replaced by that population's;
- ``memory head``: a fresh output layer trained on the memory's pooled features alone (the
  learner's SGD settings, 4 epochs of minibatches of 64, from zero): what the features the
  device keeps could give;
- ``lda, all``: streaming LDA on the learner's pooled features of the whole stream: what the
  trained latent layers are worth with an ideal head (the device cannot keep that stream).

Numpy runs on one thread. Results are in ``docs/results/learner_tuning.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from edge_cl.backends import open_extractor
from edge_cl.bench import study
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.scenarios import DEFAULT_DATASETS, build
from edge_cl.imagenet import head_arrays
from edge_cl.learner.ar1 import POOL_CHANNELS, AR1Star
from edge_cl.learner.baselines import StreamingLDA
from edge_cl.learner.layers import SGD, BatchRenorm, Linear, softmax_cross_entropy
from edge_cl.manifest import Manifest

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
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    args = parser.parse_args()

    manifest = Manifest.load()
    head = head_arrays(manifest.head())
    extractor = open_extractor("latent", "litert", "int8", threads=1, manifest=manifest)
    cache = LatentCache(CACHE / "latents", extractor)
    for seed in [int(part) for part in args.seed.split(",")]:
        scenario = build(args.scenario, args.datasets, seed, CACHE / "images" / args.scenario)
        with threadpool_limits(1):
            stream = study.load_stream(scenario, cache)
            for text in args.configs:
                options: dict[str, Any] = {
                    "depth": "latent",
                    "epochs": 4,
                    "replay_mb": 8.0,
                    "replay_per_epoch": study.LATENT_REPLAY,
                    **json.loads(text),
                }
                learner = AR1Star(head, seed=seed, **options)
                for x, y in stream.batches:
                    learner.partial_fit(x, y)
                figures = diagnose(learner, stream)
                print(f"{args.scenario} seed {seed} {text}: {figures}", flush=True)


if __name__ == "__main__":
    main()
