"""The messages of the MCU serial protocol: their types, fields, checks and payload bytes.

This is the innermost layer of ``firmware_bridge.protocol``: what each message means and how
its fields are laid out in the payload (``PROTOCOL.md`` sections 4-6), with no knowledge of
frames, sequence numbers or ports. Every message checks its fields when constructed, so an
invalid one never reaches the wire; decoding a payload goes through the same checks.

>>> encode_payload(TeachStart("cup")).hex(" ")
'03 63 75 70'
>>> decode_payload(MsgType.TEACH_START, bytes.fromhex("03 63 75 70"))
TeachStart(label='cup')
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar, TypeAlias, TypeVar

from edge_cl.errors import ProtocolError

PROTOCOL_VERSION = 1
"""Byte 0 of every raw frame. Receivers drop frames of any other version."""

MAX_PAYLOAD = 128
"""The most payload bytes a frame carries (its length byte is a u8); every message fits."""
MAX_LABEL_BYTES = 64
MAX_NAME_BYTES = 32
MAX_TEXT_BYTES = 64


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


def check_uint(value: object, bits: int, what: str) -> None:
    """Refuse ``value`` unless it is an int that fits an unsigned field of ``bits`` bits.

    >>> check_uint(300, 8, "leds")
    Traceback (most recent call last):
    ...
    edge_cl.errors.ProtocolError: leds must be an integer in [0, 255], got 300
    """
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


_LabelMessageT = TypeVar("_LabelMessageT", bound="_LabelMessage")
_EmptyMessageT = TypeVar("_EmptyMessageT", bound="_EmptyMessage")


@dataclass(frozen=True)
class _LabelMessage:
    """A message whose one field is a class label: TEACH_START and FORGET."""

    TYPE: ClassVar[MsgType]
    label: str

    def __post_init__(self) -> None:
        _check_text(self.label, f"{self.TYPE.name} label", MAX_LABEL_BYTES, allow_empty=False)

    def _pack(self) -> bytes:
        return _pack_text(self.label)

    @classmethod
    def _unpack(cls: type[_LabelMessageT], payload: bytes) -> _LabelMessageT:
        return cls(_unpack_text(payload, 0, f"{cls.TYPE.name} label"))


@dataclass(frozen=True)
class _EmptyMessage:
    """A message without fields, whose payload is empty: TEACH_STOP and SAVE."""

    TYPE: ClassVar[MsgType]

    def _pack(self) -> bytes:
        return b""

    @classmethod
    def _unpack(cls: type[_EmptyMessageT], payload: bytes) -> _EmptyMessageT:
        _expect_size(payload, 0, cls.TYPE.name)
        return cls()


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
            check_uint(part, 8, "each firmware_version part")
        check_uint(self.buttons, 8, "buttons")
        check_uint(self.leds, 8, "leds")
        check_uint(self.display_width, 16, "display_width")
        check_uint(self.display_height, 16, "display_height")
        check_uint(self.protocol_version, 8, "protocol_version")

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
        check_uint(self.seq, 16, "acknowledged seq")

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
        check_uint(self.seq, 16, "refused seq")
        check_uint(self.reason, 8, "NACK reason")

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
        check_uint(self.code, 8, "ERROR code")
        _check_text(self.text, "ERROR text", MAX_TEXT_BYTES, allow_empty=True)

    def _pack(self) -> bytes:
        return bytes([self.code]) + _pack_text(self.text)

    @classmethod
    def _unpack(cls, payload: bytes) -> ErrorReport:
        (code,) = _unpack_fixed(payload, "<B", "ERROR")
        return cls(_known(ErrorCode, code), _unpack_text(payload, 1, "ERROR text"))


@dataclass(frozen=True)
class TeachStart(_LabelMessage):
    """Start collecting examples of ``label`` (the teach button went down).

    >>> TeachStart("coffee cup").label
    'coffee cup'
    """

    TYPE: ClassVar[MsgType] = MsgType.TEACH_START


@dataclass(frozen=True)
class TeachStop(_EmptyMessage):
    """Stop collecting examples and learn from them (the teach button came up).

    >>> TeachStop()
    TeachStop()
    """

    TYPE: ClassVar[MsgType] = MsgType.TEACH_STOP


@dataclass(frozen=True)
class Save(_EmptyMessage):
    """Write the learner's state to persistent storage.

    >>> Save()
    Save()
    """

    TYPE: ClassVar[MsgType] = MsgType.SAVE


@dataclass(frozen=True)
class Forget(_LabelMessage):
    """Remove the class ``label`` from the learner.

    >>> Forget("cup")
    Forget(label='cup')
    """

    TYPE: ClassVar[MsgType] = MsgType.FORGET


FLAG_UNKNOWN = 0x01
"""PREDICTION flags bit 0: nothing known is in view (the label is the best guess)."""
FLAG_EMPTY = 0x02
"""PREDICTION flags bit 1: nothing is in view (the label is the class taught as the empty
scene). Bits 2-7 are reserved: sent as 0, ignored on receipt."""


@dataclass(frozen=True)
class Prediction:
    """What the host sees now: ``label`` with ``confidence`` in [0, 1], or ``unknown``, or
    ``empty`` (nothing in view).

    When ``unknown`` is set the label is the best guess and may be empty; when ``empty`` is
    set the label is the class the host was taught the empty scene as. The two flags are never
    set together. ``confidence`` travels as a float32, so decoding returns it rounded to
    float32.

    >>> Prediction("cup", 0.75, latency_ms=41)
    Prediction(label='cup', confidence=0.75, unknown=False, latency_ms=41, empty=False)
    >>> encode_payload(Prediction("nothing", 0.5, empty=True)).hex(" ")
    '00 00 00 3f 00 00 02 07 6e 6f 74 68 69 6e 67'
    """

    TYPE: ClassVar[MsgType] = MsgType.PREDICTION
    label: str
    confidence: float
    unknown: bool = False
    latency_ms: int = 0
    empty: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.unknown, bool):
            raise ProtocolError(f"PREDICTION unknown must be a bool, got {self.unknown!r}")
        if not isinstance(self.empty, bool):
            raise ProtocolError(f"PREDICTION empty must be a bool, got {self.empty!r}")
        if self.unknown and self.empty:
            raise ProtocolError(
                "PREDICTION unknown and empty may not both be set: either nothing known is in "
                "view (unknown) or nothing is in view (empty)"
            )
        _check_text(self.label, "PREDICTION label", MAX_LABEL_BYTES, allow_empty=self.unknown)
        conf = self.confidence
        if (
            isinstance(conf, bool)
            or not isinstance(conf, (int, float))
            or not math.isfinite(conf)
            or not 0.0 <= conf <= 1.0
        ):
            raise ProtocolError(f"PREDICTION confidence must be a number in [0, 1], got {conf!r}")
        check_uint(self.latency_ms, 16, "PREDICTION latency_ms")

    def _pack(self) -> bytes:
        flags = (FLAG_UNKNOWN if self.unknown else 0) | (FLAG_EMPTY if self.empty else 0)
        return struct.pack("<fHB", self.confidence, self.latency_ms, flags) + _pack_text(self.label)

    @classmethod
    def _unpack(cls, payload: bytes) -> Prediction:
        confidence, latency, flags = _unpack_fixed(payload, "<fHB", "PREDICTION")
        label = _unpack_text(payload, 7, "PREDICTION label")
        unknown, empty = bool(flags & FLAG_UNKNOWN), bool(flags & FLAG_EMPTY)
        return cls(label, confidence, unknown, latency, empty)


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
        check_uint(self.num_classes, 16, "STATUS num_classes")
        check_uint(self.replay_bytes, 32, "STATUS replay_bytes")

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


def encode_payload(message: Message) -> bytes:
    """The payload bytes of ``message``: what its raw frame carries after the header.

    Raises ProtocolError for something that is not a message; invalid field values were
    already refused when the message was constructed.

    >>> encode_payload(Ack(seq=7)).hex(" ")
    '07 00'
    """
    if not isinstance(message, _MESSAGE_CLASSES):
        raise ProtocolError(f"cannot encode {message!r}: not a protocol message")
    return message._pack()


def decode_payload(msg_type: MsgType, payload: bytes) -> Message:
    """The message of type ``msg_type`` whose payload bytes are ``payload``.

    Raises ProtocolError saying which field is malformed, with the same checks as construction.

    >>> decode_payload(MsgType.ACK, bytes.fromhex("07 00"))
    Ack(seq=7)
    """
    return _UNPACKERS[msg_type](payload)


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
