"""The local control channel: a Unix domain socket speaking JSON lines, and its client.

Each request is one JSON object on one line, ``{"cmd": "teach", "label": "cup"}``; each reply
is one line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``. The socket file is
mode 0600 (only the service's user may talk to it) and there is no TCP listener: nothing
outside the device can reach it. A bad request gets an error reply and never stops the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from edge_cl.errors import EdgeClError

log = logging.getLogger("edge_cl.device")

MAX_LINE = 64 * 1024
"""Longest request line accepted, in bytes."""
IDLE_TIMEOUT = 60.0
"""Seconds the server waits for each whole request line (from the end of the previous reply):
a client that is silent, or sends a byte now and then, is closed after it."""
MAX_CLIENTS = 16
"""Connections served at once; one more is told so and closed (one thread per connection)."""

Handler = Callable[[dict[str, Any]], dict[str, Any]]
"""A command: the request in, the reply's fields out; raises ``EdgeClError`` to refuse."""


class ControlError(EdgeClError):
    """The control socket cannot be served or reached (path taken, nobody listening, timeout)."""


def _claim(path: Path) -> None:
    """Make ``path`` free to bind: remove a stale socket, refuse a live one or any other file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(
            f"{path} exists and is not a socket: remove it or set control_socket elsewhere"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing the stale control socket %s", path)
            path.unlink(missing_ok=True)
            return
        except OSError as e:
            raise ControlError(f"cannot check the existing socket {path}: {e}") from e
    raise ControlError(
        f"another process is serving {path} (is edge-cl already running?): stop it, or set "
        "control_socket to another path"
    )


class ControlServer:
    """Serves ``commands`` (name -> handler) on the Unix socket ``path`` from its own threads.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "ctl.sock"
    >>> with ControlServer(path, {"echo": lambda req: {"said": req.get("text")}}).start():
    ...     send_command(path, {"cmd": "echo", "text": "hi"}), oct(path.stat().st_mode & 0o777)
    ({'ok': True, 'said': 'hi'}, '0o600')
    """

    def __init__(self, path: Path, commands: Mapping[str, Handler]) -> None:
        self.path = Path(path)
        self.commands = dict(commands)
        self._sock: socket.socket | None = None
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)

    def start(self) -> ControlServer:
        """Bind (mode 0600 before anyone can connect), listen, serve in a thread; returns self."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _claim(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            sock.listen(8)
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot serve the control socket {self.path}: {e}") from e
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="edge-cl-control", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, remove the socket file."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def dispatch(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line; never raises.

        >>> server = ControlServer(Path("unused.sock"), {"status": lambda req: {"state": "idle"}})
        >>> server.dispatch(b'{"cmd": "status"}'), server.dispatch(b"status")["ok"]
        ({'ok': True, 'state': 'idle'}, False)
        """
        try:
            request = json.loads(line)
        except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, 4300+ digits, too deep
            return _refuse(f'malformed JSON ({e}): send one object per line, {{"cmd": "status"}}')
        return dispatch(self.commands, request, line)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as e:  # e.g. out of file descriptors: keep serving
                if self._closed.is_set():
                    return
                log.error("control socket accept failed: %s", e)
                self._closed.wait(0.5)
                continue
            if not self._slots.acquire(blocking=False):
                with conn, contextlib.suppress(OSError):
                    conn.settimeout(1.0)
                    busy = _refuse(f"{MAX_CLIENTS} clients are connected: try again later")
                    conn.sendall(json.dumps(busy).encode() + b"\n")
                continue
            try:
                threading.Thread(
                    target=self._serve, args=(conn,), name="edge-cl-control-client", daemon=True
                ).start()
            except RuntimeError as e:  # no thread to be had: refuse this one, keep serving
                self._slots.release()
                conn.close()
                log.error("control socket: cannot serve a client: %s", e)

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn, contextlib.suppress(OSError):
                pending = b""
                while not self._closed.is_set():
                    line, pending = _read_line(conn, pending, time.monotonic() + IDLE_TIMEOUT)
                    if line is None:
                        return
                    if len(line) > MAX_LINE:
                        reply = _refuse(f"request longer than {MAX_LINE} bytes")
                    elif not line.strip():
                        continue
                    else:
                        reply = self.dispatch(line)
                    conn.sendall(json.dumps(reply, default=str).encode() + b"\n")
                    if len(line) > MAX_LINE:
                        return
        finally:
            self._slots.release()


def _read_line(conn: socket.socket, pending: bytes, deadline: float) -> tuple[bytes | None, bytes]:
    """The next request line (up to ``MAX_LINE + 1`` bytes, newline included) and what followed
    it; ``(None, b"")`` when the client closed, or the line did not arrive by ``deadline``."""
    while b"\n" not in pending[: MAX_LINE + 1]:
        if len(pending) > MAX_LINE:
            return pending[: MAX_LINE + 1], b""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, b""
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            return None, b""
        if not chunk:
            return (pending or None), b""
        pending += chunk
    line, _, rest = pending.partition(b"\n")
    return line + b"\n", rest


def dispatch(
    commands: Mapping[str, Handler], request: object, raw: object = None
) -> dict[str, Any]:
    """The reply to one decoded ``request`` (``raw``: what to quote when it is not an object);
    never raises. The control socket and the web page (:mod:`edge_cl.device.webui`) both
    answer through it, so a command has one implementation and the same refusals on both.

    >>> dispatch({"status": lambda req: {"state": "idle"}}, {"cmd": "stat"})
    {'ok': False, 'error': "unknown command 'stat'; commands: status"}
    """
    if not isinstance(request, dict):
        shown = request if raw is None else raw
        return _refuse(f'a request must be a JSON object like {{"cmd": "status"}}, got {shown!r}')
    name = request.get("cmd")
    handler = commands.get(name) if isinstance(name, str) else None
    if handler is None:
        return _refuse(f"unknown command {name!r}; commands: {', '.join(sorted(commands))}")
    try:
        return {"ok": True, **handler(request)}
    except EdgeClError as e:
        return _refuse(str(e))
    except Exception as e:  # a bug in one command must not take the control channel down
        log.exception("control command %r failed", name)
        return _refuse(f"internal error in {name!r}: {e!r}")


def _refuse(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def send_command(path: Path, command: Mapping[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the control socket at ``path`` and return the reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps(dict(command)).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(MAX_LINE + 1)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ControlError(
                f"nothing serves {path}: is `edge-cl run` running, with this control_socket? ({e})"
            ) from e
        except PermissionError as e:
            raise ControlError(f"no permission on {path}: run as the service's user") from e
        except TimeoutError as e:
            raise ControlError(f"no answer from {path} within {timeout} s") from e
        except OSError as e:
            raise ControlError(f"cannot talk to {path}: {e}") from e
    try:
        reply = json.loads(line)
    except json.JSONDecodeError as e:
        raise ControlError(f"{path} answered something that is not JSON: {line[:80]!r}") from e
    if not isinstance(reply, dict):
        raise ControlError(f"{path} answered {reply!r}, not a JSON object")
    return reply
