from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_cl.errors import BackendUnavailableError, FrameError, ManifestError
from edge_cl.extractor import open_extractor
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image

RUNTIMES = ["onnx", "litert"]


@pytest.fixture(scope="module")
def frames(datasets: Path) -> list[np.ndarray]:
    coil = sorted((datasets / "coil100" / "images").glob("obj1?__0.png"))[:3]
    imagenet = sorted((datasets / "imagenet-samples" / "images").glob("*.JPEG"))[:3]
    return [read_image(f) for f in coil + imagenet]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("resolution", [128, 224])
def test_latents_are_channels_last_at_both_resolutions(
    manifest: Manifest, frames: list[np.ndarray], runtime: str, precision: str, resolution: int
) -> None:
    ex = open_extractor("latent", runtime, precision, resolution, manifest=manifest)
    z = ex.frames(frames)
    side = resolution // 32
    assert z.shape == (len(frames), side, side, 320) and z.dtype == np.float32
    assert np.isfinite(z).all() and z.std() > 0.1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pool_cut_equals_latent_plus_pretrained_head(
    manifest: Manifest, frames: list[np.ndarray], runtime: str
) -> None:
    from edge_cl.extractor.imagenet import PretrainedHead

    head = PretrainedHead.load(manifest.head())
    pool = open_extractor("pool", runtime, "int8", manifest=manifest).frames(frames)
    ref = head.pool(open_extractor("latent", runtime, "fp32", manifest=manifest).frames(frames))
    assert pool.shape == (len(frames), 1280)
    cos = (pool * ref).sum(1) / np.linalg.norm(pool, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.97


@pytest.mark.parametrize(
    ("cut", "runtime", "precision"),
    [("latent", r, p) for r in RUNTIMES for p in ("fp32", "int8")]
    + [("pool", r, "int8") for r in RUNTIMES],  # the shipped variants
)
def test_output_grids_in_the_manifest_are_the_ones_real_outputs_lie_on(
    manifest: Manifest, frames: list[np.ndarray], cut: str, runtime: str, precision: str
) -> None:
    """The replay memory stores an int8 model's outputs as codes on its manifest grid: a wrong
    step or zero would silently corrupt every stored latent, so check them on real images."""
    ex = open_extractor(cut, runtime, precision, manifest=manifest)
    z = ex.frames(frames)
    grid = ex.artifact.output_grid
    if precision == "fp32" or (cut, runtime) == ("pool", "onnx"):  # ONNX pools after dequant
        assert grid is None
        return
    assert grid is not None
    step, zero = grid
    codes = z / np.float32(step) + zero
    assert np.abs(codes - np.rint(codes)).max() < 1e-3  # integers up to float32 division
    codes = np.rint(codes)
    assert codes.min() >= 0 and codes.max() <= 255
    assert len(np.unique(codes)) > 50  # a real spread of codes, not a degenerate output
    assert np.array_equal((codes - np.float32(zero)) * np.float32(step), z)  # decodes exactly


@pytest.mark.parametrize("resolution", [128, 224])
def test_onnx_and_litert_fp32_agree(
    manifest: Manifest, frames: list[np.ndarray], resolution: int
) -> None:
    a = open_extractor("latent", "onnx", "fp32", resolution, manifest=manifest).frames(frames)
    b = open_extractor("latent", "litert", "fp32", resolution, manifest=manifest).frames(frames)
    assert np.abs(a - b).max() / np.abs(a).max() <= 1e-4


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_stays_close_to_fp32(
    manifest: Manifest, frames: list[np.ndarray], runtime: str
) -> None:
    a = open_extractor("latent", runtime, "fp32", manifest=manifest).frames(frames).reshape(6, -1)
    b = open_extractor("latent", runtime, "int8", manifest=manifest).frames(frames).reshape(6, -1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.95


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_batch_size_and_threads_do_not_change_results(
    manifest: Manifest, frames: list[np.ndarray], runtime: str
) -> None:
    one = open_extractor("latent", runtime, "fp32", threads=1, manifest=manifest)
    two = open_extractor("latent", runtime, "fp32", threads=2, manifest=manifest)
    batch = one.preprocessing.batch(frames)
    full = one(batch)
    singles = np.concatenate([one(batch[i : i + 1]) for i in range(len(batch))])
    assert np.allclose(full, singles, atol=1e-4)
    assert np.allclose(full, two(batch), atol=1e-4)


def test_wrong_batches_raise_frame_errors(manifest: Manifest) -> None:
    ex = open_extractor("latent", "onnx", "fp32", manifest=manifest)
    with pytest.raises(FrameError, match=r"\(N, 128, 128, 3\)"):
        ex(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(FrameError, match=r"\(N, 128, 128, 3\)"):
        ex(np.zeros((1, 3, 128, 128), np.float32))
    with pytest.raises(FrameError, match="empty"):
        ex(np.zeros((0, 128, 128, 3), np.float32))


def test_unavailable_accelerators_and_runtimes_are_named(manifest: Manifest) -> None:
    with pytest.raises(BackendUnavailableError, match="TensorrtExecutionProvider"):
        open_extractor("latent", "onnx", accelerators=("tensorrt",), manifest=manifest)
    with pytest.raises(BackendUnavailableError, match="delegate"):
        open_extractor(
            "latent", "litert", accelerators=("/nonexistent/libnpu.so",), manifest=manifest
        )
    with pytest.raises(ManifestError, match="unknown runtime"):
        open_extractor("latent", "tensorrt", manifest=manifest)
    with pytest.raises(ValueError, match="threads"):
        open_extractor("latent", "onnx", threads=0, manifest=manifest)


def test_litert_reference_kernels_agree_with_xnnpack(
    manifest: Manifest, frames: list[np.ndarray]
) -> None:
    fast = open_extractor("latent", "litert", "fp32", manifest=manifest).frames(frames[:2])
    ref = open_extractor("latent", "litert", "fp32", accelerators=("none",), manifest=manifest)
    assert np.abs(fast - ref.frames(frames[:2])).max() / np.abs(fast).max() <= 1e-4
