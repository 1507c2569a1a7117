"""Whether two ``edge-cl bench --json`` results hold the same figures, timings aside.

    python scripts/same_figures.py A.json B.json

Compares everything but what the clock or the way of running decides: keys naming seconds, the
``environment``, the ``command`` and ``settings.jobs`` / ``settings.dask``. Prints each
difference (the first 20) and exits 1 if there is any, 0 if none. ``docs/results/parallel.md``
compares ``--jobs 1`` and ``--jobs 2`` with it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IGNORED = {"environment", "command"}
IGNORED_SETTINGS = {"jobs", "dask"}


def figures(x: Any, path: str = "") -> Any:
    """``x`` without the keys the module docstring names."""
    if isinstance(x, dict):
        return {
            k: figures(v, f"{path}.{k}")
            for k, v in x.items()
            if k not in IGNORED
            and "seconds" not in k
            and not (path == ".settings" and k in IGNORED_SETTINGS)
        }
    if isinstance(x, list):
        return [figures(v, path) for v in x]
    return x


def differences(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Where ``a`` and ``b`` differ, as ``.key[index]: a != b`` lines."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                yield f"{path}.{k}: only in {'B' if k not in a else 'A'}"
            else:
                yield from differences(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from differences(x, y, f"{path}[{i}]")
    elif a != b:
        yield f"{path}: {a!r} != {b!r}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = (figures(json.loads(Path(p).read_text())) for p in argv)
    found = list(differences(a, b))
    for line in found[:20]:
        print(line)
    print(f"{len(found)} differences in the figures of {argv[0]} and {argv[1]}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
