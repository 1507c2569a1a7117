"""The framed serial protocol between the camera host and its companion microcontroller (MCU).

The MCU owns the buttons, LEDs and small display; the host runs edge_cl. They exchange short
typed messages over a UART or USB CDC byte stream, which can drop, corrupt or split bytes and
can be reconnected at any moment. Each message therefore travels in a self-delimiting,
checksummed frame::

    wire  = COBS(raw) 0x00
    raw   = version u8 | seq u16 | type u8 | length u8 | payload (length bytes) | crc u16

All integers are little-endian. The CRC is CRC-16/CCITT-FALSE over every raw byte before it.
``PROTOCOL.md`` beside this file is the specification for firmware authors; its test vectors
are checked against this module by ``tests/test_protocol.py``.

>>> frame = encode(TeachStart("cup"), seq=7)
>>> frame.hex(" ")
'03 01 07 09 10 04 03 63 75 70 17 77 00'
>>> Decoder().feed(frame)
[Frame(seq=7, message=TeachStart(label='cup'))]
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple, Protocol, TypeAlias

from cobs import cobs
from crc import Calculator, Configuration

from edge_cl.errors import ProtocolError

PROTOCOL_VERSION = 1
"""Byte 0 of every raw frame. Receivers drop frames of any other version."""

DELIMITER = b"\x00"
HEADER_SIZE = 5
"""version u8, seq u16, type u8, payload length u8."""
CRC_SIZE = 2
MAX_PAYLOAD = 128
MAX_RAW_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
"""135: the largest frame before COBS encoding."""
MAX_ENCODED_FRAME = MAX_RAW_FRAME + 1
"""136: the largest frame after COBS encoding, without its delimiter (COBS adds one byte per
254, and 135 < 254). The decoder never buffers more than this."""
MAX_WIRE_FRAME = MAX_ENCODED_FRAME + len(DELIMITER)
"""137: the largest frame on the wire, delimiter included."""
SEQ_MODULUS = 1 << 16
"""Sequence numbers are u16 and wrap from 65535 to 0."""

MAX_LABEL_BYTES = 64
MAX_NAME_BYTES = 32
MAX_TEXT_BYTES = 64

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


class MsgType(IntEnum):
    """Byte 3 of a raw frame: which message the payload holds.

    >>> MsgType(0x20).name
    'PREDICTION'
    """

    HELLO = 0x01
    ACK = 0x02
    NACK = 0x03
    ERROR = 0x04
    TEACH_START = 0x10
    TEACH_STOP = 0x11
    SAVE = 0x12
    FORGET = 0x13
    PREDICTION = 0x20
    STATUS = 0x21


REQUEST_TYPES = frozenset(
    {MsgType.HELLO, MsgType.TEACH_START, MsgType.TEACH_STOP, MsgType.SAVE, MsgType.FORGET}
)
"""Messages the receiver must answer with an ACK or NACK carrying the request's seq."""


class LearnerState(IntEnum):
    """What the host's learner is doing, as STATUS reports it (the MCU shows it).

    >>> LearnerState(1).name
    'TEACHING'
    """

    IDLE = 0
    TEACHING = 1
    LEARNING = 2
    SAVING = 3


class NackReason(IntEnum):
    """Why a request was refused. Unknown values are kept as plain ints when decoding.

    >>> Nack(seq=3, reason=NackReason.BAD_STATE).reason.name
    'BAD_STATE'
    """

    UNSPECIFIED = 0
    UNSUPPORTED = 1
    MALFORMED = 2
    BAD_STATE = 3
    BUSY = 4
    UNKNOWN_LABEL = 5
    LIMIT = 6
    STORAGE = 7


class ErrorCode(IntEnum):
    """What an ERROR message reports. Unknown values are kept as plain ints when decoding.

    >>> ErrorReport(ErrorCode.CAMERA, "no frames").code == 2
    True
    """

    UNSPECIFIED = 0
    INTERNAL = 1
    CAMERA = 2
    STORAGE = 3
    MEMORY = 4
    PROTOCOL = 5
    MODEL = 6


def _check_uint(value: object, bits: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ProtocolError(f"{what} must be an integer in [0, {(1 << bits) - 1}], got {value!r}")


def _check_text(value: object, what: str, max_bytes: int, *, allow_empty: bool) -> bytes:
    """The UTF-8 bytes of ``value`` after checking it fits a length-prefixed text field."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a str, got {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"{what} {value!r} cannot be encoded as UTF-8: {exc.reason}") from exc
    if not data and not allow_empty:
        raise ProtocolError(f"{what} must not be empty")
    if len(data) > max_bytes:
        raise ProtocolError(
            f"{what} is {len(data)} bytes of UTF-8, at most {max_bytes} fit: {value[:24]!r}..."
        )
    if "\x00" in value:
        raise ProtocolError(f"{what} {value!r} contains NUL, which C firmware cannot display")
    return data


def _pack_text(value: str) -> bytes:
    data = value.encode("utf-8")
    return bytes([len(data)]) + data


def _unpack_fixed(payload: bytes, fmt: str, what: str) -> tuple[Any, ...]:
    if len(payload) < struct.calcsize(fmt):
        raise ProtocolError(
            f"{what} payload has {len(payload)} bytes, needs at least {struct.calcsize(fmt)}"
        )
    return struct.unpack_from(fmt, payload)


def _unpack_text(payload: bytes, offset: int, what: str) -> str:
    """The length-prefixed text at ``offset``, which must end the payload exactly."""
    if offset >= len(payload):
        raise ProtocolError(f"{what}: the length byte at offset {offset} is missing")
    end = offset + 1 + payload[offset]
    if end != len(payload):
        raise ProtocolError(
            f"{what}: {payload[offset]} bytes announced, {len(payload) - offset - 1} present"
        )
    try:
        return payload[offset + 1 : end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} is not valid UTF-8: {exc.reason}") from exc


def _expect_size(payload: bytes, size: int, what: str) -> None:
    if len(payload) != size:
        raise ProtocolError(f"{what} payload must be {size} bytes, got {len(payload)}")


def _known(enum: type[IntEnum], value: int) -> int:
    """``value`` as a member of ``enum`` when it is one, else the plain int."""
    try:
        return enum(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class Hello:
    """Capabilities a side announces when it (re)connects; the MCU's lets the host drive its UI.

    ``protocol_version`` is the highest protocol version the sender implements.

    >>> Hello("pico-ui", (1, 2, 0), buttons=3, leds=2, display_width=128, display_height=64)
    Hello(firmware_name='pico-ui', firmware_version=(1, 2, 0), buttons=3, leds=2, \
display_width=128, display_height=64, protocol_version=1)
    """

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    firmware_name: str
    firmware_version: tuple[int, int, int] = (0, 0, 0)
    buttons: int = 0
    leds: int = 0
    display_width: int = 0
    display_height: int = 0
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_text(self.firmware_name, "firmware_name", MAX_NAME_BYTES, allow_empty=False)
        version = self.firmware_version
        if not isinstance(version, tuple) or len(version) != 3:
            raise ProtocolError(f"firmware_version must be (major, minor, patch), got {version!r}")
        for part in version:
            _check_uint(part, 8, "each firmware_version part")
        _check_uint(self.buttons, 8, "buttons")
        _check_uint(self.leds, 8, "leds")
        _check_uint(self.display_width, 16, "display_width")
        _check_uint(self.display_height, 16, "display_height")
        _check_uint(self.protocol_version, 8, "protocol_version")

    def _pack(self) -> bytes:
        major, minor, patch = self.firmware_version
        return struct.pack(
            "<6B2H",
            self.protocol_version,
            major,
            minor,
            patch,
            self.buttons,
            self.leds,
            self.display_width,
            self.display_height,
        ) + _pack_text(self.firmware_name)

    @classmethod
    def _unpack(cls, payload: bytes) -> Hello:
        proto, major, minor, patch, buttons, leds, width, height = _unpack_fixed(
            payload, "<6B2H", "HELLO"
        )
        name = _unpack_text(payload, 10, "HELLO firmware_name")
        return cls(name, (major, minor, patch), buttons, leds, width, height, proto)


@dataclass(frozen=True)
class Ack:
    """The request with sequence number ``seq`` was received and accepted.

    >>> Ack(seq=12)
    Ack(seq=12)
    """

    TYPE: ClassVar[MsgType] = MsgType.ACK
    seq: int

    def __post_init__(self) -> None:
        _check_uint(self.seq, 16, "acknowledged seq")

    def _pack(self) -> bytes:
        return struct.pack("<H", self.seq)

    @classmethod
    def _unpack(cls, payload: bytes) -> Ack:
        _expect_size(payload, 2, "ACK")
        return cls(*struct.unpack("<H", payload))


@dataclass(frozen=True)
class Nack:
    """The request with sequence number ``seq`` was received and refused, see ``NackReason``.

    >>> Nack(seq=12, reason=NackReason.BUSY).reason == 4
    True
    """

    TYPE: ClassVar[MsgType] = MsgType.NACK
    seq: int
    reason: int = NackReason.UNSPECIFIED

    def __post_init__(self) -> None:
        _check_uint(self.seq, 16, "refused seq")
        _check_uint(self.reason, 8, "NACK reason")

    def _pack(self) -> bytes:
        return struct.pack("<HB", self.seq, self.reason)

    @classmethod
    def _unpack(cls, payload: bytes) -> Nack:
        _expect_size(payload, 3, "NACK")
        seq, reason = struct.unpack("<HB", payload)
        return cls(seq, _known(NackReason, reason))


@dataclass(frozen=True)
class ErrorReport:
    """An unsolicited ERROR: something failed on the sender (``code``) with a short ``text``.

    >>> ErrorReport(ErrorCode.STORAGE, "flash full").text
    'flash full'
    """

    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: int
    text: str = ""

    def __post_init__(self) -> None:
        _check_uint(self.code, 8, "ERROR code")
        _check_text(self.text, "ERROR text", MAX_TEXT_BYTES, allow_empty=True)

    def _pack(self) -> bytes:
        return bytes([self.code]) + _pack_text(self.text)

    @classmethod
    def _unpack(cls, payload: bytes) -> ErrorReport:
        (code,) = _unpack_fixed(payload, "<B", "ERROR")
        return cls(_known(ErrorCode, code), _unpack_text(payload, 1, "ERROR text"))


@dataclass(frozen=True)
class TeachStart:
    """Start collecting examples of ``label`` (the teach button went down).

    >>> TeachStart("coffee cup").label
    'coffee cup'
    """

    TYPE: ClassVar[MsgType] = MsgType.TEACH_START
    label: str

    def __post_init__(self) -> None:
        _check_text(self.label, "TEACH_START label", MAX_LABEL_BYTES, allow_empty=False)

    def _pack(self) -> bytes:
        return _pack_text(self.label)

    @classmethod
    def _unpack(cls, payload: bytes) -> TeachStart:
        return cls(_unpack_text(payload, 0, "TEACH_START label"))


@dataclass(frozen=True)
class TeachStop:
    """Stop collecting examples and learn from them (the teach button came up).

    >>> TeachStop()
    TeachStop()
    """

    TYPE: ClassVar[MsgType] = MsgType.TEACH_STOP

    def _pack(self) -> bytes:
        return b""

    @classmethod
    def _unpack(cls, payload: bytes) -> TeachStop:
        _expect_size(payload, 0, "TEACH_STOP")
        return cls()


@dataclass(frozen=True)
class Save:
    """Write the learner's state to persistent storage.

    >>> Save()
    Save()
    """

    TYPE: ClassVar[MsgType] = MsgType.SAVE

    def _pack(self) -> bytes:
        return b""

    @classmethod
    def _unpack(cls, payload: bytes) -> Save:
        _expect_size(payload, 0, "SAVE")
        return cls()


@dataclass(frozen=True)
class Forget:
    """Remove the class ``label`` from the learner.

    >>> Forget("cup")
    Forget(label='cup')
    """

    TYPE: ClassVar[MsgType] = MsgType.FORGET
    label: str

    def __post_init__(self) -> None:
        _check_text(self.label, "FORGET label", MAX_LABEL_BYTES, allow_empty=False)

    def _pack(self) -> bytes:
        return _pack_text(self.label)

    @classmethod
    def _unpack(cls, payload: bytes) -> Forget:
        return cls(_unpack_text(payload, 0, "FORGET label"))


@dataclass(frozen=True)
class Prediction:
    """What the host sees now: ``label`` with ``confidence`` in [0, 1], or ``unknown``.

    When ``unknown`` is set the label is the best guess and may be empty. ``confidence`` travels
    as a float32, so decoding returns it rounded to float32.

    >>> Prediction("cup", 0.75, latency_ms=41)
    Prediction(label='cup', confidence=0.75, unknown=False, latency_ms=41)
    """

    TYPE: ClassVar[MsgType] = MsgType.PREDICTION
    label: str
    confidence: float
    unknown: bool = False
    latency_ms: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.unknown, bool):
            raise ProtocolError(f"PREDICTION unknown must be a bool, got {self.unknown!r}")
        _check_text(self.label, "PREDICTION label", MAX_LABEL_BYTES, allow_empty=self.unknown)
        conf = self.confidence
        if (
            isinstance(conf, bool)
            or not isinstance(conf, (int, float))
            or not math.isfinite(conf)
            or not 0.0 <= conf <= 1.0
        ):
            raise ProtocolError(f"PREDICTION confidence must be a number in [0, 1], got {conf!r}")
        _check_uint(self.latency_ms, 16, "PREDICTION latency_ms")

    def _pack(self) -> bytes:
        flags = 0x01 if self.unknown else 0x00
        return struct.pack("<fHB", self.confidence, self.latency_ms, flags) + _pack_text(self.label)

    @classmethod
    def _unpack(cls, payload: bytes) -> Prediction:
        confidence, latency, flags = _unpack_fixed(payload, "<fHB", "PREDICTION")
        label = _unpack_text(payload, 7, "PREDICTION label")
        return cls(label, confidence, bool(flags & 0x01), latency)


@dataclass(frozen=True)
class Status:
    """The host learner's state, so the MCU can show it (sent on change and periodically).

    >>> Status(LearnerState.LEARNING, num_classes=3, replay_bytes=65536).state.name
    'LEARNING'
    """

    TYPE: ClassVar[MsgType] = MsgType.STATUS
    state: LearnerState
    num_classes: int = 0
    replay_bytes: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.state, LearnerState):
            raise ProtocolError(f"STATUS state must be a LearnerState, got {self.state!r}")
        _check_uint(self.num_classes, 16, "STATUS num_classes")
        _check_uint(self.replay_bytes, 32, "STATUS replay_bytes")

    def _pack(self) -> bytes:
        return struct.pack("<BHI", self.state, self.num_classes, self.replay_bytes)

    @classmethod
    def _unpack(cls, payload: bytes) -> Status:
        _expect_size(payload, 7, "STATUS")
        state, num_classes, replay_bytes = struct.unpack("<BHI", payload)
        try:
            learner_state = LearnerState(state)
        except ValueError as exc:
            raise ProtocolError(f"STATUS state {state} is not a LearnerState") from exc
        return cls(learner_state, num_classes, replay_bytes)


Message: TypeAlias = (
    Hello | Ack | Nack | ErrorReport | TeachStart | TeachStop | Save | Forget | Prediction | Status
)
"""Any protocol message."""

_MESSAGE_CLASSES = (
    Hello,
    Ack,
    Nack,
    ErrorReport,
    TeachStart,
    TeachStop,
    Save,
    Forget,
    Prediction,
    Status,
)
_UNPACKERS: dict[MsgType, Callable[[bytes], Message]] = {
    cls.TYPE: cls._unpack for cls in _MESSAGE_CLASSES
}
_CLASS_OF = {cls.TYPE: cls for cls in _MESSAGE_CLASSES}


def needs_ack(message: Message) -> bool:
    """Whether the receiver of ``message`` must answer it with an ACK or NACK.

    >>> needs_ack(TeachStart("cup")), needs_ack(Prediction("cup", 0.9))
    (True, False)
    """
    return message.TYPE in REQUEST_TYPES


@dataclass(frozen=True)
class Frame:
    """A decoded message with the sequence number its sender gave it.

    >>> decode_frame(encode(Save(), seq=65535))
    Frame(seq=65535, message=Save())
    """

    seq: int
    message: Message


def encode(message: Message, seq: int) -> bytes:
    """The wire bytes of ``message`` sent with sequence number ``seq``, trailing 0x00 included.

    Raises ProtocolError for a ``seq`` outside [0, 65535] or something that is not a message;
    invalid field values were already refused when the message was constructed.

    >>> encode(Ack(seq=7), seq=8).hex(" ")
    '03 01 08 04 02 02 07 03 72 5e 00'
    """
    if not isinstance(message, _MESSAGE_CLASSES):
        raise ProtocolError(f"cannot encode {message!r}: not a protocol message")
    _check_uint(seq, 16, "seq")
    payload = message._pack()
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
        message = _UNPACKERS[msg_type](body[HEADER_SIZE:])
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


def to_dict(message: Message) -> dict[str, Any]:
    """``message`` as JSON-ready values, with its type name under ``"type"``.

    >>> to_dict(Status(LearnerState.IDLE, 2, 512))
    {'type': 'STATUS', 'state': 'IDLE', 'num_classes': 2, 'replay_bytes': 512}
    """
    out: dict[str, Any] = {"type": message.TYPE.name}
    for field in fields(message):
        value = getattr(message, field.name)
        if isinstance(value, LearnerState):
            value = value.name
        elif isinstance(value, IntEnum):
            value = int(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def from_dict(data: Mapping[str, Any]) -> Message:
    """The message ``to_dict`` made ``data`` from; raises ProtocolError if it describes none.

    >>> from_dict({"type": "FORGET", "label": "cup"})
    Forget(label='cup')
    """
    name = data.get("type")
    if not isinstance(name, str) or name not in MsgType.__members__:
        raise ProtocolError(f"{name!r} is not a message type name: {sorted(MsgType.__members__)}")
    kwargs = {key: value for key, value in data.items() if key != "type"}
    if "state" in kwargs:
        if kwargs["state"] not in LearnerState.__members__:
            raise ProtocolError(f"STATUS state {kwargs['state']!r} is not a LearnerState name")
        kwargs["state"] = LearnerState[kwargs["state"]]
    if isinstance(kwargs.get("firmware_version"), list):
        kwargs["firmware_version"] = tuple(kwargs["firmware_version"])
    try:
        return _CLASS_OF[MsgType[name]](**kwargs)
    except TypeError as exc:
        raise ProtocolError(f"{name} fields do not match {sorted(kwargs)}: {exc}") from exc


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
    >>> link = SerialLink(serial.serial_for_url("loop://", timeout=0.05))
    >>> link.send(TeachStart("cup"))
    0
    >>> link.receive(timeout=1.0)
    Frame(seq=0, message=TeachStart(label='cup'))
    """

    def __init__(self, port: Port, *, first_seq: int = 0, auto_ack: bool = False) -> None:
        _check_uint(first_seq, 16, "first_seq")
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
