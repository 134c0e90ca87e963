"""deepiot: compress neural networks for sensing devices with the DeepIoT compressor-critic method."""

from __future__ import annotations

import gymnasium

__version__ = "0.1.0"

# The RL environment, by string entry point: deepiot.env (and torch) is imported only by gymnasium.make.
if "deepiot/Compress-v0" not in gymnasium.registry:
    gymnasium.register(id="deepiot/Compress-v0", entry_point="deepiot.env:CompressEnv")
