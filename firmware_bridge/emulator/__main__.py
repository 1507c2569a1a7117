"""Run the emulated MCU as a process: ``python -m firmware_bridge.emulator --help``."""

import sys

from firmware_bridge.emulator.cli import main

sys.exit(main())
