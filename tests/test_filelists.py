from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path

import pytest
from harness.core50 import SAMPLES, session_lines

from edge_cl.bench.filelists import (
    TEST_FILE,
    Scenario,
    batch_filename,
    filelist_runs,
    load_filelist_runs,
    load_filelists,
    load_scenario,
    write_filelists,
)
from edge_cl.errors import DatasetError

TRAIN_SESSIONS = ["s1", "s2", "s4", "s5", "s6", "s8", "s9"]
TEST_SESSIONS = ["s3", "s7"]


@pytest.fixture(scope="module")
def core50_root(datasets: Path) -> Path:
    return datasets / SAMPLES


@pytest.fixture
def core50_lists(core50_root: Path, tmp_path: Path) -> Path:
    """An NI-like protocol on the real sample frames: one batch per training session."""
    folder = tmp_path / "NI_inc" / "run0"
    folder.mkdir(parents=True)
    for i, session in enumerate(TRAIN_SESSIONS):
        (folder / f"train_batch_{i:02d}_filelist.txt").write_text(
            "\n".join(session_lines(core50_root, session)) + "\n"
        )
    test = [line for s in TEST_SESSIONS for line in session_lines(core50_root, s)]
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
    lines = session_lines(core50_root, "s1")
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


RUN_ORDERS = {"run0": TRAIN_SESSIONS, "run1": ["s5", "s9", "s1", "s6", "s2", "s8", "s4"]}


def session_batch(root: Path, session: str) -> tuple[list[str], list[int]]:
    """The batch of one session's frames as the loader should return it."""
    lines = [line.split() for line in session_lines(root, session)]
    return [p for p, _ in lines], [int(lab) for _, lab in lines]


@pytest.fixture
def nicv2(core50_root: Path, tmp_path: Path) -> Path:
    """CORe50's NICv2 layout on the real sample frames: run0/ and run1/ hold the same batches
    (one per training session) in different orders, and each its copy of the same test list."""
    protocol = tmp_path / "NIC_v2_391"
    test = "\n".join(line for s in TEST_SESSIONS for line in session_lines(core50_root, s))
    for run, sessions in RUN_ORDERS.items():
        batches = {
            batch_filename(i, len(sessions)): "\n".join(session_lines(core50_root, s)) + "\n"
            for i, s in enumerate(sessions)
        }
        write(protocol / run, batches, test + "\n")
    return protocol


def test_run_folders_load_as_orderings_in_order(core50_root: Path, nicv2: Path) -> None:
    assert filelist_runs(nicv2) == [("run0", nicv2 / "run0"), ("run1", nicv2 / "run1")]
    first, second = load_filelist_runs(core50_root, nicv2, 2)
    assert (first.name, second.name) == ("NIC_v2_391", "NIC_v2_391")  # one scenario, 2 orderings
    assert (first.meta, second.meta) == ({"run": "run0"}, {"run": "run1"})
    for scenario in (first, second):
        sessions = RUN_ORDERS[scenario.meta["run"]]
        assert scenario.train_batches == [session_batch(core50_root, s) for s in sessions]
        assert all(f.is_file() for i in range(7) for f in scenario.train_files(i))
    assert first.train_batches != second.train_batches
    assert sorted(first.train_batches) == sorted(second.train_batches)
    assert first.test == second.test and len(first.test[0]) == 20
    [only] = load_filelist_runs(core50_root, nicv2, 1, name="nic")
    assert only.name == "nic" and only.meta == {"run": "run0"}
    assert only.train_batches == first.train_batches


def test_each_run_is_read_from_its_own_files(core50_root: Path, nicv2: Path) -> None:
    (nicv2 / "run1" / TEST_FILE).write_text("\n".join(session_lines(core50_root, "s7")) + "\n")
    first, second = load_filelist_runs(core50_root, nicv2, 2)
    assert first.test[0][0].startswith("s3/") and len(first.test[0]) == 20
    assert all(p.startswith("s7/") for p in second.test[0]) and len(second.test[0]) == 10
    with (nicv2 / "run1" / "train_batch_03_filelist.txt").open("a") as f:
        f.write("s6/o3/C_06_03_999.png 2\n")
    with pytest.raises(DatasetError, match=r"first at .*run1/train_batch_03_filelist\.txt:11"):
        load_filelist_runs(core50_root, nicv2, 2)  # every run asked for is checked up front
    assert load_filelist_runs(core50_root, nicv2, 1)[0].meta["run"] == "run0"


def test_runs_sort_numerically_not_lexically(core50_root: Path, tmp_path: Path) -> None:
    frames = [line for s in TRAIN_SESSIONS for line in session_lines(core50_root, s)]
    for i in range(12):
        write(tmp_path / f"run{i}", {"train_batch_00_filelist.txt": frames[i] + "\n"})
    names = [f"run{i}" for i in range(12)]
    assert filelist_runs(tmp_path) == [(n, tmp_path / n) for n in names]
    loaded = load_filelist_runs(core50_root, tmp_path, 12)
    assert [s.meta["run"] for s in loaded] == names
    assert [s.train_batches[0][0][0] for s in loaded] == [f.split()[0] for f in frames[:12]]


def test_a_single_folder_is_one_ordering(core50_root: Path, core50_lists: Path) -> None:
    assert filelist_runs(core50_lists) == [("run0", core50_lists)]
    [s] = load_filelist_runs(core50_root, core50_lists, 1)
    plain = load_filelists(core50_root, core50_lists)
    assert (s.name, s.meta) == (plain.name, {"run": "run0"}) == ("run0", {"run": "run0"})
    assert s.train_batches == plain.train_batches and s.test == plain.test
    protocol = core50_lists.parent  # NI_inc/ holding run0/ alone
    assert filelist_runs(protocol) == [("run0", core50_lists)]
    [again] = load_filelist_runs(core50_root, protocol, 1)
    assert again.name == "NI_inc" and again.train_batches == plain.train_batches


def test_generated_runs_keep_their_metadata(core50_root: Path, core50_lists: Path) -> None:
    s = load_filelists(core50_root, core50_lists, name="generated")
    s.meta = {"seed": 4}
    out = core50_lists.parent.parent / "generated"
    for run in ("run0", "run1"):
        write_filelists(s, out / run)
    loaded = load_filelist_runs(core50_root, out, 2)
    assert [(x.name, x.meta) for x in loaded] == [
        ("generated", {"seed": 4, "run": "run0"}),
        ("generated", {"seed": 4, "run": "run1"}),
    ]


B, T = "train_batch_00_filelist.txt", TEST_FILE


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({".": ["notes.txt"]}, "holds neither train_batch_XX_filelist.txt files (one ordering)"),
        ({"NIC_v2_391/run0": [B, T]}, "nor run0/, run1/, ... folders of them (one protocol, as "),
        ({"NC_inc/run0": [B, T], "NIC_v2_391/run0": [B, T]}, "its subfolders: NC_inc, NIC_v2_39"),
        ({".": ["run0"]}, "holds neither"),  # a file named like a run is no run
        ({"run0": [B, T], "run1": [T]}, "run1 holds no train_batch_XX_filelist.txt"),
        ({"run0": [B, T], "run1": [B]}, "run1 has no test_filelist.txt"),
        ({"run0": [B, T], "run2": [B, T]}, "runs [1] are missing (incomplete copy?)"),
        ({"run1": [B, T], "run2": [B, T]}, "runs [0] are missing"),
        ({"run0": [B, T], "run1": [B, T], "run01": [B, T]}, "two folders for run 1: run"),
        ({".": [B, T], "run0": [B, T]}, "mixes both layouts: it holds train_batch_XX_filelist.txt"),
        ({".": [B]}, "has no test_filelist.txt"),
    ],
)
def test_malformed_run_layouts_raise_clear_errors(
    core50_root: Path, tmp_path: Path, layout: dict[str, list[str]], message: str
) -> None:
    for folder, files in layout.items():
        write(tmp_path / folder, dict.fromkeys(files, GOOD), test=None)
    with pytest.raises(DatasetError, match=re.escape(message)):
        filelist_runs(tmp_path)
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_filelist_runs(core50_root, tmp_path, 1)


def test_asking_for_more_runs_than_held_names_those_held(
    core50_root: Path, nicv2: Path, core50_lists: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        DatasetError, match=re.escape(f"asked for 3 runs, {nicv2} holds run0, run1;")
    ):
        load_filelist_runs(core50_root, nicv2, 3)
    with pytest.raises(DatasetError, match=re.escape("asked for 0 runs")):
        load_filelist_runs(core50_root, nicv2, 0)
    with pytest.raises(DatasetError, match=re.escape("holds run0 (a single ordering; pass the")):
        load_filelist_runs(core50_root, core50_lists, 2)
    with pytest.raises(DatasetError, match=r"filelist folder .*nowhere does not exist"):
        filelist_runs(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"filelist folder .*nowhere does not exist"):
        load_filelist_runs(core50_root, tmp_path / "nowhere", 1)
