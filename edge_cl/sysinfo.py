"""What this machine is: CPU name, SIMD features, usable cores, qemu emulation.

A leaf module (standard library only) so that the CLI, ``bench-perf`` and the study can all
describe the machine without importing each other.

>>> cores() >= 1
True
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path

CPU_FLAGS = ("neon", "asimd", "asimddp", "sve", "i8mm", "avx2", "avx512f", "avx512_vnni", "fma")


def cpu_features() -> list[str]:
    """SIMD features of this CPU that matter to the runtimes (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [f for f in CPU_FLAGS if f in flags]


def emulation(
    machine: str | None = None, cpuinfo: str | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """Why this looks like aarch64 emulated by qemu (None when it does not).

    Under qemu-user ``/proc/cpuinfo`` is usually the x86 host's, and qemu's own settings are
    ``QEMU_*`` variables.

    >>> emulation("aarch64", "vendor_id : AuthenticAMD", {})
    'aarch64 with an x86 /proc/cpuinfo'
    >>> emulation("aarch64", "CPU implementer : 0x41", {}) is None
    True
    >>> emulation("x86_64", "", {"QEMU_LD_PREFIX": "/usr"}) is None
    True
    """
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in ("aarch64", "arm64"):
        return None
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    env = os.environ if environ is None else environ
    if any(k.startswith("QEMU_") for k in env):
        return f"aarch64 with {sorted(k for k in env if k.startswith('QEMU_'))[0]} set"
    if "qemu" in cpuinfo.lower():
        return "aarch64 with qemu in /proc/cpuinfo"
    if any(v in cpuinfo for v in ("GenuineIntel", "AuthenticAMD", "vendor_id")):
        return "aarch64 with an x86 /proc/cpuinfo"
    return None


def cpu_model() -> str:
    """The CPU's name from /proc/cpuinfo (``model name``, or ``Model``/``Hardware`` on ARM)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        found.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "CPU part"):
        if found.get(key):
            return found[key]
    return platform.processor() or "unknown"


def cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
