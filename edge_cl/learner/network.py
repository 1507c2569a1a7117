"""The network above the cut and its SGD: what AR1* and cumulative retraining both train.

- depth ``"latent"``: conv_head 1x1 (320->1280, from the pretrained head) -> Batch Renormalization
  -> ReLU6 -> global average pool -> output layer without bias;
- depth ``"pool"``: the output layer alone, on pooled 1280-d features.

:class:`LatentNetwork` holds these layers, the label map, the output weights inference uses
(``cw``) with the patterns counted per class (``past``), and one SGD pass over a batch (mixed
with replayed patterns when given some, on random spatial positions of each latent). It
predicts, forgets a class, and saves and loads itself. What happens to the weights between
batches is its subclasses' business: :class:`~edge_cl.learner.ar1.AR1Star` consolidates them
with CWR* (plus replay, SI and a Gaussian head), :class:`~edge_cl.learner.cumulative.Cumulative`
retrains them from the start on everything it has kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_cl.errors import CheckpointError, NotFittedError
from edge_cl.learner.checkpoint import load_state, save_state
from edge_cl.learner.config import LATENT_CHANNELS, POOL_CHANNELS, AR1Config
from edge_cl.learner.labels import Label, LabelMap
from edge_cl.learner.layers import (
    SGD,
    BatchRenorm,
    Conv1x1,
    GlobalAvgPool,
    Layer,
    Linear,
    ReLU6,
    softmax,
    softmax_cross_entropy,
)
from edge_cl.learner.protocol import check_batch

if TYPE_CHECKING:
    from typing import Self

NOVELTY_PROBES = 32
"""Patterns of already-known classes a batch has scored for novelty before it is learned."""

NOVELTY_WINDOW = 1024
"""Newest such scores kept for ``calibrate_unknown_on_teaching``."""

MIN_CALIBRATION = 32
"""Fewest such scores ``calibrate_unknown_on_teaching`` sets a threshold from."""


def latent_layers_flops(positions: int) -> int:
    """FLOPs per frame of the layers above the cut up to the pool, on a latent of ``positions``
    spatial positions, as the layers count themselves (``Layer.flops``): the conv_head's matmul
    (``2 * 320 * 1280`` a position), Batch Renorm's folded scale and shift and ReLU6's two
    comparisons (2 + 2 an activation), and the pool's addition (1 an activation). It is also
    what the extractor's ``pool`` cut adds to its ``latent`` cut.

    >>> latent_layers_flops(16) == 16 * 1280 * (2 * 320 + 5)
    True
    """
    return positions * POOL_CHANNELS * (2 * LATENT_CHANNELS + 2 + 2 + 1)


def novelty_from_logits(logits: np.ndarray) -> np.ndarray:
    """The novelty of each row of output-layer logits: minus its largest (higher: less like any
    class). What "unknown" costs a frame on top of its prediction, k comparisons for k classes.

    >>> novelty_from_logits(np.array([[2.0, -1.0], [0.5, 0.25]])).tolist()
    [-2.0, -0.5]
    """
    novelty: np.ndarray = -logits.max(axis=1)
    return novelty


class LatentNetwork:
    """The layers above the cut, trained by minibatch SGD; the base of the learners that train
    them (it has no ``partial_fit`` of its own: see the module docstring).

    ``head`` holds the pretrained arrays above the latent cut
    (``edge_cl.extractor.imagenet.head_arrays``); without it the conv_head starts from a random
    init. ``extractor_sha256`` ties checkpoints to the extractor whose latents they were trained
    on. ``config`` (default :meth:`default_config`) with ``overrides`` applied.

    >>> from edge_cl.learner.ar1 import AR1Star
    >>> from edge_cl.learner.cumulative import Cumulative
    >>> [issubclass(cls, LatentNetwork) for cls in (AR1Star, Cumulative)]
    [True, True]
    >>> LatentNetwork(depth="pool").nbytes  # no class yet: empty output weights and counts
    0
    """

    kind = "LatentNetwork"

    def __init__(
        self,
        head: dict[str, np.ndarray] | None = None,
        extractor_sha256: str | None = None,
        config: AR1Config | None = None,
        **overrides: Any,
    ) -> None:
        self.config = replace(config or self.default_config(), **overrides)
        self.extractor_sha256 = extractor_sha256
        self.labels = LabelMap()
        self.batches_seen = 0
        self.rng = np.random.default_rng(self.config.seed)
        self.latent = self._latent_layers(head) if self.config.depth == "latent" else []
        self.output = Linear(POOL_CHANNELS, 0, weight=np.zeros((POOL_CHANNELS, 0), np.float32))
        self.cw = np.zeros((POOL_CHANNELS, 0), np.float32)
        self.past = np.zeros(0, np.int64)
        self._loss_weights: np.ndarray | None = None
        self.last_update_flops = 0
        self.total_flops = 0
        self.pattern_shape: tuple[int, ...] | None = None  # of the patterns last learned
        self.novelty_scores = np.zeros(0, np.float32)  # see calibrate_unknown_on_teaching
        self.novelty_classes = np.zeros(0, np.int64)

    @classmethod
    def default_config(cls) -> AR1Config:
        """The configuration this learner class starts from (subclasses change it)."""
        return AR1Config()

    # ------------------------------------------------------------------------------- model
    def _latent_layers(self, head: dict[str, np.ndarray] | None) -> list[Layer]:
        c = self.config
        if head is None:
            conv = Conv1x1(
                LATENT_CHANNELS,
                POOL_CHANNELS,
                rng=np.random.default_rng(c.seed),
                input_grad=False,
            )
            norm = BatchRenorm(POOL_CHANNELS, momentum=c.brn_momentum_first, inplace=True)
        else:
            conv = Conv1x1(
                LATENT_CHANNELS,
                POOL_CHANNELS,
                weight=np.ascontiguousarray(head["conv_head.weight"].T, dtype=np.float32),
                input_grad=False,
            )
            norm = BatchRenorm(
                POOL_CHANNELS,
                gamma=head["bn.gamma"].astype(np.float32),
                beta=head["bn.beta"].astype(np.float32),
                running_mean=head["bn.mean"].astype(np.float32),
                running_var=head["bn.var"].astype(np.float32),
                eps=float(head["bn.eps"]),
                momentum=c.brn_momentum_first,
                inplace=True,
            )
        return [conv, norm, ReLU6(inplace=True), GlobalAvgPool()]

    @property
    def classes_(self) -> list[Label]:
        """Known labels, in the order of ``predict_proba``'s columns."""
        return self.labels.labels

    def _features(self, x: np.ndarray, train: bool) -> np.ndarray:
        for layer in self.latent:
            x = layer.forward(x, train)
        return x

    def _trainable(self) -> list[Layer]:
        """The trained latent layers (conv_head, its normalisation), or none."""
        return self.latent[:2] if self.config.train_latent_layers else []

    def _check_input(self, x: object) -> np.ndarray:
        latent = self.config.depth == "latent"
        pattern = ("h", "w", LATENT_CHANNELS) if latent else (POOL_CHANNELS,)
        return check_batch(x, pattern, name="latents" if latent else "features")

    def _grow(self, slots: int) -> None:
        extra = slots - self.cw.shape[1]
        if extra > 0:
            pad = np.zeros((POOL_CHANNELS, extra), np.float32)
            self.cw = np.concatenate([self.cw, pad], axis=1)
            self.past = np.concatenate([self.past, np.zeros(extra, np.int64)])
            self.output = Linear(POOL_CHANNELS, slots, weight=self.cw.copy())

    # ---------------------------------------------------------------------------- training
    def _set_normalisation(self, first: bool) -> None:
        """Batch Renormalization's schedule for the coming batch: on the first one r_max ramps
        1 -> ``r_max`` and d_max 0 -> ``d_max`` at ``brn_momentum_first``; later ones run at the
        limits and ``brn_momentum``; with ``brn`` off it is plain batch normalisation."""
        if len(self.latent) < 2:
            return
        c = self.config
        norm = self.latent[1]
        assert isinstance(norm, BatchRenorm)
        if not c.brn:
            norm.r_max, norm.d_max, norm.ramp_per_sample = 1.0, 0.0, 0.0
            norm.momentum = c.brn_momentum_first
        elif first:
            norm.momentum = c.brn_momentum_first
            norm.r_max, norm.d_max = 1.0, 0.0
            norm.ramp_per_sample = 1e-4
            norm.r_max_limit, norm.d_max_limit = c.r_max, c.d_max
        else:
            norm.momentum = c.brn_momentum
            norm.r_max, norm.d_max, norm.ramp_per_sample = c.r_max, c.d_max, 0.0

    def _minibatches(self, n_new: int, n_replay: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Index chunks: each minibatch mixes about B * N / (N + R) new with the rest replayed."""
        b = self.config.minibatch
        count = max(1, (n_new + n_replay) // b)
        count = min(count, n_new)
        new = np.array_split(self.rng.permutation(n_new), count)
        old = np.array_split(self.rng.permutation(n_replay), count)
        yield from zip(new, old, strict=True)

    def _train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        replay_x: np.ndarray | None,
        replay_y: np.ndarray,
        lr: float,
    ) -> int:
        """SGD on the batch mixed with replay; returns the FLOPs spent.

        The latent layers train in the first ``latent_epochs`` epochs. The remaining epochs
        train the output layer alone on the pooled features of the last of those epochs, so they
        cost no conv_head compute.
        """
        c = self.config
        sgd = SGD(lr, c.momentum, c.weight_decay)
        latent_sgd = SGD(lr * c.latent_lr_scale, c.momentum, c.weight_decay)
        deep = c.epochs
        if c.latent_epochs is not None and self._trainable():
            deep = min(c.latent_epochs, c.epochs)
        slots = self.labels.size
        flops = 0
        kept: list[tuple[np.ndarray, np.ndarray]] = []
        for epoch in range(deep):
            keep = deep < c.epochs and epoch == deep - 1
            for new_idx, old_idx in self._minibatches(len(x), len(replay_y)):
                xn = self._positions(x[new_idx])
                if replay_x is not None and len(old_idx):
                    xb = np.concatenate([xn, replay_x[old_idx]])
                    yb = np.concatenate([y[new_idx], replay_y[old_idx]])
                else:
                    xb, yb = xn, y[new_idx]
                feats = self._step(xb, yb, sgd, latent_sgd)
                if keep:
                    kept.append((feats, yb))
                flops += self._train_flops(xb.shape, slots)
        if kept:
            feats = np.concatenate([f for f, _ in kept])
            labels = np.concatenate([t for _, t in kept])
            for _ in range(c.epochs - deep):
                for idx in np.array_split(self.rng.permutation(len(labels)), len(kept)):
                    self._output_step(feats[idx], labels[idx], sgd, input_grad=False)
                    flops += 2 * self._output_flops(len(idx), slots)
        return flops

    def _positions(self, x: np.ndarray) -> np.ndarray:
        """``latent_positions`` random spatial positions of each (N, h, w, C) latent, as
        (N, 1, k, C); latents with no more positions than that, and pooled features, unchanged.

        The layers above the cut act on each position alone until the global average, so the
        mean over a random subset of positions is an unbiased estimate of the pooled feature.
        """
        stored = self.config.stored_shape(x.shape[1:])
        if stored == x.shape[1:]:
            return x
        n, h, w, ch = x.shape
        order = self.rng.random((n, h * w)).argsort(1)[:, : stored[1]]
        return np.take_along_axis(x.reshape(n, h * w, ch), order[..., None], 1)[:, None]

    def _step(self, xb: np.ndarray, yb: np.ndarray, sgd: SGD, latent_sgd: SGD) -> np.ndarray:
        """One SGD step on a minibatch through every trained layer; returns its pooled features
        (a fresh array that the step reads but never writes)."""
        feats = self._features(xb, train=self.config.train_latent_layers)
        dfeat = self._output_step(feats, yb, sgd, input_grad=bool(self._trainable()))
        if self._trainable():
            for layer in reversed(self.latent):
                dfeat = layer.backward(dfeat)
        self._update_latent(latent_sgd)
        return feats

    def _update_latent(self, latent_sgd: SGD) -> None:
        """The SGD step of the trained latent layers, once their gradients are in."""
        latent_sgd.step(self._trainable())

    def _output_step(
        self, feats: np.ndarray, yb: np.ndarray, sgd: SGD, input_grad: bool
    ) -> np.ndarray:
        """Forward, backward and SGD step of the output layer; returns the features' gradient
        (empty when ``input_grad`` is off: no trained layer below needs it)."""
        logits = self.output.forward(feats, train=True)
        _, dlogits = softmax_cross_entropy(logits, yb)
        if self._loss_weights is not None:
            dlogits *= self._loss_weights[yb][:, None]
        self.output.input_grad = input_grad
        dfeat = self.output.backward(dlogits)
        sgd.step([self.output])
        return dfeat

    @staticmethod
    def _output_flops(n: int, slots: int) -> int:
        """FLOPs of the output layer's forward on ``n`` patterns (its two gradients cost the same
        each)."""
        return 2 * n * POOL_CHANNELS * slots

    def _train_flops(self, shape: tuple[int, ...], slots: int) -> int:
        """Matmul FLOPs of one training step: the output layer's forward and weight gradient,
        plus its input gradient when the latent layers train; the conv_head's forward, plus its
        weight gradient when trained (its input is frozen, so it has no input gradient)."""
        out = self._output_flops(shape[0], slots)
        if self.config.depth == "pool":
            return 2 * out
        hw = shape[1] * shape[2]
        conv = 2 * shape[0] * hw * LATENT_CHANNELS * POOL_CHANNELS
        return 2 * conv + 3 * out if self.config.train_latent_layers else conv + 2 * out

    # ---------------------------------------------------------------------------- predicting
    def decision_function(self, latents: np.ndarray, chunk: int = 128) -> np.ndarray:
        """Logits over ``classes_`` (forgotten classes dropped), in chunks of ``chunk`` patterns
        (bounding the activations in memory: about 10 MB per chunk of 128 at 128 px)."""
        return self._outputs(latents, chunk)[0]

    def novelty(self, latents: np.ndarray) -> np.ndarray:
        """How unlike every taught class each pattern looks: minus its largest output-layer
        (CWR*) logit, before any other head is added. Higher is more novel; a pattern is
        flagged unknown above ``config.novelty_threshold``.

        Chosen by measurement (``experiments/results/openset_probe.md``): on the dev streams it
        separated never-taught classes from taught ones as well as a nearest-neighbour distance
        to the replay memory and better than the softmax confidence or a Mahalanobis distance
        on the Gaussian head's features, and it costs a maximum over the logits prediction
        already computes. It follows the latent layers as they learn, since it is read off
        the network that predicts."""
        return self._outputs(latents)[1]

    def _outputs(self, latents: np.ndarray, chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Logits over ``classes_`` and the novelty of each pattern, in one pass."""
        if len(self.labels) == 0:
            raise NotFittedError("the learner has not learned any class yet: call partial_fit")
        x = self._check_input(latents)
        live = self.labels.transform(self.labels.labels)
        w = self.cw[:, live]
        parts = [self._chunk_outputs(x[i : i + chunk], w, live) for i in range(0, len(x), chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _chunk_outputs(
        self, x: np.ndarray, w: np.ndarray, live: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A chunk's logits (its pooled features times the live columns ``w`` of ``cw``, plus
        what :meth:`_add_heads` adds) and its novelty (minus the largest of the former)."""
        logits: np.ndarray = self._features(x, train=False) @ w
        return self._add_heads(x, logits, live), novelty_from_logits(logits)

    def _add_heads(self, x: np.ndarray, logits: np.ndarray, live: np.ndarray) -> np.ndarray:
        """The output layer's ``logits`` of a chunk ``x``, plus what other heads add (none)."""
        return logits

    @property
    def predict_flops(self) -> int:
        """FLOPs to classify one frame alone (``predict`` on a batch of one, as the device does)
        with the current state, counted analytically: at depth ``latent`` the layers up to the
        pool (:func:`latent_layers_flops`) on a latent of the shape last learned (the whole
        latent: prediction uses every position), then the output layer over the live classes
        (``2 * 1280`` a class; the argmax is not counted). 0 before the first batch; a
        checkpoint from before ``pattern_shape`` was saved counts its latent layers from its
        next batch on.

        >>> LatentNetwork(depth="latent").predict_flops  # nothing learned: nothing to classify
        0
        """
        flops = self._output_flops(1, len(self.labels))
        if self.config.depth == "latent" and self.pattern_shape is not None:
            flops += latent_layers_flops(self.pattern_shape[0] * self.pattern_shape[1])
        return flops

    def predict_proba(self, latents: np.ndarray) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        return softmax(self.decision_function(latents))

    def predict(self, latents: np.ndarray) -> list[Label]:
        """The most likely known label of each pattern."""
        return self.labels.inverse(self._live_index(self.decision_function(latents).argmax(1)))

    def predict_with_confidence(
        self, latents: np.ndarray
    ) -> tuple[list[Label], np.ndarray, np.ndarray]:
        """Labels, their probability, and an ``unknown`` mask: probability below
        ``config.unknown_threshold`` or :meth:`novelty` above ``config.novelty_threshold``."""
        logits, novelty = self._outputs(latents)
        p = softmax(logits)
        best = p.argmax(1)
        conf = p[np.arange(len(p)), best]
        unknown = conf < self.config.unknown_threshold
        if self.config.novelty_threshold is not None:
            unknown |= novelty > self.config.novelty_threshold
        return self.labels.inverse(self._live_index(best)), conf, unknown

    def calibrate_unknown(self, latents: np.ndarray, accept: float = 0.95) -> float:
        """Set ``config.novelty_threshold`` so that ``accept`` of these known-class patterns
        pass, and return it. Patterns the learner was trained on (its replay memory) look more
        familiar than new views of the same classes, so :meth:`calibrate_unknown_on_teaching`
        is the better source when it has scores."""
        return self._set_novelty_threshold(self.novelty(latents), accept)

    def calibrate_unknown_on_teaching(self, accept: float = 0.95) -> float | None:
        """Set ``config.novelty_threshold`` from the novelty of taught patterns scored before
        they were learned, so that ``accept`` of such views pass; return it, or None (nothing
        changed) while fewer than :data:`MIN_CALIBRATION` scores are kept.

        ``partial_fit`` scores up to :data:`NOVELTY_PROBES` patterns of each batch whose class
        was already known, before learning them: new views of taught classes, which is what the
        threshold must let pass. The newest :data:`NOVELTY_WINDOW` scores are kept (with their
        class, so ``forget`` drops a class's), and are saved in checkpoints."""
        if len(self.novelty_scores) < MIN_CALIBRATION:
            return None
        return self._set_novelty_threshold(self.novelty_scores, accept)

    def _set_novelty_threshold(self, scores: np.ndarray, accept: float) -> float:
        """The ``accept`` quantile of ``scores`` as the threshold; ``accept`` 1 removes it
        (nothing is unknown by novelty) and returns inf."""
        if not 0 < accept <= 1:
            raise ValueError(f"accept must be in (0, 1], got {accept}")
        if accept == 1:
            self.config = replace(self.config, novelty_threshold=None)
            return math.inf
        threshold = float(np.quantile(scores.astype(np.float64), accept))
        self.config = replace(self.config, novelty_threshold=threshold)
        return threshold

    def _probe_novelty(self, x: np.ndarray, labels: Sequence[Label]) -> int:
        """Before a batch is learned: keep the novelty of up to :data:`NOVELTY_PROBES` of its
        patterns whose class is already known (evenly spaced, so no random draw changes what
        the learner trains on); return the FLOPs spent."""
        if len(self.labels) == 0:
            return 0
        known = set(self.labels.labels)
        rows = np.flatnonzero([label in known for label in labels])
        if len(rows) == 0:
            return 0
        rows = rows[np.linspace(0, len(rows) - 1, min(NOVELTY_PROBES, len(rows))).astype(int)]
        scores = self.novelty(x[rows]).astype(np.float32)
        classes = self.labels.transform([labels[i] for i in rows])
        self.novelty_scores = np.concatenate([self.novelty_scores, scores])[-NOVELTY_WINDOW:]
        self.novelty_classes = np.concatenate([self.novelty_classes, classes])[-NOVELTY_WINDOW:]
        return len(rows) * self.predict_flops

    def _live_index(self, columns: np.ndarray) -> np.ndarray:
        live: np.ndarray = self.labels.transform(self.labels.labels)[columns]
        return live

    # ----------------------------------------------------------------------------- forgetting
    def forget(self, label: object) -> None:
        """Drop a class: its output weights and its counts."""
        index = self.labels.remove(label)
        self.cw[:, index] = 0.0
        self.past[index] = 0
        keep = self.novelty_classes != index
        self.novelty_scores, self.novelty_classes = (
            self.novelty_scores[keep],
            self.novelty_classes[keep],
        )

    def rename(self, old: object, new: object) -> None:
        """Call class ``old`` ``new``: weights, counts, replay and novelty scores are kept by
        class index, so only the name changes (:meth:`LabelMap.rename`)."""
        self.labels.rename(old, new)

    # ------------------------------------------------------------------------------- footprint
    @property
    def nbytes(self) -> int:
        """Bytes held by the network's arrays (output weights and counts, latent layers)."""
        arrays: list[np.ndarray] = [self.cw, self.past]
        for layer in self.latent:
            arrays += list(layer.state_dict().values())
        return sum(a.nbytes for a in arrays)

    # --------------------------------------------------------------------------- checkpoints
    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the whole state atomically (see :mod:`edge_cl.learner.checkpoint`)."""
        arrays: dict[str, np.ndarray] = {
            "cw": self.cw,
            "past": self.past,
            "novelty.scores": self.novelty_scores,
            "novelty.classes": self.novelty_classes,
        }
        for i, layer in enumerate(self.latent):
            for name, a in layer.state_dict().items():
                arrays[f"latent.{i}.{name}"] = a
        extra_arrays, extra_meta = self._extra_state()
        arrays.update(extra_arrays)
        meta = {
            "kind": self.kind,
            "extractor_sha256": self.extractor_sha256,
            "config": asdict(self.config),
            "labels": self.labels.state_dict(),
            "batches_seen": self.batches_seen,
            "rng": self.rng.bit_generator.state,
            "total_flops": self.total_flops,
            "pattern_shape": None if self.pattern_shape is None else list(self.pattern_shape),
            **extra_meta,
        }
        return save_state(path, meta, arrays)

    def _extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays and metadata a subclass adds to its checkpoint."""
        return {}, {}

    def _load_extra(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_extra_state` saved (raise ValueError if it does not fit)."""

    @classmethod
    def load(cls, path: str | os.PathLike[str], extractor_sha256: str | None = None) -> Self:
        """A new learner from a checkpoint; ``CheckpointError`` if it is unusable.

        Pass the current extractor's sha256 to refuse a checkpoint made with another extractor.
        """
        meta, arrays = load_state(Path(path), kind=cls.kind, extractor_sha256=extractor_sha256)
        try:
            names = {f.name for f in fields(AR1Config)}
            # older checkpoints: every position, no Gaussian head (or one on the mean alone),
            # unweighted loss
            stored = {
                "latent_positions": None,
                "gaussian_head": False,
                "gaussian_features": "mean",
                "balanced_loss": False,
                **meta["config"],
            }
            config = AR1Config(**{k: v for k, v in stored.items() if k in names})
            learner = cls(extractor_sha256=meta["extractor_sha256"], config=config)
            learner.labels = LabelMap.from_state_dict(meta["labels"])
            learner.batches_seen = int(meta["batches_seen"])
            learner.rng.bit_generator.state = meta["rng"]
            learner.total_flops = int(meta["total_flops"])
            shape = meta.get("pattern_shape")  # None in checkpoints from before it was kept
            learner.pattern_shape = None if shape is None else tuple(int(v) for v in shape)
            slots = learner.labels.size
            cw, past = arrays["cw"], arrays["past"]
            if cw.shape != (POOL_CHANNELS, slots) or past.shape != (slots,):
                raise ValueError(
                    f"output weights {cw.shape} and counts {past.shape} do not fit "
                    f"({POOL_CHANNELS}, {slots}) and ({slots},) for its {slots} label slots"
                )
            learner.cw = cw.astype(np.float32)
            learner.past = past.astype(np.int64)
            learner.output = Linear(POOL_CHANNELS, learner.cw.shape[1], weight=learner.cw.copy())
            for i, layer in enumerate(learner.latent):
                prefix = f"latent.{i}."
                layer.load_state_dict(
                    {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
                )
            scores = arrays.get("novelty.scores", np.zeros(0, np.float32))  # older: none
            classes = arrays.get("novelty.classes", np.zeros(0, np.int64))
            if scores.shape != classes.shape or scores.ndim != 1 or len(scores) > NOVELTY_WINDOW:
                raise ValueError(f"novelty scores {scores.shape} and classes {classes.shape}")
            learner.novelty_scores = scores.astype(np.float32)
            learner.novelty_classes = classes.astype(np.int64)
            learner._load_extra(meta, arrays)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError, OverflowError) as e:
            raise CheckpointError(f"{path} does not hold a usable {cls.kind} state: {e!r}") from e
        return learner
