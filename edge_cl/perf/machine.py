"""The machine section and the clock: numpy's BLAS, the float32 matmul peak per thread count.

Every other section divides its GFLOP/s by the peak measured here, in the same run, and times
its calls with ``time_call``. The static facts (CPU, SIMD features, cores, emulation) come
from ``edge_cl.sysinfo``.

>>> of_peak(40.0, peak_at({"peaks": [{"threads": 1, "gflops": 80.0}]}, 1))
0.5
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edge_cl.errors import MissingExtraError
from edge_cl.perf.settings import Log, PerfSettings
from edge_cl.sysinfo import cores, cpu_features, cpu_model, emulation


def load_threadpoolctl() -> Any:
    """threadpoolctl, which sets numpy's BLAS threads (``MissingExtraError`` if absent)."""
    try:
        import threadpoolctl
    except ImportError as e:
        raise MissingExtraError(
            "edge-cl bench-perf sets numpy's BLAS threads with threadpoolctl: "
            "pip install threadpoolctl"
        ) from e
    return threadpoolctl


def time_call(
    fn: Callable[[], object], repeats: int, min_seconds: float = 0.0, warmup: int = 1
) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` timings, after ``warmup`` calls.

    A call faster than ``min_seconds`` is looped so each timing lasts about that long, which
    keeps the clock's resolution and a scheduler hiccup out of millisecond figures.

    >>> time_call(lambda: sum(range(100)), repeats=3, min_seconds=0.001) > 0
    True
    """
    for _ in range(max(0, warmup - 1)):
        fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    loops = max(1, math.ceil(min_seconds / max(once, 1e-9)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - start) / loops)
    return float(np.median(times))


def matmul_peak(size: int, repeats: int) -> float:
    """Best GFLOP/s of a float32 ``size x size @ size x size`` matmul at the current threads.

    >>> matmul_peak(64, 2) > 0
    True
    """
    rng = np.random.default_rng(0)
    a = rng.random((size, size), np.float32)
    b = rng.random((size, size), np.float32)
    out = np.empty((size, size), np.float32)
    np.matmul(a, b, out=out)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / max(best, 1e-9) / 1e9


def _numpy_blas() -> dict[str, Any]:
    """The BLAS numpy was built against (``numpy.show_config``)."""
    try:
        config: Any = np.show_config(mode="dicts")
    except TypeError:  # numpy older than 1.26 only prints
        return {}
    blas = (config or {}).get("Build Dependencies", {}).get("blas", {})
    keys = ("name", "version", "openblas configuration")
    return {k: blas[k] for k in keys if k in blas}


def _blas_runtime() -> list[dict[str, Any]]:
    """The BLAS libraries loaded now and their thread counts (threadpoolctl)."""
    keys = ("internal_api", "version", "architecture", "num_threads")
    info = load_threadpoolctl().threadpool_info()
    return [{k: i.get(k) for k in keys} for i in info if i.get("user_api") == "blas"]


def blas_threads() -> list[int]:
    """The thread count of each BLAS library loaded now (to show a limit took effect)."""
    return [int(i["num_threads"]) for i in _blas_runtime()]


def bench_machine(settings: PerfSettings, log: Log) -> dict[str, Any]:
    """CPU, SIMD features, numpy's BLAS, and the float32 matmul peak at each thread count."""

    tpc = load_threadpoolctl()
    peaks = []
    for threads in settings.threads:
        with tpc.threadpool_limits(threads):
            gflops = matmul_peak(settings.peak_size, max(settings.repeats, 5))
            peaks.append({"threads": threads, "gflops": gflops, "blas_threads": blas_threads()})
        log(f"matmul peak, {threads} thread(s): {gflops:.1f} GFLOP/s")
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": cores(),
        "cpu_features": cpu_features(),
        "numpy_blas": _numpy_blas(),
        "blas_runtime": _blas_runtime(),
        "matmul": f"float32 {settings.peak_size}x{settings.peak_size} @ same, best of "
        f"{max(settings.repeats, 5)}",
        "peaks": peaks,
        "emulation": emulation(),
    }


def peak_at(machine: Mapping[str, Any], threads: int) -> float | None:
    """The matmul peak measured at ``threads`` (None if it was not measured).

    >>> peak_at({"peaks": [{"threads": 1, "gflops": 80.0}]}, 1)
    80.0
    """
    for p in machine.get("peaks", []):
        if p["threads"] == threads:
            return float(p["gflops"])
    return None


def of_peak(gflops: float | None, peak: float | None) -> float | None:
    """``gflops`` as a fraction of the matmul ``peak`` (None if either is unknown or 0).

    >>> of_peak(40.0, 80.0), of_peak(None, 80.0), of_peak(40.0, None)
    (0.5, None, None)
    """
    return None if gflops is None or not peak else gflops / peak
