"""Run continual-learning strategies over a scenario's stream and record what each one costs.

For every strategy and ordering: per batch the update's wall time and FLOPs (counted
analytically by the learner), the memory it holds, and test accuracy at the evaluation points.
Latents come from :class:`~edge_cl.bench.latents.LatentCache`; pooled features are computed
from them with the frozen pretrained head (``PretrainedHead.pool``), exactly what the ``pool``
extractor cut computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge_cl.bench.filelists import Scenario
from edge_cl.bench.latents import LatentCache
from edge_cl.imagenet import PretrainedHead
from edge_cl.learner.ar1 import AR1Star, Cumulative, CWRStar, NaiveFineTune
from edge_cl.learner.baselines import NearestClassMean, StreamingLDA
from edge_cl.learner.labels import Label

# float32 / uint8 bytes per stored pattern (see ReplayMemory.footprint): the "samecount"
# strategies give float32 replay the bytes to hold as many patterns as uint8 does in replay_mb,
# so the two differ only by quantisation.
LATENT_FLOAT32_PER_UINT8 = 20484 / 6404
POOL_FLOAT32_PER_UINT8 = 5124 / 1288


class Learner(Protocol):
    """What the study needs of a learner."""

    def partial_fit(self, latents: np.ndarray, labels: Sequence[object]) -> Any: ...

    def predict(self, latents: np.ndarray) -> list[Label]: ...

    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class Strategy:
    """A named way to build a learner, and which features it eats (``latent`` or ``pool``)."""

    name: str
    features: str
    make: Callable[[dict[str, np.ndarray], int], Learner]


def strategies(replay_mb: float = 8.0, epochs: int = 4) -> dict[str, Strategy]:
    """Every strategy of the study, by name."""

    def ar1(depth: str, **kw: Any) -> Callable[[dict[str, np.ndarray], int], Learner]:
        def make(head: dict[str, np.ndarray], seed: int) -> Learner:
            options = {"replay_mb": replay_mb, "epochs": epochs, **kw}
            return AR1Star(head, depth=depth, seed=seed, **options)

        return make

    def cls(
        kind: type[AR1Star], depth: str, **kw: Any
    ) -> Callable[[dict[str, np.ndarray], int], Learner]:
        return lambda head, seed: kind(head, depth=depth, seed=seed, epochs=epochs, **kw)

    table = [
        Strategy("ar1-latent", "latent", ar1("latent", replay_per_epoch=256)),
        Strategy(
            "ar1-latent-float32",
            "latent",
            ar1("latent", replay_per_epoch=256, replay_codec="float32"),
        ),
        Strategy(
            "ar1-latent-uint4", "latent", ar1("latent", replay_per_epoch=256, replay_codec="uint4")
        ),
        Strategy(
            "ar1-latent-float32-samecount",
            "latent",
            ar1(
                "latent",
                replay_per_epoch=256,
                replay_codec="float32",
                replay_mb=replay_mb * LATENT_FLOAT32_PER_UINT8,
            ),
        ),
        Strategy("ar1-latent-fullreplay", "latent", ar1("latent")),
        Strategy("ar1-latent-noreplay", "latent", ar1("latent", replay_mb=0.0)),
        Strategy("ar1-pool", "pool", ar1("pool")),
        Strategy("ar1-pool-float32", "pool", ar1("pool", replay_codec="float32")),
        Strategy(
            "ar1-pool-float32-samecount",
            "pool",
            ar1("pool", replay_codec="float32", replay_mb=replay_mb * POOL_FLOAT32_PER_UINT8),
        ),
        Strategy("cwr", "pool", cls(CWRStar, "pool")),
        Strategy("naive", "latent", cls(NaiveFineTune, "latent")),
        Strategy("cumulative-latent", "latent", cls(Cumulative, "latent")),
        Strategy("cumulative-pool", "pool", cls(Cumulative, "pool")),
        Strategy("ncm", "pool", lambda head, seed: NearestClassMean()),
        Strategy("slda", "pool", lambda head, seed: StreamingLDA()),
    ]
    return {s.name: s for s in table}


@dataclass
class Stream:
    """One ordering of a scenario, as arrays: train batches and the test set."""

    batches: list[tuple[np.ndarray, list[Label]]]
    test_x: np.ndarray
    test_y: list[Label]


def pooled(stream: Stream, head: PretrainedHead, chunk: int = 1024) -> Stream:
    """The same stream with latents replaced by pooled 1280-d features."""

    def pool(x: np.ndarray) -> np.ndarray:
        return np.concatenate([head.pool(x[i : i + chunk]) for i in range(0, len(x), chunk)])

    return Stream([(pool(x), y) for x, y in stream.batches], pool(stream.test_x), stream.test_y)


def accuracy(learner: Learner, x: np.ndarray, y: Sequence[Label], chunk: int = 1024) -> float:
    """Top-1 accuracy of a learner's predictions."""
    predicted: list[Label] = []
    for i in range(0, len(x), chunk):
        predicted += learner.predict(x[i : i + chunk])
    return float(np.mean([p == t for p, t in zip(predicted, y, strict=True)]))


def run(
    strategy: Strategy,
    stream: Stream,
    head: dict[str, np.ndarray],
    seed: int,
    eval_at: set[int],
) -> dict[str, Any]:
    """Train one strategy over one stream; per-batch series of time, FLOPs, memory, accuracy.

    Cumulative retrains only at evaluation points (its accuracy is only needed there); its FLOPs
    at every batch are what a retrain there would cost, counted the same way as when it runs.
    """
    learner = strategy.make(head, seed)
    seconds, flops, memory, acc = [], [], [], {}
    last = len(stream.batches) - 1
    for i, (x, y) in enumerate(stream.batches):
        start = time.perf_counter()
        if isinstance(learner, Cumulative):
            learner.add(x, y)
            if i in eval_at or i == last:
                learner.retrain()
            cost = learner.retrain_flops()
        else:
            learner.partial_fit(x, y)
            cost = getattr(learner, "last_update_flops", 0)
        seconds.append(time.perf_counter() - start)
        flops.append(int(cost))
        memory.append(int(learner.nbytes))
        if i in eval_at or i == last:
            acc[i] = accuracy(learner, stream.test_x, stream.test_y)
    return {
        "strategy": strategy.name,
        "seed": seed,
        "accuracy": acc,
        "final_accuracy": acc[last],
        "seconds": seconds,
        "flops": flops,
        "memory_bytes": memory,
    }


def load_stream(scenario: Scenario, cache: LatentCache) -> Stream:
    """Latents of every batch and of the test set (extracted once, then read from the cache)."""
    batches = [
        (cache.get(scenario.train_files(i)), list(scenario.train_batches[i][1]))
        for i in range(len(scenario.train_batches))
    ]
    return Stream(batches, cache.get(scenario.test_files()), list(scenario.test[1]))


def evaluation_points(batches: int, count: int) -> set[int]:
    """About ``count`` evenly spaced batch indices, always including the first and last."""
    return {round(float(i)) for i in np.linspace(0, batches - 1, max(2, count))}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over runs of final accuracy, compute and memory per strategy."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == name]
        final = np.array([r["final_accuracy"] for r in mine])
        out[name] = {
            "runs": len(mine),
            "final_accuracy_mean": float(final.mean()),
            "final_accuracy_std": float(final.std()),
            "total_gflop_mean": float(np.mean([sum(r["flops"]) for r in mine]) / 1e9),
            "update_seconds_mean": float(np.mean([np.mean(r["seconds"]) for r in mine])),
            "final_memory_mb_mean": float(np.mean([r["memory_bytes"][-1] for r in mine]) / 2**20),
        }
    return out


def markdown_table(summary: dict[str, dict[str, float]], reference: str | None = None) -> str:
    """The summary as a Markdown table; gaps are to ``reference`` (e.g. a cumulative strategy)."""
    ref = summary.get(reference or "", {}).get("final_accuracy_mean")
    rows = [
        "| strategy | runs | final accuracy | gap to reference | total GFLOP | "
        "s per update | memory at end (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        gap = f"{100 * (s['final_accuracy_mean'] - ref):+.1f}" if ref is not None else ""
        rows.append(
            f"| {name} | {s['runs']} | {100 * s['final_accuracy_mean']:.1f} +- "
            f"{100 * s['final_accuracy_std']:.1f} | {gap} | {s['total_gflop_mean']:.0f} | "
            f"{s['update_seconds_mean']:.3f} | {s['final_memory_mb_mean']:.1f} |"
        )
    return "\n".join(rows)


def bench(
    scenarios: Sequence[Callable[[int], Scenario]],
    names: Sequence[str],
    cache: LatentCache,
    head: dict[str, np.ndarray],
    runs: int,
    eval_points: int,
    replay_mb: float,
    epochs: int,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run strategies ``names`` on ``runs`` orderings of each scenario; JSON-ready results.

    ``scenarios`` are builders taking the ordering seed. The reference for the gaps is the
    cumulative strategy of the same trainable depth as the first strategy named.
    """
    table = strategies(replay_mb, epochs)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {sorted(table)}")
    pretrained = PretrainedHead.from_arrays(head)
    results: list[dict[str, Any]] = []
    for build in scenarios:
        for seed in range(runs):
            scenario = build(seed)
            latents = load_stream(scenario, cache)
            pools = pooled(latents, pretrained)
            points = evaluation_points(len(latents.batches), eval_points)
            for name in names:
                s = table[name]
                start = time.perf_counter()
                r = run(s, latents if s.features == "latent" else pools, head, seed, points)
                r["scenario"] = scenario.name
                results.append(r)
                progress(
                    f"{scenario.name} run {seed} {name:22s} final {100 * r['final_accuracy']:5.1f}%"
                    f"  {sum(r['flops']) / 1e9:9.0f} GFLOP  {time.perf_counter() - start:6.1f} s"
                )
    by_scenario = {}
    for sc in dict.fromkeys(r["scenario"] for r in results):
        by_scenario[sc] = summarise([r for r in results if r["scenario"] == sc])
    return {"summary": by_scenario, "runs": results}
