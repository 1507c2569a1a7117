"""Small outputs of the device loop: systemd notifications, memory figures and an annotated
MJPEG preview."""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import socket
import time
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

log = logging.getLogger("edge_cl.device")

M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the maximum count of malloc arenas."""

PREVIEW_MAX_BYTES = 64 << 20
"""The preview file starts over when it grows past this, so it never fills the disk."""


def sd_notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``, ``WATCHDOG=1``, ``STATUS=...``) over
    ``$NOTIFY_SOCKET``; False when not run by systemd (no dependency on libsystemd).

    >>> sd_notify("READY=1") if "NOTIFY_SOCKET" not in os.environ else False
    False
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a reader that lags must never stall the loop
            sock.connect(address)
            sock.send(state.encode())
    except BlockingIOError:
        log.debug("systemd's notify queue is full: dropped %r", state)
        return False
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", address, e)
        return False
    return True


def watchdog_period() -> float:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, else 5 s.

    >>> os.environ.get("WATCHDOG_USEC") is not None or watchdog_period() == 5.0
    True
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    return int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 5.0


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``arenas`` (call before starting threads); False where it
    does not apply (not glibc) or ``$MALLOC_ARENA_MAX`` already decides.

    glibc gives each thread that allocates its own arena (up to 8 per core), and an arena keeps
    the memory freed in it. The learner thread's activations then stay resident next to what
    the camera and inference threads freed; with two arenas they reuse each other's memory
    (measured: 177 -> 160 MiB peak for ``edge-cl run`` with a teach). The cost, a shared
    lock on malloc, does not show: the loop makes few, large allocations.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):  # musl, macOS: no such library or no mallopt
        return False


def memory_mb() -> dict[str, float]:
    """This process's resident memory now (``rss``) and at its highest (``peak``), in MiB.

    On Linux both come from ``/proc/self/status`` (VmRSS, VmHWM), which count this program only;
    elsewhere the peak is ``getrusage``'s, which may include the process that started it.

    >>> m = memory_mb()
    >>> 0 < m["peak"] and m["rss"] <= m["peak"]
    True
    """
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
        rss, peak = (int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        rss = peak
    return {"rss": round(rss, 1), "peak": round(peak, 1)}


def annotated_jpeg(
    image: np.ndarray, text: str, quality: int = 80, min_width: int = 0
) -> bytes | None:
    """The RGB ``image`` as JPEG bytes with ``text`` drawn at its top left (white on a black
    box, readable on any scene), or None if it cannot be encoded. An image narrower than
    ``min_width`` is first scaled up to it, so the text stays legible on a small frame.

    >>> annotated_jpeg(np.zeros((120, 160, 3), np.uint8), "cup 0.93")[:2]
    b'\\xff\\xd8'
    """
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if bgr.shape[1] < min_width:
        height = round(bgr.shape[0] * min_width / bgr.shape[1])
        bgr = cv2.resize(bgr, (min_width, height), interpolation=cv2.INTER_LINEAR)
    scale = max(0.4, bgr.shape[1] / 640)
    font, thickness, pad = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(1.5 * scale)), 4
    (width, height), below = cv2.getTextSize(text, font, scale, thickness)
    origin = (pad + 2, pad + 2 + height)
    corner = (origin[0] + width + pad, origin[1] + below + pad)
    cv2.rectangle(bgr, (2, 2), corner, (0, 0, 0), cv2.FILLED)
    cv2.putText(bgr, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return jpeg.tobytes() if ok else None


class MjpegPreview:
    """Appends annotated JPEG frames to ``path`` (an MJPEG stream ``ffplay`` or VLC can play),
    at most ``fps`` a second; starts the file over past ``PREVIEW_MAX_BYTES``.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "preview.mjpeg"
    >>> with MjpegPreview(path, fps=100) as preview:
    ...     preview.write(np.zeros((120, 160, 3), np.uint8), "cup 0.93")
    True
    >>> path.read_bytes()[:2] == b"\\xff\\xd8"
    True
    """

    def __init__(self, path: Path, fps: float = 5.0) -> None:
        self.path = Path(path)
        self.period = 1.0 / fps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = self.path.open("wb")
        self._last = float("-inf")

    def write(self, image: np.ndarray, text: str) -> bool:
        """Add the RGB ``image`` with ``text`` drawn on it, unless one was written too recently."""
        now = time.monotonic()
        if now - self._last < self.period:
            return False
        self._last = now
        jpeg = annotated_jpeg(image, text)
        if jpeg is None:
            return False
        if self._file.tell() > PREVIEW_MAX_BYTES:
            self._file.seek(0)
            self._file.truncate()
        self._file.write(jpeg)
        self._file.flush()
        return True

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> MjpegPreview:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
