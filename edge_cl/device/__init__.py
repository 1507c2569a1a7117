"""The device side of edge_cl: ``edge-cl run``, ``edge-cl demo`` and ``edge-cl ctl``.

- :mod:`~edge_cl.device.config`: ``DeviceConfig`` and its TOML file with ``--set`` overrides.
- :mod:`~edge_cl.device.classifier`: frame -> extractor -> latent -> learner -> verdict.
- :mod:`~edge_cl.device.worker`: learning in the background on a copy, swapped in whole.
- :mod:`~edge_cl.device.control`: the Unix-socket JSON-lines control channel and its client.
- :mod:`~edge_cl.device.mcu`: the serial link to the companion MCU, in its own thread.
- :mod:`~edge_cl.device.outputs`: systemd notifications, the MJPEG preview.
- :mod:`~edge_cl.device.loop`: ``DeviceLoop``, which runs them together.
- :mod:`~edge_cl.device.demo`: the whole device in one process, with a synthetic scene.
- :mod:`~edge_cl.device.cli`: the argparse wiring.
"""
