"""An emulated companion MCU speaking the serial protocol, so the host runs without hardware.

It plays the firmware's part of ``PROTOCOL.md``: it answers every host request with an ACK,
answers the host's HELLO with its own, sends the requests its (scripted) buttons would send,
waiting for their ACKs and retrying like firmware would, and records every frame it sends and
receives (in memory and, optionally, as JSON lines in a file).

It talks over a pseudo-terminal, whose slave path the host opens with pyserial exactly like a
real ``/dev/ttyACM0``, or over any pyserial URL or device. As a process::

    python -m firmware_bridge.emulator --pty --record frames.jsonl \\
        --script "connect; teach cup 2.0; forget mug; save; wait 1"

prints the device path on its first stdout line, runs the script, then a JSON summary, and exits
1 if a request went unanswered. See ``SCRIPT_HELP`` for the script commands.

The modules, each importing only those before it: ``ports`` (``FdPort``, a port over a file
descriptor such as a pty's master end) and ``script`` (the script language), ``mcu`` (the
``Emulator`` itself), ``cli`` (the process).
"""

from firmware_bridge.emulator.mcu import DEFAULT_HELLO, Emulator
from firmware_bridge.emulator.ports import FdPort
from firmware_bridge.emulator.script import MAX_GARBAGE, SCRIPT_HELP, Command, parse_script

__all__ = [
    "DEFAULT_HELLO",
    "MAX_GARBAGE",
    "SCRIPT_HELP",
    "Command",
    "Emulator",
    "FdPort",
    "parse_script",
]
