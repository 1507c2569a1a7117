"""CORe50-format filelists: the interchange format of every scenario in the study.

A scenario folder holds one ``train_batch_XX_filelist.txt`` per incremental batch (``XX`` = 00,
01, ... zero-padded to at least two digits, ordered numerically) and one ``test_filelist.txt``.
Each line is ``relative/path/to/image label``, the path relative to an image root. This is the
format of the official CORe50 protocols (NI, NC, NIC, NICv2), so the same loader reads the full
CORe50 dataset and the streams generated in :mod:`edge_cl.bench.scenarios`.

CORe50 ships each protocol as one folder of orderings, ``NIC_v2_391/run0/``, ``run1/``, ...
(``run9/``), each a scenario folder as above; their test lists hold the same lines.
:func:`filelist_runs` finds the orderings a folder holds (itself, or its ``run*/`` folders) and
:func:`load_filelist_runs` loads the first N of them, one :class:`Scenario` each.

:func:`write_filelists` also writes ``scenario.json`` (name, image root, generator metadata) so
that :func:`load_scenario` can reopen a generated folder without being told its image root.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_cl.errors import DatasetError, LabelError
from edge_cl.learner.labels import check_label

Label = str | int
Split = tuple[list[str], list[Label]]

TEST_FILE = "test_filelist.txt"
META_FILE = "scenario.json"
_BATCH_RE = re.compile(r"train_batch_(\d+)_filelist\.txt")
_INT_RE = re.compile(r"-?(0|[1-9][0-9]{0,17})")
_RUN_RE = re.compile(r"run(\d+)")


def parse_label(token: str) -> Label:
    """A label token as an ``int`` if it is a decimal integer written the one way Python writes
    it (as in CORe50), else the ``str``: ``007``, ``+7`` and ``7`` stay three classes.
    ``LabelError`` if it is no usable label (:func:`~edge_cl.learner.labels.check_label`).

    >>> parse_label("7"), parse_label("cup"), parse_label("007"), parse_label("+7")
    (7, 'cup', '007', '+7')
    """
    return check_label(int(token) if _INT_RE.fullmatch(token) else token)


def batch_filename(index: int, batches: int) -> str:
    """File name of train batch ``index`` out of ``batches``: two digits, more if needed.

    >>> batch_filename(3, 8), batch_filename(3, 391)
    ('train_batch_03_filelist.txt', 'train_batch_003_filelist.txt')
    """
    width = max(2, len(str(batches - 1)))
    return f"train_batch_{index:0{width}d}_filelist.txt"


def _first_seen(labels: Sequence[Label]) -> list[Label]:
    return list(dict.fromkeys(labels))


@dataclass
class Scenario:
    """A continual-learning stream: train batches in order, one test set, one image root.

    Paths are kept as written in the filelists (relative to ``root``); :meth:`train_files` and
    :meth:`test_files` join them to the root. ``meta`` is free-form generator information
    (seed, protocol parameters, class names) saved in ``scenario.json``.

    >>> s = Scenario("toy", Path("imgs"), [(["a.png", "b.png"], [0, 1]), (["c.png"], [2])],
    ...              (["t.png"], [0]))
    >>> s.describe()["batches"], s.describe()["first_batch_classes"], s.describe()["classes"]
    (2, 2, 3)
    >>> s.train_files(1)
    [PosixPath('imgs/c.png')]
    """

    name: str
    root: Path
    train_batches: list[Split]
    test: Split
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        for i, (paths, labels) in enumerate([*self.train_batches, self.test]):
            if len(paths) != len(labels):
                where = "test set" if i == len(self.train_batches) else f"train batch {i}"
                raise DatasetError(
                    f"scenario {self.name!r}: {where} has {len(paths)} paths but "
                    f"{len(labels)} labels"
                )

    def train_files(self, index: int) -> list[Path]:
        """Paths of train batch ``index``, joined to the image root."""
        return [self.root / p for p in self.train_batches[index][0]]

    def test_files(self) -> list[Path]:
        """Paths of the test images, joined to the image root."""
        return [self.root / p for p in self.test[0]]

    @property
    def classes(self) -> list[Label]:
        """Labels seen in training, in order of first appearance in the stream."""
        return _first_seen([lab for _, labels in self.train_batches for lab in labels])

    def describe(self) -> dict[str, float]:
        """The stream's numbers: batches, images per batch, classes, test size."""
        sizes = [len(paths) for paths, _ in self.train_batches] or [0]
        first = self.train_batches[0][1] if self.train_batches else []
        return {
            "batches": len(self.train_batches),
            "train_images": sum(sizes),
            "images_per_batch_min": min(sizes),
            "images_per_batch_mean": round(sum(sizes) / len(sizes), 2),
            "images_per_batch_max": max(sizes),
            "first_batch_classes": len(set(first)),
            "classes": len(self.classes),
            "test_images": len(self.test[0]),
            "test_classes": len(set(self.test[1])),
        }


def _parse_filelist(path: Path) -> tuple[list[str], list[Label], list[int]]:
    """Paths, labels and line numbers of one filelist; ``DatasetError`` on a malformed line."""
    if not path.is_file():  # a FIFO or a device would block or never end
        raise DatasetError(f"filelist {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read filelist {path}: {e}") from e
    paths: list[str] = []
    labels: list[Label] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise DatasetError(
                f"{path}:{number}: expected 'relative/path/to/image label', got {line!r}"
            )
        rel, label = tokens
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise DatasetError(
                f"{path}:{number}: image path {rel!r} is not inside the image root; filelist "
                "paths are relative to it, without '..'"
            )
        try:
            labels.append(parse_label(label))
        except LabelError as e:
            raise DatasetError(f"{path}:{number}: {e}") from e
        paths.append(rel)
        lines.append(number)
    if not paths:
        raise DatasetError(f"filelist {path} lists no images")
    return paths, labels, lines


def _check_exist(root: Path, listed: list[tuple[Path, list[str], list[int]]]) -> None:
    """Raise ``DatasetError`` if a listed image is missing; one directory listing per folder."""
    folders: dict[str, set[str]] = {}
    missing: list[tuple[str, Path, int]] = []
    total = 0
    for filelist, paths, lines in listed:
        total += len(paths)
        for rel, line in zip(paths, lines, strict=True):
            parent, name = os.path.split(rel)
            if parent not in folders:
                try:
                    folders[parent] = set(os.listdir(root / parent))
                except OSError:
                    folders[parent] = set()
            if name not in folders[parent]:
                missing.append((rel, filelist, line))
    if missing:
        rel, filelist, line = missing[0]
        examples = ", ".join(repr(m[0]) for m in missing[:3])
        raise DatasetError(
            f"{len(missing)} of {total} images listed do not exist under the image root {root}: "
            f"{examples} (first at {filelist}:{line}); check the image root you passed"
        )


def load_filelists(
    root: str | os.PathLike[str],
    filelists_dir: str | os.PathLike[str],
    name: str | None = None,
    check_files: bool = True,
) -> Scenario:
    """Read a CORe50-format filelist folder whose paths are relative to the image ``root``.

    Every listed image must exist (checked with one directory listing per image folder, so the
    164,866 frames of CORe50 take a fraction of a second). ``name`` defaults to the one saved in
    ``scenario.json``, else the folder's name.
    """
    root, folder = Path(root), Path(filelists_dir)
    if not folder.is_dir():
        raise DatasetError(f"filelist folder {folder} does not exist")
    if not root.is_dir():
        raise DatasetError(f"image root {root} does not exist")
    numbered: dict[int, Path] = {}
    for entry in folder.iterdir():
        match = _BATCH_RE.fullmatch(entry.name)
        if match is None:
            continue
        index = int(match.group(1))
        if index in numbered:
            raise DatasetError(
                f"{folder}: two filelists for train batch {index}: "
                f"{numbered[index].name} and {entry.name}"
            )
        numbered[index] = entry
    if not numbered:
        raise DatasetError(
            f"{folder} holds no train_batch_XX_filelist.txt: not a CORe50-format filelist folder"
        )
    gaps = [i for i in range(len(numbered)) if i not in numbered][:5]  # not range(max + 1)
    if gaps:
        raise DatasetError(f"{folder}: train batches {gaps} are missing (incomplete copy?)")
    test_path = folder / TEST_FILE
    if not test_path.is_file():
        raise DatasetError(f"{folder} has no {TEST_FILE}")
    listed = [(numbered[i], *_parse_filelist(numbered[i])) for i in sorted(numbered)]
    test = (test_path, *_parse_filelist(test_path))
    if check_files:
        _check_exist(root, [(f, p, n) for f, p, _, n in [*listed, test]])
    meta = _read_meta(folder)
    return Scenario(
        name=name or str(meta.get("name") or folder.name),
        root=root,
        train_batches=[(paths, labels) for _, paths, labels, _ in listed],
        test=(test[1], test[2]),
        meta=dict(meta.get("meta") or {}),
    )


def _check_ordering(folder: Path) -> None:
    """``DatasetError`` unless ``folder`` holds train batch filelists and a test list."""
    if not any(_BATCH_RE.fullmatch(entry.name) for entry in folder.iterdir()):
        raise DatasetError(
            f"{folder} holds no train_batch_XX_filelist.txt: not a CORe50-format filelist folder"
        )
    if not (folder / TEST_FILE).is_file():
        raise DatasetError(f"{folder} has no {TEST_FILE}")


def filelist_runs(folder: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """The orderings ``folder`` holds, as ``(name, path)`` in order.

    Either ``folder`` is one ordering (it holds ``train_batch_XX_filelist.txt`` files; its name
    is the folder's), or it holds CORe50's ``run0/``, ``run1/``, ... folders, one ordering each,
    named ``"run0"``, ... and sorted by number (``run10`` after ``run9``). ``DatasetError`` if it
    is neither, mixes both, misses a run number, or a run lacks its train batches or test list.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"filelist folder {folder} does not exist")
    entries = list(folder.iterdir())
    has_batches = any(_BATCH_RE.fullmatch(entry.name) for entry in entries)
    numbered: dict[int, Path] = {}
    for entry in entries:
        match = _RUN_RE.fullmatch(entry.name)
        if match is None or not entry.is_dir():
            continue
        index = int(match.group(1))
        if index in numbered:
            raise DatasetError(
                f"{folder}: two folders for run {index}: {numbered[index].name} and {entry.name}"
            )
        numbered[index] = entry
    if has_batches and numbered:
        held = ", ".join(numbered[i].name for i in sorted(numbered))
        raise DatasetError(
            f"{folder} mixes both layouts: it holds train_batch_XX_filelist.txt files (one "
            f"ordering) and run folders ({held}); keep one ordering per folder"
        )
    if has_batches:
        _check_ordering(folder)
        return [(folder.resolve().name, folder)]
    if not numbered:
        subfolders = sorted(entry.name for entry in entries if entry.is_dir())
        hint = f"; its subfolders: {', '.join(subfolders[:5])}" if subfolders else ""
        raise DatasetError(
            f"{folder} holds neither train_batch_XX_filelist.txt files (one ordering) nor "
            f"run0/, run1/, ... folders of them (one protocol, as CORe50's NIC_v2_391/){hint}"
        )
    gaps = [i for i in range(len(numbered)) if i not in numbered][:5]  # not range(max + 1)
    if gaps:
        raise DatasetError(
            f"{folder}: runs {gaps} are missing (incomplete copy?); runs are numbered from run0"
        )
    runs = [(f"run{i}", numbered[i]) for i in sorted(numbered)]
    for _, path in runs:
        _check_ordering(path)
    return runs


def load_filelist_runs(
    root: str | os.PathLike[str],
    filelists_dir: str | os.PathLike[str],
    runs: int | None = None,
    name: str | None = None,
    check_files: bool = True,
) -> list[Scenario]:
    """The first ``runs`` orderings of ``filelists_dir`` (:func:`filelist_runs`; None: all of
    them), all loaded.

    Each is read on its own (test list included) by :func:`load_filelists`, so a broken run is
    reported before any work starts. ``meta["run"]`` names the ordering (``"run0"``, ...). All
    runs of a run-folder layout share one scenario name, ``name`` or the folder's
    (``"NIC_v2_391"``), so that the study summarises them as orderings of one scenario; a
    single-folder layout is named as :func:`load_filelists` names it.
    """
    folder = Path(filelists_dir)
    available = filelist_runs(folder)
    single = available[0][1] == folder
    if runs is None:
        runs = len(available)
    if runs < 1 or runs > len(available):
        held = ", ".join(run for run, _ in available)
        one = " (a single ordering; pass the folder of its run0/, run1/, ...)" if single else ""
        raise DatasetError(
            f"asked for {runs} runs, {folder} holds {held}{one}; ask for 1 to {len(available)}"
        )
    scenario_name = name if single else name or folder.resolve().name
    scenarios = []
    for run, path in available[:runs]:
        scenario = load_filelists(root, path, name=scenario_name, check_files=check_files)
        scenario.meta["run"] = run
        scenarios.append(scenario)
    return scenarios


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    return meta


def load_scenario(filelists_dir: str | os.PathLike[str]) -> Scenario:
    """Reopen a folder written by :func:`write_filelists`, with the image root it recorded."""
    folder = Path(filelists_dir)
    meta = _read_meta(folder) if folder.is_dir() else {}
    if "root" not in meta:
        raise DatasetError(
            f"{folder / META_FILE} is missing or names no image root; "
            "use load_filelists(root, folder) instead"
        )
    root = Path(meta["root"])
    return load_filelists(root if root.is_absolute() else folder / root, folder)


def _check_tokens(where: str, paths: Sequence[str], labels: Sequence[Label]) -> None:
    for rel, label in zip(paths, labels, strict=True):
        for token in (rel, str(label)):
            if not token or token != "".join(token.split()):
                raise DatasetError(
                    f"{where}: {token!r} is empty or holds whitespace; it cannot be written "
                    "to a filelist"
                )


def write_filelists(scenario: Scenario, directory: str | os.PathLike[str]) -> Path:
    """Write ``scenario`` as CORe50-format filelists (plus ``scenario.json``) into ``directory``.

    Stale ``train_batch_*`` files from an earlier, longer scenario are removed first. The image
    root is recorded relative to ``directory`` when it lies inside it, else absolute.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if _BATCH_RE.fullmatch(entry.name):
            entry.unlink()
    n = len(scenario.train_batches)
    if n == 0:
        raise DatasetError(f"scenario {scenario.name!r} has no train batches")
    for i, (paths, labels) in enumerate(scenario.train_batches):
        _check_tokens(f"train batch {i}", paths, labels)
        _write_lines(folder / batch_filename(i, n), paths, labels)
    _check_tokens("test set", *scenario.test)
    _write_lines(folder / TEST_FILE, *scenario.test)
    root = scenario.root.resolve()
    try:
        recorded = root.relative_to(folder.resolve()).as_posix() or "."
    except ValueError:
        recorded = str(root)
    meta = {
        "name": scenario.name,
        "root": recorded,
        "describe": scenario.describe(),
        "meta": scenario.meta,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return folder


def _write_lines(path: Path, paths: Sequence[str], labels: Sequence[Label]) -> None:
    path.write_text("".join(f"{p} {lab}\n" for p, lab in zip(paths, labels, strict=True)))
