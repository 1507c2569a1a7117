"""The ``edge-cl`` command line: ``info``, ``classify``, ``verify``, ``bench``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_cl import __version__
from edge_cl.bench.filelists import Scenario
from edge_cl.bench.parallel import blas_limits
from edge_cl.bench.scenarios import DEFAULT_DATASETS, SUITES, available, image_folder
from edge_cl.device.cli import add_device_commands
from edge_cl.errors import DatasetError, EdgeClError
from edge_cl.extractor import RUNTIME_FORMATS, open_extractor
from edge_cl.extractor import litert as litert_backend
from edge_cl.extractor import onnx as onnx_backend
from edge_cl.extractor.imagenet import PretrainedHead, imagenet_files
from edge_cl.extractor.manifest import Manifest
from edge_cl.images import read_image
from edge_cl.learner.layers import softmax
from edge_cl.perf.cli import add_perf_command
from edge_cl.sysinfo import cores, cpu_features

if TYPE_CHECKING:
    from edge_cl.bench.latents import LatentCache


def cmd_info(args: argparse.Namespace) -> int:
    """Models with their sha256 status, runtimes available, CPU features and threads."""
    print(f"edge_cl {__version__}  python {platform.python_version()}  {platform.machine()}")
    print(f"cpu: {cores()} usable cores; features: {' '.join(cpu_features()) or 'unknown'}")
    providers = onnx_backend.available()
    print(f"onnxruntime: {', '.join(providers) if providers else 'not installed'}")
    print(f"litert: {litert_backend.available() or 'not installed (pip install ai-edge-litert)'}")
    manifest = Manifest.load(args.models)
    origin = "--models" if args.models is not None else manifest.origin
    weights = f"{manifest.model}, {manifest.source.get('package')}"
    print(f"models: {manifest.root}  (from {origin}; {weights})")
    status_ok = True
    for a in manifest.artifacts:
        try:
            a.verify()
            status = "ok"
        except EdgeClError as e:
            status, status_ok = f"BAD: {e}", False
        print(f"  {a.name:24s} {a.format:6s} {a.precision:4s} {a.cut:6s} sha256 {status}")
    return 0 if status_ok else 1


def cmd_classify(args: argparse.Namespace) -> int:
    """ImageNet top-5 of each image through extractor -> numpy head."""
    manifest = Manifest.load(args.models)
    ex = open_extractor(
        "latent", args.runtime, args.precision, args.resolution, args.threads, manifest=manifest
    )
    head = PretrainedHead.load(manifest.head())
    names = _class_names(args.datasets)
    for path in args.images:
        p = softmax(head.logits(ex.frames([read_image(path)]))[0])
        print(path)
        for i in np.argsort(-p)[:5]:
            print(f"  {p[i]:6.3f}  {names[i] if names else i}")
    return 0


def _class_names(datasets: Path) -> list[str]:
    folder = datasets / "imagenet-samples" / "images"
    return imagenet_files(folder)[2] if folder.is_dir() else []


def cmd_verify(args: argparse.Namespace) -> int:
    """Top-1/top-5 of every shipped variant on real photos, and ONNX/TFLite parity."""
    from edge_cl.extractor.verify import verify_models

    manifest = Manifest.load(args.models)
    images = args.datasets / "imagenet-samples" / "images"
    result = verify_models(manifest, images, tuple(args.resolutions), args.threads, print)
    for c in result["checks"]:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}  ({c['value']:.4g})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if result["passed"] else 1


def _study_inputs(
    args: argparse.Namespace, names: Sequence[str]
) -> tuple[Manifest, LatentCache, list[Callable[[int], Scenario]], int]:
    """What ``bench`` and ``bench-openset`` share: ``names`` checked (unless ``--filelists``),
    matplotlib checked for ``--plots``, the manifest, the latent cache of the extractor, the
    scenario builders (ordering i of ``--filelists`` is its run i, else a seed) and the number
    of orderings (default 3 seeds, or every run of ``--filelists``)."""
    from edge_cl.bench.filelists import load_filelist_runs
    from edge_cl.bench.latents import LatentCache
    from edge_cl.bench.scenarios import build

    if args.filelists is None:
        unknown = [n for n in names if n not in available()]
        if unknown:
            raise DatasetError(f"unknown scenarios {unknown}; choose from {', '.join(available())}")
    if args.plots:
        from edge_cl.bench.plots import require_matplotlib

        require_matplotlib()
    manifest = Manifest.load(args.models)
    ex = open_extractor(
        "latent", args.runtime, args.precision, args.resolution, args.threads, manifest=manifest
    )
    cache = LatentCache(args.cache / "latents", ex)
    if args.filelists is not None:
        if args.root is None:
            raise EdgeClError("--filelists needs --root (the folder the filelists' paths start at)")
        orderings = load_filelist_runs(args.root, args.filelists, args.runs)
        return manifest, cache, [lambda run: orderings[run]], len(orderings)
    images, datasets = args.cache / "images", args.datasets

    def builder(name: str) -> Callable[[int], Scenario]:
        return lambda seed: build(name, datasets, seed, images / image_folder(name))

    runs = 3 if args.runs is None else args.runs
    return manifest, cache, [builder(name) for name in names], runs


QUICK = {
    "scenario": ["coil100-clutter-nc", "coil100-clutter-ni"],
    "suite": None,
    "strategies": "ar1-latent,cumulative-latent,slda,slda-latent",
    "runs": 2,
    "eval_points": 3,
}
"""``edge-cl bench --quick``: the default learner against cumulative retraining and streaming LDA
on a small class-incremental and a small new-instances stream of the dev suite, 2 orderings each
(about 2 minutes)."""


def cmd_bench(args: argparse.Namespace) -> int:
    """The lifecycle study: strategies over orderings of real image streams."""
    from edge_cl.bench import report as study_report
    from edge_cl.bench import study
    from edge_cl.bench.latents import clear_cache
    from edge_cl.extractor.imagenet import head_arrays

    if args.clear_cache:
        freed = clear_cache(args.cache / "latents")
        print(f"cleared the latent cache at {args.cache / 'latents'}: {freed / 2**20:.1f} MB freed")
        return 0
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    names = SUITES[args.suite] if args.suite else args.scenario
    manifest, cache, scenarios, args.runs = _study_inputs(args, names)
    command = "edge-cl " + " ".join(sys.argv[1:])

    def write(path: Path | None, text: str, final: bool) -> None:
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            if final:
                print(f"wrote {path}")

    def save(result: dict[str, Any], final: bool) -> str:
        """Write the JSON, the plots and the Markdown summary of the results so far."""
        result["command"] = command
        result["extractor"] = cache.extractor.artifact.name
        write(args.json, json.dumps(result, indent=1, default=str) + "\n", final)
        plots: list[str] = []
        if args.plots:  # after the JSON: a figure that fails to draw loses no result
            from edge_cl.bench.plots import plot_study

            base = args.markdown.parent if args.markdown else Path.cwd()
            plots = [os.path.relpath(p, base) for p in plot_study(result, args.plots)]
        report = study_report.markdown_report(result, plots)
        write(args.markdown, report, final)
        return report

    with blas_limits(args.threads):
        result = study.bench(
            scenarios,
            args.strategies.split(","),
            cache,
            head_arrays(manifest.head()),
            args.runs,
            args.eval_points,
            args.replay_mb,
            args.epochs,
            predictions_per_batch=args.predictions_per_batch,
            on_ordering=lambda partial: save(partial, final=False),
            jobs=args.jobs,
            dask=args.dask,
            threads=args.threads,
        )
    print("\n" + save(result, final=True))
    at_once = result["settings"]["jobs"]
    where = f" on the Dask cluster at {args.dask}" if args.dask else ""
    print(f"wall time: {result['wall_seconds']:.1f} s, runs at once: {at_once}{where}")
    print(f"latent cache: {cache.nbytes / 2**20:.1f} MB at {cache.store} (--clear-cache)")
    if args.quick:
        failures = study_report.quick_check(result)
        for failure in failures:
            print(f"edge-cl bench --quick: FAILED: {failure}", file=sys.stderr)
        return 1 if failures else 0
    return 0


def cmd_bench_openset(args: argparse.Namespace) -> int:
    """The open-set report: how well the default learner flags objects it was never taught."""
    from edge_cl.bench import openset
    from edge_cl.extractor.imagenet import head_arrays

    manifest, cache, scenarios, runs = _study_inputs(args, args.scenario)
    with blas_limits(args.threads):
        result = openset.bench_openset(
            scenarios, cache, head_arrays(manifest.head()), runs, args.at, args.accept
        )
    result["command"] = "edge-cl " + " ".join(sys.argv[1:])
    result["extractor"] = cache.extractor.artifact.name
    written: list[Path] = []
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
        written.append(args.json)
    plots: list[str] = []
    if args.plots:  # after the JSON: a figure that fails to draw loses no result
        from edge_cl.bench.plots import plot_openset

        base = args.markdown.parent if args.markdown else Path.cwd()
        figures = plot_openset(result, args.plots)
        plots = [os.path.relpath(p, base) for p in figures]
        written += figures
    report = openset.markdown_report(result, plots)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
        written.append(args.markdown)
    print("\n" + report)
    for path in written:
        print(f"wrote {path}")
    return 0


_STRATEGIES = "strategies:"
"""The epilog of ``edge-cl bench --help``: :class:`_BenchHelp` lists the strategies under it."""


class _BenchHelp(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every default in the help, and the study's strategies, one line each, under its epilog:
    the study is imported only when the help is shown, not by every ``edge-cl`` command."""

    def add_text(self, text: str | None) -> None:
        if text == _STRATEGIES:
            from edge_cl.bench import study

            lines = [f"  {name:30s} {s.help}" for name, s in study.strategies().items()]
            text = "\n".join([text, *lines])
        super().add_text(text)


def _stream_options(parser: argparse.ArgumentParser, scenarios: list[str]) -> None:
    """The streams a study runs on, as :func:`_study_inputs` reads them (bench, bench-openset):
    generated ``--scenario`` (default ``scenarios``), or ``--filelists`` under ``--root``, and
    how many orderings (``--runs``)."""
    parser.add_argument(
        "--scenario",
        nargs="+",
        default=scenarios,
        help="generated scenarios to run: " + ", ".join(available()),
    )
    parser.add_argument("--root", type=Path, default=None, help="image root of --filelists")
    parser.add_argument(
        "--filelists",
        type=Path,
        default=None,
        help="CORe50-format filelists instead of --scenario: one ordering's folder "
        "(train_batch_XX_filelist.txt, test_filelist.txt), or a protocol's folder of run0/, "
        "run1/, ... (e.g. NIC_v2_391/)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="orderings: seeds 0..N-1 of each generated scenario (default 3), run0..run{N-1} "
        "of --filelists (default: every run it holds)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``edge-cl``."""
    parser = argparse.ArgumentParser(prog="edge-cl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge_cl {__version__}")
    parser.add_argument("--models", type=Path, default=None, help="models folder (manifest.json)")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help=cmd_info.__doc__)
    info.set_defaults(func=cmd_info)

    def runtime_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--runtime", choices=sorted(RUNTIME_FORMATS), default="onnx", help="extractor runtime"
        )
        p.add_argument(
            "--precision", choices=["fp32", "int8"], default="fp32", help="extractor weights"
        )
        p.add_argument(
            "--resolution", type=int, default=None, help="input side, a multiple of 32 (None: 128)"
        )
        p.add_argument(
            "--threads", type=int, default=1, help="extractor threads (bench: numpy's too)"
        )
        p.add_argument(
            "--datasets", type=Path, default=DEFAULT_DATASETS, help="the shared image datasets"
        )

    classify = sub.add_parser("classify", help=cmd_classify.__doc__)
    classify.add_argument("images", nargs="+", type=Path)
    runtime_options(classify)
    classify.set_defaults(func=cmd_classify)

    verify = sub.add_parser("verify", help=cmd_verify.__doc__)
    verify.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    verify.add_argument("--resolutions", type=int, nargs="+", default=[128, 224])
    verify.add_argument("--threads", type=int, default=1)
    verify.add_argument("--json", type=Path, default=None, help="write the results here")
    verify.set_defaults(func=cmd_verify)

    bench = sub.add_parser(
        "bench",
        help=cmd_bench.__doc__,
        description=cmd_bench.__doc__,
        formatter_class=_BenchHelp,
        epilog=_STRATEGIES,
    )
    _stream_options(bench, ["coil100-sessions"])
    bench.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default=None,
        help="run a whole scenario set instead: dev (defaults may be chosen on it) or holdout "
        "(only confirms them): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in SUITES.items()),
    )
    bench.add_argument(
        "--strategies",
        default="ar1-latent,cumulative-latent,slda,slda-latent",
        help="comma-separated strategy names (listed below)",
    )
    bench.add_argument(
        "--eval-points", type=int, default=5, help="test-set evaluations, spread over the stream"
    )
    bench.add_argument(
        "--replay-mb", type=float, default=8.0, help="replay memory of the AR1* strategies"
    )
    bench.add_argument("--epochs", type=int, default=4, help="epochs per batch of the SGD learners")
    bench.add_argument(
        "--predictions-per-batch",
        type=int,
        default=300,
        help="frames the device classifies per learned batch (a CORe50 session: 15 s at 20 fps), "
        "counted in the life-cycle compute (0: updates alone)",
    )
    bench.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "edge_cl",
        help="rendered images and extracted latents, kept between studies",
    )
    bench.add_argument(
        "--clear-cache",
        action="store_true",
        help="remove the extracted latents under --cache (every model's) and exit",
    )
    bench.add_argument("--json", type=Path, default=None, help="write the results here")
    bench.add_argument("--markdown", type=Path, default=None, help="write the summary here")
    bench.add_argument("--plots", type=Path, default=None, help="write PNG figures here")
    bench.add_argument(
        "--quick",
        action="store_true",
        help="two small dev streams, 2 runs each; exit 1 if the default AR1* ends more than 3 "
        "points behind cumulative retraining or more than 1 behind streaming LDA",
    )
    bench.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs (one strategy over one ordering) at once, in that many worker processes, "
        "each with numpy's BLAS held to max(1, --threads // --jobs) threads; 1 runs them one "
        "after another here, BLAS held to --threads. The figures are the same but for the "
        "timings when the runs have as many BLAS threads (settings.blas_threads): at the "
        "default --threads 2, --jobs 2 gives those of --jobs 1 --threads 1 (OpenBLAS sums "
        "some large products in an order that depends on its threads)",
    )
    bench.add_argument(
        "--dask",
        metavar="ADDRESS",
        default=None,
        help="run the runs on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786) "
        "instead, one per worker thread, each held to 1 BLAS thread; --jobs is then not used. "
        "Its workers need edge_cl installed; this needs pip install 'edge_cl[cluster]'",
    )
    runtime_options(bench)
    bench.set_defaults(func=cmd_bench, runtime="litert", precision="int8", threads=2)

    openset = sub.add_parser(
        "bench-openset",
        help=cmd_bench_openset.__doc__,
        description=cmd_bench_openset.__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _stream_options(openset, ["coil100-sessions", "tinyimagenet-nc", "cifar10-nc"])
    openset.add_argument(
        "--at",
        type=float,
        default=0.5,
        help="fraction of each stream's batches learned; classes seen by then are known",
    )
    openset.add_argument(
        "--accept",
        type=float,
        default=0.95,
        help="share of taught views the device's calibrated threshold lets pass",
    )
    openset.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "edge_cl",
        help="rendered images and extracted latents, shared with edge-cl bench",
    )
    openset.add_argument("--json", type=Path, default=None, help="write every figure here")
    openset.add_argument("--markdown", type=Path, default=None, help="write the report here")
    openset.add_argument("--plots", type=Path, default=None, help="write ROC curves (PNG) here")
    runtime_options(openset)
    openset.set_defaults(func=cmd_bench_openset, runtime="litert", precision="int8", threads=2)
    add_device_commands(sub)
    add_perf_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edge-cl`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except EdgeClError as e:
        print(f"edge-cl: error: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
