"""CORe50-like continual-learning streams on real images (COIL-100, CIFAR-10, tiny-imagenet).

Every generator returns a :class:`~edge_cl.bench.filelists.Scenario`; :func:`generate` also writes
it as CORe50-format filelists. Labels are dense ints (``meta["classes"]`` names them).

**COIL-100** (99 objects on a turntable, 68 to 72 views 5 degrees apart). Views whose angle index
is 2 modulo 4 are the test set (about 18 per object). The other views of an object (about 53)
are cut, in angle order, into ``S`` contiguous arcs: an arc is a *session*, a few seconds of
turntable video. As in CORe50's NICv2 protocols, batch 0 holds one arc each of 10 objects and
every other (object, arc) pair is its own small batch: objects keep arriving over the stream (new
classes) and come back later with new views (new instances). ``S`` = 2, 4, 8 give three protocols
with more and smaller batches, as NICv2-79, 196, 391 do on CORe50 (numbers: ``python -m
edge_cl.bench.scenarios``). Within a batch, views keep their angle order (video order).

**CIFAR-10** (1,500 train and 300 test images per class): ``cifar10-nc`` is class-incremental
(5 batches of 2 classes), ``cifar10-nic`` has small non-i.i.d. batches (batch 0: 2 classes x 150
images, then one batch of 50 images of one class at a time). Test: all 3,000 test images.

**tiny-imagenet32-100** (100 classes, 200 train and 50 test images each; ImageNet photographs,
so the ImageNet-pretrained extractor has likely seen them: compare strategies, not absolute
accuracy): ``tinyimagenet-nc`` is class-incremental (10 batches of 10 new classes, 2,000 images
each), ``tinyimagenet-nic`` has small batches of 40 images of one class (10 classes open the
stream, every class comes back 4 times). Test: all 5,000 test images.

**Hard variants** (plain COIL saturates: cumulative and streaming LDA reach 100%), all with 4
arcs per object like ``coil100-s4``:

- ``coil100-arc``: the test views of an object are one held-out arc of 18 consecutive views
  (novel viewpoints); training arcs come from the rest of the circle.
- ``coil100-sessions``: each arc index is a session with its own background texture and optics
  (light level, tone curve, colour cast, blur, sensor noise); test views are rendered in two
  held-out sessions, as CORe50 tests on sessions it never trains on.
- ``coil100-clutter``: objects cut out of their background, shrunk and moved, composited onto
  crops of real photographs (three per session, held-out ones for the test sessions) under
  per-session optics; 20% of the objects have a single training arc (one batch).
- ``-nc`` and ``-ni`` variants of the last two reorder the same rendered images: 10 new objects
  a batch, every session of each (class-incremental), or one whole session a batch (new
  instances; in ``coil100-clutter-ni`` the 20% single-arc objects first appear with their
  session).

Rendered images go to ``image_root/sS/objN/objN__A.jpg`` (session ``S``). They depend on the
scenario definition (``DEFINITION_SEED``), not on ``seed``: ``render.json`` records what was
rendered and a folder is reused when several seeds share it.

The ``seed`` changes the order of the stream (which objects open it, which arcs come when), never
the set of train or test images: as CORe50's runs, seeds share one test set.

Protocols, as printed by ``python -m edge_cl.bench.scenarios`` (seed 0; the max is batch 0, which
varies by a few images with the seed). ``python -m edge_cl.bench.scenarios NAME OUT_DIR --seed 1``
generates one::

    scenario          batches  images/batch min-mean-max  batch-0 classes  classes  train  test
    coil100-s2            189  25 - 28.2 - 267                         10       99   5325  1773
    coil100-s4            387  12 - 13.8 - 135                         10       99   5325  1773
    coil100-s8            783   6 -  6.8 -  68                         10       99   5325  1773
    coil100-arc           387  12 - 13.7 - 135                         10       99   5316  1782
    coil100-sessions      387  12 - 13.8 - 135                         10       99   5325  1773
    coil100-clutter       327  12 - 13.8 - 134                         10       99   4519  1773
    coil100-sessions-nc    10  486 - 532.5 - 540                       10       99   5325  1773
    coil100-sessions-ni     4  1287 - 1331.2 - 1374                    99       99   5325  1773
    coil100-clutter-nc     10  378 - 451.9 - 499                       10       99   4519  1773
    coil100-clutter-ni      4  1079 - 1129.8 - 1166                    86       99   4519  1773
    cifar10-nc              5  3000 - 3000 - 3000                       2       10  15000  3000
    cifar10-nic           295  50 - 50.9 - 300                          2       10  15000  3000
    tinyimagenet-nc        10  2000 - 2000 - 2000                      10      100  20000  5000
    tinyimagenet-nic      491  40 - 40.7 - 400                         10      100  20000  5000

:data:`SUITES` splits them into the ``dev`` scenarios a default may be chosen on and the
``holdout`` ones that only confirm it (``edge-cl bench --suite dev|holdout``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_cl.bench.filelists import Label, Scenario, Split, write_filelists
from edge_cl.bench.render import Conditions, SessionRenderer, pick_photos, session_backgrounds
from edge_cl.errors import DatasetError
from edge_cl.images import read_image

FIRST_BATCH_CLASSES = 10
NEW_CLASS_SPAN = 0.75
DEFINITION_SEED = 0
COIL_DIR = Path("coil100") / "images"
CIFAR_DIR = Path("cifar10")
TINY_DIR = Path("tiny-imagenet32-100")
DATASET_NAMES = {CIFAR_DIR: "CIFAR-10", TINY_DIR: "tiny-imagenet32-100"}
PHOTOS_DIR = Path("imagenet-samples") / "images"
DEFAULT_DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
RENDER_VERSION = 1
RENDER_STAMP = "render.json"
JPEG_QUALITY = 92
_COIL_RE = re.compile(r"obj(\d+)__(\d+)\.png")

Unit = tuple[Label, list[str]]
Builder = Callable[[Path, int, Path | None, bool], Scenario]


def stream_order(
    labels: Sequence[Label],
    seen: set[Label],
    rng: np.random.Generator,
    span: float = NEW_CLASS_SPAN,
) -> list[int]:
    """A seeded order of units (arcs, chunks) in which classes arrive over time and come back.

    ``labels[i]`` is the class of unit ``i``; classes in ``seen`` were introduced before (batch
    0). The first units of the new classes, in random class order, take positions spread evenly
    over the first ``span`` of the stream; every other position takes a random unit among those
    whose class has already arrived (a class's later units always come after its first).

    >>> order = stream_order([0, 0, 1, 1, 2, 2], {0}, np.random.default_rng(0))
    >>> sorted(order)
    [0, 1, 2, 3, 4, 5]
    """
    by_class: dict[Label, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    units = {c: [idx[j] for j in rng.permutation(len(idx))] for c, idx in by_class.items()}
    fresh = [c for c in by_class if c not in seen]
    new = [fresh[j] for j in rng.permutation(len(fresh))]
    n = len(labels)
    slots = [int(span * n * (k + rng.random()) / len(new)) for k in range(len(new))]
    pool = [i for c in by_class if c in seen for i in units[c]]
    order: list[int] = []
    k = 0
    for position in range(n):
        if k < len(new) and (slots[k] <= position or not pool):
            order.append(units[new[k]][0])
            pool += units[new[k]][1:]
            k += 1
        else:
            j = int(rng.integers(len(pool)))
            pool[j], pool[-1] = pool[-1], pool[j]
            order.append(pool.pop())
    return order


def nic_batches(
    units: Sequence[Unit],
    rng: np.random.Generator,
    first_classes: int = FIRST_BATCH_CLASSES,
    first_units: int = 1,
) -> list[Split]:
    """NICv2-style batches: batch 0 merges ``first_units`` units of ``first_classes`` classes,
    then every other unit is one batch, in :func:`stream_order`.

    >>> units = [(c, [f"{c}_{a}_{v}.png" for v in range(3)]) for c in range(4) for a in range(2)]
    >>> batches = nic_batches(units, np.random.default_rng(0), first_classes=2)
    >>> len(batches), len(batches[0][0]), len(set(batches[0][1]))
    (7, 6, 2)
    """
    by_class: dict[Label, list[int]] = {}
    for i, (label, _) in enumerate(units):
        by_class.setdefault(label, []).append(i)
    classes = list(by_class)
    if len(classes) < first_classes:
        raise DatasetError(f"need {first_classes} classes for batch 0, found {len(classes)}")
    chosen = [classes[i] for i in sorted(rng.choice(len(classes), first_classes, replace=False))]
    first: list[int] = []
    for label in chosen:
        if len(by_class[label]) < first_units:
            raise DatasetError(f"class {label!r} has fewer than {first_units} units for batch 0")
        first += [int(i) for i in rng.choice(by_class[label], first_units, replace=False)]
    taken = set(first)
    rest = [i for i in range(len(units)) if i not in taken]
    order = stream_order([units[i][0] for i in rest], set(chosen), rng)
    batch0: Split = ([], [])
    for i in first:
        label, paths = units[i]
        batch0[0].extend(paths)
        batch0[1].extend([label] * len(paths))
    batches = [batch0]
    for j in order:
        label, paths = units[rest[j]]
        batches.append((list(paths), [label] * len(paths)))
    return batches


def nc_batches(units: Sequence[Unit], rng: np.random.Generator, per_batch: int) -> list[Split]:
    """Class-incremental batches: classes in seeded order, ``per_batch`` new classes a batch, each
    batch holding every unit of its classes (in unit order, as a camera would record them).

    >>> units = [(c, [f"{c}_{a}.png"]) for c in range(5) for a in range(2)]
    >>> [sorted(set(labels)) for _, labels in nc_batches(units, np.random.default_rng(0), 2)]
    [[2, 4], [0, 3], [1]]
    """
    by_class: dict[Label, list[str]] = {}
    for label, paths in units:
        by_class.setdefault(label, []).extend(paths)
    classes = list(by_class)
    order = [classes[int(i)] for i in rng.permutation(len(classes))]
    batches: list[Split] = []
    for start in range(0, len(order), per_batch):
        chosen = order[start : start + per_batch]
        paths = [p for c in chosen for p in by_class[c]]
        batches.append((paths, [c for c in chosen for _ in by_class[c]]))
    return batches


def ni_batches(
    units: Sequence[Unit], sessions: Sequence[int], rng: np.random.Generator
) -> list[Split]:
    """New-instance batches: one batch per session (``sessions[i]`` is unit ``i``'s), sessions in
    seeded order; a batch holds every unit shot in its session.

    >>> units = [(c, [f"{c}_{s}.png"]) for c in range(3) for s in range(2)]
    >>> batches = ni_batches(units, [0, 1] * 3, np.random.default_rng(0))
    >>> [(len(paths), sorted(set(labels))) for paths, labels in batches]
    [(3, [0, 1, 2]), (3, [0, 1, 2])]
    """
    batches: list[Split] = []
    for session in [int(s) for s in rng.permutation(sorted(set(sessions)))]:
        chosen = [u for u, s in zip(units, sessions, strict=True) if s == session]
        batches.append(([p for _, ps in chosen for p in ps], [c for c, ps in chosen for _ in ps]))
    return batches


def coil_views(images_dir: str | os.PathLike[str]) -> dict[int, list[tuple[int, str]]]:
    """COIL-100 object number -> its views as (angle in degrees, file name), sorted by angle."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DatasetError(f"COIL-100 images not found at {folder}")
    views: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir(folder):
        match = _COIL_RE.fullmatch(name)
        if match:
            views.setdefault(int(match.group(1)), []).append((int(match.group(2)), name))
    if not views:
        raise DatasetError(f"{folder} holds no COIL-100 files named objN__A.png")
    return {obj: sorted(views[obj]) for obj in sorted(views)}


def split_arcs(items: Sequence[Any], arcs: int) -> list[list[Any]]:
    """Cut ``items`` (in angle order) into ``arcs`` contiguous runs of near-equal length.

    >>> split_arcs(list(range(7)), 3)
    [[0, 1], [2, 3, 4], [5, 6]]
    """
    if not 1 <= arcs <= len(items):
        raise DatasetError(f"cannot cut {len(items)} views into {arcs} arcs")
    bounds = np.linspace(0, len(items), arcs + 1).round().astype(int)
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(arcs)]


def _is_coil_test(angle: int) -> bool:
    return (angle // 5) % 4 == 2


def coil100(
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    arcs: int = 4,
) -> Scenario:
    """COIL-100 with ``arcs`` sessions per object; test = views with angle index 2 mod 4."""
    root = Path(datasets_dir) / COIL_DIR
    views = coil_views(root)
    objects = list(views)
    units: list[Unit] = []
    test: Split = ([], [])
    for label, obj in enumerate(objects):
        train = [name for angle, name in views[obj] if not _is_coil_test(angle)]
        test[0].extend(name for angle, name in views[obj] if _is_coil_test(angle))
        test[1].extend([label] * (len(views[obj]) - len(train)))
        units += [(label, arc) for arc in split_arcs(train, arcs)]
    return Scenario(
        name=f"coil100-s{arcs}",
        root=root,
        train_batches=nic_batches(units, np.random.default_rng(seed)),
        test=test,
        meta={"seed": seed, "arcs": arcs, "classes": [f"obj{o}" for o in objects]},
    )


def class_files(datasets_dir: Path, dataset: Path, split: str) -> dict[str, list[str]]:
    """Class folder name -> sorted ``.jpg`` paths relative to ``dataset``, for ``split``
    (``dataset/split/<class>/*.jpg``: the CIFAR-10 and tiny-imagenet32-100 layout)."""
    folder = Path(datasets_dir) / dataset / split
    if not folder.is_dir():
        name = DATASET_NAMES.get(dataset, str(dataset))
        raise DatasetError(f"{name} {split} images not found at {folder}")
    files = {
        c.name: sorted(f"{split}/{c.name}/{f}" for f in os.listdir(c) if f.endswith(".jpg"))
        for c in sorted(folder.iterdir())
        if c.is_dir()
    }
    empty = [c for c, f in files.items() if not f]
    if not files or empty:
        raise DatasetError(f"{folder}: no class folders, or classes without .jpg images: {empty}")
    return files


def cifar_files(datasets_dir: Path, split: str) -> dict[str, list[str]]:
    """CIFAR-10 class name -> sorted image paths relative to ``cifar10/``, for ``split``."""
    return class_files(datasets_dir, CIFAR_DIR, split)


def _class_test(datasets_dir: Path, dataset: Path, classes: list[str]) -> Split:
    files = class_files(datasets_dir, dataset, "test")
    if sorted(files) != classes:
        raise DatasetError(f"{dataset} test classes {sorted(files)} differ from train {classes}")
    paths = [p for c in classes for p in files[c]]
    return paths, [label for label, c in enumerate(classes) for _ in files[c]]


def class_incremental(
    name: str, datasets_dir: Path, dataset: Path, seed: int, per_batch: int
) -> Scenario:
    """``per_batch`` new classes per batch, classes in seeded order, each batch shuffled; every
    training image of a class is in its one batch. Test: every test image."""
    files = class_files(datasets_dir, dataset, "train")
    classes = list(files)
    if not 1 <= per_batch <= len(classes):
        raise DatasetError(f"{name}: cannot put {per_batch} of {len(classes)} classes in a batch")
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(classes))]
    batches: list[Split] = []
    for start in range(0, len(order), per_batch):
        pairs = [(p, c) for c in order[start : start + per_batch] for p in files[classes[c]]]
        perm = rng.permutation(len(pairs))
        batches.append(([pairs[i][0] for i in perm], [pairs[i][1] for i in perm]))
    return Scenario(
        name=name,
        root=Path(datasets_dir) / dataset,
        train_batches=batches,
        test=_class_test(datasets_dir, dataset, classes),
        meta={"seed": seed, "per_batch": per_batch, "classes": classes},
    )


def class_chunks(
    name: str,
    datasets_dir: Path,
    dataset: Path,
    seed: int,
    chunk: int,
    first_classes: int,
    first_images: int,
) -> Scenario:
    """Small non-i.i.d. batches: each class's training images, shuffled, cut into chunks of
    ``chunk``; batch 0 holds ``first_images // chunk`` chunks of ``first_classes`` classes, every
    other chunk is its own batch, in :func:`stream_order` (classes arrive and come back)."""
    files = class_files(datasets_dir, dataset, "train")
    classes = list(files)
    rng = np.random.default_rng(seed)
    units: list[Unit] = []
    for label, c in enumerate(classes):
        shuffled = [files[c][i] for i in rng.permutation(len(files[c]))]
        units += [(label, shuffled[i : i + chunk]) for i in range(0, len(shuffled), chunk)]
    batches = nic_batches(units, rng, first_classes, first_units=max(1, first_images // chunk))
    return Scenario(
        name=name,
        root=Path(datasets_dir) / dataset,
        train_batches=batches,
        test=_class_test(datasets_dir, dataset, classes),
        meta={"seed": seed, "chunk": chunk, "classes": classes},
    )


def cifar10_nc(
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    per_batch: int = 2,
) -> Scenario:
    """CIFAR-10 class-incremental: ``per_batch`` classes per batch in seeded order, shuffled."""
    return class_incremental("cifar10-nc", datasets_dir, CIFAR_DIR, seed, per_batch)


def cifar10_nic(
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    chunk: int = 50,
    first_classes: int = 2,
    first_images: int = 150,
) -> Scenario:
    """CIFAR-10 in small non-i.i.d. batches of ``chunk`` images of one class."""
    return class_chunks(
        "cifar10-nic", datasets_dir, CIFAR_DIR, seed, chunk, first_classes, first_images
    )


def tiny_nc(
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    per_batch: int = 10,
) -> Scenario:
    """tiny-imagenet32-100 class-incremental: 10 batches of ``per_batch`` new classes (2,000
    images each), seeded class order."""
    return class_incremental("tinyimagenet-nc", datasets_dir, TINY_DIR, seed, per_batch)


def tiny_nic(
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    chunk: int = 40,
    first_classes: int = 10,
    first_images: int = 40,
) -> Scenario:
    """tiny-imagenet32-100 in small non-i.i.d. batches of ``chunk`` images of one class (5 per
    class): 10 classes open the stream, the other 90 arrive over its first three quarters and
    every class comes back."""
    return class_chunks(
        "tinyimagenet-nic", datasets_dir, TINY_DIR, seed, chunk, first_classes, first_images
    )


def _coil_test_arc(
    views: list[tuple[int, str]], length: int, rng: np.random.Generator
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(train, test): test is ``length`` consecutive views from a random start; train is the
    rest, starting right after the test arc (so it stays contiguous on the turntable circle)."""
    start = int(rng.integers(len(views)))
    turned = views[start:] + views[:start]
    return turned[length:], turned[:length]


def coil100_arc(
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    arcs: int = 4,
    test_views: int = 18,
    definition_seed: int = DEFINITION_SEED,
) -> Scenario:
    """COIL-100 whose test views are unseen viewpoints: one held-out arc of ``test_views``
    consecutive views per object (random start, from ``definition_seed``); the remaining views
    form ``arcs`` training sessions, as in ``coil100-s4``."""
    root = Path(datasets_dir) / COIL_DIR
    views = coil_views(root)
    rng = np.random.default_rng(definition_seed)
    units: list[Unit] = []
    test: Split = ([], [])
    for label, obj in enumerate(views):
        train, held = _coil_test_arc(views[obj], test_views, rng)
        test[0].extend(name for _, name in held)
        test[1].extend([label] * len(held))
        units += [(label, [name for _, name in arc]) for arc in split_arcs(train, arcs)]
    return Scenario(
        name="coil100-arc",
        root=root,
        train_batches=nic_batches(units, np.random.default_rng(seed)),
        test=test,
        meta={
            "seed": seed,
            "arcs": arcs,
            "test_views": test_views,
            "definition_seed": definition_seed,
            "classes": [f"obj{o}" for o in views],
        },
    )


RenderJob = tuple[str, str, int, int, int]  # source file, destination, session, object, angle


RESHOOTS: dict[str, dict[str, float]] = {
    "coil100-sessions": {"single_arc_fraction": 0.0, "strength": 1.5},
    "coil100-clutter": {"single_arc_fraction": 0.2, "strength": 1.0},
}
"""The COIL-100 streams re-shot in sessions, with their defaults (:func:`coil100_reshot`)."""


def coil100_reshot(
    name: str,
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    arcs: int = 4,
    test_sessions: int = 2,
    single_arc_fraction: float | None = None,
    strength: float | None = None,
    definition_seed: int = DEFINITION_SEED,
    objects: int | None = None,
    protocol: str = "nic",
) -> Scenario:
    """COIL-100 re-shot in sessions: arc ``s`` of every object in session ``s``, test views
    (angle index 2 mod 4) in ``test_sessions`` held-out sessions (as CORe50 tests on sessions
    it never trains on), each session under its own optics (light level, tone curve, colour
    cast, blur, noise; :meth:`Conditions.random` at ``strength``); a ``single_arc_fraction`` of
    the objects keeps only one training arc. ``name`` (one of :data:`RESHOOTS`, which gives the
    defaults of those two) sets the scene:

    - ``coil100-sessions``: each session has its own background texture;
    - ``coil100-clutter``: the objects cut out and composited, smaller and off-centre, onto
      crops of real photographs (three per session; held-out ones for the test sessions).

    ``objects`` keeps only the first objects (for quick checks). ``protocol`` orders the same
    rendered images as a NICv2-like stream (``nic``), class-incremental with 10 new objects a
    batch (``nc``, :func:`nc_batches`) or one session a batch (``ni``, :func:`ni_batches`).
    """
    if name not in RESHOOTS:
        raise DatasetError(f"unknown re-shot COIL-100 stream {name!r}; one of {list(RESHOOTS)}")
    defaults = RESHOOTS[name]
    if single_arc_fraction is None:
        single_arc_fraction = defaults["single_arc_fraction"]
    sessions_total = arcs + test_sessions
    optics = defaults["strength"] if strength is None else strength
    make_renderer = (
        _sessions_renderer(sessions_total, optics)
        if name == "coil100-sessions"
        else _clutter_renderer(datasets_dir, sessions_total, optics)
    )
    if protocol not in ("nic", "nc", "ni"):
        raise DatasetError(f"protocol must be 'nic', 'nc' or 'ni', got {protocol!r}")
    source = Path(datasets_dir) / COIL_DIR
    views = coil_views(source)
    views = {o: views[o] for o in list(views)[:objects]}
    rng = np.random.default_rng([definition_seed, zlib.crc32(name.encode())])
    rare = {int(o) for o in rng.choice(list(views), round(single_arc_fraction * len(views)), False)}
    jobs: list[RenderJob] = []
    units: list[Unit] = []
    unit_sessions: list[int] = []
    test: Split = ([], [])

    def job(obj: int, angle: int, file: str, session: int) -> str:
        dest = f"s{session}/obj{obj}/obj{obj}__{angle}.jpg"
        jobs.append((file, dest, session, obj, angle))
        return dest

    for label, obj in enumerate(views):
        train = [v for v in views[obj] if not _is_coil_test(v[0])]
        sessions = list(enumerate(split_arcs(train, arcs)))
        if obj in rare:
            sessions = [sessions[int(rng.integers(arcs))]]
        for s, arc in sessions:
            units.append((label, [job(obj, a, f, s) for a, f in arc]))
            unit_sessions.append(s)
        held = [v for v in views[obj] if _is_coil_test(v[0])]
        test[0].extend(job(obj, a, f, arcs + i % test_sessions) for i, (a, f) in enumerate(held))
        test[1].extend([label] * len(held))
    meta: dict[str, Any] = {
        "seed": seed,
        "arcs": arcs,
        "test_sessions": test_sessions,
        "single_arc_objects": sorted(f"obj{o}" for o in rare),
        "definition_seed": definition_seed,
        "classes": [f"obj{o}" for o in views],
    }
    if render:
        if image_root is None:
            raise DatasetError(f"{name} renders images: give an image_root to write them to")
        renderer, backgrounds = make_renderer(rng)
        meta["conditions"] = [asdict(c) for c in renderer.conditions]
        meta["backgrounds"] = backgrounds
        meta["renderer"] = {
            k: v for k, v in vars(renderer).items() if k not in ("conditions", "backgrounds")
        }
        definition = {k: v for k, v in meta.items() if k != "seed"}
        meta["render_seconds"] = render_jobs(jobs, renderer, source, image_root, [name, definition])
    order = np.random.default_rng(seed)
    if protocol == "nc":
        batches = nc_batches(units, order, FIRST_BATCH_CLASSES)
    elif protocol == "ni":
        batches = ni_batches(units, unit_sessions, order)
    else:
        batches = nic_batches(units, order)
    return Scenario(
        name=name if protocol == "nic" else f"{name}-{protocol}",
        root=Path(image_root or "images"),
        train_batches=batches,
        test=test,
        meta={**meta, "protocol": protocol},
    )


def _sessions_renderer(
    sessions: int, strength: float
) -> Callable[[np.random.Generator], tuple[SessionRenderer, list[list[str]]]]:
    def make(rng: np.random.Generator) -> tuple[SessionRenderer, list[list[str]]]:
        conditions = [Conditions.random(rng, strength) for _ in range(sessions)]
        renderer = SessionRenderer(conditions, session_backgrounds(sessions, rng))
        return renderer, [["texture"]] * sessions

    return make


def _clutter_renderer(
    datasets_dir: Path, sessions: int, strength: float, per_session: int = 3
) -> Callable[[np.random.Generator], tuple[SessionRenderer, list[list[str]]]]:
    def make(rng: np.random.Generator) -> tuple[SessionRenderer, list[list[str]]]:
        folder = Path(datasets_dir) / PHOTOS_DIR
        if not folder.is_dir():
            raise DatasetError(f"background photographs not found at {folder}")
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpeg", ".jpg")))
        if len(files) < sessions * per_session:
            raise DatasetError(f"{folder}: need {sessions * per_session} photographs")
        chosen = [files[i] for i in rng.choice(len(files), sessions * per_session, False)]
        photos = [read_image(folder / f) for f in chosen]
        conditions = [Conditions.random(rng, strength) for _ in range(sessions)]
        backgrounds = pick_photos(photos, sessions, per_session)
        renderer = SessionRenderer(
            conditions, backgrounds, scale=(0.55, 0.9), shift=1.0, crop_fraction=0.35
        )
        return renderer, [chosen[s * per_session : (s + 1) * per_session] for s in range(sessions)]

    return make


def render_jobs(
    jobs: Sequence[RenderJob],
    renderer: SessionRenderer,
    source: Path,
    image_root: str | os.PathLike[str],
    definition: object,
) -> float:
    """Render ``jobs`` into ``image_root`` as JPEG files; returns the seconds spent.

    Each image draws its randomness from its own (object, angle, session) seed, so the result
    does not depend on the order of the jobs. ``render.json`` records a digest of the
    definition and the jobs: a folder already rendered for the same definition is reused.
    """
    root = Path(image_root)
    defined = json.dumps([RENDER_VERSION, definition], sort_keys=True, default=str)
    image_seed = zlib.crc32(defined.encode())
    digest = hashlib.sha256(json.dumps([defined, sorted(jobs)]).encode()).hexdigest()
    stamp = root / RENDER_STAMP
    try:
        done = json.loads(stamp.read_text(encoding="utf-8")).get("digest") == digest
    except (OSError, ValueError, AttributeError):
        done = False
    if done and all((root / dest).is_file() for _, dest, *_ in jobs):
        return 0.0
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    for file, dest, session, obj, angle in jobs:
        rng = np.random.default_rng([image_seed, obj, angle, session])
        out = renderer.render(read_image(source / file), session, rng)
        path = root / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise DatasetError(f"cannot write rendered image {path}")
    seconds = time.perf_counter() - start
    stamp.write_text(json.dumps({"digest": digest, "images": len(jobs)}) + "\n")
    return round(seconds, 1)


SCENARIOS: dict[str, Builder] = {
    "coil100-s2": partial(coil100, arcs=2),
    "coil100-s4": partial(coil100, arcs=4),
    "coil100-s8": partial(coil100, arcs=8),
    "cifar10-nc": cifar10_nc,
    "cifar10-nic": cifar10_nic,
    "coil100-arc": coil100_arc,
    "coil100-sessions": partial(coil100_reshot, "coil100-sessions"),
    "coil100-clutter": partial(coil100_reshot, "coil100-clutter"),
    "coil100-sessions-nc": partial(coil100_reshot, "coil100-sessions", protocol="nc"),
    "coil100-sessions-ni": partial(coil100_reshot, "coil100-sessions", protocol="ni"),
    "coil100-clutter-nc": partial(coil100_reshot, "coil100-clutter", protocol="nc"),
    "coil100-clutter-ni": partial(coil100_reshot, "coil100-clutter", protocol="ni"),
    "tinyimagenet-nc": tiny_nc,
    "tinyimagenet-nic": tiny_nic,
}


SUITES: dict[str, tuple[str, ...]] = {
    "dev": (
        "coil100-clutter",
        "coil100-clutter-nc",
        "coil100-clutter-ni",
        "cifar10-nic",
        "cifar10-nc",
        "tinyimagenet-nc",
    ),
    "holdout": (
        "coil100-sessions",
        "coil100-sessions-nc",
        "coil100-sessions-ni",
        "tinyimagenet-nic",
    ),
}
"""The tuning discipline (``edge-cl bench --suite dev|holdout``): a learner default may be chosen
on ``dev`` and is only confirmed on ``holdout``, never chosen there. Both hold every stream shape
(small non-i.i.d. batches, large class-incremental batches, new instances of known classes): dev
on the cluttered COIL-100 renders, CIFAR-10 and tiny-imagenet's class-incremental stream;
holdout on the COIL-100 renders with textured backgrounds and held-out sessions and
tiny-imagenet's small-batch stream (which shares its test images with the dev stream
``tinyimagenet-nc``: a dataset, not an image, is new to it)."""


def image_folder(name: str) -> str:
    """The folder (under a study's image cache) that scenario ``name`` renders into: variants of
    one rendered scenario that only reorder its stream share their images.

    >>> image_folder("coil100-sessions-nc"), image_folder("coil100-clutter")
    ('coil100-sessions', 'coil100-clutter')
    """
    base = name.removesuffix("-nc").removesuffix("-ni")
    return base if base in ("coil100-sessions", "coil100-clutter") else name


def available() -> list[str]:
    """Names of the scenarios :func:`generate` knows.

    >>> "coil100-s4" in available()
    True
    """
    return list(SCENARIOS)


def build(
    name: str,
    datasets_dir: str | os.PathLike[str],
    seed: int = 0,
    image_root: str | os.PathLike[str] | None = None,
    render: bool = True,
) -> Scenario:
    """The scenario ``name`` in memory. Rendered variants write their images to ``image_root``
    (required for them unless ``render`` is false, which only plans the stream)."""
    if name not in SCENARIOS:
        raise DatasetError(f"unknown scenario {name!r}; choose one of {available()}")
    folder = Path(datasets_dir)
    if not folder.is_dir():
        raise DatasetError(f"datasets folder {folder} does not exist: set EDGE_CL_DATASETS")
    root = Path(image_root) if image_root is not None else None
    return SCENARIOS[name](folder, seed, root, render)


def generate(
    name: str,
    datasets_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    image_root: str | os.PathLike[str] | None = None,
) -> Scenario:
    """Build scenario ``name`` and write its filelists (and ``scenario.json``) into ``out_dir``.

    Rendered variants write their images under ``image_root`` (default ``out_dir/images``); pass
    one shared ``image_root`` for several seeds to render once.
    """
    out = Path(out_dir)
    scenario = build(name, datasets_dir, seed, image_root or out / "images")
    write_filelists(scenario, out)
    return scenario


def table(datasets_dir: str | os.PathLike[str], seed: int = 0) -> str:
    """A markdown table of every scenario's numbers (rendered variants are planned, not drawn)."""
    rows = [
        "| scenario | batches | images per batch (min/mean/max) | classes in batch 0 | classes "
        "| train | test |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in available():
        d = build(name, datasets_dir, seed, render=False).describe()
        rows.append(
            f"| {name} | {d['batches']} | {d['images_per_batch_min']}/"
            f"{d['images_per_batch_mean']}/{d['images_per_batch_max']} | "
            f"{d['first_batch_classes']} | {d['classes']} | {d['train_images']} | "
            f"{d['test_images']} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge_cl.bench.scenarios [--datasets DIR] [NAME OUT_DIR [--seed N]]``.

    Without a name, prints the protocol table; with one, generates that scenario into OUT_DIR.
    """
    parser = argparse.ArgumentParser(prog="python -m edge_cl.bench.scenarios")
    parser.add_argument("name", nargs="?", choices=available())
    parser.add_argument("out_dir", nargs="?", type=Path)
    parser.add_argument(
        "--datasets", type=Path, default=Path(os.environ.get("EDGE_CL_DATASETS", DEFAULT_DATASETS))
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-root", type=Path, help="rendered images (default OUT_DIR/images)")
    args = parser.parse_args(argv)
    if args.name is None:
        print(table(args.datasets, args.seed))
        return 0
    if args.out_dir is None:
        parser.error("give OUT_DIR after the scenario name")
    start = time.perf_counter()
    s = generate(args.name, args.datasets, args.out_dir, args.seed, args.image_root)
    print(json.dumps({"name": s.name, "root": str(s.root), **s.describe()}))
    print(f"written to {args.out_dir} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
