"""Does teaching the learner what "in between" looks like help it say "unknown"? (issue 17)

Outlier exposure without outliers: with every batch after the first, AR1* is also given as many
*mixed* latents, ``lam * a + (1 - lam) * b`` with ``lam`` uniform in [0.3, 0.7], ``a`` a pattern
of the batch and ``b`` one of an earlier batch of another class, all labelled as one extra
class, ``other``. Its novelty is then the ``other`` logit minus the largest logit of a real class
(``other_margin``), or as before minus that largest logit alone (``maxlogit``). The default AR1*
(no mixing) is the baseline; both learn the first half of the stream.

    python experiments/openset_mixup.py --scenario coil100-clutter cifar10-nic --seeds 0 1 2 \\
        --json experiments/results/openset_mixup_dev.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from openset_probe import emit, figures, half_taught, write_rows

from edge_cl.bench.scenarios import DEFAULT_DATASETS
from edge_cl.bench.study import Stream
from edge_cl.learner.ar1 import AR1Star

if TYPE_CHECKING:
    from typing import Self

OTHER = "other (mixed)"
LAM = (0.3, 0.7)


class MixupOther(AR1Star):
    """AR1* that learns each batch with as many mixed latents, labelled :data:`OTHER`, beside
    it. It keeps every batch it saw to draw partners from (a lab tool: unbounded memory)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[np.ndarray, object]] = []
        self.mix_rng = np.random.default_rng(self.config.seed)

    def partial_fit(self, latents: np.ndarray, labels: Sequence[object]) -> Self:
        labels = list(labels)
        partners = [(x, label) for x, label in self.seen if label != labels[0]]
        x, y = latents, labels
        if partners:
            n, rng = len(latents), self.mix_rng
            a = latents[rng.integers(0, n, n)]
            picks = [partners[i][0] for i in rng.integers(0, len(partners), n)]
            b = np.stack([p[rng.integers(0, len(p))] for p in picks])
            lam = rng.uniform(*LAM, (n, 1, 1, 1)).astype(np.float32)
            mixed = (lam * a + (1 - lam) * b).astype(latents.dtype)
            x, y = np.concatenate([latents, mixed]), labels + [OTHER] * n
        self.seen.append((latents, labels[0]))
        return super().partial_fit(x, y)


def scores(learner: AR1Star, stream: Stream) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """The novelty scores of the test views, which views are of a taught class, and the top-1
    accuracy on those (over real classes only)."""
    names = learner.labels.labels
    live = learner.labels.transform(names)
    logits = learner._features(stream.test_x, train=False) @ learner.cw[:, live]
    real = np.array([name != OTHER for name in names])
    best = logits[:, real].max(1)
    out = {"maxlogit": -best}
    if not real.all():
        out["other_margin"] = logits[:, ~real][:, 0] - best
    predicted = np.array(names, dtype=object)[np.flatnonzero(real)[logits[:, real].argmax(1)]]
    truth = np.array(stream.test_y, dtype=object)
    taught = set(names) - {OTHER}
    known = np.array([label in taught for label in stream.test_y], dtype=bool)
    return out, known, float((predicted[known] == truth[known]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", nargs="+", default=["coil100-clutter", "cifar10-nic"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge_cl")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for learner_class in (AR1Star, MixupOther):
        for name, seed, _, stream, learner in half_taught(
            args.scenario, args.seeds, DEFAULT_DATASETS, args.cache, learner_class
        ):
            by_score, known, accuracy = scores(learner, stream)
            for score, s in by_score.items():
                kn, un = s[known].astype(np.float64), s[~known].astype(np.float64)
                row = {
                    "scenario": name,
                    "seed": seed,
                    "learner": learner_class.__name__,
                    "score": score,
                    **figures(kn, un),
                    "accuracy_known": round(accuracy, 4),
                }
                emit(rows, row)
    write_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
