"""The learners by name: what each eats, its options, how to build one and how to load one.

Every learner implements :class:`~edge_cl.learner.protocol.Learner`, so the device loop and the
study host any of them by name. The AR1* family (``ar1``, ``cwr``, ``naive``, ``cumulative``)
eats ``latent`` features (N, h, w, 320) at depth latent, or ``pool`` features (N, 1280) at depth
pool; the others eat ``pool`` features only. :func:`make_learner` checks every option (name, type,
value) before it builds anything, and :func:`load_learner` reads a checkpoint's ``kind`` to
rebuild whichever learner wrote it.

>>> learner = make_learner("slda", shrinkage=1e-3)
>>> type(learner).__name__, learner_name(learner), learner_depth(learner)
('StreamingLDA', 'slda', 'pool')
>>> make_learner("ar1", replay_per_epoch=-1)
Traceback (most recent call last):
...
edge_cl.errors.ConfigError: learner 'ar1': replay_per_epoch must be >= 0 or None, got -1
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

import numpy as np

from edge_cl.errors import CheckpointError, ConfigError
from edge_cl.learner.ar1 import AR1Star, CWRStar, NaiveFineTune
from edge_cl.learner.baselines import NearestClassMean, StreamingLDA
from edge_cl.learner.checkpoint import load_state
from edge_cl.learner.config import AR1Config
from edge_cl.learner.cumulative import Cumulative
from edge_cl.learner.network import LatentNetwork
from edge_cl.learner.protocol import Learner
from edge_cl.learner.sklearn_heads import KNNHead, SGDHead

DEPTHS = ("latent", "pool")
DEFAULT_LEARNER = "ar1"

Head = dict[str, np.ndarray] | None
Build = Callable[[Head, str | None, str, dict[str, Any]], Learner]


@dataclass(frozen=True)
class LearnerSpec:
    """One registered learner.

    ``eats``: the depths (extractor cuts) it can learn above, the default first; ``options``:
    its options (constructor arguments, or ``AR1Config`` fields but ``depth``) and their
    defaults; ``hints``: their types; ``build(head, extractor_sha256, depth, options)`` makes
    one from checked options; ``kind``: what its checkpoints record.
    """

    name: str
    help: str
    cls: type[Learner]
    kind: str
    eats: tuple[str, ...]
    options: Mapping[str, Any]
    hints: Mapping[str, Any]
    build: Build

    def describe(self) -> str:
        """One line: name, what it is, what it eats.

        >>> LEARNERS["ncm"].describe()
        'ncm: nearest class mean: tiny, instant, no replay (eats pool)'
        """
        return f"{self.name}: {self.help} (eats {' or '.join(self.eats)})"


def _ar1(name: str, cls: type[AR1Star | Cumulative], help: str) -> LearnerSpec:
    hints = typing.get_type_hints(AR1Config)
    defaults = asdict(cls.default_config())
    keys = [k for k in defaults if k != "depth"]

    def build(head: Head, sha: str | None, depth: str, options: dict[str, Any]) -> Learner:
        return cls(head if depth == "latent" else None, sha, depth=depth, **options)

    return LearnerSpec(
        name,
        help,
        cls,
        cls.kind,
        DEPTHS,
        {k: defaults[k] for k in keys},
        {k: hints[k] for k in keys},
        build,
    )


def _pooled(
    name: str, cls: type[NearestClassMean | StreamingLDA | SGDHead | KNNHead], help: str
) -> LearnerSpec:
    hints = typing.get_type_hints(cls.__init__)
    params = inspect.signature(cls).parameters
    keys = [k for k in params if k != "extractor_sha256"]

    def build(head: Head, sha: str | None, depth: str, options: dict[str, Any]) -> Learner:
        return cls(extractor_sha256=sha, **options)

    return LearnerSpec(
        name,
        help,
        cls,
        cls.kind,
        ("pool",),
        {k: params[k].default for k in keys},
        {k: hints[k] for k in keys},
        build,
    )


LEARNERS: dict[str, LearnerSpec] = {
    spec.name: spec
    for spec in (
        _ar1("ar1", AR1Star, "AR1* with latent replay, the default (docs/results/lifecycle)"),
        _ar1("cwr", CWRStar, "CWR*: only the output layer learns, no replay"),
        _ar1("naive", NaiveFineTune, "plain fine-tuning on each batch: forgets, a reference"),
        _ar1("cumulative", Cumulative, "retrains on everything seen: memory and compute grow"),
        _pooled("ncm", NearestClassMean, "nearest class mean: tiny, instant, no replay"),
        _pooled("slda", StreamingLDA, "streaming LDA: class means and one shared covariance"),
        _pooled("sgd", SGDHead, "scikit-learn SGDClassifier (extra 'study')"),
        _pooled("knn", KNNHead, "k nearest neighbours (cosine), memory grows (extra 'study')"),
    )
}
"""Every learner by name, the default first."""


def describe_learners() -> str:
    """One line per registered learner (the help of ``learner = NAME``)."""
    return "\n".join(spec.describe() for spec in LEARNERS.values())


def learner_spec(name: object) -> LearnerSpec:
    """The registered learner ``name``; ``ConfigError`` listing them if there is none."""
    spec = LEARNERS.get(name) if isinstance(name, str) else None
    if spec is None:
        close = difflib.get_close_matches(str(name), LEARNERS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown learner {name!r}{hint}; choose one of:\n{describe_learners()}")
    return spec


def check_depth(name: str, depth: str | None) -> str:
    """``depth`` (None: the learner's default), or a ``ConfigError`` if the learner cannot eat
    features of that depth.

    >>> check_depth("ar1", None), check_depth("ar1", "pool"), check_depth("ncm", None)
    ('latent', 'pool', 'pool')
    """
    spec = learner_spec(name)
    if depth is None:
        return spec.eats[0]
    if depth not in spec.eats:
        raise ConfigError(
            f"learner {name!r} eats {' or '.join(spec.eats)} features, not {depth!r}: use the "
            f"extractor's {spec.eats[0]!r} cut"
        )
    return depth


def _describe_hint(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    kinds = typing.get_args(hint) if isinstance(hint, UnionType) else (hint,)
    return " or ".join(
        "none" if k is NoneType else names.get(k, "a [step, zero] pair") for k in kinds
    )


def _typed(name: str, key: str, value: object, hint: Any) -> object:
    """``value`` as the option's type (an int is a float, a list a tuple), or a ConfigError."""
    for kind in typing.get_args(hint) if isinstance(hint, UnionType) else (hint,):
        if kind is NoneType and value is None:
            return None
        if kind is bool and isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, bool | np.bool_):
            continue
        if kind is int and isinstance(value, int | np.integer):
            return int(value)
        real = int | float | np.integer | np.floating
        if kind is float and isinstance(value, real) and math.isfinite(value):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        if typing.get_origin(kind) is tuple and isinstance(value, tuple | list):
            return tuple(value)
    raise ConfigError(f"learner {name!r} option {key} = {value!r}: expected {_describe_hint(hint)}")


def unknown_option(name: str, key: str) -> ConfigError:
    """The error for ``key``, which is not an option of learner ``name``: what was meant, which
    learners have it, which options this one has."""
    spec = learner_spec(name)
    close = difflib.get_close_matches(key, spec.options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if key == "depth":
        hint = ": the depth is the extractor's cut, given apart from the options"
    owners = [s.name for s in LEARNERS.values() if key in s.options]
    elsewhere = f"; it is an option of {', '.join(owners)}" if owners else ""
    return ConfigError(
        f"{key!r} is not an option of learner {name!r}{hint}{elsewhere}; the options of "
        f"{name!r} are: {', '.join(spec.options)}"
    )


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of learner ``name`` checked for name and type (an int given for a float
    option becomes a float), or a ``ConfigError`` naming the first bad one. Values are checked
    by :func:`make_learner`; :func:`validate` checks both without keeping anything.

    >>> check_options("slda", {"shrinkage": 1})
    {'shrinkage': 1.0}
    """
    spec = learner_spec(name)
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key not in spec.options:
            raise unknown_option(spec.name, key)
        checked[key] = _typed(spec.name, key, value, spec.hints[key])
    return checked


def make_learner(
    name: str = DEFAULT_LEARNER,
    head: Head = None,
    extractor_sha256: str | None = None,
    depth: str | None = None,
    **options: Any,
) -> Learner:
    """A new learner ``name`` at ``depth`` (None: its default) with ``options``.

    ``head`` holds the pretrained arrays above the latent cut
    (``edge_cl.extractor.imagenet.head_arrays``) that the AR1* family starts from at depth latent
    (None: a random conv_head); the others ignore it. ``extractor_sha256`` ties its checkpoints
    to the extractor. An unknown learner, depth or option, or a bad value, is a ``ConfigError``
    naming it, raised before anything is built; the scikit-learn learners raise
    ``MissingExtraError`` without scikit-learn.

    >>> make_learner("ncm", unknown_threshold=0.5).unknown_threshold
    0.5
    >>> make_learner("ncm", shrinkage=0.1)
    Traceback (most recent call last):
    ...
    edge_cl.errors.ConfigError: 'shrinkage' is not an option of learner 'ncm'; it is an option \
of slda; the options of 'ncm' are: unknown_threshold
    """
    spec = learner_spec(name)
    depth = check_depth(spec.name, depth)
    checked = check_options(spec.name, options)
    try:
        return spec.build(head, extractor_sha256, depth, checked)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"learner {spec.name!r}: {e}") from e


def validate(name: str, depth: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check learner ``name``, ``depth`` and ``options`` as :func:`make_learner` would, by
    building a throwaway learner at its cheapest depth; returns the checked options.

    >>> validate("ar1", "latent", {"replay_mb": 4})
    {'replay_mb': 4.0}
    """
    spec = learner_spec(name)
    check_depth(spec.name, depth)
    checked = check_options(spec.name, options)
    make_learner(spec.name, None, None, "pool", **checked)
    return checked


def learner_name(learner: object) -> str:
    """The registered name of ``learner``'s class (``ValueError`` for an unregistered one)."""
    for spec in LEARNERS.values():
        if type(learner) is spec.cls:
            return spec.name
    raise ValueError(f"{type(learner).__name__} is not a registered learner")


def learner_depth(learner: object) -> str:
    """The depth ``learner`` eats features of: its ``AR1Config.depth`` (AR1* and cumulative),
    else ``"pool"``."""
    return learner.config.depth if isinstance(learner, LatentNetwork) else "pool"


def load_learner(path: str | os.PathLike[str], extractor_sha256: str | None = None) -> Learner:
    """The learner in checkpoint ``path``, whichever registered learner wrote it (its
    ``kind``); ``CheckpointError`` if it is unusable, of a kind none reads, or (with
    ``extractor_sha256``) made with another extractor.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "state.ckpt"
    >>> x = np.eye(3, 8, dtype=np.float32)
    >>> _ = make_learner("ncm").partial_fit(x, ["cup", "pen", "key"]).save(path)
    >>> load_learner(path).predict(x)
    ['cup', 'pen', 'key']
    """
    meta, _ = load_state(Path(path))
    kind = meta.get("kind")
    for spec in LEARNERS.values():
        if spec.kind == kind:
            return spec.cls.load(path, extractor_sha256)
    kinds = ", ".join(f"{s.kind} ({s.name})" for s in LEARNERS.values())
    raise CheckpointError(f"{path} holds a {kind!r}, which no learner reads; known: {kinds}")
