"""AR1* with latent replay (Lomonaco, Maltoni, Pellegrini), in pure numpy.

The extractor below the latent cut is frozen. Above it AR1* trains the network of
:mod:`edge_cl.learner.network` (conv_head -> Batch Renormalization -> ReLU6 -> pool -> output at
depth ``"latent"``; the output layer alone at depth ``"pool"``, pure CWR*), per incremental batch.

CWR* on the output layer: consolidated weights ``cw`` and per-class pattern counts ``past``. Before
a batch the output layer is zeroed and ``cw`` loaded for the classes present (new + replayed);
after it, for each such class ``w = W[c] - mean(W[present])`` and
``cw[c] = (cw[c] * a + w) / (a + 1)`` with ``a = sqrt(past[c] / cur[c])`` (or ``cw[c] = w`` for a
new class); inference uses ``cw``. Latent replay: each minibatch mixes new patterns with patterns
from a bounded, compressed memory (:class:`~edge_cl.learner.replay.ReplayMemory`). Optional
Synaptic Intelligence on the trainable latent layers. Batch Renormalization keeps the running
statistics usable on long streams of small non-i.i.d. batches. By default the latent layers
train in the first of the four epochs and the output layer in all of them
(``AR1Config.latent_epochs``), on 8 random spatial positions of each latent, which is also all
the replay memory keeps of a pattern (``AR1Config.latent_positions``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_cl.errors import FrameError
from edge_cl.learner.config import (
    BASELINE_SETTINGS,
    LATENT_CHANNELS,
    POOL_CHANNELS,
    SUMMARIES,
    AR1Config,
)
from edge_cl.learner.gaussian import ClassGaussians
from edge_cl.learner.labels import LabelMap
from edge_cl.learner.layers import SGD
from edge_cl.learner.network import LatentNetwork
from edge_cl.learner.protocol import check_labels
from edge_cl.learner.replay import ReplayMemory

if TYPE_CHECKING:
    from typing import Self


def latent_summary(latents: np.ndarray, features: str = "mean_std") -> np.ndarray:
    """Each latent ``(N, h, w, C)`` summarised over its ``h * w`` positions: the mean of each
    channel (``"mean"``, ``(N, C)``), or the mean then the standard deviation
    (``"mean_std"``, ``(N, 2C)``): what AR1*'s Gaussian head sees, below the layers that train.

    >>> z = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    >>> latent_summary(z, "mean").tolist(), latent_summary(z).tolist()
    ([[3.0, 4.0]], [[3.0, 4.0, 2.2360680103302, 2.2360680103302]])
    """
    mean: np.ndarray = latents.mean(axis=(1, 2))
    if features == "mean":
        return mean
    return np.concatenate([mean, latents.std(axis=(1, 2))], axis=1)


def summary_flops(positions: int, features: str = "mean_std") -> int:
    """FLOPs of :func:`latent_summary` on one latent of ``positions`` positions: an addition
    an element for the mean (as the pool counts it), three more (subtract the mean, square,
    add) for the standard deviation.

    >>> summary_flops(16, "mean"), summary_flops(16)
    (5120, 20480)
    """
    per_element = 1 if features == "mean" else 4
    return positions * LATENT_CHANNELS * per_element


class AR1Star(LatentNetwork):
    """AR1* continual learner: ``partial_fit`` one small batch at a time, ``predict`` any time.

    Arguments as for :class:`~edge_cl.learner.network.LatentNetwork`; on top of its network it
    keeps CWR*'s consolidated weights, the replay memory, SI's importances and the Gaussian head.

    >>> rng = np.random.default_rng(0)
    >>> learner = AR1Star(depth="pool", epochs=2, replay_mb=1)
    >>> x = rng.normal(size=(40, 1280)).astype(np.float32)
    >>> x[:20] += 1.0
    >>> learner = learner.partial_fit(x, ["cup"] * 20 + ["pen"] * 20)
    >>> learner.predict(x[:3]), learner.classes_
    (['cup', 'cup', 'cup'], ['cup', 'pen'])
    """

    kind = "AR1Star"

    def __init__(
        self,
        head: dict[str, np.ndarray] | None = None,
        extractor_sha256: str | None = None,
        config: AR1Config | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(head, extractor_sha256, config, **overrides)
        self.memory: ReplayMemory | None = None
        if self.config.replay_mb > 0:
            self.memory = ReplayMemory(
                int(self.config.replay_mb * 2**20),
                self.config.replay_codec,
                self.config.replay_policy,
                seed=self.config.seed,
                grid=self.config.replay_grid,
            )
        self.gaussians: ClassGaussians | None = None
        if self.config.gaussian_head:
            latent = self.config.depth == "latent"
            dim = LATENT_CHANNELS * SUMMARIES[self.config.gaussian_features]
            self.gaussians = ClassGaussians(dim if latent else POOL_CHANNELS)
        self.si_importance: dict[str, np.ndarray] = {}
        self.si_anchor: dict[str, np.ndarray] = {}

    # ---------------------------------------------------------------------------- learning
    def partial_fit(self, latents: np.ndarray, labels: Sequence[object]) -> Self:
        """Learn one incremental batch (new classes may appear in any batch)."""
        x = self._check_input(latents)
        labels = check_labels(labels, len(x))
        stored = self.config.stored_shape(x.shape[1:])
        if self.memory is not None and self.memory.shape not in (None, stored):
            raise FrameError(
                f"latents of shape {x.shape[1:]} train as {stored} (latent_positions="
                f"{self.config.latent_positions}), but the replay memory holds patterns of shape "
                f"{self.memory.shape}: keep the resolution and latent_positions it was filled with"
            )
        probe = LabelMap.from_state_dict(self.labels.state_dict())
        probe.fit(labels)  # validates every label before anything changes
        probe_flops = self._probe_novelty(x, labels)
        y = self.labels.fit(labels)
        self.pattern_shape = tuple(x.shape[1:])
        self._grow(self.labels.size)
        train_x, train_y = x, y
        cap = self.config.new_per_update
        if cap is not None and len(x) > cap:
            chosen = np.sort(self.rng.choice(len(x), cap, replace=False))
            train_x, train_y = x[chosen], y[chosen]
        replay_x, replay_y = self._replay_set()
        present = np.unique(np.concatenate([train_y, replay_y]))
        cur = np.bincount(np.concatenate([train_y, replay_y]), minlength=self.labels.size)
        first = self.batches_seen == 0
        self._begin_batch(present, first)
        self._loss_weights = self._class_weights(cur) if self.config.balanced_loss else None
        gauss_flops = 0
        if self.gaussians is not None:
            self.gaussians.partial_fit(self._summary(x), y)
            gauss_flops = ClassGaussians.update_flops(len(x), self.gaussians.dim)
        flops = (
            probe_flops
            + gauss_flops
            + self._train(
                train_x,
                train_y,
                replay_x,
                replay_y,
                self.config.lr_first if first else self.config.lr,
            )
        )
        self._end_batch(present, cur)
        if self.memory is not None:
            self.memory.add(self._positions(x), y, self.batches_seen)
        self.batches_seen += 1
        self.last_update_flops = flops
        self.total_flops += flops
        return self

    @staticmethod
    def _class_weights(cur: np.ndarray) -> np.ndarray:
        """Per-class loss weights that give every class in the batch the same total weight,
        scaled so that the mean weight over the batch's patterns is 1."""
        weights = np.zeros(len(cur), np.float32)
        present = cur > 0
        weights[present] = cur.sum() / (present.sum() * cur[present])
        return weights

    def _summary(self, x: np.ndarray) -> np.ndarray:
        """What the Gaussian head sees of each pattern: :func:`latent_summary` of a latent (its
        pooled features at depth ``pool``)."""
        return latent_summary(x, self.config.gaussian_features) if x.ndim == 4 else x

    def _replay_set(self) -> tuple[np.ndarray | None, np.ndarray]:
        if self.memory is None or len(self.memory) == 0:
            return None, np.zeros(0, np.int64)
        n = len(self.memory)
        per_epoch = self.config.replay_per_epoch
        if per_epoch is None or per_epoch >= n:
            return self.memory.all()
        return self.memory.sample(per_epoch)

    def _begin_batch(self, present: np.ndarray, first: bool) -> None:
        """CWR*: the output layer starts from ``cw`` for the classes present, zero elsewhere."""
        if self.config.cwr:
            w = np.zeros_like(self.cw)
            w[:, present] = self.cw[:, present]
            self.output.params["weight"][...] = w
        self._set_normalisation(first)
        if self.config.si_lambda > 0:
            self._si_start = {k: p.copy() for k, p in self._si_params().items()}
            self._si_path = {k: np.zeros_like(p) for k, p in self._si_start.items()}

    def _end_batch(self, present: np.ndarray, cur: np.ndarray) -> None:
        if self.config.cwr:
            w = self.output.params["weight"]
            g = float(w[:, present].mean())
            for cls in present:
                centred = w[:, cls] - g
                if self.past[cls] > 0:
                    a = np.sqrt(self.past[cls] / cur[cls])
                    self.cw[:, cls] = (self.cw[:, cls] * a + centred) / (a + 1)
                else:
                    self.cw[:, cls] = centred
        else:
            self.cw = self.output.params["weight"].copy()
        self.past += cur.astype(np.int64)
        if self.config.si_lambda > 0:
            self._si_consolidate()

    # --------------------------------------------------------------- synaptic intelligence
    def _si_params(self) -> dict[str, np.ndarray]:
        if not self.config.train_latent_layers:
            return {}
        return {
            f"{i}.{name}": p
            for i, layer in enumerate(self.latent[:2])
            for name, p in layer.params.items()
        }

    def _si_penalty_grads(self) -> None:
        lam = self.config.si_lambda
        for i, layer in enumerate(self.latent[:2]):
            for name, p in layer.params.items():
                key = f"{i}.{name}"
                if key in self.si_importance:
                    layer.grads[name] += lam * self.si_importance[key] * (p - self.si_anchor[key])

    def _si_accumulate(self, before: dict[str, np.ndarray]) -> None:
        for i, layer in enumerate(self.latent[:2]):
            for name, p in layer.params.items():
                key = f"{i}.{name}"
                self._si_path[key] -= layer.grads[name] * (p - before[key])

    def _si_consolidate(self) -> None:
        for key, p in self._si_params().items():
            delta = p - self._si_start[key]
            gain = self._si_path[key] / (delta**2 + 1e-7)
            total = self.si_importance.get(key, np.zeros_like(p)) + gain
            self.si_importance[key] = np.clip(total, 0.0, self.config.si_max_importance)
            self.si_anchor[key] = p.copy()

    def _update_latent(self, latent_sgd: SGD) -> None:
        """The latent layers' step, with SI's penalty added before it and its path integral
        accumulated after it."""
        if self.config.si_lambda <= 0:
            super()._update_latent(latent_sgd)
            return
        self._si_penalty_grads()
        before = {k: v.copy() for k, v in self._si_params().items()}
        super()._update_latent(latent_sgd)
        self._si_accumulate(before)

    # ---------------------------------------------------------------------------- predicting
    def _add_heads(self, x: np.ndarray, logits: np.ndarray, live: np.ndarray) -> np.ndarray:
        """CWR*'s logits, plus the Gaussian head's log-posterior when it is on."""
        if self.gaussians is None:
            return logits
        combined: np.ndarray = logits + self.gaussians.scores(self._summary(x), live)
        return combined

    @property
    def predict_flops(self) -> int:
        """The network's prediction FLOPs (``LatentNetwork.predict_flops``) plus, with the
        Gaussian head on, its scores: the latent's summary (:func:`summary_flops`; at depth
        ``pool`` it scores the pooled features as they are), the product with its cached
        weights (``ClassGaussians.score_flops``) and the sum with the CWR* logits.

        >>> learner = AR1Star(depth="pool", epochs=1, replay_mb=0)
        >>> learner = learner.partial_fit(np.eye(3, 1280, dtype=np.float32), ["a", "b", "c"])
        >>> learner.predict_flops == 2 * 1280 * 3 + (2 * 1280 * 3 + 3) + 3
        True
        """
        flops = super().predict_flops
        k = len(self.labels)
        if self.gaussians is None or k == 0:
            return flops
        if self.config.depth == "latent" and self.pattern_shape is not None:
            positions = self.pattern_shape[0] * self.pattern_shape[1]
            flops += summary_flops(positions, self.config.gaussian_features)
        return flops + ClassGaussians.score_flops(self.gaussians.dim, k) + k

    # ----------------------------------------------------------------------------- forgetting
    def forget(self, label: object) -> None:
        """Drop a class: its CWR* weights, its counts, its replay patterns and statistics."""
        index = self.labels.transform([label])[0]
        super().forget(label)
        if self.memory is not None:
            self.memory.forget(index)
        if self.gaussians is not None:
            self.gaussians.forget(index)

    # ------------------------------------------------------------------------------- footprint
    @property
    def nbytes(self) -> int:
        """Bytes held by the learner's arrays (weights, CWR* state, SI state, Gaussian head,
        replay memory)."""
        si = [*self.si_importance.values(), *self.si_anchor.values()]
        memory = self.memory.nbytes if self.memory is not None else 0
        gaussians = self.gaussians.nbytes if self.gaussians is not None else 0
        return super().nbytes + memory + gaussians + sum(a.nbytes for a in si)

    # --------------------------------------------------------------------------- checkpoints
    def _extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {}
        for key, a in self.si_importance.items():
            arrays[f"si.importance.{key}"] = a
        for key, a in self.si_anchor.items():
            arrays[f"si.anchor.{key}"] = a
        if self.gaussians is not None:
            for key, a in self.gaussians.state_dict().items():
                arrays[f"gauss.{key}"] = a
        memory_meta: dict[str, Any] | None = None
        if self.memory is not None:
            memory_meta = {}
            for name, value in self.memory.state_dict().items():
                if isinstance(value, np.ndarray):
                    arrays[f"replay.{name}"] = value
                else:
                    memory_meta[name] = value
        return arrays, {"replay": memory_meta}

    def _load_extra(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for kind, target in (("importance", self.si_importance), ("anchor", self.si_anchor)):
            prefix = f"si.{kind}."
            target.update({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
        if self.gaussians is not None:
            gaussians = ClassGaussians.from_state_dict(
                {k[6:]: v for k, v in arrays.items() if k.startswith("gauss.")}
            )
            if gaussians.dim != self.gaussians.dim:
                raise ValueError(
                    f"the Gaussian head holds {gaussians.dim}-d statistics, its config "
                    f"makes {self.gaussians.dim}-d ones"
                )
            self.gaussians = gaussians
        if meta["replay"] is not None:
            state = dict(meta["replay"])
            state.update({k[7:]: v for k, v in arrays.items() if k.startswith("replay.")})
            self.memory = ReplayMemory.from_state_dict(state)


class CWRStar(AR1Star):
    """CWR*: only the output layer learns (latent layers stay pretrained), no replay.

    >>> CWRStar(depth="pool").config.replay_mb
    0.0
    """

    kind = "CWRStar"

    @classmethod
    def default_config(cls) -> AR1Config:
        return replace(AR1Config(train_latent_layers=False, replay_mb=0.0), **BASELINE_SETTINGS)


class NaiveFineTune(AR1Star):
    """Naive fine-tuning: plain SGD on each batch, no CWR*, no replay (forgets catastrophically).

    >>> NaiveFineTune(depth="pool").config.cwr
    False
    """

    kind = "NaiveFineTune"

    @classmethod
    def default_config(cls) -> AR1Config:
        return replace(AR1Config(cwr=False, replay_mb=0.0), **BASELINE_SETTINGS)
