"""Local capture: the device loop on this machine's camera, taught from the keyboard.

    python scripts/capture.py --source v4l2:0 [--config FILE] [--set KEY=VALUE] [--serial PORT]
                              [--state-dir DIR] [--preview preview.mjpeg]

Type a command and Enter while it runs (``HELP``); the log shows what it sees every second.
The control socket (``edge-cl ctl ...``) and an MCU (``--serial``) work at the same time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import TextIO

from edge_cl.device.config import load_config, parse_assignments
from edge_cl.device.loop import DeviceLoop
from edge_cl.errors import EdgeClError

HELP = """\
  t LABEL   start teaching LABEL (show the object, move it around a little)
  s         stop teaching and learn from the frames collected
  f LABEL   forget LABEL
  p         print the latest prediction
  l         list the known labels
  w         write the checkpoint now
  q         quit (the model is saved)"""

KEYS = {"t": "teach", "s": "stop", "f": "forget", "p": "predict", "l": "labels", "w": "save"}


def keyboard(loop: DeviceLoop, stream: TextIO) -> None:
    """Read commands from ``stream`` line by line and run them on ``loop`` until ``q``."""
    loop.ready.wait()
    commands = loop.commands()
    for line in stream:
        key, _, label = line.strip().partition(" ")
        if key == "q":
            loop.request_stop("keyboard")
            return
        if key not in KEYS:
            print(f"? {line.strip()!r}, one of:\n{HELP}", flush=True)
            continue
        request = {"cmd": KEYS[key], "label": label.strip()} if label else {"cmd": KEYS[key]}
        try:
            reply = commands[KEYS[key]](request)
        except EdgeClError as e:
            print(f"refused: {e}", flush=True)
            continue
        print(json.dumps(reply, default=str), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=None, help="TOML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--source", default=None, help="camera or replay (default: config)")
    parser.add_argument("--serial", default=None, help="MCU port")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--preview", type=Path, default=None, help="annotated MJPEG file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    given = {"log_interval": "1"}
    for key in ("source", "serial", "state_dir", "preview"):
        if getattr(args, key) is not None:
            given[key] = str(getattr(args, key))
    try:
        config = load_config(args.config, {**given, **parse_assignments(args.set)})
        loop = DeviceLoop(config)
        reader = threading.Thread(target=keyboard, args=(loop, sys.stdin), daemon=True)
        reader.start()
        print(f"keys (then Enter):\n{HELP}", flush=True)
        summary = loop.run()
    except EdgeClError as e:
        print(f"capture: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
