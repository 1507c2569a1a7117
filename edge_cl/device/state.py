"""What the device is doing, in the device's own terms (the MCU's STATUS byte is mapped from it
in :mod:`~edge_cl.device.mcu`, where the frame is built, so the learner does not depend on the
serial protocol)."""

from __future__ import annotations

from enum import Enum


class DeviceState(Enum):
    """The device's state: collecting a teach, training a copy of the model, writing the
    checkpoint, or none of these. The value is the name the log and ``status`` show.

    >>> DeviceState.LEARNING.value, DeviceState("teaching")
    ('learning', <DeviceState.TEACHING: 'teaching'>)
    """

    IDLE = "idle"
    TEACHING = "teaching"
    LEARNING = "learning"
    SAVING = "saving"
