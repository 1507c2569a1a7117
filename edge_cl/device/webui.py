"""The device's local web page: the live camera with its verdict, the taught classes, teach,
rename and forget, the learner's state, fps and latency.

It is served by aiohttp, on its own thread with its own event loop, beside the device loop. The
commands are the control socket's (:meth:`~edge_cl.device.commands.Commands.handlers`, answered
by :func:`~edge_cl.device.control.dispatch`): one implementation, two transports. A blocking
command (a forget waits for its job) runs on the server's thread pool, so the page never holds
the frames up, and learning happens on the same worker as a teach from the socket or the MCU.

Routes: ``/`` the page and ``/static/*`` its script and style (served from the package; no CDN,
the device has no internet); ``/video.mjpg`` the annotated camera as an MJPEG stream and
``/frame.jpg`` its newest frame; ``GET /api/status``; ``POST /api/COMMAND`` with a JSON body
(``{"label": "cup"}``) answered like the socket, ``{"ok": true, ...}``, or status 400 and
``{"ok": false, "error": ...}``.

Safety. By default the page binds to 127.0.0.1 and answers only requests addressed to the
loopback by name (a DNS-rebinding page in the user's browser names its own host), and a command
must be a JSON POST from the page's own origin (a cross-site form cannot send one). Any other
address needs ``public=True`` (``ui_public`` in the TOML, ``--ui-public``), and then every
request needs the token printed at start, as ``?token=`` once (a cookie keeps it) or the
``X-Edge-CL-Token`` header.

aiohttp was chosen over Starlette with uvicorn because it is one package holding the HTTP server
and its streaming responses (the MJPEG stream), with wheels for aarch64 and Python 3.10+, and
no ASGI server to configure beside it.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import secrets
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from edge_cl.device.config import check_ui_address, is_loopback
from edge_cl.device.control import Handler, dispatch
from edge_cl.device.outputs import annotated_jpeg
from edge_cl.errors import EdgeClError

log = logging.getLogger("edge_cl.device")

STATIC = Path(__file__).with_name("static")
"""The page's files, shipped in the package."""
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
"""What ``/static/`` serves, with its content type: these files and nothing else."""
TOKEN_COOKIE = "edge_cl_token"
TOKEN_HEADER = "X-Edge-CL-Token"
BOUNDARY = "edge-cl-frame"
DISPLAY_WIDTH = 640
"""Frames narrower than this are scaled up to it before the verdict is drawn on them."""
MAX_BODY = 16 * 1024
"""Longest command body accepted, in bytes."""


class UiError(EdgeClError):
    """The web page cannot be served (bad address, port taken, a public address without
    ``ui_public``)."""


class WebUi:
    """Serves the page for ``commands`` (name -> handler, as the control socket's) on
    ``address``; :meth:`offer` gives it each classified frame and its verdict text.
    ``public`` allows a non-loopback address and requires :attr:`token` on every request.

    >>> import urllib.request
    >>> ui = WebUi("127.0.0.1:0", {"status": lambda req: {"state": "idle"}}).start()
    >>> with urllib.request.urlopen(ui.url + "api/status") as reply:
    ...     json.load(reply)
    {'ok': True, 'state': 'idle'}
    >>> ui.close()
    """

    def __init__(
        self,
        address: str,
        commands: Mapping[str, Handler],
        *,
        public: bool = False,
        fps: float = 10.0,
    ) -> None:
        self.host, self.port = check_ui_address(address, public)
        self.commands = dict(commands)
        self.public = public
        self.token: str | None = secrets.token_urlsafe(18) if public else None
        """What every request must carry when the page is public, else None."""
        self.period = 1.0 / fps
        self._frame: tuple[int, np.ndarray, str] | None = None  # (seq, RGB image, verdict)
        self._jpeg: tuple[int, bytes] | None = None  # the newest frame encoded, by seq
        self._lock = threading.Lock()
        self._viewers = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new_frame: asyncio.Event | None = None
        self._closing: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (with ``?token=`` when public), the real port once started."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    # ----------------------------------------------------------------- from the device loop
    def offer(self, image: np.ndarray, verdict: str) -> None:
        """The newest classified frame (RGB) and what the device says of it; cheap when
        nobody watches (the frame is kept, encoded only for a viewer)."""
        with self._lock:
            seq = self._frame[0] + 1 if self._frame is not None else 0
            self._frame = (seq, image, verdict)
            watched = self._viewers > 0
        if watched and self._loop is not None and self._new_frame is not None:
            self._loop.call_soon_threadsafe(self._new_frame.set)

    # --------------------------------------------------------------------------- lifecycle
    def start(self) -> WebUi:
        """Bind and serve from a thread; returns self. ``UiError`` if it cannot bind."""
        self._thread = threading.Thread(target=self._serve, name="edge-cl-web", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            error = self._error
            code = error.errno if isinstance(error, OSError) else None
            if code == errno.EADDRINUSE:
                hint = "another edge-cl or web server is using the port: set ui to another one"
            elif code in (errno.EAFNOSUPPORT, errno.EPERM, errno.EACCES):
                hint = (
                    "this process may not open network sockets: under systemd, install the "
                    "drop-in deploy/edge-cl-ui.conf (deploy/README.md, 'The web page')"
                )
            else:
                hint = "check the address"
            raise UiError(
                f"cannot serve the web page on {self.host}:{self.port}: {error} ({hint})"
            ) from error
        return self

    def close(self) -> None:
        """Stop serving (open streams end), join the thread."""
        if self._loop is not None and self._closing is not None:
            self._loop.call_soon_threadsafe(self._closing.set)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> WebUi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by start(); after start, logged
            if not self._started.is_set():
                self._error = e
                self._started.set()
            else:
                log.exception("the web page stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._new_frame, self._closing = asyncio.Event(), asyncio.Event()
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._asset)
        app.router.add_get("/video.mjpg", self._video)
        app.router.add_get("/frame.jpg", self._still)
        app.router.add_get("/api/status", self._status)
        app.router.add_post("/api/{cmd}", self._command)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.create_server((self.host, self.port), family=family)
            self.port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
            self._started.set()
            log.info("web page: %s", self.url)
            await self._closing.wait()
        finally:
            await runner.cleanup()

    # ------------------------------------------------------------------------------ guard
    def _allowed_host(self, host: str) -> bool:
        """Whether a request's ``Host`` header names this server (loopback pages only)."""
        name = host.rpartition(":")[0] if host.rpartition(":")[2].isdigit() else host
        name = name[1:-1] if name.startswith("[") else name
        return is_loopback(name) or name == self.host

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Refuse what the module docstring says is refused; set the token cookie."""
        host = request.headers.get("Host", "")
        if not self.public and not self._allowed_host(host):
            return _error(403, f"this page answers only at {self.url} (Host {host!r})")
        given = (
            request.query.get("token")
            or request.headers.get(TOKEN_HEADER)
            or request.cookies.get(TOKEN_COOKIE)
        )
        if self.token is not None and not secrets.compare_digest(given or "", self.token):
            return _error(401, "open the address edge-cl printed at start (with ?token=)")
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{host}":
                return _error(403, f"commands come from this page only, not {origin}")
            if request.content_type != "application/json":
                return _error(415, "send the command as JSON (Content-Type application/json)")
        response = await handler(request)
        if self.token is not None and request.query.get("token") == self.token:
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict")
        return response

    # ------------------------------------------------------------------------------ routes
    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound(text=f"no {name} here")
        return web.Response(
            body=(STATIC / name).read_bytes(),
            content_type=ASSETS[name],
            headers={"Cache-Control": "no-store"},
        )

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return await self._run({"cmd": "status"})

    async def _command(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as e:
            return _error(400, f"malformed JSON ({e}): send an object like {{}}")
        if not isinstance(body, dict):
            return _error(400, f"the body must be a JSON object, got {body!r}")
        return await self._run({**body, "cmd": request.match_info["cmd"]})

    async def _run(self, command: dict[str, Any]) -> web.Response:
        """Answer ``command`` on the thread pool (a command may wait for a learner job)."""
        assert self._loop is not None
        reply = await self._loop.run_in_executor(None, dispatch, self.commands, command)
        text = json.dumps(reply, default=str)
        return web.Response(
            text=text, status=200 if reply["ok"] else 400, content_type="application/json"
        )

    async def _still(self, request: web.Request) -> web.StreamResponse:
        jpeg = await self._encoded()
        if jpeg is None:
            raise web.HTTPServiceUnavailable(text="no frame classified yet")
        return web.Response(
            body=jpeg[1], content_type="image/jpeg", headers={"Cache-Control": "no-store"}
        )

    async def _video(self, request: web.Request) -> web.StreamResponse:
        """The annotated frames as ``multipart/x-mixed-replace``, at most ``fps`` a second."""
        assert self._new_frame is not None and self._closing is not None
        response = web.StreamResponse(
            headers={
                "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                "Cache-Control": "no-store",
            }
        )
        await response.prepare(request)
        with self._lock:
            self._viewers += 1
        sent = -1
        try:
            # each part ends with the next boundary: a browser shows a part when it sees the
            # boundary after it, so a part sent with its boundary is shown at once
            await response.write(f"--{BOUNDARY}\r\n".encode())
            while not self._closing.is_set():
                jpeg = await self._encoded()
                if jpeg is not None and jpeg[0] != sent:
                    sent = jpeg[0]
                    head = f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg[1])}\r\n\r\n"
                    await response.write(head.encode() + jpeg[1] + f"\r\n--{BOUNDARY}\r\n".encode())
                    await asyncio.sleep(self.period)
                self._new_frame.clear()
                if self._newest_seq() == sent:
                    await _first(self._new_frame.wait(), self._closing.wait())
        except (ConnectionError, asyncio.CancelledError):
            pass  # the viewer went away, or the server is closing
        finally:
            with self._lock:
                self._viewers -= 1
        return response

    def _newest_seq(self) -> int:
        with self._lock:
            return self._frame[0] if self._frame is not None else -1

    async def _encoded(self) -> tuple[int, bytes] | None:
        """The newest frame as annotated JPEG, encoded once whoever asks (off the loop)."""
        with self._lock:
            frame, cached = self._frame, self._jpeg
        if frame is None:
            return None
        if cached is not None and cached[0] == frame[0]:
            return cached
        assert self._loop is not None
        encode = functools.partial(annotated_jpeg, min_width=DISPLAY_WIDTH)
        jpeg = await self._loop.run_in_executor(None, encode, frame[1], frame[2])
        if jpeg is None:
            return cached
        with self._lock:
            self._jpeg = (frame[0], jpeg)
        return self._jpeg


async def _first(*waits: Awaitable[Any]) -> None:
    """Return when the first of ``waits`` is done; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"ok": False, "error": text}, status=status)
