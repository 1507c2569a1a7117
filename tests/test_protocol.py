"""The MCU serial protocol: round trips, the PROTOCOL.md vectors, a decoder that survives anything.

The vectors, constants and code tables are parsed out of ``firmware_bridge/PROTOCOL.md`` so the
specification and the code cannot drift; the document's C reference code is compiled and run
against the same vectors when a C compiler is installed.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import serial
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_cl.errors import ProtocolError
from firmware_bridge import protocol
from firmware_bridge.protocol import (
    MAX_ENCODED_FRAME,
    MAX_WIRE_FRAME,
    REQUEST_TYPES,
    Ack,
    Decoder,
    ErrorCode,
    ErrorReport,
    Forget,
    Frame,
    Hello,
    LearnerState,
    Message,
    MsgType,
    Nack,
    NackReason,
    Prediction,
    Save,
    SerialLink,
    Status,
    TeachStart,
    TeachStop,
    crc16,
    decode_frame,
    encode,
    from_dict,
    next_seq,
    to_dict,
)

SPEC = Path(__file__).resolve().parent.parent / "firmware_bridge" / "PROTOCOL.md"
FENCE = re.compile(r"^```([\w-]+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fenced(tag: str) -> list[str]:
    """The bodies of the PROTOCOL.md code blocks tagged ``tag``."""
    return [body for name, body in FENCE.findall(SPEC.read_text(encoding="utf-8")) if name == tag]


def json_lines(tag: str) -> list[dict[str, Any]]:
    (body,) = fenced(tag)
    return [json.loads(line) for line in body.splitlines() if line.strip()]


VECTORS = json_lines("test-vectors")
REJECTS = json_lines("reject-vectors")


def crc_reference(data: bytes) -> int:
    """CRC-16/CCITT-FALSE bit by bit, as PROTOCOL.md's C code computes it (not the crc package)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def wire(body: bytes) -> bytes:
    """A wire frame around any raw ``body`` (header and payload), with its correct CRC."""
    return bytes(cobs.encode(body + struct.pack("<H", crc_reference(body)))) + b"\x00"


EXAMPLES: list[Message] = [
    Hello("pico-ui", (1, 2, 3), buttons=3, leds=2, display_width=128, display_height=64),
    Hello("n" * 32, (255, 255, 255), 255, 255, 65535, 65535, protocol_version=255),
    Ack(0),
    Ack(65535),
    Nack(1, NackReason.LIMIT),
    Nack(2, 200),
    ErrorReport(ErrorCode.CAMERA, "no frames for 5 s"),
    ErrorReport(250),
    TeachStart("cup"),
    TeachStart("é" * 32),
    TeachStop(),
    Save(),
    Forget("coffee mug"),
    Prediction("cup", 0.5, latency_ms=12),
    Prediction("", 0.0, unknown=True),
    Prediction("nothing", 0.875, latency_ms=40, empty=True),
    Prediction("z" * 64, 1.0, latency_ms=65535),
    Status(LearnerState.SAVING, 65535, 2**32 - 1),
    Status(LearnerState.IDLE),
]

# --- strategies -------------------------------------------------------------------------------

u8, u16, u32 = st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1)


def texts(min_size: int, max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(
        st.characters(codec="utf-8", exclude_characters="\x00"),
        min_size=min_size,
        max_size=max_bytes,
    ).filter(lambda text: len(text.encode()) <= max_bytes)


labels = texts(1, 64)
confidences = st.floats(0.0, 1.0, width=32)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, texts(1, 32), st.tuples(u8, u8, u8), u8, u8, u16, u16, u8),
    st.builds(Ack, u16),
    st.builds(Nack, u16, u8),
    st.builds(ErrorReport, u8, texts(0, 64)),
    st.builds(TeachStart, labels),
    st.just(TeachStop()),
    st.just(Save()),
    st.builds(Forget, labels),
    st.builds(Prediction, labels, confidences, st.just(False), u16, st.booleans()),
    st.builds(Prediction, texts(0, 64), confidences, st.just(True), u16),
    st.builds(Status, st.sampled_from(LearnerState), u16, u32),
)

# --- CRC and constants ------------------------------------------------------------------------


def test_crc_is_ccitt_false_with_its_check_value() -> None:
    assert crc16(b"123456789") == crc_reference(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


@given(st.binary(max_size=200))
def test_crc_package_matches_the_documented_algorithm(data: bytes) -> None:
    assert crc16(data) == crc_reference(data)


def test_constants_match_the_spec() -> None:
    (body,) = fenced("protocol-constants")
    spec = dict(line.split(" = ") for line in body.splitlines())
    assert len(spec) == 18
    code = {
        "version": protocol.PROTOCOL_VERSION,
        "header_size": protocol.HEADER_SIZE,
        "crc_size": protocol.CRC_SIZE,
        "max_payload": protocol.MAX_PAYLOAD,
        "max_raw_frame": protocol.MAX_RAW_FRAME,
        "max_encoded_frame": protocol.MAX_ENCODED_FRAME,
        "max_wire_frame": protocol.MAX_WIRE_FRAME,
        "max_label_bytes": protocol.MAX_LABEL_BYTES,
        "max_name_bytes": protocol.MAX_NAME_BYTES,
        "max_text_bytes": protocol.MAX_TEXT_BYTES,
        "seq_modulus": protocol.SEQ_MODULUS,
        "crc_width": protocol.CRC_WIDTH,
        "crc_poly": protocol.CRC_POLY,
        "crc_init": protocol.CRC_INIT,
        "crc_refin": protocol.CRC_REFIN,
        "crc_refout": protocol.CRC_REFOUT,
        "crc_xorout": protocol.CRC_XOROUT,
        "crc_check": protocol.CRC_CHECK,
    }
    for key, value in code.items():
        expected = spec[key] == "true" if isinstance(value, bool) else int(spec[key], 0)
        assert value == expected, key
    assert cobs.max_encoded_length(protocol.MAX_RAW_FRAME) == MAX_ENCODED_FRAME
    assert crc16(b"123456789") == int(spec["crc_check"], 16)


def code_tables() -> list[dict[str, int]]:
    """Every table of PROTOCOL.md whose rows start ``| number | `NAME` |``, in order."""
    tables: list[dict[str, int]] = []
    previous_was_row = False
    for line in SPEC.read_text(encoding="utf-8").splitlines():
        row = re.match(r"\| (0x[0-9A-Fa-f]+|\d+) \| `([A-Z_]+)` \|", line)
        if row and not previous_was_row:
            tables.append({})
        if row:
            tables[-1][row[2]] = int(row[1], 0)
        previous_was_row = bool(row)
    return tables


def test_code_tables_match_the_enums() -> None:
    enums = [MsgType, LearnerState, NackReason, ErrorCode]
    assert code_tables() == [{member.name: member.value for member in enum} for enum in enums]


def test_request_column_matches_request_types() -> None:
    text = SPEC.read_text(encoding="utf-8")
    marked = set(re.findall(r"\| 0x[0-9a-f]+ \| `([A-Z_]+)` \| yes \|", text))
    assert marked == {kind.name for kind in REQUEST_TYPES}


def test_payload_sizes_match_the_type_table() -> None:
    smallest_and_largest = {
        MsgType.HELLO: (Hello("n"), Hello("n" * 32)),
        MsgType.ACK: (Ack(0), Ack(0)),
        MsgType.NACK: (Nack(0), Nack(0)),
        MsgType.ERROR: (ErrorReport(0), ErrorReport(0, "t" * 64)),
        MsgType.TEACH_START: (TeachStart("l"), TeachStart("l" * 64)),
        MsgType.TEACH_STOP: (TeachStop(), TeachStop()),
        MsgType.SAVE: (Save(), Save()),
        MsgType.FORGET: (Forget("l"), Forget("l" * 64)),
        MsgType.PREDICTION: (Prediction("", 0.5, unknown=True), Prediction("l" * 64, 0.5)),
        MsgType.STATUS: (Status(LearnerState.IDLE), Status(LearnerState.IDLE)),
    }
    text = SPEC.read_text(encoding="utf-8")
    for kind, examples in smallest_and_largest.items():
        row = re.search(rf"\| `{kind.name}` \| \w+ \| [\w ]+ \| ([^|]+) \|", text)
        assert row, kind
        sizes = re.search(r"\((\d+)\.\.(\d+)\)", row[1]) or re.fullmatch(r"(\d+)()", row[1].strip())
        assert sizes, row[1]
        low, high = int(sizes[1]), int(sizes[2] or sizes[1])
        payload_sizes = [len(cobs.decode(encode(m, 0)[:-1])) - 7 for m in examples]
        assert payload_sizes == [low, high], kind
        assert high <= protocol.MAX_PAYLOAD


# --- round trips ------------------------------------------------------------------------------


def test_examples_cover_every_message_type() -> None:
    assert {message.TYPE for message in EXAMPLES} == set(MsgType)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("seq", [0, 1, 65535])
def test_round_trip_every_type(message: Message, seq: int) -> None:
    frame = encode(message, seq)
    assert frame.endswith(b"\x00") and b"\x00" not in frame[:-1]
    assert len(frame) <= MAX_WIRE_FRAME
    assert decode_frame(frame) == Frame(seq, message)
    assert Decoder().feed(frame) == [Frame(seq, message)]
    assert from_dict(json.loads(json.dumps(to_dict(message)))) == message


@settings(deadline=None)
@given(messages, u16)
def test_round_trip_any_valid_message(message: Message, seq: int) -> None:
    frame = encode(message, seq)
    assert b"\x00" not in frame[:-1] and len(frame) <= MAX_WIRE_FRAME
    assert decode_frame(frame) == Frame(seq, message)
    assert from_dict(to_dict(message)) == message


def test_confidence_travels_as_float32() -> None:
    (frame,) = Decoder().feed(encode(Prediction("cup", 0.9), 0))
    assert isinstance(frame.message, Prediction)
    assert frame.message.confidence == struct.unpack("<f", struct.pack("<f", 0.9))[0]
    assert frame.message.confidence == pytest.approx(0.9, abs=1e-7)


def test_unknown_codes_survive_as_ints_and_known_ones_become_enums() -> None:
    assert decode_frame(encode(Nack(1, 200), 0)).message == Nack(1, 200)
    decoded = decode_frame(encode(ErrorReport(4, "oom"), 0)).message
    assert isinstance(decoded, ErrorReport) and decoded.code is ErrorCode.MEMORY


INVALID = [
    (lambda: TeachStart("x" * 65), "65 bytes of UTF-8, at most 64"),
    (lambda: TeachStart("é" * 33), "66 bytes of UTF-8, at most 64"),
    (lambda: Forget(""), "must not be empty"),
    (lambda: TeachStart("a\x00b"), "NUL"),
    (lambda: TeachStart("\ud800"), "cannot be encoded as UTF-8"),
    (lambda: TeachStart(b"cup"), "must be a str"),
    (lambda: Prediction("cup", 1.5), r"confidence must be a number in \[0, 1\]"),
    (lambda: Prediction("cup", -0.01), "confidence"),
    (lambda: Prediction("cup", math.nan), "confidence"),
    (lambda: Prediction("cup", math.inf), "confidence"),
    (lambda: Prediction("cup", True), "confidence"),
    (lambda: Prediction("", 0.5), "label must not be empty"),
    (
        lambda: Prediction("cup", 0.5, latency_ms=65536),
        r"latency_ms must be an integer in \[0, 65535\]",
    ),
    (lambda: Prediction("cup", 0.5, unknown=1), "unknown must be a bool"),
    (lambda: Prediction("nothing", 0.5, empty=1), "empty must be a bool"),
    (
        lambda: Prediction("nothing", 0.5, unknown=True, empty=True),
        "unknown and empty may not both be set",
    ),
    (lambda: Prediction("", 0.5, empty=True), "label must not be empty"),
    (lambda: Status(1), "state must be a LearnerState"),
    (lambda: Status(LearnerState.IDLE, 65536), "num_classes"),
    (lambda: Status(LearnerState.IDLE, -1), "num_classes"),
    (lambda: Status(LearnerState.IDLE, 0, 2**32), "replay_bytes"),
    (lambda: Hello("n" * 33), "33 bytes of UTF-8, at most 32"),
    (lambda: Hello("fw", (1, 2)), r"\(major, minor, patch\)"),
    (lambda: Hello("fw", (1, 2, 256)), "firmware_version part"),
    (lambda: Hello("fw", display_width=65536), "display_width"),
    (lambda: Ack(65536), "acknowledged seq"),
    (lambda: Ack(True), "acknowledged seq"),
    (lambda: Nack(1, 256), "NACK reason"),
    (lambda: ErrorReport(1, "t" * 65), "ERROR text is 65 bytes"),
    (lambda: encode(Save(), -1), r"seq must be an integer in \[0, 65535\]"),
    (lambda: encode(Save(), 65536), "seq"),
    (lambda: encode(Save(), 1.0), "seq"),
    (lambda: encode("SAVE", 0), "not a protocol message"),
    (lambda: from_dict({"type": "JUMP"}), "not a message type name"),
    (lambda: from_dict({"type": "STATUS", "state": "NAPPING"}), "not a LearnerState name"),
    (lambda: from_dict({"type": "SAVE", "label": "cup"}), "fields do not match"),
]


@pytest.mark.parametrize(("make", "message"), INVALID)
def test_invalid_messages_are_refused_with_a_clear_error(make: Any, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        make()


# --- the PROTOCOL.md vectors ------------------------------------------------------------------


def test_vectors_cover_every_message_type() -> None:
    assert {MsgType[vector["message"]["type"]] for vector in VECTORS} == set(MsgType)


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    message, frame = from_dict(vector["message"]), bytes.fromhex(vector["frame"])
    assert encode(message, vector["seq"]) == frame
    assert cobs.decode(frame[:-1]) == bytes.fromhex(vector["raw"])
    assert decode_frame(frame) == Frame(vector["seq"], message)
    assert to_dict(message) == vector["message"]


def test_prediction_vectors_cover_each_flag_and_their_bits() -> None:
    """A seen label, unknown (bit 0) and nothing in view (bit 1), each a vector of its own, and
    a frame with both bits among the rejects."""
    flags = {}
    for vector in VECTORS:
        if vector["message"]["type"] == "PREDICTION":
            message = from_dict(vector["message"])
            assert isinstance(message, Prediction)
            flags[vector["name"]] = (
                bytes.fromhex(vector["raw"])[5 + 6],
                message.unknown,
                message.empty,
            )
    assert flags == {
        "prediction": (0x00, False, False),
        "prediction_unknown": (0x01, True, False),
        "prediction_empty": (0x02, False, True),
    }
    (both,) = (v for v in REJECTS if v["name"] == "unknown_and_empty")
    assert cobs.decode(bytes.fromhex(both["frame"])[:-1])[5 + 6] == 0x03


def test_reserved_prediction_flag_bits_are_ignored_on_receipt() -> None:
    body = bytes([1, 0, 0, MsgType.PREDICTION, 11]) + struct.pack("<fHB", 0.5, 7, 0xFE) + b"\x03cup"
    decoded = decode_frame(wire(body)).message
    assert decoded == Prediction("cup", 0.5, latency_ms=7, empty=True)  # bit 1 alone counts


def test_worked_example_is_the_teach_start_vector() -> None:
    (body,) = fenced("worked-example")
    sections: dict[str, bytes] = {}
    for line in body.splitlines():
        if line.endswith(":"):
            current = line[:-1]
            sections[current] = b""
        else:
            sections[current] += bytes.fromhex(line.split("|")[0])
    (vector,) = (v for v in VECTORS if v["name"] == "teach_start")
    assert sections == {"raw": bytes.fromhex(vector["raw"]), "wire": bytes.fromhex(vector["frame"])}


@pytest.mark.parametrize("vector", REJECTS, ids=lambda v: v["name"])
def test_reject_vector(vector: dict[str, Any]) -> None:
    decoder = Decoder()
    good = encode(TeachStop(), 1)
    assert decoder.feed(bytes.fromhex(vector["frame"]) + good) == [Frame(1, TeachStop())]
    assert getattr(decoder.stats, vector["expect"]) == 1
    assert decoder.stats.dropped == 1
    with pytest.raises(ProtocolError, match=vector["expect"]):
        decode_frame(bytes.fromhex(vector["frame"]))


C_HARNESS = r"""
#include <stdio.h>

void handle_frame(uint8_t type, uint16_t seq, const uint8_t *payload, uint8_t len)
{
    printf("F %u %u ", type, seq);
    for (uint8_t i = 0; i < len; i++)
        printf("%02x", payload[i]);
    printf("-\n");
}

static size_t unhex(const char *text, uint8_t *out)
{
    size_t n = 0;
    unsigned value;
    while (text[0] != '-' && sscanf(text, "%2x", &value) == 1) {
        out[n++] = (uint8_t)value;
        text += 2;
    }
    return n;
}

int main(void)
{
    char line[4096], hex[2048];
    uint8_t bytes[1024], wire[MAX_ENCODED_FRAME + 1];
    unsigned type, seq;
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "E %u %u %2047s", &type, &seq, hex) == 3) {
            size_t n = build_frame((uint8_t)type, (uint16_t)seq, bytes,
                                   (uint8_t)unhex(hex, bytes), wire);
            printf("W ");
            for (size_t i = 0; i < n; i++)
                printf("%02x", wire[i]);
            printf("\n");
        } else if (sscanf(line, "D %2047s", hex) == 1) {
            size_t n = unhex(hex, bytes);
            for (size_t i = 0; i < n; i++)
                on_byte(bytes[i]);
            printf(".\n");
        }
    }
    return 0;
}
"""


def test_c_reference_code_matches_the_vectors(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        pytest.skip("no C compiler to check PROTOCOL.md's C code")
    (code,) = fenced("c")
    source = tmp_path / "protocol.c"
    source.write_text(code + C_HARNESS, encoding="utf-8")
    binary = tmp_path / "protocol"
    subprocess.run(
        [compiler, "-std=c99", "-Wall", "-Wextra", "-Werror", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
    )
    frame_rejects = [v for v in REJECTS if v["layer"] == "frame"]
    lines = []
    for vector in VECTORS:
        raw = bytes.fromhex(vector["raw"])
        lines.append(f"E {raw[3]} {vector['seq']} {raw[5:-2].hex()}-")
        lines.append(f"D {bytes.fromhex(vector['frame']).hex()}")
    lines += [f"D {bytes.fromhex(v['frame']).hex()}" for v in frame_rejects]
    too_big = wire(struct.pack("<BHBB", 1, 9, 0x7F, 129) + b"\x01" * 129)  # valid but for size
    oversized = too_big + bytes.fromhex(VECTORS[0]["frame"])
    lines.append(f"D {oversized.hex()}")
    result = subprocess.run(
        [str(binary)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True
    )
    expected = []
    for vector in VECTORS:
        raw = bytes.fromhex(vector["raw"])
        expected.append(f"W {bytes.fromhex(vector['frame']).hex()}")
        expected += [f"F {raw[3]} {vector['seq']} {raw[5:-2].hex()}-", "."]
    expected += ["."] * len(frame_rejects)
    raw = bytes.fromhex(VECTORS[0]["raw"])
    expected += [f"F {raw[3]} {VECTORS[0]['seq']} {raw[5:-2].hex()}-", "."]
    assert result.stdout.splitlines() == expected


# --- the streaming decoder --------------------------------------------------------------------

STREAM_MESSAGES = [TeachStart("cup"), Prediction("cup", 0.75, latency_ms=9), Save()]
STREAM = b"".join(encode(message, seq) for seq, message in enumerate(STREAM_MESSAGES))
EXPECTED = [Frame(seq, message) for seq, message in enumerate(STREAM_MESSAGES)]


def test_several_frames_in_one_read() -> None:
    decoder = Decoder()
    assert decoder.feed(STREAM) == EXPECTED
    assert decoder.stats.frames == 3 and decoder.stats.dropped == 0 and decoder.buffered == 0


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_reads_at_every_position(cut: int) -> None:
    decoder = Decoder()
    assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) == EXPECTED


def test_byte_by_byte() -> None:
    decoder = Decoder()
    assert [frame for i in range(len(STREAM)) for frame in decoder.feed(STREAM[i : i + 1])] == (
        EXPECTED
    )


def test_empty_frames_are_ignored_silently() -> None:
    decoder = Decoder()
    assert decoder.feed(b"\x00\x00" + STREAM[:5]) == []
    assert decoder.feed(STREAM[5:] + b"\x00\x00\x00") == EXPECTED
    assert decoder.stats.dropped == 0


def test_largest_frame_is_accepted_one_byte_more_is_oversized() -> None:
    largest = wire(struct.pack("<BHBB", 1, 9, 0x7F, 128) + b"\x01" * 128)
    assert len(largest) == MAX_WIRE_FRAME
    too_big = wire(struct.pack("<BHBB", 1, 9, 0x7F, 129) + b"\x01" * 129)
    decoder = Decoder()
    assert decoder.feed(largest + too_big) == []
    assert (decoder.stats.unknown_type, decoder.stats.oversized) == (1, 1)


def test_oversized_frame_is_skipped_without_growing_the_buffer() -> None:
    decoder = Decoder()
    for _ in range(50):
        assert decoder.feed(b"\x55" * 100) == []
        assert decoder.buffered <= MAX_ENCODED_FRAME
    assert decoder.feed(b"\x55\x00" + STREAM) == EXPECTED
    assert decoder.stats.oversized == 1 and decoder.stats.dropped == 1
    assert "oversized" in decoder.last_error


def test_reset_drops_a_partial_frame() -> None:
    decoder = Decoder()
    decoder.feed(STREAM[:4])
    decoder.reset()
    assert decoder.buffered == 0
    assert decoder.feed(STREAM[4:]) == EXPECTED[1:]
    assert decoder.stats.dropped == 1


CUT_SHORT = encode(TeachStart("cup"), 5)


@pytest.mark.parametrize("cut", range(len(CUT_SHORT) - 1))
def test_peer_reconnecting_mid_frame_costs_that_frame_only(cut: int) -> None:
    decoder = Decoder()
    frames = decoder.feed(CUT_SHORT[:cut] + b"\x00" + encode(Save(), 0))
    assert frames == [Frame(0, Save())]
    assert decoder.stats.dropped == (1 if cut else 0)


@settings(deadline=None)
@given(st.lists(st.binary(max_size=400), max_size=30))
def test_any_bytes_give_frames_or_counted_errors_never_an_exception(chunks: list[bytes]) -> None:
    decoder = Decoder()
    returned = 0
    for chunk in chunks:
        frames = decoder.feed(chunk)
        assert all(isinstance(frame, Frame) for frame in frames)
        returned += len(frames)
        assert decoder.buffered <= MAX_ENCODED_FRAME
    assert decoder.stats.frames == returned
    # each piece between delimiters counts once at most (an oversized tail as soon as it overflows)
    pieces = b"".join(chunks).split(b"\x00")
    assert decoder.stats.frames + decoder.stats.dropped <= len(pieces)


@settings(deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), messages, u16), max_size=8), st.data())
def test_frames_in_garbage_are_all_recovered(
    items: list[tuple[bytes, Message, int]], data: st.DataObject
) -> None:
    stream = b"".join(garbage + b"\x00" + encode(message, seq) for garbage, message, seq in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = Decoder()
    frames = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        frames += decoder.feed(stream[start:end])
        assert decoder.buffered <= MAX_ENCODED_FRAME
    assert frames == [Frame(seq, message) for _, message, seq in items]


def test_decode_frame_refuses_what_is_not_one_frame() -> None:
    with pytest.raises(ProtocolError, match="cannot contain 0x00"):
        decode_frame(STREAM)
    with pytest.raises(ProtocolError, match="oversized"):
        decode_frame(b"\x01" * (MAX_ENCODED_FRAME + 1))


# --- sequence numbers and SerialLink -----------------------------------------------------------


def test_sequence_numbers_wrap() -> None:
    assert [next_seq(s) for s in (0, 1, 65534, 65535)] == [1, 2, 65535, 0]


def loop_link(**options: Any) -> SerialLink:
    return SerialLink(serial.serial_for_url("loop://", timeout=0.01), **options)


def test_link_numbers_frames_and_wraps() -> None:
    link = loop_link(first_seq=65534)
    assert [link.send(Save()) for _ in range(3)] == [65534, 65535, 0]
    assert [frame.seq for frame in link.frames(idle=0.2)] == [65534, 65535, 0]
    assert link.stats.dropped == 0


def test_link_request_returns_the_ack_and_keeps_other_frames() -> None:
    link = loop_link()
    link.port.write(encode(Ack(seq=0), 40))  # the answer is already on its way
    assert link.request(TeachStart("cup")) == Ack(0)
    assert link.receive(timeout=0.5) == Frame(0, TeachStart("cup"))  # loop:// echoes the request
    assert link.receive(timeout=0.05) is None


def test_link_request_resends_with_the_same_seq_then_fails() -> None:
    link = loop_link()
    with pytest.raises(ProtocolError, match="no ACK/NACK for SAVE seq 0 after 2 attempts"):
        link.request(Save(), timeout=0.05, retries=1)
    assert list(link.frames(idle=0.2)) == [Frame(0, Save()), Frame(0, Save())]
    assert link.send(Save()) == 1


def test_link_auto_ack_answers_requests_only() -> None:
    link = loop_link(auto_ack=True)
    link.send(Prediction("cup", 0.5))
    link.send(TeachStop())
    frames = list(link.frames(idle=0.2))
    assert frames == [
        Frame(0, Prediction("cup", 0.5)),
        Frame(1, TeachStop()),
        Frame(2, Ack(1)),
    ]
