"""The CORe50 sample frames in ``../shared/datasets/core50-samples`` as lines of CORe50's
filelists, shared by the tests of the filelist loader and of the study."""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path("core50-samples") / "core50_128x128"
"""Where the sample frames are under the datasets folder (the official ``sS/oO/`` layout)."""


def session_lines(root: Path, session: str, label: str = "object") -> list[str]:
    """Lines ``sS/oO/C_SS_OO_FFF.png label`` for the frames of ``session`` under ``root``, in
    file order; ``label`` ``object`` is O - 1 (as CORe50's lists), ``category`` is the object's
    category, (O - 1) // 5."""
    frames = sorted((root / session).glob("o*/C_*.png"))
    assert frames, f"no CORe50 frames in {root / session}"
    lines = []
    for f in frames:
        obj = int(f.parent.name[1:]) - 1
        lines.append(f"{f.relative_to(root).as_posix()} {obj // 5 if label == 'category' else obj}")
    return lines
