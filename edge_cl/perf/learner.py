"""The learner section: one AR1* update's time and GFLOP/s, head inference, checkpoints.

An update learns N new latents with the replay memory full, replaying all of it (reference
AR1*) or ``replay_per_epoch`` of it (the device default), at each thread count; its GFLOP/s
(``AR1Star.last_update_flops``) is divided by the matmul peak at the same threads.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge_cl.extractor.manifest import Manifest
from edge_cl.learner.ar1 import AR1Star
from edge_cl.learner.config import LATENT_CHANNELS, POOL_CHANNELS, AR1Config
from edge_cl.learner.network import novelty_from_logits
from edge_cl.learner.protocol import Learner, replay_memory
from edge_cl.perf.machine import blas_threads, load_threadpoolctl, of_peak, peak_at, time_call
from edge_cl.perf.settings import Log, PerfSettings


def memory_size(learner: Learner) -> int:
    """Patterns in ``learner``'s replay memory (0 for a learner without one)."""
    memory = replay_memory(learner)
    return len(memory) if memory is not None else 0


LATENT_SHAPES = {"latent": (4, 4, LATENT_CHANNELS), "pool": (POOL_CHANNELS,)}
"""Pattern shapes at 128 px: the latent cut's (4, 4, 320) and the pooled 1280 features."""


def _filled_learner(
    depth: str, settings: PerfSettings, head: dict[str, np.ndarray] | None
) -> AR1Star:
    """An AR1* learner (device defaults) whose replay memory holds ``settings.replay``
    patterns of 10 classes, filled by one cheap 1-epoch update (it is not timed)."""
    from edge_cl.learner.replay import LABEL_DTYPE, Codec

    shape = LATENT_SHAPES[depth]
    config = AR1Config()
    codec = Codec(config.replay_codec, config.stored_shape(shape))
    per_pattern = codec.bytes_per_pattern + LABEL_DTYPE.itemsize
    replay_mb = (settings.replay + 0.5) * per_pattern / 2**20
    learner = AR1Star(head if depth == "latent" else None, depth=depth, replay_mb=replay_mb)
    rng = np.random.default_rng(1)
    x = np.abs(rng.normal(size=(settings.replay, *shape))).astype(np.float32)
    learner.config = replace(learner.config, epochs=1)
    learner.partial_fit(x, [f"c{i % 10}" for i in range(settings.replay)])
    learner.config = replace(learner.config, epochs=settings.epochs)
    assert learner.memory is not None and len(learner.memory) == settings.replay
    return learner


def bench_learner(
    settings: PerfSettings, manifest: Manifest, machine: Mapping[str, Any], log: Log
) -> dict[str, Any]:
    """One incremental update's time and GFLOP/s (ratio to the matmul peak at the same threads)
    for N new latents with a full memory, replaying all of it or ``replay_per_epoch``; head
    inference per frame (``predict_with_confidence``: labels, confidence, unknown), and what of it
    the unknown score takes (:func:`~edge_cl.learner.network.novelty_from_logits` on the same
    frames' logits, timed alone); checkpoint size and save/load time."""
    from edge_cl.extractor.imagenet import head_arrays

    tpc = load_threadpoolctl()
    head = head_arrays(manifest.head())
    rng = np.random.default_rng(2)
    rows: list[dict[str, Any]] = []
    inference: list[dict[str, Any]] = []
    checkpoints: list[dict[str, Any]] = []
    for depth in ("latent", "pool"):
        filled = _filled_learner(depth, settings, head)
        shape = LATENT_SHAPES[depth]
        for threads in settings.threads:
            learner = copy.deepcopy(filled)
            peak = peak_at(machine, threads)
            with tpc.threadpool_limits(threads):
                blas = blas_threads()
                for per_epoch in (None, settings.replay_per_epoch):
                    learner.config = replace(learner.config, replay_per_epoch=per_epoch)
                    for new in settings.news:
                        x = np.abs(rng.normal(size=(new, *shape))).astype(np.float32)
                        labels = [f"c{i % 12}" for i in range(new)]
                        seconds = time_call(
                            partial(learner.partial_fit, x, labels), settings.repeats
                        )
                        gflop = learner.last_update_flops / 1e9
                        memory = memory_size(learner)
                        row = {
                            "threads": threads,
                            "blas_threads": blas,
                            "depth": depth,
                            "new": new,
                            "memory": memory,
                            "replay_per_epoch": per_epoch,
                            "replayed": memory if per_epoch is None else min(per_epoch, memory),
                            "epochs": learner.config.epochs,
                            "latent_epochs": learner.config.latent_epochs,
                            "seconds": seconds,
                            "gflop": gflop,
                            "gflops": gflop / seconds,
                            "peak_gflops": peak,
                            "ratio_to_peak": of_peak(gflop / seconds, peak),
                        }
                        rows.append(row)
                        log(
                            f"update {depth} N={new} + {row['replayed']} replayed, "
                            f"{threads} thread(s): {seconds:.3f} s, {row['gflops']:.1f} GFLOP/s"
                        )
                for batch in (1, 32):
                    x = np.abs(rng.normal(size=(batch, *shape))).astype(np.float32)
                    seconds = time_call(
                        partial(learner.predict_with_confidence, x),
                        settings.repeats,
                        settings.min_seconds,
                    )
                    logits = learner.decision_function(x)
                    score = time_call(
                        partial(novelty_from_logits, logits), settings.repeats, settings.min_seconds
                    )
                    inference.append(
                        {
                            "threads": threads,
                            "depth": depth,
                            "batch": batch,
                            "ms_per_frame": 1e3 * seconds / batch,
                            "unknown_ms_per_frame": 1e3 * score / batch,
                            "unknown_share": score / seconds,
                        }
                    )
        with tempfile.TemporaryDirectory(prefix="edge-cl-perf-") as tmp:
            path = Path(tmp) / "learner.ckpt"
            save = time_call(partial(filled.save, path), settings.repeats)
            load = time_call(partial(AR1Star.load, path), settings.repeats)
            size = path.stat().st_size
        checkpoints.append(
            {
                "depth": depth,
                "memory": memory_size(filled),
                "bytes": size,
                "save_s": save,
                "load_s": load,
            }
        )
        log(f"checkpoint {depth}: {size / 2**20:.2f} MiB, save {save:.3f} s, load {load:.3f} s")
    return {"updates": rows, "inference": inference, "checkpoints": checkpoints}
