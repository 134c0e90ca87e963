"""deepiot: compress neural networks for sensing devices with the DeepIoT compressor-critic method."""

from __future__ import annotations

import gymnasium

__version__ = "0.1.0"

# The RL environment, by string entry point: deepiot.env (and torch) is imported only by gymnasium.make.
if "deepiot/Compress-v0" not in gymnasium.registry:
    gymnasium.register(id="deepiot/Compress-v0", entry_point="deepiot.env:CompressEnv")

__all__ = ["compress", "CompressionResult", "__version__"]


def __getattr__(name: str):
    """`deepiot.compress` / `deepiot.CompressionResult`, imported on first use so `import deepiot` stays light."""
    if name in ("compress", "CompressionResult"):
        from deepiot import api

        return getattr(api, name)
    raise AttributeError(f"module 'deepiot' has no attribute {name!r}")
