from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path

import pytest

from edge_cl.bench.filelists import (
    Scenario,
    batch_filename,
    load_filelists,
    load_scenario,
    write_filelists,
)
from edge_cl.errors import DatasetError

TRAIN_SESSIONS = ["s1", "s2", "s4", "s5", "s6", "s8", "s9"]
TEST_SESSIONS = ["s3", "s7"]


@pytest.fixture(scope="module")
def core50_root(datasets: Path) -> Path:
    return datasets / "core50-samples" / "core50_128x128"


def official_lines(root: Path, session: str) -> list[str]:
    """Lines in the official CORe50 format: ``sS/oO/C_SS_OO_FFF.png label`` (label = O - 1)."""
    frames = sorted((root / session).glob("o*/C_*.png"))
    assert frames, f"no CORe50 frames in {root / session}"
    return [f"{f.relative_to(root).as_posix()} {int(f.parent.name[1:]) - 1}" for f in frames]


@pytest.fixture
def core50_lists(core50_root: Path, tmp_path: Path) -> Path:
    """An NI-like protocol on the real sample frames: one batch per training session."""
    folder = tmp_path / "NI_inc" / "run0"
    folder.mkdir(parents=True)
    for i, session in enumerate(TRAIN_SESSIONS):
        (folder / f"train_batch_{i:02d}_filelist.txt").write_text(
            "\n".join(official_lines(core50_root, session)) + "\n"
        )
    test = [line for s in TEST_SESSIONS for line in official_lines(core50_root, s)]
    (folder / "test_filelist.txt").write_text("\n".join(test) + "\n")
    return folder


def test_loads_official_format_on_real_core50_frames(core50_root: Path, core50_lists: Path) -> None:
    s = load_filelists(core50_root, core50_lists)
    assert s.name == "run0" and len(s.train_batches) == len(TRAIN_SESSIONS)
    paths, labels = s.train_batches[0]
    assert all(p.startswith("s1/o") for p in paths) and len(paths) == 10
    assert all(isinstance(lab, int) and 0 <= lab < 50 for lab in labels)
    assert paths[0] == "s1/o12/C_01_12_007.png" and labels[0] == 11
    assert all(f.is_file() for f in s.train_files(3) + s.test_files())
    d = s.describe()
    assert d["batches"] == 7 and d["train_images"] == 70 and d["test_images"] == 20
    assert d["images_per_batch_min"] == d["images_per_batch_max"] == 10
    assert d["first_batch_classes"] == 10
    assert d["classes"] == len({lab for _, labs in s.train_batches for lab in labs})


def test_write_then_load_round_trips(core50_root: Path, core50_lists: Path, tmp_path: Path) -> None:
    s = load_filelists(core50_root, core50_lists, name="ni")
    out = write_filelists(s, tmp_path / "copy")
    assert (out / "train_batch_06_filelist.txt").read_text().splitlines()[0].endswith(" 13")
    again = load_scenario(out)
    assert again.train_batches == s.train_batches and again.test == s.test
    assert again.name == "ni" and again.root == core50_root.resolve()


def test_batches_sort_numerically_not_lexically(core50_root: Path, tmp_path: Path) -> None:
    lines = official_lines(core50_root, "s1")
    for i in range(12):
        (tmp_path / f"train_batch_{i}_filelist.txt").write_text(lines[i % 10] + "\n")
    (tmp_path / "test_filelist.txt").write_text(lines[0] + "\n")
    s = load_filelists(core50_root, tmp_path)
    assert [b[0][0] for b in s.train_batches] == [line.split()[0] for line in lines + lines][:12]


def test_string_labels_stay_strings(core50_root: Path, tmp_path: Path) -> None:
    (tmp_path / "train_batch_00_filelist.txt").write_text(
        "s1/o3/C_01_03_004.png plug_adapter\ns1/o12/C_01_12_007.png -3\n"
    )
    (tmp_path / "test_filelist.txt").write_text(
        "s2/o3/C_02_03_013.png 7\ns2/o3/C_02_03_013.png 007\ns2/o3/C_02_03_013.png +7\n"
    )
    s = load_filelists(core50_root, tmp_path)
    assert s.train_batches[0][1] == ["plug_adapter", -3]
    assert s.test[1] == [7, "007", "+7"]  # three ways of writing a token, three classes


def test_rewriting_a_shorter_scenario_removes_stale_batches(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").touch()
    long = Scenario("x", tmp_path / "img", [(["a.png"], [0])] * 5, (["a.png"], [0]))
    write_filelists(long, tmp_path / "lists")
    write_filelists(Scenario("x", long.root, long.train_batches[:2], long.test), tmp_path / "lists")
    assert len(load_scenario(tmp_path / "lists").train_batches) == 2
    meta = json.loads((tmp_path / "lists" / "scenario.json").read_text())
    assert meta["root"] == "../img" or Path(meta["root"]).is_absolute()


def test_batch_file_names_widen_past_99() -> None:
    assert batch_filename(99, 100) == "train_batch_99_filelist.txt"
    assert batch_filename(0, 101) == "train_batch_000_filelist.txt"
    assert batch_filename(100, 101) == "train_batch_100_filelist.txt"


def write(folder: Path, batches: dict[str, str], test: str | None = "s1/o3/C_01_03_004.png 2\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in batches.items():
        (folder / name).write_text(text)
    if test is not None:
        (folder / "test_filelist.txt").write_text(test)
    return folder


GOOD = "s1/o3/C_01_03_004.png 2\n"


@pytest.mark.parametrize(
    ("batches", "test", "message"),
    [
        ({}, GOOD, "no train_batch_XX_filelist.txt"),
        ({"train_batch_00_filelist.txt": GOOD}, None, "has no test_filelist.txt"),
        (
            {"train_batch_00_filelist.txt": GOOD + "s1/o3/C_01_03_004.png\n"},
            GOOD,
            "train_batch_00_filelist.txt:2: expected 'relative/path/to/image label'",
        ),
        (
            {"train_batch_00_filelist.txt": GOOD + "\n  \nbad line with spaces 3\n"},
            GOOD,
            "train_batch_00_filelist.txt:4:",
        ),
        ({"train_batch_00_filelist.txt": "\n"}, GOOD, "lists no images"),
        (
            {"train_batch_00_filelist.txt": GOOD, "train_batch_02_filelist.txt": GOOD},
            GOOD,
            "train batches [1] are missing",
        ),
        (
            {"train_batch_01_filelist.txt": GOOD, "train_batch_1_filelist.txt": GOOD},
            GOOD,
            "two filelists for train batch 1",
        ),
        ({"train_batch_00_filelist.txt": "/etc/passwd 0\n"}, GOOD, "is not inside the image root"),
        (
            {"train_batch_00_filelist.txt": GOOD + "s1/../../../etc/passwd 0\n"},
            GOOD,
            "train_batch_00_filelist.txt:2: image path 's1/../../../etc/passwd' is not inside",
        ),
        (
            {"train_batch_00_filelist.txt": GOOD + "s1/o3/C_01_03_004.png " + "9" * 5000 + "\n"},
            GOOD,
            "train_batch_00_filelist.txt:2: a label must have 1 to 64 characters, got 5000",
        ),
        (
            {"train_batch_00_filelist.txt": GOOD, f"train_batch_{10**12}_filelist.txt": GOOD},
            GOOD,
            "train batches [1] are missing",
        ),
        (
            {"train_batch_00_filelist.txt": GOOD + "s1/o3/C_01_03_999.png 2\n"},
            GOOD,
            "1 of 3 images listed do not exist under the image root",
        ),
        (
            {"train_batch_00_filelist.txt": GOOD},
            "s99/o3/x.png 2\ns1/o4/y.png 3\n",
            "2 of 3 images listed do not exist",
        ),
    ],
)
def test_malformed_folders_raise_clear_errors(
    core50_root: Path,
    tmp_path: Path,
    batches: dict[str, str],
    test: str | None,
    message: str,
) -> None:
    folder = write(tmp_path / "lists", batches, test)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_filelists(core50_root, folder)


def test_missing_file_error_names_file_and_line(core50_root: Path, tmp_path: Path) -> None:
    folder = write(tmp_path, {"train_batch_00_filelist.txt": GOOD + GOOD + "s1/o3/nope.png 2\n"})
    with pytest.raises(DatasetError, match=r"'s1/o3/nope.png' \(first at .*_00_filelist.txt:3\)"):
        load_filelists(core50_root, folder)
    assert load_filelists(core50_root, folder, check_files=False).describe()["train_images"] == 3


def test_missing_folders_raise(core50_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"filelist folder .* does not exist"):
        load_filelists(core50_root, tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"image root .* does not exist"):
        load_filelists(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DatasetError, match=r"scenario\.json is missing"):
        load_scenario(tmp_path)


def test_scenario_rejects_inconsistent_or_unwritable_batches(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train batch 0 has 2 paths but 1 labels"):
        Scenario("x", tmp_path, [(["a", "b"], [0])], ([], []))
    s = Scenario("x", tmp_path, [(["a b.png"], [0])], (["c.png"], [0]))
    with pytest.raises(DatasetError, match="holds whitespace"):
        write_filelists(s, tmp_path / "out")
    with pytest.raises(DatasetError, match="no train batches"):
        write_filelists(Scenario("x", tmp_path, [], (["c.png"], [0])), tmp_path / "out")


def test_a_fifo_named_like_a_filelist_is_refused_not_waited_on(
    core50_root: Path, tmp_path: Path
) -> None:
    folder = write(tmp_path / "lists", {"train_batch_00_filelist.txt": GOOD})
    fifo = folder / "train_batch_01_filelist.txt"
    os.mkfifo(fifo)

    def feed() -> None:  # blocks until a reader opens the FIFO: reading it would succeed
        with contextlib.suppress(BrokenPipeError):  # should load_filelists read and close it first
            fifo.write_text(GOOD)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with pytest.raises(DatasetError, match=r"train_batch_01_filelist\.txt is not a regular file"):
        load_filelists(core50_root, folder)
    # A reader held open until the writer is done lets it finish whether its open() came before
    # this one or comes after (a reader that opened and closed first would leave it blocked).
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer.join()
    os.close(reader)
