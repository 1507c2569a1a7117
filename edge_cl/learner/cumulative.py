"""Cumulative retraining: the "retrain and redeploy" reference continual learners are measured
against.

It keeps every latent it is given (float32) and, after every batch, resets the network of
:mod:`edge_cl.learner.network` to its pretrained starting point and trains it on all of them,
i.i.d. shuffled, with the SGD settings of the references (``BASELINE_SETTINGS``): no CWR*, no
replay, the latent layers trained in every epoch on every position. Its compute and memory grow
with the stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_cl.learner.config import BASELINE_SETTINGS, POOL_CHANNELS, AR1Config
from edge_cl.learner.labels import LabelMap
from edge_cl.learner.layers import Linear
from edge_cl.learner.network import LatentNetwork
from edge_cl.learner.protocol import check_labels

if TYPE_CHECKING:
    from typing import Self


class Cumulative(LatentNetwork):
    """Retrains from the pretrained starting point on everything seen so far, after each batch.

    >>> rng = np.random.default_rng(0)
    >>> learner = Cumulative(depth="pool", epochs=2)
    >>> x = rng.normal(size=(20, 1280)).astype(np.float32)
    >>> learner.partial_fit(x, ["a"] * 20).partial_fit(x + 1, ["b"] * 20).classes_
    ['a', 'b']
    """

    kind = "Cumulative"

    def __init__(
        self,
        head: dict[str, np.ndarray] | None = None,
        extractor_sha256: str | None = None,
        config: AR1Config | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(head, extractor_sha256, config, **overrides)
        self._head = head
        self.seen_x: list[np.ndarray] = []
        self.seen_y: list[np.ndarray] = []

    @classmethod
    def default_config(cls) -> AR1Config:
        config = AR1Config(
            cwr=False, replay_mb=0.0, latent_epochs=None, latent_positions=None, minibatch=32
        )
        return replace(config, **BASELINE_SETTINGS)

    def partial_fit(self, latents: np.ndarray, labels: Sequence[object]) -> Self:
        """Store the batch, then retrain from scratch on all stored patterns."""
        self.add(latents, labels)
        self.retrain()
        return self

    def add(self, latents: np.ndarray, labels: Sequence[object]) -> None:
        """Store a batch without retraining (the study retrains only where it evaluates)."""
        x = self._check_input(latents)
        labels = check_labels(labels, len(x))
        LabelMap.from_state_dict(self.labels.state_dict()).fit(labels)
        self.seen_x.append(x.copy())
        self.seen_y.append(self.labels.fit(labels))
        self.pattern_shape = tuple(x.shape[1:])
        self.batches_seen += 1
        self._grow(self.labels.size)

    def retrain_flops(self) -> int:
        """FLOPs of one retrain on everything stored now (epochs x all patterns)."""
        if not self.seen_x:
            return 0
        shape = (sum(len(x) for x in self.seen_x), *self.seen_x[0].shape[1:])
        return self.config.epochs * self._train_flops(shape, self.labels.size)

    def retrain(self) -> None:
        """Reset the network to its starting point and train on everything seen so far.

        Its shuffles come from a generator seeded by ``(config.seed, batches_seen)``, not from
        the learner's running one, so a retrain depends on the data so far and nothing else:
        retraining after every batch (``partial_fit``) or only where the study evaluates gives
        the same network at the same batch, whatever the evaluation points.
        """
        if not self.seen_x:
            return
        self.rng = np.random.default_rng([self.config.seed, self.batches_seen])
        x, y = np.concatenate(self.seen_x), np.concatenate(self.seen_y)
        self.latent = self._latent_layers(self._head) if self.config.depth == "latent" else []
        slots = self.labels.size
        self.output = Linear(
            POOL_CHANNELS, slots, weight=np.zeros((POOL_CHANNELS, slots), np.float32)
        )
        self._set_normalisation(first=True)
        flops = self._train(x, y, None, np.zeros(0, np.int64), self.config.lr_first)
        self.cw = self.output.params["weight"].copy()
        self.past = np.bincount(y, minlength=slots).astype(np.int64)
        self.last_update_flops = flops
        self.total_flops += flops

    def forget(self, label: object) -> None:
        """Drop a class and every stored pattern of it (the next retrain no longer sees it)."""
        index = self.labels.transform([label])[0]
        super().forget(label)
        keep = [yy != index for yy in self.seen_y]
        self.seen_x = [xx[k] for xx, k in zip(self.seen_x, keep, strict=True)]
        self.seen_y = [yy[k] for yy, k in zip(self.seen_y, keep, strict=True)]

    @property
    def nbytes(self) -> int:
        """Weights plus every stored latent (what cumulative retraining must keep)."""
        return super().nbytes + sum(a.nbytes for a in self.seen_x + self.seen_y)

    def _extra_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays = {f"init.{k}": v for k, v in (self._head or {}).items()}
        if self.seen_x:
            arrays["seen.x"] = np.concatenate(self.seen_x)
            arrays["seen.y"] = np.concatenate(self.seen_y)
        return arrays, {}

    def _load_extra(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        head = {k[5:]: v for k, v in arrays.items() if k.startswith("init.")}
        self._head = head or None
        if "seen.x" in arrays:
            self.seen_x, self.seen_y = [arrays["seen.x"]], [arrays["seen.y"].astype(np.int64)]
