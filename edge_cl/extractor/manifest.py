"""The model manifest (``models/manifest.json``): which extractor files exist and how to use them.

Every artifact is looked up here, never by file name, and its sha256 is verified before a runtime
touches it, so a tampered, truncated or replaced model file is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edge_cl.errors import ChecksumError, ManifestError
from edge_cl.preprocess import Preprocessing

MANIFEST_VERSION = 1
PACKAGE_MODELS = Path(__file__).resolve().parents[1] / "models"
"""The models a wheel carries, ``edge_cl/models/`` (``setup.py`` copies ``models/`` there)."""
CHECKOUT_MODELS = Path(__file__).resolve().parents[2] / "models"
"""The checkout's ``models/``, their source of truth (running from the tree, editable installs)."""


class ModelsDir(NamedTuple):
    """A models folder and where it was found: ``"EDGE_CL_MODELS"``, ``"package"`` (inside
    the installed edge_cl), ``"checkout"`` or ``"given"`` (passed to :meth:`Manifest.load`)."""

    path: Path
    origin: str


def default_models_dir() -> ModelsDir:
    """The models used when none are given: ``$EDGE_CL_MODELS``, else those packaged in the
    installed edge_cl, else the checkout's ``models/``, the first with a ``manifest.json``.

    A set ``$EDGE_CL_MODELS`` without a manifest is an error, not passed over, so that the
    device never runs other models than the ones it was pointed at. ``ManifestError`` names
    every place looked when none has a manifest.
    """
    env = os.environ.get("EDGE_CL_MODELS")
    if env:
        if not (Path(env) / "manifest.json").is_file():
            raise ManifestError(
                f"EDGE_CL_MODELS={env} has no manifest.json: point it at a models folder, or "
                "unset it to use the models installed with edge_cl"
            )
        return ModelsDir(Path(env), "EDGE_CL_MODELS")
    for path, origin in ((PACKAGE_MODELS, "package"), (CHECKOUT_MODELS, "checkout")):
        if (path / "manifest.json").is_file():
            return ModelsDir(path, origin)
    raise ManifestError(
        f"no models found: EDGE_CL_MODELS is not set, and neither the installed package "
        f"({PACKAGE_MODELS}) nor the checkout ({CHECKOUT_MODELS}) has a manifest.json. "
        "Install edge_cl from its wheel (it carries the models), pass --models DIR or set "
        "EDGE_CL_MODELS to a folder holding manifest.json"
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Artifact:
    """One exported file: an extractor cut in one format and precision, or the numpy head.

    ``output_grid`` is ``(step, zero)`` when every output value is ``(code - zero) * step`` for
    a code in 0..255 (the int8 models' dequantised output); the replay memory can then store
    the codes alone (``AR1Config.replay_grid``).
    """

    name: str
    path: Path
    sha256: str
    format: str
    precision: str
    cut: str
    layout: str = "NHWC"
    input_name: str = "image"
    output_name: str = ""
    resolutions: tuple[int, ...] = ()
    default_resolution: int = 128
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    output_grid: tuple[float, int] | None = None

    def verify(self) -> Path:
        """Return the file's path after checking its sha256; ``ChecksumError`` on mismatch."""
        if not self.path.is_file():
            raise ManifestError(
                f"model file {self.path} is missing: restore it from the repository (or "
                "reinstall edge_cl) or rebuild it with scripts/export_models.py"
            )
        got = sha256_file(self.path)
        if got != self.sha256:
            raise ChecksumError(
                f"{self.path.name}: sha256 {got[:16]}... does not match the manifest's "
                f"{self.sha256[:16]}...; the file was modified or truncated: restore it "
                "(git checkout models/, or reinstall edge_cl) or re-export it"
            )
        return self.path

    def preprocessing_at(self, resolution: int | None) -> Preprocessing:
        """This artifact's preprocessing at ``resolution`` (default: its default resolution)."""
        res = self.default_resolution if resolution is None else resolution
        if self.resolutions and res % 32:
            raise ManifestError(f"resolution {res} is not a multiple of 32 (the model's stride)")
        p = self.preprocessing
        return Preprocessing(res, p.mean, p.std, p.crop_fraction)


def _grid(raw: dict[str, Any]) -> tuple[float, int] | None:
    """``(step, zero)`` of an int8 artifact's output: ``value = (code - zero) * step``, codes
    0..255 (``scripts/export_models.py`` reads it from the model); None when not on one grid."""
    grid = raw.get("output", {}).get("grid")
    if grid is None:
        return None
    if not isinstance(grid, dict):
        raise ManifestError(f"{raw['name']}: output grid must be an object, got {grid!r}")
    step, zero = grid.get("step"), grid.get("zero")
    if not (isinstance(step, float) and math.isfinite(step) and step > 0):
        raise ManifestError(f"{raw['name']}: output grid step must be a positive float, got {step}")
    if isinstance(zero, bool) or not isinstance(zero, int) or not 0 <= zero <= 255:
        raise ManifestError(f"{raw['name']}: output grid zero must be an int in 0..255, got {zero}")
    return step, zero


def _inside(root: Path, name: str, file: object) -> Path:
    """``root / file`` for a plain relative path inside the models folder; ``ManifestError``
    for an absolute one or one that climbs out with ``..`` (a manifest names its own files)."""
    if not isinstance(file, str) or not file:
        raise ManifestError(f"{name}: file must be a path relative to the manifest, got {file!r}")
    rel = Path(file)
    if rel.is_absolute() or ".." in rel.parts:
        raise ManifestError(
            f"{name}: file {file!r} is not inside the models folder {root}: name it relative "
            "to manifest.json, without '..'"
        )
    return root / rel


def _artifact(raw: dict[str, Any], root: Path) -> Artifact:
    prep = raw.get("preprocessing") or {}
    return Artifact(
        name=raw["name"],
        path=_inside(root, raw["name"], raw["file"]),
        sha256=raw["sha256"],
        format=raw["format"],
        precision=raw["precision"],
        cut=raw["cut"],
        layout=raw.get("layout", "NHWC"),
        input_name=raw.get("input", {}).get("name", "image"),
        output_name=raw.get("output", {}).get("name", ""),
        resolutions=tuple(raw.get("resolutions", ())),
        default_resolution=raw.get("default_resolution", 128),
        preprocessing=Preprocessing(
            raw.get("default_resolution", 128),
            float(prep.get("mean", [127.0])[0]),
            float(prep.get("std", [128.0])[0]),
            float(prep.get("crop_fraction", 0.875)),
        ),
        output_grid=_grid(raw),
    )


@dataclass(frozen=True)
class Manifest:
    """The parsed manifest of a models folder.

    >>> m = Manifest.load()
    >>> m.find(cut="latent", format="onnx", precision="fp32").layout
    'NCHW'
    """

    root: Path
    model: str
    source: dict[str, Any]
    artifacts: tuple[Artifact, ...]
    origin: str = "given"
    """Where ``root`` was found (:class:`ModelsDir`); ``source`` is where the weights came from."""

    @classmethod
    def load(cls, root: str | os.PathLike[str] | None = None) -> Manifest:
        """Read ``manifest.json`` from ``root`` (default: :func:`default_models_dir`)."""
        folder, origin = (
            ModelsDir(Path(root), "given") if root is not None else default_models_dir()
        )
        path = folder / "manifest.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ManifestError(
                f"no manifest at {path}: pass --models DIR or set EDGE_CL_MODELS"
            ) from e
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"cannot read {path}: {e}") from e
        if raw.get("format_version") != MANIFEST_VERSION:
            raise ManifestError(
                f"{path} has format_version {raw.get('format_version')!r}; this edge_cl reads "
                f"version {MANIFEST_VERSION}"
            )
        try:
            artifacts = tuple(_artifact(a, folder) for a in raw["artifacts"])
            return cls(folder, raw["model"], raw["source"], artifacts, origin)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ManifestError(f"{path} is malformed ({e!r}): re-export the models") from e

    def find(
        self,
        cut: str = "latent",
        format: str | None = None,
        precision: str | None = None,
    ) -> Artifact:
        """The first artifact matching the filters (``None`` matches anything)."""
        for a in self.artifacts:
            if a.cut == cut and format in (None, a.format) and precision in (None, a.precision):
                return a
        have = ", ".join(a.name for a in self.artifacts)
        raise ManifestError(
            f"no artifact with cut={cut!r} format={format!r} precision={precision!r} in "
            f"{self.root}; available: {have}. Build other variants with "
            "scripts/export_models.py --all"
        )

    def head(self) -> Artifact:
        """The numpy head (layers above the latent cut)."""
        return self.find(cut="head", format="npz")
