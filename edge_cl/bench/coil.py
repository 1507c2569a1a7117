"""COIL-100 streams: the plain turntable protocols (``coil100-s2/-s4/-s8``), the held-out arc
(``coil100-arc``) and the streams re-shot in sessions (``coil100-sessions``,
``coil100-clutter`` and their ``-nc``/``-ni`` orders), with the renderer's image jobs.

:mod:`edge_cl.bench.scenarios` describes each protocol and lists their numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_cl.bench.filelists import Scenario, Split
from edge_cl.bench.orders import FIRST_BATCH_CLASSES, Unit, nc_batches, ni_batches, nic_batches
from edge_cl.bench.render import Conditions, SessionRenderer, pick_photos, session_backgrounds
from edge_cl.errors import DatasetError
from edge_cl.images import read_image

DEFINITION_SEED = 0
COIL_DIR = Path("coil100") / "images"
PHOTOS_DIR = Path("imagenet-samples") / "images"
RENDER_VERSION = 1
RENDER_STAMP = "render.json"
JPEG_QUALITY = 92
_COIL_RE = re.compile(r"obj(\d+)__(\d+)\.png")


def coil_views(images_dir: str | os.PathLike[str]) -> dict[int, list[tuple[int, str]]]:
    """COIL-100 object number -> its views as (angle in degrees, file name), sorted by angle."""
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DatasetError(f"COIL-100 images not found at {folder}")
    views: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir(folder):
        match = _COIL_RE.fullmatch(name)
        if match:
            views.setdefault(int(match.group(1)), []).append((int(match.group(2)), name))
    if not views:
        raise DatasetError(f"{folder} holds no COIL-100 files named objN__A.png")
    return {obj: sorted(views[obj]) for obj in sorted(views)}


def split_arcs(items: Sequence[Any], arcs: int) -> list[list[Any]]:
    """Cut ``items`` (in angle order) into ``arcs`` contiguous runs of near-equal length.

    >>> split_arcs(list(range(7)), 3)
    [[0, 1], [2, 3, 4], [5, 6]]
    """
    if not 1 <= arcs <= len(items):
        raise DatasetError(f"cannot cut {len(items)} views into {arcs} arcs")
    bounds = np.linspace(0, len(items), arcs + 1).round().astype(int)
    return [list(items[bounds[i] : bounds[i + 1]]) for i in range(arcs)]


def _is_coil_test(angle: int) -> bool:
    return (angle // 5) % 4 == 2


def coil100(
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    arcs: int = 4,
) -> Scenario:
    """COIL-100 with ``arcs`` sessions per object; test = views with angle index 2 mod 4."""
    root = Path(datasets_dir) / COIL_DIR
    views = coil_views(root)
    objects = list(views)
    units: list[Unit] = []
    test: Split = ([], [])
    for label, obj in enumerate(objects):
        train = [name for angle, name in views[obj] if not _is_coil_test(angle)]
        test[0].extend(name for angle, name in views[obj] if _is_coil_test(angle))
        test[1].extend([label] * (len(views[obj]) - len(train)))
        units += [(label, arc) for arc in split_arcs(train, arcs)]
    return Scenario(
        name=f"coil100-s{arcs}",
        root=root,
        train_batches=nic_batches(units, np.random.default_rng(seed)),
        test=test,
        meta={"seed": seed, "arcs": arcs, "classes": [f"obj{o}" for o in objects]},
    )


def _coil_test_arc(
    views: list[tuple[int, str]], length: int, rng: np.random.Generator
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(train, test): test is ``length`` consecutive views from a random start; train is the
    rest, starting right after the test arc (so it stays contiguous on the turntable circle)."""
    start = int(rng.integers(len(views)))
    turned = views[start:] + views[:start]
    return turned[length:], turned[:length]


def coil100_arc(
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    arcs: int = 4,
    test_views: int = 18,
    definition_seed: int = DEFINITION_SEED,
) -> Scenario:
    """COIL-100 whose test views are unseen viewpoints: one held-out arc of ``test_views``
    consecutive views per object (random start, from ``definition_seed``); the remaining views
    form ``arcs`` training sessions, as in ``coil100-s4``."""
    root = Path(datasets_dir) / COIL_DIR
    views = coil_views(root)
    rng = np.random.default_rng(definition_seed)
    units: list[Unit] = []
    test: Split = ([], [])
    for label, obj in enumerate(views):
        train, held = _coil_test_arc(views[obj], test_views, rng)
        test[0].extend(name for _, name in held)
        test[1].extend([label] * len(held))
        units += [(label, [name for _, name in arc]) for arc in split_arcs(train, arcs)]
    return Scenario(
        name="coil100-arc",
        root=root,
        train_batches=nic_batches(units, np.random.default_rng(seed)),
        test=test,
        meta={
            "seed": seed,
            "arcs": arcs,
            "test_views": test_views,
            "definition_seed": definition_seed,
            "classes": [f"obj{o}" for o in views],
        },
    )


RenderJob = tuple[str, str, int, int, int]  # source file, destination, session, object, angle


RESHOOTS: dict[str, dict[str, float]] = {
    "coil100-sessions": {"single_arc_fraction": 0.0, "strength": 1.5},
    "coil100-clutter": {"single_arc_fraction": 0.2, "strength": 1.0},
}
"""The COIL-100 streams re-shot in sessions, with their defaults (:func:`coil100_reshot`)."""


def coil100_reshot(
    name: str,
    datasets_dir: Path,
    seed: int = 0,
    image_root: Path | None = None,
    render: bool = True,
    *,
    arcs: int = 4,
    test_sessions: int = 2,
    single_arc_fraction: float | None = None,
    strength: float | None = None,
    definition_seed: int = DEFINITION_SEED,
    objects: int | None = None,
    protocol: str = "nic",
) -> Scenario:
    """COIL-100 re-shot in sessions: arc ``s`` of every object in session ``s``, test views
    (angle index 2 mod 4) in ``test_sessions`` held-out sessions (as CORe50 tests on sessions
    it never trains on), each session under its own optics (light level, tone curve, colour
    cast, blur, noise; :meth:`Conditions.random` at ``strength``); a ``single_arc_fraction`` of
    the objects keeps only one training arc. ``name`` (one of :data:`RESHOOTS`, which gives the
    defaults of those two) sets the scene:

    - ``coil100-sessions``: each session has its own background texture;
    - ``coil100-clutter``: the objects cut out and composited, smaller and off-centre, onto
      crops of real photographs (three per session; held-out ones for the test sessions).

    ``objects`` keeps only the first objects (for quick checks). ``protocol`` orders the same
    rendered images as a NICv2-like stream (``nic``), class-incremental with 10 new objects a
    batch (``nc``, :func:`nc_batches`) or one session a batch (``ni``, :func:`ni_batches`).
    """
    if name not in RESHOOTS:
        raise DatasetError(f"unknown re-shot COIL-100 stream {name!r}; one of {list(RESHOOTS)}")
    defaults = RESHOOTS[name]
    if single_arc_fraction is None:
        single_arc_fraction = defaults["single_arc_fraction"]
    sessions_total = arcs + test_sessions
    optics = defaults["strength"] if strength is None else strength
    make_renderer = (
        _sessions_renderer(sessions_total, optics)
        if name == "coil100-sessions"
        else _clutter_renderer(datasets_dir, sessions_total, optics)
    )
    if protocol not in ("nic", "nc", "ni"):
        raise DatasetError(f"protocol must be 'nic', 'nc' or 'ni', got {protocol!r}")
    source = Path(datasets_dir) / COIL_DIR
    views = coil_views(source)
    views = {o: views[o] for o in list(views)[:objects]}
    rng = np.random.default_rng([definition_seed, zlib.crc32(name.encode())])
    rare = {int(o) for o in rng.choice(list(views), round(single_arc_fraction * len(views)), False)}
    jobs: list[RenderJob] = []
    units: list[Unit] = []
    unit_sessions: list[int] = []
    test: Split = ([], [])

    def job(obj: int, angle: int, file: str, session: int) -> str:
        dest = f"s{session}/obj{obj}/obj{obj}__{angle}.jpg"
        jobs.append((file, dest, session, obj, angle))
        return dest

    for label, obj in enumerate(views):
        train = [v for v in views[obj] if not _is_coil_test(v[0])]
        sessions = list(enumerate(split_arcs(train, arcs)))
        if obj in rare:
            sessions = [sessions[int(rng.integers(arcs))]]
        for s, arc in sessions:
            units.append((label, [job(obj, a, f, s) for a, f in arc]))
            unit_sessions.append(s)
        held = [v for v in views[obj] if _is_coil_test(v[0])]
        test[0].extend(job(obj, a, f, arcs + i % test_sessions) for i, (a, f) in enumerate(held))
        test[1].extend([label] * len(held))
    meta: dict[str, Any] = {
        "seed": seed,
        "arcs": arcs,
        "test_sessions": test_sessions,
        "single_arc_objects": sorted(f"obj{o}" for o in rare),
        "definition_seed": definition_seed,
        "classes": [f"obj{o}" for o in views],
    }
    if render:
        if image_root is None:
            raise DatasetError(f"{name} renders images: give an image_root to write them to")
        renderer, backgrounds = make_renderer(rng)
        meta["conditions"] = [asdict(c) for c in renderer.conditions]
        meta["backgrounds"] = backgrounds
        meta["renderer"] = {
            k: v for k, v in vars(renderer).items() if k not in ("conditions", "backgrounds")
        }
        definition = {k: v for k, v in meta.items() if k != "seed"}
        meta["render_seconds"] = render_jobs(jobs, renderer, source, image_root, [name, definition])
    order = np.random.default_rng(seed)
    if protocol == "nc":
        batches = nc_batches(units, order, FIRST_BATCH_CLASSES)
    elif protocol == "ni":
        batches = ni_batches(units, unit_sessions, order)
    else:
        batches = nic_batches(units, order)
    return Scenario(
        name=name if protocol == "nic" else f"{name}-{protocol}",
        root=Path(image_root or "images"),
        train_batches=batches,
        test=test,
        meta={**meta, "protocol": protocol},
    )


def _sessions_renderer(
    sessions: int, strength: float
) -> Callable[[np.random.Generator], tuple[SessionRenderer, list[list[str]]]]:
    def make(rng: np.random.Generator) -> tuple[SessionRenderer, list[list[str]]]:
        conditions = [Conditions.random(rng, strength) for _ in range(sessions)]
        renderer = SessionRenderer(conditions, session_backgrounds(sessions, rng))
        return renderer, [["texture"]] * sessions

    return make


def _clutter_renderer(
    datasets_dir: Path, sessions: int, strength: float, per_session: int = 3
) -> Callable[[np.random.Generator], tuple[SessionRenderer, list[list[str]]]]:
    def make(rng: np.random.Generator) -> tuple[SessionRenderer, list[list[str]]]:
        folder = Path(datasets_dir) / PHOTOS_DIR
        if not folder.is_dir():
            raise DatasetError(f"background photographs not found at {folder}")
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpeg", ".jpg")))
        if len(files) < sessions * per_session:
            raise DatasetError(f"{folder}: need {sessions * per_session} photographs")
        chosen = [files[i] for i in rng.choice(len(files), sessions * per_session, False)]
        photos = [read_image(folder / f) for f in chosen]
        conditions = [Conditions.random(rng, strength) for _ in range(sessions)]
        backgrounds = pick_photos(photos, sessions, per_session)
        renderer = SessionRenderer(
            conditions, backgrounds, scale=(0.55, 0.9), shift=1.0, crop_fraction=0.35
        )
        return renderer, [chosen[s * per_session : (s + 1) * per_session] for s in range(sessions)]

    return make


def render_jobs(
    jobs: Sequence[RenderJob],
    renderer: SessionRenderer,
    source: Path,
    image_root: str | os.PathLike[str],
    definition: object,
) -> float:
    """Render ``jobs`` into ``image_root`` as JPEG files; returns the seconds spent.

    Each image draws its randomness from its own (object, angle, session) seed, so the result
    does not depend on the order of the jobs. ``render.json`` records a digest of the
    definition and the jobs: a folder already rendered for the same definition is reused.
    """
    root = Path(image_root)
    defined = json.dumps([RENDER_VERSION, definition], sort_keys=True, default=str)
    image_seed = zlib.crc32(defined.encode())
    digest = hashlib.sha256(json.dumps([defined, sorted(jobs)]).encode()).hexdigest()
    stamp = root / RENDER_STAMP
    try:
        done = json.loads(stamp.read_text(encoding="utf-8")).get("digest") == digest
    except (OSError, ValueError, AttributeError):
        done = False
    if done and all((root / dest).is_file() for _, dest, *_ in jobs):
        return 0.0
    stamp.unlink(missing_ok=True)
    start = time.perf_counter()
    for file, dest, session, obj, angle in jobs:
        rng = np.random.default_rng([image_seed, obj, angle, session])
        out = renderer.render(read_image(source / file), session, rng)
        path = root / dest
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), out[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise DatasetError(f"cannot write rendered image {path}")
    seconds = time.perf_counter() - start
    stamp.write_text(json.dumps({"digest": digest, "images": len(jobs)}) + "\n")
    return round(seconds, 1)
