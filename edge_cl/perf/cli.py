"""``edge-cl bench-perf``: speed and footprint of the extractor, the learner and the device loop.

The sub-command's options map one to one onto ``PerfSettings`` fields; ``--quick`` starts from
``QUICK`` instead of the full defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

from edge_cl.perf import run
from edge_cl.perf.report import markdown_report
from edge_cl.perf.settings import QUICK, SECTIONS, PerfSettings


def _ints(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)`` (an argparse type).

    >>> _ints("1, 8,32")
    (1, 8, 32)
    """
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def settings_from_args(args: argparse.Namespace) -> PerfSettings:
    """``--quick`` (or full) settings, with every option given on the command line applied."""
    base = QUICK if args.quick else PerfSettings()
    given = {f.name: getattr(args, f.name) for f in fields(PerfSettings)}
    if args.loop_set is not None:
        given["loop_set"] = tuple(args.loop_set)
    return replace(base, **{k: v for k, v in given.items() if v is not None})


def cmd_bench_perf(args: argparse.Namespace) -> int:
    """Speed and footprint: extractor frames/s, learner update cost vs matmul peak, device loop."""
    settings = settings_from_args(args)
    result = run(settings, args.models, log=lambda line: print(line, file=sys.stderr, flush=True))
    report = markdown_report(result)
    print("\n" + report)
    for path, text in (
        (args.json, json.dumps(result, indent=1, default=str) + "\n"),
        (args.markdown, report + "\n"),
    ):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    return 0


def add_perf_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``bench-perf`` to the ``edge-cl`` sub-command parser."""
    p = sub.add_parser(
        "bench-perf", help=cmd_bench_perf.__doc__, description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--only",
        dest="sections",
        type=_names,
        default=None,
        help=f"comma-separated sections among {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument("--quick", action="store_true", help="small repeat counts (about 30 s)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--markdown", type=Path, default=None, help="write the report here")
    p.add_argument("--threads", type=_ints, default=None, help="thread counts (1,2)")
    p.add_argument("--runtimes", type=_names, default=None, help="extractor runtimes (onnx,litert)")
    p.add_argument("--precisions", type=_names, default=None, help="fp32,int8")
    p.add_argument("--batches", type=_ints, default=None, help="extractor batch sizes (1,8,32)")
    p.add_argument("--resolutions", type=_ints, default=None, help="input sizes (128,224)")
    p.add_argument("--repeats", type=int, default=None, help="timings per figure (median)")
    p.add_argument("--peak-size", type=int, default=None, help="matmul side of the peak (1024)")
    p.add_argument("--news", type=_ints, default=None, help="new latents per update (30,100,300)")
    p.add_argument("--replay", type=int, default=None, help="patterns in replay memory (1500)")
    p.add_argument("--replay-per-epoch", type=int, default=None, help="device default (256)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per update (4)")
    p.add_argument("--loop-seconds", type=float, default=None, help="steady window (10 s)")
    p.add_argument("--teach-frames", type=int, default=None, help="frames of the teach (30)")
    p.add_argument(
        "--loop-set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a device config override for the loop (repeatable), e.g. runtime=onnx",
    )
    p.set_defaults(func=cmd_bench_perf, min_seconds=None, camera=None)
