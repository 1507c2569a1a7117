"""PNG figures of a lifecycle study (matplotlib, an optional extra: ``edge-cl[study]``).

Per scenario, two figures in the layout of the AR1* lifecycle figure:

- ``<scenario>_accuracy.png``: test accuracy vs training batch, mean +- standard deviation band
  over runs, one curve per strategy, cumulative drawn dashed;
- ``<scenario>_cost.png``: compute per update and over the life cycle so far (FLOPs, log scale),
  and memory held after each batch, per strategy (mean over runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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

        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for name, mine in by_name.items():
            flops = _series(mine, "flops").mean(0)
            memory = _series(mine, "memory_bytes").mean(0) / 2**20
            x = np.arange(1, len(flops) + 1)
            axes[0].plot(x, np.maximum(flops, 1.0), label=name, **_style(name))
            axes[1].plot(x, np.maximum(np.cumsum(flops), 1.0), label=name, **_style(name))
            axes[2].plot(x, memory, label=name, **_style(name))
        axes[0].set(yscale="log", ylabel="FLOPs per update", title="compute per batch")
        axes[1].set(yscale="log", ylabel="FLOPs so far", title="compute over the life cycle")
        axes[2].set(ylabel="MB held", title="memory after each batch")
        for ax in axes:
            ax.set_xlabel("training batch")
            ax.grid(alpha=0.3)
        axes[2].legend(fontsize=7)
        fig.suptitle(scenario)
        fig.tight_layout()
        written.append(out / f"{scenario}_cost.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
