"""Bytes the latent cache writes to extract a 43,000-image stream, against the store it leaves.

The stream is every image of tiny-imagenet32-100 and CIFAR-10, train and test (25,000 + 18,000
files), asked the way ``edge-cl bench`` asks for it: ``study.load_stream`` of the
``tinyimagenet-nic`` then the ``cifar10-nic`` scenario (seed 0), one lookup per training batch
(40 and 50 images) and one for each test set; ``--whole`` asks the whole stream in one lookup
instead. Latents come from the study's extractor (LiteRT int8, 128 px, 2 threads) and go to a
new temporary cache folder, removed at the end. Bytes written are the process's ``wchar``
(``/proc/self/io``, Linux only) before and after; the store's size is that of its files.

    .venv/bin/python experiments/cache_writes.py
    .venv/bin/python experiments/cache_writes.py --whole
    .venv/bin/python experiments/cache_writes.py --module /tmp/cache_writes_before/latents_v1.py

``--module`` measures another version of ``edge_cl/bench/latents.py`` (for example the one before
a change, copied out of the checkout); results in ``experiments/results/cache_writes.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from edge_cl.bench import latents
from edge_cl.bench.scenarios import DEFAULT_DATASETS, build
from edge_cl.bench.study import load_stream
from edge_cl.extractor import open_extractor
from edge_cl.extractor.manifest import Manifest

SCENARIOS = ("tinyimagenet-nic", "cifar10-nic")


def written_bytes() -> int:
    """Bytes this process has passed to write() so far (``wchar`` of ``/proc/self/io``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "wchar":
            return int(value)
    raise RuntimeError("/proc/self/io has no wchar line")


def load_module(path: Path | None) -> Any:
    """``edge_cl.bench.latents``, or the module in the file ``path``."""
    if path is None:
        return latents
    spec = importlib.util.spec_from_file_location("latents_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def folder_bytes(folder: Path) -> tuple[int, int]:
    """Total size and number of the files in ``folder``."""
    sizes = [f.stat().st_size for f in folder.iterdir() if f.is_file()]
    return sum(sizes), len(sizes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", type=Path, default=None, help="another latents.py to measure")
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--whole", action="store_true", help="one lookup for the whole stream")
    args = parser.parse_args()
    if not Path("/proc/self/io").exists():
        raise SystemExit("needs /proc/self/io (Linux)")
    module = load_module(args.module)
    ex = open_extractor("latent", "litert", "int8", threads=2, manifest=Manifest.load())
    scenarios = [build(name, args.datasets, seed=0) for name in SCENARIOS]
    folder = Path(tempfile.mkdtemp(prefix="edge_cl_cache_writes_"))
    try:
        cache = module.LatentCache(folder, ex)
        images = lookups = 0
        before = written_bytes()
        if args.whole:
            files = [
                f for s in scenarios for i in range(len(s.train_batches)) for f in s.train_files(i)
            ]
            files += [f for s in scenarios for f in s.test_files()]
            images, lookups = len(cache.get(files)), 1
        else:
            for scenario in scenarios:
                stream = load_stream(scenario, cache)
                images += sum(len(x) for x, _ in stream.batches) + len(stream.test_x)
                lookups += len(stream.batches) + 1
                del stream
        written = written_bytes() - before
        store, files_in_store = folder_bytes(Path(cache.store))
        source = args.module or os.path.relpath(latents.__file__)
        print(f"module {source}, store version {module.STORE_VERSION}, folder {folder}")
        print(f"{images} images ({cache.extracted} extracted) in {lookups} lookups")
        print(f"written {written:,} bytes ({written / 2**30:.2f} GiB)")
        print(f"store {store:,} bytes ({store / 2**30:.2f} GiB) in {files_in_store} files")
        print(f"written / store = {written / store:.2f}")
    finally:
        shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
