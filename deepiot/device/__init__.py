"""Device-aware cost: profile a runtime on a device, fit an execution-time model, price structures by it.

`profile_device` (CLI `deepiot-profile`) times single layers and sliced reference models (warm-up, repeats,
medians) and fits `LatencyModel`, an interpretable piecewise-linear model per layer kind (FastDeepIoT's
form); `attach_latency_model` + the registered cost `latency` let the search price structures by it.
`ort_profile.py` times a suite folder on a device with only numpy + onnxruntime. `host.py` names the CPU a
run was made on (its result records it, and tables that mix machines say so).
"""

from __future__ import annotations

from deepiot.device.cost import LatencyPredictor, attach_latency_model, latency_cost, predict_latency
from deepiot.device.latency_model import KindModel, LatencyModel, fit_quality, spearman
from deepiot.device.layers import LayerSpec, layer_features, layer_inventory
from deepiot.device.profile import ProfileConfig, ProfileError, fit_profile, load_profile, profile_device

__all__ = [
    "KindModel",
    "LatencyModel",
    "LatencyPredictor",
    "LayerSpec",
    "ProfileConfig",
    "ProfileError",
    "attach_latency_model",
    "fit_profile",
    "fit_quality",
    "latency_cost",
    "layer_features",
    "layer_inventory",
    "load_profile",
    "predict_latency",
    "profile_device",
    "spearman",
]
