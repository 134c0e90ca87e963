"""The `Cost` record shared by the structure layer (modelled cost) and the independent counter."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

CostValue = int | Tensor

# The contract's tables, used by the structure cost and the independent counter alike:
# leaf modules with parameters whose MACs are zero (normalisation, lookups, PReLU) ...
ZERO_MAC_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
    nn.PReLU,
)
# ... and gate blocks per hidden unit of a recurrent module, by its `mode`.
RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class Cost(NamedTuple):
    """Resource cost of one model (or a batch of sampled structures) at batch size 1.

    Fields are ints, or float Tensors [N] when computed for N sampled structures at once.
    Definitions (shared contract): params = Σ numel of parameters; macs = multiply-accumulates of one
    forward pass (Linear in·out per position, ConvNd out·(in/groups)·∏kernel·∏out_spatial,
    LSTM 4·H·(in+H) and GRU 3·H·(in+H) per step per direction; BN/activations/pooling 0);
    activation_bytes = max over leaf-module calls of (input bytes + output bytes), where each layer l of an
    LSTM/GRU module counts as one call of its own: layer l's input sequence + its output sequence + its
    final states h_n[l] (and c_n[l] for LSTM) over all directions (+ its share of an initial state hx), so a
    multi-layer module and the same layers as single-layer modules (a sliced `StackedRNN`) cost alike;
    model_bytes = Σ bytes of state_dict tensors (parameters + buffers).
    """

    params: CostValue
    macs: CostValue
    activation_bytes: CostValue
    model_bytes: CostValue
