"""The device's web page: its guard and routes over real HTTP, and a real headless Chromium
teaching two COIL-100 objects to a running device loop, renaming one and forgetting the other.

The browser is Debian's ``chromium`` (``.ci/run`` installs it), driven by Playwright. Waits are
on what the page shows (Playwright polls the DOM), never on the clock.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_cl.device.config import DeviceConfig
from edge_cl.device.control import ControlServer, send_command
from edge_cl.device.loop import DeviceLoop
from edge_cl.device.webui import STATIC, TOKEN_HEADER, UiError, WebUi
from edge_cl.errors import ConfigError
from firmware_bridge.sources import ImageScene

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # the machine's network is closed: no update checks
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 120_000
"""How long the browser test waits for what the page should show: a bound for a stuck test on
a loaded machine, not a measure of anything."""


def fetch(
    url: str, *, body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request (a POST of ``body`` as JSON when given)."""
    data = None if body is None else json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers={**sent, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def raw(ui: WebUi, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Any:
    """A request with exactly these headers (urllib sets Host itself)."""
    conn = http.client.HTTPConnection(ui.host, ui.port, timeout=30)
    conn.putrequest(method, path, skip_host=True)
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    reply = conn.getresponse()
    status, payload = reply.status, json.loads(reply.read())
    conn.close()
    return status, payload


COMMANDS = {
    "status": lambda request: {"state": "idle"},
    "echo": lambda request: {"said": request.get("text")},
}


@pytest.fixture
def ui() -> Iterator[WebUi]:
    with WebUi("127.0.0.1:0", COMMANDS).start() as served:
        yield served


def test_the_page_and_its_assets_come_from_the_package(ui: WebUi) -> None:
    status, headers, page = fetch(ui.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="static/app.js"' in page and b"http" not in page.replace(b"https", b"")
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, body = fetch(ui.url + "static/" + name)
        assert status == 200 and headers["Content-Type"].startswith(kind)
        assert body == (STATIC / name).read_bytes()
    for other in ("index.html", "..%2Fwebui.py", "nope.js"):
        assert fetch(ui.url + "static/" + other)[0] == 404


def test_commands_are_json_posts_answered_like_the_socket(ui: WebUi, tmp_path: Path) -> None:
    status, _, body = fetch(ui.url + "api/status")
    assert (status, json.loads(body)) == (200, {"ok": True, "state": "idle"})
    status, _, body = fetch(ui.url + "api/echo", body={"text": "hi", "cmd": "ignored"})
    assert (status, json.loads(body)) == (200, {"ok": True, "said": "hi"})
    with ControlServer(tmp_path / "ctl.sock", COMMANDS).start():
        socket_reply = send_command(tmp_path / "ctl.sock", {"cmd": "teach", "label": "cup"})
    status, _, body = fetch(ui.url + "api/teach", body={"label": "cup"})
    assert status == 400 and json.loads(body) == socket_reply  # one refusal, two transports
    assert "unknown command 'teach'" in socket_reply["error"]
    status, _, body = fetch(ui.url + "api/echo", body=["not", "an", "object"])
    assert status == 400 and "JSON object" in json.loads(body)["error"]
    loopback = {"Host": f"127.0.0.1:{ui.port}", "Content-Type": "application/json"}
    status, reply = raw(ui, "POST", "/api/echo", loopback, b"{not json")
    assert status == 400 and "malformed JSON" in reply["error"]


def test_the_guard_refuses_other_hosts_sites_and_forms(ui: WebUi) -> None:
    """DNS rebinding (a foreign Host), a cross-site POST (a foreign Origin) and a plain form
    POST (no JSON, so no CORS preflight) never reach a command."""
    host = f"127.0.0.1:{ui.port}"
    status, reply = raw(ui, "GET", "/api/status", {"Host": f"evil.example:{ui.port}"})
    assert status == 403 and "answers only at" in reply["error"]
    assert raw(ui, "GET", "/api/status", {"Host": f"localhost:{ui.port}"})[0] == 200
    json_post = {"Host": host, "Content-Type": "application/json"}
    status, reply = raw(ui, "POST", "/api/echo", {**json_post, "Origin": "http://evil.example"})
    assert status == 403 and "from this page only" in reply["error"]
    same = {**json_post, "Origin": f"http://{host}"}
    assert raw(ui, "POST", "/api/echo", same, b'{"text": "ok"}') == (
        200,
        {"ok": True, "said": "ok"},
    )
    form = {"Host": host, "Content-Type": "text/plain"}
    status, reply = raw(ui, "POST", "/api/echo", form, b'{"text": "x"}')
    assert status == 415 and "JSON" in reply["error"]


def test_a_public_page_needs_its_token_and_a_public_address_needs_the_flag() -> None:
    with pytest.raises(ConfigError, match="ui_public"):
        WebUi("0.0.0.0:0", COMMANDS)
    with pytest.raises(ConfigError, match="ui_public"):
        DeviceConfig(ui="192.168.1.20:8080")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        DeviceConfig(ui="8080")
    assert DeviceConfig(ui="0.0.0.0:8080", ui_public=True).ui_public
    with WebUi("127.0.0.1:0", COMMANDS, public=True).start() as ui:
        assert ui.token and ui.url.endswith(f"?token={ui.token}")
        base = ui.url.split("?")[0]
        status, _, body = fetch(base + "api/status")
        assert status == 401 and "token" in json.loads(body)["error"]
        assert fetch(base + "api/status", headers={TOKEN_HEADER: "wrong"})[0] == 401
        assert fetch(base + "api/status", headers={TOKEN_HEADER: ui.token})[0] == 200
        status, headers, _ = fetch(ui.url)
        assert status == 200 and f"edge_cl_token={ui.token}" in headers["Set-Cookie"]
        assert "HttpOnly" in headers["Set-Cookie"]
        cookie = {"Cookie": f"edge_cl_token={ui.token}"}
        assert fetch(base + "api/status", headers=cookie)[0] == 200


def test_a_taken_port_is_a_clear_error(ui: WebUi) -> None:
    with pytest.raises(UiError, match="another edge-cl or web server is using the port"):
        WebUi(f"127.0.0.1:{ui.port}", COMMANDS).start()


def test_a_sandbox_without_network_sockets_points_at_the_systemd_drop_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What systemd's RestrictAddressFamilies=AF_UNIX AF_NETLINK does to socket(AF_INET)."""

    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))

    monkeypatch.setattr(socket, "create_server", refused)
    with pytest.raises(UiError, match=r"edge-cl-ui\.conf"):
        WebUi("127.0.0.1:0", COMMANDS).start()


def test_frames_are_encoded_for_viewers_and_the_stream_ends_on_close() -> None:
    ui = WebUi("127.0.0.1:0", COMMANDS).start()
    try:
        assert fetch(ui.url + "frame.jpg")[0] == 503  # nothing classified yet
        image = np.zeros((48, 64, 3), np.uint8)
        ui.offer(image, "cup 0.93")
        status, headers, jpeg = fetch(ui.url + "frame.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        assert jpeg[:2] == b"\xff\xd8"
        stream = urllib.request.urlopen(ui.url + "video.mjpg", timeout=30)
        assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        parts = []
        reader = threading.Thread(target=lambda: parts.append(stream.read()), daemon=True)
        reader.start()
        for value in (50, 100, 150):
            ui.offer(np.full((48, 64, 3), value, np.uint8), f"frame {value}")
    finally:
        ui.close()  # must end the open stream, not wait for it
    reader.join(30)
    assert not reader.is_alive(), "the stream did not end when the page closed"
    assert parts[0].startswith(b"--edge-cl-frame\r\nContent-Type: image/jpeg")


def test_edge_cl_run_ui_serves_the_page_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The command line's wiring: ``run --ui`` says where the page is, the page answers with
    the loop's status, and SIGTERM stops both."""
    command = [sys.executable, "-m", "edge_cl.cli", "run", "--source", "synthetic"]
    command += ["--state-dir", str(tmp_path), "--set", f"control_socket={tmp_path / 'ctl.sock'}"]
    command += ["--ui", "127.0.0.1:0"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the log says where the page is once it is served
            if "web page: " in line:
                url = line.split("web page: ")[1].strip()
                break
        else:
            pytest.fail(f"edge-cl run exited ({proc.wait()}) without serving the page")
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and not url.endswith(":0/")
        status, _, body = fetch(url + "api/status")
        reply = json.loads(body)
        assert status == 200 and reply["ok"] and reply["classes"] == [] and reply["learner"]
        assert fetch(url)[0] == 200
        proc.send_signal(signal.SIGTERM)
        proc.stderr.read()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "api/status", timeout=5)


# ---------------------------------------------------------------------------- the browser
OBJECTS = ("obj3", "obj25")


def coil_views(datasets: Path, name: str) -> list[Path]:
    views = (datasets / "coil100" / "images").glob(f"{name}__*.png")
    return sorted(views, key=lambda p: int(p.stem.split("__")[1]))


@pytest.fixture
def device(datasets: Path, tmp_path: Path) -> Iterator[tuple[DeviceLoop, ImageScene]]:
    """A device loop with the web page on a free port, reading COIL-100 photographs."""
    scene = ImageScene({name: coil_views(datasets, name) for name in OBJECTS}, fps=15)
    config = DeviceConfig(
        state_dir=tmp_path / "state",
        control_socket=tmp_path / "ctl.sock",
        ui="127.0.0.1:0",
        log_interval=3600.0,
        learning_fps=15.0,
    )
    loop = DeviceLoop(config, scene)
    thread = threading.Thread(target=loop.run, name="device", daemon=True)
    thread.start()
    try:
        assert loop.ready.wait(120), "the device loop did not classify a frame"
        yield loop, scene
    finally:
        loop.request_stop("test over")
        thread.join(120)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium. Without it the test is skipped, except where
    ``EDGE_CL_REQUIRE_BROWSER=1`` (CI, which installs it) makes that a failure."""
    if shutil.which(CHROMIUM) is None:
        why = f"no {CHROMIUM}: apt-get install chromium to run the browser test"
        if os.environ.get("EDGE_CL_REQUIRE_BROWSER") == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def teach_frames_at_least(page: Any, label: str, frames: int) -> None:
    """Wait until the page says the device is teaching ``label`` with ``frames`` or more."""
    page.wait_for_function(
        """([label, frames]) => {
            const text = document.getElementById("state").textContent;
            const m = text.match(/^teaching (.*) \\((\\d+)\\)$/);
            return m !== null && m[1] === label && Number(m[2]) >= frames;
        }""",
        arg=[label, frames],
        timeout=WAIT_MS,
    )


def rows(page: Any) -> list[str]:
    return [r.get_attribute("data-label") for r in page.locator("#classes tbody tr").all()]


def test_a_browser_teaches_two_objects_renames_one_and_forgets_the_other(
    device: tuple[DeviceLoop, ImageScene], browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    loop, scene = device
    assert loop.ui is not None
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.set_default_timeout(WAIT_MS)
    page.goto(loop.ui.url)
    expect(page.locator("#verdict")).to_have_text("nothing learned yet")
    expect(page.locator("#no-classes")).to_be_visible()
    page.wait_for_function("document.getElementById('video').naturalWidth > 0")  # the stream

    # press and hold: teaching lasts as long as the button is down
    scene.show("obj3")
    page.fill("#label", "cup")
    page.hover("#hold")
    page.mouse.down()
    teach_frames_at_least(page, "cup", 12)
    page.mouse.up()
    expect(page.locator('#classes tr[data-label="cup"]')).to_be_visible()
    expect(page.locator("#message")).to_contain_text("learning cup from")

    # start / stop
    scene.show("obj25")
    page.fill("#label", "box")
    page.click("#toggle")
    expect(page.locator("#toggle")).to_have_text("Stop teaching")
    teach_frames_at_least(page, "box", 12)
    page.click("#toggle")
    expect(page.locator('#classes tr[data-label="box"]')).to_be_visible()
    assert rows(page) == ["cup", "box"]

    # what the device says of views it was not taught on, and the state it shows
    scene.show("obj25", held_out=True)
    expect(page.locator("#verdict")).to_have_text(re.compile(r"^(box \d\.\d\d|unknown.*box.*)$"))
    scene.show("obj3", held_out=True)
    expect(page.locator("#verdict")).to_have_text(re.compile(r"^(cup \d\.\d\d|unknown.*cup.*)$"))
    expect(page.locator("#state")).to_have_text("idle")
    expect(page.locator("#last-update")).to_have_text(re.compile(r"ago$"))
    assert float(page.text_content("#fps") or "0") > 0
    stored = page.text_content('#classes tr[data-label="box"] td.patterns') or ""
    assert stored.isdigit() and int(stored) > 0  # its patterns in the replay memory
    page.screenshot(path=str(tmp_path / "taught.png"))

    # rename box (a prompt), then forget cup (a confirmation)
    page.once("dialog", lambda dialog: dialog.accept("carton"))
    page.click('#classes tr[data-label="box"] button.rename')
    expect(page.locator('#classes tr[data-label="carton"]')).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.click('#classes tr[data-label="cup"] button.forget')
    expect(page.locator('#classes tr[data-label="cup"]')).to_have_count(0)
    expect(page.locator("#message")).to_have_text("forgot cup")
    assert rows(page) == ["carton"]
    assert loop.classifier.learner.classes_ == ["carton"]
    scene.show("obj25", held_out=True)
    expect(page.locator("#verdict")).to_have_text(re.compile(r"carton"))

    # a refusal is shown, and changes nothing
    page.fill("#label", "")
    page.click("#toggle")
    expect(page.locator("#message")).to_have_text("type the name of what is in view first")
    page.screenshot(path=str(tmp_path / "after.png"))
    assert (tmp_path / "after.png").stat().st_size > 10_000
