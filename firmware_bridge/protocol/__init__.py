"""The framed serial protocol between the camera host and its companion microcontroller (MCU).

The MCU owns the buttons, LEDs and small display; the host runs edge_cl. They exchange short
typed messages over a UART or USB CDC byte stream. ``firmware_bridge/PROTOCOL.md`` is the
specification for firmware authors; this package is its Python reference, in three layers,
each importing only the ones before it:

- ``messages``: what is said. The message types, their fields and the checks on them, the
  enums they carry (``LearnerState``, ``NackReason``, ``ErrorCode``), the bytes of each payload
  and the JSON form (``to_dict``/``from_dict``).
- ``framing``: how a message crosses a lossy byte stream. The header with its sequence number,
  the CRC-16, COBS and the 0x00 delimiter (``encode``, ``decode_frame``), and the streaming
  ``Decoder`` that turns any chunks of bytes into frames, never raising, in bounded memory.
- ``link``: who talks to whom. ``SerialLink`` numbers the frames it sends over a port, feeds
  what it reads to a ``Decoder``, waits for ACKs and resends.

Import the names from here: ``from firmware_bridge.protocol import SerialLink, TeachStart``.

>>> encode_payload(TeachStart("cup")).hex(" ")  # messages: the payload
'03 63 75 70'
>>> encode(TeachStart("cup"), seq=7).hex(" ")  # framing: header, payload, CRC, COBS, 0x00
'03 01 07 09 10 04 03 63 75 70 17 77 00'
>>> Decoder().feed(bytes.fromhex("03 01 07 09 10 04 03 63 75 70 17 77 00"))
[Frame(seq=7, message=TeachStart(label='cup'))]
"""

from firmware_bridge.protocol.framing import (
    CRC_CHECK,
    CRC_CONFIG,
    CRC_INIT,
    CRC_POLY,
    CRC_REFIN,
    CRC_REFOUT,
    CRC_SIZE,
    CRC_WIDTH,
    CRC_XOROUT,
    DELIMITER,
    HEADER_SIZE,
    MAX_ENCODED_FRAME,
    MAX_RAW_FRAME,
    MAX_WIRE_FRAME,
    SEQ_MODULUS,
    Decoder,
    DecoderStats,
    Frame,
    crc16,
    decode_frame,
    encode,
    next_seq,
)
from firmware_bridge.protocol.link import Port, SerialLink, read_available
from firmware_bridge.protocol.messages import (
    MAX_LABEL_BYTES,
    MAX_NAME_BYTES,
    MAX_PAYLOAD,
    MAX_TEXT_BYTES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    Ack,
    ErrorCode,
    ErrorReport,
    Forget,
    Hello,
    LearnerState,
    Message,
    MsgType,
    Nack,
    NackReason,
    Prediction,
    Save,
    Status,
    TeachStart,
    TeachStop,
    decode_payload,
    encode_payload,
    from_dict,
    needs_ack,
    to_dict,
)

__all__ = [
    "CRC_CHECK",
    "CRC_CONFIG",
    "CRC_INIT",
    "CRC_POLY",
    "CRC_REFIN",
    "CRC_REFOUT",
    "CRC_SIZE",
    "CRC_WIDTH",
    "CRC_XOROUT",
    "DELIMITER",
    "HEADER_SIZE",
    "MAX_ENCODED_FRAME",
    "MAX_LABEL_BYTES",
    "MAX_NAME_BYTES",
    "MAX_PAYLOAD",
    "MAX_RAW_FRAME",
    "MAX_TEXT_BYTES",
    "MAX_WIRE_FRAME",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "SEQ_MODULUS",
    "Ack",
    "Decoder",
    "DecoderStats",
    "ErrorCode",
    "ErrorReport",
    "Forget",
    "Frame",
    "Hello",
    "LearnerState",
    "Message",
    "MsgType",
    "Nack",
    "NackReason",
    "Port",
    "Prediction",
    "Save",
    "SerialLink",
    "Status",
    "TeachStart",
    "TeachStop",
    "crc16",
    "decode_frame",
    "decode_payload",
    "encode",
    "encode_payload",
    "from_dict",
    "needs_ack",
    "next_seq",
    "read_available",
    "to_dict",
]
