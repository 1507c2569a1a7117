"""The MCU emulator against a host ``SerialLink`` over real pseudo-terminals, in-process and as
a process: handshake, scripted button presses, host predictions, ACKs, retries, duplicates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from edge_cl.errors import ProtocolError
from firmware_bridge.emulator import Command, Emulator, FdPort, parse_script
from firmware_bridge.emulator.cli import main
from firmware_bridge.protocol import (
    Ack,
    Forget,
    Frame,
    Hello,
    LearnerState,
    Prediction,
    Save,
    SerialLink,
    Status,
    TeachStart,
    TeachStop,
    encode,
)

REPO = Path(__file__).resolve().parent.parent
HOST_HELLO = Hello("edge_cl", (0, 1, 0))


@pytest.fixture
def mcu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator.over_pty(ack_timeout=1.0, record=tmp_path / "frames.jsonl") as emulator:
        yield emulator


@pytest.fixture
def port(mcu: Emulator) -> Iterator[serial.Serial]:
    """The host's end: the pty slave opened by path, as edge_cl would open /dev/ttyACM0."""
    assert mcu.device_path is not None and mcu.device_path.startswith("/dev/")
    with serial.Serial(mcu.device_path, 115200, timeout=0.02) as opened:
        yield opened


def serve(host: SerialLink, until: type) -> list[Frame]:
    """Play the host: collect frames until one of type ``until``; answer TEACH_START with a
    PREDICTION and a STATUS, as the device loop would."""
    frames = []
    for frame in host.frames(idle=3.0):
        frames.append(frame)
        if isinstance(frame.message, TeachStart):
            host.send(Prediction(frame.message.label, 0.875, latency_ms=41))
            host.send(Status(LearnerState.TEACHING, num_classes=1, replay_bytes=4096))
        if isinstance(frame.message, until):
            break
    return frames


def test_script_syntax() -> None:
    script = """
        hello; connect 2.5   # wait for the host
        teach "coffee cup" 0.5 ; start mug; stop
        forget mug; save; wait 1; garbage 16
    """
    assert parse_script(script) == [
        Command("hello"),
        Command("connect", seconds=2.5),
        Command("teach", label="coffee cup", seconds=0.5),
        Command("start", label="mug"),
        Command("stop"),
        Command("forget", label="mug"),
        Command("save"),
        Command("wait", seconds=1.0),
        Command("garbage", count=16),
    ]
    assert parse_script("teach cup;connect") == [
        Command("teach", label="cup", seconds=2.0),
        Command("connect", seconds=5.0),
    ]
    assert parse_script("") == []


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("hello\ntech cup", "script line 2, 'tech cup': unknown command 'tech'"),
        ("teach", r"expected `teach LABEL \[SECONDS=2\]`"),
        ("save now", "expected `save`"),
        ("wait soon", "could not convert"),
        ("wait -1", "SECONDS must be >= 0"),
        ("wait nan", "SECONDS must be >= 0"),
        ("garbage 99999", "COUNT in"),
        ("forget " + "x" * 65, "65 bytes of UTF-8, at most 64"),
        ("teach 'cup 2", "No closing quotation"),
    ],
)
def test_script_errors_name_the_line(script: str, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_script(script)


def test_unknown_command_object_is_refused(mcu: Emulator) -> None:
    with pytest.raises(ProtocolError, match="unknown emulator command 'jump'"):
        mcu.run_command(Command("jump"))


def test_host_and_emulator_over_a_real_pty(
    mcu: Emulator, port: serial.Serial, tmp_path: Path
) -> None:
    host = SerialLink(port, auto_ack=True)
    mcu.start("connect 3; teach cup 0.2; garbage 24; forget cup; save")
    assert host.request(HOST_HELLO, timeout=1.0) == Ack(0)
    frames = serve(host, until=Save)
    assert mcu.join(timeout=5.0)

    # MCU -> host: its HELLO answering ours, then the scripted requests, numbered 1, 2, ...
    assert [frame.message for frame in frames] == [
        mcu.hello_message,
        TeachStart("cup"),
        TeachStop(),
        Forget("cup"),
        Save(),
    ]
    assert [frame.seq for frame in frames] == [1, 2, 3, 4, 5]
    assert host.stats.dropped >= 1  # the garbage, survived

    # host -> MCU: our HELLO, the prediction and status, an ACK for every MCU request
    received = [frame.message for frame in mcu.received]
    assert received[0] == HOST_HELLO
    assert Prediction("cup", 0.875, latency_ms=41) in received
    assert Status(LearnerState.TEACHING, 1, 4096) in received
    assert sorted(m.seq for m in received if isinstance(m, Ack)) == [1, 2, 3, 4, 5]
    assert mcu.timeouts == 0 and mcu.decoder_stats.dropped == 0

    lines = (tmp_path / "frames.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == mcu.records
    predictions = [r for r in mcu.records if r["type"] == "PREDICTION"]
    assert predictions == [
        {
            "t": predictions[0]["t"],
            "dir": "rx",
            "seq": predictions[0]["seq"],
            "type": "PREDICTION",
            "label": "cup",
            "confidence": 0.875,
            "unknown": False,
            "latency_ms": 41,
            "empty": False,
        }
    ]
    assert mcu.display == "cup 0.88"
    assert mcu.shown == {"predictions": 1, "unknown": 0, "nothing_in_view": 0}


def test_the_display_says_unknown_and_nothing_in_view_never_the_label_alone(
    mcu: Emulator, port: serial.Serial
) -> None:
    """Each PREDICTION the host sends over the pty is shown as firmware would and counted."""
    mcu.start()
    host = SerialLink(port)
    assert mcu.display == "-"
    shown = [
        (Prediction("cup", 0.93, latency_ms=40), "cup 0.93"),
        (Prediction("cup", 0.41, unknown=True), "unknown (best guess cup 0.41)"),
        (Prediction("", 0.0, unknown=True), "unknown"),
        (Prediction("nothing", 0.875, empty=True), "nothing in view"),
    ]
    for count, (prediction, text) in enumerate(shown, start=1):
        host.send(prediction)
        deadline = time.monotonic() + 10
        while mcu.shown["predictions"] < count:  # the emulator's reader thread counts it
            assert time.monotonic() < deadline, f"the emulator never got {prediction}"
            threading.Event().wait(0.01)
        assert mcu.display == text
    assert mcu.shown == {"predictions": 4, "unknown": 2, "nothing_in_view": 1}
    assert mcu.summary()["shown"] == mcu.shown


def test_unanswered_request_is_resent_with_the_same_seq(tmp_path: Path) -> None:
    with Emulator.over_pty(ack_timeout=0.05, retries=2) as mcu:  # nobody opens the pty
        mcu.start()
        assert mcu.save() is None
    sent = [(r["seq"], r["type"]) for r in mcu.records if r["dir"] == "tx"]
    assert sent == [(0, "SAVE")] * 3
    assert mcu.timeouts == 1


def test_duplicate_request_is_acked_again_but_hello_never_is_a_duplicate(
    mcu: Emulator, port: serial.Serial
) -> None:
    mcu.start()
    assert port.read(1) == b"\x00"  # a booting MCU first makes the host drop partial frames
    host = SerialLink(port)
    port.write(encode(TeachStart("cup"), 7) * 2)  # our ACK got lost, we resend
    port.write(encode(HOST_HELLO, 0) * 2)  # a host restarting twice
    frames = list(host.frames(idle=0.5))
    assert [frame.message for frame in frames] == [
        Ack(7),
        Ack(7),
        Ack(0),
        mcu.hello_message,
        Ack(0),
        mcu.hello_message,
    ]
    assert mcu.duplicates == 1


def test_host_reconnects_and_garbage_is_survived(mcu: Emulator) -> None:
    mcu.start()
    assert mcu.device_path is not None
    for _ in range(2):
        with serial.Serial(mcu.device_path, timeout=0.02) as port:
            port.write(b"\x55" * 500 + b"\x00" + encode(Forget("mu"), 9)[:6])  # noise, cut frame
            host = SerialLink(port)  # writes 0x00 first: the cut frame is dropped
            assert host.request(HOST_HELLO, timeout=1.0) == Ack(0)
            answer = host.receive(timeout=1.0)  # the MCU did not restart: its seq goes on
            assert answer is not None and answer.message == mcu.hello_message
    stats = mcu.decoder_stats
    assert (stats.oversized, stats.bad_cobs + stats.truncated + stats.bad_crc) == (2, 2)
    assert [f.message for f in mcu.received] == [HOST_HELLO, HOST_HELLO]


def test_emulator_over_a_device_url() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        with Emulator.over_url(os.ttyname(slave), ack_timeout=1.0) as mcu:
            host = SerialLink(FdPort(master), auto_ack=True)
            mcu.start("connect 3; forget cup")
            assert host.request(HOST_HELLO, timeout=1.0) == Ack(0)
            frames = serve(host, until=Forget)
            assert mcu.join(timeout=5.0)
        assert [frame.message for frame in frames] == [mcu.hello_message, Forget("cup")]
        assert mcu.timeouts == 0
    finally:
        os.close(master)
        os.close(slave)


def start_process(*args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.emulator", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def test_emulator_as_a_process(tmp_path: Path) -> None:
    record = tmp_path / "frames.jsonl"
    script = "connect 5; teach 'coffee cup' 0.2; forget mug; save; wait 0.2"
    process, path = start_process("--pty", "--script", script, "--record", str(record))
    try:
        with serial.Serial(path, timeout=0.02) as port:
            host = SerialLink(port, auto_ack=True)
            assert host.request(HOST_HELLO, timeout=2.0) == Ack(0)
            frames = serve(host, until=Save)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    hello = frames[0].message
    assert isinstance(hello, Hello) and hello.firmware_name == "edge-cl-emu"
    assert [frame.message for frame in frames[1:]] == [
        TeachStart("coffee cup"),
        TeachStop(),
        Forget("mug"),
        Save(),
    ]
    summary = json.loads(out.splitlines()[-1])
    assert summary["timeouts"] == 0 and summary["decoder"]["frames"] == summary["received"]
    assert summary["shown"] == {"predictions": 1, "unknown": 0, "nothing_in_view": 0}
    records = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
    received = [r["type"] for r in records if r["dir"] == "rx"]
    assert received[:1] == ["HELLO"] and received.count("ACK") == 5
    assert {"PREDICTION", "STATUS"} <= set(received)


def test_process_exits_1_when_the_host_never_answers(tmp_path: Path) -> None:
    script = tmp_path / "buttons.txt"
    script.write_text("# nobody listens\nsave\n", encoding="utf-8")
    process, path = start_process(
        "--pty", "--script-file", str(script), "--ack-timeout", "0.05", "--retries", "0"
    )
    out, _ = process.communicate(timeout=10)
    assert path.startswith("/dev/")
    assert process.returncode == 1
    assert json.loads(out.splitlines()[-1])["timeouts"] == 1


def test_process_without_script_runs_until_terminated() -> None:
    process, path = start_process("--pty")
    try:
        with serial.Serial(path, timeout=0.02) as port:
            assert SerialLink(port).request(HOST_HELLO, timeout=2.0) == Ack(0)
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["received"] == 1


def test_cli_rejects_a_bad_script(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--pty", "--script", "jump 3"])
    assert exited.value.code == 2
    assert "unknown command 'jump'" in capsys.readouterr().err
