from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_cl.errors import FrameError
from edge_cl.images import read_image
from edge_cl.preprocess import Preprocessing, preprocess


def test_camera_frame_is_resized_cropped_and_normalised() -> None:
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    x = preprocess(frame, 128)
    assert x.shape == (128, 128, 3) and x.dtype == np.float32
    assert x.min() >= -127 / 128 and x.max() <= 1.0


def test_centre_crop_keeps_the_centre() -> None:
    frame = np.zeros((100, 300, 3), np.uint8)
    frame[:, 100:200] = 255  # a white centre square, black sides
    x = preprocess(frame, 64, crop_fraction=1.0)
    assert np.allclose(x, 1.0)


def test_bgr_input_is_swapped_to_rgb() -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200  # red
    out = preprocess(rgb[:, :, ::-1].copy(), 32, color="BGR")
    assert np.allclose(out, preprocess(rgb, 32))
    assert out[..., 0].mean() > out[..., 2].mean()


def test_small_images_are_enlarged_and_rgba_is_accepted() -> None:
    img = np.full((32, 32, 4), 127, np.uint8)
    assert np.allclose(preprocess(img, 128), 0.0)


def test_real_images_of_any_size(datasets: Path) -> None:
    p = Preprocessing(resolution=224)
    files = [
        next((datasets / "cifar10" / "test" / "cat").glob("*.jpg")),
        next((datasets / "coil100" / "images").glob("*.png")),
        next((datasets / "imagenet-samples" / "images").glob("*.JPEG")),
    ]
    batch = p.batch([read_image(f) for f in files])
    assert batch.shape == (3, 224, 224, 3)
    assert np.isfinite(batch).all() and batch.std() > 0.1


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10), np.uint8), "grey"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
        (np.zeros((10, 10, 3), np.int32), "dtype"),
        (np.zeros((10, 10, 3), bool), "dtype"),
        (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_bad_frames_raise_a_specific_error(frame: np.ndarray, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        preprocess(frame, 64)


def test_bad_options_and_empty_batch() -> None:
    with pytest.raises(FrameError, match="color"):
        preprocess(np.zeros((8, 8, 3), np.uint8), 8, color="HSV")
    with pytest.raises(FrameError, match="empty batch"):
        Preprocessing().batch([])


def test_corrupt_and_missing_image_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(FrameError, match=r"bad\.png"):
        read_image(bad)
    with pytest.raises(FrameError, match="missing"):
        read_image(tmp_path / "missing.jpg")


def test_only_the_centre_square_is_read() -> None:
    """What lies outside the square the model sees cannot change the input (it is not resized)."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    side = round(480 * 128 / 146)  # the short side at 146 px keeps 128: 421 px of the 480
    top, left = (480 - side) // 2, (640 - side) // 2
    outside = rng.integers(0, 256, frame.shape, dtype=np.uint8)
    outside[top : top + side, left : left + side] = frame[top : top + side, left : left + side]
    assert np.array_equal(preprocess(frame, 128), preprocess(outside, 128))


def test_shrinking_averages_whole_blocks() -> None:
    """A 384 px square at 128 px is the mean of each 3 x 3 block (no pixel skipped, no aliasing)."""
    frame = np.random.default_rng(2).integers(0, 256, (384, 384, 3), dtype=np.uint8)
    blocks = frame.reshape(128, 3, 128, 3, 3).mean(axis=(1, 3))
    x = preprocess(frame, 128, mean=0.0, std=1.0, crop_fraction=1.0)
    assert np.abs(x - blocks).max() <= 0.5  # OpenCV rounds the mean to uint8


def test_memory_stays_within_the_centre_square() -> None:
    """A float frame is clipped and converted on its centre square only, never copied whole."""
    frame = np.full((1000, 4000, 3), 300.0)  # 96 MB of float64, clipped to 255
    tracemalloc.start()
    x = preprocess(frame, 128)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.allclose(x, 128 / 128) and peak < frame.nbytes / 2


def test_small_frames_are_enlarged_whole_then_cropped() -> None:
    """Below the resize target the crop's border interpolates real neighbours: exactly the
    classic resize-the-shorter-side-then-centre-crop, as the models were verified with."""
    frame = np.random.default_rng(4).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    big = cv2.resize(frame, (182, 146), interpolation=cv2.INTER_LINEAR)  # 146 = 128 / 0.875
    reference = big[9:137, 27:155].astype(np.float32)
    assert np.array_equal(preprocess(frame, 128, mean=0.0, std=1.0), reference)
