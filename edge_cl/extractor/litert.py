"""LiteRT (TFLite) backend: ``ai_edge_litert`` first, ``tflite_runtime`` as a fallback."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_cl.errors import BackendUnavailableError
from edge_cl.extractor.base import Extractor
from edge_cl.extractor.manifest import Artifact


def interpreter_module() -> Any:
    """The installed TFLite interpreter module; ``BackendUnavailableError`` if there is none."""
    try:
        from ai_edge_litert import interpreter

        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter

        return interpreter
    except ImportError as e:
        raise BackendUnavailableError(
            "no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)"
        ) from e


def available() -> str | None:
    """Name of the TFLite runtime package that would be used, or ``None``."""
    try:
        return str(interpreter_module().__name__.split(".")[0])
    except BackendUnavailableError:
        return None


class LiteRTExtractor(Extractor):
    """An extractor run by LiteRT.

    ``delegates``: ``"xnnpack"`` (the default CPU delegate, built in), ``"none"`` (reference
    kernels, no default delegate), or paths to external delegate libraries (NPU vendors).
    """

    runtime = "litert"

    def __init__(
        self,
        artifact: Artifact,
        resolution: int | None = None,
        threads: int = 1,
        delegates: Sequence[str] = ("xnnpack",),
    ) -> None:
        super().__init__(artifact, resolution, threads)
        tfl = interpreter_module()
        self.runtime = str(tfl.__name__.split(".")[0])
        kwargs: dict[str, Any] = {"num_threads": threads}
        external = [d for d in delegates if d.lower() not in ("xnnpack", "none")]
        if any(d.lower() == "none" for d in delegates):
            kwargs["experimental_op_resolver_type"] = (
                tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        absent = [d for d in external if os.sep in d and not os.path.exists(d)]
        if absent:
            raise BackendUnavailableError(f"TFLite delegate library not found: {absent}")
        if external:
            try:
                kwargs["experimental_delegates"] = [tfl.load_delegate(d) for d in external]
            except (ValueError, OSError) as e:
                raise BackendUnavailableError(f"cannot load TFLite delegate {external}: {e}") from e
        self.interpreter = tfl.Interpreter(model_path=str(artifact.verify()), **kwargs)
        self.delegates = list(delegates)
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._shape: tuple[int, ...] = ()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self._shape:
            self.interpreter.resize_tensor_input(self._input, batch.shape, strict=False)
            self.interpreter.allocate_tensors()
            self._shape = batch.shape
        self.interpreter.set_tensor(self._input, batch)
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self._output))
