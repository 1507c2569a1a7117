"""``edge-cl bench`` as a CORe50 user meets it: the help, bad names, a protocol of several runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from harness.core50 import SAMPLES, session_lines

from edge_cl.bench import study
from edge_cl.bench.scenarios import available
from edge_cl.cli import main


def test_help_lists_every_strategy_and_every_default() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edge_cl.cli", "bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    strategies = out[out.index("strategies:\n") :].splitlines()[1:]
    table = study.strategies()
    assert [line.split()[0] for line in strategies] == list(table)
    assert all(len(line.split()) > 2 for line in strategies)  # a description on each
    assert all(s.help for s in table.values())
    for default in ("ar1-latent,cumulative-latent,slda", "(default: 5)", "(default: 300)"):
        assert default in " ".join(out.split()).replace("slda- latent", "slda-latent")
    assert all(name in " ".join(out.split()).replace("- ", "-") for name in available())


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [("--strategies", "ar1-latent,ar1-latnet", "unknown strategies ['ar1-latnet']"),
     ("--scenario", "coil100-sesions", "unknown scenarios ['coil100-sesions']")],
)  # fmt: skip
def test_a_misspelt_name_is_a_one_line_error(
    flag: str, value: str, says: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edge_cl.cli", "bench", flag, value, "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and says in done.stderr and "choose from" in done.stderr
    assert "Traceback" not in done.stderr


def nicv2_tree(datasets: Path, out: Path) -> Path:
    """``out/NIC_v2_6/run0`` and ``run1``: the same six one-session batches of the CORe50
    samples in two different orders, sessions 7-9 as the test set; returns the image root."""
    root = datasets / SAMPLES
    sessions = {s: session_lines(root, f"s{s}", "category") for s in range(1, 10)}
    for run, order in (("run0", [1, 2, 3, 4, 5, 6]), ("run1", [6, 5, 4, 3, 2, 1])):
        folder = out / "NIC_v2_6" / run
        folder.mkdir(parents=True)
        for i, s in enumerate(order):
            (folder / f"train_batch_{i:02d}_filelist.txt").write_text("\n".join(sessions[s]) + "\n")
        test = [line for s in (7, 8, 9) for line in sessions[s]]
        (folder / "test_filelist.txt").write_text("\n".join(test) + "\n")
    return root


def test_a_protocol_folder_runs_each_of_its_orderings(
    datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = nicv2_tree(datasets, tmp_path / "lists")
    out = tmp_path / "result.json"
    code = main(
        [
            "bench", "--root", str(root), "--filelists", str(tmp_path / "lists" / "NIC_v2_6"),
            "--strategies", "ncm,slda", "--eval-points", "2",
            "--cache", str(tmp_path / "cache"), "--json", str(out),
            "--markdown", str(tmp_path / "study.md"),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["scenarios"]["NIC_v2_6"]["orderings"] == ["run0", "run1"]
    assert result["settings"]["runs"] == 2  # every run the folder holds, by default
    ncm = {r["seed"]: r for r in result["runs"] if r["strategy"] == "ncm"}
    first = min(ncm[0]["accuracy"], key=int)  # after batch 0: session 1 in run0, 6 in run1
    assert ncm[0]["accuracy"][first] != ncm[1]["accuracy"][first]
    assert "Orderings: run0, run1." in (tmp_path / "study.md").read_text()
    more = ["bench", "--root", str(root), "--filelists", str(tmp_path / "lists" / "NIC_v2_6")]
    assert main([*more, "--runs", "3", "--cache", str(tmp_path / "cache")]) == 2
    cache = tmp_path / "cache" / "latents"
    assert f"MB at {cache}" in capsys.readouterr().out  # the study says where its cache is
    assert list(cache.rglob("*.npy"))
    assert main(["bench", "--clear-cache", "--cache", str(tmp_path / "cache")]) == 0
    assert "MB freed" in capsys.readouterr().out and not list(cache.rglob("*.npy"))
