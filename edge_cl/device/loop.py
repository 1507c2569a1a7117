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

Its parts: :class:`~edge_cl.device.teach.TeachSession` (the teach in progress),
:class:`~edge_cl.device.commands.Commands` (what the socket and the MCU may ask),
:class:`~edge_cl.device.metrics.FrameMetrics` (counters, the log line) and
:class:`~edge_cl.device.mcu.McuBridge` (the serial link), all built with the loop.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from edge_cl.device.classifier import Classifier, Verdict
from edge_cl.device.commands import Commands, unknown_threshold
from edge_cl.device.config import DeviceConfig
from edge_cl.device.control import ControlServer, Handler
from edge_cl.device.mcu import McuBridge, prediction_frame, status_frame
from edge_cl.device.metrics import FrameMetrics
from edge_cl.device.outputs import MjpegPreview, memory_mb, sd_notify, watchdog_period
from edge_cl.device.state import DeviceState
from edge_cl.device.teach import TeachSession
from edge_cl.device.worker import JobResult, LearnerWorker
from edge_cl.errors import FrameError
from edge_cl.learner.protocol import replay_memory, stored_patterns
from edge_cl.learner.registry import learner_name
from firmware_bridge.protocol import ErrorCode, SerialLink, Status
from firmware_bridge.sources import CapturedFrame, FrameSource, LatestFrame, open_source

if TYPE_CHECKING:
    from edge_cl.device.webui import WebUi

log = logging.getLogger("edge_cl.device")

GREETING_TIMEOUT = 2.0
"""Seconds the camera waits for the HELLO handshake with the MCU before starting anyway."""


class DeviceLoop:
    """Runs the device: see the module docstring. ``source`` and ``link`` replace the ones the
    config names (tests, the demo); ``classifier`` skips opening one; ``observer`` is called
    with every classified frame and its verdict, from the loop's thread. The model is opened
    (or resumed) here; :meth:`run` runs the loop once.

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
        self.classifier = classifier or Classifier.open(config)
        self.source = source or open_source(
            config.source, fps=config.fps, size=config.capture_size, loop=config.loop
        )
        self.observer = observer
        self.ready = threading.Event()
        """Set after the first prediction."""
        self.worker = LearnerWorker(
            self.classifier,
            config.checkpoint,
            unknown_accept=config.unknown_accept,
            on_state=lambda state: self._publish_state(),
            on_result=self._on_result,
        )
        self.metrics = FrameMetrics()
        self.teaching = TeachSession(
            self.worker,
            max_frames=config.teach_max_frames,
            target_frames=config.teach_target_frames,
            on_change=self._publish_state,
        )
        self.control = Commands(
            self.teaching,
            self.worker,
            self.classifier,
            self.metrics,
            checkpoint=config.checkpoint,
            status=self.status,
            report=self._report,
        )
        self.bridge = (
            McuBridge(
                link or str(config.serial),
                self.control.on_mcu,
                self._status_message,
                baudrate=config.baudrate,
                prediction_hz=config.prediction_hz,
            )
            if link is not None or config.serial
            else None
        )
        """The MCU link, when the config names a port (or ``link`` is given)."""
        self.ui: WebUi | None = None
        """The web page while :meth:`run` serves it (``config.ui``), else None."""
        self._stopping = threading.Event()
        self._stopped_by = ""
        self._state_lock = threading.Lock()
        self._state = DeviceState.IDLE

    # ------------------------------------------------------------------- teaching, control
    def teach(self, label: str) -> dict[str, Any]:
        """Start collecting frames of ``label`` (:meth:`TeachSession.start`)."""
        return self.teaching.start(label)

    def stop_teach(self) -> tuple[Future[JobResult] | None, dict[str, Any]]:
        """Stop collecting and queue the learning (:meth:`TeachSession.stop`)."""
        return self.teaching.stop()

    def abandon_teach(self) -> None:
        """Drop a teach in progress without learning from it."""
        self.teaching.abandon()

    @property
    def teaches(self) -> list[dict[str, Any]]:
        """One record per learned (or failed) teach so far, oldest first."""
        return self.teaching.records

    def commands(self) -> dict[str, Handler]:
        """The control socket's commands (:meth:`Commands.handlers`)."""
        return self.control.handlers()

    def request_stop(self, reason: str = "request") -> None:
        """Make :meth:`run` finish (safe from signal handlers and other threads)."""
        if not self._stopping.is_set():
            self._stopped_by = reason
            self._stopping.set()

    def status(self) -> dict[str, Any]:
        """What the loop is doing now (the ``status`` control command): state, teach, learner,
        classes and the replay patterns each holds (``patterns``, None without replay), the
        newest verdict (``verdict``, ``empty``: nothing in view) and its latency, the recent
        ``fps``, seconds since the model last changed (``last_update_s``), the unknown
        settings, frames, accuracy, jobs, checkpoint, MCU, memory."""
        learner = self.classifier.learner
        teaching = self.teaching.current
        latest = self.metrics.latest or {}  # nothing classified yet: no verdict
        stored = stored_patterns(learner)
        fps = self.metrics.recent_fps()
        changed = self.worker.last_update
        return {
            "state": self._state.value,
            "teaching": teaching.label if teaching is not None else None,
            "teach_frames": teaching.seen if teaching is not None else 0,
            "learner": learner_name(learner),
            "classes": learner.classes_,
            "patterns": None if stored is None else [[k, n] for k, n in stored.items()],
            "verdict": latest.get("verdict"),
            "unknown": latest.get("unknown", False),
            "empty": latest.get("empty", False),
            "confidence": latest.get("confidence"),
            "latency_ms": latest.get("latency_ms"),
            "fps": round(fps, 1) if fps is not None else None,
            "last_update_s": None if changed is None else round(time.monotonic() - changed, 1),
            "unknown_accept": self.worker.unknown_accept,
            "unknown_threshold": unknown_threshold(learner),
            "background_label": self.classifier.background_label,
            "frames": self.metrics.frames,
            "accuracy": self.metrics.accuracy(),
            "jobs_pending": self.worker.busy,
            "jobs_queued": self.worker.pending,
            "checkpoint": str(self.config.checkpoint),
            "mcu": self.bridge.connected if self.bridge else None,
            "memory_mb": memory_mb(),
        }

    def _status_message(self) -> Status:
        learner = self.classifier.learner
        memory = replay_memory(learner)
        used = memory.nbytes if memory is not None else 0
        return status_frame(self._state, len(learner.classes_), used)

    def _publish_state(self) -> None:
        with self._state_lock:
            teaching = self.teaching.current is not None
            state = DeviceState.TEACHING if teaching else self.worker.state
            if state == self._state:
                return
            self._state = state
        log.info("state: %s", state.value)
        if self.bridge is not None:
            self.bridge.send(self._status_message())

    def _report(self, code: ErrorCode, text: str) -> None:
        if self.bridge is not None:
            self.bridge.report(code, text)

    def _on_result(self, result: JobResult) -> None:
        self.teaching.record(result)
        if not result.ok:
            code = ErrorCode.STORAGE if result.failed_at == "checkpoint" else ErrorCode.MODEL
            self._report(code, str(result.error))

    # --------------------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        """Run until stopped; returns the summary (see :meth:`summary`)."""
        started = time.monotonic()
        previous = self._install_signals()
        try:
            log.info("learner: %s", self.classifier.resumed)
            self.worker.start()
            try:
                source = self._serve()
            finally:
                self._finish()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.summary(time.monotonic() - started, source)

    def _serve(self) -> dict[str, Any]:
        """Serve the control socket and the MCU and run the frames until stopped; the source's
        counters."""
        config, source = self.config, self.source
        commands = self.commands()  # one set, answered on the socket and the page alike
        with contextlib.ExitStack() as stack:
            stack.enter_context(ControlServer(config.socket_path, commands).start())
            if config.ui is not None:
                from edge_cl.device.webui import WebUi  # aiohttp is imported only when served

                ui = WebUi(config.ui, commands, public=config.ui_public)
                self.ui = stack.enter_context(ui.start())
                stack.callback(setattr, self, "ui", None)
                if ui.public:
                    log.warning("web page open to the network, with its token: %s", ui.url)
            if self.bridge is not None:
                self.bridge.start()
                self.bridge.greeted.wait(GREETING_TIMEOUT)
            preview = MjpegPreview(config.preview, config.preview_fps) if config.preview else None
            latest = LatestFrame(source)
            latest.start()
            log.info("reading %s; control socket %s", source.name, config.socket_path)
            try:
                self._frames_loop(latest, preview)
            finally:
                latest.stop()
                stats = {"name": source.name, **latest.stats}
                if latest.last_error:
                    stats["last_error"] = latest.last_error
                if preview is not None:
                    preview.close()
        return stats

    def _frames_loop(self, latest: LatestFrame, preview: MjpegPreview | None) -> None:
        config = self.config
        start = time.monotonic()
        deadline = start + config.max_seconds if config.max_seconds else float("inf")
        next_log = start + config.log_interval
        next_ping, ping = start, watchdog_period()
        last_frame = 0.0  # monotonic time the last frame was taken
        self.metrics.start_interval(start)
        while not self._stopping.is_set():
            pause = self._learning_pause(last_frame)
            if pause > 0:
                self._stopping.wait(pause)
            elif (frame := latest.get(timeout=0.25)) is not None:
                last_frame = time.monotonic()
                try:
                    self._process(frame, preview)
                except FrameError as e:  # a camera glitch (empty frame): drop it, keep running
                    self.metrics.drop(frame, e)
            elif latest.ended:
                self.request_stop("end of source")
            now = time.monotonic()
            if config.max_frames is not None and self.metrics.frames >= config.max_frames:
                self.request_stop("max_frames")
            if now >= deadline:
                self.request_stop("max_seconds")
            if now >= next_log:
                classes = len(self.classifier.learner.classes_)
                self.metrics.log_line(now, self._state.value, classes)
                next_log = now + config.log_interval
            if now >= next_ping and self.ready.is_set():
                sd_notify("WATCHDOG=1")
                next_ping = now + ping

    def _learning_pause(self, last_frame: float) -> float:
        """Seconds to wait before taking the next frame: while the learner trains, frames are
        taken at most ``learning_fps`` times a second, so the update gets the cores."""
        limit = self.config.learning_fps
        if not limit or not self.worker.busy:
            return 0.0
        return min(0.25, last_frame + 1.0 / limit - time.monotonic())

    def _process(self, frame: CapturedFrame, preview: MjpegPreview | None) -> None:
        latent = self.classifier.latents([frame.image])
        verdict = self.classifier.predict(latent)[0]
        now = time.monotonic()
        latency_ms = (now - frame.timestamp) * 1000
        teaching = self.teaching.offer(latent[0])
        classes = self.classifier.learner.classes_
        self.metrics.record(frame, verdict, latency_ms, now, teaching, classes)
        if self.bridge is not None:
            self.bridge.send_prediction(
                prediction_frame(
                    verdict.label,
                    verdict.confidence,
                    verdict.unknown,
                    latency_ms,
                    empty=verdict.empty,
                )
            )
        if preview is not None:
            preview.write(frame.image, verdict.text())
        if self.ui is not None:
            self.ui.offer(frame.image, verdict.text())
        if self.observer is not None:
            self.observer(frame, verdict)
        if not self.ready.is_set():
            self.ready.set()
            sd_notify(f"READY=1\nSTATUS=classifying {self.classifier.extractor.artifact.name}")

    def _finish(self) -> None:
        """After the frames stop: drop a teach in progress, finish queued jobs, save if the
        model changed since its last checkpoint, say goodbye to the MCU."""
        self.abandon_teach()
        if self.worker.dirty or self.worker.busy:
            self.worker.save()
        self.worker.stop()
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

    def summary(self, seconds: float, source: dict[str, Any]) -> dict[str, Any]:
        """The frame measures (:meth:`FrameMetrics.summary`) over ``seconds``, teach latencies,
        learner and classes, checkpoint, the ``source``'s counters, the MCU link's, resident
        memory (now and peak)."""
        learner = self.classifier.learner
        teaches = self.teaches
        return {
            **self.metrics.summary(seconds),
            "teaches": teaches,
            "teach_latency_s": [t["latency_s"] for t in teaches if t["ok"]],
            "learner": learner_name(learner),
            "classes": learner.classes_,
            "checkpoint": str(self.config.checkpoint),
            "resumed": self.classifier.resumed,
            "source": source,
            "mcu": self.bridge.summary() if self.bridge is not None else None,
            "stopped_by": self._stopped_by,
            "memory_mb": memory_mb(),
        }
