"""The serial link: messages to and from a port, numbered, acknowledged and resent.

The outer layer of ``firmware_bridge.protocol``: it owns a port (a pyserial port or anything
with ``read`` and ``write``), gives every frame it sends the next sequence number, feeds what
it reads to a ``Decoder``, and matches ACKs and NACKs to the requests awaiting them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from edge_cl.errors import ProtocolError
from firmware_bridge.protocol.framing import (
    DELIMITER,
    Decoder,
    DecoderStats,
    Frame,
    encode,
    next_seq,
)
from firmware_bridge.protocol.messages import Ack, Message, Nack, check_uint, needs_ack


class Port(Protocol):
    """The byte stream a ``SerialLink`` talks over: a pyserial port, or anything alike.

    ``read`` should return what is available after at most a short timeout (pyserial: open the
    port with ``timeout=0.05``). Ports that also have pyserial's ``in_waiting`` are drained
    without waiting for that timeout.

    >>> import serial
    >>> port = serial.serial_for_url("loop://", timeout=0.05)
    >>> port.write(b"hi"), read_available(port)
    (2, b'hi')
    """

    def read(self, size: int = 1, /) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...


def read_available(port: Port) -> bytes:
    """What ``port`` has now, or the next byte within its read timeout (``b""`` if none)."""
    return port.read(max(1, int(getattr(port, "in_waiting", 0))))


class SerialLink:
    """Sends and receives messages over a port: numbers frames, tracks ACKs. Not thread-safe.

    Sequence numbers start at ``first_seq`` and increment (wrapping at 65536) for every frame
    sent. On creation the link writes a lone 0x00 so the peer drops any partial frame. With
    ``auto_ack`` every received request is acknowledged as soon as it is read.

    >>> import serial
    >>> from firmware_bridge.protocol.messages import TeachStart
    >>> link = SerialLink(serial.serial_for_url("loop://", timeout=0.05))
    >>> link.send(TeachStart("cup"))
    0
    >>> link.receive(timeout=1.0)
    Frame(seq=0, message=TeachStart(label='cup'))
    """

    def __init__(self, port: Port, *, first_seq: int = 0, auto_ack: bool = False) -> None:
        check_uint(first_seq, 16, "first_seq")
        self.port = port
        self.auto_ack = auto_ack
        self._seq = first_seq
        self._decoder = Decoder()
        self._inbox: deque[Frame] = deque()
        self.port.write(DELIMITER)

    @property
    def stats(self) -> DecoderStats:
        """The receive side's counters."""
        return self._decoder.stats

    def send(self, message: Message) -> int:
        """Send ``message`` without waiting; returns the sequence number it went out with."""
        seq = self._seq
        self.port.write(encode(message, seq))
        self._seq = next_seq(seq)
        return seq

    def request(self, message: Message, *, timeout: float = 0.5, retries: int = 2) -> Ack | Nack:
        """Send ``message`` and wait for the peer's ACK or NACK of it.

        Without an answer within ``timeout`` seconds the same frame (same seq) is sent again,
        up to ``retries`` times; then ProtocolError. Frames arriving meanwhile are kept for
        ``receive``.
        """
        seq = self._seq
        frame = encode(message, seq)
        self._seq = next_seq(seq)
        for _ in range(retries + 1):
            self.port.write(frame)
            deadline = time.monotonic() + timeout
            while True:
                answer = self._pump(seq)
                if answer is not None:
                    return answer
                if time.monotonic() >= deadline:
                    break
        raise ProtocolError(
            f"no ACK/NACK for {message.TYPE.name} seq {seq} after {retries + 1} attempts "
            f"of {timeout} s: is the MCU connected and running?"
        )

    def receive(self, timeout: float | None = None) -> Frame | None:
        """The next received frame, or None if none came within ``timeout`` seconds.

        ``timeout=None`` waits until one comes. The port's own read timeout bounds how late
        this returns.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._inbox:
            if deadline is not None and time.monotonic() >= deadline:
                return None
            self._pump(None)
        return self._inbox.popleft()

    def frames(self, idle: float = 0.5) -> Iterator[Frame]:
        """Received frames until none has come for ``idle`` seconds."""
        while (frame := self.receive(timeout=idle)) is not None:
            yield frame

    def _pump(self, awaited: int | None) -> Ack | Nack | None:
        """Read once; queue the frames, except an ACK/NACK of ``awaited``, which is returned."""
        answer: Ack | Nack | None = None
        for frame in self._decoder.feed(read_available(self.port)):
            message = frame.message
            if isinstance(message, (Ack, Nack)) and message.seq == awaited and answer is None:
                answer = message
                continue
            if self.auto_ack and needs_ack(message):
                self.send(Ack(frame.seq))
            self._inbox.append(frame)
        return answer
