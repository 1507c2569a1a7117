"""Frames: how a message and its sequence number travel over a lossy byte stream.

The middle layer of ``firmware_bridge.protocol``, between the messages and the serial link. A
UART or USB CDC stream can drop, corrupt or split bytes and be reconnected at any moment, so
each message travels in a self-delimiting, checksummed frame::

    wire  = COBS(raw) 0x00
    raw   = version u8 | seq u16 | type u8 | length u8 | payload (length bytes) | crc u16

All integers are little-endian. The CRC is CRC-16/CCITT-FALSE over every raw byte before it.
``firmware_bridge/PROTOCOL.md`` is the specification for firmware authors; its test vectors
are checked against this module by ``tests/test_protocol.py``.

>>> from firmware_bridge.protocol.messages import TeachStart
>>> frame = encode(TeachStart("cup"), seq=7)
>>> frame.hex(" ")
'03 01 07 09 10 04 03 63 75 70 17 77 00'
>>> Decoder().feed(frame)
[Frame(seq=7, message=TeachStart(label='cup'))]
"""

from __future__ import annotations

import struct
import threading
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

from cobs import cobs
from crc import Calculator, Configuration

from edge_cl.errors import ProtocolError
from firmware_bridge.protocol.messages import (
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Message,
    MsgType,
    check_uint,
    decode_payload,
    encode_payload,
)

DELIMITER = b"\x00"
HEADER_SIZE = 5
"""version u8, seq u16, type u8, payload length u8."""
CRC_SIZE = 2
MAX_RAW_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
"""135: the largest frame before COBS encoding."""
MAX_ENCODED_FRAME = MAX_RAW_FRAME + 1
"""136: the largest frame after COBS encoding, without its delimiter (COBS adds one byte per
254, and 135 < 254). The decoder never buffers more than this."""
MAX_WIRE_FRAME = MAX_ENCODED_FRAME + len(DELIMITER)
"""137: the largest frame on the wire, delimiter included."""
SEQ_MODULUS = 1 << 16
"""Sequence numbers are u16 and wrap from 65535 to 0."""

CRC_WIDTH = 16
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
CRC_REFIN = False
CRC_REFOUT = False
CRC_XOROUT = 0x0000
CRC_CHECK = 0x29B1
"""CRC of the ASCII bytes ``123456789``: the standard check value of CRC-16/CCITT-FALSE."""

CRC_CONFIG = Configuration(
    width=CRC_WIDTH,
    polynomial=CRC_POLY,
    init_value=CRC_INIT,
    final_xor_value=CRC_XOROUT,
    reverse_input=CRC_REFIN,
    reverse_output=CRC_REFOUT,
)
_CRC = Calculator(CRC_CONFIG, optimized=True)
_CRC_LOCK = threading.Lock()  # the calculator keeps its register between calls


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data``: what the last two bytes of a raw frame carry.

    >>> hex(crc16(b"123456789"))
    '0x29b1'
    """
    with _CRC_LOCK:
        return int(_CRC.checksum(data))


def next_seq(seq: int) -> int:
    """The sequence number after ``seq``: +1, wrapping from 65535 to 0.

    >>> next_seq(41), next_seq(65535)
    (42, 0)
    """
    return (seq + 1) % SEQ_MODULUS


@dataclass(frozen=True)
class Frame:
    """A decoded message with the sequence number its sender gave it.

    >>> from firmware_bridge.protocol.messages import Save
    >>> decode_frame(encode(Save(), seq=65535))
    Frame(seq=65535, message=Save())
    """

    seq: int
    message: Message


def encode(message: Message, seq: int) -> bytes:
    """The wire bytes of ``message`` sent with sequence number ``seq``, trailing 0x00 included.

    Raises ProtocolError for a ``seq`` outside [0, 65535] or something that is not a message;
    invalid field values were already refused when the message was constructed.

    >>> from firmware_bridge.protocol.messages import Ack
    >>> encode(Ack(seq=7), seq=8).hex(" ")
    '03 01 08 04 02 02 07 03 72 5e 00'
    """
    payload = encode_payload(message)
    check_uint(seq, 16, "seq")
    body = struct.pack("<BHBB", PROTOCOL_VERSION, seq, message.TYPE, len(payload)) + payload
    raw = body + struct.pack("<H", crc16(body))
    return bytes(cobs.encode(raw)) + DELIMITER


class _Reject(NamedTuple):
    kind: str
    """The ``DecoderStats`` counter this rejection counts towards."""
    detail: str


def _parse(encoded: bytes) -> Frame | _Reject:
    """The frame in ``encoded`` (COBS bytes without delimiter), or why it was rejected."""
    try:
        raw = bytes(cobs.decode(encoded))
    except cobs.DecodeError as exc:
        return _Reject("bad_cobs", f"invalid COBS encoding: {exc}")
    if len(raw) < HEADER_SIZE + CRC_SIZE:
        return _Reject("truncated", f"{len(raw)} bytes, a frame has at least 7")
    body = raw[:-CRC_SIZE]
    (received_crc,) = struct.unpack("<H", raw[-CRC_SIZE:])
    version, seq, type_code, length = struct.unpack_from("<BHBB", body)
    computed_crc = crc16(body)
    if received_crc != computed_crc:
        if HEADER_SIZE + length > len(body):
            return _Reject("truncated", f"{length} payload bytes announced, {len(body) - 5} left")
        return _Reject("bad_crc", f"CRC {received_crc:#06x} != computed {computed_crc:#06x}")
    if version != PROTOCOL_VERSION:
        return _Reject("bad_version", f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if length != len(body) - HEADER_SIZE:
        return _Reject("malformed", f"length byte {length}, payload {len(body) - 5} bytes")
    try:
        msg_type = MsgType(type_code)
    except ValueError:
        return _Reject("unknown_type", f"unknown message type {type_code:#04x} (seq {seq})")
    try:
        message = decode_payload(msg_type, body[HEADER_SIZE:])
    except ProtocolError as exc:
        return _Reject("malformed", f"{msg_type.name} seq {seq}: {exc}")
    return Frame(seq, message)


def decode_frame(data: bytes) -> Frame:
    """The one frame in ``data`` (with or without its trailing 0x00); strict, for tests and tools.

    Raises ProtocolError saying why the frame is unusable. Streams go through ``Decoder``.

    >>> decode_frame(bytes.fromhex("03 01 08 04 02 02 07 03 72 5e 00")).message
    Ack(seq=7)
    """
    encoded = data[:-1] if data.endswith(DELIMITER) else data
    if DELIMITER in encoded:
        raise ProtocolError("a single frame cannot contain 0x00 before its end")
    if len(encoded) > MAX_ENCODED_FRAME:
        raise ProtocolError(f"oversized frame: {len(encoded)} bytes, at most {MAX_ENCODED_FRAME}")
    result = _parse(encoded)
    if isinstance(result, _Reject):
        raise ProtocolError(f"{result.kind}: {result.detail}")
    return result


@dataclass
class DecoderStats:
    """What a ``Decoder`` accepted (``frames``) and dropped, by cause; read them to judge a link.

    >>> stats = DecoderStats(frames=10, bad_crc=2)
    >>> stats.dropped
    2
    """

    frames: int = 0
    bad_cobs: int = 0
    bad_crc: int = 0
    truncated: int = 0
    oversized: int = 0
    bad_version: int = 0
    unknown_type: int = 0
    malformed: int = 0

    @property
    def dropped(self) -> int:
        """Frames dropped for any reason."""
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "frames")

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for JSON summaries)."""
        return asdict(self)


class Decoder:
    """Turns a byte stream, in chunks of any size, into frames; never raises, bounded memory.

    A frame ends at each 0x00. Unusable frames are dropped and counted in ``stats`` (the last
    reason is in ``last_error``); empty frames (consecutive 0x00) are ignored silently. At most
    ``MAX_ENCODED_FRAME`` bytes are buffered: a longer frame is counted as oversized and skipped
    up to the next 0x00. So a peer that reconnects mid-frame costs one dropped frame at most.

    >>> from firmware_bridge.protocol.messages import TeachStart, TeachStop
    >>> decoder = Decoder()
    >>> wire = encode(TeachStart("cup"), 1) + encode(TeachStop(), 2)
    >>> decoder.feed(wire[:5]), decoder.buffered
    ([], 5)
    >>> [frame.seq for frame in decoder.feed(wire[5:] + b"noise\\x00")]
    [1, 2]
    >>> decoder.stats.frames, decoder.stats.dropped
    (2, 1)
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self.stats = DecoderStats()
        self.last_error = ""

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished frame held now; never more than ``MAX_ENCODED_FRAME``."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any unfinished frame (e.g. after reopening the port); the counters stay."""
        self._buffer.clear()
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Every frame completed by ``data``, in order; bytes after the last 0x00 are kept."""
        frames: list[Frame] = []
        pieces = bytes(data).split(DELIMITER)
        last = len(pieces) - 1
        for index, piece in enumerate(pieces):
            complete = index < last
            if self._discarding:
                self._discarding = not complete
                continue
            if len(self._buffer) + len(piece) > MAX_ENCODED_FRAME:
                self.stats.oversized += 1
                self.last_error = f"oversized frame: more than {MAX_ENCODED_FRAME} bytes"
                self._buffer.clear()
                self._discarding = not complete
                continue
            self._buffer += piece
            if complete and self._buffer:
                result = _parse(bytes(self._buffer))
                self._buffer.clear()
                if isinstance(result, _Reject):
                    setattr(self.stats, result.kind, getattr(self.stats, result.kind) + 1)
                    self.last_error = f"{result.kind}: {result.detail}"
                else:
                    self.stats.frames += 1
                    frames.append(result)
        return frames
