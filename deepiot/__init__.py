"""deepiot: compress neural networks for sensing devices with the DeepIoT compressor-critic method."""

from __future__ import annotations

__version__ = "0.1.0"
