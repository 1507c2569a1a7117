"""``edge-cl demo``: the whole device in one process, no camera and no MCU needed.

A scene (rendered by :class:`~firmware_bridge.sources.SyntheticScene`, or real photographs of
objects with ``--source``), the MCU emulator on a real pseudo-terminal, and the
:class:`~edge_cl.device.loop.DeviceLoop` reading the scene and talking to the emulator over
that terminal as it would to a real MCU. A driver thread shows each object in turn, holds the
emulated teach button, then checks what the device predicts, and finally cycles through all
taught objects and :data:`NEVER_TAUGHT` objects of the scene it never taught: accuracy is
printed after every phase, the taught objects (right when named) and the never-taught ones
(right only when the device says "unknown") apart and together.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from edge_cl.device.classifier import NOTHING_IN_VIEW, Verdict
from edge_cl.device.config import DEFAULT_UI, DeviceConfig, parse_address
from edge_cl.device.loop import DeviceLoop
from edge_cl.errors import DatasetError, LabelError
from edge_cl.learner.registry import DEFAULT_LEARNER
from firmware_bridge.emulator import Emulator
from firmware_bridge.sources import (
    DEFAULT_OBJECTS,
    IMAGE_EXTENSIONS,
    CapturedFrame,
    FrameSource,
    ImageScene,
    SyntheticScene,
)

DEMO_FPS = 15.0
NEVER_TAUGHT = 2
"""Objects of the scene the demo never teaches, shown in its test phase."""
NEVER_TAUGHT_SYNTHETIC = ("orange cross", "cyan diamond", "pink ring")
"""The rendered scene's never-taught objects: the first :data:`NEVER_TAUGHT` of these not
taught (a colour and a shape, as ``DEFAULT_OBJECTS``)."""


def _natural(path: Path) -> list[Any]:
    """Sort key: numbers in the name compare as numbers (``obj2__5`` before ``obj2__10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def image_objects(spec: Path) -> dict[str, list[Path]]:
    """The objects of a folder or filelist of real images, each with its views in order.

    A filelist (``FILE[@ROOT]``, lines ``relative/path label``) names them; in a folder, an
    object is a subfolder (one folder per class), or, when all images share one folder, the
    part of the file name before ``__`` (COIL-100's ``obj7__45.png``).
    """
    text = str(spec)
    if "@" in text and not spec.exists():
        listing, _, root_text = text.rpartition("@")
        return _filelist_objects(Path(listing), Path(root_text))
    if spec.is_file():
        return _filelist_objects(spec, spec.parent)
    if not spec.is_dir():
        raise DatasetError(f"{spec} is neither a folder of images nor a filelist")
    files = sorted(
        (p for p in spec.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural
    )
    by_folder: dict[str, list[Path]] = {}
    for p in files:
        by_folder.setdefault(p.parent.name, []).append(p)
    if len(by_folder) >= 2:
        return by_folder
    by_prefix: dict[str, list[Path]] = {}
    for p in files:
        if "__" in p.stem:
            by_prefix.setdefault(p.stem.split("__")[0], []).append(p)
    if len(by_prefix) < 2:
        raise DatasetError(
            f"cannot tell objects apart in {spec}: use one subfolder per object, names like "
            "OBJECT__VIEW.png, or a filelist of 'relative/path label' lines"
        )
    return by_prefix


def _filelist_objects(listing: Path, root: Path) -> dict[str, list[Path]]:
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DatasetError(f"cannot read the filelist {listing}: {e}") from e
    out: dict[str, list[Path]] = {}
    for line in lines:
        fields = line.rsplit(maxsplit=1)
        if len(fields) == 2:
            out.setdefault(fields[1], []).append(root / fields[0])
    if len(out) < 2:
        raise DatasetError(f"{listing} names fewer than 2 labels: nothing to tell apart")
    return out


class Seen(NamedTuple):
    """One frame of a phase: what was in view (``truth``), what the device said (``answer``,
    as :func:`answer`) and whether it said unknown."""

    truth: str
    answer: str
    unknown: bool


def answer(verdict: Verdict) -> str:
    """The device's answer in one word or name: ``unknown``, ``nothing in view``, the label,
    or ``?`` before anything is learned (never the best guess of an unknown verdict).

    >>> answer(Verdict("cup", 0.4, True)), answer(Verdict("cup", 0.9, False))
    ('unknown', 'cup')
    """
    if verdict.label is None:
        return "?"
    if verdict.unknown:
        return "unknown"
    return NOTHING_IN_VIEW if verdict.empty else str(verdict.label)


@dataclass(frozen=True)
class Score:
    """A phase's frames right and in all: of taught objects (right: named) and of never-taught
    ones (right: said unknown)."""

    taught: tuple[int, int]
    never_taught: tuple[int, int]

    @property
    def total(self) -> tuple[int, int]:
        """Both together."""
        return self.taught[0] + self.never_taught[0], self.taught[1] + self.never_taught[1]


def share(hits: int, frames: int) -> float | None:
    """``hits / frames``, None without frames."""
    return hits / frames if frames else None


def percent(hits: int, frames: int) -> str:
    """``hits / frames`` as a whole percentage, ``-`` without frames.

    >>> percent(5, 6), percent(0, 0)
    ('83%', '-')
    """
    return f"{100 * hits / frames:.0f}%" if frames else "-"


@dataclass
class Tally:
    """Verdicts of the frames seen while a phase is open, by truth (thread-safe)."""

    phase: str | None = None
    rows: dict[str, list[Seen]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, frame: CapturedFrame, verdict: Verdict) -> None:
        """The loop's observer: record what was in view and what the device said, in the open
        phase."""
        with self.lock:
            if self.phase is not None and frame.truth is not None:
                seen = Seen(frame.truth, answer(verdict), verdict.unknown)
                self.rows.setdefault(self.phase, []).append(seen)

    @contextlib.contextmanager
    def open(self, phase: str) -> Iterator[None]:
        """Record into ``phase`` for the ``with`` block."""
        with self.lock:
            self.phase = phase
        try:
            yield
        finally:
            with self.lock:
                self.phase = None

    def score(self, phase: str, never_taught: Collection[str]) -> Score:
        """``phase``'s frames right and in all, the objects of ``never_taught`` apart.

        >>> tally = Tally()
        >>> tally.rows["test"] = [Seen("cup", "cup", False), Seen("cup", "unknown", True),
        ...                       Seen("pen", "unknown", True), Seen("pen", "cup", False)]
        >>> tally.score("test", {"pen"})
        Score(taught=(1, 2), never_taught=(1, 2))
        """
        with self.lock:
            rows = list(self.rows.get(phase, []))
        taught = [
            r.answer == r.truth and not r.unknown for r in rows if r.truth not in never_taught
        ]
        flagged = [r.unknown for r in rows if r.truth in never_taught]
        return Score((sum(taught), len(taught)), (sum(flagged), len(flagged)))

    def majority(self, phase: str, truth: str) -> str:
        """What the device mostly said for ``truth`` in ``phase``."""
        with self.lock:
            answers = [r.answer for r in self.rows.get(phase, []) if r.truth == truth]
        if not answers:
            return "-"
        said, count = Counter(answers).most_common(1)[0]
        return f"{said} ({count}/{len(answers)})"


class Driver:
    """Shows the objects, holds the emulated teach button, measures, prints. ``objects`` are
    taught one by one; ``never_taught`` are only shown in the test phase."""

    def __init__(
        self,
        loop: DeviceLoop,
        mcu: Emulator,
        show: Callable[[str | None, bool], None],
        objects: tuple[str, ...],
        tally: Tally,
        *,
        never_taught: tuple[str, ...] = (),
        teach_seconds: float,
        out: TextIO,
    ) -> None:
        self.loop, self.mcu, self.show, self.objects = loop, mcu, show, objects
        self.never_taught = never_taught
        self.tally, self.teach_seconds, self.out = tally, teach_seconds, out
        self.phases: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def say(self, text: str) -> None:
        """Print one line of the demo's story."""
        print(text, file=self.out, flush=True)

    def run(self) -> None:
        """The demo script; stops the loop at the end, whatever happens."""
        try:
            self._script()
        except BaseException as e:  # reported by run_demo after the loop stopped
            self.error = e
        finally:
            self.loop.request_stop("demo finished")

    def _measure(
        self, phase: str, objects: tuple[str, ...], seconds: float, held_out: bool
    ) -> None:
        with self.tally.open(phase):
            for obj in objects:
                self.show(obj, held_out)
                time.sleep(seconds)
        score = self.tally.score(phase, self.never_taught)
        (hits, frames), taught, flagged = score.total, score.taught, score.never_taught
        self.phases.append(
            {
                "phase": phase,
                "accuracy": round(share(hits, frames) or 0.0, 4),
                "frames": frames,
                "taught": {"accuracy": share(*taught), "frames": taught[1]},
                "never_taught": {"flagged_unknown": share(*flagged), "frames": flagged[1]},
            }
        )
        split = f"taught {percent(*taught)} of {taught[1]}"
        if flagged[1]:
            split += f", never taught flagged unknown {percent(*flagged)} of {flagged[1]}"
        seen = ", ".join(f"{o} -> {self.tally.majority(phase, o)}" for o in dict.fromkeys(objects))
        self.say(f"  {phase}: {percent(hits, frames)} of {frames} frames ({split})  [{seen}]")

    def _script(self) -> None:
        if not self.loop.ready.wait(60) or not self.mcu.connect(10.0):
            raise TimeoutError("the device loop did not start within 60 s")
        if self.loop.ui is not None:
            self.say(f"web page: {self.loop.ui.url} (while the demo runs)")
        worker = self.loop.worker
        for i, obj in enumerate(self.objects, start=1):
            self.show(obj, False)
            time.sleep(0.4)
            self.say(f"[{i}/{len(self.objects)}] showing {obj!r}; the MCU shows {self.mcu.display}")
            self.say(f"  holding the MCU's teach button for {self.teach_seconds:.1f} s")
            self.mcu.teach(obj, self.teach_seconds)
            worker.wait_idle(60)
            time.sleep(0.3)  # let the frame in flight and the next PREDICTION see the new model
            teach = self.loop.teaches[-1]
            self.say(
                f"  learned {teach['used']} of {teach['frames']} frames in "
                f"{teach['update_s']:.2f} s "
                f"({teach['latency_s']:.2f} s after the button came up); "
                f"the MCU shows {self.mcu.display}"
            )
            self._measure(f"after teaching {i}", self.objects[:i], 0.7, True)
        never = ", ".join(self.never_taught) or "none"
        self.say(
            "test: every object again, views not used for teaching, and objects never taught "
            f"({never}), right only when the device says unknown"
        )
        self._measure("test", (*self.objects, *self.never_taught) * 2, 1.0, True)
        self.show(None, False)


def free_address(address: str) -> str:
    """``address`` (``HOST:PORT``) if its port can be bound now, else the same host with port
    0 (any free one): a demo must not fail because something else serves 8080.

    >>> free_address("127.0.0.1:0")
    '127.0.0.1:0'
    """
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, port), family=family):
            return address
    except OSError:
        return f"[{host}]:0" if ":" in host else f"{host}:0"


def scene_objects(
    names: Collection[str], objects: int, seed: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The objects to teach (up to ``objects``) and the :data:`NEVER_TAUGHT` to hold back,
    drawn from ``names`` with ``seed``; ``DatasetError`` if fewer than 2 would be taught.

    >>> scene_objects(["a", "b", "c", "d", "e"], 2, seed=0)
    (('d', 'e'), ('a', 'b'))
    """
    if len(names) < 2 + NEVER_TAUGHT:
        raise DatasetError(
            f"the demo needs at least {2 + NEVER_TAUGHT} objects, 2 to teach and {NEVER_TAUGHT} "
            f"never taught; got {len(names)}: {sorted(names)}"
        )
    count = min(objects, len(names) - NEVER_TAUGHT)
    picked = random.Random(seed).sample(sorted(names), count + NEVER_TAUGHT)
    return tuple(sorted(picked[:count])), tuple(sorted(picked[count:]))


def run_demo(
    source: Path | None = None,
    state_dir: Path | None = None,
    *,
    objects: int = 4,
    teach_seconds: float = 1.5,
    seed: int = 0,
    learner: str = DEFAULT_LEARNER,
    ui: str | None = DEFAULT_UI,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Run the demo (about a minute) with ``learner`` (a name of
    :data:`edge_cl.learner.registry.LEARNERS`, on the features it eats), teaching ``objects``
    objects and holding :data:`NEVER_TAUGHT` back, with its web page at ``ui`` (another port if
    that one is taken; None: none); returns the loop's summary plus the phases'
    accuracy and, under ``never_taught``, those objects and the share of their test views the
    device flagged unknown."""
    if objects < 2:
        raise LabelError(f"the demo needs at least 2 objects to tell apart, got {objects}")
    scene: FrameSource
    if source is None:
        names = tuple(DEFAULT_OBJECTS[:objects])
        untaught = tuple(n for n in NEVER_TAUGHT_SYNTHETIC if n not in names)[:NEVER_TAUGHT]
        synthetic = SyntheticScene(fps=DEMO_FPS, seed=seed, objects=names + untaught)
        scene, show = synthetic, lambda label, held_out: synthetic.show(label)
    else:
        views = image_objects(source)
        names, untaught = scene_objects(views, objects, seed)
        images = ImageScene({k: views[k] for k in names + untaught}, fps=DEMO_FPS)
        scene, show = images, images.show
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-cl-")))
        mcu = stack.enter_context(Emulator.over_pty())
        mcu.start()
        config = DeviceConfig(
            state_dir=state_dir,
            serial=mcu.device_path,
            control_socket=state_dir / "edge-cl.sock",
            log_interval=3600.0,
            learner=learner,
            ui=None if ui is None else free_address(ui),
        )
        tally = Tally()
        loop = DeviceLoop(config, scene, observer=tally.observe)
        driver = Driver(
            loop,
            mcu,
            show,
            names,
            tally,
            never_taught=untaught,
            teach_seconds=teach_seconds,
            out=out,
        )
        driver.say(
            f"edge-cl demo: {scene.name} scene of {len(names)} objects to teach and "
            f"{len(untaught)} never taught ({', '.join(untaught)}), learner {learner} on "
            f"{config.cut} features, MCU emulator on {mcu.device_path}, state in {state_dir}"
        )
        thread = threading.Thread(target=driver.run, name="edge-cl-demo", daemon=True)
        thread.start()
        summary = loop.run()
        thread.join()
        if driver.error is not None:
            raise driver.error
        summary["phases"] = driver.phases
        summary["mcu_emulator"] = mcu.summary()
    flagged, views_shown = tally.score("test", untaught).never_taught
    summary["never_taught"] = {
        "objects": list(untaught),
        "views": views_shown,
        "flagged_unknown": flagged,
        "share": share(flagged, views_shown),
    }
    driver.say(
        f"done: {summary['frames']} frames at {summary['fps']:.1f} fps, classes "
        f"{summary['classes']}, teach latency "
        f"{', '.join(f'{t:.2f}' for t in summary['teach_latency_s'])} s; "
        f"MCU got {summary['mcu']['predictions']} predictions"
    )
    driver.say(
        f"never taught ({', '.join(untaught)}): {flagged} of {views_shown} views flagged "
        f"unknown ({percent(flagged, views_shown)}); the rest got a taught label"
    )
    return summary
