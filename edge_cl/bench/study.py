"""Run continual-learning strategies over a scenario's stream and record what each one costs.

For every strategy and ordering: per batch the update's wall time and FLOPs (counted
analytically by the learner), the memory it holds, and test accuracy at the evaluation points.
Latents come from :class:`~edge_cl.bench.latents.LatentCache`; pooled features are computed
from them with the frozen pretrained head (``PretrainedHead.pool``), exactly what the ``pool``
extractor cut computes.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol, TextIO

import numpy as np

from edge_cl.bench.filelists import Scenario
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.report import summarise
from edge_cl.extractor.imagenet import PretrainedHead
from edge_cl.learner.ar1 import AR1Star, CWRStar, NaiveFineTune, latent_summary
from edge_cl.learner.baselines import NearestClassMean, StreamingLDA
from edge_cl.learner.config import BASELINE_SETTINGS, LATENT_CHANNELS, POOL_CHANNELS, AR1Config
from edge_cl.learner.cumulative import Cumulative
from edge_cl.learner.labels import Label
from edge_cl.learner.replay import LABEL_DTYPE, Codec, Grid
from edge_cl.learner.sklearn_heads import KNNHead, SGDHead
from edge_cl.sysinfo import cpu_model

STUDY_STORED_LATENT = AR1Config().stored_shape((4, 4, LATENT_CHANNELS))
"""A latent pattern as the default AR1* stores it: positions of the 4x4 latent of the study's
128 px images (``AR1Config.latent_positions``)."""


def float32_per_uint8(shape: tuple[int, ...]) -> float:
    """float32 / uint8 bytes per stored pattern of ``shape`` (label included): the "samecount"
    strategies give float32 replay the bytes to hold as many patterns as uint8 does in replay_mb,
    so the two differ only by quantisation.

    >>> round(float32_per_uint8((1280,)), 2)
    3.98
    """
    label = LABEL_DTYPE.itemsize
    return (Codec("float32", shape).bytes_per_pattern + label) / (
        Codec("uint8", shape).bytes_per_pattern + label
    )


class Learner(Protocol):
    """What the study needs of a learner."""

    def partial_fit(self, latents: np.ndarray, labels: Sequence[object]) -> Any: ...

    def predict(self, latents: np.ndarray) -> list[Label]: ...

    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class Strategy:
    """A named way to build a learner, and which features it eats: ``latent`` (N, h, w, 320),
    ``pool`` (the pretrained head's pooled (N, 1280)) or ``latent-summary`` (what AR1*'s Gaussian
    head sees of a latent: the mean and standard deviation of each channel over the positions,
    (N, 640))."""

    name: str
    features: str
    make: Callable[[dict[str, np.ndarray], int], Learner]


REFERENCE_RECIPE: dict[str, Any] = {
    **BASELINE_SETTINGS,
    "replay_per_epoch": 256,
    "latent_lr_scale": 1.0,
    "latent_epochs": None,
    "latent_positions": None,
    "minibatch": 128,
    "replay_policy": "uniform",
}
"""AR1* as the reference implementations train it (one learning rate, every epoch through the
latent layers on every position, minibatches of 128, uniform replay), 256 replayed per batch."""

ALL_POSITIONS_RECIPE: dict[str, Any] = {
    **BASELINE_SETTINGS,
    "replay_per_epoch": 256,
    "latent_positions": None,
    "minibatch": 32,
}
"""The defaults before ``latent_positions``: every position trained and stored, 256 replayed
per batch on minibatches of 32 (the same compute and steps as the defaults)."""


def learner_maker(
    kind: type[AR1Star | Cumulative], **options: Any
) -> Callable[[dict[str, np.ndarray], int], Learner]:
    """A strategy's constructor: ``kind(head, seed=seed, **options)`` for each ordering's seed."""

    def make(head: dict[str, np.ndarray], seed: int) -> Learner:
        return kind(head, seed=seed, **options)

    return make


def strategies(
    replay_mb: float = 8.0, epochs: int = 4, grid: Grid | None = None
) -> dict[str, Strategy]:
    """Every strategy of the study, by name.

    ``grid`` is the extractor's output grid (``Artifact.output_grid``, None for fp32 models):
    ``ar1-latent-grid`` is ``ar1-latent`` with its uint8 replay stored as codes on it
    (``AR1Config.replay_grid``, 1.5x the patterns in the same bytes; without a grid, the same).
    """

    def ar1(depth: str, **kw: Any) -> Callable[[dict[str, np.ndarray], int], Learner]:
        return learner_maker(
            AR1Star, **{"depth": depth, "replay_mb": replay_mb, "epochs": epochs, **kw}
        )

    def cls(
        kind: type[AR1Star | Cumulative], depth: str, **kw: Any
    ) -> Callable[[dict[str, np.ndarray], int], Learner]:
        return learner_maker(kind, depth=depth, epochs=epochs, **kw)

    plain = {"gaussian_head": False, "balanced_loss": False, "new_per_update": None}
    table = [
        Strategy("ar1-latent", "latent", ar1("latent")),
        Strategy("ar1-latent-plain", "latent", ar1("latent", **plain)),
        Strategy("ar1-latent-grid", "latent", ar1("latent", replay_grid=grid)),
        Strategy("ar1-latent-reference", "latent", ar1("latent", **REFERENCE_RECIPE)),
        Strategy("ar1-latent-allpositions", "latent", ar1("latent", **ALL_POSITIONS_RECIPE)),
        Strategy("ar1-latent-float32", "latent", ar1("latent", replay_codec="float32")),
        Strategy("ar1-latent-uint4", "latent", ar1("latent", replay_codec="uint4")),
        Strategy(
            "ar1-latent-float32-samecount",
            "latent",
            ar1(
                "latent",
                replay_codec="float32",
                replay_mb=replay_mb * float32_per_uint8(STUDY_STORED_LATENT),
            ),
        ),
        Strategy("ar1-latent-fullreplay", "latent", ar1("latent", replay_per_epoch=None)),
        Strategy("ar1-pool", "pool", ar1("pool", replay_per_epoch=None, **plain)),
        Strategy("ar1-pool-sampled", "pool", ar1("pool", **plain)),
        Strategy("ar1-pool-float32", "pool", ar1("pool", replay_codec="float32", **plain)),
        Strategy(
            "ar1-pool-float32-samecount",
            "pool",
            ar1(
                "pool",
                replay_codec="float32",
                replay_mb=replay_mb * float32_per_uint8((POOL_CHANNELS,)),
                **plain,
            ),
        ),
        Strategy("cwr", "pool", cls(CWRStar, "pool")),
        Strategy("naive", "latent", cls(NaiveFineTune, "latent")),
        Strategy("cumulative-latent", "latent", cls(Cumulative, "latent")),
        Strategy("cumulative-pool", "pool", cls(Cumulative, "pool")),
        Strategy("ncm", "pool", lambda head, seed: NearestClassMean()),
        Strategy("slda", "pool", lambda head, seed: StreamingLDA()),
        Strategy("slda-latent", "latent-summary", lambda head, seed: StreamingLDA(shrinkage="oas")),
        Strategy("sgd", "pool", lambda head, seed: SGDHead(seed=seed)),
        Strategy("knn", "pool", lambda head, seed: KNNHead()),
    ]
    return {s.name: s for s in table}


@dataclass
class Stream:
    """One ordering of a scenario, as arrays: train batches and the test set."""

    batches: list[tuple[np.ndarray, list[Label]]]
    test_x: np.ndarray
    test_y: list[Label]


def latent_summaries(stream: Stream) -> Stream:
    """The same stream with each latent replaced by what AR1*'s Gaussian head sees of it
    (:func:`~edge_cl.learner.ar1.latent_summary` with the default ``gaussian_features``)."""
    features = AR1Config.gaussian_features

    def summary(x: np.ndarray) -> np.ndarray:
        return latent_summary(x, features)

    return Stream(
        [(summary(x), y) for x, y in stream.batches], summary(stream.test_x), stream.test_y
    )


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
    on_batch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Train one strategy over one stream; per-batch series of time, FLOPs, memory, accuracy.

    Cumulative retrains only at evaluation points (its accuracy is only needed there); its FLOPs
    at every batch are what a retrain there would cost, counted the same way as when it runs.
    """
    learner = strategy.make(head, seed)
    seconds, flops, memory, acc = [], [], [], {}
    seen: list[int] = []
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
        seen.append(len(y) + (seen[-1] if seen else 0))
        if i in eval_at or i == last:
            acc[i] = accuracy(learner, stream.test_x, stream.test_y)
        if on_batch is not None:
            on_batch()
    return {
        "strategy": strategy.name,
        "features": strategy.features,
        "seed": seed,
        "accuracy": acc,
        "final_accuracy": acc[last],
        "seconds": seconds,
        "flops": flops,
        "memory_bytes": memory,
        "images_seen": seen,
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


def scenario_record(scenario: Scenario) -> dict[str, Any]:
    """What defines a scenario in a result file: its numbers, generator info and a hash."""
    digest = hashlib.sha256()
    for paths, labels in [*scenario.train_batches, scenario.test]:
        for path, label in zip(paths, labels, strict=True):
            digest.update(f"{path} {label}\n".encode())
        digest.update(b"--\n")
    return {
        "name": scenario.name,
        **scenario.describe(),
        "filelists_sha256": digest.hexdigest(),
        "meta": {k: v for k, v in scenario.meta.items() if k != "class_names"},
    }


def environment() -> dict[str, Any]:
    """The machine and package versions a result was measured with."""
    versions = {}
    packages = ("edge-cl", "numpy", "onnxruntime", "ai-edge-litert", "opencv-python-headless")
    for package in (*packages, "pillow", "scikit-learn"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions,
    }


class Progress:
    """A progress bar on a terminal (one line per finished run elsewhere, e.g. CI logs)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total, self.done, self.stream, self.width = max(1, total), 0, stream, width
        self.start = time.perf_counter()
        self.tty = stream.isatty()
        self.label = ""

    def step(self) -> None:
        """One unit of work (a batch of one strategy) is done."""
        self.done += 1
        if self.tty:
            filled = self.width * self.done // self.total
            elapsed = time.perf_counter() - self.start
            eta = elapsed / self.done * (self.total - self.done)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(
                f"\r[{bar}] {100 * self.done / self.total:5.1f}%  eta {eta:5.0f} s  {self.label}"
            )
            self.stream.flush()

    def line(self, text: str) -> None:
        """A finished run's one-line report."""
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()


def bench(
    scenarios: Sequence[Callable[[int], Scenario]],
    names: Sequence[str],
    cache: LatentCache,
    head: dict[str, np.ndarray],
    runs: int,
    eval_points: int,
    replay_mb: float,
    epochs: int,
    progress_stream: TextIO = sys.stderr,
    on_ordering: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Run strategies ``names`` on ``runs`` orderings of each scenario; JSON-ready results.

    ``scenarios`` are builders taking the ordering seed. Each strategy is measured against the
    cumulative strategy of its own features (run it too to get gaps and savings).
    ``on_ordering`` gets the results so far after every ordering, so a long study can be saved
    as it goes and stopped at any time.
    """
    grid = cache.extractor.artifact.output_grid
    table = strategies(replay_mb, epochs, grid)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {sorted(table)}")
    pretrained = PretrainedHead.from_arrays(head)
    results: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any]] = {}
    progress: Progress | None = None
    image_bytes = 0
    settings = {
        "runs": runs,
        "strategies": list(names),
        "replay_mb": replay_mb,
        "replay_grid": grid,
        "epochs": epochs,
        "eval_points": eval_points,
    }
    for build in scenarios:
        for seed in range(runs):
            scenario = build(seed)
            records.setdefault(scenario.name, scenario_record(scenario))
            latents = load_stream(scenario, cache)
            image_bytes = cache.extractor.resolution**2 * 3
            views = {
                "latent": latents,
                "pool": pooled(latents, pretrained),
                "latent-summary": latent_summaries(latents),
            }
            points = evaluation_points(len(latents.batches), eval_points)
            if progress is None:
                work = len(scenarios) * runs * len(names) * len(latents.batches)
                progress = Progress(work, progress_stream)
            for name in names:
                s = table[name]
                progress.label = f"{scenario.name} run {seed} {name}"
                start = time.perf_counter()
                stream = views[s.features]
                r = run(s, stream, head, seed, points, progress.step)
                r["scenario"] = scenario.name
                results.append(r)
                progress.line(
                    f"{scenario.name} run {seed} {name:22s} final {100 * r['final_accuracy']:5.1f}%"
                    f"  {sum(r['flops']) / 1e9:9.0f} GFLOP  {time.perf_counter() - start:6.1f} s"
                )
            if on_ordering is not None:
                on_ordering(_results(results, records, image_bytes, settings))
    return _results(results, records, image_bytes, settings)


def _results(
    runs: list[dict[str, Any]],
    records: dict[str, dict[str, Any]],
    image_bytes: int,
    settings: dict[str, Any],
) -> dict[str, Any]:
    by_scenario = {}
    for sc in dict.fromkeys(r["scenario"] for r in runs):
        by_scenario[sc] = summarise([r for r in runs if r["scenario"] == sc], image_bytes)
    return {
        "scenarios": records,
        "environment": environment(),
        "settings": {**settings, "input_image_bytes": image_bytes},
        "summary": by_scenario,
        "runs": runs,
    }
