"""``edge-cl bench-perf``: speed and footprint of the extractor, the learner and the device loop.

Every figure that is compared with another is measured in the same run: numpy's float32 matmul
peak at each thread count (threadpoolctl), then the extractors, the learner's updates (their
GFLOP/s as a fraction of that peak) and ``edge-cl run`` as a real process. The report prints
each figure next to its target from the issue, with "met" or "missed". Under aarch64 emulation
(qemu) absolute timings say nothing about a real device; only the ratios are meaningful.

One module per job: ``settings`` (``PerfSettings``, ``QUICK``, ``PerfError``), ``machine``
(the clock, BLAS and the matmul peak), ``extractor``, ``learner`` and ``loop`` (one section
each), ``targets`` (the issue's targets and their verdicts), ``report`` (Markdown) and ``cli``
(the ``bench-perf`` sub-command); ``run`` here runs the sections in order.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_cl import __version__
from edge_cl.extractor.manifest import Manifest
from edge_cl.perf.extractor import bench_extractor
from edge_cl.perf.learner import bench_learner
from edge_cl.perf.loop import bench_loop
from edge_cl.perf.machine import bench_machine
from edge_cl.perf.settings import Log, PerfSettings
from edge_cl.perf.targets import targets


def run(settings: PerfSettings, models: Path | None = None, log: Log = print) -> dict[str, Any]:
    """Run the selected sections; returns the JSON-ready result (with ``targets``)."""
    manifest = Manifest.load(models)
    result: dict[str, Any] = {
        "edge_cl": __version__,
        "command": "edge-cl " + " ".join(sys.argv[1:]),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "load_average_start": list(os.getloadavg()),
    }
    result["machine"] = bench_machine(settings, log)
    if result["machine"]["emulation"] is not None:
        log(f"emulated ({result['machine']['emulation']}): only relative figures mean anything")
    if "extractor" in settings.sections:
        result["extractor"] = bench_extractor(settings, manifest, result["machine"], log)
    if "learner" in settings.sections:
        result["learner"] = bench_learner(settings, manifest, result["machine"], log)
    if "loop" in settings.sections:
        result["loop"] = bench_loop(settings, models, log)
    result["load_average_end"] = list(os.getloadavg())
    emulated = result["machine"]["emulation"] is not None
    result["targets"] = [
        asdict(t) | {"status": t.status(emulated), "line": t.line(emulated)}
        for t in targets(result)
    ]
    return result
