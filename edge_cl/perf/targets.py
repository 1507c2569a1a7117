"""The issue's targets, each answered by one figure of the run with "met" or "missed".

Absolute figures are "n/a (emulated)" under qemu; only ``relative`` ones (ratios to the
matmul peak) are judged there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_cl.perf.report import fmt
from edge_cl.perf.settings import DEFAULT_REPLAYED


@dataclass(frozen=True)
class Target:
    """One target from the issue: ``value`` (None: not measured) against ``limit``."""

    text: str
    unit: str
    op: str
    limit: float
    value: float | None
    where: str = ""
    relative: bool = False

    def status(self, emulated: bool) -> str:
        """``met``, ``missed``, ``not measured``, or ``n/a (emulated)`` for absolute figures.

        >>> Target("fast", "frames/s", ">=", 200, 250.0).status(False)
        'met'
        >>> Target("small", "MB", "<=", 200, 250.0).status(True)
        'n/a (emulated)'
        """
        if self.value is None:
            return "not measured"
        if emulated and not self.relative:
            return "n/a (emulated)"
        ok = self.value >= self.limit if self.op == ">=" else self.value <= self.limit
        return "met" if ok else "missed"

    def line(self, emulated: bool) -> str:
        """The report's line: figure, where it comes from, target, verdict.

        >>> Target("start-up", "s", "<=", 2, 1.25, "edge-cl run").line(False)
        'start-up: 1.25 s (edge-cl run); target <= 2 s: met'
        """
        value = "-" if self.value is None else f"{fmt(self.value)} {self.unit}".strip()
        where = f" ({self.where})" if self.where else ""
        limit = f"{self.limit:g} {self.unit}".strip()
        return f"{self.text}: {value}{where}; target {self.op} {limit}: {self.status(emulated)}"


def _best(rows: Sequence[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    return max(found, key=lambda r: float(r["fps"])) if found else None


def _epochs(update: Mapping[str, Any]) -> str:
    """The epochs of an update as text, naming how many train the latent layers if not all."""
    text = f"{update['epochs']} epochs"
    deep = update.get("latent_epochs")
    if update.get("depth") == "latent" and deep is not None and deep < update["epochs"]:
        text += f" ({deep} through the latent layers)"
    return text


def _learner_targets(updates: Sequence[Mapping[str, Any]]) -> list[Target]:
    """Teach update time at the most threads, and the ratio to the matmul peak per thread count,
    for the smallest N at the latent depth (the device's)."""
    latent = [u for u in updates if u["depth"] == "latent"]
    if not latent:
        return [
            Target("teach update (30 new + all 1500 replayed)", "s", "<=", 0.5, None),
            Target("learner update, of matmul peak", "", ">=", 0.5, None, relative=True),
        ]
    new = min(u["new"] for u in latent)
    top = max(u["threads"] for u in latent)
    times, ratios = [], []
    for u in latent:
        if u["new"] != new:
            continue
        some = "all" if u["replay_per_epoch"] is None else f"{u['replayed']} of"
        mix = f"{u['new']} new + {some} {u['memory']} replayed, {_epochs(u)}"
        if u["threads"] == top:
            where = f"latent depth, {top} thread(s)"
            if u.get("ratio_to_peak"):  # its FLOPs at the matmul peak: no code runs faster
                where += f"; {fmt(u['seconds'] * u['ratio_to_peak'])} s at the matmul peak"
            times.append(Target(f"teach update ({mix})", "s", "<=", 0.5, u["seconds"], where))
        if u["replay_per_epoch"] is None:
            text = f"learner update, {u['threads']} thread(s), of matmul peak"
            value = u["ratio_to_peak"]
            ratios.append(Target(text, "", ">=", 0.5, value, f"latent, {mix}", relative=True))
    return times + ratios


def _unknown_target(inference: Sequence[Mapping[str, Any]]) -> Target:
    """The unknown score's share of one frame's head inference, at the latent depth, one frame
    at a time (as the device classifies), at the most threads measured.

    >>> rows = [{"depth": "latent", "batch": 1, "threads": 2, "unknown_share": 0.01}]
    >>> _unknown_target(rows).status(False)
    'met'
    """
    text = "unknown score per frame, of head inference"
    rows = [r for r in inference if r["depth"] == "latent" and r["batch"] == 1]
    if not rows or "unknown_share" not in rows[0]:
        return Target(text, "", "<=", 0.1, None, relative=True)
    row = max(rows, key=lambda r: r["threads"])
    where = f"latent, 1 frame, {row['threads']} thread(s)"
    return Target(text, "", "<=", 0.1, row["unknown_share"], where, relative=True)


def targets(result: Mapping[str, Any]) -> list[Target]:
    """The issue's targets, each with the figure of this run that answers it."""
    out: list[Target] = []
    rows = result.get("extractor", {}).get("rows", [])
    for text, threads, precision, limit in (
        ("steady inference, 128 px int8, both cores", 2, "int8", 200),
        ("single-threaded inference, 128 px fp32", 1, "fp32", 60),
    ):
        best = _best(rows, resolution=128, precision=precision, threads=threads)
        where = f"{best['runtime']}, batch {best['batch']}" if best else ""
        value = float(best["fps"]) if best else None
        out.append(Target(text, "frames/s", ">=", limit, value, where))
    out += _learner_targets(result.get("learner", {}).get("updates", []))
    out.append(_unknown_target(result.get("learner", {}).get("inference", [])))
    loop = result.get("loop", {})
    teach = loop.get("teach", {})
    out += [
        Target(
            f"device loop teach latency ({teach.get('used', 30)} frames + "
            f"{teach.get('replayed', DEFAULT_REPLAYED)} replayed)",
            "s",
            "<=",
            0.5,
            teach.get("latency_s"),
            "stop -> new model in use",
        ),
        Target("device loop peak RSS", "MB", "<=", 200, loop.get("peak_rss_mb")),
        Target("device loop start-up to first prediction", "s", "<=", 2, loop.get("startup_s")),
    ]
    return out
