"""A serial ``Port`` over a raw file descriptor: the emulator's end of a pseudo-terminal."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
import termios
import time


class FdPort:
    """A ``Port`` over a raw file descriptor, such as the master end of a pseudo-terminal.

    ``read`` waits at most ``timeout`` seconds for data. ``write`` gives up after
    ``write_timeout`` seconds if nobody drains the other end (a UART would lose those bytes
    too) and counts what it could not write in ``dropped``. The caller owns the descriptor.

    >>> read_end, write_end = os.pipe()
    >>> port, peer = FdPort(read_end), FdPort(write_end)
    >>> peer.write(b"\\x01\\x02"), port.in_waiting, port.read(8), port.read(8)
    (2, 2, b'\\x01\\x02', b'')
    >>> os.close(read_end); os.close(write_end)
    """

    def __init__(self, fd: int, *, timeout: float = 0.05, write_timeout: float = 1.0) -> None:
        self.fd = fd
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.dropped = 0
        os.set_blocking(fd, False)

    @property
    def in_waiting(self) -> int:
        """Bytes readable now without waiting."""
        count = fcntl.ioctl(self.fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", count)[0])

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes, or ``b""`` if none came within ``timeout``."""
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            return b""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            time.sleep(self.timeout)  # a pty whose other end is closed: wait for a reopen
            return b""

    def write(self, data: bytes) -> int:
        """Write ``data``; returns how many bytes went out before ``write_timeout``."""
        view = memoryview(data)
        written = 0
        deadline = time.monotonic() + self.write_timeout
        while written < len(view):
            try:
                written += os.write(self.fd, view[written:])
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([], [self.fd], [], remaining)[1]:
                    break
        self.dropped += len(view) - written
        return written
