"""``edge-cl bench --jobs N`` and ``--dask ADDRESS``: the study's runs side by side, in worker
processes or on a Dask cluster, give the serial study's figures (all but the wall times)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import distributed
import pytest
from test_bench_cli import nicv2_tree

from edge_cl.bench import parallel
from edge_cl.bench.filelists import Scenario, load_filelist_runs
from edge_cl.bench.latents import LatentCache
from edge_cl.bench.study import bench
from edge_cl.cli import main
from edge_cl.errors import ConfigError, DatasetError, MissingExtraError
from edge_cl.extractor import open_extractor
from edge_cl.extractor.imagenet import head_arrays
from edge_cl.extractor.manifest import Manifest

STRATEGIES = ["ar1-latent", "cumulative-latent", "slda", "slda-latent", "ncm"]
"""One of each view: latents, pooled features, latent summaries; and cumulative retraining."""

SETTINGS = {"runs": 2, "eval_points": 3, "replay_mb": 0.5, "epochs": 1}


Inputs = tuple[Path, Path, list[Scenario], LatentCache, dict[str, Any]]


@pytest.fixture(scope="module")
def inputs(datasets: Path, manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """The CORe50 samples as two orderings of six one-session batches (``NIC_v2_6``), their
    latents cached under ``cache/latents`` (as ``--cache cache`` keeps them) and the head."""
    out = tmp_path_factory.mktemp("jobs")
    root = nicv2_tree(datasets, out / "lists")
    orderings = load_filelist_runs(root, out / "lists" / "NIC_v2_6")
    ex = open_extractor("latent", "onnx", "fp32", manifest=manifest)
    cache = LatentCache(out / "cache" / "latents", ex)
    return root, out, orderings, cache, head_arrays(manifest.head())


def study(inputs: Inputs, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The study of :data:`STRATEGIES` on ``inputs``, and the results so far as on_ordering
    saw them after each ordering (kept as handed over, then as JSON, as edge-cl bench writes
    them)."""
    _, _, orderings, cache, head = inputs
    partials: list[dict[str, Any]] = []
    result = bench(
        [lambda run: orderings[run]],
        STRATEGIES,
        cache,
        head,
        progress_stream=io.StringIO(),
        on_ordering=partials.append,
        **SETTINGS,
        **options,
    )
    as_json = [json.loads(json.dumps(p, default=str)) for p in [result, *partials]]
    return as_json[0], as_json[1:]


def figures(result: dict[str, Any]) -> str:
    """A result as JSON without what depends on the clock or says how it was run: the wall
    times, the machine, ``settings["jobs"]`` and ``["dask"]``, and the labels the command line
    adds (command, extractor)."""

    def untimed(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: untimed(v) for k, v in x.items() if "seconds" not in k}
        return [untimed(v) for v in x] if isinstance(x, list) else x

    kept = {k: v for k, v in result.items() if k not in {"environment", "command", "extractor"}}
    kept["settings"] = {k: v for k, v in result["settings"].items() if k not in {"jobs", "dask"}}
    return json.dumps(untimed(kept), sort_keys=True)


def test_two_jobs_give_the_serial_figures_ordering_by_ordering(inputs: Inputs) -> None:
    serial, serial_partials = study(inputs, threads=1)
    both, partials = study(inputs, jobs=2, threads=2)  # 1 BLAS thread a run, as the serial
    assert both["settings"]["jobs"] == 2 and serial["settings"]["jobs"] == 1
    assert both["settings"]["blas_threads"] == serial["settings"]["blas_threads"] == 1
    assert [(r["seed"], r["strategy"]) for r in both["runs"]] == [
        (seed, name) for seed in (0, 1) for name in STRATEGIES
    ]
    assert figures(both) == figures(serial)
    assert len(both["runs"][0]["seconds"]) == 6  # wall times are there, only not compared
    # on_ordering after each ordering, with that ordering's runs in: a study saved as it goes
    orderings = [p["scenarios"]["NIC_v2_6"]["orderings"] for p in partials]
    assert orderings == [["run0"], ["run0", "run1"]]
    assert [len(p["runs"]) for p in partials] == [5, 10]
    assert [figures(p) for p in partials] == [figures(p) for p in serial_partials]


def test_a_dask_cluster_gives_the_serial_figures(
    inputs: Inputs, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the command line, on a local cluster of two worker processes."""
    root, out, _, _, _ = inputs
    serial, _ = study(inputs, threads=1)  # a cluster's runs have 1 BLAS thread each
    args = [
        "bench", "--root", str(root), "--filelists", str(out / "lists" / "NIC_v2_6"),
        "--strategies", ",".join(STRATEGIES), "--runtime", "onnx", "--precision", "fp32",
        "--eval-points", "3", "--replay-mb", "0.5", "--epochs", "1", "--cache", str(out / "cache"),
        "--json", str(out / "dask.json"),
    ]  # fmt: skip
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        assert main([*args, "--dask", cluster.scheduler_address]) == 0
    result = json.loads((out / "dask.json").read_text())
    assert result["settings"]["dask"] == cluster.scheduler_address
    assert result["settings"]["jobs"] == 2  # the cluster's worker threads
    assert figures(result) == figures(serial)
    said = capsys.readouterr().out
    assert f"runs at once: 2 on the Dask cluster at {cluster.scheduler_address}" in said


@pytest.mark.parametrize("jobs", ["0", "-2"])
def test_a_bad_number_of_jobs_is_a_one_line_error(
    jobs: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--jobs", jobs, "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--jobs) must be an int >= 1, got {jobs}" in err and "1 runs the study serially" in err
    assert not (tmp_path / "latents").exists() or not list((tmp_path / "latents").rglob("*.npy"))


def test_a_failing_ordering_fails_the_study_after_the_orderings_before_it(inputs: Inputs) -> None:
    """An error loading an ordering (here the second) in the thread that loads them is raised
    by the study, once the orderings before it are in and saved."""
    orderings = inputs[2]

    def build(run: int) -> Scenario:
        if run == 1:
            raise DatasetError("run1 is broken")
        return orderings[run]

    partials: list[dict[str, Any]] = []
    _, _, _, cache, head = inputs
    with pytest.raises(DatasetError, match="run1 is broken"):
        bench(
            [build], STRATEGIES, cache, head, progress_stream=io.StringIO(),
            on_ordering=lambda partial: partials.append({"runs": len(partial["runs"])}),
            jobs=2, **SETTINGS,
        )  # fmt: skip
    assert partials == [{"runs": len(STRATEGIES)}]


def test_dask_needs_the_cluster_extra_and_a_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    def connect(address: str, timeout: float = 30.0) -> None:
        with parallel.workers(2, address, timeout=timeout):
            pass

    with pytest.raises(ConfigError, match=r"--dask tcp://127\.0\.0\.1:9: no Dask scheduler"):
        connect("tcp://127.0.0.1:9", timeout=1)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'edge_cl\[cluster\]'"):
        connect("tcp://127.0.0.1:8786")
