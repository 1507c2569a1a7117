"""``edge-cl run`` end to end: a real subprocess replaying real COIL-100 photographs, the MCU
emulator on a real pseudo-terminal holding the teach button, the control socket, kill -9 and
restart, a missing camera, and no network socket anywhere."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tty
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_cl.device.config import DeviceConfig
from edge_cl.device.control import ControlError, send_command
from edge_cl.device.loop import DeviceLoop
from edge_cl.device.worker import MAX_QUEUED_UPDATES
from edge_cl.learner.ar1 import AR1Star
from edge_cl.learner.registry import learner_name, load_learner
from firmware_bridge.emulator import Emulator, FdPort
from firmware_bridge.protocol import (
    Ack,
    Forget,
    Hello,
    LearnerState,
    Message,
    Nack,
    NackReason,
    Prediction,
    Save,
    SerialLink,
    Status,
    TeachStart,
    TeachStop,
    encode,
)
from firmware_bridge.sources import SyntheticScene

REPO = Path(__file__).resolve().parent.parent
OBJECTS = ("obj2", "obj9", "obj17", "obj26", "obj33", "obj48", "obj57", "obj66", "obj78", "obj91")
FPS = 20
TEACH_S = 2.0  # one segment of teach views per object...
HOLD = (0.4, 1.6)  # ...teach held inside it, 0.4 s clear of both boundaries
TEST_S = 1.5  # then one segment of held-out views per object...
SCORE = (0.5, 1.3)  # ...scored on the PREDICTIONs inside this window
TEST_START = len(OBJECTS) * TEACH_S
TEST_END = TEST_START + len(OBJECTS) * TEST_S
ACCURACY_FLOOR = 0.9
"""Measured here (2 shared cores): 1.000 in 6 of 6 runs, 71-76 PREDICTIONs scored per run;
the worst single miss seen in earlier runs was obj9 taken for obj26 once (0.988). The floor
allows ~7 misses for a slower machine; below it something is broken."""


def views(images: Path, obj: str) -> tuple[list[str], list[str]]:
    """Teach views (every 10 degrees from 0) and held-out views (the ones between)."""
    files = sorted(images.glob(f"{obj}__*.png"), key=lambda p: int(p.stem.split("__")[1]))
    names = [f.name for f in files]
    return names[0::2], names[1::2]


def write_stream(images: Path, path: Path) -> None:
    """The replayed stream: a teach segment per object, a held-out segment per object, a tail."""
    lines: list[str] = []

    def segment(names: list[str], label: str, seconds: float) -> None:
        count = round(seconds * FPS)
        lines.extend(f"{names[i % len(names)]} {label}" for i in range(count))

    split = {obj: views(images, obj) for obj in OBJECTS}
    for obj in OBJECTS:
        segment(split[obj][0], obj, TEACH_S)
    for obj in OBJECTS:
        segment(split[obj][1], obj, TEST_S)
    for _ in range(5):  # still running when it is killed
        for obj in OBJECTS:
            segment(split[obj][1], obj, TEST_S)
    path.write_text("\n".join(lines) + "\n")


def edge_cl(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_cl.cli", *args], cwd=REPO, text=True, **kwargs
    )


def sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def wait_for_labels(path: Path, seconds: float) -> list[Any]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            reply = send_command(path, {"cmd": "labels"}, timeout=5)
            return list(reply["labels"])
        except ControlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_run_learns_from_the_mcu_and_survives_kill_9(datasets: Path, tmp_path: Path) -> None:
    images = datasets / "coil100" / "images"
    stream = tmp_path / "stream.txt"
    write_stream(images, stream)
    state, sock = tmp_path / "state", tmp_path / "ctl.sock"
    # learning_fps = FPS: every replayed frame is classified even while learning, so each test
    # window gets its PREDICTIONs on a loaded machine (test_control covers the slow-down)
    common = ["--state-dir", str(state), "--set", f"control_socket={sock}", "--set", f"fps={FPS}"]
    common += ["--set", f"learning_fps={FPS}"]
    source = f"filelist:{stream}@{images}"
    with Emulator.over_pty() as mcu, (tmp_path / "run1.log").open("w") as log:
        mcu.start()
        assert mcu.device_path is not None
        proc = edge_cl(
            "run",
            "--source",
            source,
            "--serial",
            mcu.device_path,
            *common,
            "--set",
            "log_interval=2",
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            assert mcu.connect(90), "the host never said HELLO"
            t0 = time.monotonic()  # the host starts its source once its HELLO is answered
            answers = []
            for k, obj in enumerate(OBJECTS):
                sleep_until(t0 + k * TEACH_S + HOLD[0])
                answers.append(mcu.teach_start(obj))
                sleep_until(t0 + k * TEACH_S + HOLD[1])
                answers.append(mcu.teach_stop())
            sleep_until(t0 + TEST_END + 0.3)
            labels = subprocess.run(
                [sys.executable, "-m", "edge_cl.cli", "ctl", "labels", "--socket", str(sock)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.poll() is None, "the host stopped early"
        finally:
            proc.kill()  # SIGKILL: no handler runs, no final save
            proc.wait(30)
    assert all(isinstance(a, Ack) for a in answers), answers
    assert json.loads(labels.stdout)["labels"] == list(OBJECTS), labels.stderr

    records = mcu.records
    hello = next(r["t"] for r in records if r["dir"] == "rx" and r["type"] == "HELLO")
    scored = []
    for r in records:
        if r["dir"] == "rx" and r["type"] == "PREDICTION":
            offset = r["t"] - hello - TEST_START
            k, into = divmod(offset, TEST_S)
            if 0 <= k < len(OBJECTS) and SCORE[0] <= into <= SCORE[1]:
                scored.append((OBJECTS[int(k)], r["label"]))
    accuracy = sum(truth == label for truth, label in scored) / len(scored)
    wrong = Counter(f"{truth}->{label}" for truth, label in scored if truth != label)
    print(f"accuracy over {len(scored)} PREDICTIONs of held-out views: {accuracy:.3f} {wrong}")
    assert len(scored) >= 5 * len(OBJECTS), f"only {len(scored)} predictions in test windows"
    assert accuracy >= ACCURACY_FLOOR
    states = [r["state"] for r in records if r["dir"] == "rx" and r["type"] == "STATUS"]
    assert {"TEACHING", "LEARNING", "IDLE"} <= set(states)

    assert sock.exists()  # the killed process left its socket behind: the restart replaces it
    with (tmp_path / "run2.log").open("w") as log:
        again = edge_cl(
            "run",
            "--source",
            source,
            *common,
            "--max-seconds",
            "8",
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            assert wait_for_labels(sock, 60) == list(OBJECTS)
            out, _ = again.communicate(timeout=60)
        finally:
            again.kill()
    assert again.returncode == 0, (tmp_path / "run2.log").read_text()[-2000:]
    summary = json.loads(out)
    assert summary["classes"] == list(OBJECTS)
    assert summary["resumed"].startswith("resumed") and summary["stopped_by"] == "max_seconds"
    assert summary["accuracy"] > ACCURACY_FLOOR


def test_missing_camera_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_cl.cli",
            "run",
            "--source",
            "v4l2:57",
            "--state-dir",
            str(tmp_path),
            "--set",
            f"control_socket={tmp_path / 'c.sock'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "edge-cl: error: no camera at /dev/video57" in result.stderr
    assert result.stdout == ""


AUDIT = """
import atexit, json, sys
seen = []
def hook(event, args):
    if event == "socket.__new__":
        seen.append([event, int(args[1])])
    elif event in ("socket.bind", "socket.connect"):
        seen.append([event, int(args[0].family)])
sys.addaudithook(hook)
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(seen)))
from edge_cl.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_the_loop_opens_no_network_socket_and_notifies_systemd(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.1)
    messages: list[str] = []
    listening = threading.Event()
    listening.set()

    def listen() -> None:  # like systemd: read every notification as it comes
        while listening.is_set():
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode())

    listener = threading.Thread(target=listen)
    listener.start()
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
    seen = tmp_path / "sockets.json"
    with Emulator.over_pty() as mcu, notify:
        mcu.start()
        assert mcu.device_path is not None
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                AUDIT,
                str(seen),
                "run",
                "--source",
                "synthetic",
                "--serial",
                mcu.device_path,
                "--state-dir",
                str(tmp_path / "state"),
                "--set",
                f"control_socket={tmp_path / 'c.sock'}",
                "--set",
                "fps=30",
                "--max-frames",
                "60",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        time.sleep(0.3)
        listening.clear()
        listener.join()
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["frames"] == 60
    families = {family for _, family in json.loads(seen.read_text())}
    assert families == {socket.AF_UNIX}, f"sockets of families {families} were opened"
    assert messages[0].startswith("READY=1")
    assert "WATCHDOG=1" in messages and messages[-1] == "STOPPING=1"
    assert any(r["type"] == "PREDICTION" for r in mcu.records if r["dir"] == "rx")


@contextlib.contextmanager
def loop_on_a_pty(tmp_path: Path) -> Iterator[tuple[DeviceConfig, DeviceLoop, SerialLink]]:
    """A DeviceLoop on a synthetic scene with a scripted MCU on a real pseudo-terminal, past the
    HELLO handshake; stopped and closed on exit."""
    master, slave = os.openpty()
    tty.setraw(slave)
    config = DeviceConfig(
        state_dir=tmp_path, control_socket=tmp_path / "c.sock", serial=os.ttyname(slave)
    )
    scene = SyntheticScene(size=(160, 120), fps=30)
    scene.show("red cube")
    loop = DeviceLoop(config, scene)
    thread = threading.Thread(target=loop.run)
    thread.start()
    mcu = SerialLink(FdPort(master))
    try:
        frame = mcu.receive(timeout=60)
        assert frame is not None and isinstance(frame.message, Hello)
        mcu.send(Ack(frame.seq))
        yield config, loop, mcu
    finally:
        loop.request_stop()
        thread.join(120)
        os.close(master)
        os.close(slave)


def ask(mcu: SerialLink, message: Message) -> int | None:
    """None for an ACK of ``message``, the reason of a NACK."""
    answer = mcu.request(message)
    return answer.reason if isinstance(answer, Nack) else None


def test_mcu_requests_are_acked_or_nacked_over_a_pty(tmp_path: Path) -> None:
    """The host side of PROTOCOL.md against a scripted MCU on a real pseudo-terminal."""
    with loop_on_a_pty(tmp_path) as (config, loop, mcu):
        for label in ("mug\x1b[2J", "mug\nERROR"):  # terminal escapes, fake log lines
            assert ask(mcu, TeachStart(label)) == NackReason.MALFORMED
        assert loop.status()["teaching"] is None
        assert ask(mcu, TeachStart("red cube")) is None
        assert ask(mcu, TeachStart("mug")) == NackReason.BAD_STATE
        time.sleep(0.5)
        stop = encode(TeachStop(), 500)
        mcu.port.write(stop + stop)  # the first ACK was "lost": the MCU resends the same frame
        answers: list[Message] = []
        while len(answers) < 2:
            frame = mcu.receive(timeout=10)
            assert frame is not None
            if isinstance(frame.message, Ack | Nack):
                answers.append(frame.message)
        assert answers == [Ack(500), Ack(500)]
        assert ask(mcu, TeachStop()) == NackReason.BAD_STATE
        assert ask(mcu, Forget("mug")) == NackReason.UNKNOWN_LABEL
        assert loop.worker is not None and loop.worker.wait_idle(60)
        assert len(loop.teaches) == 1 and loop.teaches[0]["ok"]  # acted on once
        assert ask(mcu, Save()) is None
        mcu.port.write(b"\x07garbage\x00\x00")  # line noise: dropped, the host survives
        assert ask(mcu, TeachStart("pen")) is None
        assert ask(mcu, Hello("pico-ui", (1, 0, 0))) is None  # the MCU rebooted...
        assert loop.status()["teaching"] is None  # ...so its teach was abandoned
        assert ask(mcu, Forget("red cube")) is None
        assert loop.worker.wait_idle(60)
        seen: list[Message] = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            if (frame := mcu.receive(timeout=0.1)) is not None:
                seen.append(frame.message)
        assert any(isinstance(m, Status) for m in seen), "no STATUS heartbeat within 2.5 s"
        assert any(isinstance(m, Prediction) for m in seen)
    assert AR1Star.load(config.checkpoint).classes_ == []


def test_a_flood_from_the_mcu_and_the_socket_is_pushed_back_and_the_stop_is_bounded(
    tmp_path: Path,
) -> None:
    """The learner is held inside its first update while the MCU and the socket ask for more:
    beyond MAX_QUEUED_UPDATES waiting they hear BUSY, 500 SAVEs queue one write, and what the
    stop has to finish is counted (the worst case is then a number of updates, not a guess)."""
    held, release = threading.Event(), threading.Event()
    with loop_on_a_pty(tmp_path) as (config, loop, mcu):

        def teach_one_frame(label: str) -> None:
            """TEACH_START from the MCU, wait until a frame joined the teach, TEACH_STOP."""
            assert ask(mcu, TeachStart(label)) is None
            frames = loop.status()["frames"]
            while loop.status()["teach_frames"] == 0:
                assert loop.status()["frames"] < frames + 300, "no frame reached the teach"
                time.sleep(0.01)
            assert ask(mcu, TeachStop()) is None

        worker = loop.worker
        assert worker is not None
        teach_one_frame("base")
        assert worker.wait_idle(60)  # learned before the hold: a label FORGET may name
        publish = worker.on_state

        def hold_the_first_update(state: LearnerState) -> None:  # on the learner's thread
            if publish is not None:
                publish(state)
            if state == LearnerState.LEARNING and not held.is_set():
                held.set()
                release.wait(120)

        worker.on_state = hold_the_first_update
        try:
            acked = ["base"]
            for i in range(MAX_QUEUED_UPDATES + 1):  # one running (held), three waiting
                teach_one_frame(f"m{i}")
                acked.append(f"m{i}")
                assert held.wait(60)
            assert ask(mcu, TeachStart("one too many")) == NackReason.BUSY
            assert ask(mcu, Forget("base")) == NackReason.BUSY
            reply = send_command(config.control_socket, {"cmd": "teach", "label": "socket"})
            assert not reply["ok"] and "updates waiting" in reply["error"]
            reply = send_command(config.control_socket, {"cmd": "forget", "label": "base"})
            assert not reply["ok"] and "updates waiting" in reply["error"]
            for seq in range(500):
                mcu.port.write(encode(Save(), 1000 + seq))
            acks = 0
            while acks < 500:
                frame = mcu.receive(timeout=10)
                assert frame is not None
                acks += isinstance(frame.message, Ack)
            queued = loop.status()["jobs_queued"]
            assert queued == MAX_QUEUED_UPDATES + 2  # the held update, three waiting, one save
            done = len(worker.results)
        finally:
            release.set()  # before the loop stops: the held update must be let go
    after = [r.job for r in list(worker.results)[done:]]
    assert after.count("learn") == MAX_QUEUED_UPDATES + 1 and after.count("save") <= 2
    assert AR1Star.load(config.checkpoint).classes_ == acked  # every acknowledged teach learned


@pytest.mark.parametrize("learner", ["ar1", "slda"])
def test_sigterm_finishes_learning_and_saves(learner: str, tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    common = ["--source", "synthetic", "--state-dir", str(tmp_path / "state")]
    common += ["--set", f"control_socket={sock}", "--set", f"learner={learner}"]
    proc = edge_cl(
        "run",
        *common,
        "--set",
        "fps=30",
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_labels(sock, 60) == []
        assert send_command(sock, {"cmd": "teach", "label": "wall"})["ok"]
        time.sleep(0.5)
        assert send_command(sock, {"cmd": "stop"})["ok"]  # queued, not waited for
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0
    summary = json.loads(out)
    assert summary["stopped_by"] == "SIGTERM" and summary["classes"] == ["wall"]
    assert summary["learner"] == learner
    saved = load_learner(tmp_path / "state" / "learner.ckpt")
    assert saved.classes_ == ["wall"] and learner_name(saved) == learner
    assert not sock.exists()
    again = subprocess.run(
        [sys.executable, "-m", "edge_cl.cli", "run", *common, "--max-frames", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    resumed = json.loads(again.stdout)
    assert resumed["resumed"].startswith(f"resumed {tmp_path / 'state' / 'learner.ckpt'}: ")
    assert f": {learner} at depth " in resumed["resumed"] and resumed["classes"] == ["wall"]


def test_corrupt_checkpoint_is_moved_aside_and_the_loop_starts(tmp_path: Path) -> None:
    (tmp_path / "learner.ckpt").write_bytes(b"EDGECLCK" + b"\x00" * 100)
    preview = tmp_path / "preview.mjpeg"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_cl.cli",
            "run",
            "--source",
            "synthetic",
            "--state-dir",
            str(tmp_path),
            "--max-frames",
            "5",
            "--set",
            f"control_socket={tmp_path / 'c.sock'}",
            "--set",
            f"preview={preview}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "unusable checkpoint" in result.stderr and "starting fresh" in result.stderr
    assert json.loads(result.stdout)["resumed"].startswith("unusable checkpoint moved to")
    assert (tmp_path / "learner.ckpt.corrupt").read_bytes().startswith(b"EDGECLCK")
    assert preview.read_bytes()[:2] == b"\xff\xd8"  # an annotated JPEG frame
