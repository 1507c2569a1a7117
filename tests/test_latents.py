from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from edge_cl.bench import latents
from edge_cl.bench.latents import LatentCache, clear_cache, model_key
from edge_cl.errors import DatasetError
from edge_cl.extractor import Extractor, open_extractor
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image


@pytest.fixture(scope="module")
def extractor(manifest: Manifest) -> Extractor:
    return open_extractor("latent", "litert", "int8", manifest=manifest)


@pytest.fixture
def calls(extractor: Extractor, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of the batches the extractor is asked to run during one test."""
    seen: list[int] = []
    original = type(extractor).frames

    def counting(frames: list[np.ndarray], color: str = "RGB") -> np.ndarray:
        seen.append(len(frames))
        return original(extractor, frames, color)

    monkeypatch.setattr(extractor, "frames", counting)
    return seen


@pytest.fixture(scope="module")
def coil(datasets: Path) -> list[Path]:
    """Ten real COIL-100 views: five objects, two angles each."""
    folder = datasets / "coil100" / "images"
    return [folder / f"obj{o}__{a}.png" for o in (3, 17, 25, 47, 98) for a in (0, 90)]


@pytest.fixture(scope="module")
def reference(extractor: Extractor, coil: list[Path]) -> np.ndarray:
    return extractor.frames([read_image(p) for p in coil])


def test_extracts_once_then_reads_back(
    extractor: Extractor, calls: list[int], coil: list[Path], reference: np.ndarray, tmp_path: Path
) -> None:
    cache = LatentCache(tmp_path, extractor, batch_size=4)
    z = cache.get(coil)
    assert z.shape == (10, 4, 4, 320) and z.dtype == np.float32
    assert calls == [4, 4, 2] and cache.extracted == 10 and len(cache) == 10
    np.testing.assert_allclose(z, reference, rtol=0, atol=1e-5)
    again = LatentCache(tmp_path, extractor).get(coil)  # a new process: reads the store
    assert calls == [4, 4, 2]
    np.testing.assert_array_equal(again, z)
    order = [9, 0, 0, 4]
    np.testing.assert_array_equal(cache.get([coil[i] for i in order]), z[order])
    assert calls == [4, 4, 2]


def test_extracts_only_missing_images_across_shards(
    extractor: Extractor, calls: list[int], coil: list[Path], reference: np.ndarray, tmp_path: Path
) -> None:
    cache = LatentCache(tmp_path, extractor, batch_size=2, shard_rows=3)
    cache.get(coil[:5])
    assert sum(calls) == 5
    z = cache.get(coil[::-1] + coil[:1])  # the other five, plus repeats
    assert sum(calls) == 10
    np.testing.assert_allclose(z, np.concatenate([reference[::-1], reference[:1]]), atol=1e-5)
    shards = sorted(p.name for p in cache.store.glob("shard_*.npy"))
    assert len(shards) >= 4
    fresh = LatentCache(tmp_path, extractor, shard_rows=3)
    np.testing.assert_array_equal(fresh.get(coil), cache.get(coil))
    assert sum(calls) == 10


def test_edited_file_is_extracted_again(
    extractor: Extractor, calls: list[int], coil: list[Path], tmp_path: Path
) -> None:
    image = tmp_path / "view.png"
    shutil.copyfile(coil[0], image)
    cache = LatentCache(tmp_path / "cache", extractor)
    before = cache.get([image, coil[1]])
    np.testing.assert_array_equal(cache.get([image]), before[:1])
    assert sum(calls) == 2
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same pixels
    np.testing.assert_array_equal(cache.get([image]), before[:1])
    assert sum(calls) == 3
    shutil.copyfile(coil[4], image)  # replaced by another view
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    after = cache.get([image, coil[1]])
    assert sum(calls) == 4
    assert not np.allclose(after[0], before[0]) and np.array_equal(after[1], before[1])
    assert len(list(cache.store.glob("shard_*.json"))) == 3  # the image is in all three
    fresh = LatentCache(tmp_path / "cache", extractor)
    np.testing.assert_array_equal(fresh.get([image]), after[:1])  # the newest record wins
    assert sum(calls) == 4


@pytest.mark.parametrize("damage", ["garbage record", "truncated shard", "missing shard", "rows"])
def test_corrupt_store_is_rebuilt_with_a_warning(
    extractor: Extractor,
    calls: list[int],
    coil: list[Path],
    reference: np.ndarray,
    tmp_path: Path,
    damage: str,
) -> None:
    cache = LatentCache(tmp_path, extractor)
    cache.get(coil[:3])
    shard = cache.store / "shard_00000.npy"
    record = cache.store / "shard_00000.json"
    if damage == "garbage record":
        record.write_text('{"version": 2, "images": [')
    elif damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:1000])
    elif damage == "missing shard":
        shard.unlink()
    else:
        record.write_text(record.read_text().replace('"rows": 3', '"rows": 2'))
    with pytest.warns(RuntimeWarning, match="latent cache .* is corrupt"):
        rebuilt = LatentCache(tmp_path, extractor)
    np.testing.assert_allclose(rebuilt.get(coil[:3]), reference[:3], atol=1e-5)
    assert sum(calls) == 6 and rebuilt.extracted == 3


def test_store_key_follows_model_and_resolution(manifest: Manifest, extractor: Extractor) -> None:
    other = open_extractor("latent", "litert", "int8", resolution=224, manifest=manifest)
    fp32 = open_extractor("latent", "litert", "fp32", manifest=manifest)
    keys = {model_key(extractor), model_key(other), model_key(fp32)}
    assert len(keys) == 3
    assert model_key(extractor).startswith("lite0_latent_int8_tflite-128px-")


def test_missing_image_raises(extractor: Extractor, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot be read"):
        LatentCache(tmp_path, extractor).get([tmp_path / "nope.png"])


LATENT_BYTES = 4 * 4 * 320 * 4
"""One 128 px latent, float32."""


def shard_files(store: Path) -> dict[str, tuple[int, int, int]]:
    """Inode, mtime (ns) and size of each shard and record of a store."""
    out = {}
    for f in sorted(store.glob("shard_*")):
        st = f.stat()
        out[f.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def test_shards_are_never_rewritten(
    extractor: Extractor, calls: list[int], coil: list[Path], reference: np.ndarray, tmp_path: Path
) -> None:
    cache = LatentCache(tmp_path, extractor, batch_size=4, shard_rows=4)
    cache.get(coil[:6])  # a full shard of 4, then one of 2
    first = shard_files(cache.store)
    assert list(first) == [f"shard_0000{i}.{x}" for i in (0, 1) for x in ("json", "npy")]
    contents = {name: (cache.store / name).read_bytes() for name in first}
    cache.get(coil[4:])  # two known, four new
    assert sum(calls) == 10
    now = shard_files(cache.store)
    assert {name: now[name] for name in first} == first  # same inode, mtime and size
    assert all((cache.store / name).read_bytes() == data for name, data in contents.items())
    assert sorted(set(now) - set(first)) == ["shard_00002.json", "shard_00002.npy"]
    assert np.load(cache.store / "shard_00001.npy").shape == (2, 4, 4, 320)  # not topped up
    assert np.load(cache.store / "shard_00002.npy").shape == (4, 4, 4, 320)
    fresh = LatentCache(tmp_path, extractor)
    np.testing.assert_allclose(fresh.get(coil), reference, rtol=0, atol=1e-5)
    assert sum(calls) == 10 and len(fresh) == 10


def written_bytes() -> int:
    """Bytes this process has passed to write() so far (Linux: ``wchar`` of /proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("/proc/self/io has no wchar line")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_bytes_written_are_about_the_store_size(
    extractor: Extractor, datasets: Path, tmp_path: Path
) -> None:
    images = sorted((datasets / "cifar10" / "train" / "cat").glob("*.jpg"))[:32]
    cache = LatentCache(tmp_path, extractor, batch_size=4, shard_rows=16)
    before = written_bytes()
    for start in range(0, 32, 4):  # batch by batch, as the study asks
        cache.get(images[start : start + 4])
    written = written_bytes() - before
    assert cache.extracted == 32
    size = cache.nbytes
    assert size == sum(f.stat().st_size for f in cache.store.iterdir())
    assert 32 * LATENT_BYTES < size <= written <= 1.5 * size


def test_a_shard_without_its_record_is_ignored_and_removed(
    extractor: Extractor,
    calls: list[int],
    coil: list[Path],
    reference: np.ndarray,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = LatentCache(tmp_path, extractor)
    cache.get(coil[:3])
    save = latents._save_atomic

    def cut_before_the_record(path: Path, write: object) -> None:
        if path.suffix == ".json":
            raise OSError("power cut before the record")
        save(path, write)

    monkeypatch.setattr(latents, "_save_atomic", cut_before_the_record)
    with pytest.raises(OSError, match="power cut"):
        cache.get(coil[3:6])
    monkeypatch.setattr(latents, "_save_atomic", save)
    assert sorted(p.name for p in cache.store.glob("shard_00001.*")) == ["shard_00001.npy"]
    (cache.store / ".shard_00002.npy.99999.tmp").write_bytes(b"half a shard")  # a killed writer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = LatentCache(tmp_path, extractor)
    assert sorted(p.name for p in fresh.store.iterdir()) == [
        ".lock",
        "shard_00000.json",
        "shard_00000.npy",
    ]
    assert len(fresh) == 3 and sum(calls) == 6
    z = fresh.get(coil[:6])
    assert sum(calls) == 9  # the three whose record was lost, again
    np.testing.assert_allclose(z, reference[:6], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(cache.get(coil[:6]), z)  # the interrupted one reads them too
    assert sum(calls) == 9


def test_store_of_version_1_is_rebuilt_with_a_warning(
    extractor: Extractor, calls: list[int], coil: list[Path], reference: np.ndarray, tmp_path: Path
) -> None:
    key = model_key(extractor)
    store = tmp_path / key
    store.mkdir()
    np.save(store / "shard_00000.npy", np.zeros((2, 4, 4, 320), np.float32))
    entries = {
        os.path.realpath(p): [p.stat().st_size, p.stat().st_mtime_ns, 0, row]
        for row, p in enumerate(coil[:2])
    }
    index = {"version": 1, "key": key, "shape": [4, 4, 320], "shards": [2], "entries": entries}
    (store / "index.json").write_text(json.dumps(index))
    with pytest.warns(RuntimeWarning, match="latent cache .* is of another version .* version 1"):
        cache = LatentCache(tmp_path, extractor)
    assert len(cache) == 0 and [p.name for p in store.iterdir()] == [".lock"]
    np.testing.assert_allclose(cache.get(coil[:2]), reference[:2], rtol=0, atol=1e-5)
    assert sum(calls) == 2


def test_two_caches_on_one_store_see_each_other(
    extractor: Extractor, calls: list[int], coil: list[Path], tmp_path: Path
) -> None:
    """Two instances stand for two processes sharing the cache folder."""
    a = LatentCache(tmp_path, extractor, batch_size=4)
    b = LatentCache(tmp_path, extractor, batch_size=4)
    a.get(coil[:5])
    z = b.get(coil[:8])
    assert sum(calls) == 8 and b.extracted == 3  # b read a's shard
    np.testing.assert_array_equal(a.get(coil[:8]), z)
    assert sum(calls) == 8 and len(a) == 8  # and a read b's
    b.clear()
    a.get(coil[:2])  # a sees the store was cleared
    assert sum(calls) == 10 and len(a) == 2
    np.testing.assert_array_equal(b.get(coil[:2]), z[:2])
    assert sum(calls) == 10


def test_clear_and_clear_cache(
    manifest: Manifest, extractor: Extractor, calls: list[int], coil: list[Path], tmp_path: Path
) -> None:
    fp32 = LatentCache(tmp_path, open_extractor("latent", "onnx", "fp32", manifest=manifest))
    int8 = LatentCache(tmp_path, extractor)
    int8.get(coil[:4])
    fp32.get(coil[:2])
    (tmp_path / "notes.txt").write_text("not the cache's")
    sizes = int8.nbytes, fp32.nbytes
    assert sizes[0] > 4 * LATENT_BYTES and sizes[1] > 2 * LATENT_BYTES
    assert fp32.store == tmp_path / model_key(fp32.extractor)
    assert fp32.clear() == sizes[1]
    assert fp32.nbytes == 0 and len(fp32) == 0 and not fp32.store.exists()
    assert int8.nbytes == sizes[0] and len(LatentCache(tmp_path, extractor)) == 4
    fp32.get(coil[:1])
    assert fp32.extracted == 3
    total = int8.nbytes + fp32.nbytes
    assert clear_cache(tmp_path) == total
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert clear_cache(tmp_path) == 0 and clear_cache(tmp_path / "absent") == 0
    int8.get(coil[:1])
    assert sum(calls) == 5 and len(int8) == 1
