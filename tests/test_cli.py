from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_cl.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_info_lists_models_and_runtimes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "lite0_latent_fp32_onnx" in out and "sha256 ok" in out
    assert "CPUExecutionProvider" in out and "ai_edge_litert" in out


def test_info_flags_a_tampered_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    shutil.copytree(REPO / "models", models)
    with (models / "lite0_head.npz").open("ab") as f:
        f.write(b"x")
    assert main(["--models", str(models), "info"]) == 1
    assert "BAD" in capsys.readouterr().out


def test_classify_names_the_right_class(datasets: Path) -> None:
    image = next((datasets / "imagenet-samples" / "images").glob("*_tench.JPEG"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_cl.cli",
            "classify",
            str(image),
            "--runtime",
            "litert",
            "--precision",
            "int8",
            "--datasets",
            str(datasets),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.splitlines()[1].split()[-1] == "tench"


def test_errors_are_reported_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--models", str(tmp_path), "info"]) == 2
    assert "no manifest" in capsys.readouterr().err


def test_bench_without_matplotlib_stops_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--plots without the study extra is refused at once, not after the first ordering."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a venv without it imports
    argv = ["bench", "--scenario", "cifar10-nc", "--cache", str(tmp_path / "cache")]
    assert main([*argv, "--plots", str(tmp_path / "plots")]) == 2
    assert "plots need matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing was extracted


def test_device_path_never_imports_torch_or_tensorflow() -> None:
    code = (
        "import sys, edge_cl.cli, edge_cl.extractor.onnx, edge_cl.extractor.litert, "
        "edge_cl.extractor.verify, "
        "firmware_bridge; edge_cl.cli.main(['info']); "
        "bad = [m for m in ('torch', 'tensorflow') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
