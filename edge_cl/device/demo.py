"""``edge-cl demo``: the whole device in one process, no camera and no MCU needed.

A scene (rendered by :class:`~firmware_bridge.sources.SyntheticScene`, or real photographs of
objects with ``--source``), the MCU emulator on a real pseudo-terminal, and the
:class:`~edge_cl.device.loop.DeviceLoop` reading the scene and talking to the emulator over
that terminal as it would to a real MCU. A driver thread shows each object in turn, holds the
emulated teach button, then checks what the device predicts, and finally cycles through all
objects: accuracy is printed after every phase.
"""

from __future__ import annotations

import contextlib
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from edge_cl.device.classifier import Verdict
from edge_cl.device.config import DeviceConfig
from edge_cl.device.loop import DeviceLoop
from edge_cl.errors import DatasetError, LabelError
from edge_cl.learner.registry import DEFAULT_LEARNER
from firmware_bridge.emulator import Emulator
from firmware_bridge.protocol import Prediction
from firmware_bridge.sources import (
    DEFAULT_OBJECTS,
    IMAGE_EXTENSIONS,
    CapturedFrame,
    FrameSource,
    ImageScene,
    SyntheticScene,
)

DEMO_FPS = 15.0


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


@dataclass
class Tally:
    """Verdicts of the frames seen while a phase is open, by truth (thread-safe)."""

    phase: str | None = None
    rows: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, frame: CapturedFrame, verdict: Verdict) -> None:
        """The loop's observer: record ``(truth, label)`` in the open phase."""
        with self.lock:
            if self.phase is not None and frame.truth is not None:
                label = None if verdict.label is None else str(verdict.label)
                self.rows.setdefault(self.phase, []).append((frame.truth, label))

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

    def accuracy(self, phase: str) -> tuple[float, int]:
        """Accuracy and frame count of ``phase``."""
        with self.lock:
            rows = list(self.rows.get(phase, []))
        hits = sum(truth == label for truth, label in rows)
        return (hits / len(rows) if rows else 0.0), len(rows)

    def majority(self, phase: str, truth: str) -> str:
        """What was mostly predicted for ``truth`` in ``phase``."""
        with self.lock:
            labels = [label for t, label in self.rows.get(phase, []) if t == truth]
        if not labels:
            return "-"
        label, count = Counter(labels).most_common(1)[0]
        return f"{label or '?'} ({count}/{len(labels)})"


class Driver:
    """Shows the objects, holds the emulated teach button, measures, prints."""

    def __init__(
        self,
        loop: DeviceLoop,
        mcu: Emulator,
        show: Callable[[str | None, bool], None],
        objects: tuple[str, ...],
        tally: Tally,
        *,
        teach_seconds: float,
        out: TextIO,
    ) -> None:
        self.loop, self.mcu, self.show, self.objects = loop, mcu, show, objects
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

    def _mcu_display(self) -> str:
        for frame in reversed(self.mcu.received):
            if isinstance(frame.message, Prediction):
                p = frame.message
                if not p.label:
                    return "?"
                return f"{p.label} {p.confidence:.2f}{' (unknown)' if p.unknown else ''}"
        return "-"

    def _measure(
        self, phase: str, objects: tuple[str, ...], seconds: float, held_out: bool
    ) -> None:
        with self.tally.open(phase):
            for obj in objects:
                self.show(obj, held_out)
                time.sleep(seconds)
        accuracy, frames = self.tally.accuracy(phase)
        self.phases.append({"phase": phase, "accuracy": round(accuracy, 4), "frames": frames})
        seen = ", ".join(f"{o} -> {self.tally.majority(phase, o)}" for o in dict.fromkeys(objects))
        self.say(f"  {phase}: accuracy {accuracy:.2f} over {frames} frames  [{seen}]")

    def _script(self) -> None:
        if not self.loop.ready.wait(60) or not self.mcu.connect(10.0):
            raise TimeoutError("the device loop did not start within 60 s")
        worker = self.loop.worker
        for i, obj in enumerate(self.objects, start=1):
            self.show(obj, False)
            time.sleep(0.4)
            self.say(
                f"[{i}/{len(self.objects)}] showing {obj!r}; the MCU shows {self._mcu_display()}"
            )
            self.say(f"  holding the MCU's teach button for {self.teach_seconds:.1f} s")
            self.mcu.teach(obj, self.teach_seconds)
            worker.wait_idle(60)
            time.sleep(0.3)  # let the frame in flight and the next PREDICTION see the new model
            teach = self.loop.teaches[-1]
            self.say(
                f"  learned {teach['used']} of {teach['frames']} frames in "
                f"{teach['update_s']:.2f} s "
                f"({teach['latency_s']:.2f} s after the button came up); "
                f"the MCU shows {self._mcu_display()}"
            )
            self._measure(f"after teaching {i}", self.objects[:i], 0.7, True)
        self.say("test: every object again, views not used for teaching")
        self._measure("test", self.objects * 2, 1.0, True)
        self.show(None, False)


def run_demo(
    source: Path | None = None,
    state_dir: Path | None = None,
    *,
    objects: int = 4,
    teach_seconds: float = 1.5,
    seed: int = 0,
    learner: str = DEFAULT_LEARNER,
    out: TextIO = sys.stdout,
) -> dict[str, Any]:
    """Run the demo (about a minute) with ``learner`` (a name of
    :data:`edge_cl.learner.registry.LEARNERS`, on the features it eats); returns the loop's
    summary plus the phases' accuracy."""
    if objects < 2:
        raise LabelError(f"the demo needs at least 2 objects to tell apart, got {objects}")
    scene: FrameSource
    if source is None:
        names = tuple(DEFAULT_OBJECTS[:objects])
        synthetic = SyntheticScene(fps=DEMO_FPS, seed=seed, objects=names)
        scene, show = synthetic, lambda label, held_out: synthetic.show(label)
    else:
        views = image_objects(source)
        names = tuple(sorted(random.Random(seed).sample(sorted(views), min(objects, len(views)))))
        images = ImageScene({k: views[k] for k in names}, fps=DEMO_FPS)
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
        )
        tally = Tally()
        loop = DeviceLoop(config, scene, observer=tally.observe)
        driver = Driver(loop, mcu, show, names, tally, teach_seconds=teach_seconds, out=out)
        driver.say(
            f"edge-cl demo: {scene.name} scene of {len(names)} objects, learner {learner} on "
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
    driver.say(
        f"done: {summary['frames']} frames at {summary['fps']:.1f} fps, classes "
        f"{summary['classes']}, teach latency "
        f"{', '.join(f'{t:.2f}' for t in summary['teach_latency_s'])} s; "
        f"MCU got {summary['mcu']['predictions']} predictions"
    )
    return summary
