"""Packages the top-level ``models/`` folder into the built edge_cl as ``edge_cl/models/``.

``models/`` stays the one copy in git; every wheel (from the tree, a git URL, or the sdist, which
carries ``models/`` through MANIFEST.in) gets its ``manifest.json``, ``README.md`` and each file
the manifest names, checked against its sha256, so an installed ``edge-cl`` finds its models
with no checkout (``edge_cl.extractor.manifest.default_models_dir``). Editable installs skip
the copy: they read the checkout's ``models/``. The metadata is all in pyproject.toml.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

MODELS = Path(__file__).resolve().parent / "models"


def model_files() -> list[tuple[Path, str]]:
    """``(source, name inside edge_cl/models/)`` of the manifest, the README and each artifact;
    ``FileError`` for a listed file that is missing or does not match its sha256."""
    manifest = MODELS / "manifest.json"
    if not manifest.is_file():
        raise FileError(
            f"no {manifest}: build from the repository, or from an sdist that carries models/ "
            "(MANIFEST.in: graft models)"
        )
    files = [(manifest, "manifest.json"), (MODELS / "README.md", "README.md")]
    for artifact in json.loads(manifest.read_text())["artifacts"]:
        path = MODELS / artifact["file"]
        if not path.is_file():
            raise FileError(f"{path}, named in {manifest}, is missing: git checkout models/")
        if hashlib.sha256(path.read_bytes()).hexdigest() != artifact["sha256"]:
            raise FileError(
                f"{path} does not match its sha256 in {manifest}: restore it (git checkout "
                "models/) or re-export the models (scripts/export_models.py)"
            )
        files.append((path, artifact["file"]))
    return files


class BuildPyWithModels(build_py):
    """``build_py`` that also copies the models into the build as ``edge_cl/models/``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib, "edge_cl", "models")
        for source, name in model_files():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(source), str(target / name))


setup(cmdclass={"build_py": BuildPyWithModels})
