from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_cl.bench.latents import LatentCache, model_key
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


@pytest.mark.parametrize("damage", ["garbage index", "truncated shard", "missing shard", "rows"])
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
    index = cache.store / "index.json"
    if damage == "garbage index":
        index.write_text('{"version": 1, "entries": [')
    elif damage == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:1000])
    elif damage == "missing shard":
        shard.unlink()
    else:
        index.write_text(index.read_text().replace('"shards": [3]', '"shards": [2]'))
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
