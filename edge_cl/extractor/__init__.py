"""Runtime backends for the frozen extractor, behind one interface (:class:`Extractor`).

>>> import numpy as np
>>> ex = open_extractor(cut="latent", runtime="onnx", precision="fp32")
>>> ex(np.zeros((2, 128, 128, 3), np.float32)).shape
(2, 4, 4, 320)
"""

from __future__ import annotations

from edge_cl.errors import ManifestError
from edge_cl.extractor.base import Extractor
from edge_cl.extractor.manifest import Manifest

RUNTIME_FORMATS = {"onnx": "onnx", "onnxruntime": "onnx", "litert": "tflite", "tflite": "tflite"}

__all__ = ["RUNTIME_FORMATS", "Extractor", "open_extractor"]


def open_extractor(
    cut: str = "latent",
    runtime: str = "onnx",
    precision: str = "fp32",
    resolution: int | None = None,
    threads: int = 1,
    accelerators: tuple[str, ...] | None = None,
    manifest: Manifest | None = None,
) -> Extractor:
    """Open the manifest's ``cut`` extractor on ``runtime`` (``"onnx"`` or ``"litert"``).

    ``accelerators`` are ONNX Runtime execution providers or LiteRT delegates, by name.
    The model file's sha256 is checked before it is loaded.
    """
    fmt = RUNTIME_FORMATS.get(runtime.lower())
    if fmt is None:
        raise ManifestError(f"unknown runtime {runtime!r}; choose one of {sorted(RUNTIME_FORMATS)}")
    artifact = (manifest or Manifest.load()).find(cut=cut, format=fmt, precision=precision)
    if fmt == "onnx":
        from edge_cl.extractor.onnx import OnnxExtractor

        return OnnxExtractor(artifact, resolution, threads, accelerators or ("cpu",))
    from edge_cl.extractor.litert import LiteRTExtractor

    return LiteRTExtractor(artifact, resolution, threads, accelerators or ("xnnpack",))
