"""Which novelty score separates never-taught objects from taught ones (the probe behind the
"unknown" output's choice).

AR1* learns the first half of a scenario's stream; the test images of classes seen by then are
"known", the rest "unseen". Each candidate score (higher = more novel) is scored as a detector of
unseen classes: AUROC, the share of unseen flagged at 5% of known rejected (TPR@5), and FPR95.

    python experiments/openset_probe.py --scenario coil100-clutter cifar10-nic tinyimagenet-nc \
        --seeds 0 1 --json experiments/results/openset_probe_dev.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.bench.filelists import Scenario
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.openset import auroc, fpr_at_tpr, tpr_at_fpr
from edge_cl.bench.scenarios import DEFAULT_DATASETS, build
from edge_cl.bench.study import Stream, load_stream
from edge_cl.extractor import open_extractor
from edge_cl.extractor.imagenet import PretrainedHead, head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.ar1 import AR1Star
from edge_cl.learner.layers import softmax


def figures(known: np.ndarray, unseen: np.ndarray) -> dict[str, float]:
    """AUROC, TPR at 5% FPR and FPR95 of a detector of ``unseen`` (higher: more novel),
    rounded to 4 places, as ``edge-cl bench-openset`` computes them."""
    return {
        "auroc": round(auroc(known, unseen), 4),
        "tpr_at_fpr5": round(tpr_at_fpr(known, unseen), 4),
        "fpr_at_tpr95": round(fpr_at_tpr(known, unseen), 4),
    }


def emit(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Keep ``row`` and print it as a JSON line, so a long run shows its progress."""
    rows.append(row)
    print(json.dumps(row), flush=True)


def write_rows(path: Path | None, rows: list[dict[str, Any]], **meta: Any) -> None:
    """Write ``{**meta, "rows": rows}`` to ``path`` as indented JSON (nothing if None)."""
    if path is not None:
        path.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")


def half_taught(
    names: Sequence[str],
    seeds: Sequence[int],
    datasets: Path,
    cache: Path,
    learner_class: type[AR1Star] = AR1Star,
) -> Iterator[tuple[str, int, Scenario, Stream, AR1Star]]:
    """Each scenario of ``names`` and ordering of ``seeds``, with its latents (int8 LiteRT at
    128 px, through the latent cache) and the default AR1* (or ``learner_class``) taught the
    first half of the stream: what the later probes (``openset_variants.py``,
    ``openset_windows.py``, ...) score."""
    manifest = Manifest.load()
    head = head_arrays(manifest.head())
    ex = open_extractor("latent", "litert", "int8", threads=2, manifest=manifest)
    latents = LatentCache(cache / "latents", ex)
    for name in names:
        for seed in seeds:
            scenario = build(name, datasets, seed, cache / "images" / name)
            stream = load_stream(scenario, latents)
            learner = learner_class(head, ex.artifact.sha256, depth="latent", seed=seed)
            for x, y in stream.batches[: len(stream.batches) // 2]:
                learner.partial_fit(x, y)
            yield name, seed, scenario, stream, learner


def ranks(v: np.ndarray) -> np.ndarray:
    return v.argsort().argsort() / len(v)


def oas_maha(bank: np.ndarray, labels: np.ndarray, x: np.ndarray) -> np.ndarray:
    from edge_cl.learner.gaussian import ClassGaussians

    g = ClassGaussians(bank.shape[1]).partial_fit(bank, labels)
    slots = np.unique(labels)
    lda = g.scores(x, slots).astype(np.float64)
    quad = np.einsum("ij,jk,ik->i", x, g.precision(), x)
    return np.asarray(quad - 2 * lda.max(1))


def scores(
    learner: AR1Star,
    x: np.ndarray,
    bank: np.ndarray,
    bank_y: np.ndarray,
    frozen: Any,
    mx: np.ndarray,
) -> dict[str, np.ndarray]:
    g = learner.gaussians
    assert g is not None
    live = learner.labels.transform(learner.labels.labels)
    logits = learner.decision_function(x)
    p = softmax(logits)
    s = learner._summary(x).astype(np.float64)
    prec = g.precision()
    lda = g.scores(s, live).astype(np.float64)
    quad = np.einsum("ij,jk,ik->i", s, prec, s)
    maha = quad - 2 * lda.max(1)
    mu0 = (g.means[live] * g.counts[live, None]).sum(0) / g.counts[live].sum()
    d0 = s - mu0
    feats = learner._features(x, train=False)
    cw = learner.cw[:, live]
    cwr = feats @ cw
    fn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sims = fn @ bank.T
    out = {
        "msp": -p.max(1),
        "cwr_maxlogit": -cwr.max(1),
        "cwr_energy": -np.log(np.exp(cwr - cwr.max(1, keepdims=True)).sum(1)) - cwr.max(1),
        "maha": maha,
        "maha_rel_eucl": maha - (d0**2).sum(1) / np.trace(g.covariance()[0]) * len(mu0),
    }
    for k in (1, 5, 20):
        kth = -np.sort(-sims, axis=1)[:, k - 1]
        out[f"knn{k}_pool"] = -kth
    fb = frozen.pool(mx)
    fb /= np.linalg.norm(fb, axis=1, keepdims=True)
    fx = frozen.pool(x)
    fx /= np.linalg.norm(fx, axis=1, keepdims=True)
    out["knn1_frozen"] = -(fx @ fb.T).max(1)
    out["maha_pool"] = oas_maha(bank.astype(np.float64), bank_y, fn.astype(np.float64))
    out["rank_cwr+knn1"] = ranks(out["cwr_maxlogit"]) + ranks(out["knn1_pool"])
    out["rank_msp+knn1"] = ranks(out["msp"]) + ranks(out["knn1_pool"])
    out["rank_maha+knn1"] = ranks(out["maha"]) + ranks(out["knn1_pool"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", nargs="+", default=["coil100-clutter"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge_cl")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--resolution", type=int, default=128, help="the extractor's input side")
    args = parser.parse_args()
    manifest = Manifest.load()
    head = head_arrays(manifest.head())
    frozen = PretrainedHead.from_arrays(head)
    ex = open_extractor("latent", "litert", "int8", args.resolution, threads=2, manifest=manifest)
    cache = LatentCache(args.cache / "latents", ex)
    rows: list[dict[str, Any]] = []
    for name in args.scenario:
        for seed in args.seeds:
            scenario = build(name, args.datasets, seed, args.cache / "images" / name)
            stream = load_stream(scenario, cache)
            learner = AR1Star(head, ex.artifact.sha256, depth="latent", seed=seed)
            window: list[np.ndarray] = []
            for x, y in stream.batches[: len(stream.batches) // 2]:
                if learner.classes_:
                    old = np.array([label in set(learner.classes_) for label in y])
                    if old.any():
                        lv = learner.labels.transform(learner.labels.labels)
                        f = learner._features(x[old], train=False) @ learner.cw[:, lv]
                        window.append(-f.max(1))
                learner.partial_fit(x, y)
            pre = np.concatenate(window)[-1024:] if window else np.zeros(1)
            assert learner.memory is not None
            mx, bank_y = learner.memory.all()
            bank = learner._features(mx, train=False)
            bank /= np.linalg.norm(bank, axis=1, keepdims=True)
            seen = set(learner.classes_)
            known = np.array([y in seen for y in stream.test_y])
            if known.all():
                print(f"{name} seed {seed}: every class seen at half the stream, skipped")
                continue
            sc = scores(learner, stream.test_x, bank, bank_y, frozen, mx)
            live = learner.labels.transform(learner.labels.labels)
            cal = {
                "cwr_maxlogit": -(learner._features(mx, train=False) @ learner.cw[:, live]).max(1),
                "knn1_pool": np.sort(-(bank @ bank.T), axis=1)[:, 1],
                "cwr_pre": pre,
                "msp": -softmax(learner.decision_function(mx)).max(1),
            }
            sc["cwr_pre"] = sc["cwr_maxlogit"]
            for key, v in sc.items():
                row = {"scenario": name, "seed": seed, "score": key, **figures(v[known], v[~known])}
                if key in cal:
                    t = np.quantile(cal[key], 0.95)
                    row["cal_known_rejected"] = round(float((v[known] > t).mean()), 4)
                    row["cal_unseen_flagged"] = round(float((v[~known] > t).mean()), 4)
                emit(rows, row)
    write_rows(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
