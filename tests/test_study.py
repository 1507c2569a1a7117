"""The lifecycle study on real CORe50 frames in the official filelist format."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness.core50 import SAMPLES, session_lines

from edge_cl.bench.plots import plot_study
from edge_cl.bench.report import (
    PREDICTIONS_PER_BATCH,
    markdown_report,
    markdown_table,
    quick_check,
    suite_table,
    summarise,
)
from edge_cl.bench.study import (
    Progress,
    Stream,
    bench,
    evaluation_points,
    feature_flops,
    latent_summaries,
    pooled,
    run,
    strategies,
)
from edge_cl.cli import main
from edge_cl.errors import ConfigError, FrameError, NotFittedError
from edge_cl.extractor.imagenet import PretrainedHead, head_arrays
from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.ar1 import AR1Star, summary_flops
from edge_cl.learner.cumulative import Cumulative
from edge_cl.learner.labels import Label
from edge_cl.learner.network import latent_layers_flops
from edge_cl.learner.sklearn_heads import KNNHead, SGDHead


def core50_filelists(datasets: Path, out: Path) -> Path:
    """Sessions 1-6 as six training batches, sessions 7-9 as the test set; label = category."""
    root = datasets / SAMPLES
    out.mkdir()
    for s in range(1, 10):
        lines = session_lines(root, f"s{s}", "category")
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
            "--strategies", "ar1-pool,ar1-latent,ncm,slda,sgd,knn,cumulative-pool",
            "--runs", "1", "--epochs", "1", "--eval-points", "3",
            "--cache", str(tmp_path / "cache"), "--json", str(out),
            "--markdown", str(tmp_path / "study.md"), "--plots", str(tmp_path / "plots"),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| cumulative-pool | 1 |" in printed
    result = json.loads(out.read_text())
    runs = {r["strategy"]: r for r in result["runs"]}
    assert set(runs) == {"ar1-pool", "ar1-latent", "ncm", "slda", "sgd", "knn", "cumulative-pool"}
    report = (tmp_path / "study.md").read_text()
    assert "![plots/lists_accuracy.png](plots/lists_accuracy.png)" in report
    assert (tmp_path / "plots" / "lists_cost.png").is_file()
    assert result["scenarios"]["lists"]["batches"] == 6
    assert len(result["scenarios"]["lists"]["filelists_sha256"]) == 64
    assert result["environment"]["cores"] >= 1
    summary = result["summary"]["lists"]
    assert summary["slda"]["gap_mean"] == pytest.approx(
        runs["slda"]["final_accuracy"] - runs["cumulative-pool"]["final_accuracy"]
    )
    assert "gap_mean" not in summary["ar1-latent"]  # no cumulative-latent ran
    held = runs["ar1-pool"]["memory_bytes"][-1] / runs["cumulative-pool"]["memory_bytes"][-1]
    assert held > 1  # six small batches fit in far less than the preallocated 8 MB replay
    assert summary["ar1-pool"]["memory_saving_last"] == pytest.approx(1 - held)
    for r in runs.values():
        assert len(r["seconds"]) == len(r["memory_bytes"]) == 6
        assert set(r["accuracy"]) == {"0", "2", "5"}  # evaluation points, JSON keys
        assert 0.0 <= r["final_accuracy"] <= 1.0
    cumulative = runs["cumulative-pool"]
    assert np.all(np.diff(cumulative["flops"]) > 0)  # retraining on more data costs more
    assert np.all(np.diff(cumulative["memory_bytes"]) > 0)
    assert all(f > 0 for f in runs["ar1-latent"]["flops"])
    assert result["settings"]["predictions_per_batch"] == PREDICTIONS_PER_BATCH == 300
    for r in runs.values():  # every prediction starts from the latent: pooling counted
        assert len(r["predict_flops"]) == 6 and min(r["predict_flops"]) > r["feature_flops"]
        assert r["feature_flops"] == (0 if r["features"] == "latent" else latent_layers_flops(16))
    assert np.all(np.diff(runs["knn"]["predict_flops"]) > 0)  # it scores every stored frame
    assert summary["knn"]["update_compute_saving_life"] == 1.0  # it stores, it does not compute
    assert summary["knn"]["compute_saving_life"] < 1.0  # ... but its predictions do
    assert "FLOPs per prediction" in report and "300 predictions" in report
    assert "classes not seen yet included" in report
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
        {"strategy": "a", "features": "pool", "seed": seed, "final_accuracy": f,
         "accuracy": {0: 0.2, 1: f}, "accuracy_seen": {0: 0.4, 1: f}, "flops": [1e9, 2e9],
         "predict_flops": [1e6, 2e6], "seconds": [0.1, 0.3], "memory_bytes": [2**20, 2**20],
         "images_seen": [10, 20]}
        for seed, f in enumerate((0.5, 0.7))
    ] + [
        {"strategy": "cumulative-pool", "features": "pool", "seed": seed, "final_accuracy": 0.8,
         "accuracy": {0: 0.3, 1: 0.8}, "accuracy_seen": {0: 0.6, 1: 0.8}, "flops": [1e9, 9e9],
         "predict_flops": [3e6, 3e6], "seconds": [0.1, 0.3],
         "memory_bytes": [2**20, 3 * 2**20], "images_seen": [10, 20]}
        for seed in range(2)
    ]  # fmt: skip
    summary = summarise(runs, image_bytes=2**20, predictions_per_batch=1000)
    s = summary["a"]
    assert s["final_accuracy_mean"] == pytest.approx(0.6)
    assert s["final_accuracy_std"] == pytest.approx(0.1)
    assert s["average_accuracy_mean"] == pytest.approx(0.4)
    assert s["average_accuracy_seen_mean"] == pytest.approx(0.5)  # (0.4 + 0.6) / 2
    assert s["update_gflop_per_batch_mean"] == pytest.approx(1.5)
    assert s["update_gflop_total_mean"] == pytest.approx(3.0)
    assert s["predict_mflop_last_mean"] == pytest.approx(2.0)
    assert s["life_gflop_mean"] == pytest.approx(3.0 + 1000 * 3e6 / 1e9)  # 1,000 a batch
    assert s["gap_mean"] == pytest.approx(-0.2)
    assert s["gap_std"] == pytest.approx(0.1)
    assert s["compute_saving_life"] == pytest.approx(1 - 6 / 16)  # (1+1 + 2+2) / (4 + 12)
    assert s["compute_saving_last"] == pytest.approx(1 - 4 / 12)
    assert s["update_compute_saving_life"] == pytest.approx(1 - 3 / 10)  # updates alone
    assert s["update_compute_saving_last"] == pytest.approx(1 - 2 / 9)
    assert s["memory_saving_life"] == pytest.approx(1 - 2 / 4)
    assert s["memory_saving_last"] == pytest.approx(1 - 1 / 3)
    assert s["raw_images_mb"] == pytest.approx(20)
    assert summary["cumulative-pool"]["gap_mean"] == 0.0
    updates_only = summarise(runs, image_bytes=2**20, predictions_per_batch=0)["a"]
    assert updates_only["compute_saving_life"] == s["update_compute_saving_life"]
    table = markdown_table(summary)
    assert "life-cycle FLOPs (1000 predictions per batch)" in table
    assert (
        "| a | 2 | 60.0 (10.0) | -20.0 (10.0) |  | 40.0 / 50.0 | 1.5G | 2M | 6G | 62.5 / 66.7 "
        "| 50.0 / 66.7 | 0.200 | 1.0 |" in table
    )


def test_quick_check_gates_the_default_on_cumulative_and_streaming_lda() -> None:
    def summary(ar1: float, cumulative: float, lda: float) -> dict[str, Any]:
        return {
            "ar1-latent": {"final_accuracy_mean": ar1, "gap_mean": ar1 - cumulative},
            "cumulative-latent": {"final_accuracy_mean": cumulative, "gap_mean": 0.0},
            "slda": {"final_accuracy_mean": lda},
        }

    assert quick_check({"summary": {"s": summary(0.80, 0.82, 0.805)}}) == []
    failures = quick_check({"summary": {"s": summary(0.80, 0.84, 0.82)}})
    assert failures == [
        "s: ar1-latent ends 4.0 points behind cumulative (allowed 3)",
        "s: ar1-latent ends 2.0 points behind slda (allowed 1)",
    ]
    missing = {"s": {"ar1-latent": {"final_accuracy_mean": 0.8}}}
    assert quick_check({"summary": missing}) == [
        "s: no ar1-latent run with a cumulative run to compare with"
    ]


def test_plots_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = [
        {"scenario": "toy", "strategy": name, "seed": seed, "accuracy": {"0": 0.1, "4": acc},
         "flops": [scale * (i + 1) for i in range(5)],
         "predict_flops": [1e6 * (i + 1) for i in range(5)],
         "memory_bytes": [2**20] * 5}
        for name, acc, scale in (("ar1-pool", 0.6, 1e9), ("cumulative-pool", 0.7, 1e10),
                                 ("knn", 0.5, 0.0))  # kNN's updates cost 0: off the log axis
        for seed in range(2)
    ]  # fmt: skip
    result = {"summary": {"toy": {}}, "runs": runs, "settings": {"predictions_per_batch": 300}}
    from matplotlib.figure import Figure

    legends: list[list[list[str]]] = []
    save = Figure.savefig

    def recording(fig: Figure, *args: Any, **kwargs: Any) -> None:
        legends.append([
            [t.get_text() for t in legend.get_texts()]
            for ax in fig.axes if (legend := ax.get_legend()) is not None
        ])  # fmt: skip
        save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    written = plot_study(result, tmp_path / "plots")
    # the cost figure: kNN's zero updates are left off the log axis and said so in its legend;
    # its life-cycle compute (300 predictions a batch) is drawn; the memory legend names all
    assert legends[1] == [["knn: 0, not drawn"], ["ar1-pool", "cumulative-pool", "knn"]]
    assert [p.name for p in written] == ["toy_accuracy.png", "toy_cost.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 10_000


def test_progress_bar_on_a_terminal_and_lines_elsewhere() -> None:
    plain = io.StringIO()
    bar = Progress(4, plain)
    bar.step()
    bar.line("run done")
    assert plain.getvalue() == "run done\n"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = Progress(4, tty, width=8)
    bar.label = "toy"
    bar.step()
    bar.step()
    assert "[####....]  50.0%" in tty.getvalue() and "toy" in tty.getvalue()


def test_sklearn_baselines_learn_new_classes_over_time() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)).astype(np.float32) * 4
    x = np.concatenate([c + rng.normal(size=(30, 16)).astype(np.float32) for c in centres])
    y = ["a"] * 30 + ["b"] * 30 + [7] * 30
    for head in (SGDHead(seed=0), KNNHead()):
        head.partial_fit(x[:30], y[:30])
        assert head.predict(x[60:62]) == ["a", "a"]  # only class known so far
        head.partial_fit(x[30:60], y[30:60]).partial_fit(x[60:], y[60:])
        assert head.classes_ == ["a", "b", 7]
        hits = np.mean([p == t for p, t in zip(head.predict(x), y, strict=True)])
        assert hits > 0.95
        assert head.nbytes > 0
    with pytest.raises(NotFittedError):
        KNNHead().predict(x)
    with pytest.raises(FrameError):
        SGDHead().partial_fit(x[0], ["a"])


def test_tune_diagnose_measures_batch_renorm_staleness_without_changing_the_learner() -> None:
    spec = importlib.util.spec_from_file_location(
        "tune_learner", Path(__file__).parents[1] / "experiments/tune_learner.py"
    )
    assert spec is not None and spec.loader is not None
    tune_learner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune_learner)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 1, 1, 320)).astype(np.float32)

    def batch(classes: list[int], n: int) -> tuple[np.ndarray, list[Label]]:
        x = np.concatenate([centres[c] + 0.5 * rng.normal(size=(n, 2, 2, 320)) for c in classes])
        return x.astype(np.float32), [f"c{c}" for c in classes for _ in range(n)]

    stream = Stream([batch([0, 1], 20), batch([2], 20), batch([0], 10)], *batch([0, 1, 2], 10))
    learner = AR1Star(depth="latent", epochs=2, minibatch=16, replay_mb=1)
    for x, y in stream.batches:
        learner.partial_fit(x, y)
    before = tune_learner.diagnose(learner, stream)
    assert before["memory head"] >= 90 and before["lda, all"] >= 90
    norm = learner.latent[1]
    norm.buffers["running_std"] *= 2.0
    stale = {k: v.copy() for k, v in norm.buffers.items()}
    after = tune_learner.diagnose(learner, stream)
    assert after["std ratio"] == pytest.approx(2 * before["std ratio"], abs=2e-3)
    assert after["cw, fresh stats"] == before["cw, fresh stats"]  # the population's, both times
    for k, v in norm.buffers.items():
        np.testing.assert_array_equal(v, stale[k])  # the learner's own statistics are restored


def test_suite_table_has_one_row_per_scenario_for_the_default() -> None:
    row = {
        "final_accuracy_mean": 0.8,
        "final_accuracy_sem": 0.01,
        "gap_mean": -0.02,
        "gap_sem": 0.005,
        "lda_gap_mean": 0.03,
        "lda_gap_sem": 0.004,
        "compute_saving_life": 0.97,
        "predict_mflop_last_mean": 14.2,
        "update_seconds_mean": 0.05,
        "final_memory_mb_mean": 11.0,
    }
    result = {
        "summary": {
            "a": {"ar1-latent": row, "cumulative-latent": {"final_accuracy_mean": 0.82}},
            "b": {"slda": {"final_accuracy_mean": 0.7}},
        }
    }
    table = suite_table(result).splitlines()
    assert len(table) == 3  # header, rule, scenario "a" ("b" has no ar1-latent run)
    expected = (
        "| a | 80.0 (1.0) | 82.0 | -2.0 (0.5) |  | +3.0 (0.4) | 97.0 | 14.2M | 0.050 | 11.0 |"
    )
    assert table[2] == expected
    assert suite_table({"summary": {"b": result["summary"]["b"]}}) == ""


def test_report_embeds_each_scenarios_own_plots_only() -> None:
    """A scenario whose name is the start of another's (clutter, clutter-nc) shows its plots
    alone, not its sibling's too."""
    runs = [
        {"strategy": "ncm", "features": "pool", "seed": 0, "final_accuracy": 0.8,
         "accuracy": {0: 0.8}, "accuracy_seen": {0: 0.8}, "flops": [0], "predict_flops": [9],
         "seconds": [0.1], "memory_bytes": [2**20], "images_seen": [10]}
    ]  # fmt: skip
    result = {
        "environment": {"cpu": "x", "cores": 2, "platform": "p", "python": "3", "versions": {}},
        "settings": {"runs": 1},
        "scenarios": {},
        "summary": {name: summarise(runs, image_bytes=1) for name in ("clutter", "clutter-nc")},
    }
    plots = [f"{s}_{kind}.png" for s in ("clutter", "clutter-nc") for kind in ("accuracy", "cost")]
    report = markdown_report(result, plots)
    embedded = {}
    for section in report.split("\n## ")[1:]:
        heading, body = section.split("\n", 1)
        embedded[heading] = re.findall(r"!\[[^]]*\]\(([^)]+)\)", body)
    assert embedded == {
        "clutter": ["clutter_accuracy.png", "clutter_cost.png"],
        "clutter-nc": ["clutter-nc_accuracy.png", "clutter-nc_cost.png"],
    }


@pytest.fixture(scope="module")
def small_stream(manifest: Manifest) -> tuple[dict[str, Stream], dict[str, np.ndarray]]:
    """A small stream whose classes arrive over five batches (and one returns), its views as
    pooled features and latent summaries, and the real pretrained head."""
    head = head_arrays(manifest.head())
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 2, size=(4, 1, 1, 320)).astype(np.float32)

    def batch(classes: list[int], n: int) -> tuple[np.ndarray, list[Label]]:
        x = np.concatenate([centres[c] + rng.normal(0, 1.0, size=(n, 4, 4, 320)) for c in classes])
        return np.clip(x, 0, 6).astype(np.float32), [f"c{c}" for c in classes for _ in range(n)]

    stream = Stream([batch(c, 8) for c in ([0, 1], [2], [0], [3], [1, 2])], *batch([0, 1, 2, 3], 6))
    views = {
        "latent": stream,
        "pool": pooled(stream, PretrainedHead.from_arrays(head)),
        "latent-summary": latent_summaries(stream),
    }
    return views, head


STRATEGIES = ("ar1-latent", "slda", "slda-latent", "ncm", "knn", "cumulative-latent")


def test_memory_and_the_final_accuracy_do_not_move_with_the_evaluation_points(
    small_stream: tuple[dict[str, Stream], dict[str, np.ndarray]],
) -> None:
    """Two, then five evaluation points on the same stream: every strategy holds the same
    bytes after every batch (no scoring cache counted) and ends at the same accuracy
    (cumulative's retrains draw from the data so far alone); and the per-frame prediction cost
    does not depend on them either."""
    views, head = small_stream
    table = strategies(replay_mb=0.5, epochs=1)
    for name in STRATEGIES:
        s = table[name]
        cost = feature_flops(s.features, (4, 4, 320))
        few, many = (
            run(s, views[s.features], head, 0, evaluation_points(5, n), feature_cost=cost)
            for n in (2, 5)
        )
        assert (len(few["accuracy"]), len(many["accuracy"])) == (2, 5)
        assert few["memory_bytes"] == many["memory_bytes"], name
        assert few["final_accuracy"] == many["final_accuracy"], name
        assert few["predict_flops"] == many["predict_flops"], name
        assert few["flops"] == many["flops"], name


def test_cumulatives_final_predictions_do_not_depend_on_where_it_retrained(
    small_stream: tuple[dict[str, Stream], dict[str, np.ndarray]],
) -> None:
    views, head = small_stream
    stream = views["latent"]
    predicted = []
    for points in (evaluation_points(5, 2), evaluation_points(5, 5)):
        learner = strategies(epochs=1)["cumulative-latent"].make(head, 0)
        assert isinstance(learner, Cumulative)
        for i, (x, y) in enumerate(stream.batches):
            learner.add(x, y)
            if i in points or i == 4:
                learner.retrain()
        predicted.append(learner.predict_proba(stream.test_x))
    np.testing.assert_array_equal(predicted[0], predicted[1])


def test_accuracy_on_the_seen_classes_and_the_prediction_costs_per_batch(
    small_stream: tuple[dict[str, Stream], dict[str, np.ndarray]],
) -> None:
    """At the first point two of the four test classes are known: accuracy on the whole test
    set is capped at half, on the seen classes it is not. Prediction costs follow the state:
    kNN's with what it stores, the others' with the classes known."""
    views, head = small_stream
    table = strategies(replay_mb=0.5, epochs=1)
    points = evaluation_points(5, 5)
    ncm = run(table["ncm"], views["pool"], head, 0, points, feature_cost=latent_layers_flops(16))
    assert ncm["accuracy"][0] <= 0.5 < ncm["accuracy_seen"][0]
    assert ncm["accuracy_seen"][0] == pytest.approx(2 * ncm["accuracy"][0])  # half the images
    assert ncm["accuracy_seen"][4] == ncm["accuracy"][4]  # every class seen by the end
    d, pool = 1280, latent_layers_flops(16)
    classes = [2, 3, 3, 4, 4]
    assert ncm["predict_flops"] == [pool + 4 * d * k + 3 * d + 5 * k for k in classes]
    knn = run(table["knn"], views["pool"], head, 0, points, feature_cost=pool)
    stored = np.cumsum([16, 8, 8, 8, 16])
    assert knn["predict_flops"] == [int(pool + 5 * d * n + 3 * d + 2 * n) for n in stored]
    assert knn["flops"] == [0] * 5
    lda = run(table["slda-latent"], views["latent-summary"], head, 0, points,
              feature_cost=summary_flops(16))  # fmt: skip
    assert lda["predict_flops"] == [summary_flops(16) + 2 * 640 * k + k for k in classes]


def test_bench_refuses_a_negative_number_of_predictions(manifest: Manifest) -> None:
    with pytest.raises(ConfigError, match="predictions-per-batch"):
        bench([], [], None, {}, 1, 2, 1.0, 1, predictions_per_batch=-1)  # type: ignore[arg-type]
