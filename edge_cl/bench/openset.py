"""The open-set report (issue 17): how well the default learner tells objects it was never
taught from the ones it was.

For each ordering of a scenario, the default learner (the study's ``ar1-latent``: ``AR1Star``
with its default settings) learns the first ``at`` of the stream's batches. Test views of the
classes seen by then are *known*, the others *unseen*. Its novelty score
(:meth:`~edge_cl.learner.network.LatentNetwork.novelty`, higher = less like anything taught) is
scored as a detector of unseen classes: AUROC, the unseen flagged at 5% of known views rejected,
the known rejected at 95% of unseen flagged (FPR95), the accuracy on the known views that pass at
the 5% threshold, and the accuracy on every known view with no rejection (what the device did
before it could say "unknown"), and the same detector figures of the top class probability, what
flagged unknown before. Then the device's own operating point: the threshold the
device sets after every update (:func:`~edge_cl.device.worker.recalibrate`: from the novelty of
taught views scored before they were learned, else from the replay memory), and what
``predict_with_confidence`` flags with it.

Latents come from the study's :class:`~edge_cl.bench.latents.LatentCache` through
:func:`~edge_cl.bench.study.load_stream`, one ordering at a time, and only the batches learned
(plus the test set) are loaded.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edge_cl.bench.filelists import Scenario
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.study import (
    Stream,
    environment,
    load_stream,
    ordering_name,
    scenario_record,
    strategies,
)
from edge_cl.device.worker import recalibrate
from edge_cl.errors import ConfigError, DatasetError, StrategyError
from edge_cl.learner.ar1 import AR1Star

STRATEGY = "ar1-latent"
"""The study's strategy the report measures: the default learner."""

FPR = 0.05
"""The share of known views rejected at the report's detector threshold."""

TPR = 0.95
"""The share of unseen views flagged at which FPR95 is read."""

FIGURES: dict[str, str] = {
    "auroc": "AUROC: the chance that an unseen view scores higher than a known one (ties "
    "count half); 0.5 is chance, 1.0 perfect.",
    "tpr_at_fpr5": "TPR@5%FPR: the share of unseen views flagged at the threshold that "
    "rejects 5% of known views (the 95% quantile of their scores).",
    "fpr_at_tpr95": "FPR@95%TPR (FPR95): the share of known views scoring at or above the 5% "
    "quantile of the unseen views' scores, where 95% of unseen views are flagged.",
    "accuracy_accepted_at_fpr5": "acc. accepted @5%FPR: top-1 accuracy on the known views "
    "that pass the 5%-FPR threshold.",
    "accuracy_known": "acc. known: top-1 accuracy on every known view, none rejected (the "
    "device without an unknown output).",
    "softmax_auroc": "softmax AUROC: the AUROC of the top class probability (lower = unseen), "
    "what flagged unknown before the novelty score, for comparison.",
    "softmax_tpr_at_fpr5": "softmax TPR@5%FPR: its share of unseen views flagged with 5% of "
    "known views rejected (saturated probabilities tie at 1.0: none of them is flagged).",
    "softmax_accuracy_accepted_at_fpr5": "softmax acc. accepted @5%FPR: top-1 accuracy on the "
    "known views it lets pass there.",
    "device_threshold": "device threshold: the novelty threshold the device sets after an "
    "update (`edge_cl.device.worker.recalibrate`): from the teach views scored before they were "
    "learned where it keeps 32 (`calibrate_unknown_on_teaching`), else from the replay memory "
    "(class-incremental streams never re-teach a class); the table says which.",
    "device_known_rejected": "device known rejected: the share of known views "
    "`predict_with_confidence` flags unknown at the device threshold.",
    "device_unseen_flagged": "device unseen flagged: the share of unseen views it flags.",
    "device_accuracy_accepted": "device acc. accepted: top-1 accuracy on the known views it "
    "does not flag.",
}
"""Every figure of an ordering, with its one-line definition (the Markdown report's legend)."""

_COLUMNS = {
    "auroc": "AUROC",
    "tpr_at_fpr5": "TPR@5%FPR %",
    "fpr_at_tpr95": "FPR@95%TPR %",
    "accuracy_accepted_at_fpr5": "acc. accepted @5%FPR %",
    "accuracy_known": "acc. known %",
    "softmax_auroc": "softmax AUROC",
    "softmax_tpr_at_fpr5": "softmax TPR@5%FPR %",
    "softmax_accuracy_accepted_at_fpr5": "softmax acc. accepted %",
    "device_threshold": "device threshold",
    "device_calibrated_on": "calibrated on",
    "device_known_rejected": "device known rejected %",
    "device_unseen_flagged": "device unseen flagged %",
    "device_accuracy_accepted": "device acc. accepted %",
}


def _scores(known: np.ndarray, unseen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both score arrays as 1-d float64; ``DatasetError`` if either is empty."""
    k = np.asarray(known, dtype=np.float64).ravel()
    u = np.asarray(unseen, dtype=np.float64).ravel()
    if len(k) == 0 or len(u) == 0:
        raise DatasetError(
            f"an unseen-class detector needs known and unseen views, got {len(k)} known and "
            f"{len(u)} unseen"
        )
    return k, u


def auroc(known: np.ndarray, unseen: np.ndarray) -> float:
    """Area under the ROC curve of ``unseen`` against ``known`` scores (higher = unseen): the
    share of (known, unseen) pairs where the unseen scores higher, ties counted half (the
    rank-sum, Mann-Whitney statistic).

    >>> auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])), auroc(np.array([1.0]), np.array([0.0]))
    (1.0, 0.0)
    >>> auroc(np.array([1.0, 1.0]), np.array([1.0])), auroc(np.array([0.1, 0.4]), np.array([0.3]))
    (0.5, 0.5)
    """
    k, u = _scores(known, unseen)
    k = np.sort(k)
    below = np.searchsorted(k, u, side="left")
    at_or_below = np.searchsorted(k, u, side="right")
    wins = below.sum() + 0.5 * (at_or_below - below).sum()
    return float(wins / (len(k) * len(u)))


def fpr_threshold(known: np.ndarray, fpr: float = FPR) -> float:
    """The score above which a share ``fpr`` of ``known`` views is flagged: their ``1 - fpr``
    quantile (linear interpolation)."""
    return float(np.quantile(np.asarray(known, dtype=np.float64), 1 - fpr))


def tpr_at_fpr(known: np.ndarray, unseen: np.ndarray, fpr: float = FPR) -> float:
    """The share of ``unseen`` scoring above :func:`fpr_threshold` of ``known``.

    >>> tpr_at_fpr(np.arange(100.0), np.array([10.0, 94.0, 95.0, 200.0]))  # threshold 94.05
    0.5
    """
    k, u = _scores(known, unseen)
    return float(np.mean(u > fpr_threshold(k, fpr)))


def fpr_at_tpr(known: np.ndarray, unseen: np.ndarray, tpr: float = TPR) -> float:
    """The share of ``known`` scoring at or above the ``1 - tpr`` quantile of ``unseen`` (the
    threshold that flags a share ``tpr`` of unseen views): FPR95 for ``tpr`` 0.95.

    >>> fpr_at_tpr(np.array([0.0, 1.0, 2.0, 3.0]), np.full(10, 2.0))
    0.5
    """
    k, u = _scores(known, unseen)
    return float(np.mean(k >= np.quantile(u, 1 - tpr)))


def roc_curve(known: np.ndarray, unseen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve: (FPR, TPR) flagging every score at or above each distinct score, from
    the highest down, starting at (0, 0) and ending at (1, 1); its trapezoid area is
    :func:`auroc`.

    >>> fpr, tpr = roc_curve(np.array([0.0, 1.0]), np.array([1.0, 2.0]))
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0])
    """
    k, u = _scores(known, unseen)
    thresholds = np.unique(np.concatenate([k, u]))[::-1]
    k, u = np.sort(k), np.sort(u)
    fpr = (len(k) - np.searchsorted(k, thresholds, side="left")) / len(k)
    tpr = (len(u) - np.searchsorted(u, thresholds, side="left")) / len(u)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def learned_batches(batches: int, at: float) -> int:
    """How many of a stream's ``batches`` the learner learns: the first ``ceil(at * batches)``,
    at least one.

    >>> learned_batches(5, 0.5), learned_batches(387, 0.5), learned_batches(10, 0.01)
    (3, 194, 1)
    """
    if not 0 < at <= 1:
        raise ConfigError(f"--at must be a fraction in (0, 1], got {at}")
    return max(1, math.ceil(round(at * batches, 9)))  # 0.7 * 10 is 7.000000000000001


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def evaluate(learner: AR1Star, stream: Stream, accept: float) -> dict[str, Any] | None:
    """Every figure of one ordering: ``learner`` learns each batch of ``stream`` (the part of
    the stream it is taught), then its test set is split into known and unseen views and
    scored. None when the test set has no unseen view (every class was seen) or no known one.
    """
    for x, y in stream.batches:
        learner.partial_fit(x, y)
    seen = {label for _, labels in stream.batches for label in labels}
    is_known = np.array([label in seen for label in stream.test_y], dtype=bool)
    if is_known.all() or not is_known.any():
        return None
    scores = learner.novelty(stream.test_x).astype(np.float64)
    known, unseen = scores[is_known], scores[~is_known]
    source = recalibrate(learner, accept)  # as the device does after every update
    threshold = learner.config.novelty_threshold if source is not None else None
    labels, confidence, flagged = learner.predict_with_confidence(stream.test_x)
    hits = np.array([p == t for p, t in zip(labels, stream.test_y, strict=True)], dtype=bool)
    passed = is_known & (scores <= fpr_threshold(known))
    msp = -confidence.astype(np.float64)  # what "unknown" read before: the top probability
    msp_passed = is_known & (msp <= fpr_threshold(msp[is_known]))
    device: dict[str, float | None] = dict.fromkeys(
        ("device_known_rejected", "device_unseen_flagged", "device_accuracy_accepted")
    )
    if threshold is not None:
        device = {
            "device_known_rejected": float(np.mean(flagged[is_known])),
            "device_unseen_flagged": float(np.mean(flagged[~is_known])),
            "device_accuracy_accepted": _mean(hits[is_known & ~flagged]),
        }
    unseen_classes = {label for label in stream.test_y if label not in seen}
    return {
        "known_classes": len(seen),
        "unseen_classes": len(unseen_classes),
        "known_views": int(is_known.sum()),
        "unseen_views": int((~is_known).sum()),
        "auroc": auroc(known, unseen),
        "tpr_at_fpr5": tpr_at_fpr(known, unseen),
        "fpr_at_tpr95": fpr_at_tpr(known, unseen),
        "accuracy_accepted_at_fpr5": float(np.mean(hits[passed])),
        "accuracy_known": float(np.mean(hits[is_known])),
        "softmax_auroc": auroc(msp[is_known], msp[~is_known]),
        "softmax_tpr_at_fpr5": tpr_at_fpr(msp[is_known], msp[~is_known]),
        "softmax_accuracy_accepted_at_fpr5": float(np.mean(hits[msp_passed])),
        "device_threshold": threshold,
        "device_calibrated_on": source,
        **device,
        "scores": {"known": known.tolist(), "unseen": unseen.tolist()},
    }


def means(orderings: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """The mean of every figure of :data:`FIGURES` over ``orderings``, leaving out those it is
    None for (None if it is None for all).

    >>> a = {**dict.fromkeys(FIGURES), "auroc": 0.8}
    >>> b = {**dict.fromkeys(FIGURES), "auroc": 0.9, "device_threshold": 2.0}
    >>> m = means([a, b])
    >>> round(m["auroc"], 6), m["device_threshold"], m["tpr_at_fpr5"]
    (0.85, 2.0, None)
    """
    out: dict[str, float | None] = {}
    for key in FIGURES:
        values = [o[key] for o in orderings if o[key] is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def bench_openset(
    scenarios: Sequence[Callable[[int], Scenario]],
    cache: LatentCache,
    head: dict[str, np.ndarray],
    runs: int,
    at: float = 0.5,
    accept: float = 0.95,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """The open-set figures of ``runs`` orderings of each scenario; JSON-ready results.

    ``scenarios`` are builders taking the ordering seed, as for
    :func:`~edge_cl.bench.study.bench`. An ordering whose test set holds no unseen class after
    the learned batches is skipped, with a line on ``progress`` (as is each ordering's result;
    standard error by default).
    """
    progress = sys.stderr if progress is None else progress
    if not 0 < accept <= 1:
        raise ConfigError(f"--accept must be a fraction in (0, 1], got {accept}")
    if runs < 1:
        raise ConfigError(f"--runs must be >= 1, got {runs}")
    strategy = strategies(grid=cache.extractor.artifact.output_grid)[STRATEGY]
    records: dict[str, dict[str, Any]] = {}
    orderings: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for build in scenarios:
        for seed in range(runs):
            start = time.perf_counter()
            scenario = build(seed)
            name = ordering_name(scenario, seed)
            record = records.setdefault(scenario.name, scenario_record(scenario))
            record.setdefault("orderings", []).append(name)
            total = len(scenario.train_batches)
            learned = learned_batches(total, at)
            taught = replace(scenario, train_batches=scenario.train_batches[:learned])
            learner = strategy.make(head, seed)
            if not isinstance(learner, AR1Star):
                raise StrategyError(f"{STRATEGY} built a {type(learner).__name__}, not an AR1Star")
            figures = evaluate(learner, load_stream(taught, cache), accept)
            where = f"{scenario.name} {name}: {learned} of {total} batches learned"
            if figures is None:
                skipped.append({"scenario": scenario.name, "ordering": name, "seed": seed})
                why = "no unseen class (or no known one) in its test set"
                print(f"{where}; skipped: {why}", file=progress, flush=True)
                continue
            seconds = time.perf_counter() - start
            orderings.append(
                {
                    "scenario": scenario.name,
                    "ordering": name,
                    "seed": seed,
                    "batches": total,
                    "batches_learned": learned,
                    "seconds": seconds,
                    **figures,
                }
            )
            print(
                f"{where}, {figures['known_classes']} known / {figures['unseen_classes']} unseen"
                f" classes, AUROC {figures['auroc']:.3f}  {seconds:.1f} s",
                file=progress,
                flush=True,
            )
    return {
        "settings": {"strategy": STRATEGY, "runs": runs, "at": at, "accept": accept},
        "scenarios": records,
        "environment": environment(),
        "means": {
            sc: means([o for o in orderings if o["scenario"] == sc])
            for sc in dict.fromkeys(o["scenario"] for o in orderings)
        },
        "orderings": orderings,
        "skipped": skipped,
    }


def _cell(key: str, value: float | str | None) -> str:
    if value is None:
        return "n/a"
    if key.endswith("auroc"):
        return f"{value:.3f}"
    if isinstance(value, str):
        return value
    if key == "device_threshold":
        return f"{value:.2f}"
    return f"{100 * value:.1f}"


def scenario_table(result: dict[str, Any], scenario: str) -> str:
    """A Markdown table of one scenario: a row per ordering, then their mean."""
    header = ["ordering", "known / unseen classes", *_COLUMNS.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for o in result["orderings"]:
        if o["scenario"] == scenario:
            cells = [_cell(k, o[k]) for k in _COLUMNS]
            classes = f"{o['known_classes']} / {o['unseen_classes']}"
            lines.append("| " + " | ".join([o["ordering"], classes, *cells]) + " |")
    mean = result["means"][scenario]
    lines.append("| mean | | " + " | ".join(_cell(k, mean.get(k)) for k in _COLUMNS) + " |")
    return "\n".join(lines)


def markdown_report(result: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """The report in Markdown: the command, a table per scenario (its orderings and their
    mean), each figure's definition and the ROC figures ``plots`` (paths named
    ``<scenario>_roc.png``)."""
    settings = result["settings"]
    lines = ["# Unknown objects: the open-set report", ""]
    if "command" in result:
        lines += ["Command:", "", f"    {result['command']}", ""]
    lines += [
        f"The default learner (`{settings['strategy']}`) learns the first "
        f"{100 * settings['at']:g}% of each stream's batches; test views of the classes seen by "
        "then are known, the others unseen. Its novelty score flags unseen views (higher = "
        f"unseen); the device threshold lets {100 * settings['accept']:g}% of taught views "
        f"pass. Extractor: `{result.get('extractor', '?')}`.",
        "",
    ]
    for scenario in result["means"]:
        sc = result["scenarios"][scenario]
        mine = [o for o in result["orderings"] if o["scenario"] == scenario]
        lines += [
            f"## {scenario}",
            "",
            f"{sc['batches']} batches, {mine[0]['batches_learned']} learned; {sc['classes']} "
            f"classes, {sc['test_images']} test images.",
            "",
            scenario_table(result, scenario),
            "",
        ]
        lines += [f"![{p}]({p})" for p in plots if Path(p).name == f"{scenario}_roc.png"]
        lines += [""]
    if result["skipped"]:
        names = ", ".join(f"{s['scenario']} {s['ordering']}" for s in result["skipped"])
        lines += [f"Skipped (no unseen class in the test set): {names}.", ""]
    lines += ["Figures (percentages of views):", ""]
    lines += [f"- {definition}" for definition in FIGURES.values()]
    return "\n".join(lines).rstrip() + "\n"
