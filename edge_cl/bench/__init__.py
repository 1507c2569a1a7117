"""The data side of the lifecycle study: CORe50-format filelists, scenarios, latent cache.

- :mod:`edge_cl.bench.filelists`: the interchange format (CORe50's own filelists) and
  :class:`~edge_cl.bench.filelists.Scenario`.
- :mod:`edge_cl.bench.scenarios`: generators of CORe50-like streams on COIL-100 and CIFAR-10,
  plain and hard (novel viewpoints, session conditions, clutter).
- :mod:`edge_cl.bench.render`: the pure image transforms behind the hard variants.
- :mod:`edge_cl.bench.latents`: latents extracted once per model and image, cached on disk.
"""
