"""``edge-cl run`` end to end: a real subprocess replaying real COIL-100 photographs, the MCU
emulator on a real pseudo-terminal holding the teach button, the control socket, kill -9 and
restart, a missing camera, and no network socket anywhere."""

from __future__ import annotations

import contextlib
import functools
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.classified import Classified

from edge_cl.device.config import DeviceConfig
from edge_cl.device.control import ControlError, send_command
from edge_cl.device.loop import DeviceLoop
from edge_cl.device.state import DeviceState
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
TEACH_FRAMES = 60  # one segment of teach views per object (3 s)...
HOLD = (10, 40)  # ...teach held from the device classifying its 10th frame to its 40th: 30
# views of 36, and a second of frames to spare before the next object (a loaded machine is late)
TEST_FRAMES = 30  # then segments of held-out views, one per object, repeated...
TEST_ROUNDS = 12  # ...for 3 minutes: the test kills the host long before the stream ends
TEST_START = len(OBJECTS) * TEACH_FRAMES
SCORED_PER_OBJECT = 5
"""Held-out frames scored per object (at least), each one the device classified once the last
teach was learned, with the truth the replay gives it."""
ACCURACY_FLOOR = 0.9
"""Measured here (2 shared cores): 1.000 in 6 of 6 runs on the PREDICTIONs of held-out views;
the worst single miss seen in earlier runs was obj9 taken for obj26 once (0.988). The floor
allows ~5 misses of the 50 scored; below it something is broken."""
WAIT = 180.0
"""Seconds any wait on the host may take before the test gives up (a safety net, far above
what a loaded machine needs)."""


def views(images: Path, obj: str) -> tuple[list[str], list[str]]:
    """Teach views (every 10 degrees from 0) and held-out views (the ones between)."""
    files = sorted(images.glob(f"{obj}__*.png"), key=lambda p: int(p.stem.split("__")[1]))
    names = [f.name for f in files]
    return names[0::2], names[1::2]


def write_stream(images: Path, path: Path) -> None:
    """The replayed stream: a teach segment per object, then rounds of held-out segments."""
    lines: list[str] = []

    def segment(names: list[str], label: str, count: int) -> None:
        lines.extend(f"{names[i % len(names)]} {label}" for i in range(count))

    split = {obj: views(images, obj) for obj in OBJECTS}
    for obj in OBJECTS:
        segment(split[obj][0], obj, TEACH_FRAMES)
    for _ in range(TEST_ROUNDS):
        for obj in OBJECTS:
            segment(split[obj][1], obj, TEST_FRAMES)
    path.write_text("\n".join(lines) + "\n")


def edge_cl(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge_cl.cli", *args], cwd=REPO, text=True, **kwargs
    )


def until(condition: Callable[[], Any], what: str, seconds: float = WAIT) -> Any:
    """Poll ``condition`` until it returns something true, and return that; fail naming
    ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(0.02)
    return value


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


def newest(sock: Path) -> dict[str, Any] | None:
    """The host's newest verdict (the ``predict`` command), None before its first frame."""
    reply = send_command(sock, {"cmd": "predict"}, timeout=60)
    return reply if reply["ok"] else None


def classified(sock: Path, index: int) -> dict[str, Any]:
    """The host's newest verdict, once it is of frame ``index`` of the stream or a later one."""
    return until(
        lambda: (reply := newest(sock)) is not None and reply["frame"] >= index and reply,
        f"the host never classified frame {index}",
    )


def test_run_learns_from_the_mcu_and_survives_kill_9(datasets: Path, tmp_path: Path) -> None:
    """Teach by the MCU's button, timed by the frames the host says it classified (not by the
    clock, so a loaded machine only makes it slower), then score the held-out views against
    the replay's truth, kill -9, restart from the checkpoint."""
    images = datasets / "coil100" / "images"
    stream = tmp_path / "stream.txt"
    write_stream(images, stream)
    state, sock = tmp_path / "state", tmp_path / "ctl.sock"
    # learning_fps = FPS: every replayed frame is classified even while learning, so each teach
    # sees its segment's views on a loaded machine (test_control covers the slow-down)
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
            assert mcu.connect(WAIT), "the host never said HELLO"
            assert wait_for_labels(sock, WAIT) == []
            answers, held = [], []
            for k, obj in enumerate(OBJECTS):
                first = k * TEACH_FRAMES
                start = classified(sock, first + HOLD[0])["frame"]
                answers.append(mcu.teach_start(obj))
                stop = classified(sock, first + HOLD[1])["frame"]
                answers.append(mcu.teach_stop())
                after = newest(sock)
                held.append((obj, start, stop, after["frame"] if after else None))
            print("teach held (object, frames at its start and stop, newest after):", held)
            until(
                lambda: (
                    (s := send_command(sock, {"cmd": "status"}, timeout=60))["classes"]
                    == list(OBJECTS)
                    and not s["jobs_pending"]
                ),
                "the host did not learn the 10 teaches",
            )
            learned = classified(sock, 0)["frame"]  # later frames see the last model
            scored: dict[int, tuple[str, Any]] = {}

            def enough() -> bool:
                reply = newest(sock)
                assert reply is not None
                if reply["frame"] > learned and reply["frame"] >= TEST_START:
                    scored[reply["frame"]] = (reply["truth"], reply["label"])
                per_object = Counter(truth for truth, _ in scored.values())
                return all(per_object[obj] >= SCORED_PER_OBJECT for obj in OBJECTS)

            until(enough, f"{SCORED_PER_OBJECT} held-out frames of each object scored")
            labels = subprocess.run(
                [sys.executable, "-m", "edge_cl.cli", "ctl", "labels", "--socket", str(sock)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=WAIT,
            )
            assert proc.poll() is None, "the host stopped early"
        finally:
            proc.kill()  # SIGKILL: no handler runs, no final save
            proc.wait(30)
    assert all(isinstance(a, Ack) for a in answers), answers
    assert json.loads(labels.stdout)["labels"] == list(OBJECTS), labels.stderr

    hits = sum(truth == label for truth, label in scored.values())
    accuracy = hits / len(scored)
    wrong = Counter(f"{truth}->{label}" for truth, label in scored.values() if truth != label)
    print(f"accuracy over {len(scored)} held-out frames: {accuracy:.3f} {wrong}")
    assert accuracy >= ACCURACY_FLOOR
    records = [r for r in mcu.records if r["dir"] == "rx"]
    shown = {r["label"] for r in records if r["type"] == "PREDICTION"}
    assert set(OBJECTS) <= shown, f"the MCU was never shown {set(OBJECTS) - shown}"
    states = [r["state"] for r in records if r["type"] == "STATUS"]
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
            assert wait_for_labels(sock, WAIT) == list(OBJECTS)
            out, _ = again.communicate(timeout=WAIT)
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
    stopping = threading.Event()

    def listen() -> None:  # like systemd: read every notification as it comes, to the last
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                messages.append(notify.recv(4096).decode())
                if messages[-1] == "STOPPING=1":
                    stopping.set()

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
        if result.returncode == 0:  # STOPPING=1 was sent before it exited: read it
            stopping.wait(WAIT)
        stopping.set()
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
        until(lambda: loop.status()["teach_frames"] > 0, "no frame reached the teach")
        stop = encode(TeachStop(), 500)
        mcu.port.write(stop + stop)  # the first ACK was "lost": the MCU resends the same frame
        answers: list[Message] = []
        while len(answers) < 2:
            frame = mcu.receive(timeout=60)
            assert frame is not None
            if isinstance(frame.message, Ack | Nack):
                answers.append(frame.message)
        assert answers == [Ack(500), Ack(500)]
        assert ask(mcu, TeachStop()) == NackReason.BAD_STATE
        assert ask(mcu, Forget("mug")) == NackReason.UNKNOWN_LABEL
        assert loop.worker.wait_idle(60)
        assert len(loop.teaches) == 1 and loop.teaches[0]["ok"]  # acted on once
        assert ask(mcu, Save()) is None
        mcu.port.write(b"\x07garbage\x00\x00")  # line noise: dropped, the host survives
        assert ask(mcu, TeachStart("pen")) is None
        assert ask(mcu, Hello("pico-ui", (1, 0, 0))) is None  # the MCU rebooted...
        assert loop.status()["teaching"] is None  # ...so its teach was abandoned
        assert ask(mcu, Forget("red cube")) is None
        assert loop.worker.wait_idle(60)
        # The forget's STATUS ran LEARNING, SAVING, IDLE; another IDLE after that, with no
        # change of state in between, is the heartbeat (PROTOCOL.md: at least every 2 s).
        idle_after_save, predictions = -1, 0
        while idle_after_save < 2 or not predictions:
            frame = mcu.receive(timeout=WAIT)
            assert frame is not None, "no STATUS heartbeat or PREDICTION"
            message = frame.message
            predictions += isinstance(message, Prediction)
            if isinstance(message, Status):
                if message.state == LearnerState.SAVING:
                    idle_after_save = 0
                elif message.state == LearnerState.IDLE and idle_after_save >= 0:
                    idle_after_save += 1
                else:
                    idle_after_save = -1
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
        teach_one_frame("base")
        assert worker.wait_idle(60)  # learned before the hold: a label FORGET may name
        publish = worker.on_state

        def hold_the_first_update(state: DeviceState) -> None:  # on the learner's thread
            if publish is not None:
                publish(state)
            if state == DeviceState.LEARNING and not held.is_set():
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
                frame = mcu.receive(timeout=60)
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
        assert wait_for_labels(sock, WAIT) == []
        assert send_command(sock, {"cmd": "teach", "label": "wall"})["ok"]
        until(
            lambda: send_command(sock, {"cmd": "status"}, timeout=60)["teach_frames"] > 0,
            "no frame reached the teach",
        )
        assert send_command(sock, {"cmd": "stop"})["ok"]  # queued, not waited for
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
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


def shows(mcu: Emulator, text: str) -> bool:
    """Whether the MCU's display starts with ``text``."""
    return mcu.display.startswith(text)


def test_nothing_in_view_is_taught_as_a_class_and_said_everywhere(tmp_path: Path) -> None:
    """``teach nothing`` from the MCU's button with the empty scene in view: afterwards the empty
    scene is "nothing in view" on the MCU's display (PREDICTION flag bit 1), in ``predict`` and
    ``status``, and counted in the summary; an object in view is still named. ncm keeps no replay
    memory, so nothing is ever flagged unknown and each answer is the best class."""
    sock = tmp_path / "c.sock"
    scene = SyntheticScene(size=(160, 120), fps=30)
    classified = Classified()
    with Emulator.over_pty() as mcu:
        mcu.start()
        config = DeviceConfig(
            state_dir=tmp_path, control_socket=sock, serial=mcu.device_path, learner="ncm"
        )
        loop = DeviceLoop(config, scene, observer=classified)
        summary: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: summary.update(loop.run()))
        thread.start()
        try:
            assert mcu.connect(WAIT), "the host never said HELLO"
            for obj in (None, "red cube"):  # the empty scene first, taught as "nothing"
                scene.show(obj)
                classified.seeing(obj, WAIT)
                assert isinstance(mcu.teach_start(obj or "nothing"), Ack)
                classified.until(lambda: loop.status()["teach_frames"] >= 10, WAIT)
                assert isinstance(mcu.teach_stop(), Ack)
                assert loop.worker.wait_idle(WAIT)
            said: dict[str | None, tuple[dict[str, Any], dict[str, Any]]] = {}
            for obj, expected in ((None, "nothing in view"), ("red cube", "red cube ")):
                scene.show(obj)
                classified.seeing(obj, WAIT)
                until(functools.partial(shows, mcu, expected), f"the MCU shows {expected!r}")
                said[obj] = send_command(sock, {"cmd": "predict"}), loop.status()
        finally:
            loop.request_stop()
            thread.join(WAIT)
    empty, status = said[None]
    assert (empty["verdict"], empty["empty"], empty["unknown"]) == ("nothing in view", True, False)
    assert empty["label"] == "nothing" and empty["truth"] is None
    assert (status["verdict"], status["empty"]) == ("nothing in view", True)
    cube, status = said["red cube"]
    assert cube["empty"] is False and cube["verdict"].startswith("red cube ")
    assert status["empty"] is False and status["classes"] == ["nothing", "red cube"]
    shown = mcu.shown
    assert shown["nothing_in_view"] > 0 and shown["unknown"] < shown["predictions"]
    flags = [
        (r["unknown"], r["empty"], r["label"]) for r in mcu.records if r["type"] == "PREDICTION"
    ]
    assert (False, True, "nothing") in flags and not any(u and e for u, e, _ in flags)
    assert summary["nothing_in_view"] > 0 and summary["classes"] == ["nothing", "red cube"]
