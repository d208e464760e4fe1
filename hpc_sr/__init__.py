"""hpc_sr: distributed super-resolution of strong gravitational-lensing images (SRResNet / SRGAN)."""

__version__ = "0.1.0"
