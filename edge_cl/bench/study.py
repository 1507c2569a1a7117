"""Run continual-learning strategies over a scenario's stream and record what each one costs.

For every strategy and ordering: per batch the update's wall time and FLOPs, the FLOPs to
classify one frame with the state after it (both counted analytically by the learner: its
``last_update_flops`` and ``predict_flops``, plus what computing its features from the latent
costs), the memory it holds, and test accuracy at the evaluation points, on the whole test set
and on the test images of the classes seen so far. Latents come from
:class:`~edge_cl.bench.latents.LatentCache`; pooled features are computed from them with the
frozen pretrained head (``PretrainedHead.pool``), exactly what the ``pool`` extractor cut
computes.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import os
import platform
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from typing import Any, Protocol, TextIO

import numpy as np

from edge_cl.bench import parallel
from edge_cl.bench.filelists import Scenario
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.report import PREDICTIONS_PER_BATCH, summarise
from edge_cl.errors import ConfigError, StrategyError
from edge_cl.extractor.imagenet import PretrainedHead
from edge_cl.learner.ar1 import AR1Star, CWRStar, NaiveFineTune, latent_summary, summary_flops
from edge_cl.learner.baselines import NearestClassMean, StreamingLDA
from edge_cl.learner.config import BASELINE_SETTINGS, LATENT_CHANNELS, POOL_CHANNELS, AR1Config
from edge_cl.learner.cumulative import Cumulative
from edge_cl.learner.labels import Label
from edge_cl.learner.network import latent_layers_flops
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
    """What the study needs of a learner (the costs as :class:`edge_cl.learner.protocol.Learner`
    defines them)."""

    def partial_fit(self, latents: np.ndarray, labels: Sequence[object]) -> Any: ...

    def predict(self, latents: np.ndarray) -> list[Label]: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def last_update_flops(self) -> int: ...

    @property
    def predict_flops(self) -> int: ...


@dataclass(frozen=True)
class Strategy:
    """A named way to build a learner, and which features it eats: ``latent`` (N, h, w, 320),
    ``pool`` (the pretrained head's pooled (N, 1280)) or ``latent-summary`` (what AR1*'s Gaussian
    head sees of a latent: the mean and standard deviation of each channel over the positions,
    (N, 640))."""

    name: str
    features: str
    make: Callable[[dict[str, np.ndarray], int], Learner]
    help: str = ""


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
        Strategy(
            "ar1-latent",
            "latent",
            ar1("latent"),
            help="the default learner: AR1* (CWR*, latent replay, latent layers), Gaussian head",
        ),
        Strategy(
            "ar1-latent-plain",
            "latent",
            ar1("latent", **plain),
            help="ar1-latent without the Gaussian head, balanced loss or update budget",
        ),
        Strategy(
            "ar1-latent-grid",
            "latent",
            ar1("latent", replay_grid=grid),
            help="ar1-latent, replay stored as the int8 model's own output codes",
        ),
        Strategy(
            "ar1-latent-reference",
            "latent",
            ar1("latent", **REFERENCE_RECIPE),
            help="AR1* as the reference trains it (all positions and epochs, minibatch 128)",
        ),
        Strategy(
            "ar1-latent-allpositions",
            "latent",
            ar1("latent", **ALL_POSITIONS_RECIPE),
            help="the defaults before latent_positions: every position trained and stored",
        ),
        Strategy(
            "ar1-latent-float32",
            "latent",
            ar1("latent", replay_codec="float32"),
            help="ar1-latent, replay stored as float32 (fewer patterns in the same bytes)",
        ),
        Strategy(
            "ar1-latent-uint4",
            "latent",
            ar1("latent", replay_codec="uint4"),
            help="ar1-latent, replay stored in 4 bits",
        ),
        Strategy(
            "ar1-latent-float32-samecount",
            "latent",
            ar1(
                "latent",
                replay_codec="float32",
                replay_mb=replay_mb * float32_per_uint8(STUDY_STORED_LATENT),
            ),
            help="ar1-latent, float32 replay holding as many patterns as uint8",
        ),
        Strategy(
            "ar1-latent-fullreplay",
            "latent",
            ar1("latent", replay_per_epoch=None),
            help="ar1-latent replaying the whole memory every epoch",
        ),
        Strategy(
            "ar1-pool",
            "pool",
            ar1("pool", replay_per_epoch=None, **plain),
            help="CWR* + replay on pooled features (output layer only), full replay",
        ),
        Strategy(
            "ar1-pool-sampled",
            "pool",
            ar1("pool", **plain),
            help="ar1-pool replaying a sample of the memory",
        ),
        Strategy(
            "ar1-pool-float32",
            "pool",
            ar1("pool", replay_codec="float32", **plain),
            help="ar1-pool, replay stored as float32",
        ),
        Strategy(
            "ar1-pool-float32-samecount",
            "pool",
            ar1(
                "pool",
                replay_codec="float32",
                replay_mb=replay_mb * float32_per_uint8((POOL_CHANNELS,)),
                **plain,
            ),
            help="ar1-pool, float32 replay holding as many patterns as uint8",
        ),
        Strategy(
            "cwr", "pool", cls(CWRStar, "pool"), help="CWR*: the output layer alone, no replay"
        ),
        Strategy(
            "naive",
            "latent",
            cls(NaiveFineTune, "latent"),
            help="naive fine-tuning, no CWR*, no replay (forgets)",
        ),
        Strategy(
            "cumulative-latent",
            "latent",
            cls(Cumulative, "latent"),
            help="retrains the latent layers and output on everything seen (the reference)",
        ),
        Strategy(
            "cumulative-pool",
            "pool",
            cls(Cumulative, "pool"),
            help="retrains the output layer on every pooled feature seen",
        ),
        Strategy(
            "ncm",
            "pool",
            lambda head, seed: NearestClassMean(),
            help="nearest class mean on pooled features",
        ),
        Strategy(
            "slda",
            "pool",
            lambda head, seed: StreamingLDA(),
            help="streaming LDA on pooled features",
        ),
        Strategy(
            "slda-latent",
            "latent-summary",
            lambda head, seed: StreamingLDA(shrinkage="oas"),
            help="streaming LDA (OAS) on each latent channel's mean and std",
        ),
        Strategy(
            "sgd",
            "pool",
            lambda head, seed: SGDHead(seed=seed),
            help="scikit-learn SGD linear head on pooled features",
        ),
        Strategy(
            "knn",
            "pool",
            lambda head, seed: KNNHead(),
            help="k nearest neighbours on every pooled feature seen",
        ),
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


def feature_flops(features: str, latent_shape: tuple[int, ...]) -> int:
    """FLOPs per frame to compute a strategy's ``features`` from a latent of ``latent_shape``
    (h, w, 320), outside the learner: the pretrained layers up to the pool for ``pool``
    (:func:`~edge_cl.learner.network.latent_layers_flops`), the summary for ``latent-summary``
    (:func:`~edge_cl.learner.ar1.summary_flops`), nothing for ``latent``. The study adds it to
    the learner's ``predict_flops``, so that every strategy's prediction cost starts from the
    same latent.

    >>> feature_flops("latent", (4, 4, 320)), feature_flops("latent-summary", (4, 4, 320))
    (0, 20480)
    """
    positions = latent_shape[0] * latent_shape[1]
    if features == "pool":
        return latent_layers_flops(positions)
    if features == "latent-summary":
        return summary_flops(positions, AR1Config.gaussian_features)
    return 0


def predictions(learner: Learner, x: np.ndarray, chunk: int = 1024) -> list[Label]:
    """A learner's predicted labels for ``x``, in chunks of ``chunk`` patterns."""
    predicted: list[Label] = []
    for i in range(0, len(x), chunk):
        predicted += learner.predict(x[i : i + chunk])
    return predicted


def accuracy(learner: Learner, x: np.ndarray, y: Sequence[Label], chunk: int = 1024) -> float:
    """Top-1 accuracy of a learner's predictions."""
    return float(np.mean([p == t for p, t in zip(predictions(learner, x, chunk), y, strict=True)]))


def run(
    strategy: Strategy,
    stream: Stream,
    head: dict[str, np.ndarray],
    seed: int,
    eval_at: set[int],
    on_batch: Callable[[], None] | None = None,
    feature_cost: int = 0,
) -> dict[str, Any]:
    """Train one strategy over one stream; per-batch series of time, FLOPs, memory, accuracy.

    ``flops`` are each batch's update FLOPs; ``predict_flops`` the FLOPs to classify one frame
    with the state after the batch, the learner's ``predict_flops`` plus ``feature_cost``
    (:func:`feature_flops` of the strategy's features: what reaching them from the latent
    costs). ``accuracy`` is top-1 on the whole test set at each evaluation point;
    ``accuracy_seen`` on the test images of the classes learned so far (None when none are
    in the test set). Cumulative retrains only at evaluation points (its accuracy is only
    needed there); its FLOPs at every batch are what a retrain there would cost, counted the
    same way as when it runs, and its retrains do not depend on where the others fell
    (:meth:`~edge_cl.learner.cumulative.Cumulative.retrain`).
    """
    learner = strategy.make(head, seed)
    seconds, flops, predict, memory = [], [], [], []
    acc: dict[int, float] = {}
    acc_seen: dict[int, float | None] = {}
    seen: list[int] = []
    classes: set[Label] = set()
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
            cost = learner.last_update_flops
        seconds.append(time.perf_counter() - start)
        flops.append(int(cost))
        predict.append(int(learner.predict_flops) + feature_cost)
        memory.append(int(learner.nbytes))
        seen.append(len(y) + (seen[-1] if seen else 0))
        classes.update(y)
        if i in eval_at or i == last:
            predicted = predictions(learner, stream.test_x)
            hits = [p == t for p, t in zip(predicted, stream.test_y, strict=True)]
            acc[i] = float(np.mean(hits))
            known = [h for h, t in zip(hits, stream.test_y, strict=True) if t in classes]
            acc_seen[i] = float(np.mean(known)) if known else None
        if on_batch is not None:
            on_batch()
    return {
        "strategy": strategy.name,
        "features": strategy.features,
        "seed": seed,
        "accuracy": acc,
        "accuracy_seen": acc_seen,
        "final_accuracy": acc[last],
        "seconds": seconds,
        "flops": flops,
        "predict_flops": predict,
        "feature_flops": feature_cost,
        "memory_bytes": memory,
        "images_seen": seen,
    }


def load_stream(scenario: Scenario, cache: LatentCache) -> Stream:
    """Latents of every batch and of the test set (extracted once, then read from the cache).

    One lookup for the whole stream, so a first extraction writes full cache shards rather than
    one small shard per batch."""
    files = [scenario.train_files(i) for i in range(len(scenario.train_batches))]
    everything = cache.get([f for batch in files for f in batch] + list(scenario.test_files()))
    ends = np.cumsum([len(batch) for batch in files])
    batches = [
        (everything[end - len(batch) : end], list(labels))
        for batch, end, (_, labels) in zip(files, ends, scenario.train_batches, strict=True)
    ]
    return Stream(batches, everything[ends[-1] if len(ends) else 0 :], list(scenario.test[1]))


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


def ordering_name(scenario: Scenario, seed: int) -> str:
    """Which ordering of its stream ``scenario`` is: its filelists' run (``meta["run"]``, as
    ``run0`` of CORe50's ``NIC_v2_391/run0/``), else the seed a generated stream was drawn with.

    >>> from pathlib import Path
    >>> ordering_name(Scenario("x", Path("."), [(["a.png"], [0])], ([], []), {"run": "run1"}), 1)
    'run1'
    """
    return str(scenario.meta.get("run", f"seed {seed}"))


@dataclass
class _Ordering:
    """One ordering of a scenario, ready to run: the scenario's record and the ordering's name
    (added to the results once its runs are in), the strategies' views of its stream, its
    evaluation points and its latents' shape."""

    scenario: str
    record: dict[str, Any]
    name: str
    seed: int
    views: dict[str, Stream]
    points: set[int]
    latent_shape: tuple[int, ...]
    batches: int


def _view(latents: Stream, features: str, head: PretrainedHead) -> Stream:
    """The stream of ``latents`` as a strategy eating ``features`` sees it."""
    if features == "pool":
        return pooled(latents, head)
    if features == "latent-summary":
        return latent_summaries(latents)
    return latents


def _ordering(
    scenario: Scenario,
    seed: int,
    cache: LatentCache,
    head: PretrainedHead,
    features: set[str],
    eval_points: int,
) -> _Ordering:
    """Ordering ``seed`` of ``scenario``, its latents read through the latent cache (in this
    process: workers never open the extractor) and turned into the ``features`` views."""
    latents = load_stream(scenario, cache)
    return _Ordering(
        scenario.name,
        scenario_record(scenario),
        ordering_name(scenario, seed),
        seed,
        {f: _view(latents, f, head) for f in sorted(features)},
        evaluation_points(len(latents.batches), eval_points),
        latents.test_x.shape[1:],
        len(latents.batches),
    )


def _orderings(
    scenarios: Sequence[Callable[[int], Scenario]],
    runs: int,
    cache: LatentCache,
    head: PretrainedHead,
    features: set[str],
    eval_points: int,
) -> Iterator[_Ordering]:
    """Each ordering of each scenario in turn (:func:`_ordering`)."""
    for build in scenarios:
        for seed in range(runs):
            yield _ordering(build(seed), seed, cache, head, features, eval_points)


def _run_line(r: dict[str, Any], seconds: float) -> str:
    """A finished run's one-line report."""
    return (
        f"{r['scenario']} run {r['seed']} {r['strategy']:22s} final "
        f"{100 * r['final_accuracy']:5.1f}%  {sum(r['flops']) / 1e9:9.0f} GFLOP  {seconds:6.1f} s"
    )


def _serial_runs(
    orderings: Iterator[_Ordering],
    strategies: Sequence[Strategy],
    head: dict[str, np.ndarray],
    total: int,
    progress_stream: TextIO,
) -> Generator[tuple[_Ordering, list[dict[str, Any]]], None, None]:
    """Each ordering with its runs, one run after another in this process (``total``: the
    orderings to come, for the progress bar)."""
    progress: Progress | None = None
    for o in orderings:
        if progress is None:
            progress = Progress(total * len(strategies) * o.batches, progress_stream)
        done = []
        for s in strategies:
            progress.label = f"{o.scenario} run {o.seed} {s.name}"
            start = time.perf_counter()
            cost = feature_flops(s.features, o.latent_shape)
            r = run(s, o.views[s.features], head, o.seed, o.points, progress.step, cost)
            r["scenario"] = o.scenario
            done.append(r)
            progress.line(_run_line(r, time.perf_counter() - start))
        yield o, done


PackedStream = tuple[np.ndarray, list[int], list[Label], list[Label]]
"""A stream as :func:`pack` packs it."""


def pack(stream: Stream) -> PackedStream:
    """A stream as a worker gets it: one array (the batches, then the test set), the batch
    sizes, the training labels and the test labels; one array, which joblib memory-maps and a
    Dask cluster gets once, rather than a list of them sent with every run."""
    x = np.concatenate([*(x for x, _ in stream.batches), stream.test_x])
    train_y = [label for _, y in stream.batches for label in y]
    return x, [len(y) for _, y in stream.batches], train_y, list(stream.test_y)


def unpack(
    x: np.ndarray, sizes: Sequence[int], train_y: list[Label], test_y: list[Label]
) -> Stream:
    """The stream that :func:`pack` packed (its arrays views of ``x``).

    >>> s = unpack(*pack(Stream([(np.zeros((2, 3)), [0, 1]), (np.ones((1, 3)), [2])],
    ...                         np.ones((4, 3)), [0, 1, 2, 0])))
    >>> [(x.shape, y) for x, y in s.batches], s.test_x.shape, s.test_y
    ([((2, 3), [0, 1]), ((1, 3), [2])], (4, 3), [0, 1, 2, 0])
    """
    ends = [0, *itertools.accumulate(sizes)]
    batches = [(x[a:b], train_y[a:b]) for a, b in itertools.pairwise(ends)]
    return Stream(batches, x[ends[-1] :], test_y)


def run_packed(
    name: str,
    settings: tuple[float, int, Grid | None],
    x: np.ndarray,
    sizes: list[int],
    train_y: list[Label],
    test_y: list[Label],
    head: dict[str, np.ndarray],
    seed: int,
    eval_at: set[int],
    feature_cost: int,
    threads: int,
) -> tuple[dict[str, Any], float]:
    """What a worker of a parallel study does: :func:`run` of strategy ``name`` of
    :func:`strategies` of ``settings`` (replay MB, epochs, grid) on the stream :func:`pack`
    packed into ``x``, ``sizes``, ``train_y``, ``test_y`` (each its own argument, so that Dask
    sends ``x`` to the cluster once for all its runs), its BLAS held to ``threads``
    (:func:`~edge_cl.bench.parallel.hold_blas`); the run's results and its wall time. The
    strategy is rebuilt here from its name because strategies' constructors are closures,
    which need not pickle."""
    start = time.perf_counter()
    parallel.hold_blas(threads)
    stream = unpack(x, sizes, train_y, test_y)
    r = run(strategies(*settings)[name], stream, head, seed, eval_at, feature_cost=feature_cost)
    return r, time.perf_counter() - start


_Packed = tuple[_Ordering, dict[str, PackedStream]]
"""An ordering without its views, and its views packed."""


def _packed(o: _Ordering) -> _Packed:
    """``o`` as the workers get it: its views packed (:func:`pack`), none kept unpacked."""
    return replace(o, views={}), {f: pack(v) for f, v in o.views.items()}


def _parallel_runs(
    orderings: Iterator[_Ordering],
    strategies: Sequence[Strategy],
    settings: tuple[float, int, Grid | None],
    head: dict[str, np.ndarray],
    ordered: parallel.Ordered,
    threads: int,
    progress: Progress,
) -> Generator[tuple[_Ordering, list[dict[str, Any]]], None, None]:
    """Each ordering with its runs, the runs of every ordering going to the workers of
    ``ordered`` as one stream of calls, each run's BLAS held to ``threads``; in the serial
    order, each ordering as soon as its runs are in.

    A thread of its own loads the orderings (latent cache, pooled views, packing), one ahead of
    the calls: the next ordering's runs are ready when a worker frees up, and the joblib thread
    that takes calls only waits for one when loading is the slower.
    """
    if not strategies:
        yield from ((o, []) for o in orderings)
        return
    taken: list[_Ordering] = []
    failed: list[Exception] = []

    def calls(ready: Iterator[_Packed]) -> Iterator[parallel.Call]:
        try:
            for o, streams in ready:
                taken.append(o)
                for s in strategies:
                    cost = feature_flops(s.features, o.latent_shape)
                    given = (*streams[s.features], head, o.seed, o.points, cost, threads)
                    yield run_packed, (s.name, settings, *given)
        except Exception as e:  # raised below, after the runs before it: joblib would drop the
            failed.append(e)  # calls it had taken from here along with the error

    with parallel.prefetched(map(_packed, orderings)) as ready:
        done: list[dict[str, Any]] = []
        for i, (r, seconds) in enumerate(ordered(calls(ready))):
            o = taken[i // len(strategies)]
            r["scenario"] = o.scenario
            done.append(r)
            progress.label = f"{o.scenario} run {o.seed} {r['strategy']}"
            progress.step()
            progress.line(_run_line(r, seconds))
            if len(done) == len(strategies):
                yield o, done
                done = []
    if failed:
        raise failed[0]


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
    predictions_per_batch: int = PREDICTIONS_PER_BATCH,
    jobs: int = 1,
    dask: str | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Run strategies ``names`` on ``runs`` orderings of each scenario; JSON-ready results.

    ``scenarios`` are builders taking the ordering seed. Each strategy is measured against the
    cumulative strategy of its own features (run it too to get gaps and savings).
    ``on_ordering`` gets the results so far after every ordering, so a long study can be saved
    as it goes and stopped at any time. ``predictions_per_batch``: the frames the device is
    taken to classify per learned batch, which the life-cycle compute and its savings count
    beside the updates (:data:`~edge_cl.bench.report.PREDICTIONS_PER_BATCH` says why 300).

    Serial runs (``jobs`` 1) hold numpy's BLAS to ``threads``. ``jobs`` > 1 runs that many runs
    at once in worker processes, each held to ``max(1, threads // jobs)`` BLAS threads
    (:func:`~edge_cl.bench.parallel.thread_share`), so that together they do not oversubscribe
    the cores; ``dask``, a scheduler address, runs them on that Dask cluster instead, one per
    worker thread and one BLAS thread each (``jobs`` is then not used). The results are the
    serial study's but for the wall times (``seconds``, ``wall_seconds``), ``settings["jobs"]``
    (runs at once) and ``settings["dask"]``, when their runs had as many BLAS threads as the
    serial ones (``settings["blas_threads"]``): OpenBLAS splits the sums of some large matrix
    products over its threads, so that their last bits, and sometimes a prediction, depend on
    how many threads it had (cumulative retraining's, on the quick study).
    """
    if isinstance(predictions_per_batch, bool) or predictions_per_batch < 0:
        raise ConfigError(
            f"predictions per batch (--predictions-per-batch) must be an int >= 0, got "
            f"{predictions_per_batch!r}: 0 counts updates alone"
        )
    parallel.check_jobs(jobs)
    started = time.perf_counter()
    grid = cache.extractor.artifact.output_grid
    table = strategies(replay_mb, epochs, grid)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise StrategyError(f"unknown strategies {unknown}; choose from {', '.join(table)}")
    chosen = [table[n] for n in names]
    orderings = _orderings(
        scenarios,
        runs,
        cache,
        PretrainedHead.from_arrays(head),
        {s.features for s in chosen},
        eval_points,
    )
    results: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any]] = {}
    image_bytes = 0
    settings: dict[str, Any] = {
        "runs": runs,
        "strategies": list(names),
        "replay_mb": replay_mb,
        "replay_grid": grid,
        "epochs": epochs,
        "eval_points": eval_points,
        "predictions_per_batch": predictions_per_batch,
        "jobs": 1,
        "blas_threads": threads,
    }
    with contextlib.ExitStack() as stack:
        if jobs == 1 and dask is None:
            stack.enter_context(parallel.blas_limits(threads))
            done = _serial_runs(orderings, chosen, head, len(scenarios) * runs, progress_stream)
        else:
            ordered, slots = stack.enter_context(parallel.workers(jobs, dask, shared=[head]))
            settings["jobs"] = slots
            if dask is not None:
                settings["dask"] = dask
            share = 1 if dask is not None else parallel.thread_share(threads, jobs)
            settings["blas_threads"] = share
            progress = Progress(len(scenarios) * runs * len(chosen), progress_stream)
            done = _parallel_runs(
                orderings, chosen, (replay_mb, epochs, grid), head, ordered, share, progress
            )
        stack.callback(done.close)  # before the workers go, if an on_ordering raised
        for o, runs_done in done:
            record = records.setdefault(o.scenario, o.record)
            record.setdefault("orderings", []).append(o.name)
            results += runs_done
            image_bytes = cache.extractor.resolution**2 * 3
            if on_ordering is not None:
                on_ordering(_results(results, records, image_bytes, settings, started))
    return _results(results, records, image_bytes, settings, started)


def _results(
    runs: list[dict[str, Any]],
    records: dict[str, dict[str, Any]],
    image_bytes: int,
    settings: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    by_scenario = {}
    per_batch = int(settings["predictions_per_batch"])
    for sc in dict.fromkeys(r["scenario"] for r in runs):
        mine = [r for r in runs if r["scenario"] == sc]
        by_scenario[sc] = summarise(mine, image_bytes, per_batch)
    return {  # copies: a result handed to on_ordering does not change as the study goes on
        "scenarios": copy.deepcopy(records),
        "environment": environment(),
        "settings": {**settings, "input_image_bytes": image_bytes},
        "summary": by_scenario,
        "runs": list(runs),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
