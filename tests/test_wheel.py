"""The wheel carries the models of ``models/``, and where an installed edge_cl looks for them.

The build test makes an sdist of a copy of this tree and a wheel from that sdist (what
``python -m build`` does by default), so it checks both MANIFEST.in (the sdist carries
``models/``) and ``setup.py`` (the wheel packages them as ``edge_cl/models/``). CI's last step
installs such a wheel outside the clone and runs ``edge-cl info`` and a demo from it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge_cl.errors import ManifestError
from edge_cl.extractor import manifest as manifest_module
from edge_cl.extractor.manifest import Manifest, ModelsDir, default_models_dir

REPO = Path(__file__).resolve().parent.parent
NOT_BUILT = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_files(root: Path) -> dict[str, str]:
    """sha256 of every file of the packages' folders (Python or not) by its path in a wheel."""
    return {
        path.relative_to(root).as_posix(): sha256(path.read_bytes())
        for package in ("edge_cl", "firmware_bridge")
        for path in sorted((root / package).rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def shipped_models() -> dict[str, str]:
    """sha256 of each file a wheel must carry, by its name inside ``edge_cl/models/``."""
    models = REPO / "models"
    raw = json.loads((models / "manifest.json").read_text())
    names = ["manifest.json", "README.md", *(a["file"] for a in raw["artifacts"])]
    return {name: sha256((models / name).read_bytes()) for name in names}


def test_the_wheel_built_from_the_sdist_carries_the_models(tmp_path: Path) -> None:
    source, dist = tmp_path / "source", tmp_path / "dist"
    shutil.copytree(REPO, source, ignore=NOT_BUILT)
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("edge_cl-*.whl")
    prefix = "edge_cl/models/"
    with zipfile.ZipFile(wheel) as z:
        packaged = {name: sha256(z.read(name)) for name in z.namelist()}
    models = {n.removeprefix(prefix): h for n, h in packaged.items() if n.startswith(prefix)}
    assert models == shipped_models()
    # and every file of the packages' folders, e.g. the web page's static/ (package-data)
    missing = package_files(source).items() - packaged.items()
    assert not missing, f"not in the wheel (add to [tool.setuptools.package-data]): {missing}"


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Three candidate models folders, none holding a manifest yet, patched in as the
    package's and the checkout's; ``EDGE_CL_MODELS`` unset."""
    found = {name: tmp_path / name for name in ("env", "package", "checkout")}
    for path in found.values():
        path.mkdir()
    monkeypatch.setattr(manifest_module, "PACKAGE_MODELS", found["package"])
    monkeypatch.setattr(manifest_module, "CHECKOUT_MODELS", found["checkout"])
    monkeypatch.delenv("EDGE_CL_MODELS", raising=False)
    return found


def with_manifest(path: Path) -> Path:
    (path / "manifest.json").write_text("{}")
    return path


def test_models_are_looked_up_in_env_then_package_then_checkout(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_manifest(places["checkout"])
    assert default_models_dir() == ModelsDir(places["checkout"], "checkout")
    with_manifest(places["package"])
    assert default_models_dir() == ModelsDir(places["package"], "package")
    monkeypatch.setenv("EDGE_CL_MODELS", str(with_manifest(places["env"])))
    assert default_models_dir() == ModelsDir(places["env"], "EDGE_CL_MODELS")


def test_an_edge_cl_models_without_a_manifest_is_refused_not_passed_over(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_manifest(places["package"])
    monkeypatch.setenv("EDGE_CL_MODELS", str(places["env"]))
    with pytest.raises(ManifestError, match=r"EDGE_CL_MODELS=.*env has no manifest\.json"):
        default_models_dir()


def test_no_models_anywhere_names_every_place_looked(places: dict[str, Path]) -> None:
    with pytest.raises(ManifestError) as e:
        default_models_dir()
    message = str(e.value)
    assert "EDGE_CL_MODELS is not set" in message
    assert str(places["package"]) in message and str(places["checkout"]) in message


def test_the_manifest_says_where_it_was_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_CL_MODELS", raising=False)
    assert not manifest_module.PACKAGE_MODELS.exists()  # models/ is never copied into the tree
    assert Manifest.load().origin == "checkout"
    assert Manifest.load(REPO / "models").origin == "given"
