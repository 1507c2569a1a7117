"""The device loop's settings: one frozen ``DeviceConfig``, read from TOML plus ``--set`` overrides.

Every key of the TOML file is a field of :class:`DeviceConfig` (flat, no tables); an unknown key
or a value of the wrong type is refused with a ``ConfigError`` naming the key, so a typo never
silently falls back to a default. ``deploy/edge-cl.toml`` is a commented example.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

from edge_cl.backends import RUNTIME_FORMATS
from edge_cl.errors import ConfigError

CHECKPOINT_NAME = "learner.ckpt"
SOCKET_NAME = "edge-cl.sock"
"""The control socket's name in ``$XDG_RUNTIME_DIR``; in ``state_dir`` it is ``control.sock``."""


def default_runtime() -> str:
    """``"litert"`` when a TFLite interpreter is installed (faster on ARM), else ``"onnx"``."""
    for module in ("ai_edge_litert", "tflite_runtime"):
        if importlib.util.find_spec(module) is not None:
            return "litert"
    return "onnx"


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/edge-cl``, else ``~/.local/state/edge-cl``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "edge-cl"


def detect_camera() -> str | None:
    """The source spec of the first V4L2 camera (``/dev/video0``), or None when there is none."""
    return "v4l2:0" if Path("/dev/video0").exists() else None


@dataclass(frozen=True)
class DeviceConfig:
    """Settings of ``edge-cl run``; the defaults suit a Raspberry Pi 4 (4 cores, no NPU).

    - ``source``: a camera or replay spec for ``firmware_bridge.sources.open_source``
      (``picamera2``, ``v4l2:0``, ``gst:...``, ``video:PATH``, ``folder:DIR``,
      ``filelist:FILE[@ROOT]``, ``synthetic``); ``fps`` paces it (None: as fast as it comes),
      ``capture_size`` asks the camera for (width, height), ``loop`` replays files forever.
    - ``models``, ``cut`` (``latent`` or ``pool``, also the learner's depth), ``runtime``,
      ``precision``, ``resolution`` (multiple of 32), ``threads``: the frozen extractor.
    - ``replay_mb``, ``replay_per_epoch``, ``epochs``: the AR1* learner (see ``AR1Config``);
      ``replay_grid``: with an int8 model, store replay as the model's own output codes (exact,
      1.5x the patterns in ``replay_mb``; better on two of the three study streams, worse on
      the cluttered one, ``docs/results/replay_grid.md``). A checkpoint keeps what it was made
      with.
    - ``learning_fps``: while the learner trains, frames are classified at most this often, so
      the update gets the cores and a teach is learned sooner (0: no limit).
    - ``teach_max_frames``: latents kept while teach is held (evenly thinned beyond it);
      ``teach_target_frames``: how many of them one learned batch takes, evenly spaced.
    - ``unknown_accept``: after each update the unknown threshold is set so that this fraction
      of the replayed (taught) patterns passes; 1.0 never says unknown. New views of taught
      objects are a little harder than the taught patterns, so somewhat more of them are
      flagged than ``1 - unknown_accept``.
    - ``state_dir``: holds the checkpoint (``learner.ckpt``); ``control_socket``: the Unix socket
      (default ``$XDG_RUNTIME_DIR/edge-cl.sock``, else ``state_dir/control.sock``).
    - ``serial``, ``baudrate``: the companion MCU (a device path or a pyserial URL; None: none);
      ``prediction_hz``: PREDICTION frames per second at most.
    - ``log_interval``: seconds between log lines; ``preview``, ``preview_fps``: an annotated
      MJPEG file (None: off).
    - ``max_seconds``, ``max_frames``: stop after that long or that many frames (None: never).

    >>> c = DeviceConfig(state_dir=Path("/var/lib/edge-cl"), fps=15)
    >>> c.checkpoint, c.cut, c.teach_target_frames
    (PosixPath('/var/lib/edge-cl/learner.ckpt'), 'latent', 30)
    """

    source: str = "synthetic"
    fps: float | None = None
    capture_size: tuple[int, int] | None = None
    loop: bool = False
    models: Path | None = None
    cut: str = "latent"
    runtime: str = field(default_factory=default_runtime)
    precision: str = "int8"
    resolution: int = 128
    threads: int = 2
    replay_mb: float = 8.0
    replay_per_epoch: int = 512
    replay_grid: bool = False
    epochs: int = 4
    learning_fps: float = 5.0
    teach_max_frames: int = 120
    teach_target_frames: int = 30
    unknown_accept: float = 0.99
    state_dir: Path = field(default_factory=default_state_dir)
    control_socket: Path | None = None
    serial: str | None = None
    baudrate: int = 115200
    prediction_hz: float = 10.0
    log_interval: float = 5.0
    preview: Path | None = None
    preview_fps: float = 5.0
    max_seconds: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{key} = {getattr(self, key)!r}: {what}")

        need(bool(self.source.strip()), "source", "name a camera or replay source")
        need(self.cut in ("latent", "pool"), "cut", "must be 'latent' or 'pool'")
        need(self.runtime in RUNTIME_FORMATS, "runtime", f"choose one of {sorted(RUNTIME_FORMATS)}")
        need(self.precision in ("fp32", "int8"), "precision", "must be 'fp32' or 'int8'")
        need(self.resolution >= 32 and self.resolution % 32 == 0, "resolution", "multiple of 32")
        for key in ("threads", "epochs", "teach_max_frames", "teach_target_frames", "baudrate"):
            need(getattr(self, key) >= 1, key, "must be >= 1")
        need(self.replay_per_epoch >= 0, "replay_per_epoch", "must be >= 0")
        need(
            self.teach_target_frames <= self.teach_max_frames,
            "teach_target_frames",
            f"must be <= teach_max_frames ({self.teach_max_frames})",
        )
        need(0.0 < self.unknown_accept <= 1.0, "unknown_accept", "must be in (0, 1]")
        need(self.replay_mb >= 0, "replay_mb", "must be >= 0")
        need(self.learning_fps >= 0, "learning_fps", "must be >= 0 (0: no limit)")
        for key in ("prediction_hz", "log_interval", "preview_fps"):
            need(getattr(self, key) > 0, key, "must be > 0")
        for key in ("fps", "max_seconds"):
            need(getattr(self, key) is None or getattr(self, key) > 0, key, "must be > 0")
        need(self.max_frames is None or self.max_frames >= 1, "max_frames", "must be >= 1")
        size = self.capture_size
        need(size is None or min(size) >= 1, "capture_size", "width and height must be >= 1")

    @property
    def checkpoint(self) -> Path:
        """The learner's checkpoint file inside ``state_dir``."""
        return self.state_dir / CHECKPOINT_NAME

    @property
    def socket_path(self) -> Path:
        """Where the control socket listens."""
        if self.control_socket is not None:
            return self.control_socket
        runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
        return Path(runtime_dir) / SOCKET_NAME if runtime_dir else self.state_dir / "control.sock"


_HINTS = typing.get_type_hints(DeviceConfig)
KEYS = tuple(f.name for f in fields(DeviceConfig))
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert(key: str, value: object, hint: Any) -> object:
    """``value`` (from TOML, or a string from ``--set``) as the type ``hint`` of ``key``."""
    options = typing.get_args(hint) if isinstance(hint, UnionType) else (hint,)
    if NoneType in options:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        (hint,) = (o for o in options if o is not NoneType)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("expected an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("expected a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError("expected a path")
        return Path(value).expanduser()
    if typing.get_origin(hint) is tuple:
        parts = value.lower().replace("x", ",").split(",") if isinstance(value, str) else value
        if not isinstance(parts, list | tuple) or len(parts) != 2:
            raise ValueError("expected WIDTHxHEIGHT or [width, height]")
        return tuple(_convert(key, p, int) for p in parts)
    raise TypeError(f"no converter for {key}: {hint}")  # a field of a type not handled above


def _apply(values: dict[str, object], raw: Mapping[str, object], where: str) -> None:
    for key, value in raw.items():
        if key not in _HINTS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown key {key!r} in {where}{hint}; known keys: {', '.join(KEYS)}"
            )
        try:
            values[key] = _convert(key, value, _HINTS[key])
        except ValueError as e:
            raise ConfigError(f"{key} = {value!r} in {where}: {e}") from e


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """``["fps=10", "serial=/dev/ttyACM0"]`` -> ``{"fps": "10", ...}`` (the ``--set`` syntax).

    >>> parse_assignments(["fps=10", "serial = /dev/ttyACM0"])
    {'fps': '10', 'serial': '/dev/ttyACM0'}
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError as e:
            raise ConfigError(
                f"reading {path} on Python 3.10 needs tomli: pip install tomli"
            ) from e
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e


def load_config(path: Path | None, overrides: Mapping[str, str] | None = None) -> DeviceConfig:
    """The configuration in the TOML file ``path`` (None: defaults), then ``overrides`` applied.

    >>> load_config(None, {"fps": "12.5", "serial": "none", "capture_size": "640x480"}).fps
    12.5
    """
    values: dict[str, object] = {}
    if path is not None:
        _apply(values, _read_toml(Path(path)), str(path))
    _apply(values, dict(overrides or {}), "--set")
    try:
        return DeviceConfig(**values)  # type: ignore[arg-type]
    except TypeError as e:
        raise ConfigError(f"bad configuration: {e}") from e
