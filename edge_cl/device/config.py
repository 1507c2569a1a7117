"""The device loop's settings: one frozen ``DeviceConfig``, read from TOML plus ``--set`` overrides.

Every top-level key of the TOML file is a field of :class:`DeviceConfig`; the learner is either
``learner = "slda"`` or a ``[learner]`` table, ``name = "ar1"`` plus that learner's own options
(for ``ar1`` any ``AR1Config`` field: ``replay_mb``, ``replay_per_epoch``, ``epochs``, ...). On
the command line: ``--set learner=slda``, ``--set learner.replay_mb=4``. An unknown key, a value
of the wrong type, an option the learner does not have or a bad value is refused with a
``ConfigError`` naming the key when the configuration is built, so a typo never silently falls
back to a default and a bad option never fails an update later. The flat keys ``replay_mb``,
``replay_per_epoch``, ``replay_grid`` and ``epochs`` of earlier versions are still read, as
``learner.KEY``, with a warning. ``deploy/edge-cl.toml`` is a commented example.
"""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import logging
import math
import os
import sys
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

from edge_cl.errors import ConfigError, LabelError
from edge_cl.extractor import RUNTIME_FORMATS
from edge_cl.learner.labels import check_label
from edge_cl.learner.registry import (
    DEFAULT_LEARNER,
    LEARNERS,
    learner_spec,
    unknown_option,
    validate,
)

log = logging.getLogger("edge_cl.device")

CHECKPOINT_NAME = "learner.ckpt"
SOCKET_NAME = "edge-cl.sock"
"""The control socket's name in ``$XDG_RUNTIME_DIR``; in ``state_dir`` it is ``control.sock``."""
MAX_RESOLUTION = 1024
MAX_THREADS = 64
MAX_TEACH_FRAMES = 2000
MAX_CAPTURE_SIDE = 8192
"""Upper bounds of the numeric keys: beyond them a setting is a typo, not a device."""
MOVED_KEYS = ("replay_mb", "replay_per_epoch", "replay_grid", "epochs")
"""Flat keys of earlier versions, now options of the learner (``learner.KEY``)."""


DEFAULT_UI = "127.0.0.1:8080"
"""Where ``edge-cl run --ui`` and the demo serve the web page."""


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) as ``(host, port)``; port 0 takes a free one.

    >>> parse_address("127.0.0.1:8080"), parse_address("[::1]:0")
    (('127.0.0.1', 8080), ('::1', 0))
    >>> parse_address("8080")
    Traceback (most recent call last):
    ...
    edge_cl.errors.ConfigError: ui = '8080': expected HOST:PORT, e.g. 127.0.0.1:8080
    """
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"ui = {address!r}: expected HOST:PORT, e.g. {DEFAULT_UI}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``).

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ui_address(address: str, public: bool) -> tuple[str, int]:
    """``address`` parsed, refused with a ``ConfigError`` when it is not a loopback one and
    ``public`` was not given: the page can teach and forget, so nobody on the network may reach
    it by accident."""
    host, port = parse_address(address)
    if not is_loopback(host) and not public:
        raise ConfigError(
            f"ui = {address!r} would serve the device's page to the network: set ui_public = "
            "true (edge-cl run --ui-public) to do so with a token, or bind 127.0.0.1"
        )
    return host, port


def check_unknown_accept(value: object) -> float:
    """``value`` as an ``unknown_accept``: a number in (0, 1]; ``ConfigError`` otherwise.

    >>> check_unknown_accept(0.9), check_unknown_accept(1)
    (0.9, 1.0)
    >>> check_unknown_accept(0)
    Traceback (most recent call last):
    ...
    edge_cl.errors.ConfigError: unknown_accept = 0: must be a number in (0, 1] (the share of \
taught patterns that pass; 1: never unknown)
    """
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or not 0.0 < number <= 1.0:
        raise ConfigError(
            f"unknown_accept = {value!r}: must be a number in (0, 1] (the share of taught "
            "patterns that pass; 1: never unknown)"
        )
    return float(number)


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
    - ``models``, ``cut``, ``runtime``, ``precision``, ``resolution`` (multiple of 32),
      ``threads``: the frozen extractor. ``cut`` is what the learner eats and defaults to it
      (``auto``): ``latent`` for the AR1* family (which can also learn at ``pool``), ``pool``
      for the others; a cut the learner cannot eat is refused.
    - ``learner``: a name of :data:`edge_cl.learner.registry.LEARNERS` (``ar1``, the default,
      ``cwr``, ``naive``, ``cumulative``, ``ncm``, ``slda``, ``sgd``, ``knn``);
      ``learner_options``: its options as given (for ``ar1`` the fields of ``AR1Config``, less
      ``depth``, which is ``cut``), checked here; the others keep the learner's own defaults,
      so the device runs the learner the study measures. For the AR1* family ``replay_grid`` is
      true or false: with an int8 model, store replay as the model's own output codes (exact,
      1.5x the patterns in ``replay_mb``; measured with earlier defaults in
      ``experiments/results/learner_tuning.md``). A resumed checkpoint keeps what it was
      made with, but for ``epochs`` and ``replay_per_epoch``.
    - ``learning_fps``: while the learner trains, frames are classified at most this often, so
      the update gets the cores and a teach is learned sooner (0: no limit).
    - ``teach_max_frames``: latents kept while teach is held (evenly thinned beyond it);
      ``teach_target_frames``: how many of them one learned batch takes, evenly spaced.
    - ``unknown_accept``: after each update the unknown threshold is set so that this fraction
      of views of taught objects passes; 1.0 never says unknown. AR1* calibrates on the views
      of re-taught objects, scored before they were learned, once it has 32 of them; until
      then on replayed patterns, which look more familiar than new views, so somewhat more new
      views are flagged than ``1 - unknown_accept``. Learners keeping neither keep the
      ``unknown_threshold`` option they were given (default 0: never unknown). Changed on the
      running device by ``edge-cl ctl unknown-accept 0.9``, which recalibrates at once.
    - ``background_label``: the class taught with nothing in view (``edge-cl ctl teach
      nothing`` before the empty scene); when it is the answer, and not unknown, the device
      says "nothing in view" (the verdict's ``empty``, the PREDICTION frame's flag bit 1).
      Until that label is taught it never is the answer.
    - ``state_dir``: holds the checkpoint (``learner.ckpt``); ``control_socket``: the Unix socket
      (default ``$XDG_RUNTIME_DIR/edge-cl.sock``, else ``state_dir/control.sock``).
    - ``serial``, ``baudrate``: the companion MCU (a device path or a pyserial URL; None: none);
      ``prediction_hz``: PREDICTION frames per second at most.
    - ``log_interval``: seconds between log lines; ``preview``, ``preview_fps``: an annotated
      MJPEG file (None: off).
    - ``ui``: serve the device's web page at ``HOST:PORT`` (None: off; ``edge-cl run --ui``
      takes :data:`DEFAULT_UI`); ``ui_public``: allow an address other than the loopback,
      which then needs the token printed at start (:mod:`edge_cl.device.webui`).
    - ``max_seconds``, ``max_frames``: stop after that long or that many frames (None: never).

    >>> c = DeviceConfig(state_dir=Path("/var/lib/edge-cl"), fps=15)
    >>> c.checkpoint, c.cut, c.teach_target_frames, c.learner_options
    (PosixPath('/var/lib/edge-cl/learner.ckpt'), 'latent', 30, {})
    >>> DeviceConfig(learner="slda", learner_options={"shrinkage": 1e-3}).cut
    'pool'
    """

    source: str = "synthetic"
    fps: float | None = None
    capture_size: tuple[int, int] | None = None
    loop: bool = False
    models: Path | None = None
    cut: str = "auto"
    runtime: str = field(default_factory=default_runtime)
    precision: str = "int8"
    resolution: int = 128
    threads: int = 2
    learner: str = DEFAULT_LEARNER
    learner_options: dict[str, Any] = field(default_factory=dict)
    learning_fps: float = 5.0
    teach_max_frames: int = 120
    teach_target_frames: int = 30
    unknown_accept: float = 0.95
    background_label: str = "nothing"
    state_dir: Path = field(default_factory=default_state_dir)
    control_socket: Path | None = None
    serial: str | None = None
    baudrate: int = 115200
    prediction_hz: float = 10.0
    log_interval: float = 5.0
    preview: Path | None = None
    preview_fps: float = 5.0
    ui: str | None = None
    ui_public: bool = False
    max_seconds: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"{key} = {getattr(self, key)!r}: {what}")

        need(bool(self.source.strip()), "source", "name a camera or replay source")
        need(self.cut in ("auto", "latent", "pool"), "cut", "must be 'auto', 'latent' or 'pool'")
        need(self.runtime in RUNTIME_FORMATS, "runtime", f"choose one of {sorted(RUNTIME_FORMATS)}")
        need(self.precision in ("fp32", "int8"), "precision", "must be 'fp32' or 'int8'")
        need(
            32 <= self.resolution <= MAX_RESOLUTION and self.resolution % 32 == 0,
            "resolution",
            f"a multiple of 32 from 32 to {MAX_RESOLUTION}",
        )
        for key in ("threads", "teach_max_frames", "teach_target_frames", "baudrate"):
            need(getattr(self, key) >= 1, key, "must be >= 1")
        need(self.threads <= MAX_THREADS, "threads", f"must be <= {MAX_THREADS}")
        need(
            self.teach_max_frames <= MAX_TEACH_FRAMES,
            "teach_max_frames",
            f"must be <= {MAX_TEACH_FRAMES} (each kept frame is a latent held in memory)",
        )
        need(
            self.teach_target_frames <= self.teach_max_frames,
            "teach_target_frames",
            f"must be <= teach_max_frames ({self.teach_max_frames})",
        )
        need(0.0 < self.unknown_accept <= 1.0, "unknown_accept", "must be in (0, 1]")
        try:
            check_label(self.background_label)
        except LabelError as e:
            raise ConfigError(f"background_label = {self.background_label!r}: {e}") from e
        need(self.learning_fps >= 0, "learning_fps", "must be >= 0 (0: no limit)")
        for key in ("prediction_hz", "log_interval", "preview_fps"):
            need(getattr(self, key) > 0, key, "must be > 0")
        for key in ("fps", "max_seconds"):
            need(getattr(self, key) is None or getattr(self, key) > 0, key, "must be > 0")
        need(self.max_frames is None or self.max_frames >= 1, "max_frames", "must be >= 1")
        size = self.capture_size
        need(
            size is None or 1 <= min(size) <= max(size) <= MAX_CAPTURE_SIDE,
            "capture_size",
            f"width and height must be from 1 to {MAX_CAPTURE_SIDE}",
        )
        if self.ui is not None:
            check_ui_address(self.ui, self.ui_public)
        self._check_learner()

    def _check_learner(self) -> None:
        """Resolve ``cut`` and check the learner and every option, so that a bad one is refused
        now, never in the middle of an update."""
        spec = learner_spec(self.learner)
        if self.cut == "auto":
            object.__setattr__(self, "cut", spec.eats[0])
        elif self.cut not in spec.eats:
            raise ConfigError(
                f"cut = {self.cut!r} contradicts learner = {self.learner!r}, which eats "
                f"{' or '.join(spec.eats)} features: drop cut (it follows the learner) or set "
                f"cut = {spec.eats[0]!r}"
            )
        if not isinstance(self.learner_options, Mapping):
            raise ConfigError(f"learner_options must be a mapping, got {self.learner_options!r}")
        options = dict(self.learner_options)
        grid = options.get("replay_grid")
        if "replay_grid" in spec.options and grid is not None:
            if not isinstance(grid, bool):
                raise ConfigError(
                    f"learner.replay_grid = {grid!r}: expected true or false (true: an int8 "
                    "model's replay is stored as its own output codes)"
                )
            codec = options.get("replay_codec", spec.options["replay_codec"])
            if grid and codec != "uint8":
                raise ConfigError(
                    f"learner.replay_grid = true stores uint8 codes, but learner.replay_codec = "
                    f"{codec!r}: drop one of them"
                )
            options["replay_grid"] = None
        checked = validate(spec.name, self.cut, options)
        given = {k: grid if k == "replay_grid" else checked[k] for k in self.learner_options}
        object.__setattr__(self, "learner_options", given)

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


KEYS = tuple(f.name for f in fields(DeviceConfig) if f.name != "learner_options")
"""The keys of a configuration file (the learner's options go in its ``[learner]`` table)."""
_HINTS = {k: v for k, v in typing.get_type_hints(DeviceConfig).items() if k in KEYS}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _convert(key: str, value: object, hint: Any) -> object:
    """``value`` (from TOML, or a string from ``--set``) as the type ``hint`` of ``key``."""
    options = typing.get_args(hint) if isinstance(hint, UnionType) else (hint,)
    blank = isinstance(value, str) and value.strip().lower() in ("", "none", "null")
    if NoneType in options and blank:
        return None
    options = tuple(o for o in options if o is not NoneType)
    if len(options) > 1:  # e.g. float | str: the first type the value converts to
        for option in options:
            try:
                return _convert(key, value, option)
            except ValueError:
                continue
        raise ValueError(f"expected one of {', '.join(o.__name__ for o in options)}")
    (hint,) = options
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError("expected true or false")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("expected an integer")
        try:
            return int(value)
        except ValueError:
            raise ValueError("expected an integer") from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("expected a number")
        try:
            number = float(value)
        except ValueError:
            raise ValueError("expected a number") from None
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


def learner_option_hints(name: str) -> dict[str, Any]:
    """The types of learner ``name``'s options in a device configuration: the registry's, but
    ``replay_grid`` (AR1* family) is true or false, the grid being the model's own.

    >>> learner_option_hints("slda")
    {'shrinkage': float | str, 'streaming_covariance': <class 'bool'>, \
'unknown_threshold': <class 'float'>}
    """
    hints = dict(learner_spec(name).hints)
    if "replay_grid" in hints:
        hints["replay_grid"] = bool
    return hints


def _split(raw: Mapping[str, object], where: str) -> tuple[dict[str, object], dict[str, object]]:
    """One source's device keys, and its learner keys (``name`` and options): ``learner =
    NAME``, a ``[learner]`` table, ``learner.KEY`` (``--set``), or a flat key of
    :data:`MOVED_KEYS`."""
    device: dict[str, object] = {}
    learner: dict[str, object] = {}
    moved: dict[str, object] = {}
    for key, value in raw.items():
        if key == "learner":
            learner.update(value if isinstance(value, Mapping) else {"name": value})
        elif key.startswith("learner."):
            learner[key.removeprefix("learner.")] = value
        elif key in MOVED_KEYS:
            moved[key] = value
        elif key in _HINTS:
            device[key] = value
        else:
            close = difflib.get_close_matches(key, [*KEYS, *MOVED_KEYS], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown key {key!r} in {where}{hint}; known keys: {', '.join(KEYS)}, and the "
                "learner's options in its [learner] table"
            )
    for key, value in moved.items():
        if key in learner:
            raise ConfigError(
                f"{key} and learner.{key} both in {where}: keep learner.{key} ({key} is the "
                "spelling of earlier versions)"
            )
        log.warning(
            "%s: %s is now learner.%s (in the [learner] table); read as such", where, key, key
        )
        learner[key] = value
    return device, learner


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
    >>> config = load_config(None, {"learner": "ar1", "learner.replay_mb": "4"})
    >>> config.learner, config.learner_options, config.cut
    ('ar1', {'replay_mb': 4.0}, 'latent')
    """
    sources = [] if path is None else [(_read_toml(Path(path)), str(path))]
    sources.append((dict(overrides or {}), "--set"))
    values: dict[str, object] = {}
    learner: dict[str, tuple[object, str]] = {}
    for raw, where in sources:
        device, options = _split(raw, where)
        for key, value in device.items():
            try:
                values[key] = _convert(key, value, _HINTS[key])
            except ValueError as e:
                raise ConfigError(f"{key} = {value!r} in {where}: {e}") from e
        learner.update((key, (value, where)) for key, value in options.items())
    name, named_in = learner.pop("name", (DEFAULT_LEARNER, "the defaults"))
    if not isinstance(name, str):
        raise ConfigError(f"learner = {name!r}: name a learner, one of {', '.join(LEARNERS)}")
    hints = learner_option_hints(name)
    converted: dict[str, object] = {}
    for key, (value, where) in learner.items():
        if key not in hints:
            switched = f" (learner {name!r} comes from {named_in})" if where != named_in else ""
            raise ConfigError(f"learner.{key} in {where}{switched}: {unknown_option(name, key)}")
        try:
            converted[key] = _convert(key, value, hints[key])
        except ValueError as e:
            raise ConfigError(f"learner.{key} = {value!r} in {where}: {e}") from e
    try:
        return DeviceConfig(**values, learner=name, learner_options=converted)  # type: ignore[arg-type]
    except TypeError as e:
        raise ConfigError(f"bad configuration: {e}") from e
