"""The lifecycle study's report: per-strategy summaries over orderings (accuracy, gaps and
savings against cumulative retraining at the same depth, paired differences to streaming LDA),
their Markdown tables, and the quick study's pass/fail check.

It reads the JSON-ready results of :func:`edge_cl.bench.study.bench` and computes nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def reference_for(features: str) -> str:
    """The cumulative strategy a strategy is measured against: same features, same depth (the
    latent's summary is measured against retraining at the latent depth).

    >>> reference_for("pool"), reference_for("latent-summary")
    ('cumulative-pool', 'cumulative-latent')
    """
    return "cumulative-latent" if features == "latent-summary" else f"cumulative-{features}"


LDA_REFERENCE = "slda"
"""The streaming LDA the default learner must not fall behind (the paired differences of the
study tables)."""

PREDICTIONS_PER_BATCH = 300
"""Frames the device is taken to classify per learned batch, in the life-cycle compute: a
CORe50 batch is one session of an object, a 15 s video at 20 fps, 300 frames (NICv2's batches
hold 300 images each), and a device classifies every frame it is shown, so a batch learned from
a session comes with at least that session's 300 predictions. 0 counts the updates alone (the
life-cycle figures from before prediction was counted)."""


def _sem(values: Sequence[float] | np.ndarray) -> float:
    """Standard error of a mean (sample standard deviation / sqrt(n)); 0 for one value."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def _saving(mine: np.ndarray, ref: np.ndarray) -> float:
    return float(1.0 - mine.sum() / ref.sum()) if ref.sum() > 0 else float("nan")


def life_flops(run: dict[str, Any], predictions_per_batch: int) -> np.ndarray:
    """A run's compute per batch over its life cycle: the update's FLOPs plus
    ``predictions_per_batch`` predictions at the per-frame cost after it.

    >>> life_flops({"flops": [100, 0], "predict_flops": [2, 3]}, 10).tolist()
    [120.0, 30.0]
    """
    update = np.array(run["flops"], np.float64)
    return update + predictions_per_batch * np.array(run["predict_flops"], np.float64)


def _mean_seen(run: dict[str, Any]) -> float:
    """Mean over evaluation points of the accuracy on the seen classes' test images (points
    where no test image is of a seen class are left out; NaN if that is all of them)."""
    values = [v for v in run["accuracy_seen"].values() if v is not None]
    return float(np.mean(values)) if values else float("nan")


def summarise(
    runs: list[dict[str, Any]],
    image_bytes: int = 128 * 128 * 3,
    predictions_per_batch: int = PREDICTIONS_PER_BATCH,
) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over runs of accuracy, compute and memory per strategy.

    Compute: ``update_gflop_per_batch_mean`` is the mean update cost of a batch,
    ``predict_mflop_last_mean`` the cost of classifying one frame after the last batch;
    ``life_gflop_mean`` sums, over all batches, the update plus ``predictions_per_batch``
    predictions (:func:`life_flops`), ``update_gflop_total_mean`` the updates alone. Savings are
    against the cumulative strategy of the same features (``reference_for``) on the same
    ordering, when it ran: over the life cycle ``1 - sum(mine) / sum(cumulative)`` over all
    batches, and at the last batch ``1 - mine[-1] / cumulative[-1]``; ``compute_saving_*`` of
    the life-cycle compute, ``update_compute_saving_*`` of the updates alone, ``memory_saving_*``
    of the bytes held after each batch. ``average_accuracy_mean`` is the mean over evaluation
    points of accuracy on the whole test set (classes not yet seen included),
    ``average_accuracy_seen_mean`` of accuracy on the test images of the classes seen so far.
    ``raw_images_mb`` is what keeping every image seen would cost at the extractor's input size
    (``image_bytes`` each), the alternative to keeping latents. ``*_sem`` are standard errors
    of the means; ``lda_gap_*`` is the paired difference to streaming LDA (``LDA_REFERENCE``)
    on the same orderings, when it ran.
    """
    by_key = {(r["strategy"], r["seed"]): r for r in runs}
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == name]
        final = np.array([r["final_accuracy"] for r in mine])
        average = np.array([np.mean(list(r["accuracy"].values())) for r in mine])
        s: dict[str, float] = {
            "runs": len(mine),
            "final_accuracy_mean": float(final.mean()),
            "final_accuracy_std": float(final.std()),
            "final_accuracy_sem": _sem(final),
            "average_accuracy_mean": float(average.mean()),
            "average_accuracy_seen_mean": float(np.mean([_mean_seen(r) for r in mine])),
            "predictions_per_batch": predictions_per_batch,
            "update_gflop_per_batch_mean": float(np.mean([np.mean(r["flops"]) for r in mine]))
            / 1e9,
            "update_gflop_total_mean": float(np.mean([sum(r["flops"]) for r in mine])) / 1e9,
            "predict_mflop_last_mean": float(np.mean([r["predict_flops"][-1] for r in mine])) / 1e6,
            "life_gflop_mean": float(
                np.mean([life_flops(r, predictions_per_batch).sum() for r in mine])
            )
            / 1e9,
            "update_seconds_mean": float(np.mean([np.mean(r["seconds"]) for r in mine])),
            "final_memory_mb_mean": float(np.mean([r["memory_bytes"][-1] for r in mine]) / 2**20),
            "raw_images_mb": float(np.mean([r["images_seen"][-1] for r in mine]))
            * image_bytes
            / 2**20,
        }
        pairs = [
            (r, by_key[(reference_for(r["features"]), r["seed"])])
            for r in mine
            if (reference_for(r["features"]), r["seed"]) in by_key
        ]
        if pairs:
            gaps = [r["final_accuracy"] - ref["final_accuracy"] for r, ref in pairs]
            s["gap_mean"] = float(np.mean(gaps))
            s["gap_std"] = float(np.std(gaps))
            s["gap_sem"] = _sem(gaps)
            series: dict[str, Callable[[dict[str, Any]], np.ndarray]] = {
                "compute": lambda r: life_flops(r, predictions_per_batch),
                "update_compute": lambda r: np.array(r["flops"], np.float64),
                "memory": lambda r: np.array(r["memory_bytes"], np.float64),
            }
            for what, of in series.items():
                life = [_saving(of(r), of(f)) for r, f in pairs]
                last = [_saving(of(r)[-1:], of(f)[-1:]) for r, f in pairs]
                s[f"{what}_saving_life"] = float(np.mean(life))
                s[f"{what}_saving_last"] = float(np.mean(last))
        lda = [
            r["final_accuracy"] - by_key[(LDA_REFERENCE, r["seed"])]["final_accuracy"]
            for r in mine
            if (LDA_REFERENCE, r["seed"]) in by_key
        ]
        if lda and name != LDA_REFERENCE:
            s["lda_gap_mean"], s["lda_gap_sem"] = float(np.mean(lda)), _sem(lda)
        out[name] = s
    return out


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return ""
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def si(value: float) -> str:
    """A count with an SI prefix, three significant digits: FLOPs from a kNN's none to a
    retrain's trillions in one column.

    >>> si(0), si(76_800), si(13_200_000), si(999_999), si(7.93e9), si(2.5e12)
    ('0', '76.8k', '13.2M', '1M', '7.93G', '2.5T')
    """
    value = float(f"{value:.3g}")  # rounded first, so 999,999 reads 1M, not 1e+03k
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}"
    return f"{value:.3g}"


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    """The summary as a Markdown table: accuracy, gap and savings vs same-depth cumulative,
    compute per update, per prediction and over the life cycle, memory."""
    per_batch = next(iter(summary.values()), {}).get("predictions_per_batch", 0)
    rows = [
        "| strategy | runs | final accuracy (s.e.) | gap to cumulative (s.e.) | vs streaming LDA "
        "(s.e.) | average accuracy: all / seen classes | FLOPs per update | FLOPs per "
        f"prediction, at end | life-cycle FLOPs ({per_batch:.0f} predictions per batch) | "
        "compute saving: life / last | memory saving: life / last | s per update | "
        "memory at end (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        gap = lda = ""
        if "gap_mean" in s:
            gap = f"{_pct(s['gap_mean'], True)} ({_pct(s['gap_sem'])})"
        if "lda_gap_mean" in s:
            lda = f"{_pct(s['lda_gap_mean'], True)} ({_pct(s['lda_gap_sem'])})"
        saving = {
            w: f"{_pct(s.get(f'{w}_saving_life'))} / {_pct(s.get(f'{w}_saving_last'))}"
            if f"{w}_saving_life" in s
            else ""
            for w in ("compute", "memory")
        }
        rows.append(
            f"| {name} | {s['runs']:.0f} | {_pct(s['final_accuracy_mean'])} "
            f"({_pct(s['final_accuracy_sem'])}) | {gap} | {lda} | "
            f"{_pct(s['average_accuracy_mean'])} / {_pct(s['average_accuracy_seen_mean'])} | "
            f"{si(1e9 * s['update_gflop_per_batch_mean'])} | "
            f"{si(1e6 * s['predict_mflop_last_mean'])} | {si(1e9 * s['life_gflop_mean'])} | "
            f"{saving['compute']} | {saving['memory']} | "
            f"{s['update_seconds_mean']:.3f} | {s['final_memory_mb_mean']:.1f} |"
        )
    return "\n".join(rows)


def suite_table(result: dict[str, Any], learner: str = "ar1-latent") -> str:
    """One row per scenario for ``learner``: its final accuracy against cumulative retraining
    at the same depth and streaming LDA (paired differences, standard errors), its life-cycle
    compute saving, prediction cost per frame at the end, update time and memory. Empty if it
    did not run.
    """
    rows = [
        f"| scenario | {learner} (s.e.) | cumulative | gap (s.e.) | {LDA_REFERENCE} | "
        "vs it (s.e.) | compute saving, life | FLOPs per prediction | s per update | "
        "memory at end (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, summary in result["summary"].items():
        s = summary.get(learner)
        if s is None:
            continue
        ref = summary.get("cumulative-latent", {}).get("final_accuracy_mean")
        lda = summary.get(LDA_REFERENCE, {}).get("final_accuracy_mean")
        gap = f"{_pct(s['gap_mean'], True)} ({_pct(s['gap_sem'])})" if "gap_mean" in s else ""
        vs = ""
        if "lda_gap_mean" in s:
            vs = f"{_pct(s['lda_gap_mean'], True)} ({_pct(s['lda_gap_sem'])})"
        rows.append(
            f"| {scenario} | {_pct(s['final_accuracy_mean'])} ({_pct(s['final_accuracy_sem'])}) "
            f"| {_pct(ref)} | {gap} | {_pct(lda)} | {vs} | {_pct(s.get('compute_saving_life'))} "
            f"| {si(1e6 * s['predict_mflop_last_mean'])} "
            f"| {s['update_seconds_mean']:.3f} | {s['final_memory_mb_mean']:.1f} |"
        )
    return "\n".join(rows) if len(rows) > 2 else ""


def definitions(predictions_per_batch: int) -> list[str]:
    """The report's paragraph saying what each figure of its tables is."""
    p = predictions_per_batch
    return [
        "Accuracy is the mean over runs with its standard error. Gap and savings are against "
        "the cumulative strategy of the same features on the same ordering, 'vs streaming LDA' "
        f"against `{LDA_REFERENCE}` on the same ordering (paired differences). Average "
        "accuracy ('all') is the mean over the evaluation points of top-1 accuracy on the whole "
        "test set, the classes not seen yet included, so on a stream where classes arrive over "
        "time the early points are capped at the share of test images whose class has been "
        "seen; 'seen classes' is the same mean of the accuracy on the test images of the "
        "classes seen so far only.",
        "",
        "Compute is counted analytically. FLOPs per update: the mean over batches of what "
        "learning a batch costs (cumulative: a retrain on everything kept so far). FLOPs per "
        "prediction: what classifying one frame alone costs with the state after the last "
        "batch, from the latent (computing the strategy's features from it included: the "
        "pretrained layers up to the pool for pooled features, the summary for latent "
        "summaries); a kNN's grows with what it stores. Life-cycle FLOPs: the sum over batches "
        f"of the update plus {p} predictions at the per-frame cost after it "
        f"(`predictions_per_batch` {p}; a CORe50 batch is one 300-frame session, which a "
        "device classifies as it watches). Compute saving over the life cycle is "
        "`1 - life-cycle FLOPs / cumulative's`, at the last batch the same for that batch "
        "alone; memory saving the same with the bytes held after each batch. Memory is the "
        "state a learner keeps to go on learning and predicting (weights, statistics, stored "
        "and replayed patterns), without the arrays it caches from that state to score "
        "faster.",
    ]


def markdown_report(result: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """A study's Markdown summary: command, machine, scenarios, one table per scenario."""
    env = result["environment"]
    lines = ["# Lifecycle study", ""]
    if "command" in result:
        lines += ["Command:", "", f"    {result['command']}", ""]
    lines += [
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['platform']}, Python "
        f"{env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
        f"Extractor: `{result.get('extractor', '?')}`. Settings: "
        + ", ".join(f"{k} {v}" for k, v in result["settings"].items() if k != "strategies")
        + ".",
        "",
        *definitions(result["settings"].get("predictions_per_batch", PREDICTIONS_PER_BATCH)),
        "",
    ]
    table = suite_table(result)
    if len(result["summary"]) > 1 and table:
        lines += ["## The default learner on every scenario", "", table, ""]
    for name, summary in result["summary"].items():
        sc = result["scenarios"].get(name, {})
        lines += [f"## {name}", ""]
        if sc:
            lines += [
                f"{sc['batches']} batches of {sc['images_per_batch_min']}-"
                f"{sc['images_per_batch_max']} images (mean {sc['images_per_batch_mean']}), "
                f"{sc['first_batch_classes']} classes in the first batch, {sc['classes']} in "
                f"all, {sc['test_images']} test images. Keeping every image seen would take "
                f"{next(iter(summary.values()))['raw_images_mb']:.0f} MB at the input size.",
                "",
            ]
            if "orderings" in sc:
                lines += [f"Orderings: {', '.join(sc['orderings'])}.", ""]
        lines += [markdown_table(summary), ""]
        lines += [f"![{p}]({p})" for p in plots if Path(p).stem.rsplit("_", 1)[0] == name]
        lines += [""]
    return "\n".join(lines).rstrip() + "\n"


def quick_check(
    result: dict[str, Any],
    learner: str = "ar1-latent",
    max_gap: float = 0.03,
    lda: Sequence[str] = ("slda", "slda-latent"),
    max_lda_gap: float = 0.01,
) -> list[str]:
    """Failures of the quick study: ``learner`` more than ``max_gap`` behind its cumulative
    reference, or more than ``max_lda_gap`` behind a streaming LDA of ``lda``, on a scenario."""
    failures = []
    for scenario, summary in result["summary"].items():
        s = summary.get(learner)
        if s is None or "gap_mean" not in s:
            failures.append(f"{scenario}: no {learner} run with a cumulative run to compare with")
            continue
        if s["gap_mean"] < -max_gap:
            failures.append(
                f"{scenario}: {learner} ends {-100 * s['gap_mean']:.1f} points behind cumulative "
                f"(allowed {100 * max_gap:.0f})"
            )
        for name in lda:
            if name not in summary:
                continue
            behind = summary[name]["final_accuracy_mean"] - s["final_accuracy_mean"]
            if behind > max_lda_gap:
                failures.append(
                    f"{scenario}: {learner} ends {100 * behind:.1f} points behind {name} "
                    f"(allowed {100 * max_lda_gap:.0f})"
                )
    return failures
