"""The acceptance bars of the foundation issue, measured on 1,000 real photographs."""

from __future__ import annotations

from pathlib import Path

from edge_cl.extractor.manifest import Manifest
from edge_cl.extractor.verify import verify_models


def test_every_shipped_variant_meets_the_imagenet_bars(datasets: Path, manifest: Manifest) -> None:
    result = verify_models(manifest, datasets / "imagenet-samples" / "images", threads=2)
    failed = [c for c in result["checks"] if not c["passed"]]
    assert not failed, failed
    # one fp32 top-1 bar per (runtime, resolution), int8 bars for every int8 file, parity at both
    assert len(result["checks"]) == 4 + 2 * 4 + 2
    assert result["num_images"] == 1000
