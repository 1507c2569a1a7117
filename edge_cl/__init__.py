"""edge_cl: on-device continual learning for edge cameras.

The data path: frame -> :mod:`edge_cl.preprocess` -> :mod:`edge_cl.extractor` (frozen extractor,
ONNX Runtime or LiteRT) -> latent -> learner head -> prediction.
"""

__version__ = "0.1.0"
