"""The device loop: camera -> classifier -> predictions out; teach, save and forget in.

:class:`DeviceLoop` reads the newest frame (:class:`~firmware_bridge.sources.LatestFrame`),
classifies it, and sends the verdict to its sinks: a log line every ``log_interval`` seconds,
PREDICTION frames to the MCU (rate limited), STATUS on every state change, an optional MJPEG
preview, and systemd (READY after the first prediction, WATCHDOG pings). Between ``teach(label)``
and ``stop_teach()`` (from the control socket, the MCU's teach button or the keyboard) it keeps
the frames' latents and then hands an evenly spaced subset to the
:class:`~edge_cl.device.worker.LearnerWorker`, which learns in the background and checkpoints.
It resumes from the checkpoint at start, saves on SIGTERM/SIGINT, and returns a JSON-ready
summary when it stops (signal, end of a finite source, ``max_seconds`` or ``max_frames``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from edge_cl.device.classifier import Classifier, Verdict
from edge_cl.device.config import DeviceConfig
from edge_cl.device.control import ControlServer, Handler
from edge_cl.device.mcu import McuBridge
from edge_cl.device.outputs import MjpegPreview, memory_mb, sd_notify, watchdog_period
from edge_cl.device.worker import MAX_QUEUED_UPDATES, JobResult, LearnerWorker, WorkerBusy
from edge_cl.errors import EdgeClError, FrameError, LabelError
from edge_cl.learner.labels import Label, check_label
from edge_cl.learner.protocol import replay_memory
from edge_cl.learner.registry import learner_name
from firmware_bridge.protocol import (
    MAX_LABEL_BYTES,
    MAX_TEXT_BYTES,
    ErrorCode,
    ErrorReport,
    Forget,
    Hello,
    LearnerState,
    Message,
    NackReason,
    Prediction,
    Save,
    SerialLink,
    Status,
    TeachStart,
    TeachStop,
)
from firmware_bridge.sources import CapturedFrame, FrameSource, LatestFrame, open_source

log = logging.getLogger("edge_cl.device")

JOB_TIMEOUT = 120.0
"""Seconds a control command waits for its learn, forget or save job."""
GREETING_TIMEOUT = 2.0
"""Seconds the camera waits for the HELLO handshake with the MCU before starting anyway."""


class TeachError(EdgeClError):
    """A teach or stop request does not fit the loop's state (already teaching, not teaching)."""


class JobFailed(EdgeClError):
    """A learn, forget or save job failed; the model in use is the previous one."""


def wire_text(text: object, limit: int = MAX_LABEL_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary (for the MCU).

    >>> wire_text("tasse à café", 7)
    'tasse '
    """
    data = str(text).replace("\x00", " ").encode()[:limit]
    return data.decode(errors="ignore")


class TeachBuffer:
    """Latents kept while teach is held: at most ``max_frames``, evenly spread over the whole
    hold (when full, every other one is dropped and later frames are kept half as often).

    >>> buffer = TeachBuffer("cup", max_frames=4)
    >>> for i in range(10):
    ...     buffer.add(np.full((2,), i, np.float32))
    >>> buffer.seen, buffer.take(3)[:, 0].tolist()
    (10, [0.0, 4.0, 8.0])
    """

    def __init__(self, label: Label, max_frames: int) -> None:
        self.label = label
        self.max_frames = max_frames
        self.seen = 0
        self.started = time.monotonic()
        self._kept: list[np.ndarray] = []
        self._stride = 1

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, latent: np.ndarray) -> None:
        """Offer the latent of the next frame."""
        self.seen += 1
        if (self.seen - 1) % self._stride:
            return
        self._kept.append(latent)
        if len(self._kept) > self.max_frames:
            self._kept = self._kept[::2]
            self._stride *= 2

    def take(self, target: int) -> np.ndarray:
        """``target`` of the kept latents (all if fewer), evenly spaced, as one batch."""
        count = min(target, len(self._kept))
        index = np.unique(np.linspace(0, len(self._kept) - 1, count).round().astype(int))
        return np.stack([self._kept[i] for i in index])


class DeviceLoop:
    """Runs the device: see the module docstring. ``source`` and ``link`` replace the ones the
    config names (tests, the demo); ``classifier`` skips opening one; ``observer`` is called
    with every classified frame and its verdict, from the loop's thread.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from firmware_bridge.sources import SyntheticScene
    >>> state = Path(tempfile.mkdtemp())
    >>> config = DeviceConfig(state_dir=state, runtime="onnx", cut="pool", max_frames=3)
    >>> summary = DeviceLoop(config, SyntheticScene(size=(96, 96))).run()
    >>> summary["frames"], summary["stopped_by"], summary["classes"]
    (3, 'max_frames', [])
    """

    def __init__(
        self,
        config: DeviceConfig,
        source: FrameSource | None = None,
        link: SerialLink | None = None,
        *,
        classifier: Classifier | None = None,
        observer: Callable[[CapturedFrame, Verdict], None] | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.link = link
        self.classifier = classifier
        self.observer = observer
        self.worker: LearnerWorker | None = None
        self.bridge: McuBridge | None = None
        self.ready = threading.Event()
        """Set after the first prediction."""
        self._stopping = threading.Event()
        self._stopped_by = ""
        self._lock = threading.Lock()
        self._stop_lock = threading.Lock()  # one stop_teach at a time (MCU and socket)
        self._teach: TeachBuffer | None = None
        self._state = LearnerState.IDLE
        self._latest: dict[str, Any] | None = None
        self._teaches: list[dict[str, Any]] = []
        self._queued_teaches: deque[dict[str, Any]] = deque()  # learn jobs run in order
        self._source_stats: dict[str, Any] = {}
        self._frames = 0
        self._bad_frames = 0  # unusable frames from the source (empty), dropped
        self._labelled = 0
        self._unknown = 0
        self._scored = [0, 0]  # frames with a truth (not teaching), correct ones
        self._scored_known = [0, 0]  # the same, only where the truth was a known class
        self._latencies: deque[float] = deque(maxlen=2000)
        self._interval = {"frames": 0, "latency": 0.0, "start": 0.0}
        self._last_frame = 0.0  # monotonic time the last frame was taken

    # ------------------------------------------------------------------- teaching, control
    def teach(self, label: str) -> dict[str, Any]:
        """Start collecting frames of ``label``; ``TeachError`` if already teaching."""
        checked = check_label(label)
        try:
            size = len(str(checked).encode())
        except UnicodeEncodeError as e:  # a lone surrogate, e.g. "\ud800" in the JSON request
            raise LabelError(f"label {label!r} is not valid Unicode text: {e.reason}") from e
        if size > MAX_LABEL_BYTES:
            raise LabelError(f"label {label!r} is longer than {MAX_LABEL_BYTES} bytes of UTF-8")
        if self.worker is not None and not self.worker.has_room():
            raise WorkerBusy(
                f"cannot teach {checked!r} now: the learner has {MAX_QUEUED_UPDATES} updates "
                "waiting; try again when it is idle"
            )
        with self._lock:
            if self._teach is not None:
                raise TeachError(
                    f"already teaching {self._teach.label!r}: stop it first (ctl stop)"
                )
            self._teach = TeachBuffer(checked, self.config.teach_max_frames)
        log.info("teach %r: collecting frames", checked)
        self._publish_state()
        return {"state": "teaching", "label": checked}

    def stop_teach(self) -> tuple[Future[JobResult] | None, dict[str, Any]]:
        """Stop collecting and queue the learning; the job's future (None if no frame came)
        and what was collected. ``TeachError`` if not teaching. The teach ends only once its
        learning is queued: if taking its frames fails, it goes on and a stop can be retried."""
        with self._stop_lock:
            with self._lock:
                buffer = self._teach
            if buffer is None:
                raise TeachError("not teaching: start with teach LABEL")
            info: dict[str, Any] = {
                "label": buffer.label,
                "frames": buffer.seen,
                "kept": len(buffer),
            }
            future = None
            if len(buffer) == 0:
                log.warning(
                    "teach %r: no frame arrived while teaching, nothing learned", buffer.label
                )
            else:
                latents = buffer.take(self.config.teach_target_frames)
                info["used"] = len(latents)
                assert self.worker is not None
                future = self.worker.learn(
                    buffer.label, latents, since=time.monotonic(), reserved=True
                )
                with self._lock:
                    self._queued_teaches.append(info)
                log.info(
                    "teach %r: learning %d of %d frames", buffer.label, len(latents), buffer.seen
                )
            with self._lock:
                self._teach = None
        self._publish_state()
        return future, info

    def abandon_teach(self) -> None:
        """Drop a teach in progress without learning from it."""
        with self._lock:
            buffer, self._teach = self._teach, None
        if buffer is not None:
            log.warning("teach %r abandoned (%d frames dropped)", buffer.label, buffer.seen)
            self._publish_state()

    def request_stop(self, reason: str = "request") -> None:
        """Make :meth:`run` finish (safe from signal handlers and other threads)."""
        if not self._stopping.is_set():
            self._stopped_by = reason
            self._stopping.set()

    @property
    def teaches(self) -> list[dict[str, Any]]:
        """One record per learned (or failed) teach so far, oldest first."""
        with self._lock:
            return list(self._teaches)

    def known(self, label: str) -> Label | None:
        """The class whose name is ``label`` (int classes match their decimal text), or None."""
        assert self.classifier is not None
        for cls in self.classifier.learner.classes_:
            if str(cls) == label:
                return cls
        return None

    def status(self) -> dict[str, Any]:
        """What the loop is doing now (the ``status`` control command)."""
        assert self.classifier is not None
        learner = self.classifier.learner
        with self._lock:
            teaching = self._teach
            scored = list(self._scored)
        return {
            "state": self._state.name.lower(),
            "teaching": teaching.label if teaching is not None else None,
            "teach_frames": teaching.seen if teaching is not None else 0,
            "learner": learner_name(learner),
            "classes": learner.classes_,
            "frames": self._frames,
            "accuracy": scored[1] / scored[0] if scored[0] else None,
            "jobs_pending": self.worker.busy if self.worker else False,
            "jobs_queued": self.worker.pending if self.worker else 0,
            "checkpoint": str(self.config.checkpoint),
            "mcu": self.bridge.connected if self.bridge else None,
            "memory_mb": memory_mb(),
        }

    def _status_message(self) -> Status:
        assert self.classifier is not None
        learner = self.classifier.learner
        memory = replay_memory(learner)
        used = memory.nbytes if memory is not None else 0
        return Status(self._state, min(len(learner.classes_), 65535), min(used, 2**32 - 1))

    def _publish_state(self) -> None:
        assert self.worker is not None
        with self._lock:
            state = LearnerState.TEACHING if self._teach is not None else self.worker.state
            if state == self._state:
                return
            self._state = state
        log.info("state: %s", state.name.lower())
        if self.bridge is not None:
            self.bridge.send(self._status_message())

    def _on_result(self, result: JobResult) -> None:
        if result.job == "learn":
            with self._lock:
                info = self._queued_teaches.popleft() if self._queued_teaches else {}
                record = {
                    **info,
                    "label": result.label,
                    "ok": result.ok,
                    "error": result.error,
                    "latency_s": round(result.latency_seconds or 0.0, 4),
                    "update_s": round(result.update_seconds, 4),
                }
                self._teaches.append(record)
            if result.ok:
                log.info(
                    "learned %r in %.2f s (%.2f s after the label); classes %s",
                    result.label,
                    result.update_seconds,
                    result.latency_seconds or 0.0,
                    list(result.classes),
                )
        if not result.ok and self.bridge is not None:
            code = ErrorCode.STORAGE if result.failed_at == "checkpoint" else ErrorCode.MODEL
            self.bridge.send(ErrorReport(code, wire_text(result.error, MAX_TEXT_BYTES)))

    def _on_mcu(self, message: Message) -> int | None:
        """Answer an MCU request: None to ACK, a NackReason to refuse."""
        assert self.worker is not None
        if isinstance(message, Hello):
            self.abandon_teach()  # the MCU (re)booted: its teach button state is gone
        elif isinstance(message, TeachStart):
            try:
                self.teach(message.label)
            except TeachError:
                return NackReason.BAD_STATE
            except LabelError:
                return NackReason.MALFORMED
            except WorkerBusy:
                return NackReason.BUSY
        elif isinstance(message, TeachStop):
            try:
                future, info = self.stop_teach()
            except TeachError:
                return NackReason.BAD_STATE
            if future is None and self.bridge is not None:
                text = f"no frames while teaching {info['label']}"
                self.bridge.send(ErrorReport(ErrorCode.CAMERA, wire_text(text, MAX_TEXT_BYTES)))
        elif isinstance(message, Save):
            self.worker.save()
        elif isinstance(message, Forget):
            label = self.known(message.label)
            if label is None:
                return NackReason.UNKNOWN_LABEL
            try:
                self.worker.forget(label)
            except WorkerBusy:
                return NackReason.BUSY
        else:
            return NackReason.UNSUPPORTED
        return None

    def commands(self) -> dict[str, Handler]:
        """The control socket's commands: teach, stop, status, predict, save, forget, labels."""
        return {
            "teach": self._cmd_teach,
            "stop": self._cmd_stop,
            "status": lambda request: self.status(),
            "predict": self._cmd_predict,
            "save": self._cmd_save,
            "forget": self._cmd_forget,
            "labels": lambda request: {"labels": self.status()["classes"]},
        }

    def _cmd_teach(self, request: dict[str, Any]) -> dict[str, Any]:
        label = request.get("label")
        if not isinstance(label, str):
            raise LabelError('teach needs a label: {"cmd": "teach", "label": "cup"}')
        return self.teach(label)

    def _cmd_stop(self, request: dict[str, Any]) -> dict[str, Any]:
        future, info = self.stop_teach()
        if future is None:
            raise TeachError(f"no frame arrived while teaching {info['label']!r}: nothing learned")
        if request.get("wait"):
            result = future.result(JOB_TIMEOUT)
            if not result.ok:
                raise JobFailed(f"learning {info['label']!r} failed: {result.error}")
            info.update(latency_s=result.latency_seconds, classes=list(result.classes))
        return info

    def _cmd_predict(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            latest = self._latest
        if latest is None:
            raise TeachError("no frame classified yet")
        reply = {k: v for k, v in latest.items() if k != "time"}
        return {**reply, "age_s": round(time.monotonic() - latest["time"], 3)}

    def _cmd_save(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.worker is not None
        result = self.worker.save().result(JOB_TIMEOUT)
        if not result.ok:
            raise JobFailed(str(result.error))
        return {"checkpoint": str(self.config.checkpoint), "bytes": result.checkpoint_bytes}

    def _cmd_forget(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.worker is not None
        name = request.get("label")
        label = self.known(name) if isinstance(name, str) else None
        if label is None:
            known = self.status()["classes"]
            raise LabelError(f"forget needs a known label, got {name!r}; known: {known}")
        result = self.worker.forget(label).result(JOB_TIMEOUT)
        if not result.ok:
            raise JobFailed(str(result.error))
        return {"forgot": label, "classes": list(result.classes)}

    # --------------------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        """Run until stopped; returns the summary (see :meth:`summary`)."""
        config = self.config
        started = time.monotonic()
        previous = self._install_signals()
        try:
            if self.classifier is None:
                self.classifier = Classifier.open(config)
            log.info("learner: %s", self.classifier.resumed)
            source = self.source or open_source(
                config.source, fps=config.fps, size=config.capture_size, loop=config.loop
            )
            self.worker = LearnerWorker(
                self.classifier,
                config.checkpoint,
                unknown_accept=config.unknown_accept,
                on_state=lambda state: self._publish_state(),
                on_result=self._on_result,
            ).start()
            try:
                self._serve(source)
            finally:
                self._finish()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.summary(time.monotonic() - started, source.name)

    def _serve(self, source: FrameSource) -> None:
        config = self.config
        with ControlServer(config.socket_path, self.commands()).start():
            if self.link is not None or config.serial:
                self.bridge = McuBridge(
                    self.link or str(config.serial),
                    self._on_mcu,
                    self._status_message,
                    baudrate=config.baudrate,
                    prediction_hz=config.prediction_hz,
                ).start()
                self.bridge.greeted.wait(GREETING_TIMEOUT)
            preview = MjpegPreview(config.preview, config.preview_fps) if config.preview else None
            latest = LatestFrame(source)
            latest.start()
            log.info("reading %s; control socket %s", source.name, config.socket_path)
            try:
                self._frames_loop(latest, preview)
            finally:
                latest.stop()
                self._source_stats = {"name": source.name, **latest.stats}
                if latest.last_error:
                    self._source_stats["last_error"] = latest.last_error
                if preview is not None:
                    preview.close()

    def _frames_loop(self, latest: LatestFrame, preview: MjpegPreview | None) -> None:
        config = self.config
        start = time.monotonic()
        deadline = start + config.max_seconds if config.max_seconds else float("inf")
        next_log = start + config.log_interval
        next_ping, ping = start, watchdog_period()
        self._interval["start"] = start
        while not self._stopping.is_set():
            pause = self._learning_pause()
            if pause > 0:
                self._stopping.wait(pause)
            elif (frame := latest.get(timeout=0.25)) is not None:
                self._last_frame = time.monotonic()
                try:
                    self._process(frame, preview)
                except FrameError as e:  # a camera glitch (empty frame): drop it, keep running
                    self._bad_frames += 1
                    if self._bad_frames == 1 or self._bad_frames % 1000 == 0:
                        log.warning(
                            "dropped unusable frame %d (%d so far): %s",
                            frame.index,
                            self._bad_frames,
                            e,
                        )
            elif latest.ended:
                self.request_stop("end of source")
            now = time.monotonic()
            if config.max_frames is not None and self._frames >= config.max_frames:
                self.request_stop("max_frames")
            if now >= deadline:
                self.request_stop("max_seconds")
            if now >= next_log:
                self._log_line(now)
                next_log = now + config.log_interval
            if now >= next_ping and self.ready.is_set():
                sd_notify("WATCHDOG=1")
                next_ping = now + ping

    def _learning_pause(self) -> float:
        """Seconds to wait before taking the next frame: while the learner trains, frames are
        taken at most ``learning_fps`` times a second, so the update gets the cores."""
        limit = self.config.learning_fps
        if not limit or self.worker is None or not self.worker.busy:
            return 0.0
        return min(0.25, self._last_frame + 1.0 / limit - time.monotonic())

    def _process(self, frame: CapturedFrame, preview: MjpegPreview | None) -> None:
        assert self.classifier is not None
        latent = self.classifier.latents([frame.image])
        verdict = self.classifier.predict(latent)[0]
        now = time.monotonic()
        latency_ms = (now - frame.timestamp) * 1000
        with self._lock:
            teaching = self._teach
            if teaching is not None:
                teaching.add(latent[0])
            self._latest = {
                "label": verdict.label,
                "confidence": round(verdict.confidence, 4),
                "unknown": verdict.unknown,
                "latency_ms": round(latency_ms, 1),
                "frame": frame.index,
                "truth": frame.truth,
                "time": now,
            }
            self._frames += 1
            self._interval["frames"] += 1
            self._interval["latency"] += latency_ms
            self._latencies.append(latency_ms)
            if verdict.label is not None:
                self._labelled += 1
                self._unknown += verdict.unknown
                if frame.truth is not None and teaching is None:
                    self._score(frame.truth, verdict.label)
        if self.bridge is not None:
            label = "" if verdict.label is None else wire_text(verdict.label)
            confidence = min(1.0, max(0.0, verdict.confidence))
            unknown = verdict.unknown or not label
            ms = int(min(latency_ms, 65535))
            self.bridge.send_prediction(Prediction(label, confidence, unknown, ms))
        if preview is not None:
            text = (
                "learning..."
                if verdict.label is None
                else f"{verdict.label} {verdict.confidence:.2f}"
            )
            preview.write(frame.image, f"{text}{' ?' if verdict.unknown else ''}")
        if self.observer is not None:
            self.observer(frame, verdict)
        if not self.ready.is_set():
            self.ready.set()
            sd_notify(f"READY=1\nSTATUS=classifying {self.classifier.extractor.artifact.name}")

    def _score(self, truth: str, label: Label) -> None:
        hit = str(label) == truth
        self._scored[0] += 1
        self._scored[1] += hit
        assert self.classifier is not None
        if any(str(c) == truth for c in self.classifier.learner.classes_):
            self._scored_known[0] += 1
            self._scored_known[1] += hit

    def _log_line(self, now: float) -> None:
        assert self.classifier is not None
        with self._lock:
            latest = self._latest
            frames, latency = self._interval["frames"], self._interval["latency"]
            seconds = now - self._interval["start"]
            self._interval.update(frames=0, latency=0.0, start=now)
            scored, known = list(self._scored), list(self._scored_known)
        if latest is None:
            log.info("no frame yet (%.0f s)", seconds)
            return
        accuracy = f"{scored[1] / scored[0]:.3f} of {scored[0]}" if scored[0] else "-"
        if known[0]:
            accuracy += f" ({known[1] / known[0]:.3f} on taught objects)"
        log.info(
            "%s %.2f%s | %.1f fps | %.0f ms | accuracy %s | %s | %d classes",
            latest["label"] if latest["label"] is not None else "(nothing learned)",
            latest["confidence"],
            " unknown" if latest["unknown"] else "",
            frames / seconds if seconds > 0 else 0.0,
            latency / frames if frames else 0.0,
            accuracy,
            self._state.name.lower(),
            len(self.classifier.learner.classes_),
        )

    def _finish(self) -> None:
        """After the frames stop: drop a teach in progress, finish queued jobs, save if the
        model changed since its last checkpoint, say goodbye to the MCU."""
        self.abandon_teach()
        worker = self.worker
        assert worker is not None
        if worker.dirty or worker.busy:
            worker.save()
        worker.stop()
        if self.bridge is not None:
            self.bridge.stop()
        sd_notify("STOPPING=1")
        log.info("stopped (%s); checkpoint %s", self._stopped_by, self.config.checkpoint)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum: int, frame: object) -> None:
            self.request_stop(signal.Signals(signum).name)

        return {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def summary(self, seconds: float, source: str) -> dict[str, Any]:
        """Frames (and unusable ones dropped), fps, predictions, accuracy against the frames'
        truth (when the source knows it; frames shown while teaching are left out), teach
        latencies, learner and classes, checkpoint, resident memory (now and peak)."""
        assert self.classifier is not None
        latencies = np.array(self._latencies) if self._latencies else np.zeros(1)
        scored, known = self._scored, self._scored_known
        return {
            "frames": self._frames,
            "bad_frames": self._bad_frames,
            "seconds": round(seconds, 3),
            "fps": round(self._frames / seconds, 2) if seconds > 0 else 0.0,
            "predictions": self._labelled,
            "unknown": self._unknown,
            "accuracy": round(scored[1] / scored[0], 4) if scored[0] else None,
            "scored_frames": scored[0],
            "accuracy_known": round(known[1] / known[0], 4) if known[0] else None,
            "latency_ms": {
                "mean": round(float(latencies.mean()), 2),
                "p95": round(float(np.percentile(latencies, 95)), 2),
            },
            "teaches": self.teaches,
            "teach_latency_s": [t["latency_s"] for t in self.teaches if t["ok"]],
            "learner": learner_name(self.classifier.learner),
            "classes": self.classifier.learner.classes_,
            "checkpoint": str(self.config.checkpoint),
            "resumed": self.classifier.resumed,
            "source": self._source_stats or {"name": source},
            "mcu": self.bridge.summary() if self.bridge is not None else None,
            "stopped_by": self._stopped_by,
            "memory_mb": memory_mb(),
        }
