"""The lifecycle study on real CORe50 frames in the official filelist format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_cl.bench.study import evaluation_points, markdown_table, summarise
from edge_cl.cli import main


def core50_filelists(datasets: Path, out: Path) -> Path:
    """Sessions 1-6 as six training batches, sessions 7-9 as the test set; label = category."""
    root = datasets / "core50-samples" / "core50_128x128"
    out.mkdir()
    for s in range(1, 10):
        lines = [
            f"s{s}/{p.parent.name}/{p.name} {(int(p.parent.name[1:]) - 1) // 5}"
            for p in sorted((root / f"s{s}").glob("o*/*.png"))
        ]
        name = "test_filelist.txt" if s >= 7 else f"train_batch_{s - 1:02d}_filelist.txt"
        with (out / name).open("a") as f:
            f.write("\n".join(lines) + "\n")
    return root


def test_bench_runs_strategies_on_official_filelists(
    datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = core50_filelists(datasets, tmp_path / "lists")
    out = tmp_path / "result.json"
    code = main(
        [
            "bench", "--root", str(root), "--filelists", str(tmp_path / "lists"),
            "--strategies", "ar1-pool,ar1-latent,ncm,slda,cumulative-pool",
            "--runs", "1", "--epochs", "1", "--eval-points", "3",
            "--cache", str(tmp_path / "cache"), "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| cumulative-pool | 1 |" in printed
    result = json.loads(out.read_text())
    runs = {r["strategy"]: r for r in result["runs"]}
    assert set(runs) == {"ar1-pool", "ar1-latent", "ncm", "slda", "cumulative-pool"}
    for r in runs.values():
        assert len(r["seconds"]) == len(r["memory_bytes"]) == 6
        assert set(r["accuracy"]) == {"0", "2", "5"}  # evaluation points, JSON keys
        assert 0.0 <= r["final_accuracy"] <= 1.0
    cumulative = runs["cumulative-pool"]
    assert np.all(np.diff(cumulative["flops"]) > 0)  # retraining on more data costs more
    assert np.all(np.diff(cumulative["memory_bytes"]) > 0)
    assert all(f > 0 for f in runs["ar1-latent"]["flops"])
    assert len(list((tmp_path / "cache" / "latents").iterdir())) == 1


def test_bench_refuses_filelists_without_a_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--filelists", str(tmp_path)]) == 2
    assert "--root" in capsys.readouterr().err


def test_evaluation_points_and_summary() -> None:
    assert evaluation_points(10, 3) == {0, 4, 9} or evaluation_points(10, 3) == {0, 5, 9}
    assert evaluation_points(1, 5) == {0}
    runs = [
        {"strategy": "a", "final_accuracy": f, "flops": [1e9, 2e9], "seconds": [0.1, 0.3],
         "memory_bytes": [0, 2**20]}
        for f in (0.5, 0.7)
    ]  # fmt: skip
    s = summarise(runs)["a"]
    assert s["final_accuracy_mean"] == pytest.approx(0.6)
    assert s["final_accuracy_std"] == pytest.approx(0.1)
    assert s["total_gflop_mean"] == pytest.approx(3.0)
    assert "| a | 2 | 60.0 +- 10.0 | +0.0 | 3 |" in markdown_table({"a": s}, "a")
