"""Exception classes. Every error edge_cl raises on purpose is an ``EdgeClError``.

Each class names what went wrong so that callers (the device loop, the CLI) can react to it
specifically, and each message says what to do about it.
"""

from __future__ import annotations


class EdgeClError(Exception):
    """Base class of every error raised on purpose by edge_cl."""


class FrameError(EdgeClError, ValueError):
    """A frame, image batch or latent batch cannot be used (wrong dtype, shape, empty, NaN)."""


class ManifestError(EdgeClError):
    """``models/manifest.json`` is missing, malformed, or names no artifact that fits."""


class ChecksumError(ManifestError):
    """A model file does not match the sha256 in the manifest (tampered, truncated, replaced)."""


class BackendUnavailableError(EdgeClError):
    """A runtime, execution provider or delegate was asked for but is not installed here."""


class LabelError(EdgeClError, ValueError):
    """A label is unusable: unknown to the learner, of an unsupported type, empty or too long."""


class NotFittedError(EdgeClError):
    """A learner was asked to predict before it learned anything."""


class CheckpointError(EdgeClError):
    """A checkpoint is corrupt, truncated, of another format version or another extractor."""


class DatasetError(EdgeClError):
    """A dataset folder or filelist is missing, malformed or names files that do not exist."""


class MissingExtraError(EdgeClError, ImportError):
    """An optional part (plots, scikit-learn baselines) needs a package that is not installed."""


class ProtocolError(EdgeClError):
    """A serial frame or message breaks the MCU protocol (bad CRC, version, type, length)."""


class ConfigError(EdgeClError, ValueError):
    """A device configuration file or ``--set`` override names an unknown key or a bad value."""


class CameraError(EdgeClError):
    """A camera or frame source cannot be opened, or stopped delivering frames."""


class StrategyError(EdgeClError, ValueError):
    """A lifecycle study names a strategy it does not have (the message lists those it has)."""
