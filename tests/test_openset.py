"""The open-set report: its detector figures on hand-made scores, and ``edge-cl bench-openset``
end to end on a small stream of real COIL-100 photographs."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_cl.bench import openset
from edge_cl.bench.filelists import Scenario, write_filelists
from edge_cl.cli import main
from edge_cl.errors import ConfigError, DatasetError

OBJECTS = range(2, 10)
"""COIL-100's obj2 to obj9: the first four are taught in the first half of the stream."""


def test_auroc_on_hand_made_scores() -> None:
    assert openset.auroc(np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert openset.auroc(np.array([3.0, 4.0]), np.array([0.0, 1.0, 2.0])) == 0.0
    assert openset.auroc(np.full(5, 7.0), np.full(3, 7.0)) == 0.5
    # unseen 2 beats known 1, ties known 2, loses to known 3; unseen 4 beats all: 4.5 of 6 pairs
    assert openset.auroc(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0])) == 0.75
    assert openset.auroc(np.array([[1.0], [3.0]]), np.array([2.0])) == 0.5  # any shape, raveled


def test_auroc_is_the_area_under_the_roc_curve_and_depends_on_ranks_only() -> None:
    rng = np.random.default_rng(0)
    known = rng.integers(0, 20, 300).astype(float)  # many ties
    unseen = rng.integers(5, 25, 200).astype(float)
    fpr, tpr = openset.roc_curve(known, unseen)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert openset.auroc(known, unseen) == pytest.approx(area, abs=1e-12)
    pairs = (unseen[None, :] > known[:, None]) + 0.5 * (unseen[None, :] == known[:, None])
    assert openset.auroc(known, unseen) == pytest.approx(pairs.mean(), abs=1e-12)
    assert openset.auroc(np.exp(known), np.exp(unseen)) == openset.auroc(known, unseen)


def test_tpr_at_5_percent_fpr_and_fpr_at_95_percent_tpr() -> None:
    known = np.arange(100.0)  # 95% quantile 94.05: 5 of them (95..99) above it
    assert openset.fpr_threshold(known) == pytest.approx(94.05)
    assert openset.tpr_at_fpr(known, np.array([94.0, 94.1, 99.0, 500.0])) == 0.75
    assert openset.tpr_at_fpr(known, np.array([200.0])) == 1.0
    assert openset.tpr_at_fpr(known, known.copy()) == 0.05  # the same scores: 5% flagged
    unseen = np.arange(100.0, 200.0)  # 5% quantile 104.95: above every known score
    assert openset.fpr_at_tpr(known, unseen) == 0.0
    assert openset.fpr_at_tpr(known, unseen - 50.0) == pytest.approx(0.45)  # known >= 54.95
    assert openset.fpr_at_tpr(np.array([1.0, 2.0, 3.0, 4.0]), np.full(8, 3.0)) == 0.5  # >= 3
    with pytest.raises(DatasetError, match="0 unseen"):
        openset.tpr_at_fpr(known, np.array([]))


def test_learned_batches_and_bad_fractions() -> None:
    assert openset.learned_batches(32, 0.5) == 16
    assert openset.learned_batches(10, 0.7) == 7
    assert openset.learned_batches(3, 1.0) == 3
    for at in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="--at"):
            openset.learned_batches(10, at)


def coil_stream(datasets: Path, out: Path) -> Path:
    """COIL-100's obj2..obj9 as CORe50-format filelists in ``out``; returns the image root.

    Views whose angle index is 2 modulo 4 are the test set (as the coil100 scenarios); each
    object's other views are cut into 4 arcs in angle order, one batch each. The first 16
    batches bring the arcs of the first four objects in turn (they come back, so the learner
    scores views of taught classes before learning them), the last 16 the other four's.
    """
    root = datasets / "coil100" / "images"
    arcs: dict[int, list[list[str]]] = {}
    test: tuple[list[str], list[int]] = ([], [])
    for obj in OBJECTS:
        views = sorted(root.glob(f"obj{obj}__*.png"), key=lambda p: int(p.stem.split("__")[1]))
        train = []
        for i, view in enumerate(views):
            if i % 4 == 2:
                test[0].append(view.name)
                test[1].append(obj)
            else:
                train.append(view.name)
        arcs[obj] = [list(a) for a in np.array_split(np.array(train), 4)]
    objects = list(OBJECTS)
    batches = [
        (arcs[obj][arc], [obj] * len(arcs[obj][arc]))
        for group in (objects[:4], objects[4:])
        for arc in range(4)
        for obj in group
    ]
    write_filelists(Scenario("coil8", root, batches, test), out)
    return root


@pytest.fixture(scope="module")
def report(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``edge-cl bench-openset`` on the COIL stream, one ordering: the paths and the output."""
    tmp = tmp_path_factory.mktemp("openset")
    root = coil_stream(datasets, tmp / "lists")
    out = tmp / "out"
    base = [
        "bench-openset", "--root", str(root), "--filelists", str(tmp / "lists"),
        "--runs", "1", "--cache", str(tmp / "cache"),
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            [*base, "--json", str(out / "openset.json"), "--markdown", str(out / "openset.md"),
             "--plots", str(out / "plots")]
        )  # fmt: skip
    return {"code": code, "out": out, "printed": printed.getvalue(), "base": base, "tmp": tmp}


def test_bench_openset_writes_consistent_json_markdown_and_plots(report: dict[str, Any]) -> None:
    assert report["code"] == 0
    result = json.loads((report["out"] / "openset.json").read_text())
    assert result["settings"] == {"strategy": "ar1-latent", "runs": 1, "at": 0.5, "accept": 0.95}
    assert result["scenarios"]["coil8"]["batches"] == 32
    assert len(result["scenarios"]["coil8"]["filelists_sha256"]) == 64
    assert result["environment"]["cores"] >= 1 and result["command"].startswith("edge-cl ")
    assert result["skipped"] == []
    (o,) = result["orderings"]
    assert (o["scenario"], o["batches_learned"], o["known_classes"], o["unseen_classes"]) == (
        "coil8",
        16,
        4,
        4,
    )
    known, unseen = np.array(o["scores"]["known"]), np.array(o["scores"]["unseen"])
    assert (len(known), len(unseen)) == (o["known_views"], o["unseen_views"])
    assert o["known_views"] + o["unseen_views"] == result["scenarios"]["coil8"]["test_images"]
    assert o["auroc"] == openset.auroc(known, unseen)
    assert o["tpr_at_fpr5"] == openset.tpr_at_fpr(known, unseen)
    assert o["fpr_at_tpr95"] == openset.fpr_at_tpr(known, unseen)
    assert o["auroc"] > 0.6  # higher novelty means unseen: objects never taught stand out
    for key in openset.FIGURES:
        if key != "device_threshold":
            assert 0.0 <= o[key] <= 1.0, key
    assert isinstance(o["device_threshold"], float)  # 12 returning batches scored views
    assert o["device_calibrated_on"] == "teaching"
    assert result["means"]["coil8"] == {k: o[k] for k in openset.FIGURES}

    markdown = (report["out"] / "openset.md").read_text()
    assert "| ordering | known / unseen classes | AUROC |" in markdown
    assert f"| {o['ordering']} | 4 / 4 | {o['auroc']:.3f} |" in markdown
    assert "| mean | |" in markdown
    assert all(definition in markdown for definition in openset.FIGURES.values())
    assert "![plots/coil8_roc.png](plots/coil8_roc.png)" in markdown
    assert f"| {o['ordering']} | 4 / 4 | {o['auroc']:.3f} |" in report["printed"]
    png = report["out"] / "plots" / "coil8_roc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_ordering_with_every_class_seen_is_skipped_with_a_line(
    report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    out = report["tmp"] / "all.json"
    # The latents come from the cache the first run filled.
    assert main([*report["base"], "--at", "1", "--json", str(out)]) == 0
    assert "coil8 lists: 32 of 32 batches learned; skipped" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["orderings"] == [] and result["means"] == {}
    assert result["skipped"] == [{"scenario": "coil8", "ordering": "lists", "seed": 0}]


def test_help_lists_every_option_with_its_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge_cl.cli", "bench-openset", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flat = " ".join(out.split())
    for option in ("--scenario", "--runs", "--at", "--accept", "--cache", "--json", "--markdown",
                   "--plots", "--datasets", "--runtime", "--precision", "--threads"):  # fmt: skip
        assert option in flat
    for default in ("['coil100-sessions', 'tinyimagenet-nc', 'cifar10-nc']", "(default: 0.5)",
                    "(default: 0.95)", "(default: litert)", "(default: int8)"):  # fmt: skip
        assert default in flat


def test_a_misspelt_scenario_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_cl.cli", "bench-openset", "--scenario", "cifar10-nc",
         "cifar10-cn", "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "unknown scenarios ['cifar10-cn']" in done.stderr
    assert "choose from" in done.stderr and "Traceback" not in done.stderr
