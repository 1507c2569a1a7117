"""Image files -> RGB arrays, with one error for a missing or corrupt file.

At the bottom of the package (it imports only :mod:`edge_cl.errors`) so that camera sources,
datasets and the model checks read images the same way without depending on preprocessing.

>>> read_image("no/such/file.jpg")  # doctest: +ELLIPSIS
Traceback (most recent call last):
    ...
edge_cl.errors.FrameError: cannot read image 'no/such/file.jpg': ...
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from edge_cl.errors import FrameError


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an RGB uint8 array; ``FrameError`` if it is missing or corrupt."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise FrameError(f"cannot read image {os.fspath(path)!r}: {e}") from e
