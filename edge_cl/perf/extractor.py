"""The extractor section: frames/s of the ``latent`` cut over its grid, and preprocessing.

Each row (runtime x precision x threads x resolution x batch) gives frames/s and, from the ONNX
graph's conv MACs, GFLOP/s and its ratio to the matmul peak at the same threads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from edge_cl.errors import BackendUnavailableError
from edge_cl.extractor.manifest import Artifact, Manifest
from edge_cl.perf.machine import of_peak, peak_at, time_call
from edge_cl.perf.settings import Log, PerfError, PerfSettings


def conv_macs(artifact: Artifact, resolution: int) -> int | None:
    """Multiply-accumulates of one frame through the Conv nodes of an ONNX extractor.

    The graph (read with the ``onnx`` package) is run once with every Conv output exposed, so
    the output sizes come from ONNX Runtime itself; None without ``onnx`` or for a graph whose
    conv weights are not initializers. Adds, clips and pads are not counted.

    >>> fp32 = Manifest.load().find(cut="latent", format="onnx", precision="fp32")
    >>> round(conv_macs(fp32, 224) / 1e6)  # Lite0 below the head at 224 px (needs onnx: dev)
    364
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        return None
    model = onnx.load(str(artifact.verify()))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if not convs or any(n.input[1] not in shapes for n in convs):
        return None
    for node in convs:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    r = resolution
    x = np.zeros((1, 3, r, r) if artifact.layout == "NCHW" else (1, r, r, 3), np.float32)
    outs = session.run([n.output[0] for n in convs], {artifact.input_name: x})
    # weight (out, in / group, kh, kw): each output value takes prod(weight[1:]) MACs
    macs: int = sum(
        math.prod(out.shape[1:]) * math.prod(shapes[n.input[1]][1:])
        for n, out in zip(convs, outs, strict=True)
    )
    return macs


def bench_extractor(
    settings: PerfSettings, manifest: Manifest, peaks: Mapping[str, Any], log: Log
) -> dict[str, Any]:
    """frames/s of the ``latent`` cut over runtime x precision x threads x resolution x batch,
    achieved GFLOP/s against the model's conv MACs, and the cost of preprocessing a frame."""
    from edge_cl.extractor import RUNTIME_FORMATS, open_extractor

    rng = np.random.default_rng(0)
    reference = manifest.find(cut="latent", format="onnx", precision="fp32")
    macs = {r: conv_macs(reference, r) for r in settings.resolutions}
    source = (
        f"conv MACs of {reference.name} (onnx graph, run once)"
        if all(m is not None for m in macs.values())
        else "n/a: the onnx package is not installed (pip install onnx)"
    )
    width, height = settings.camera
    frame = rng.integers(0, 256, (height, width, 3), np.uint8)
    preprocessing = []
    for r in settings.resolutions:
        prep = reference.preprocessing_at(r)
        seconds = time_call(partial(prep, frame), settings.repeats, settings.min_seconds)
        preprocessing.append({"camera": f"{width}x{height}", "resolution": r, "ms": 1e3 * seconds})
        log(f"preprocess {width}x{height} -> {r} px: {1e3 * seconds:.2f} ms/frame")
    rows: list[dict[str, Any]] = []
    skipped: dict[tuple[str, str], str] = {}
    grid = itertools.product(
        settings.runtimes, settings.precisions, settings.threads, settings.resolutions
    )
    for runtime, precision, threads, r in grid:
        if runtime not in RUNTIME_FORMATS:
            raise PerfError(f"unknown runtime {runtime!r}; choose among onnx, litert")
        if (runtime, precision) in skipped:
            continue
        try:
            ex = open_extractor("latent", runtime, precision, r, threads, None, manifest)
        except BackendUnavailableError as e:
            skipped[runtime, precision] = str(e)
            log(f"{runtime} {precision}: skipped ({e})")
            continue
        mac = macs[r]
        flop = 2 * mac / 1e9 if mac is not None else None
        peak = peak_at(peaks, threads)
        for batch in settings.batches:
            x = rng.uniform(-1, 1, (batch, r, r, 3)).astype(np.float32)
            seconds = time_call(partial(ex, x), settings.repeats, settings.min_seconds, warmup=2)
            fps = batch / seconds
            gflops = fps * flop if flop is not None else None
            rows.append(
                {
                    "runtime": runtime,
                    "backend": ex.runtime,
                    "artifact": ex.artifact.name,
                    "precision": precision,
                    "threads": threads,
                    "resolution": r,
                    "batch": batch,
                    "ms_per_batch": 1e3 * seconds,
                    "ms_per_frame": 1e3 * seconds / batch,
                    "fps": fps,
                    "gflop_per_frame": flop,
                    "gflops": gflops,
                    "of_peak": of_peak(gflops, peak) if precision == "fp32" else None,
                }
            )
            log(f"{runtime} {precision} {r} px, {threads} thread(s), batch {batch}: {fps:.1f} fps")
    return {
        "cut": "latent",
        "flops_source": source,
        "macs_per_frame": {str(r): m for r, m in macs.items()},
        "preprocessing": preprocessing,
        "rows": rows,
        "skipped": [{"runtime": k[0], "precision": k[1], "why": v} for k, v in skipped.items()],
    }
