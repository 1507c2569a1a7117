"""The pretrained ImageNet classifier, composed as extractor -> numpy head.

This is how an exported extractor is checked to really carry its ImageNet weights: the layers
above the cut (shipped as ``lite0_head.npz``) run in numpy on the extractor's output, and the
composed classifier is scored on real photographs (one per ImageNet class).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_cl.errors import FrameError, ManifestError
from edge_cl.extractor import Extractor
from edge_cl.extractor.manifest import Artifact
from edge_cl.images import read_image

HEAD_KEYS = ("conv_head.weight", "bn.gamma", "bn.beta", "bn.mean", "bn.var", "bn.eps")


def head_arrays(artifact: Artifact) -> dict[str, np.ndarray]:
    """The raw arrays of the verified head ``.npz`` (conv_head weight (1280, 320), BN, FC)."""
    try:
        with np.load(artifact.verify()) as z:
            arrays = {k: z[k] for k in (*HEAD_KEYS, "fc.weight", "fc.bias")}
    except (KeyError, ValueError, OSError) as e:
        raise ManifestError(f"{artifact.path} is not a valid head file: {e}") from e
    return arrays


@dataclass(frozen=True)
class PretrainedHead:
    """conv_head 1x1 (320->1280) + BatchNorm + ReLU6 + global average pool, then the FC.

    >>> from edge_cl.extractor.manifest import Manifest
    >>> head = PretrainedHead.load(Manifest.load().head())
    >>> head.logits(np.zeros((1, 4, 4, 320), np.float32)).shape
    (1, 1000)
    """

    conv: np.ndarray  # (320, 1280): channels-last matmul weight
    scale: np.ndarray  # (1280,) BatchNorm folded: gamma / sqrt(var + eps)
    shift: np.ndarray  # (1280,) beta - mean * scale
    fc_weight: np.ndarray  # (1280, 1000)
    fc_bias: np.ndarray  # (1000,)

    @classmethod
    def load(cls, artifact: Artifact) -> PretrainedHead:
        """Read the head from its verified ``.npz`` artifact."""
        return cls.from_arrays(head_arrays(artifact))

    @classmethod
    def from_arrays(cls, z: dict[str, np.ndarray]) -> PretrainedHead:
        """Build from the raw arrays of :func:`head_arrays`."""
        scale = z["bn.gamma"] / np.sqrt(z["bn.var"] + z["bn.eps"])
        return cls(
            conv=np.ascontiguousarray(z["conv_head.weight"].T),
            scale=scale.astype(np.float32),
            shift=(z["bn.beta"] - z["bn.mean"] * scale).astype(np.float32),
            fc_weight=np.ascontiguousarray(z["fc.weight"].T),
            fc_bias=z["fc.bias"],
        )

    def pool(self, latent: np.ndarray) -> np.ndarray:
        """``(N, h, w, 320)`` latents -> ``(N, 1280)`` pooled features."""
        n, h, w, c = latent.shape
        z = latent.reshape(n * h * w, c) @ self.conv
        z = np.clip(z * self.scale + self.shift, 0.0, 6.0)
        pooled: np.ndarray = z.reshape(n, h * w, -1).mean(axis=1)
        return pooled

    def logits(self, features: np.ndarray) -> np.ndarray:
        """ImageNet logits from latents ``(N, h, w, 320)`` or pooled features ``(N, 1280)``."""
        pooled = self.pool(features) if features.ndim == 4 else features
        out: np.ndarray = pooled @ self.fc_weight + self.fc_bias
        return out


def imagenet_files(folder: str | os.PathLike[str]) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files of an ``imagenet-samples/images`` folder, their class indices, and class names.

    A class index is the position of the file's wnid in the sorted list of wnids.
    """
    files = sorted(Path(folder).glob("*.JPEG"))
    if not files:
        raise FrameError(f"no *.JPEG files in {folder}")
    wnids = sorted({f.name.split("_", 1)[0] for f in files})
    index = {w: i for i, w in enumerate(wnids)}
    labels = np.array([index[f.name.split("_", 1)[0]] for f in files])
    names: dict[int, str] = {}
    for f, y in zip(files, labels, strict=True):
        names.setdefault(int(y), f.stem.split("_", 1)[1] if "_" in f.stem else f.stem)
    return files, labels, [names.get(i, wnids[i]) for i in range(len(wnids))]


def topk_hits(
    extractor: Extractor,
    head: PretrainedHead,
    files: Sequence[Path],
    labels: np.ndarray,
    batch: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-file top-1 and top-5 hits (boolean arrays) of extractor -> head."""
    top5 = []
    for i in range(0, len(files), batch):
        frames = [read_image(f) for f in files[i : i + batch]]
        top5.append(np.argsort(-head.logits(extractor.frames(frames)), axis=1)[:, :5])
    top = np.concatenate(top5)
    return top[:, 0] == labels, (top == labels[:, None]).any(axis=1)
