"""Latent replay memory for AR1*: past latents, compressed, in a budget of bytes.

A device has a fixed amount of memory for replay, so the memory is sized in bytes: the first
:meth:`ReplayMemory.add` fixes the pattern shape, hence the bytes per pattern (codes, per-channel
ranges and the label) and the number of slots. Every slot is preallocated then, so the memory
never grows and a sampled minibatch is decoded in a few vectorised numpy operations.

Codecs: ``float32`` stores latents as they are (the reference); ``uint8`` and ``uint4`` quantise
each pattern per channel (the last axis) to 256 or 16 levels between its minimum and maximum, the
minimum and step stored as float16, ``uint4`` packing two codes per byte. A 1-D pattern (pooled
features) has no axes to share a channel's range over, so it is quantised as one channel.

``uint8`` with a ``grid`` ``(step, zero)`` stores each value as the code of one grid shared by the
whole memory, ``value = (code - zero) * step``, and no per-pattern ranges: an int8 extractor's
latents already lie on such a grid (``Artifact.output_grid``), so they are stored exactly in one
byte per value. Values off the grid round to the nearest code; values beyond it clip.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from edge_cl.errors import CheckpointError, FrameError, LabelError

CODECS = ("float32", "uint8", "uint4")
POLICIES = ("uniform", "class_balanced")
LABEL_DTYPE = np.dtype(np.int32)
STATE_VERSION = 1
MAX_BYTES = 4 << 30
"""The largest memory a budget may ask for (4 GiB): no edge device holds more, and a crafted
checkpoint must not make a load allocate what the machine does not have."""
F16_MAX = float(np.finfo(np.float16).max)
_LEVELS = {"uint8": 256, "uint4": 16}
Grid = tuple[float, int]


def check_grid(grid: object, codec: str) -> Grid | None:
    """``grid`` as ``(step, zero)`` floats/ints, or None; ``ValueError`` if unusable.

    >>> check_grid([0.25, 131], "uint8")
    (0.25, 131)
    """
    if grid is None:
        return None
    if codec != "uint8":
        raise ValueError(f"a replay grid stores uint8 codes; codec {codec!r} cannot use one")
    if not isinstance(grid, tuple | list) or len(grid) != 2:
        raise ValueError(f"a replay grid is (step, zero), got {grid!r}")
    step, zero = grid
    if isinstance(step, bool) or not isinstance(step, float | int) or not 0 < step < math.inf:
        raise ValueError(f"a replay grid step must be a positive finite number, got {step!r}")
    if isinstance(zero, bool) or not isinstance(zero, int) or not 0 <= zero <= 255:
        raise ValueError(f"a replay grid zero must be an int code in 0..255, got {zero!r}")
    return float(step), int(zero)


def _groups(shape: Sequence[int]) -> tuple[int, int]:
    """(positions, channels) of a pattern: channels are the last axis; a 1-D pattern is one."""
    if len(shape) >= 2:
        return math.prod(shape[:-1]), shape[-1]
    return math.prod(shape), 1


def _f16_down(v: np.ndarray) -> np.ndarray:
    """float16 values <= ``v`` (nearest below), so no value falls under a stored minimum."""
    h = v.astype(np.float16)
    over = h.astype(np.float32) > v
    h[over] = np.nextafter(h[over], np.float16(-np.inf))
    return h


def _f16_up(v: np.ndarray) -> np.ndarray:
    """float16 values >= ``v`` (nearest above), so a stored step still spans the range."""
    h = v.astype(np.float16)
    under = h.astype(np.float32) < v
    h[under] = np.nextafter(h[under], np.float16(np.inf))
    return h


def quantize(x: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pattern, per-channel affine codes of ``x`` (n, *shape): ``(q, minimum, scale)``.

    ``q`` (uint8, same shape) is in ``0 .. levels - 1``; ``minimum`` and ``scale`` are float16
    of shape (n, channels), rounded so that ``q * scale + minimum`` is within ``scale / 2`` of x.
    A constant channel with a float16-exact value gets scale 0 and decodes exactly.

    >>> q, lo, scale = quantize(np.array([[[0.0, 3.0], [127.5, 3.0]]], np.float32), 256)
    >>> q.tolist(), lo.tolist(), scale.tolist()
    ([[[0, 0], [255, 0]]], [[0.0, 3.0]], [[0.5, 0.0]])
    """
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in 2..256, got {levels}")
    x = np.asarray(x, np.float32)
    n = x.shape[0]
    positions, channels = _groups(x.shape[1:])
    if x.size and float(np.abs(x).max()) > F16_MAX:
        raise ValueError(
            f"quantised codecs store ranges as float16: values must be within +-{F16_MAX:g}, "
            f"got {float(np.abs(x).max()):g}; use codec='float32'"
        )
    xv = x.reshape(n, positions, channels)
    lo = _f16_down(xv.min(axis=1))
    hi = xv.max(axis=1)
    scale = _f16_up((hi - lo.astype(np.float32)) / np.float32(levels - 1))
    s = scale.astype(np.float32)[:, None, :]
    t = np.divide(xv - lo.astype(np.float32)[:, None, :], s, out=np.zeros_like(xv), where=s > 0)
    np.clip(np.rint(t, out=t), 0, levels - 1, out=t)
    return t.astype(np.uint8).reshape(x.shape), lo, scale


def dequantize(
    q: np.ndarray, lo: np.ndarray, scale: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """float32 ``q * scale + lo`` per channel, written to ``out`` (C-contiguous) if given."""
    n = q.shape[0]
    positions, channels = _groups(q.shape[1:])
    if out is None:
        out = np.empty(q.shape, np.float32)
    if out.dtype != np.float32 or out.shape != q.shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {q.shape}")
    ov = out.reshape(n, positions, channels)
    np.multiply(q.reshape(n, positions, channels), scale.astype(np.float32)[:, None, :], out=ov)
    ov += lo.astype(np.float32)[:, None, :]
    return out


def pack_uint4(q: np.ndarray) -> np.ndarray:
    """Two 4-bit codes per byte: (n, *shape) uint8 < 16 -> (n, ceil(size / 2)) uint8.

    >>> pack_uint4(np.array([[1, 2, 15]], np.uint8)).tolist()
    [[33, 15]]
    """
    n, size = q.shape[0], math.prod(q.shape[1:])
    flat = q.reshape(n, size)
    if size % 2:
        flat = np.concatenate([flat, np.zeros((n, 1), np.uint8)], axis=1)
    pairs = flat.reshape(n, (size + 1) // 2, 2)
    packed: np.ndarray = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).astype(np.uint8)
    return packed


def unpack_uint4(packed: np.ndarray, size: int) -> np.ndarray:
    """Inverse of :func:`pack_uint4`: (n, bytes) uint8 -> (n, size) codes.

    >>> unpack_uint4(np.array([[33, 15]], np.uint8), 3).tolist()
    [[1, 2, 15]]
    """
    n = packed.shape[0]
    both = np.stack([packed & 0x0F, packed >> 4], axis=-1)
    return both.reshape(n, 2 * packed.shape[1])[:, :size]


class Codec:
    """How patterns of one shape are stored: field layout per pattern, encode and decode.

    ``encode`` turns (n, *shape) float32 into named arrays with a leading axis n (``data``,
    plus ``lo`` and ``scale`` for the quantised codecs without a ``grid``); ``decode`` inverts
    it, optionally only for ``rows`` of the fields and into a caller's buffer.

    >>> codec = Codec("uint4", (2, 3))
    >>> codec.bytes_per_pattern  # 3 bytes of codes + 3 float16 minima + 3 float16 steps
    15
    >>> x = np.array([[[0.0, 1.0, 2.0], [7.5, 1.0, 2.0]]], np.float32)
    >>> codec.decode(codec.encode(x)).tolist()
    [[[0.0, 1.0, 2.0], [7.5, 1.0, 2.0]]]
    >>> on_grid = Codec("uint8", (2, 3), grid=(0.5, 4))
    >>> on_grid.bytes_per_pattern, on_grid.encode(x)["data"].tolist()
    (6, [[[4, 6, 8], [19, 6, 8]]])
    """

    def __init__(self, name: str, shape: Sequence[int], grid: Grid | None = None) -> None:
        if name not in CODECS:
            raise ValueError(f"unknown codec {name!r}; choose one of {CODECS}")
        self.grid = check_grid(grid, name)
        self.name = name
        self.shape = tuple(int(d) for d in shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"a pattern needs at least one axis of positive size, got {shape}")
        self.size = math.prod(self.shape)
        channels = _groups(self.shape)[1]
        self.fields: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        if name == "float32":
            self.fields["data"] = (self.shape, np.dtype(np.float32))
        elif name == "uint8":
            self.fields["data"] = (self.shape, np.dtype(np.uint8))
        else:
            self.fields["data"] = (((self.size + 1) // 2,), np.dtype(np.uint8))
        if name != "float32" and self.grid is None:
            self.fields["lo"] = ((channels,), np.dtype(np.float16))
            self.fields["scale"] = ((channels,), np.dtype(np.float16))

    @property
    def bytes_per_pattern(self) -> int:
        """Bytes one pattern takes in all fields."""
        return sum(math.prod(s) * dt.itemsize for s, dt in self.fields.values())

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Fields of ``x`` (n, *shape) float32, each with leading axis n."""
        x = np.asarray(x, np.float32)
        if x.shape[1:] != self.shape:
            raise ValueError(f"patterns of shape {x.shape[1:]}, this codec stores {self.shape}")
        if self.name == "float32":
            return {"data": x.copy()}
        if self.grid is not None:
            step, zero = self.grid
            t = x / np.float32(step)
            np.rint(t, out=t)
            t += zero
            return {"data": np.clip(t, 0, 255, out=t).astype(np.uint8)}
        q, lo, scale = quantize(x, _LEVELS[self.name])
        data = q if self.name == "uint8" else pack_uint4(q)
        return {"data": data, "lo": lo, "scale": scale}

    def decode(
        self,
        fields: Mapping[str, np.ndarray],
        rows: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 patterns of ``fields`` (only ``rows`` if given), into ``out`` if given."""
        n = len(fields["data"]) if rows is None else len(rows)
        if out is None:
            out = np.empty((n, *self.shape), np.float32)
        if self.name == "float32":
            np.take(fields["data"], np.arange(n) if rows is None else rows, axis=0, out=out)
            return out
        data = fields["data"] if rows is None else fields["data"][rows]
        if self.grid is not None:
            step, zero = self.grid
            np.subtract(data.reshape(out.shape), np.float32(zero), out=out)
            out *= np.float32(step)
            return out
        lo = fields["lo"] if rows is None else fields["lo"][rows]
        scale = fields["scale"] if rows is None else fields["scale"][rows]
        if self.name == "uint4":
            data = unpack_uint4(data, self.size)
        return dequantize(data.reshape(n, *self.shape), lo, scale, out=out)


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _water_fill(avail: np.ndarray, capacity: int, prefer: np.ndarray) -> np.ndarray:
    """Equal per-class quotas in ``capacity``; a class with fewer patterns leaves its share.

    Quotas are the largest level L with ``sum(min(avail, L)) <= capacity``; the remaining slots
    go, one each, to the classes above L with the most ``prefer`` (stored: fewer evictions).
    """
    if int(avail.sum()) <= capacity:
        return avail.copy()
    low, high = 0, int(avail.max())
    while low < high:
        mid = (low + high + 1) // 2
        if int(np.minimum(avail, mid).sum()) <= capacity:
            low = mid
        else:
            high = mid - 1
    target: np.ndarray = np.minimum(avail, low)
    capped = np.flatnonzero(avail > low)
    order = capped[np.argsort(-prefer[capped], kind="stable")]
    target[order[: capacity - int(target.sum())]] += 1
    return target


class ReplayMemory:
    """A bounded memory of past latents and their class indices, mixed into training batches.

    ``capacity = max_bytes // bytes_per_pattern`` slots are allocated on the first :meth:`add`.
    Policy ``uniform`` is AR1*'s rule: after batch i, ``h = min(capacity // (i + 1), N)`` random
    new patterns go into free slots first, then over random stored ones, so every past batch
    keeps about an equal share. ``class_balanced`` gives every class an equal quota (one more
    for some when slots do not divide evenly; a class with fewer patterns leaves the rest of its
    quota to the others), evicting random patterns of classes over quota, and refreshes a class
    that comes back with a random mix of its stored and new patterns.

    >>> memory = ReplayMemory(max_bytes=100_000, codec="uint8")
    >>> x = np.random.default_rng(0).random((8, 4, 4, 32), dtype=np.float32)
    >>> memory.add(x, np.arange(8) % 2, batch_index=0)
    >>> memory.capacity, len(memory), memory.bytes_per_pattern, memory.counts()
    (155, 8, 644, {0: 4, 1: 4})
    >>> xs, ys = memory.sample(3)
    >>> xs.shape, xs.dtype, ys.shape
    ((3, 4, 4, 32), dtype('float32'), (3,))

    With the ``grid`` its latents lie on (an int8 extractor's output), a pattern takes one byte
    per value:

    >>> on_grid = ReplayMemory(max_bytes=100_000, grid=(0.25, 128))
    >>> on_grid.add(x, np.arange(8) % 2, batch_index=0)
    >>> on_grid.capacity, on_grid.bytes_per_pattern
    (193, 516)
    """

    def __init__(
        self,
        max_bytes: int,
        codec: str = "uint8",
        policy: str = "uniform",
        seed: int = 0,
        grid: Grid | None = None,
    ) -> None:
        self.max_bytes = _check_int(max_bytes, "max_bytes", 1)
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {CODECS}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {POLICIES}")
        self.grid = check_grid(grid, codec)
        self.codec = codec
        self.policy = policy
        self.seed = _check_int(seed, "seed", 0)
        self._rng = np.random.default_rng(self.seed)
        self._codec: Codec | None = None
        self._store: dict[str, np.ndarray] = {}
        self._labels = np.zeros(0, LABEL_DTYPE)
        self._size = 0

    # ----------------------------------------------------------------------------- layout
    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of one pattern, fixed by the first :meth:`add` (None before)."""
        return None if self._codec is None else self._codec.shape

    @property
    def bytes_per_pattern(self) -> int:
        """Bytes of one slot: codes, per-channel ranges and label (0 before the first add)."""
        if self._codec is None:
            return 0
        return self._codec.bytes_per_pattern + LABEL_DTYPE.itemsize

    @property
    def capacity(self) -> int:
        """Number of slots (0 before the first add)."""
        return len(self._labels)

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays, measured on the arrays."""
        return self._labels.nbytes + sum(a.nbytes for a in self._store.values())

    @property
    def labels(self) -> np.ndarray:
        """Class indices of the filled slots (int64, a copy)."""
        return self._labels[: self._size].astype(np.int64)

    def __len__(self) -> int:
        return self._size

    def counts(self) -> dict[int, int]:
        """Stored patterns per class index."""
        classes, counts = np.unique(self._labels[: self._size], return_counts=True)
        return dict(zip(classes.tolist(), counts.tolist(), strict=True))

    def footprint(self) -> dict[str, int | float | str | None]:
        """Codec, capacity, fill, bytes and compression ratio against float32 storage."""
        ratio = None
        if self.shape is not None:
            reference = Codec("float32", self.shape).bytes_per_pattern + LABEL_DTYPE.itemsize
            ratio = reference / self.bytes_per_pattern
        return {
            "codec": self.codec,
            "grid": None if self.grid is None else "step {:g}, zero {}".format(*self.grid),
            "policy": self.policy,
            "capacity": self.capacity,
            "filled": len(self),
            "bytes_per_pattern": self.bytes_per_pattern,
            "nbytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "compression_ratio": ratio,
        }

    def _allocate(self, shape: Sequence[int]) -> None:
        codec = Codec(self.codec, shape, self.grid)
        per_pattern = codec.bytes_per_pattern + LABEL_DTYPE.itemsize
        capacity = self.max_bytes // per_pattern
        if capacity < 1:
            raise ValueError(
                f"max_bytes={self.max_bytes} holds no pattern of shape {codec.shape} with codec "
                f"{self.codec!r} ({per_pattern} bytes each); raise max_bytes or use a smaller codec"
            )
        self._codec = codec
        self._store = {name: np.zeros((capacity, *s), dt) for name, (s, dt) in codec.fields.items()}
        self._labels = np.zeros(capacity, LABEL_DTYPE)

    # ----------------------------------------------------------------------------- adding
    def _check_batch(
        self, latents: np.ndarray, labels: np.ndarray | Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(latents)
        if x.dtype == np.bool_ or not (
            np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
        ):
            raise FrameError(f"latents must be real numbers, got dtype {x.dtype}")
        if x.ndim < 2:
            raise FrameError(f"latents must be (n, *pattern_shape), got shape {x.shape}")
        if self.shape is not None and x.shape[1:] != self.shape:
            raise FrameError(
                f"latents of pattern shape {x.shape[1:]}, but this memory stores {self.shape} "
                "(fixed by the first add)"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise FrameError("latents contain NaN or infinite values")
        if (
            self.codec != "float32"
            and self.grid is None
            and x.size
            and float(np.abs(x).max()) > F16_MAX
        ):
            raise FrameError(
                f"codec {self.codec!r} stores ranges as float16: latents must be within "
                f"+-{F16_MAX:g}; use codec='float32'"
            )
        y = np.asarray(labels)
        if y.ndim != 1 or len(y) != len(x):
            raise LabelError(f"{len(x)} latents but labels of shape {y.shape}")
        if y.size and (y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer)):
            raise LabelError(f"labels must be integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() > np.iinfo(LABEL_DTYPE).max):
            raise LabelError(
                f"class indices must be in 0..{np.iinfo(LABEL_DTYPE).max}, got {y.min()}..{y.max()}"
            )
        return x, y

    def add(
        self, latents: np.ndarray, labels: np.ndarray | Sequence[int], batch_index: int
    ) -> None:
        """Offer the N patterns of incremental batch ``batch_index`` (0-based) to the memory."""
        batch_index = _check_int(batch_index, "batch_index", 0)
        x, y = self._check_batch(latents, labels)
        if self._codec is None:
            self._allocate(x.shape[1:])
        if self.policy == "uniform":
            self._add_uniform(x, y, batch_index)
        else:
            self._add_balanced(x, y)

    def _add_uniform(self, x: np.ndarray, y: np.ndarray, batch_index: int) -> None:
        h = min(self.capacity // (batch_index + 1), len(x))
        if h == 0:
            return
        pick = self._rng.choice(len(x), h, replace=False)
        over = h - min(h, self.capacity - self._size)
        evict = self._rng.choice(self._size, over, replace=False) if over else np.zeros(0, np.int64)
        self._place(evict, x[pick], y[pick])

    def _add_balanced(self, x: np.ndarray, y: np.ndarray) -> None:
        n = self._size
        classes, inverse = np.unique(np.concatenate([self._labels[:n], y]), return_inverse=True)
        inverse = inverse.reshape(-1)
        stored = np.bincount(inverse[:n], minlength=len(classes))
        new = np.bincount(inverse[n:], minlength=len(classes))
        target = _water_fill(stored + new, self.capacity, prefer=stored)
        evict, take = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for j in np.flatnonzero((new > 0) | (target < stored)):
            old_slots = np.flatnonzero(inverse[:n] == j)
            rows = np.flatnonzero(inverse[n:] == j)
            rows = self._rng.choice(rows, min(len(rows), int(target[j])), replace=False)
            pool = len(old_slots) + len(rows)
            keep = np.zeros(pool, bool)
            keep[self._rng.choice(pool, int(target[j]), replace=False)] = True
            evict.append(old_slots[~keep[: len(old_slots)]])
            take.append(rows[keep[len(old_slots) :]])
        rows = np.concatenate(take)
        self._place(np.concatenate(evict), x[rows], y[rows])

    def _place(self, evict: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Write new patterns over ``evict`` slots, then into free slots; drop unused evictions."""
        extra = len(x) - len(evict)
        if extra <= 0:
            self._write(evict[: len(x)], x, y)
            self._compact(evict[len(x) :])
            return
        slots = np.concatenate([evict, np.arange(self._size, self._size + extra)])
        self._size += extra
        self._write(slots, x, y)

    def _write(self, slots: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        if not len(slots):
            return
        assert self._codec is not None
        for name, values in self._codec.encode(x).items():
            self._store[name][slots] = values
        self._labels[slots] = y

    def _compact(self, remove: np.ndarray) -> None:
        """Drop the patterns in ``remove`` slots, moving the last ones into the holes."""
        if not len(remove):
            return
        keep = self._size - len(remove)
        gone = np.zeros(self._size, bool)
        gone[remove] = True
        holes = np.flatnonzero(gone[:keep])
        movers = keep + np.flatnonzero(~gone[keep:])
        for a in (*self._store.values(), self._labels):
            a[holes] = a[movers]
        self._size = keep

    def forget(self, class_index: int) -> int:
        """Remove every pattern of ``class_index``; returns how many. Freed slots are reused."""
        if isinstance(class_index, bool) or not isinstance(class_index, int | np.integer):
            raise LabelError(f"a class index must be an int, got {type(class_index).__name__}")
        remove = np.flatnonzero(self._labels[: self._size] == class_index)
        self._compact(remove)
        return len(remove)

    # --------------------------------------------------------------------------- reading
    def _rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(indices)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ValueError(f"indices must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        rows = rows.astype(np.intp)
        if rows.size and (rows.min() < 0 or rows.max() >= self._size):
            raise ValueError(
                f"indices must be in 0..{self._size - 1}, got {rows.min()}..{rows.max()}"
            )
        return rows

    def decode_into(self, indices: Sequence[int] | np.ndarray, out: np.ndarray) -> np.ndarray:
        """Decode stored patterns ``indices`` into ``out`` (len(indices), *shape) float32."""
        rows = self._rows(indices)
        if self._codec is None:
            raise ValueError("the replay memory is empty: add patterns first")
        want = (len(rows), *self._codec.shape)
        if out.dtype != np.float32 or out.shape != want or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {want}")
        return self._codec.decode(self._store, rows=rows, out=out)

    def get(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded float32 patterns at ``indices`` (0 <= i < len) and their class indices."""
        rows = self._rows(indices)
        if self._codec is None:
            raise ValueError("the replay memory is empty: add patterns first")
        out = np.empty((len(rows), *self._codec.shape), np.float32)
        self._codec.decode(self._store, rows=rows, out=out)
        return out, self._labels[rows].astype(np.int64)

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored pattern, decoded, in slot order, with its class index."""
        return self.get(np.arange(self._size))

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``k`` random stored patterns (without replacement when k <= len) and their labels."""
        k = _check_int(k, "k", 0)
        if self._size == 0:
            raise ValueError("the replay memory is empty: add patterns before sampling")
        if k <= self._size:
            rows = self._rng.choice(self._size, k, replace=False)
        else:
            rows = self._rng.integers(0, self._size, size=k)
        return self.get(rows)

    # --------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray | int | str]:
        """Settings, RNG state and the filled part of every array: enough to continue exactly.

        Non-array values are JSON-ready; ``shape`` is empty before the first add.
        """
        state: dict[str, np.ndarray | int | str] = {
            "version": STATE_VERSION,
            "max_bytes": self.max_bytes,
            "codec": self.codec,
            "grid": json.dumps(self.grid),
            "policy": self.policy,
            "seed": self.seed,
            "rng": json.dumps(self._rng.bit_generator.state),
            "size": self._size,
            "shape": np.asarray(self.shape or (), np.int64),
        }
        if self._codec is not None:
            for name, a in self._store.items():
                state[name] = a[: self._size].copy()
            state["labels"] = self._labels[: self._size].copy()
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, object]) -> ReplayMemory:
        """Rebuild from :meth:`state_dict`; ``CheckpointError`` if anything is missing or off."""

        def need(key: str) -> object:
            if key not in state:
                raise CheckpointError(f"replay state lacks {key!r}")
            return state[key]

        def integer(key: str) -> int:
            value = need(key)
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise CheckpointError(f"replay state {key!r} must be an int, got {value!r}")
            return int(value)

        version = integer("version")
        if version != STATE_VERSION:
            raise CheckpointError(
                f"replay state version {version}; this edge_cl reads version {STATE_VERSION}"
            )
        max_bytes = integer("max_bytes")
        if max_bytes > MAX_BYTES:
            raise CheckpointError(
                f"replay state asks for a {max_bytes}-byte memory, more than the {MAX_BYTES} "
                "any device holds"
            )
        try:
            grid = json.loads(str(state.get("grid", "null")))  # absent before grids: none
            memory = cls(
                max_bytes,
                str(need("codec")),
                str(need("policy")),
                integer("seed"),
                grid,
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"replay state has unusable settings: {e}") from e
        try:
            memory._rng.bit_generator.state = json.loads(str(need("rng")))
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"replay state has an unusable RNG state: {e}") from e
        shape = np.asarray(need("shape"))
        size = integer("size")
        if shape.ndim != 1 or (shape.size and not np.issubdtype(shape.dtype, np.integer)):
            raise CheckpointError(f"replay state shape must be a 1-D int array, got {shape!r}")
        if shape.size == 0:
            if size:
                raise CheckpointError(f"replay state holds {size} patterns but no pattern shape")
            return memory
        try:
            memory._allocate(shape.tolist())
        except ValueError as e:
            raise CheckpointError(f"replay state does not fit its own budget: {e}") from e
        if not 0 <= size <= memory.capacity:
            raise CheckpointError(
                f"replay state holds {size} patterns, its budget has {memory.capacity} slots"
            )
        assert memory._codec is not None
        layout = {**memory._codec.fields, "labels": ((), LABEL_DTYPE)}
        for name, (field_shape, dtype) in layout.items():
            a = need(name)
            want = (size, *field_shape)
            if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != want:
                got = (a.dtype, a.shape) if isinstance(a, np.ndarray) else type(a).__name__
                raise CheckpointError(
                    f"replay state array {name!r} must be {dtype} of shape {want}, got {got}"
                )
        labels = np.asarray(state["labels"])
        if size and labels.min() < 0:
            raise CheckpointError("replay state has negative class indices")
        arrays = {name: np.asarray(state[name]) for name in memory._store}
        for name, a in arrays.items():
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise CheckpointError(f"replay state array {name!r} has non-finite values")
        if size and "scale" in arrays and arrays["scale"].min() < 0:
            raise CheckpointError("replay state has negative quantisation steps")
        for name, a in memory._store.items():
            a[:size] = arrays[name]
        memory._labels[:size] = labels
        memory._size = size
        return memory
