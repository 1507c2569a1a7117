"""PNG figures of a lifecycle study (matplotlib, an optional extra: ``edge-cl[study]``).

Per scenario, two figures in the layout of the AR1* lifecycle figure:

- ``<scenario>_accuracy.png``: test accuracy vs training batch, mean +- standard deviation band
  over runs, one curve per strategy, cumulative drawn dashed;
- ``<scenario>_cost.png``: FLOPs per update, FLOPs per prediction (one frame, with the state
  after each batch) and the life-cycle compute so far (updates plus the study's
  ``predictions_per_batch`` predictions a batch), on log scales, and the memory held after
  each batch, per strategy (mean over runs). A log axis cannot show 0: zeros are left off it
  and the panel's legend names the strategies they were left off for.

The open-set report (``edge-cl bench-openset``) draws ``<scenario>_roc.png``: the ROC curve of
the novelty score against unseen classes, one curve per ordering (:func:`plot_openset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.bench.openset import FPR, fpr_threshold, roc_curve
from edge_cl.errors import MissingExtraError


def require_matplotlib() -> None:
    """Raise ``MissingExtraError`` now if plots cannot be drawn (before an hour of study)."""
    _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingExtraError("plots need matplotlib: pip install 'edge-cl[study]'") from e
    return plt


def _series(runs: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([r[key] for r in runs], dtype=np.float64)


def _style(name: str) -> dict[str, Any]:
    return {"linestyle": "--", "linewidth": 2.0} if name.startswith("cumulative") else {}


def zeros_left_off(name: str, values: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``values`` with its zeros as NaN (not drawn on a log axis), and the legend note saying
    so for ``name`` (None if it has no zero).

    >>> drawn, note = zeros_left_off("knn", np.array([0.0, 0.0]))
    >>> bool(np.isnan(drawn).all()), note
    (True, 'knn: 0, not drawn')
    >>> zeros_left_off("ncm", np.array([0.0, 5.0]))[1]
    'ncm: zeros not drawn'
    """
    zero = values <= 0
    drawn = np.where(zero, np.nan, values)
    if zero.all():
        return drawn, f"{name}: 0, not drawn"
    return drawn, f"{name}: zeros not drawn" if zero.any() else None


def _log_panel(ax: Any, x: np.ndarray, series: dict[str, np.ndarray], **labels: str) -> None:
    """One log-scale panel: a line per strategy, zeros left off and named in its legend."""
    notes = []
    for name, values in series.items():
        drawn, note = zeros_left_off(name, values)
        (line,) = ax.plot(x, drawn, **_style(name))
        if note is not None:
            line.set_label(note)
            notes.append(line)
    ax.set(yscale="log", **labels)
    if notes:
        ax.legend(handles=notes, fontsize=7)


def plot_study(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the accuracy and cost figures of every scenario in ``result``; return their paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for scenario in result["summary"]:
        runs = [r for r in result["runs"] if r["scenario"] == scenario]
        names = list(dict.fromkeys(r["strategy"] for r in runs))
        by_name = {n: [r for r in runs if r["strategy"] == n] for n in names}

        fig, ax = plt.subplots(figsize=(8, 4.5))
        for name, mine in by_name.items():
            curves = [{int(k): v for k, v in r["accuracy"].items()} for r in mine]
            points = sorted(curves[0])
            acc = 100 * np.array([[c[k] for k in points] for c in curves])
            mean, std = acc.mean(0), acc.std(0)
            x = np.array(points) + 1
            (line,) = ax.plot(x, mean, label=name, **_style(name))
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set(xlabel="training batch", ylabel="test accuracy (%)", title=scenario, ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        fig.tight_layout()
        written.append(out / f"{scenario}_accuracy.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

        per_batch = result["settings"]["predictions_per_batch"]
        fig, axes = plt.subplots(1, 4, figsize=(18, 4))
        update = {n: _series(m, "flops").mean(0) for n, m in by_name.items()}
        predict = {n: _series(m, "predict_flops").mean(0) for n, m in by_name.items()}
        life = {n: np.cumsum(update[n] + per_batch * predict[n]) for n in by_name}
        x = np.arange(1, len(next(iter(update.values()))) + 1)
        _log_panel(axes[0], x, update, ylabel="FLOPs per update", title="compute per batch")
        _log_panel(axes[1], x, predict, ylabel="FLOPs per frame", title="compute per prediction")
        _log_panel(
            axes[2],
            x,
            life,
            ylabel="FLOPs so far",
            title=f"life cycle, {per_batch} predictions per batch",
        )
        for name, mine in by_name.items():
            memory = _series(mine, "memory_bytes").mean(0) / 2**20
            axes[3].plot(x, memory, label=name, **_style(name))
        axes[3].set(ylabel="MB held", title="memory after each batch")
        for ax in axes:
            ax.set_xlabel("training batch")
            ax.grid(alpha=0.3)
        axes[3].legend(fontsize=7)
        fig.suptitle(scenario)
        fig.tight_layout()
        written.append(out / f"{scenario}_cost.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def plot_openset(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write ``<scenario>_roc.png`` for every scenario of an open-set report
    (:func:`~edge_cl.bench.openset.bench_openset`): the ROC curve of the novelty score as a
    detector of unseen classes, one curve per ordering with its 5%-FPR point marked; return
    the paths."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for scenario in result["means"]:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        for o in result["orderings"]:
            if o["scenario"] != scenario:
                continue
            known, unseen = np.array(o["scores"]["known"]), np.array(o["scores"]["unseen"])
            fpr, tpr = roc_curve(known, unseen)
            threshold = fpr_threshold(known)
            (line,) = ax.plot(fpr, tpr, label=f"{o['ordering']}: AUROC {o['auroc']:.3f}")
            ax.plot(
                np.mean(known > threshold),
                o["tpr_at_fpr5"],
                "o",
                color=line.get_color(),
                markersize=6,
            )
        ax.axvline(FPR, color="grey", linestyle="--", linewidth=1, label=f"{100 * FPR:g}% FPR")
        ax.set(
            xlabel="known views flagged unknown (FPR)",
            ylabel="unseen views flagged unknown (TPR)",
            title=f"{scenario}: novelty as an unseen-class detector",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        written.append(out / f"{scenario}_roc.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
