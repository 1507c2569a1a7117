"""The results of ``bench-perf`` as Markdown: targets first, then one section per measurement.

Numbers are printed to 3 significant digits (``fmt``); the JSON keeps them whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

BUSY_LOAD = 0.5
"""A 1-minute load average above this at the start flags the run's timings as unreliable."""


def fmt(value: Any) -> str:
    """A number to 3 significant digits (whole above 100), None as ``n/a``.

    >>> fmt(1413.4), fmt(123.456), fmt(None), fmt(0.05123), fmt(7)
    ('1413', '123', 'n/a', '0.0512', '7')
    """
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _table(columns: Mapping[str, str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Markdown table: ``columns`` maps each header to the key of its value in a row.

    >>> _table({"N": "new", "s": "seconds"}, [{"new": 30, "seconds": 0.25}])
    ['| N | s |', '|---|---|', '| 30 | 0.25 |']
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(fmt(r[k]) for k in columns.values()) + " |" for r in rows]


EXTRACTOR_COLUMNS = {
    "runtime": "runtime",
    "precision": "precision",
    "px": "resolution",
    "threads": "threads",
    "batch": "batch",
    "ms/batch": "ms_per_batch",
    "ms/frame": "ms_per_frame",
    "frames/s": "fps",
    "GFLOP/s": "gflops",
    "of peak": "of_peak",
}
UPDATE_COLUMNS = {
    "threads": "threads",
    "BLAS threads": "blas",
    "depth": "depth",
    "N": "new",
    "replay": "mode",
    "replayed": "replayed",
    "epochs": "epochs",
    "seconds": "seconds",
    "GFLOP": "gflop",
    "GFLOP/s": "gflops",
    "of peak": "ratio_to_peak",
}


def _machine_lines(machine: Mapping[str, Any]) -> list[str]:
    blas = machine["numpy_blas"]
    loaded = ", ".join(
        f"{b['internal_api']} {b['version']} {b['architecture']}" for b in machine["blas_runtime"]
    )
    peaks = ", ".join(f"{p['gflops']:.1f} GFLOP/s at {p['threads']}" for p in machine["peaks"])
    return [
        "## Machine",
        "",
        f"- CPU: {machine['cpu_model']} ({machine['machine']}), {machine['cores']} usable cores; "
        f"SIMD: {' '.join(machine['cpu_features']) or 'unknown'}",
        f"- numpy {machine['numpy']} built with {blas.get('name', '?')} {blas.get('version', '')}"
        f"; BLAS loaded: {loaded}",
        f"- matmul peak ({machine['matmul']}), by threads: {peaks}",
        "",
    ]


def _extractor_lines(ex: Mapping[str, Any]) -> list[str]:
    out = [
        "## Extractor (latent cut)",
        "",
        f"FLOPs: {ex['flops_source']}. GFLOP/s counts conv MACs x 2; the ratio to the matmul "
        "peak (same threads) is given for fp32 only, int8 runs integer kernels.",
        "",
        *_table(EXTRACTOR_COLUMNS, ex["rows"]),
        "",
    ]
    out += [f"Skipped {s['runtime']} {s['precision']}: {s['why']}" for s in ex["skipped"]]
    out += [""] if ex["skipped"] else []
    columns = {"camera": "camera", "px": "resolution", "ms/frame": "ms"}
    return [*out, "Preprocessing one camera frame:", "", *_table(columns, ex["preprocessing"]), ""]


def _learner_lines(le: Mapping[str, Any]) -> list[str]:
    updates = [
        u
        | {
            "blas": ",".join(map(str, u["blas_threads"])),
            "mode": "all" if u["replay_per_epoch"] is None else f"sample {u['replay_per_epoch']}",
        }
        for u in le["updates"]
    ]
    checkpoints = [c | {"mib": c["bytes"] / 2**20} for c in le["checkpoints"]]
    return [
        "## Learner (AR1*)",
        "",
        "One incremental update: N new latents with the replay memory full, replaying all of it "
        "every epoch (reference AR1*) or one sample of it (the device default); FLOPs from "
        "`AR1Star.last_update_flops`, the matmul peak at the same threads.",
        "",
        *_table(UPDATE_COLUMNS, updates),
        "",
        "Head inference (`predict_with_confidence`: label, confidence, unknown), and the part "
        "of it the unknown score takes (`novelty_from_logits` on the same logits, timed alone):",
        "",
        *_table(
            {"threads": "threads", "depth": "depth", "batch": "batch", "ms/frame": "ms_per_frame"}
            | {"unknown score ms/frame": "unknown_ms_per_frame", "its share": "unknown_share"},
            le["inference"],
        ),
        "",
        "Checkpoints:",
        "",
        *_table(
            {"depth": "depth", "replay patterns": "memory", "MiB": "mib", "save s": "save_s"}
            | {"load s": "load_s"},
            checkpoints,
        ),
        "",
    ]


def _loop_lines(loop: Mapping[str, Any]) -> list[str]:
    teach, latency = loop["teach"], loop["summary"].get("latency_ms") or {}
    return [
        "## Device loop (`edge-cl run`, synthetic scene)",
        "",
        f"`{loop['command']}`, resuming a checkpoint of 10 classes with {loop['memory']} replay "
        f"patterns; {', '.join(f'{k} {v}' for k, v in loop['config'].items())}.",
        "",
        f"- start-up (process start to first prediction): {fmt(loop['startup_s'])} s",
        f"- steady: {fmt(loop['steady_fps'])} frames/s over {fmt(loop['steady_window_s'])} s; "
        f"the synthetic scene it reads takes {fmt(loop['render_ms'])} ms a frame to render "
        "(measured here, in the same run)",
        f"- frame to verdict (its summary): mean {fmt(latency.get('mean'))} ms, "
        f"p95 {fmt(latency.get('p95'))} ms",
        f"- teach of {teach['used']} frames + {teach['replayed']} replayed: new model in use "
        f"{fmt(teach['latency_s'])} s after stop, reply after {fmt(teach['reply_s'])} s",
        f"- peak RSS: {fmt(loop['peak_rss_mb'])} MB; exit code {loop['exit_code']}",
        "",
    ]


def markdown_report(result: Mapping[str, Any]) -> str:
    """The results as Markdown: targets first, then one section per measurement."""
    machine = result["machine"]
    load = result["load_average_start"][0], result["load_average_end"][0]
    out = [
        "# edge-cl bench-perf",
        "",
        f"Command: `{result['command']}` (edge_cl {result['edge_cl']}, {result['started_utc']}); "
        f"1-minute load average {load[0]:.2f} at start, {load[1]:.2f} at end, "
        f"{machine['cores']} cores.",
        "",
    ]
    if load[0] >= BUSY_LOAD:
        out += [
            f"**The machine was busy when this run started (load average {load[0]:.2f}): its "
            "timings are not valid results.**",
            "",
        ]
    if machine["emulation"] is not None:
        out += [
            f"**Emulated ({machine['emulation']}): only relative figures (ratios to the matmul "
            "peak, one runtime against another) mean anything; absolute timings do not.**",
            "",
        ]
    out += ["## Targets", "", *(f"- {t['line']}" for t in result["targets"]), ""]
    out += _machine_lines(machine)
    if "extractor" in result:
        out += _extractor_lines(result["extractor"])
    if "learner" in result:
        out += _learner_lines(result["learner"])
    if "loop" in result:
        out += _loop_lines(result["loop"])
    return "\n".join(out)
