"""Latents extracted once per (model, image) and cached on disk, in append-only shards.

The extractor below the latent cut is frozen, so an image's latent never changes for a given
model file and resolution: a study that replays a stream under many seeds and strategies
extracts each image once and reads it back afterwards. One *store* per model key (artifact
sha256, resolution, preprocessing parameters and ``preprocess.ALGORITHM``) is a folder of
shards: ``shard_NNNNN.npy`` (float32 latents, read back memory-mapped) and its record
``shard_NNNNN.json`` (which image, by size and mtime, is in which row). A shard and its record
are written once and never rewritten: a lookup that extracts something adds new shards, so the
bytes a study writes are about the size of the store (an SD card is not worn by rewrites), and
the index is the union of the records, read at load. No file grows.

- Each file is written to a temporary name, synced, then renamed (``os.replace``), the shard
  before its record, so a crash leaves the store readable: a shard without its record is
  ignored and removed, and its images are extracted again.
- An image is keyed by its resolved absolute path, size and mtime: an edited file is extracted
  again into a new shard, and the newer record wins over the older one for that image.
- A lookup's missing images go into shards of ``shard_rows`` latents, the last one smaller; a
  later lookup adds a new shard and never tops up an old one. So each lookup that extracts
  something adds at least one shard: ``edge-cl bench`` asks a whole batch at a time, and its
  NIC batches are small (40 or 50 images: the 43,000 images of tinyimagenet-nic and
  cifar10-nic make 794 shards of 0.8 to 20 MiB); a caller that asks one image at a time makes
  one shard per image, and one that asks a whole stream at once full shards (42 here).
- A corrupt store is discarded with a warning and rebuilt; so is a store of another
  ``STORE_VERSION`` (version 1 kept one ``index.json`` rewritten on every extraction).
- A lock file makes concurrent processes sharing the cache wait for each other instead of
  corrupting it; :meth:`LatentCache.clear` and :func:`clear_cache` remove stores under it.

Sizes: a latent is 4 x 4 x 320 float32 at 128 px (20 KiB: 30,000 images take 600 MiB) and
7 x 7 x 320 at 224 px (61 KiB); a record adds about 100 bytes an image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.errors import DatasetError
from edge_cl.extractor.base import Extractor
from edge_cl.images import read_image
from edge_cl.preprocess import ALGORITHM

STORE_VERSION = 2
LOCK_FILE = ".lock"
LEGACY_INDEX = "index.json"
"""The one index file of a version-1 store: its presence marks a store to discard."""
SHARD = re.compile(r"shard_(\d+)\.(npy|json)")


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


def _is_store_file(name: str) -> bool:
    """Whether the store wrote ``name``: shards, records, a version-1 index, temporary files."""
    return bool(SHARD.fullmatch(name)) or name == LEGACY_INDEX or _is_temporary(name)


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _sync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable, so a shard is on disk before its record."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename order still holds
        pass
    finally:
        os.close(fd)


def _save_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _sync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _store_lock(store: Path) -> Iterator[None]:
    """Hold the store's lock file, creating the folder if needed.

    Clearing a store removes its lock file while holding it, so a process that was waiting on
    the removed file takes the lock again on the file now at that path."""
    while True:
        store.mkdir(parents=True, exist_ok=True)
        try:
            lock = (store / LOCK_FILE).open("a")
        except FileNotFoundError:  # the folder was removed between mkdir and open
            continue
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            held = os.fstat(lock.fileno())
            try:
                now = os.stat(store / LOCK_FILE)
            except FileNotFoundError:
                continue
            if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
                continue
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
            return


def _store_bytes(store: Path) -> int:
    """Bytes of the files in ``store`` (0 if it does not exist)."""
    total = 0
    try:
        entries = list(os.scandir(store))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


def _remove_store(store: Path) -> int:
    """Remove the files the store wrote, its lock file and its folder; the bytes freed.

    Call it holding the store's lock. Files the store did not write are left, and so is the
    folder if any remain."""
    freed = 0
    for entry in list(os.scandir(store)):
        if _is_store_file(entry.name) and entry.is_file(follow_symlinks=False):
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
            freed += size
    (store / LOCK_FILE).unlink(missing_ok=True)
    with suppress(OSError):  # other files remain: not ours to delete
        store.rmdir()
    return freed


def clear_cache(cache_dir: str | os.PathLike[str]) -> int:
    """Remove every store (every model's latents, any version) under ``cache_dir``; the bytes
    freed. Each store is removed under its lock; ``cache_dir`` itself and files the cache did
    not write stay.

    >>> import tempfile
    >>> from edge_cl.extractor import open_extractor
    >>> folder = Path(tempfile.mkdtemp())
    >>> cache = LatentCache(folder, open_extractor("latent", "onnx", "fp32"))
    >>> clear_cache(folder), list(folder.iterdir())
    (0, [])
    >>> folder.rmdir()
    """
    root = Path(cache_dir)
    if not root.is_dir():
        return 0
    freed = 0
    for store in sorted(root.iterdir()):
        if not store.is_dir() or store.is_symlink():
            continue
        try:
            names = os.listdir(store)
        except FileNotFoundError:  # removed meanwhile by another process
            continue
        if LOCK_FILE in names or any(_is_store_file(n) for n in names):
            with _store_lock(store):
                freed += _remove_store(store)
    return freed


class _CorruptStore(Exception):
    """The store on disk is inconsistent; it is discarded and rebuilt (never escapes)."""


class _OtherVersion(_CorruptStore):
    """The store was written by another ``STORE_VERSION``; it is discarded and rebuilt."""


Stamp = tuple[int, int, int]
"""Inode, mtime (ns) and size of a record file: a record that changed was not ours to keep."""


class LatentCache:
    """Latents of image files through one extractor, extracted once and kept in ``cache_dir``,
    in this model's folder ``store`` (``nbytes`` on disk).

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
    >>> sorted(p.name for p in cache.store.glob("shard_*")), cache.nbytes > 20480
    (['shard_00000.json', 'shard_00000.npy'], True)
    >>> cache.clear() > 20480, cache.nbytes, len(cache)
    (True, 0, 0)
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
        self._forget()
        with self._locked():
            self._refresh()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """Shape of one latent, once known (after the first extraction)."""
        return self._shape

    @property
    def nbytes(self) -> int:
        """Bytes of this model's store on disk (the sizes of its files), as it is now."""
        return _store_bytes(self.store)

    def clear(self) -> int:
        """Remove this model's store, under its lock; the bytes freed. Later lookups extract
        again; other processes using the store notice and extract again too."""
        with self._locked():
            freed = _remove_store(self.store)
            self._forget()
        return freed

    def get(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Latents ``(n, *latent_shape)`` float32 of ``paths`` in order; extracts missing ones.

        Missing images are read with :func:`~edge_cl.images.read_image` and extracted in
        batches of ``batch_size``; progress is saved every ``shard_rows`` latents, and at the
        end in one shard of what is left. An empty request before anything was extracted
        returns an empty array of shape ``(0,)``.
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

    def _forget(self) -> None:
        """Drop what is known of the store in memory (not the files)."""
        self._entries: dict[str, tuple[int, int, int, int]] = {}  # size, mtime, shard, row
        self._records: dict[int, Stamp] = {}
        self._maps: dict[int, np.ndarray] = {}
        self._shape: tuple[int, ...] | None = None
        self._next = 0

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
                rows = np.concatenate(pending)
                self._flush(rows[: self.shard_rows], names[: self.shard_rows], stats)
                pending, names = [rows[self.shard_rows :]], names[self.shard_rows :]
        if names:
            self._flush(np.concatenate(pending), names, stats)

    def _flush(self, rows: np.ndarray, names: list[str], stats: dict[str, tuple[int, int]]) -> None:
        """Write ``rows`` as a new shard, then its record; never touches an existing shard."""
        shard = self._next
        npy, record_path = self._paths(shard)
        _save_atomic(npy, lambda f: np.save(f, rows))
        record = {
            "version": STORE_VERSION,
            "key": self.key,
            "shape": list(rows.shape[1:]),
            "rows": len(rows),
            "images": [[name, *stats[name]] for name in names],
        }
        _save_atomic(record_path, lambda f: f.write(json.dumps(record).encode()))
        st = os.stat(record_path)
        self._records[shard] = (st.st_ino, st.st_mtime_ns, st.st_size)
        for row, name in enumerate(names):
            self._entries[name] = (*stats[name], shard, row)
        self._next = shard + 1

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
            self._maps[shard] = np.load(self._paths(shard)[0], mmap_mode="r")
        return self._maps[shard]

    def _paths(self, shard: int) -> tuple[Path, Path]:
        """The shard's latents and its record."""
        return self.store / f"shard_{shard:05d}.npy", self.store / f"shard_{shard:05d}.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with _store_lock(self.store):
            yield

    def _refresh(self) -> None:
        """Read the records written since we last looked (by another process, or before we
        started); discard the store, with a warning, if it is corrupt or of another version."""
        try:
            self._sync()
        except _CorruptStore as e:
            why = "of another version" if isinstance(e, _OtherVersion) else "corrupt"
            warnings.warn(
                f"latent cache {self.store} is {why} ({e}); discarding it and extracting again",
                RuntimeWarning,
                stacklevel=3,
            )
            self._reset()

    def _reset(self) -> None:
        for entry in list(os.scandir(self.store)):
            if _is_store_file(entry.name):
                os.unlink(entry.path)
        self._forget()

    def _sync(self) -> None:
        """Bring the in-memory index up to the records on disk; remove what a crash left."""
        records: dict[int, Stamp] = {}
        shards: set[int] = set()
        numbers: set[int] = set()
        for entry in os.scandir(self.store):
            if entry.name == LEGACY_INDEX:
                raise _OtherVersion(f"{LEGACY_INDEX} of a store version 1")
            if _is_temporary(entry.name):  # a crashed writer's: writers hold the lock
                os.unlink(entry.path)
                continue
            match = SHARD.fullmatch(entry.name)
            if match is None:
                continue
            number = int(match[1])
            numbers.add(number)
            if match[2] == "npy":
                shards.add(number)
            else:
                st = entry.stat(follow_symlinks=False)
                records[number] = (st.st_ino, st.st_mtime_ns, st.st_size)
        for number in shards - records.keys():  # a crash between a shard and its record
            self._paths(number)[0].unlink()
            numbers.discard(number)
        new = sorted(records.keys() - self._records.keys())
        changed = any(records.get(n) != stamp for n, stamp in self._records.items())
        if changed or (new and self._records and new[0] < max(self._records)):
            self._forget()  # cleared or rebuilt by another process: read it all again
            new = sorted(records)
        for number in new:
            self._read(number, records[number])
        self._next = max(numbers, default=-1) + 1

    def _read(self, shard: int, stamp: Stamp) -> None:
        """Add one shard's record to the index: newer records (read later) win."""
        npy, record_path = self._paths(shard)
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record["version"] != STORE_VERSION:
                raise _OtherVersion(f"{record_path.name} is of store version {record['version']}")
            if record["key"] != self.key:
                raise _CorruptStore(f"{record_path.name} is of model {record['key']!r}")
            shape = tuple(int(d) for d in record["shape"])
            rows = int(record["rows"])
            images = [(str(n), int(size), int(mtime)) for n, size, mtime in record["images"]]
        except _CorruptStore:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise _CorruptStore(f"unreadable {record_path.name}: {e}") from e
        if self._shape is not None and shape != self._shape:
            raise _CorruptStore(f"{record_path.name} holds latents {shape}, others {self._shape}")
        try:
            data = np.load(npy, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:
            raise _CorruptStore(f"shard {shard}: {e}") from e
        if data.dtype != np.float32 or data.shape != (rows, *shape) or len(images) != rows:
            raise _CorruptStore(
                f"shard {shard} holds {data.dtype} {data.shape}, its record {len(images)} images"
            )
        for row, (name, size, mtime) in enumerate(images):
            self._entries[name] = (size, mtime, shard, row)
        self._maps[shard] = data
        self._records[shard] = stamp
        self._shape = shape
