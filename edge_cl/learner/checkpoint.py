"""One versioned, checksummed, atomically written file for a learner's whole state.

Layout (little-endian)::

    magic      8 bytes   b"EDGECLCK"
    version    uint32    FORMAT_VERSION
    meta_len   uint32    length of the JSON metadata
    data_len   uint64    length of the array bytes
    sha256     32 bytes  of meta + data
    meta       JSON      {"kind", "extractor_sha256", ..., "arrays": {name: [dtype, shape, offset]}}
    data       raw C-order array bytes, back to back

A file is written to a temporary name in the same folder, fsynced, renamed over the target and
the folder fsynced, so a crash at any point leaves either the old or the new checkpoint. Reading
checks magic, version, lengths and checksum before anything is built, so a truncated, bit-flipped,
foreign or wrong-extractor file is refused with a ``CheckpointError`` and nothing is changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.errors import CheckpointError

MAGIC = b"EDGECLCK"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQ32s")
MAX_META_BYTES = 64 << 20


def save_state(
    path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, np.ndarray]
) -> int:
    """Write ``meta`` (JSON-able) and ``arrays`` atomically to ``path``; returns bytes written.

    A failed write (disk full, read-only folder) raises ``CheckpointError`` and leaves any
    previous checkpoint at ``path`` as it was.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "state.ckpt"
    >>> n = save_state(p, {"kind": "demo"}, {"w": np.arange(3.0)})
    >>> load_state(p, kind="demo")[1]["w"].tolist()
    [0.0, 1.0, 2.0]
    """
    index: dict[str, list[Any]] = {}
    chunks: list[memoryview] = []
    offset = 0
    for name, arr in arrays.items():
        a = np.asarray(arr, order="C")
        if a.dtype.hasobject:
            raise CheckpointError(f"array {name!r} has dtype object and cannot be saved")
        index[name] = [a.dtype.str, list(a.shape), offset]
        chunks.append(a.reshape(-1).data.cast("B"))  # the array's own bytes, no copy
        offset += a.nbytes
    meta_bytes = json.dumps({**meta, "arrays": index}, sort_keys=True).encode()
    sha = hashlib.sha256(meta_bytes)
    for chunk in chunks:
        sha.update(chunk)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(meta_bytes), offset, sha.digest())
    target = Path(path)
    tmp: str | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(meta_bytes)
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # disk full, read-only, no permission: say what is left
            raise CheckpointError(
                f"cannot write checkpoint {target} ({e}); any previous checkpoint there is "
                "unchanged: free space or fix the folder, then save again"
            ) from e
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return _HEADER.size + len(meta_bytes) + offset


def remove_leftovers(path: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writes of ``path`` killed mid-way left beside it (a
    crash or power cut between creating and renaming them); returns what was removed. Call it
    only while nothing else writes this checkpoint, e.g. when the service starts.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "state.ckpt"
    >>> _ = (p.parent / ".state.ckpt.x1y2.tmp").write_bytes(b"half a checkpoint")
    >>> [f.name for f in remove_leftovers(p)], list(p.parent.iterdir())
    (['.state.ckpt.x1y2.tmp'], [])
    """
    target = Path(path)
    removed = []
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            leftover.unlink()
        except OSError:
            continue
        removed.append(leftover)
    return removed


def load_state(
    path: str | os.PathLike[str],
    kind: str | None = None,
    extractor_sha256: str | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify a checkpoint; returns ``(meta, arrays)``.

    ``kind`` and ``extractor_sha256``, when given, must match what the file records.
    """
    p = Path(path)
    try:
        blob = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {p}: {e}") from e
    if len(blob) < _HEADER.size:
        raise CheckpointError(f"{p} is truncated ({len(blob)} bytes): not a complete checkpoint")
    magic, version, meta_len, data_len, digest = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CheckpointError(f"{p} is not an edge_cl checkpoint (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{p} has checkpoint format version {version}; this edge_cl reads version "
            f"{FORMAT_VERSION}"
        )
    expected = _HEADER.size + meta_len + data_len
    if meta_len > MAX_META_BYTES or len(blob) != expected:
        raise CheckpointError(
            f"{p} is truncated or padded: {len(blob)} bytes, header says {expected}"
        )
    body = memoryview(blob)[_HEADER.size :]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{p} is corrupt: checksum mismatch")
    try:
        meta = json.loads(bytes(body[:meta_len]))
        if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), dict):
            raise ValueError("the metadata must be a JSON object with an 'arrays' object")
        data = body[meta_len:]
        arrays = {}
        for name, entry in meta.pop("arrays").items():
            dt, shape, offset = _array_entry(name, entry)
            count = math.prod(shape)  # Python ints: a crafted shape cannot overflow
            if offset + count * dt.itemsize > len(data):
                raise ValueError(f"array {name!r} lies outside the data")
            arrays[name] = np.frombuffer(data, dt, count, offset).reshape(shape).copy()
    except (ValueError, TypeError, KeyError, RecursionError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p} has malformed metadata: {e}") from e
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{p} holds a {meta.get('kind')!r}, not a {kind!r}")
    if extractor_sha256 is not None and meta.get("extractor_sha256") != extractor_sha256:
        raise CheckpointError(
            f"{p} was made with extractor {str(meta.get('extractor_sha256'))[:16]}..., not the "
            f"loaded one ({extractor_sha256[:16]}...): its latents mean something else. Start a "
            "new state or load the matching model"
        )
    return meta, arrays


def _array_entry(name: str, entry: object) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """One ``arrays`` entry of the metadata, ``[dtype, shape, offset]``, checked; ValueError if
    it is not one (an object dtype, a negative or non-integer size or offset)."""
    if not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str):
        raise ValueError(f"array {name!r} must be [dtype, shape, offset], got {entry!r:.80}")
    dtype, shape, offset = entry
    dt = np.dtype(dtype)
    if dt.hasobject or dt.itemsize == 0:
        raise ValueError(f"array {name!r} has dtype {dt}, which a checkpoint never holds")

    def natural(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if not isinstance(shape, list) or len(shape) > 32 or not all(natural(n) for n in shape):
        raise ValueError(f"array {name!r} has shape {shape!r:.80}, not a list of sizes")
    if not natural(offset):
        raise ValueError(f"array {name!r} has offset {offset!r:.80}, not a byte offset")
    return dt, tuple(shape), offset
