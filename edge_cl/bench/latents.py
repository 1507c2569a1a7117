"""Latents extracted once per (model, image) and cached on disk.

The extractor below the latent cut is frozen, so an image's latent never changes for a given
model file and resolution: a study that replays a stream under many seeds and strategies
extracts each image once and reads it back afterwards. One *store* per model key (artifact
sha256, resolution, preprocessing parameters and ``preprocess.ALGORITHM``) holds ``index.json``
(image -> shard, row) and float32 ``.npy`` shards of at most ``shard_rows`` latents, read back
memory-mapped. Every file is written to a temporary name then renamed (``os.replace``), shard
before index, so a crash leaves the store readable. An image is keyed by its resolved absolute
path, size and mtime: an edited file is extracted again. A corrupt store is discarded with a
warning and rebuilt. A lock file makes concurrent processes sharing the cache wait for each
other instead of corrupting it.

Sizes: a latent is 4 x 4 x 320 float32 at 128 px (20 KiB: 30,000 images take 600 MiB) and
7 x 7 x 320 at 224 px (61 KiB).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.errors import DatasetError
from edge_cl.extractor.base import Extractor
from edge_cl.images import read_image
from edge_cl.preprocess import ALGORITHM

STORE_VERSION = 1
INDEX_FILE = "index.json"


def model_key(extractor: Extractor) -> str:
    """Store name of an extractor: artifact name, resolution and a digest of what shapes latents.

    >>> from edge_cl.extractor import open_extractor
    >>> model_key(open_extractor("latent", "onnx", "fp32", resolution=224))[:31]
    'lite0_latent_fp32_onnx-224px-dd'
    """
    p = extractor.preprocessing
    what = [extractor.artifact.sha256, p.resolution, p.mean, p.std, p.crop_fraction, ALGORITHM]
    digest = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    return f"{extractor.artifact.name}-{p.resolution}px-{extractor.artifact.sha256[:8]}{digest}"


def _save_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _CorruptStore(Exception):
    """The store on disk is inconsistent; it is discarded and rebuilt (never escapes)."""


class LatentCache:
    """Latents of image files through one extractor, extracted once and kept in ``cache_dir``.

    >>> import shutil, tempfile
    >>> from PIL import Image
    >>> from edge_cl.extractor import open_extractor
    >>> tmp = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp / "red.png")
    >>> cache = LatentCache(tmp / "cache", open_extractor("latent", "onnx", "fp32"))
    >>> cache.get([tmp / "red.png"]).shape, cache.extracted
    ((1, 4, 4, 320), 1)
    >>> cache.get([tmp / "red.png", tmp / "red.png"]).shape, cache.extracted, len(cache)
    ((2, 4, 4, 320), 1, 1)
    >>> shutil.rmtree(tmp)
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        extractor: Extractor,
        batch_size: int = 64,
        shard_rows: int = 1024,
    ) -> None:
        if batch_size < 1 or shard_rows < 1:
            raise ValueError(f"batch_size {batch_size} and shard_rows {shard_rows} must be >= 1")
        self.extractor = extractor
        self.key = model_key(extractor)
        self.store = Path(cache_dir) / self.key
        self.batch_size = batch_size
        self.shard_rows = shard_rows
        self.extracted = 0
        self._entries: dict[str, list[int]] = {}
        self._shards: list[int] = []
        self._shape: tuple[int, ...] | None = None
        self._stamp: tuple[int, int] | None = None
        self._maps: dict[int, np.ndarray] = {}
        self.store.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._refresh()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """Shape of one latent, once known (after the first extraction)."""
        return self._shape

    def get(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Latents ``(n, *latent_shape)`` float32 of ``paths`` in order; extracts missing ones.

        Missing images are read with :func:`~edge_cl.images.read_image` and extracted in
        batches of ``batch_size``; progress is saved every ``shard_rows`` latents. An empty
        request before anything was extracted returns an empty array of shape ``(0,)``.
        """
        with self._locked():
            self._refresh()
            keys: list[str] = []
            stats: dict[str, tuple[int, int]] = {}
            for p in paths:
                real = os.path.realpath(p)
                if real not in stats:
                    try:
                        st = os.stat(real)
                    except OSError as e:
                        raise DatasetError(f"image {os.fspath(p)!r} cannot be read: {e}") from e
                    stats[real] = (st.st_size, st.st_mtime_ns)
                keys.append(real)
            missing = [k for k, s in stats.items() if not self._fresh(k, s)]
            if missing:
                self._extract(missing, stats)
            return self._gather(keys)

    def _fresh(self, key: str, stat: tuple[int, int]) -> bool:
        entry = self._entries.get(key)
        return entry is not None and (entry[0], entry[1]) == stat

    def _extract(self, keys: list[str], stats: dict[str, tuple[int, int]]) -> None:
        pending: list[np.ndarray] = []
        names: list[str] = []
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start : start + self.batch_size]
            z = np.asarray(self.extractor.frames([read_image(k) for k in chunk]), np.float32)
            if z.shape[0] != len(chunk) or (self._shape and z.shape[1:] != self._shape):
                raise ValueError(f"extractor returned {z.shape} for {len(chunk)} images")
            self._shape = tuple(int(d) for d in z.shape[1:])
            self.extracted += len(chunk)
            pending.append(z)
            names += chunk
            if len(names) >= self.shard_rows:
                self._flush(np.concatenate(pending), names, stats)
                pending, names = [], []
        if names:
            self._flush(np.concatenate(pending), names, stats)

    def _flush(self, rows: np.ndarray, names: list[str], stats: dict[str, tuple[int, int]]) -> None:
        """Append ``rows`` to the last shard if it has room, else to a new one; then the index."""
        last = len(self._shards) - 1
        if last >= 0 and self._shards[last] + len(rows) <= self.shard_rows:
            shard, base = last, self._shards[last]
            rows = np.concatenate([np.load(self._shard_path(last))[:base], rows])
        else:
            shard, base = last + 1, 0
            self._shards.append(0)
        _save_atomic(self._shard_path(shard), lambda f: np.save(f, rows))
        self._maps.pop(shard, None)
        self._shards[shard] = len(rows)
        for i, name in enumerate(names):
            self._entries[name] = [*stats[name], shard, base + i]
        index = {
            "version": STORE_VERSION,
            "key": self.key,
            "shape": list(self._shape or ()),
            "shards": self._shards,
            "entries": self._entries,
        }
        _save_atomic(self.store / INDEX_FILE, lambda f: f.write(json.dumps(index).encode()))
        self._stamp = self._index_stamp()

    def _gather(self, keys: list[str]) -> np.ndarray:
        if self._shape is None:
            return np.zeros((len(keys),), np.float32)
        out = np.empty((len(keys), *self._shape), np.float32)
        where: dict[int, tuple[list[int], list[int]]] = {}
        for i, k in enumerate(keys):
            shard, row = self._entries[k][2:]
            positions, rows = where.setdefault(shard, ([], []))
            positions.append(i)
            rows.append(row)
        for shard, (positions, rows) in where.items():
            out[positions] = self._map(shard)[rows]
        return out

    def _map(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.load(self._shard_path(shard), mmap_mode="r")
        return self._maps[shard]

    def _shard_path(self, shard: int) -> Path:
        return self.store / f"shard_{shard:05d}.npy"

    def _index_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.store / INDEX_FILE)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.store / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """(Re)load the index if another process (or nobody yet) wrote it since we read it."""
        stamp = self._index_stamp()
        if stamp is not None and stamp == self._stamp:
            return
        self._maps.clear()
        try:
            self._load()
        except _CorruptStore as e:
            warnings.warn(
                f"latent cache {self.store} is corrupt ({e}); discarding it and extracting again",
                RuntimeWarning,
                stacklevel=3,
            )
            self._reset()
        self._stamp = self._index_stamp()

    def _reset(self) -> None:
        for f in self.store.iterdir():
            if f.suffix in (".npy", ".json", ".tmp"):
                f.unlink(missing_ok=True)
        self._entries, self._shards, self._shape, self._maps = {}, [], None, {}

    def _load(self) -> None:
        path = self.store / INDEX_FILE
        if not path.exists():
            self._reset()
            return
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            if index["version"] != STORE_VERSION or index["key"] != self.key:
                raise _CorruptStore(f"version or key differ in {INDEX_FILE}")
            shape = tuple(int(d) for d in index["shape"])
            shards = [int(n) for n in index["shards"]]
            entries = {str(k): [int(x) for x in v] for k, v in index["entries"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise _CorruptStore(f"unreadable {INDEX_FILE}: {e}") from e
        for shard, rows in enumerate(shards):
            try:
                data = np.load(self._shard_path(shard), mmap_mode="r")
            except (OSError, ValueError, EOFError) as e:
                raise _CorruptStore(f"shard {shard}: {e}") from e
            if data.dtype != np.float32 or data.shape[1:] != shape or len(data) < rows:
                raise _CorruptStore(f"shard {shard} holds {data.dtype} {data.shape}")
            self._maps[shard] = data
        for name, entry in entries.items():
            shard, row = entry[2:] if len(entry) == 4 else (-1, -1)
            if not (0 <= shard < len(shards) and 0 <= row < shards[shard]):
                raise _CorruptStore(f"entry {name!r} points outside the shards")
        self._entries, self._shards, self._shape = entries, shards, shape or None
