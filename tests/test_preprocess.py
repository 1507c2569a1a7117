from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_cl.errors import FrameError
from edge_cl.preprocess import Preprocessing, preprocess, read_image


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
