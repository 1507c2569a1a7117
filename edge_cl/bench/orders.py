"""The orders a stream's units (arcs, sessions, chunks of a class) are cut into batches in.

- :func:`nic_batches`: NICv2-like, as CORe50's protocols: batch 0 merges units of a few classes,
  then every unit is its own small batch, new classes arriving over the first part of the stream
  (:func:`stream_order`) and coming back with new instances;
- :func:`nc_batches`: class-incremental, a few new classes a batch with every unit of each;
- :func:`ni_batches`: new instances, one session a batch.

A unit is ``(label, paths)``; a batch is a :data:`~edge_cl.bench.filelists.Split`. The orders
draw from the ``rng`` they are given, so a seed is an ordering.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_cl.bench.filelists import Label, Split
from edge_cl.errors import DatasetError

FIRST_BATCH_CLASSES = 10
NEW_CLASS_SPAN = 0.75

Unit = tuple[Label, list[str]]


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
