"""ONNX Runtime backend."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_cl.errors import BackendUnavailableError
from edge_cl.extractor.base import Extractor
from edge_cl.extractor.manifest import Artifact

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
}


def available() -> list[str]:
    """Execution providers of the installed onnxruntime (empty if it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OnnxExtractor(Extractor):
    """An extractor run by ONNX Runtime; ``providers`` by short or full name (``"cpu"``).

    Int8 matrix products run with ``session.x64quantprecision``: on x86 CPUs without VNNI
    (AVX2 only), ONNX Runtime's default u8s8 kernels saturate their 16-bit intermediate sums,
    and the shipped int8 model's pooled features fell to a cosine of 0.67 with fp32's; the
    option widens those sums (slower there, exact everywhere; it does nothing on ARM).
    """

    runtime = "onnxruntime"

    def __init__(
        self,
        artifact: Artifact,
        resolution: int | None = None,
        threads: int = 1,
        providers: Sequence[str] = ("cpu",),
    ) -> None:
        super().__init__(artifact, resolution, threads)
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install onnxruntime"
            ) from e
        names = [PROVIDER_ALIASES.get(p.lower(), p) for p in providers]
        missing = [n for n in names if n not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime execution provider(s) {missing} are not available here; "
                f"available: {ort.get_available_providers()}"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.x64quantprecision", "1")
        self.session = ort.InferenceSession(str(artifact.verify()), opts, providers=names)
        self.providers = names
        self._nchw = artifact.layout == "NCHW"

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if self._nchw else batch
        out: np.ndarray = self.session.run(None, {self.artifact.input_name: x})[0]
        if self._nchw and out.ndim == 4:
            out = np.ascontiguousarray(out.transpose(0, 2, 3, 1))
        return out
