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
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from edge_cl.bench.coil import coil100, coil100_arc, coil100_reshot
from edge_cl.bench.filelists import Scenario, Split, write_filelists
from edge_cl.bench.orders import Unit, nic_batches
from edge_cl.errors import DatasetError

CIFAR_DIR = Path("cifar10")
TINY_DIR = Path("tiny-imagenet32-100")
DATASET_NAMES = {CIFAR_DIR: "CIFAR-10", TINY_DIR: "tiny-imagenet32-100"}
DEFAULT_DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"

Builder = Callable[[Path, int, Path | None, bool], Scenario]


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
