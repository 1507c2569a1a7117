"""The emulator's script language: the button presses and waits an emulated MCU performs.

A script is commands separated by ``;`` or newlines (see ``SCRIPT_HELP``); ``parse_script``
checks all of it before anything runs, so a typo fails at once with the line it is on.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from edge_cl.errors import ProtocolError
from firmware_bridge.protocol import TeachStart

MAX_GARBAGE = 4096

_COMMANDS = {
    "hello": ("hello", "send HELLO, wait for its ACK"),
    "connect": ("connect [SECONDS=5]", "wait for the host's HELLO (answered with ACK + HELLO)"),
    "teach": ("teach LABEL [SECONDS=2]", "hold teach: TEACH_START, wait SECONDS, TEACH_STOP"),
    "start": ("start LABEL", "press teach: TEACH_START"),
    "stop": ("stop", "press stop: TEACH_STOP"),
    "forget": ("forget LABEL", "FORGET the class LABEL"),
    "save": ("save", "SAVE"),
    "wait": ("wait SECONDS", "keep answering the host for SECONDS"),
    "garbage": ("garbage COUNT", "COUNT random bytes then 0x00 (line noise, reset mid-frame)"),
}
_SYNTAX = {name: syntax for name, (syntax, _) in _COMMANDS.items()}

SCRIPT_HELP = "\n".join(
    [
        "script: commands separated by ';' or newlines, '#' starts a comment, quote labels"
        " with spaces.",
        *(f"  {syntax:<25}{what}" for syntax, what in _COMMANDS.values()),
        "Every request waits for the host's ACK/NACK, resent with the same seq on timeout.",
    ]
)


@dataclass(frozen=True)
class Command:
    """One step of an emulator script, as ``parse_script`` reads it (see ``SCRIPT_HELP``).

    >>> Command("teach", label="cup", seconds=2.0)
    Command(name='teach', label='cup', seconds=2.0, count=0)
    """

    name: str
    label: str = ""
    seconds: float = 0.0
    count: int = 0


def _parse_step(tokens: list[str], where: str) -> Command:
    name, args = tokens[0].lower(), tokens[1:]
    if name not in _SYNTAX:
        raise ProtocolError(f"{where}: unknown command {name!r}, expected one of {list(_SYNTAX)}")
    params = _SYNTAX[name].split()[1:]
    required = [param for param in params if not param.startswith("[")]
    if not len(required) <= len(args) <= len(params):
        raise ProtocolError(f"{where}: expected `{_SYNTAX[name]}`")
    values: dict[str, str] = {}
    for index, param in enumerate(params):
        key, _, default = param.strip("[]").partition("=")
        values[key] = args[index] if index < len(args) else default
    label = values.get("LABEL", "")
    if "LABEL" in values:
        try:
            TeachStart(label)
        except ProtocolError as exc:
            raise ProtocolError(f"{where}: {exc}") from exc
    try:
        seconds = float(values.get("SECONDS", "0"))
        count = int(values.get("COUNT", "0"))
    except ValueError as exc:
        raise ProtocolError(f"{where}: {exc}; expected `{_SYNTAX[name]}`") from exc
    if not (math.isfinite(seconds) and seconds >= 0 and 0 <= count <= MAX_GARBAGE):
        raise ProtocolError(f"{where}: SECONDS must be >= 0, COUNT in [0, {MAX_GARBAGE}]")
    return Command(name, label, seconds, count)


def parse_script(text: str) -> list[Command]:
    """The commands of an emulator script; raises ProtocolError naming the line that is wrong.

    >>> parse_script("hello; teach 'coffee cup' 1.5  # hold for 1.5 s\\nsave")
    [Command(name='hello', label='', seconds=0.0, count=0), \
Command(name='teach', label='coffee cup', seconds=1.5, count=0), \
Command(name='save', label='', seconds=0.0, count=0)]
    """
    commands: list[Command] = []
    for number, line in enumerate(text.splitlines(), start=1):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";")
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError as exc:
            raise ProtocolError(f"script line {number}: {exc}: {line!r}") from exc
        step: list[str] = []
        for token in [*tokens, ";"]:
            if token != ";":
                step.append(token)
            elif step:
                commands.append(_parse_step(step, f"script line {number}, {' '.join(step)!r}"))
                step = []
    return commands
