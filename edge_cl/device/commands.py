"""What the device does when asked: the control socket's commands and the MCU's requests.

Both channels (and the keyboard of ``scripts/capture.py``) act through :class:`Commands`, so a
teach from the MCU's button and one from ``edge-cl ctl teach`` take the same path and meet the
same refusals: the socket hears an error reply, the MCU a NACK with its reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_cl.device.classifier import Classifier
from edge_cl.device.config import check_unknown_accept
from edge_cl.device.control import Handler
from edge_cl.device.metrics import FrameMetrics
from edge_cl.device.teach import TeachError, TeachSession, device_label
from edge_cl.device.worker import LearnerWorker, WorkerBusy
from edge_cl.errors import ConfigError, EdgeClError, LabelError
from edge_cl.learner.labels import Label
from edge_cl.learner.protocol import Learner
from firmware_bridge.protocol import (
    ErrorCode,
    Forget,
    Hello,
    Message,
    NackReason,
    Save,
    TeachStart,
    TeachStop,
)

JOB_TIMEOUT = 120.0
"""Seconds a control command waits for its learn, forget or save job."""


class JobFailed(EdgeClError):
    """A learn, forget or save job failed; the model in use is the previous one."""


def known_label(classes: Sequence[Label], label: str) -> Label | None:
    """The class of ``classes`` whose name is ``label`` (int classes match their decimal
    text), or None.

    >>> known_label([3, "cup"], "3"), known_label([3, "cup"], "pen")
    (3, None)
    """
    for cls in classes:
        if str(cls) == label:
            return cls
    return None


def unknown_threshold(model: Learner) -> float | None:
    """The threshold ``model`` flags unknown below, where it shows one (``novelty_threshold``
    or ``unknown_threshold``, on its ``config`` or itself), else None.

    >>> from edge_cl.learner.baselines import NearestClassMean
    >>> unknown_threshold(NearestClassMean(unknown_threshold=0.25)), unknown_threshold(object())
    (0.25, None)
    """
    for holder in (getattr(model, "config", None), model):
        for name in ("novelty_threshold", "unknown_threshold"):
            value = getattr(holder, name, None)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value) if math.isfinite(value) else None
    return None


class Commands:
    """Teach, stop, save, forget, rename, unknown-accept and the queries, for the control socket
    (:meth:`handlers`) and the MCU (:meth:`on_mcu`; the protocol has no unknown-accept).
    ``status`` answers the ``status`` command; ``report`` sends
    the MCU an ERROR (a TEACH_STOP that had no frame to learn from).

    >>> import tempfile
    >>> from edge_cl.device.config import DeviceConfig
    >>> state = Path(tempfile.mkdtemp())
    >>> clf = Classifier.open(DeviceConfig(state_dir=state, runtime="onnx", cut="pool"))
    >>> worker = LearnerWorker(clf, state / "learner.ckpt")
    >>> teaching = TeachSession(worker, max_frames=8, target_frames=4)
    >>> reported = []
    >>> commands = Commands(
    ...     teaching, worker, clf, FrameMetrics(), checkpoint=state / "learner.ckpt",
    ...     status=lambda: {}, report=lambda code, text: reported.append((code.name, text)),
    ... )
    >>> handlers = commands.handlers()
    >>> handlers["teach"]({"label": "cup"})
    {'state': 'teaching', 'label': 'cup'}
    >>> commands.on_mcu(TeachStart("pen")) == NackReason.BAD_STATE
    True
    >>> commands.on_mcu(TeachStop()), reported, handlers["labels"]({})
    (None, [('CAMERA', 'no frames while teaching cup')], {'labels': []})
    """

    def __init__(
        self,
        teaching: TeachSession,
        worker: LearnerWorker,
        classifier: Classifier,
        metrics: FrameMetrics,
        *,
        checkpoint: Path,
        status: Callable[[], dict[str, Any]],
        report: Callable[[ErrorCode, str], None],
    ) -> None:
        self.teaching = teaching
        self.worker = worker
        self.classifier = classifier
        self.metrics = metrics
        self.checkpoint = checkpoint
        self.status = status
        self.report = report

    def handlers(self) -> dict[str, Handler]:
        """The control socket's commands (and the web page's): teach, stop, status, predict,
        save, forget, rename, labels, unknown-accept."""
        return {
            "teach": self._teach,
            "stop": self._stop,
            "status": lambda request: self.status(),
            "predict": self._predict,
            "save": self._save,
            "forget": self._forget,
            "rename": self._rename,
            "labels": lambda request: {"labels": self.classifier.learner.classes_},
            "unknown-accept": self._unknown_accept,
        }

    def on_mcu(self, message: Message) -> int | None:
        """Answer an MCU request: None to ACK, a NackReason to refuse."""
        if isinstance(message, Hello):
            self.teaching.abandon()  # the MCU (re)booted: its teach button state is gone
        elif isinstance(message, TeachStart):
            try:
                self.teaching.start(message.label)
            except TeachError:
                return NackReason.BAD_STATE
            except LabelError:
                return NackReason.MALFORMED
            except WorkerBusy:
                return NackReason.BUSY
        elif isinstance(message, TeachStop):
            try:
                future, info = self.teaching.stop()
            except TeachError:
                return NackReason.BAD_STATE
            if future is None:
                self.report(ErrorCode.CAMERA, f"no frames while teaching {info['label']}")
        elif isinstance(message, Save):
            self.worker.save()
        elif isinstance(message, Forget):
            label = known_label(self.classifier.learner.classes_, message.label)
            if label is None:
                return NackReason.UNKNOWN_LABEL
            try:
                self.worker.forget(label)
            except WorkerBusy:
                return NackReason.BUSY
        else:
            return NackReason.UNSUPPORTED
        return None

    def _teach(self, request: dict[str, Any]) -> dict[str, Any]:
        label = request.get("label")
        if not isinstance(label, str):
            raise LabelError('teach needs a label: {"cmd": "teach", "label": "cup"}')
        return self.teaching.start(label)

    def _stop(self, request: dict[str, Any]) -> dict[str, Any]:
        future, info = self.teaching.stop()
        if future is None:
            raise TeachError(f"no frame arrived while teaching {info['label']!r}: nothing learned")
        if request.get("wait"):
            result = future.result(JOB_TIMEOUT)
            if not result.ok:
                raise JobFailed(f"learning {info['label']!r} failed: {result.error}")
            info.update(latency_s=result.latency_seconds, classes=list(result.classes))
        return info

    def _predict(self, request: dict[str, Any]) -> dict[str, Any]:
        latest = self.metrics.latest
        if latest is None:
            raise TeachError("no frame classified yet")
        reply = {k: v for k, v in latest.items() if k != "time"}
        return {**reply, "age_s": round(time.monotonic() - latest["time"], 3)}

    def _save(self, request: dict[str, Any]) -> dict[str, Any]:
        result = self.worker.save().result(JOB_TIMEOUT)
        if not result.ok:
            raise JobFailed(str(result.error))
        return {"checkpoint": str(self.checkpoint), "bytes": result.checkpoint_bytes}

    def _unknown_accept(self, request: dict[str, Any]) -> dict[str, Any]:
        """Set ``unknown_accept`` to ``request["value"]`` and recalibrate now; the new value
        and the threshold it gave (None where the learner shows none)."""
        if "value" not in request:
            raise ConfigError(
                'unknown-accept needs a value in (0, 1]: {"cmd": "unknown-accept", "value": 0.9}'
            )
        accept = check_unknown_accept(request["value"])
        result = self.worker.set_unknown_accept(accept).result(JOB_TIMEOUT)
        if not result.ok:
            raise JobFailed(f"recalibrating with unknown_accept {accept} failed: {result.error}")
        return {
            "unknown_accept": accept,
            "unknown_threshold": unknown_threshold(self.classifier.learner),
        }

    def _forget(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("label")
        classes = self.classifier.learner.classes_
        label = known_label(classes, name) if isinstance(name, str) else None
        if label is None:
            raise LabelError(f"forget needs a known label, got {name!r}; known: {classes}")
        result = self.worker.forget(label).result(JOB_TIMEOUT)
        if not result.ok:
            raise JobFailed(str(result.error))
        return {"forgot": label, "classes": list(result.classes)}

    def _rename(self, request: dict[str, Any]) -> dict[str, Any]:
        """Call the known class ``request["label"]`` ``request["to"]``, keeping all it learned."""
        name, new = request.get("label"), request.get("to")
        classes = self.classifier.learner.classes_
        label = known_label(classes, name) if isinstance(name, str) else None
        if label is None:
            raise LabelError(
                f"rename needs a known label, got {name!r}; known: {classes}: "
                '{"cmd": "rename", "label": "cup", "to": "mug"}'
            )
        if not isinstance(new, str):
            raise LabelError(f'rename needs the new name as a string in "to", got {new!r}')
        result = self.worker.rename(label, device_label(new)).result(JOB_TIMEOUT)
        if not result.ok:
            raise JobFailed(str(result.error))
        return {"renamed": label, "to": new, "classes": list(result.classes)}
