"""Check that every shipped extractor carries its ImageNet weights and that runtimes agree.

Bars (from the foundation issue): fp32 top-1 >= 0.85 at 224 px and >= 0.62 at 128 px on both
runtimes; int8 within 3 points of fp32; ONNX and TFLite fp32 latents within 1e-4 of each other
(max abs difference relative to the output's max magnitude) on the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.extractor import open_extractor
from edge_cl.extractor.imagenet import PretrainedHead, imagenet_files, topk_hits
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image

FP32_TOP1_BAR = {128: 0.62, 224: 0.85}
INT8_DROP_BAR = 0.03
PARITY_BAR = 1e-4
RUNTIME_OF = {"onnx": "onnx", "tflite": "litert"}


def _runtime_parity(manifest: Manifest, files: list[Path], resolution: int) -> float:
    onnx = open_extractor("latent", "onnx", "fp32", resolution, manifest=manifest)
    lite = open_extractor("latent", "litert", "fp32", resolution, manifest=manifest)
    batch = onnx.preprocessing.batch([read_image(f) for f in files])
    a, b = onnx(batch), lite(batch)
    return float(np.abs(a - b).max() / np.abs(a).max())


def verify_models(
    manifest: Manifest,
    images: Path,
    resolutions: tuple[int, ...] = (128, 224),
    threads: int = 1,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Score every extractor artifact (composed with the numpy head) and check the bars.

    Returns a JSON-ready dict with one row per (artifact, resolution), the ONNX/TFLite parity
    figures, and ``passed`` (every bar met). Rows also report top-1 on the 750 images that were
    not in the int8 calibration set (every 4th ImageNet sample was).
    """
    head = PretrainedHead.load(manifest.head())
    files, labels, _ = imagenet_files(images)
    held_out = np.arange(len(files)) % 4 != 0
    rows: list[dict[str, Any]] = []
    for art in manifest.artifacts:
        if art.format not in RUNTIME_OF:
            continue
        for res in resolutions:
            ex = open_extractor(
                art.cut, RUNTIME_OF[art.format], art.precision, res, threads, manifest=manifest
            )
            hit1, hit5 = topk_hits(ex, head, files, labels)
            top1, top5 = float(hit1.mean()), float(hit5.mean())
            row: dict[str, Any] = {
                "artifact": art.name,
                "cut": art.cut,
                "format": art.format,
                "precision": art.precision,
                "resolution": res,
                "top1": top1,
                "top5": top5,
                "top1_not_in_calibration": float(hit1[held_out].mean()),
            }
            rows.append(row)
            progress(f"{art.name:24s} {res:4d}px  top-1 {top1:.3f}  top-5 {top5:.3f}")

    checks: list[dict[str, Any]] = []
    fp32 = {
        (r["cut"], r["format"], r["resolution"]): r["top1"]
        for r in rows
        if r["precision"] == "fp32"
    }
    for r in rows:
        key = (r["cut"], r["format"], r["resolution"])
        if r["precision"] == "fp32" and r["resolution"] in FP32_TOP1_BAR:
            bar = FP32_TOP1_BAR[r["resolution"]]
            checks.append(
                _check(
                    f"{r['artifact']} {key[2]}px fp32 top-1 >= {bar}", r["top1"], r["top1"] >= bar
                )
            )
        elif r["precision"] == "int8":
            ref = fp32.get(key, fp32.get(("latent", r["format"], r["resolution"])))
            if ref is not None:
                drop = ref - r["top1"]
                checks.append(
                    _check(
                        f"{r['artifact']} {key[2]}px int8 drop <= {INT8_DROP_BAR}",
                        drop,
                        drop <= INT8_DROP_BAR,
                    )
                )
    parity = {}
    for res in resolutions:
        diff = _runtime_parity(manifest, files[:32], res)
        parity[res] = diff
        checks.append(
            _check(f"ONNX vs TFLite fp32 latent {res}px <= {PARITY_BAR}", diff, diff <= PARITY_BAR)
        )
    return {
        "images": str(images),
        "num_images": len(files),
        "rows": rows,
        "parity_rel_max_abs_diff": parity,
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
    }


def _check(name: str, value: float, passed: bool) -> dict[str, Any]:
    return {"check": name, "value": value, "passed": bool(passed)}
