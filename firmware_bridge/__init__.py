"""The boundary to the hardware: camera sources and the serial protocol to the companion MCU."""
