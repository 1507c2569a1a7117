"""Fuzz the serial ``Decoder`` (``firmware_bridge.protocol.framing``): garbage must not hurt it.

Why: the host reads whatever the MCU's serial line delivers (noise, a peer rebooting mid-frame,
a wrong baud rate). The decoder promises to never raise, to buffer at most
``MAX_ENCODED_FRAME`` bytes, and to account for every frame. :func:`check_stream` checks that
exactly against an independent model of the stream: split at 0x00, every terminated non-empty
segment is either the frame ``decode_frame`` finds in it, in order, or one drop counted under
the reason ``decode_frame`` gives (oversized if longer than ``MAX_ENCODED_FRAME``); the
unterminated tail is buffered, or already counted oversized if too long. So ``frames`` plus
``dropped`` equals the terminated segments (plus an oversized tail), whatever the chunking.

Engines: ``mutate`` (default, no extra package) draws streams of valid frames of every type,
seeded, and garbles them: bit flips, truncations, splices, stray and missing delimiters, random
runs, and payload edits with the CRC recomputed (to reach the message parsers); each stream is
fed in random chunks. ``atheris`` (``pip install atheris``) runs coverage-guided libFuzzer on
raw bytes, with the first bytes choosing the chunking.

Usage: ``python tests/harness/fuzz_decoder.py [--engine mutate|atheris] [--inputs 1000000]
[--seed 0] [--json OUT]``; prints a JSON summary, exit status 1 if any input failed.
``tests/test_faults.py`` runs the same model on a few hundred streams per CI run.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any

from cobs import cobs

from edge_cl.errors import ProtocolError
from firmware_bridge.protocol import (
    DELIMITER,
    MAX_ENCODED_FRAME,
    Ack,
    Decoder,
    DecoderStats,
    ErrorReport,
    Forget,
    Frame,
    Hello,
    LearnerState,
    Message,
    Nack,
    Prediction,
    Save,
    Status,
    TeachStart,
    TeachStop,
    crc16,
    decode_frame,
    encode,
)

KINDS = tuple(f.name for f in fields(DecoderStats) if f.name != "frames")


def expected_outcome(segment: bytes) -> Frame | str:
    """What one complete segment (no 0x00 inside) must give: its frame, or the drop reason."""
    if len(segment) > MAX_ENCODED_FRAME:
        return "oversized"
    try:
        return decode_frame(segment)
    except ProtocolError as e:
        kind = str(e).split(":", 1)[0]
        assert kind in KINDS, f"decode_frame gave an unknown reason: {e}"
        return kind


def check_stream(chunks: list[bytes]) -> DecoderStats:
    """Feed ``chunks`` to a new ``Decoder``; assert it matches the model (module doc).

    >>> frames = encode(Save(), 1) + b"noise" + DELIMITER + encode(Ack(1), 2)[:4]
    >>> check_stream([frames[:3], frames[3:]]).as_dict()["frames"]
    1
    """
    decoder = Decoder()
    frames: list[Frame] = []
    for chunk in chunks:
        out = decoder.feed(chunk)
        assert all(isinstance(frame, Frame) for frame in out)
        frames += out
        assert 0 <= decoder.buffered <= MAX_ENCODED_FRAME, decoder.buffered
    *segments, tail = b"".join(chunks).split(DELIMITER)
    want_frames: list[Frame] = []
    want = Counter[str]()
    for segment in segments:
        if segment:
            outcome = expected_outcome(segment)
            if isinstance(outcome, Frame):
                want_frames.append(outcome)
            else:
                want[outcome] += 1
    if len(tail) > MAX_ENCODED_FRAME:
        want["oversized"] += 1
    stats = decoder.stats
    assert repr(frames) == repr(want_frames), (frames, want_frames)  # repr: NaN equals itself
    assert stats.frames == len(frames)
    assert {k: getattr(stats, k) for k in KINDS} == {k: want[k] for k in KINDS}, stats
    assert decoder.buffered == (len(tail) if len(tail) <= MAX_ENCODED_FRAME else 0)
    return stats


def random_text(rng: random.Random, max_bytes: int, min_chars: int = 1) -> str:
    """A label-like UTF-8 text (ASCII, accents, CJK, emoji) of at most ``max_bytes`` bytes."""
    alphabet = "abcxyz 019_-é€中😀"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_chars, max_bytes)))
    while len(text.encode()) > max_bytes:
        text = text[:-1]
    return text or "a" * min_chars


def random_message(rng: random.Random) -> Message:
    """A valid message of a random type with random fields."""
    u16 = rng.randrange(1 << 16)
    kind = rng.randrange(10)
    if kind == 0:
        version = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        return Hello(random_text(rng, 32), version, rng.randrange(256), rng.randrange(256))
    if kind == 1:
        return Ack(u16)
    if kind == 2:
        return Nack(u16, rng.randrange(256))
    if kind == 3:
        return ErrorReport(rng.randrange(256), random_text(rng, 64, 0))
    if kind == 4:
        return TeachStart(random_text(rng, 64))
    if kind == 5:
        return TeachStop()
    if kind == 6:
        return Save()
    if kind == 7:
        return Forget(random_text(rng, 64))
    if kind == 8:
        return Prediction(random_text(rng, 64), rng.random(), rng.random() < 0.5, u16)
    state = rng.choice(list(LearnerState))
    return Status(state, u16, rng.randrange(1 << 32))


def edit_payload(rng: random.Random, wire: bytes) -> bytes:
    """``wire`` with its raw header or payload edited and a correct CRC: reaches the parsers."""
    body = bytearray(cobs.decode(wire[:-1])[:-2])
    op = rng.randrange(4)
    if op == 0 and len(body) > 5:
        body[rng.randrange(5, len(body))] = rng.randrange(256)
    elif op == 1:
        body[rng.randrange(len(body))] = rng.randrange(256)  # version, seq, type or length
    elif op == 2:
        body = body[: rng.randrange(len(body) + 1)]
    else:
        body += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 140)))
    return bytes(cobs.encode(bytes(body) + struct.pack("<H", crc16(bytes(body))))) + DELIMITER


def garble(rng: random.Random, wire: bytes, pool: list[bytes]) -> bytes:
    """One random corruption of the wire frame ``wire``."""
    data = bytearray(wire)
    op = rng.randrange(7)
    if op == 0:
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == 1:
        del data[rng.randrange(len(data)) :]
    elif op == 2:
        other = rng.choice(pool)
        data = data[: rng.randrange(len(data))] + other[rng.randrange(len(other)) :]
    elif op == 3:
        data.insert(rng.randrange(len(data) + 1), 0)
    elif op == 4:
        data = data[:-1]  # the delimiter lost: runs into the next frame
    elif op == 5:
        data = bytearray(edit_payload(rng, wire))
    else:
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def random_stream(rng: random.Random) -> list[bytes]:
    """Valid frames, garbled ones and noise, cut into random chunks."""
    parts: list[bytes] = []
    wires = [encode(random_message(rng), rng.randrange(1 << 16)) for _ in range(rng.randint(1, 6))]
    for wire in wires:
        roll = rng.random()
        if roll < 0.35:
            parts.append(wire)
        elif roll < 0.9:
            parts.append(garble(rng, wire, wires))
        else:
            size = rng.choice((rng.randrange(1, 20), rng.randrange(100, 400)))
            nonzero = rng.random() < 0.5  # long runs without 0x00 make oversized frames
            parts.append(bytes(rng.randrange(1 if nonzero else 0, 256) for _ in range(size)))
    stream = b"".join(parts)
    cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randint(0, 5)))
    return [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]


def fuzz_mutate(inputs: int, seed: int) -> dict[str, Any]:
    """Check ``inputs`` seeded random streams; returns the counts."""
    rng = random.Random(seed)
    totals = Counter[str]()
    failures: list[dict[str, Any]] = []
    stream_bytes = 0
    for _ in range(inputs):
        chunks = random_stream(rng)
        stream_bytes += sum(map(len, chunks))
        try:
            totals.update(check_stream(chunks).as_dict())
        except Exception as e:  # a failed check, or the decoder raised: both are findings
            if len(failures) < 20:
                failures.append({"chunks": [c.hex() for c in chunks], "error": repr(e)[:500]})
            totals["failures"] += 1
    failed = totals.pop("failures", 0)
    return {"bytes": stream_bytes, "failures": failed, **totals, "failure_examples": failures}


def fuzz_atheris(inputs: int, seed: int, report: Path | None, command: str) -> None:
    """Run libFuzzer through atheris for ``inputs`` inputs, seeded with 32 mutated streams,
    then print the summary (and write it to ``report``) and exit: libFuzzer never returns."""
    atheris: Any = importlib.import_module("atheris")  # optional: pip install atheris
    atheris.instrument_all()
    rng = random.Random(seed)
    corpus = Path(tempfile.mkdtemp(prefix="fuzz-decoder-corpus-"))
    for i in range(32):
        (corpus / f"seed{i}").write_bytes(bytes([3, 7, 19]) + b"".join(random_stream(rng)))
    totals = Counter[str]()
    failures: list[dict[str, Any]] = []
    started = time.monotonic()

    def one_input(data: bytes) -> None:
        stream = data[3:]
        cuts = sorted(b % (len(stream) + 1) for b in data[:3])
        chunks = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
        try:
            totals.update(check_stream(chunks).as_dict())
        except Exception as e:  # a failed check, or the decoder raised: both are findings
            totals["failures"] += 1
            if len(failures) < 20:
                failures.append({"input": data.hex(), "error": repr(e)[:500]})
        totals["inputs"] += 1
        totals["bytes"] += len(stream)
        if totals["inputs"] >= inputs:
            summary = {
                "engine": "atheris",
                "inputs": totals.pop("inputs"),
                "seconds": round(time.monotonic() - started, 1),
                "failures": totals.pop("failures", 0),
                **dict(totals),
                "failure_examples": failures,
                "command": command,
            }
            text = json.dumps(summary, indent=2)
            print(text, flush=True)
            if report is not None:
                report.write_text(text + "\n")
            shutil.rmtree(corpus, ignore_errors=True)
            os._exit(1 if summary["failures"] else 0)

    atheris.Setup([sys.argv[0], str(corpus), "-max_len=1024", f"-seed={seed + 1}"], one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    command = "python tests/harness/fuzz_decoder.py " + " ".join(sys.argv[1:])
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    if args.engine == "atheris":
        fuzz_atheris(args.inputs, args.seed, args.json, command)
    started = time.monotonic()
    counts = fuzz_mutate(args.inputs, args.seed)
    summary = {
        "engine": "mutate",
        "inputs": args.inputs,
        "seconds": round(time.monotonic() - started, 1),
        **counts,
        "command": command,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
