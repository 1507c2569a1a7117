"""``edge-cl bench-perf`` on tiny settings: the report's structure and arithmetic, not its speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edge_cl.cli import main
from edge_cl.device.classifier import resume_learner
from edge_cl.device.config import load_config
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.registry import learner_name
from edge_cl.perf.loop import seed_checkpoint
from edge_cl.perf.settings import PerfError, PerfSettings
from edge_cl.perf.targets import Target, targets

TINY = [
    "bench-perf",
    "--quick",
    "--only",
    "learner,extractor",
    "--threads",
    "1,2",
    "--runtimes",
    "onnx",
    "--precisions",
    "fp32,int8",
    "--batches",
    "1,2",
    "--resolutions",
    "128",
    "--news",
    "8",
    "--replay",
    "40",
    "--peak-size",
    "128",
    "--repeats",
    "1",
]
STATUSES = {"met", "missed", "not measured", "n/a (emulated)"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("perf")
    json_path, md_path = out / "perf.json", out / "perf.md"
    assert main([*TINY, "--json", str(json_path), "--markdown", str(md_path)]) == 0
    return json.loads(json_path.read_text()), md_path.read_text()


def test_machine_section_has_a_peak_per_thread_count(report: tuple[dict[str, Any], str]) -> None:
    machine = report[0]["machine"]
    assert [p["threads"] for p in machine["peaks"]] == [1, 2]
    assert all(p["gflops"] > 0 for p in machine["peaks"])
    assert machine["cores"] >= 1 and machine["cpu_model"]
    assert "loop" not in report[0]


def test_extractor_rows_cover_the_grid_and_agree(report: tuple[dict[str, Any], str]) -> None:
    result = report[0]
    ex = result["extractor"]
    grid = {(r["precision"], r["threads"], r["batch"]) for r in ex["rows"]}
    assert grid == {(p, t, b) for p in ("fp32", "int8") for t in (1, 2) for b in (1, 2)}
    peaks = {p["threads"]: p["gflops"] for p in result["machine"]["peaks"]}
    for row in ex["rows"]:
        assert row["resolution"] == 128 and row["fps"] > 0
        assert row["ms_per_frame"] * row["fps"] == pytest.approx(1000)
        assert row["ms_per_batch"] == pytest.approx(row["ms_per_frame"] * row["batch"])
        if row["gflop_per_frame"] is not None:  # the onnx package is an optional extra
            assert row["gflops"] == pytest.approx(row["fps"] * row["gflop_per_frame"])
        if row["precision"] == "fp32" and row["gflops"] is not None:
            assert row["of_peak"] == pytest.approx(row["gflops"] / peaks[row["threads"]])
        else:
            assert row["of_peak"] is None
    assert [p["resolution"] for p in ex["preprocessing"]] == [128]
    assert ex["preprocessing"][0]["camera"] == "640x480" and ex["preprocessing"][0]["ms"] > 0


def test_learner_ratios_are_gflops_over_the_same_run_peak(
    report: tuple[dict[str, Any], str],
) -> None:
    result = report[0]
    peaks = {p["threads"]: p["gflops"] for p in result["machine"]["peaks"]}
    updates = result["learner"]["updates"]
    assert {(u["depth"], u["threads"], u["replay_per_epoch"]) for u in updates} == {
        (d, t, r) for d in ("latent", "pool") for t in (1, 2) for r in (None, 512)
    }
    for u in updates:
        assert u["new"] == 8 and u["memory"] == 40 and u["epochs"] == 4
        assert u["replayed"] == 40  # all of it, or min(512, 40)
        assert u["seconds"] > 0 and u["gflop"] > 0
        assert u["gflops"] == pytest.approx(u["gflop"] / u["seconds"])
        assert u["peak_gflops"] == peaks[u["threads"]]
        assert u["ratio_to_peak"] == pytest.approx(u["gflops"] / u["peak_gflops"])
        assert len(u["blas_threads"]) >= 1
    assert {(i["depth"], i["batch"]) for i in result["learner"]["inference"]} == {
        (d, b) for d in ("latent", "pool") for b in (1, 32)
    }
    for i in result["learner"]["inference"]:
        assert i["ms_per_frame"] > 0 and i["unknown_ms_per_frame"] > 0
        assert i["unknown_share"] == pytest.approx(i["unknown_ms_per_frame"] / i["ms_per_frame"])
    for c in result["learner"]["checkpoints"]:
        assert c["bytes"] > 0 and c["save_s"] > 0 and c["load_s"] > 0 and c["memory"] == 40


def test_every_target_is_printed_with_a_verdict(report: tuple[dict[str, Any], str]) -> None:
    result, markdown = report
    texts = [t["text"] for t in result["targets"]]
    assert "steady inference, 128 px int8, both cores" in texts
    assert "single-threaded inference, 128 px fp32" in texts
    assert any(t.startswith("teach update (8 new + all 40 replayed") for t in texts)
    assert sum(t.startswith("learner update") for t in texts) == 2  # one per thread count
    assert "device loop peak RSS" in texts and "device loop start-up to first prediction" in texts
    assert "unknown score per frame, of head inference" in texts
    for t in result["targets"]:
        assert t["status"] in STATUSES
        assert f"- {t['line']}" in markdown
        if t["text"].startswith("device loop"):
            assert t["status"] == "not measured"
        else:
            assert t["status"] in ("met", "missed", "n/a (emulated)")
    assert "## Targets" in markdown and "## Extractor" in markdown and "## Learner" in markdown


def test_targets_compare_against_the_limits() -> None:
    result = {
        "extractor": {
            "rows": [
                {
                    "resolution": 128,
                    "precision": "int8",
                    "threads": 2,
                    "fps": f,
                    "runtime": "x",
                    "batch": b,
                }
                for f, b in ((150.0, 1), (210.0, 8))
            ]
        },
        "loop": {
            "peak_rss_mb": 250.0,
            "startup_s": 1.5,
            "teach": {"used": 30, "replayed": 256, "latency_s": 0.4},
        },
    }
    by_text = {t.text: t for t in targets(result)}
    best = by_text["steady inference, 128 px int8, both cores"]
    assert (best.value, best.where, best.status(False)) == (210.0, "x, batch 8", "met")
    assert by_text["device loop peak RSS"].status(False) == "missed"
    assert by_text["device loop start-up to first prediction"].status(False) == "met"
    assert by_text["device loop teach latency (30 frames + 256 replayed)"].status(False) == "met"
    assert by_text["single-threaded inference, 128 px fp32"].status(False) == "not measured"
    assert Target("r", "", ">=", 0.5, 0.6, relative=True).status(True) == "met"


def test_bad_options_are_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-perf", "--only", "gpu"]) == 2
    assert "unknown section" in capsys.readouterr().err
    with pytest.raises(PerfError, match="must be >= 1"):
        PerfSettings(repeats=0)


@pytest.mark.parametrize(("learner", "fill"), [("slda", 0), ("ar1", 40)])
def test_the_loop_checkpoint_is_seeded_for_the_configured_learner(
    learner: str, fill: int, tmp_path: Path, manifest: Manifest
) -> None:
    overrides = {"state_dir": str(tmp_path), "learner": learner, "cut": "pool", "runtime": "onnx"}
    config = load_config(
        None, {**overrides, "learner.epochs": "3"} if learner == "ar1" else overrides
    )
    assert seed_checkpoint(config, 40) == fill
    sha = manifest.find("pool", "onnx", "int8").sha256
    resumed, what = resume_learner(config, sha, manifest)
    assert learner_name(resumed) == learner and what.startswith("resumed")
    assert len(resumed.classes_) == 10
    if learner == "ar1":  # seeded in one epoch, resumed with the configured ones
        assert resumed.config.epochs == 3  # type: ignore[attr-defined]
        assert resumed.config.replay_per_epoch == 512  # type: ignore[attr-defined]
