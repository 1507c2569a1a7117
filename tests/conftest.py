"""Shared fixtures: the shipped models and the real image data in ../shared/datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_cl.extractor.manifest import Manifest

REPO = Path(__file__).resolve().parent.parent


def datasets_dir() -> Path:
    """``$EDGE_CL_DATASETS`` or ``../shared/datasets`` beside the checkout."""
    return Path(os.environ.get("EDGE_CL_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The real image data. Missing data is a failure, never a skip: CI must see it."""
    path = datasets_dir()
    if not (path / "imagenet-samples").is_dir():
        pytest.fail(f"real image data not found at {path}: set EDGE_CL_DATASETS", pytrace=False)
    return path


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return Manifest.load(REPO / "models")
