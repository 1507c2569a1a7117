"""Arbitrary user labels (strings or ints) <-> dense class indices used by the numpy heads."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from edge_cl.errors import LabelError

Label = str | int
MAX_LABEL_LENGTH = 64


def check_label(label: object) -> Label:
    """Validate one label: a str of 1 to 64 printable characters (no control characters: a
    label is logged, shown and sent to the MCU), or an int (not bool) of at most 64 bits.

    >>> check_label("red mug"), check_label(7)
    ('red mug', 7)
    >>> check_label("mug\\n[ERROR] x")
    Traceback (most recent call last):
    ...
    edge_cl.errors.LabelError: a label must not hold control characters, got 'mug\\n[ERROR] x'
    """
    if isinstance(label, np.integer):
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise LabelError(f"a label must be a str or an int, got {type(label).__name__}")
    if isinstance(label, int):
        if not -(2**63) <= label < 2**63:
            raise LabelError("an int label must fit in 64 bits")
        return label
    if not 0 < len(label) <= MAX_LABEL_LENGTH:
        raise LabelError(f"a label must have 1 to {MAX_LABEL_LENGTH} characters, got {len(label)}")
    if any(unicodedata.category(c) == "Cc" for c in label):
        raise LabelError(f"a label must not hold control characters, got {label!r}")
    return label


class LabelMap:
    """Maps labels to dense indices in order of first appearance; indices are never reused.

    A forgotten label keeps its index slot retired, so stored weights never change meaning.

    >>> m = LabelMap()
    >>> m.fit(["cup", "pen", "cup"]).tolist()
    [0, 1, 0]
    >>> m.labels
    ['cup', 'pen']
    """

    def __init__(self) -> None:
        self._index: dict[Label, int] = {}
        self._labels: list[Label | None] = []

    @property
    def labels(self) -> list[Label]:
        """Known (not forgotten) labels in index order."""
        return [lab for lab in self._labels if lab is not None]

    @property
    def size(self) -> int:
        """Number of index slots ever used (forgotten ones included)."""
        return len(self._labels)

    def __contains__(self, label: object) -> bool:
        return label in self._index

    def __len__(self) -> int:
        return len(self._index)

    def fit(self, labels: Iterable[object]) -> np.ndarray:
        """Indices of ``labels``, adding the new ones."""
        out = []
        for raw in labels:
            label = check_label(raw)
            if label not in self._index:
                self._index[label] = len(self._labels)
                self._labels.append(label)
            out.append(self._index[label])
        return np.asarray(out, dtype=np.int64)

    def transform(self, labels: Iterable[object]) -> np.ndarray:
        """Indices of known labels; ``LabelError`` for an unknown one."""
        try:
            return np.asarray([self._index[check_label(x)] for x in labels], dtype=np.int64)
        except KeyError as e:
            raise LabelError(f"unknown label {e.args[0]!r}; known: {self.labels}") from e

    def inverse(self, indices: Sequence[int] | np.ndarray) -> list[Label]:
        """Labels of indices."""
        out = []
        for i in np.asarray(indices).tolist():
            lab = self._labels[i] if 0 <= i < len(self._labels) else None
            if lab is None:
                raise LabelError(f"no label at index {i}")
            out.append(lab)
        return out

    def remove(self, label: object) -> int:
        """Forget ``label``; returns its retired index."""
        key = check_label(label)
        if key not in self._index:
            raise LabelError(f"unknown label {key!r}; known: {self.labels}")
        index = self._index.pop(key)
        self._labels[index] = None
        return index

    def rename(self, old: object, new: object) -> int:
        """Give ``old``'s index to the label ``new``; returns that index. ``LabelError`` if
        ``old`` is not known or ``new`` already is (forget it first, or pick another name).

        >>> m = LabelMap()
        >>> _ = m.fit(["cup", "pen"])
        >>> m.rename("cup", "mug"), m.labels
        (0, ['mug', 'pen'])
        """
        key, name = check_label(old), check_label(new)
        if key not in self._index:
            raise LabelError(f"unknown label {key!r}; known: {self.labels}")
        if name in self._index and name != key:
            raise LabelError(
                f"{name!r} is already a class: forget it first, or choose another name"
            )
        index = self._index.pop(key)
        self._index[name] = index
        self._labels[index] = name
        return index

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {"labels": list(self._labels)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LabelMap:
        """Rebuild from :meth:`state_dict`."""
        labels = state["labels"]
        if not isinstance(labels, list):
            raise ValueError(f"labels must be a list, got {type(labels).__name__}")
        m = cls()
        for i, lab in enumerate(labels):
            m._labels.append(lab)
            if lab is not None:
                if lab in m._index:
                    raise ValueError(f"label {lab!r} appears twice")
                m._index[check_label(lab)] = i
        return m
