"""The host side of the MCU serial protocol (``firmware_bridge/PROTOCOL.md``), in one thread.

:class:`McuBridge` owns the :class:`~firmware_bridge.protocol.SerialLink`: it says HELLO when
the port opens, answers every MCU request with ACK or NACK (the answer comes from a handler the
device loop supplies; a resent request is answered again without acting twice), sends STATUS on
change and every 2 s as a heartbeat, and sends the newest PREDICTION at most ``prediction_hz``
times a second. Other threads only queue messages; the link itself is used under a lock. A port
given by name is reopened with back-off when it fails (a USB MCU unplugged and plugged back).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import serial

from edge_cl import __version__
from edge_cl.device.state import DeviceState
from edge_cl.errors import ProtocolError
from edge_cl.learner.labels import Label
from firmware_bridge.protocol import (
    MAX_LABEL_BYTES,
    MAX_TEXT_BYTES,
    Ack,
    ErrorCode,
    ErrorReport,
    Frame,
    Hello,
    LearnerState,
    Message,
    MsgType,
    Nack,
    NackReason,
    Prediction,
    SerialLink,
    Status,
    needs_ack,
)

log = logging.getLogger("edge_cl.device")

STATUS_INTERVAL = 2.0
"""Seconds between STATUS heartbeats (PROTOCOL.md: at least every 2 s)."""
RECEIVE_TIMEOUT = 0.02
BACKOFF = (0.5, 8.0)

RequestHandler = Callable[[Message], int | None]
"""Acts on an MCU request (HELLO, TEACH_START, TEACH_STOP, SAVE, FORGET); returns None to ACK
it or a ``NackReason`` to refuse it."""


WIRE_STATES = {
    DeviceState.IDLE: LearnerState.IDLE,
    DeviceState.TEACHING: LearnerState.TEACHING,
    DeviceState.LEARNING: LearnerState.LEARNING,
    DeviceState.SAVING: LearnerState.SAVING,
}
"""The STATUS byte (PROTOCOL.md) of each device state."""


def wire_text(text: object, limit: int = MAX_LABEL_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary (for the MCU).

    >>> wire_text("tasse à café", 7)
    'tasse '
    """
    data = str(text).replace("\x00", " ").encode()[:limit]
    return data.decode(errors="ignore")


def status_frame(state: DeviceState, classes: int, replay_bytes: int) -> Status:
    """The STATUS of ``state`` with the class count and replay memory size, clamped to the
    frame's fields (u16, u32).

    >>> status_frame(DeviceState.TEACHING, 70000, 512)
    Status(state=<LearnerState.TEACHING: 1>, num_classes=65535, replay_bytes=512)
    """
    return Status(WIRE_STATES[state], min(classes, 65535), min(replay_bytes, 2**32 - 1))


def prediction_frame(
    label: Label | None,
    confidence: float,
    unknown: bool,
    latency_ms: float,
    *,
    empty: bool = False,
) -> Prediction:
    """The PREDICTION of one verdict: the label cut to the wire's limit (empty before anything
    is learned, which the MCU shows as unknown), confidence in [0, 1], latency in whole ms, and
    the "nothing in view" flag of a background verdict (never with the unknown flag).

    >>> prediction_frame(None, 0.0, True, 70000.4)
    Prediction(label='', confidence=0.0, unknown=True, latency_ms=65535, empty=False)
    >>> prediction_frame("nothing", 0.97, False, 40.0, empty=True).empty
    True
    """
    text = "" if label is None else wire_text(label)
    clipped = min(1.0, max(0.0, confidence))
    flagged = unknown or not text
    return Prediction(
        text, clipped, flagged, int(min(latency_ms, 65535)), empty=empty and not flagged
    )


def host_hello() -> Hello:
    """The HELLO this host sends: its name and the edge_cl version."""
    parts = [int(p) if p.isdigit() else 0 for p in __version__.split(".")[:3]]
    major, minor, patch = [*parts, 0, 0, 0][:3]
    return Hello("edge-cl", (major, minor, patch))


class McuBridge:
    """Serves the MCU link on ``port`` (a device path or pyserial URL, reopened on failure, or
    a ready ``SerialLink``, used as is) with ``handler`` answering requests and ``status``
    producing the STATUS to send.

    >>> from firmware_bridge.emulator import Emulator
    >>> from firmware_bridge.protocol import LearnerState, TeachStart
    >>> asked = []
    >>> def handler(message):
    ...     asked.append(message)
    ...     return None
    >>> with Emulator.over_pty() as mcu:
    ...     mcu.start()
    ...     with McuBridge(mcu.device_path, handler, lambda: Status(LearnerState.IDLE)).start():
    ...         connected = mcu.connect(5.0)
    ...         answer = mcu.teach_start("cup")
    >>> connected, type(answer).__name__, asked[-1]
    (True, 'Ack', TeachStart(label='cup'))
    """

    def __init__(
        self,
        port: str | SerialLink,
        handler: RequestHandler,
        status: Callable[[], Status],
        *,
        baudrate: int = 115200,
        prediction_hz: float = 10.0,
    ) -> None:
        self.port_name = port if isinstance(port, str) else None
        self.handler = handler
        self.status = status
        self.baudrate = baudrate
        self.prediction_period = 1.0 / prediction_hz
        self.peer: Hello | None = None
        """The MCU's last HELLO."""
        self.counts = {"predictions": 0, "statuses": 0, "requests": 0, "nacks": 0, "reopens": 0}
        self._link = port if isinstance(port, SerialLink) else None
        self._port: Any = None
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._prediction: Prediction | None = None
        self._last_prediction = 0.0
        self._last_status = 0.0
        self._last_request: tuple[int, MsgType, Ack | Nack] | None = None
        self.greeted = threading.Event()
        """Set once the first HELLO was answered or given up on (the loop then starts the camera,
        so the MCU hears HELLO before any PREDICTION)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-cl-mcu", daemon=True)

    # ----------------------------------------------------------------------------- control
    def start(self) -> McuBridge:
        """Start the thread (it opens the port and says HELLO); returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Send what is queued, stop the thread (if started), close the port if the bridge
        opened it."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        if self._port is not None:
            self._port.close()

    def __enter__(self) -> McuBridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        """Whether the port is open and the MCU has said HELLO or answered ours."""
        return self._link is not None and self.peer is not None

    def summary(self) -> dict[str, Any]:
        """Counts for the run summary."""
        link = self._link
        return {
            "port": self.port_name,
            "connected": self.connected,
            "peer": self.peer.firmware_name if self.peer else None,
            **self.counts,
            "decoder": link.stats.as_dict() if link is not None else None,
        }

    # ------------------------------------------------------------------------------ sending
    def send_prediction(self, prediction: Prediction) -> None:
        """Offer the newest prediction; the thread sends at most ``prediction_hz`` a second."""
        with self._lock:
            self._prediction = prediction

    def send(self, message: Status | ErrorReport) -> None:
        """Queue a STATUS or ERROR to send as soon as possible."""
        self._outbox.put(message)

    def report(self, code: ErrorCode, text: str) -> None:
        """Queue an ERROR of ``code`` whose text is ``text`` cut to the frame's limit."""
        self.send(ErrorReport(code, wire_text(text, MAX_TEXT_BYTES)))

    # ------------------------------------------------------------------------------- thread
    def _run(self) -> None:
        delay = BACKOFF[0]
        while not self._stop.is_set():
            link = self._link or self._open()
            if link is None:
                self.greeted.set()
                self._stop.wait(delay)
                delay = min(2 * delay, BACKOFF[1])
                continue
            delay = BACKOFF[0]
            try:
                self._serve(link)
            except (OSError, serial.SerialException) as e:
                log.error("MCU link failed: %s", e)
                self._link, self.peer = None, None
                if self._port is not None:
                    self._port.close()
                    self._port = None
                if self.port_name is None:
                    return
        self._flush_final()

    def _open(self) -> SerialLink | None:
        assert self.port_name is not None
        try:
            port = serial.serial_for_url(
                self.port_name, baudrate=self.baudrate, timeout=RECEIVE_TIMEOUT
            )
        except (OSError, ValueError, serial.SerialException) as e:
            log.error("cannot open the MCU port %s (%s): retrying", self.port_name, e)
            return None
        port.reset_input_buffer()  # what arrived while nobody listened is stale
        self._port = port
        self._link = SerialLink(port)
        self.counts["reopens"] += 1
        return self._link

    def _serve(self, link: SerialLink) -> None:
        with self._lock:
            try:
                answer = link.request(host_hello())
                log.info("MCU answered HELLO: %s", type(answer).__name__)
            except ProtocolError as e:
                log.warning("%s; will answer the MCU when it says HELLO", e)
        self.greeted.set()
        self._send(link, self.status())
        while not self._stop.is_set():
            self._flush(link)
            with self._lock:
                frame = link.receive(timeout=RECEIVE_TIMEOUT)
            if frame is not None:
                self._handle(link, frame)

    def _flush(self, link: SerialLink) -> None:
        while True:
            try:
                message = self._outbox.get_nowait()
            except queue.Empty:
                break
            self._send(link, message)
        now = time.monotonic()
        with self._lock:
            prediction = self._prediction
            due = prediction is not None and now - self._last_prediction >= self.prediction_period
            if due:
                self._prediction = None
        if prediction is not None and due:
            self._last_prediction = now
            self._send(link, prediction)
        if now - self._last_status >= STATUS_INTERVAL:
            self._send(link, self.status())

    def _flush_final(self) -> None:
        link = self._link
        if link is None:
            return
        try:
            self._flush(link)
        except (OSError, serial.SerialException) as e:
            log.warning("could not send the last messages to the MCU: %s", e)

    def _send(self, link: SerialLink, message: Message) -> None:
        with self._lock:
            link.send(message)
        if isinstance(message, Status):
            self._last_status = time.monotonic()
            self.counts["statuses"] += 1
        elif isinstance(message, Prediction):
            self.counts["predictions"] += 1

    def _handle(self, link: SerialLink, frame: Frame) -> None:
        message = frame.message
        if isinstance(message, ErrorReport):
            log.warning("MCU reports error %s: %s", message.code, message.text)
        if not needs_ack(message):
            return
        if isinstance(message, Hello):  # the MCU (re)booted: never a duplicate
            self.peer = message
            self._last_request = None
            self._answer(message)
            self._send(link, Ack(frame.seq))
            self._send(link, self.status())
            return
        last = self._last_request
        if last is not None and last[:2] == (frame.seq, message.TYPE):
            self._send(link, last[2])  # its answer was lost: answer again, do not act again
            return
        self.counts["requests"] += 1
        reason = self._answer(message)
        answer: Ack | Nack = Ack(frame.seq) if reason is None else Nack(frame.seq, reason)
        if reason is not None:
            self.counts["nacks"] += 1
        self._last_request = (frame.seq, message.TYPE, answer)
        self._send(link, answer)

    def _answer(self, message: Message) -> int | None:
        try:
            return self.handler(message)
        except Exception:  # a bug in the handler must not take the link down
            log.exception("handling %s failed", message.TYPE.name)
            return NackReason.UNSPECIFIED
