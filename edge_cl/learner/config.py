"""The settings of the learners above the cut: :class:`AR1Config` and the sizes of the latent.

One frozen dataclass serves :class:`~edge_cl.learner.ar1.AR1Star` (and its ablations) and
:class:`~edge_cl.learner.cumulative.Cumulative`: both train the same network
(:class:`~edge_cl.learner.network.LatentNetwork`) with the same SGD; the fields that only AR1*
reads (CWR*, replay, SI, the Gaussian head) are off in Cumulative's defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge_cl.learner.replay import CODECS, POLICIES, check_grid
from edge_cl.learner.replay import MAX_BYTES as MAX_REPLAY_BYTES

LATENT_CHANNELS = 320
POOL_CHANNELS = 1280
SUMMARIES = {"mean": 1, "mean_std": 2}
"""The summaries of a latent the Gaussian head can see, and their size in channels."""
BASELINE_SETTINGS: dict[str, Any] = {
    "lr": 0.03,
    "latent_lr_scale": 3.0,
    "brn_momentum": 5e-5,
    "gaussian_head": False,
    "balanced_loss": False,
    "new_per_update": None,
}
"""The learning rates, BRN momentum and output rule that the references train with
(:class:`~edge_cl.learner.cumulative.Cumulative`, :class:`~edge_cl.learner.ar1.CWRStar`,
:class:`~edge_cl.learner.ar1.NaiveFineTune`): AR1*'s defaults before the sixth tuning pass, with
CWR* (or the plain output layer) alone deciding, pinned so that the references AR1* is measured
against do not move when its own defaults are tuned."""


@dataclass(frozen=True)
class AR1Config:
    """Hyperparameters of :class:`~edge_cl.learner.ar1.AR1Star`.
    ``docs/results/learner_generalisation.md`` says how the defaults were chosen on the dev
    suite and how they did on the holdout suite;
    ``experiments/results/learner_tuning.md`` logs the probes of earlier sessions.

    - ``depth``: ``"latent"`` trains conv_head + output on (N, h, w, 320) latents; ``"pool"``
      trains the output layer alone on (N, 1280) pooled features.
    - ``epochs``, ``minibatch``, ``lr_first`` (first batch), ``lr`` (later batches),
      ``momentum``, ``weight_decay``: plain SGD; momentum is reset at every batch. Minibatches
      of 64 (the reference recipe: 128) take 2x the steps for the same compute.
    - ``latent_epochs``: the latent layers train in the first this-many ``epochs`` (None: all);
      the other epochs train the output layer alone on the pooled features of the last of them,
      at almost no cost. 1 costs a quarter of four latent epochs at the same accuracy on the
      COIL-100 study protocols.
    - ``latent_positions``: the latent layers train on this many random spatial positions of
      each (N, h, w, 320) latent, and the replay memory stores that many of each pattern (None:
      all). Everything above the cut acts on one position at a time until the global average,
      so the mean over a random subset is an unbiased, noisier estimate of the pooled feature;
      prediction uses every position. 8 of the 4x4 at 128 px halves an update's compute and
      fits 1.7x the patterns in the replay memory (``experiments/results/learner_tuning.md``).
    - ``cwr``: CWR* on the output layer; off, the output layer is fine-tuned like any layer.
    - ``train_latent_layers``: off, conv_head and its normalisation stay as pretrained;
      ``latent_lr_scale``: their learning rate as a multiple of the output layer's. The defaults,
      ``lr`` 0.005 after the first batch with the latent layers at 18x (0.09, as before), and
      ``brn_momentum`` 1e-3, keep BRN's running statistics close to the drifting conv_head, so
      that the output layer is trained on the features it is evaluated with
      (``experiments/results/learner_tuning.md``, sixth session).
    - ``replay_mb``, ``replay_codec`` (``uint8``, ``uint4``, ``float32``), ``replay_policy``
      (``class_balanced``: an equal share per class, +3 points on the clutter protocol;
      ``uniform``: the reference rule): the latent replay memory; 0 MB disables replay.
    - ``replay_grid``: ``(step, zero)`` of the uint8 grid the latents lie on, the extractor's
      ``artifact.output_grid`` (int8 models): the memory stores each value's code alone, exactly,
      in 1 byte, instead of per-pattern ranges (2,182 -> 3,271 patterns in 8 MB; with the
      sixth session's defaults +0.45 on COIL-100 sessions, +1.0 on CIFAR-10, -0.55 on clutter,
      so not the default).
      None: per-pattern, per-channel ranges, which also suit latents of fp32 extractors.
    - ``replay_per_epoch``: replayed patterns mixed into each batch's epochs; ``None`` sweeps the
      whole memory every epoch (the reference AR1* rule, costly on a device), a number draws
      that many patterns once per batch and replays them in every epoch.
    - ``new_per_update``: a batch with more new patterns than this trains the latent and output
      layers on a random sample of this many (the Gaussian head and the replay memory still see
      every pattern), so that an update costs at most a fixed budget whatever the batch size;
      None: every new pattern, every time.
    - ``brn``, ``brn_momentum_first``, ``brn_momentum``, ``r_max``, ``d_max``: Batch
      Renormalization; on the first batch r_max ramps 1 -> r_max and d_max 0 -> d_max.
    - ``si_lambda``, ``si_max_importance``: Synaptic Intelligence on the latent layers (0: off).
    - ``gaussian_head``: a class-conditional Gaussian with a shared covariance (LDA,
      :class:`~edge_cl.learner.gaussian.ClassGaussians`) on a summary of each latent
      (``gaussian_features``; the pooled features at depth ``pool``), learned in closed form
      from every pattern of every batch; its log-posterior is added to the CWR* logits, so the
      prediction is the product of the two posteriors. It needs no replay and no rate, cannot
      drift, and is what keeps AR1* ahead on class-incremental streams with large batches,
      where CWR* alone falls far behind (``docs/results/learner_generalisation.md``).
    - ``gaussian_features``: the summary of a latent the Gaussian head sees, over its spatial
      positions (:func:`~edge_cl.learner.ar1.latent_summary`): ``"mean"`` (320-d) or
      ``"mean_std"`` (the mean and the standard deviation of each channel, 640-d).
    - ``balanced_loss``: weight each pattern's loss by the inverse of its class's count in the
      batch (new and replayed patterns together), so that a large batch of new classes does not
      outweigh the replayed ones in the gradient.
    - ``unknown_threshold``: below this top probability a prediction is flagged unknown.
    - ``novelty_threshold``: above this novelty (``LatentNetwork.novelty``, minus the largest
      output-layer logit) a prediction is flagged unknown; None never. Set by
      ``calibrate_unknown`` and ``calibrate_unknown_on_teaching``.
    """

    depth: str = "latent"
    epochs: int = 4
    minibatch: int = 64
    lr_first: float = 0.03
    lr: float = 0.005
    momentum: float = 0.9
    weight_decay: float = 5e-4
    cwr: bool = True
    train_latent_layers: bool = True
    latent_lr_scale: float = 18.0
    latent_epochs: int | None = 1
    latent_positions: int | None = 8
    replay_mb: float = 8.0
    replay_codec: str = "uint8"
    replay_policy: str = "class_balanced"
    replay_grid: tuple[float, int] | None = None
    replay_per_epoch: int | None = 512
    new_per_update: int | None = 512
    brn: bool = True
    brn_momentum_first: float = 0.01
    brn_momentum: float = 1e-3
    r_max: float = 1.25
    d_max: float = 0.5
    si_lambda: float = 0.0
    si_max_importance: float = 1e-3
    gaussian_head: bool = True
    gaussian_features: str = "mean_std"
    balanced_loss: bool = True
    unknown_threshold: float = 0.0
    novelty_threshold: float | None = None
    seed: int = 0

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of what the learner trains on and the replay memory keeps of a pattern of
        ``shape``: ``(1, latent_positions, C)`` for an (h, w, C) latent with more positions.

        >>> AR1Config().stored_shape((4, 4, 320)), AR1Config().stored_shape((1280,))
        ((1, 8, 320), (1280,))
        """
        k = self.latent_positions
        if k is None or len(shape) != 3 or shape[0] * shape[1] <= k:
            return tuple(shape)
        return (1, k, shape[2])

    def __post_init__(self) -> None:
        if self.depth not in ("latent", "pool"):
            raise ValueError(f"depth must be 'latent' or 'pool', got {self.depth!r}")
        for name in ("epochs", "minibatch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("latent_epochs", "latent_positions", "new_per_update"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        for name in ("lr_first", "lr", "replay_mb", "weight_decay", "si_lambda", "latent_lr_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.replay_mb > MAX_REPLAY_BYTES / 2**20:
            raise ValueError(f"replay_mb must be <= {MAX_REPLAY_BYTES >> 20}, got {self.replay_mb}")
        object.__setattr__(self, "replay_grid", check_grid(self.replay_grid, self.replay_codec))
        if not 0.0 <= self.unknown_threshold <= 1.0:
            raise ValueError(f"unknown_threshold must be in [0, 1], got {self.unknown_threshold}")
        if self.novelty_threshold is not None and not math.isfinite(self.novelty_threshold):
            raise ValueError(
                f"novelty_threshold must be finite or None, got {self.novelty_threshold!r}"
            )
        if self.replay_per_epoch is not None and self.replay_per_epoch < 0:
            raise ValueError(f"replay_per_epoch must be >= 0 or None, got {self.replay_per_epoch}")
        ranges = {
            "momentum": (0.0 <= self.momentum < 1.0, "in [0, 1)"),
            "brn_momentum": (0.0 <= self.brn_momentum <= 1.0, "in [0, 1]"),
            "brn_momentum_first": (0.0 <= self.brn_momentum_first <= 1.0, "in [0, 1]"),
            "r_max": (self.r_max >= 1.0, ">= 1"),
            "d_max": (self.d_max >= 0.0, ">= 0"),
            "si_max_importance": (self.si_max_importance >= 0.0, ">= 0"),
            "seed": (self.seed >= 0, ">= 0"),
            "replay_codec": (self.replay_codec in CODECS, f"one of {CODECS}"),
            "replay_policy": (self.replay_policy in POLICIES, f"one of {POLICIES}"),
            "gaussian_features": (
                self.gaussian_features in SUMMARIES,
                f"one of {tuple(SUMMARIES)}",
            ),
        }
        for name, (ok, what) in ranges.items():
            if not ok:
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")
