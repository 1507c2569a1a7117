"""The emulated MCU: answers the host like firmware would, presses its buttons, records frames.

It plays the firmware's part of ``PROTOCOL.md``: it answers every host request with an ACK,
answers the host's HELLO with its own, sends the requests its (scripted) buttons would send,
waiting for their ACKs and retrying like firmware would, and records every frame it sends and
receives (in memory and, optionally, as JSON lines in a file).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import serial

from edge_cl.errors import ProtocolError
from firmware_bridge.emulator.ports import FdPort
from firmware_bridge.emulator.script import Command, parse_script
from firmware_bridge.protocol import (
    DELIMITER,
    Ack,
    Decoder,
    DecoderStats,
    Forget,
    Frame,
    Hello,
    Message,
    MsgType,
    Nack,
    Port,
    Prediction,
    Save,
    TeachStart,
    TeachStop,
    encode,
    needs_ack,
    next_seq,
    read_available,
    to_dict,
)

DEFAULT_HELLO = Hello(
    "edge-cl-emu", (1, 0, 0), buttons=3, leds=2, display_width=128, display_height=64
)
"""The capabilities the emulator announces unless told otherwise."""

NO_PREDICTION = "-"
"""What the emulated display shows before the first PREDICTION."""


def display_text(prediction: Prediction) -> str:
    """What an MCU's display shows for ``prediction`` (PROTOCOL.md, PREDICTION): the label and
    its confidence, ``unknown`` with the best guess, or ``nothing in view``, never the label
    alone when a flag is set.

    >>> display_text(Prediction("cup", 0.93)), display_text(Prediction("cup", 0.41, True))
    ('cup 0.93', 'unknown (best guess cup 0.41)')
    >>> display_text(Prediction("", 0.0, True))
    'unknown'
    >>> display_text(Prediction("nothing", 0.9, empty=True))
    'nothing in view'
    """
    if prediction.empty:
        return "nothing in view"
    if prediction.unknown:
        guess = f" (best guess {prediction.label} {prediction.confidence:.2f})"
        return "unknown" + (guess if prediction.label else "")
    return f"{prediction.label} {prediction.confidence:.2f}"


class Emulator:
    """A companion MCU on ``port``: answers the host, runs scripts, records every frame.

    ``start`` launches a reader thread that ACKs host requests (re-ACKing duplicates without
    counting them twice) and answers the host's HELLO with ``hello``; scripts and the action
    methods (``teach``, ``save``, ...) send requests and wait up to ``ack_timeout`` for the
    answer, resending the same frame up to ``retries`` times. ``record`` names a JSON-lines file
    for every frame; ``seed`` makes ``garbage`` reproducible. ``close`` (or leaving the ``with``
    block) stops the threads and closes what the emulator opened.

    >>> import serial
    >>> from firmware_bridge.protocol import SerialLink
    >>> with Emulator.over_pty() as mcu, serial.Serial(mcu.device_path, timeout=0.05) as port:
    ...     mcu.start()
    ...     host = SerialLink(port, auto_ack=True)
    ...     answer = host.request(Hello("edge_cl"))
    ...     their_hello = host.receive(timeout=2.0)
    >>> answer, their_hello.message.firmware_name
    (Ack(seq=0), 'edge-cl-emu')
    >>> [(record["dir"], record["type"]) for record in mcu.records][:3]
    [('rx', 'HELLO'), ('tx', 'ACK'), ('tx', 'HELLO')]

    Like firmware, it shows every PREDICTION on its (emulated) display, ``display``, and counts
    them, how many were unknown and how many said nothing is in view (``shown``).
    """

    def __init__(
        self,
        port: Port,
        *,
        hello: Hello = DEFAULT_HELLO,
        ack_timeout: float = 0.5,
        retries: int = 2,
        record: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        self.port = port
        self.hello_message = hello
        self.ack_timeout = ack_timeout
        self.retries = retries
        self.device_path: str | None = None
        """The pseudo-terminal the host should open (``over_pty``), else None."""
        self.timeouts = 0
        """Requests that got no ACK/NACK, plus ``connect`` steps that saw no host HELLO."""
        self.duplicates = 0
        """Host requests received again with the same seq (re-ACKed, not acted on twice)."""
        self.port_error: OSError | None = None
        self._decoder = Decoder()
        self._random = random.Random(seed)
        self._seq = 0
        self._write_lock = threading.Lock()
        self._answered = threading.Condition()
        self._pending: set[int] = set()
        self._answers: dict[int, Ack | Nack] = {}
        self._last_request: tuple[int, MsgType] | None = None
        self._host_hello = threading.Event()
        self._stop = threading.Event()
        self._log_lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._received: list[Frame] = []
        self._display = NO_PREDICTION
        self._shown = {"predictions": 0, "unknown": 0, "nothing_in_view": 0}
        self._threads: list[threading.Thread] = []
        self._script_thread: threading.Thread | None = None
        self._resources = contextlib.ExitStack()
        self._record_path = None if record is None else Path(record)
        if self._record_path is not None:
            self._record_path.write_text("", encoding="utf-8")
        self._t0 = time.monotonic()

    @classmethod
    def over_pty(cls, **options: Any) -> Emulator:
        """An emulator on a new pseudo-terminal; the host opens ``device_path``."""
        master, slave = os.openpty()
        try:
            tty.setraw(slave)  # no echo, no newline translation: bytes pass unchanged
            emulator = cls(FdPort(master), **options)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        emulator.device_path = os.ttyname(slave)
        emulator._resources.callback(os.close, master)
        emulator._resources.callback(os.close, slave)  # held open so reads see no hang-up
        return emulator

    @classmethod
    def over_url(cls, url: str, *, baudrate: int = 115200, **options: Any) -> Emulator:
        """An emulator on a serial device or pyserial URL (``/dev/ttyUSB0``, ``socket://...``)."""
        port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.05)
        try:
            emulator = cls(port, **options)
        except BaseException:
            port.close()
            raise
        emulator._resources.callback(port.close)
        return emulator

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every frame sent (``"dir": "tx"``) and received (``"rx"``) so far, as JSON dicts."""
        with self._log_lock:
            return list(self._records)

    @property
    def received(self) -> list[Frame]:
        """Every frame received from the host so far."""
        with self._log_lock:
            return list(self._received)

    @property
    def display(self) -> str:
        """What the display shows now: the last PREDICTION as :func:`display_text` puts it,
        ``NO_PREDICTION`` before the first."""
        with self._log_lock:
            return self._display

    @property
    def shown(self) -> dict[str, int]:
        """PREDICTIONs received, how many of them unknown, how many nothing in view."""
        with self._log_lock:
            return dict(self._shown)

    @property
    def decoder_stats(self) -> DecoderStats:
        """What the emulator's decoder accepted and dropped."""
        return self._decoder.stats

    def summary(self) -> dict[str, Any]:
        """Counts for a run: frames sent and received, predictions shown (unknown, nothing in
        view), timeouts, duplicates, decoder drops."""
        records = self.records
        return {
            "sent": sum(record["dir"] == "tx" for record in records),
            "received": sum(record["dir"] == "rx" for record in records),
            "shown": self.shown,
            "timeouts": self.timeouts,
            "duplicates": self.duplicates,
            "decoder": self._decoder.stats.as_dict(),
            "port_error": None if self.port_error is None else str(self.port_error),
        }

    def start(self, script: str | Sequence[Command] | None = None) -> None:
        """Start answering the host and, if given, run ``script`` in a thread; returns at once.

        Like a booting MCU, first writes a lone 0x00 so the host drops any partial frame.
        """
        commands = parse_script(script) if isinstance(script, str) else script
        self._write(DELIMITER)
        reader = threading.Thread(target=self._read_loop, name="mcu-emulator-reader", daemon=True)
        self._threads.append(reader)
        reader.start()
        if commands is not None:
            self._script_thread = threading.Thread(
                target=self.run_script, args=(commands,), name="mcu-emulator-script", daemon=True
            )
            self._threads.append(self._script_thread)
            self._script_thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the script ``start`` launched; True once it has finished."""
        if self._script_thread is not None:
            self._script_thread.join(timeout)
        return self._script_thread is None or not self._script_thread.is_alive()

    def run_script(self, script: str | Sequence[Command]) -> None:
        """Run ``script`` in this thread, after ``start``; stops early when the emulator stops."""
        for command in parse_script(script) if isinstance(script, str) else script:
            if self._stop.is_set():
                return
            self.run_command(command)

    def run_command(self, command: Command) -> None:
        """Carry out one script step."""
        match command.name:
            case "hello":
                self.hello()
            case "connect":
                self.connect(command.seconds)
            case "teach":
                self.teach(command.label, command.seconds)
            case "start":
                self.teach_start(command.label)
            case "stop":
                self.teach_stop()
            case "forget":
                self.forget(command.label)
            case "save":
                self.save()
            case "wait":
                self.wait(command.seconds)
            case "garbage":
                self.send_garbage(command.count)
            case _:
                raise ProtocolError(f"unknown emulator command {command.name!r}")

    def hello(self) -> Ack | Nack | None:
        """Send HELLO (as after a reboot); the answer, or None if none came."""
        return self._request(self.hello_message)

    def connect(self, timeout: float = 5.0) -> bool:
        """Wait until the host has sent HELLO since ``start``; False (a timeout) if it did not."""
        deadline = time.monotonic() + timeout
        while not self._host_hello.is_set() and not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.timeouts += 1
                return False
            self._host_hello.wait(min(remaining, 0.05))
        return self._host_hello.is_set()

    def teach(self, label: str, seconds: float = 2.0) -> None:
        """Hold the teach button for ``seconds``: TEACH_START ``label``, wait, TEACH_STOP."""
        self.teach_start(label)
        self.wait(seconds)
        self.teach_stop()

    def teach_start(self, label: str) -> Ack | Nack | None:
        """Press teach for ``label``: TEACH_START; the answer, or None."""
        return self._request(TeachStart(label))

    def teach_stop(self) -> Ack | Nack | None:
        """Press stop: TEACH_STOP; the answer, or None."""
        return self._request(TeachStop())

    def forget(self, label: str) -> Ack | Nack | None:
        """FORGET ``label``; the answer, or None."""
        return self._request(Forget(label))

    def save(self) -> Ack | Nack | None:
        """SAVE; the answer, or None."""
        return self._request(Save())

    def wait(self, seconds: float | None) -> None:
        """Keep answering the host for ``seconds`` (None: until stopped)."""
        self._stop.wait(seconds)

    def send(self, message: Message) -> int:
        """Send ``message`` without waiting for an answer; returns its seq."""
        with self._write_lock:
            seq = self._seq
            self._seq = next_seq(seq)
        self._write(encode(message, seq))
        self._record("tx", Frame(seq, message))
        return seq

    def send_garbage(self, count: int) -> None:
        """Send ``count`` random bytes then 0x00: noise the host must drop and survive."""
        self._write(self._random.randbytes(count) + DELIMITER)

    def stop(self) -> None:
        """Ask the threads to stop (safe from a signal handler); ``close`` waits for them."""
        self._stop.set()

    def close(self) -> None:
        """Stop, wait for the threads, close what the emulator opened (its pty or port)."""
        self.stop()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        self._resources.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            self.port.write(data)

    def _request(self, message: Message) -> Ack | Nack | None:
        with self._write_lock:
            seq = self._seq
            self._seq = next_seq(seq)
        frame = encode(message, seq)
        with self._answered:
            self._pending.add(seq)
        try:
            for _ in range(self.retries + 1):
                self._write(frame)
                self._record("tx", Frame(seq, message))
                with self._answered:
                    self._answered.wait_for(
                        lambda: seq in self._answers or self._stop.is_set(), self.ack_timeout
                    )
                    if seq in self._answers:
                        return self._answers[seq]
                if self._stop.is_set():
                    return None
            self.timeouts += 1
            return None
        finally:
            with self._answered:
                self._pending.discard(seq)
                self._answers.pop(seq, None)

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = read_available(self.port)
            except OSError as exc:  # the port went away (adapter unplugged)
                self.port_error = exc
                self.stop()
                return
            for frame in self._decoder.feed(data):
                self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        self._record("rx", frame)
        message = frame.message
        if isinstance(message, (Ack, Nack)):
            with self._answered:
                if message.seq in self._pending:
                    self._answers[message.seq] = message
                    self._answered.notify_all()
            return
        if not needs_ack(message):
            return
        if isinstance(message, Hello):  # a (re)connected host: never a duplicate
            self._last_request = None
        elif self._last_request == (frame.seq, message.TYPE):
            self.duplicates += 1
            self.send(Ack(frame.seq))
            return
        self._last_request = (frame.seq, message.TYPE)
        self.send(Ack(frame.seq))
        if isinstance(message, Hello):
            self._host_hello.set()
            self.send(self.hello_message)

    def _show(self, prediction: Prediction) -> None:
        """Put ``prediction`` on the display and count it (with ``_log_lock`` held)."""
        self._display = display_text(prediction)
        self._shown["predictions"] += 1
        self._shown["unknown"] += prediction.unknown
        self._shown["nothing_in_view"] += prediction.empty

    def _record(self, direction: str, frame: Frame) -> None:
        entry = {
            "t": round(time.monotonic() - self._t0, 4),
            "dir": direction,
            "seq": frame.seq,
            **to_dict(frame.message),
        }
        with self._log_lock:
            self._records.append(entry)
            if direction == "rx":
                self._received.append(frame)
                if isinstance(frame.message, Prediction):
                    self._show(frame.message)
            if self._record_path is not None:  # appended line by line: complete even if killed
                with self._record_path.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(entry) + "\n")
