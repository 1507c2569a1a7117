"""``python -m firmware_bridge.emulator``: the emulated MCU as a process, for hosts under test.

It opens a pseudo-terminal (``--pty``, its path printed on the first stdout line) or a serial
device, runs a script (``--script``), then prints a JSON summary; exit status 1 if a request
went unanswered or the port failed.
"""

from __future__ import annotations

import argparse
import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_cl.errors import ProtocolError
from firmware_bridge.emulator.mcu import DEFAULT_HELLO, Emulator
from firmware_bridge.emulator.script import SCRIPT_HELP, parse_script
from firmware_bridge.protocol import Hello


def _display(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator as a process; returns the exit status (1: a request went unanswered)."""
    parser = argparse.ArgumentParser(
        prog="python -m firmware_bridge.emulator",
        description="An emulated companion MCU speaking the edge_cl serial protocol.",
        epilog=SCRIPT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--pty", action="store_true", help="create a pseudo-terminal, print its path first"
    )
    where.add_argument("--port", metavar="URL", help="serial device or pyserial URL to use")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--script", help="script text (see below)")
    what.add_argument("--script-file", type=Path, help="file holding the script")
    parser.add_argument("--record", type=Path, help="write every frame as a JSON line here")
    parser.add_argument(
        "--linger",
        type=float,
        help="seconds to keep answering after the script (default 0; no script: until killed)",
    )
    parser.add_argument("--ack-timeout", type=float, default=0.5, help="seconds (default 0.5)")
    parser.add_argument("--retries", type=int, default=2, help="resends of a request (default 2)")
    parser.add_argument("--name", default=DEFAULT_HELLO.firmware_name, help="firmware name")
    parser.add_argument("--buttons", type=int, default=DEFAULT_HELLO.buttons, help="in HELLO")
    parser.add_argument("--leds", type=int, default=DEFAULT_HELLO.leds, help="in HELLO")
    parser.add_argument(
        "--display", type=_display, default=(128, 64), metavar="WxH", help="in HELLO (0x0: none)"
    )
    args = parser.parse_args(argv)
    try:
        text = args.script_file.read_text(encoding="utf-8") if args.script_file else args.script
        commands = parse_script(text or "")
        hello = Hello(
            args.name, DEFAULT_HELLO.firmware_version, args.buttons, args.leds, *args.display
        )
    except (OSError, ProtocolError) as exc:
        parser.error(str(exc))
    options: dict[str, Any] = {
        "hello": hello,
        "ack_timeout": args.ack_timeout,
        "retries": args.retries,
        "record": args.record,
    }
    try:
        emulator = (
            Emulator.over_pty(**options) if args.pty else Emulator.over_url(args.port, **options)
        )
    except OSError as exc:
        parser.exit(1, f"cannot open the port: {exc}\n")
    with emulator:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: emulator.stop())
        print(emulator.device_path or args.port, flush=True)
        emulator.start()
        emulator.run_script(commands)
        linger = args.linger if args.linger is not None else (0.0 if commands else None)
        emulator.wait(linger)
    summary = emulator.summary()
    print(json.dumps(summary), flush=True)
    return 1 if emulator.timeouts or emulator.port_error else 0
