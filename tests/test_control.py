from __future__ import annotations

import contextlib
import json
import logging
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from harness.classified import Classified

from edge_cl.cli import main
from edge_cl.device import control
from edge_cl.device.classifier import Verdict
from edge_cl.device.commands import unknown_threshold
from edge_cl.device.config import DeviceConfig
from edge_cl.device.control import MAX_CLIENTS, ControlError, ControlServer, send_command
from edge_cl.device.loop import DeviceLoop
from edge_cl.device.metrics import FrameMetrics
from edge_cl.device.teach import TeachBuffer
from edge_cl.learner.ar1 import AR1Star
from firmware_bridge.sources import CapturedFrame, SyntheticScene


def raw(path: Path, data: bytes) -> bytes:
    """Send ``data`` as is and return the reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        with sock.makefile("rb") as reader:
            return reader.readline()


class Running:
    def __init__(
        self, loop: DeviceLoop, scene: SyntheticScene, path: Path, classified: Classified
    ) -> None:
        self.loop, self.scene, self.path, self.classified = loop, scene, path, classified

    def ctl(self, cmd: str, **fields: Any) -> dict[str, Any]:
        return send_command(self.path, {"cmd": cmd, **fields}, timeout=60)

    def until_teach_frames(self, count: int) -> None:
        """Wait until the teach in progress has collected ``count`` camera frames."""
        self.classified.until(lambda: self.loop.status()["teach_frames"] >= count)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """A real device loop on a synthetic scene, serving its control socket."""
    path = tmp_path / "ctl.sock"
    config = DeviceConfig(state_dir=tmp_path / "state", control_socket=path)
    scene = SyntheticScene(size=(160, 120), fps=30)
    classified = Classified()
    loop = DeviceLoop(config, scene, observer=classified)
    summary: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: summary.update(loop.run()))
    thread.start()
    try:
        assert loop.ready.wait(60), "the loop did not classify a frame within 60 s"
        yield Running(loop, scene, path, classified)
    finally:
        loop.request_stop()
        thread.join(60)
    assert summary["stopped_by"] == "request"


def test_socket_is_private_to_the_user(running: Running) -> None:
    mode = running.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_every_command(running: Running) -> None:
    assert running.ctl("labels") == {"ok": True, "labels": []}
    first = running.ctl("predict")
    assert first["ok"] and first["label"] is None and first["unknown"] is True

    classified = running.classified
    for obj in ("red cube", "blue ball"):
        running.scene.show(obj)
        classified.seeing(obj)  # every frame from here on shows it
        assert running.ctl("teach", label=obj) == {"ok": True, "state": "teaching", "label": obj}
        again = running.ctl("teach", label="other")
        assert not again["ok"] and "already teaching" in again["error"]
        status = running.ctl("status")
        assert status["state"] == "teaching" and status["teaching"] == obj
        running.until_teach_frames(10)
        stop = running.ctl("stop", wait=True)
        assert stop["ok"], stop
        assert stop["label"] == obj and 5 <= stop["used"] <= 30 and stop["latency_s"] >= 0
        assert stop["classes"][-1] == obj
    not_teaching = running.ctl("stop")
    assert not not_teaching["ok"] and "not teaching" in not_teaching["error"]

    classified.beyond(classified.count + 1)  # a frame begun after the new model was swapped in
    assert classified.last is not None
    fresh = classified.last.index
    predicted = running.ctl("predict")
    assert predicted["label"] == "blue ball" and predicted["truth"] == "blue ball"
    assert predicted["frame"] >= fresh and predicted["age_s"] >= 0  # the latest prediction

    status = running.ctl("status")
    assert status["state"] == "idle" and status["classes"] == ["red cube", "blue ball"]
    assert status["frames"] > 0 and status["jobs_pending"] is False

    saved = running.ctl("save")
    assert saved["ok"] and saved["bytes"] > 0
    assert AR1Star.load(saved["checkpoint"]).classes_ == ["red cube", "blue ball"]

    forgot = running.ctl("forget", label="red cube")
    assert forgot == {"ok": True, "forgot": "red cube", "classes": ["blue ball"]}
    unknown = running.ctl("forget", label="green cone")
    assert not unknown["ok"] and "known: ['blue ball']" in unknown["error"]
    assert running.ctl("labels")["labels"] == ["blue ball"]
    assert AR1Star.load(saved["checkpoint"]).classes_ == ["blue ball"]

    renamed = running.ctl("rename", label="blue ball", to="ball")
    assert renamed == {"ok": True, "renamed": "blue ball", "to": "ball", "classes": ["ball"]}
    status = running.ctl("status")
    assert status["classes"] == ["ball"] and status["patterns"][0][0] == "ball"
    assert status["patterns"][0][1] > 0 and status["last_update_s"] >= 0
    for bad, error in (({"label": "cube"}, "known label"), ({"label": "ball"}, "new name")):
        refused = running.ctl("rename", **bad)
        assert not refused["ok"] and error in refused["error"], refused
    assert AR1Star.load(saved["checkpoint"]).classes_ == ["ball"]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"status\n", "malformed JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"cmd": "dance"}\n', "unknown command 'dance'; commands: forget, labels, predict"),
        (b'{"label": "cup"}\n', "unknown command None"),
        (b'{"cmd": "teach"}\n', "teach needs a label"),
        (b'{"cmd": "teach", "label": ""}\n', "1 to 64 characters"),
        (b'{"cmd": "teach", "label": "' + "é".encode() * 40 + b'"}\n', "longer than 64 bytes"),
        (b'{"cmd": "forget", "label": 3}\n', "forget needs a known label"),
        (b"\xff\xfe\n", "malformed JSON"),
        (b"x" * 70_000 + b"\n", "longer than 65536 bytes"),
    ],
)
def test_malformed_requests_get_an_error_and_the_server_survives(
    running: Running, data: bytes, error: str
) -> None:
    reply = raw(running.path, data)
    assert reply.endswith(b"\n")
    assert error in reply.decode()
    assert b'"ok": false' in reply
    assert running.ctl("status")["ok"]


def test_several_requests_on_one_connection(running: Running) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(running.path))
        sock.sendall(b'{"cmd": "labels"}\n\n{"cmd": "nope"}\n{"cmd": "status"}\n')
        with sock.makefile("rb") as reader:
            replies = [reader.readline() for _ in range(3)]
    assert [b'"ok": true' in r for r in replies] == [True, False, True]


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a killed process leaves
    assert stat.S_ISSOCK(path.stat().st_mode)
    with ControlServer(path, {"ping": lambda request: {"pong": True}}).start():
        assert send_command(path, {"cmd": "ping"}) == {"ok": True, "pong": True}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.exists()


def test_live_socket_and_other_files_are_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    with ControlServer(path, {"ping": lambda request: {"pong": True}}).start():
        with pytest.raises(ControlError, match="another process is serving"):
            ControlServer(path, {}).start()
        assert send_command(path, {"cmd": "ping"})["pong"] is True
    regular = tmp_path / "file.sock"
    regular.write_text("keep me")
    with pytest.raises(ControlError, match="is not a socket"):
        ControlServer(regular, {}).start()
    assert regular.read_text() == "keep me"


def test_client_says_when_nothing_listens(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="is `edge-cl run` running"):
        send_command(tmp_path / "none.sock", {"cmd": "status"}, timeout=2)


def test_a_failing_command_does_not_stop_the_server(tmp_path: Path) -> None:
    def broken(request: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    path = tmp_path / "ctl.sock"
    with ControlServer(path, {"broken": broken, "ping": lambda r: {"pong": 1}}).start():
        reply = send_command(path, {"cmd": "broken"})
        assert reply == {"ok": False, "error": "internal error in 'broken': RuntimeError('bug')"}
        assert send_command(path, {"cmd": "ping"}) == {"ok": True, "pong": 1}


def test_classification_slows_to_learning_fps_while_the_learner_trains(tmp_path: Path) -> None:
    config = DeviceConfig(  # a slow learn: thousands of (cheap, output-only) epochs
        state_dir=tmp_path / "state",
        control_socket=tmp_path / "c.sock",
        learning_fps=4,
        learner_options={"epochs": 40000},
    )
    scene = SyntheticScene(size=(160, 120))  # unpaced: as fast as the loop takes frames
    seen: list[tuple[float, bool]] = []
    classified = Classified()

    def observe(frame: CapturedFrame, verdict: object) -> None:
        assert loop.worker is not None
        seen.append((time.monotonic(), loop.worker.busy))
        classified(frame, verdict)

    loop = DeviceLoop(config, scene, observer=observe)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        assert loop.ready.wait(60)
        scene.show("red cube")
        loop.teach("red cube")
        classified.until(lambda: loop.status()["teach_frames"] >= 30)
        future, _ = loop.stop_teach()
        assert future is not None
        started = time.monotonic()
        assert future.result(120).ok
        busy_seconds = time.monotonic() - started
    finally:
        loop.request_stop()
        thread.join(60)
    # At most learning_fps frames a second while busy. A loaded machine only takes fewer; an
    # unthrottled loop takes one every few ms (tens a second on this scene).
    while_busy = [t for t, busy in seen if busy and t >= started]
    assert len(while_busy) <= busy_seconds * config.learning_fps + 2


def test_one_client_too_many_is_told_so_and_the_server_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "ctl.sock"
    with ControlServer(path, {"ping": lambda req: {"pong": True}}).start():
        silent = []
        for _ in range(MAX_CLIENTS):  # each holds a thread and a slot until it leaves
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(path))
            silent.append(sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))  # blocking: waits in the backlog until accepted
            sock.settimeout(60)
            extra = sock.makefile("rb").readline()
        assert b"clients are connected: try again later" in extra, extra
        silent.pop().close()  # one leaves: its slot is freed once the server sees it go
        for _ in range(1000):
            reply = send_command(path, {"cmd": "ping"})
            if reply["ok"]:
                break
            threading.Event().wait(0.01)
        assert reply == {"ok": True, "pong": True}
        for sock in silent:
            sock.close()


def test_a_request_dripped_a_byte_at_a_time_is_cut_off_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.5)
    path = tmp_path / "ctl.sock"
    request = b'{"cmd": "ping", "padding": "' + b"x" * 200 + b'"}\n'
    server = ControlServer(path, {"ping": lambda req: {"pong": True}})
    with server.start(), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for byte in request:  # 0.05 s a byte: each read is quick, the line is not
                sock.sendall(bytes([byte]))
                sent += 1
                threading.Event().wait(0.05)
        sock.settimeout(10)
        assert sent < len(request) or sock.recv(1000) == b"", "the line was served"


def test_a_stop_whose_frames_cannot_be_taken_leaves_the_teach_running(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    running.scene.show("red cube")
    assert running.ctl("teach", label="red cube")["ok"]
    running.until_teach_frames(3)
    take = TeachBuffer.take
    failures = iter([OSError(24, "Too many open files")])

    def take_once(self: TeachBuffer, target: int) -> Any:  # the OS edge: descriptors run out
        for error in failures:
            raise error
        return take(self, target)

    monkeypatch.setattr(TeachBuffer, "take", take_once)
    failed = running.ctl("stop")
    assert not failed["ok"] and "Too many open files" in failed["error"], failed
    assert running.ctl("status")["teaching"] == "red cube"  # nothing collected was lost
    stop = running.ctl("stop", wait=True)
    assert stop["ok"] and stop["classes"] == ["red cube"], stop


def teach(running: Running, obj: str) -> None:
    """Show ``obj``, teach it over the socket from 10 frames of it, wait until it is learned."""
    running.scene.show(obj)
    running.classified.seeing(obj)
    assert running.ctl("teach", label=obj)["ok"]
    running.until_teach_frames(10)
    assert running.ctl("stop", wait=True)["ok"]


def test_unknown_accept_is_set_live_refused_when_bad_and_shown_in_status(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    for obj in ("red cube", "blue ball"):
        teach(running, obj)
    status = running.ctl("status")
    assert status["unknown_accept"] == 0.95 and status["background_label"] == "nothing"
    before = status["unknown_threshold"]
    for value in (0, 1.5, -1, "high", True, None):
        refused = running.ctl("unknown-accept", value=value)
        assert not refused["ok"] and "must be a number in (0, 1]" in refused["error"], refused
    missing = running.ctl("unknown-accept")
    assert not missing["ok"] and '"value": 0.9' in missing["error"]
    assert running.ctl("status")["unknown_accept"] == 0.95  # nothing was changed
    model = running.loop.classifier.learner

    assert main(["ctl", "unknown-accept", "0.5", "--socket", str(running.path)]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] and reply["unknown_accept"] == 0.5
    assert running.loop.classifier.learner is not model  # recalibrated, swapped in whole
    assert reply["unknown_threshold"] == unknown_threshold(running.loop.classifier.learner)
    assert reply["unknown_threshold"] is not None and reply["unknown_threshold"] != before
    status = running.ctl("status")
    assert (
        status["unknown_accept"] == 0.5
        and status["unknown_threshold"] == reply["unknown_threshold"]
    )
    assert status["classes"] == ["red cube", "blue ball"]  # what was learned is kept

    assert main(["ctl", "unknown-accept", "lots", "--socket", str(running.path)]) == 2
    assert "needs a number in (0, 1], got 'lots'" in capsys.readouterr().err
    assert main(["ctl", "unknown-accept", "2", "--socket", str(running.path)]) == 1
    assert "must be a number in (0, 1]" in json.loads(capsys.readouterr().out)["error"]
    assert running.ctl("status")["unknown_accept"] == 0.5


def test_ctl_rename_takes_the_old_and_the_new_name(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    teach(running, "red cube")
    sock = ["--socket", str(running.path)]
    assert main(["ctl", "rename", "red cube", "cube", *sock]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["cube"]
    assert main(["ctl", "rename", "cube", *sock]) == 2
    assert "needs the new name: edge-cl ctl rename cup mug" in capsys.readouterr().err
    assert main(["ctl", "rename", "cube", "nothing\x07", *sock]) == 1
    assert "control characters" in json.loads(capsys.readouterr().out)["error"]
    assert running.ctl("labels")["labels"] == ["cube"]


def test_the_log_line_and_the_predict_reply_say_unknown_not_the_best_guess(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = FrameMetrics()
    metrics.start_interval(0.0)
    frame = CapturedFrame(np.zeros((2, 2, 3), np.uint8), 0.0, 0, "pen")
    lines = []
    for verdict in (
        Verdict("cup", 0.41, True),
        Verdict("nothing", 0.97, False, empty=True),
        Verdict("cup", 0.93, False),
    ):
        metrics.record(frame, verdict, 40.0, 1.0, False, ["cup", "nothing"])
        with caplog.at_level(logging.INFO, logger="edge_cl.device"):
            metrics.log_line(2.0, "idle", 2)
        lines.append(caplog.records[-1].getMessage().split(" | ")[0])
        latest = metrics.latest
        assert latest is not None and latest["verdict"] == lines[-1]
        assert (latest["unknown"], latest["empty"]) == (verdict.unknown, verdict.empty)
    assert lines == ["unknown (best guess cup 0.41)", "nothing in view", "cup 0.93"]
    assert metrics.summary(2.0)["unknown"] == 1 and metrics.summary(2.0)["nothing_in_view"] == 1
