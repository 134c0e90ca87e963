"""The DeepIoT compressor: an LSTM that reads the critic's layers as a sequence and outputs keep probabilities.

docs/design.md §2: one LSTM step per compressible group, in forward order. The input of step g is the group's weight
matrix W [rows, size] squeezed to a fixed-size vector v = (aᵀ W) B [d] by two learned matrices; the output is
one keep probability per hidden element, p = sigmoid(h V + c) [size]. Weights are detached, so only the
compressor's own parameters receive its (REINFORCE) gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from deepiot.structure import Structure

GROUP_KINDS = ("linear", "conv", "rnn")


class GroupSpec(NamedTuple):
    """What the compressor needs to know about one group: its name, kind and weight-matrix shape."""

    name: str
    kind: str  # "linear" | "conv" | "rnn"
    rows: int  # fan-in of the weight matrix, incl. the bias row
    size: int  # hidden elements (columns)


def _default_init_keep_prob() -> dict[str, float]:
    # the paper's code: CONV_KEEP_PROB = 0.8 (also used for FC), RNN_KEEP_PROB = 0.5
    return {"linear": 0.8, "conv": 0.8, "rnn": 0.5}


@dataclass(frozen=True)
class CompressorConfig:
    """Size and optimiser of the compressor (defaults: the paper's code, DeepIoT_DeepSense_HHAR.py).

    `input_size` is d, the length of the squeezed per-group vector v = (aᵀW)B; the paper's code uses d = 64,
    the LSTM's width, and so do we. `init_keep_prob` sets each readout's bias so that the first keep
    probabilities are ≈ 0.8 (linear, conv) and 0.5 (rnn), the initial values of the paper's code.
    """

    hidden_size: int = 64
    input_size: int = 64
    lr: float = 1e-3  # RMSProp, as in the paper's code
    init_keep_prob: Mapping[str, float] = field(default_factory=_default_init_keep_prob)

    def __post_init__(self) -> None:
        if self.hidden_size <= 0 or self.input_size <= 0:
            raise ValueError(
                f"compressor.hidden_size and compressor.input_size must be positive, got "
                f"{self.hidden_size} and {self.input_size}."
            )
        if not self.lr > 0:
            raise ValueError(f"compressor.lr must be > 0, got {self.lr}.")
        missing = set(GROUP_KINDS) - set(self.init_keep_prob)
        if missing:
            raise ValueError(
                f"compressor.init_keep_prob needs a value for every kind {GROUP_KINDS}, missing {sorted(missing)}."
            )
        for kind, prob in self.init_keep_prob.items():
            if not 0.0 < prob < 1.0:
                raise ValueError(f"compressor.init_keep_prob[{kind!r}] must be in (0, 1), got {prob}.")


def _truncated_normal(shape: tuple[int, ...], std: float) -> Tensor:
    """The paper's initialiser: truncated normal with std sqrt(2 / (fan_in + fan_out)).

    Drawn on the CPU on purpose (the same start on every device); the module is then moved to its device.
    """
    return nn.init.trunc_normal_(torch.empty(shape), std=std, a=-2 * std, b=2 * std)


class _GroupHead(nn.Module):
    """Per-group parameters: the squeeze vectors a [rows], B [size, d] and the readout V [d_h → size]."""

    def __init__(self, spec: GroupSpec, input_size: int, hidden_size: int, init_keep_prob: float) -> None:
        super().__init__()
        self.row_weights = nn.Parameter(_truncated_normal((spec.rows,), math.sqrt(2.0 / (1 + spec.rows))))
        self.column_weights = nn.Parameter(
            _truncated_normal((spec.size, input_size), math.sqrt(2.0 / (spec.size + input_size)))
        )
        self.readout = nn.Linear(hidden_size, spec.size)
        with torch.no_grad():
            self.readout.weight.copy_(
                _truncated_normal((spec.size, hidden_size), math.sqrt(2.0 / (hidden_size + spec.size)))
            )
            self.readout.bias.fill_(math.log(init_keep_prob / (1.0 - init_keep_prob)))

    def squeeze(self, weight_matrix: Tensor) -> Tensor:
        """v = (aᵀ W) B: [rows, size] → [d]."""
        return (self.row_weights @ weight_matrix) @ self.column_weights  # [rows]·[rows, size]·[size, d] → [d]


class Compressor(nn.Module):
    """One LSTM cell reading the groups in forward order; outputs keep-probability logits per group."""

    def __init__(self, groups: Sequence[GroupSpec], config: CompressorConfig | None = None) -> None:
        super().__init__()
        config = config or CompressorConfig()
        if not groups:
            raise ValueError("Compressor needs at least one compressible group, got none.")
        for spec in groups:
            if spec.kind not in GROUP_KINDS:
                raise ValueError(
                    f"group {spec.name!r} has kind {spec.kind!r}; expected one of {GROUP_KINDS}."
                )
        self.groups = list(groups)
        self.config = config
        self.cell = nn.LSTMCell(config.input_size, config.hidden_size)
        self.heads = nn.ModuleList(
            _GroupHead(spec, config.input_size, config.hidden_size, config.init_keep_prob[spec.kind])
            for spec in self.groups
        )

    @classmethod
    def for_structure(
        cls, structure: Structure, model: nn.Module, config: CompressorConfig | None = None
    ) -> Compressor:
        """Build a compressor for every group of `structure`, sized from the real weight matrices of `model`."""
        specs = [
            GroupSpec(group.name, group.kind, structure.weight_matrix(model, group.name).shape[0], group.size)
            for group in structure.groups
        ]
        return cls(specs, config)

    def forward(self, weight_matrices: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Keep-probability logits {group: [size]} from the current weight matrices {group: [rows, size]}."""
        # [1, d_h]: the paper's zero initial state, on the compressor's device
        hidden = torch.zeros(1, self.config.hidden_size, device=self.cell.weight_ih.device)
        state = (hidden, torch.zeros_like(hidden))
        logits: dict[str, Tensor] = {}
        for spec, head in zip(self.groups, self.heads, strict=True):
            weight = weight_matrices[spec.name].detach()
            if weight.shape != (spec.rows, spec.size):
                raise ValueError(
                    f"weight matrix of group {spec.name!r} has shape {tuple(weight.shape)}, "
                    f"expected ({spec.rows}, {spec.size})."
                )
            state = self.cell(head.squeeze(weight).unsqueeze(0), state)  # input [1, d]
            logits[spec.name] = head.readout(state[0]).squeeze(0)  # [1, d_h] → [size]
        return logits


class MaskDistribution:
    """Independent Bernoulli keep masks with the threshold decay of docs/design.md §2 (p < τ → γ·p).

    Built from logits so that log-probabilities stay finite; `logits` may be [size] (one structure
    distribution) or [N, size] (a batch of them, used to take per-sample gradients).
    """

    def __init__(self, logits: Mapping[str, Tensor], tau: float = 0.0, decay: float = 0.5) -> None:
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"threshold tau must be in [0, 1), got {tau}.")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"threshold decay gamma must be in (0, 1], got {decay}.")
        self.logits = dict(logits)
        self.tau = tau
        self.decay = decay

    def _zero(self) -> Tensor:
        """A scalar 0 on the logits' device, to sum per-group terms into."""
        return next(iter(self.logits.values())).new_zeros(())

    def _below(self, name: str) -> Tensor:
        return torch.sigmoid(self.logits[name].detach()) < self.tau

    def _log_keep_and_drop(self, name: str) -> tuple[Tensor, Tensor]:
        """(log p', log(1 − p')) with p' the decayed keep probability, both stable in the logits."""
        logit = self.logits[name]
        below = self._below(name)
        log_keep = F.logsigmoid(logit) + below * math.log(self.decay)
        # log(1 − γp) for the decayed elements; clamping p at τ (< 1) keeps the unused branch finite
        decayed_drop = torch.log1p(-self.decay * torch.sigmoid(logit).clamp(max=self.tau))
        log_drop = torch.where(below, decayed_drop, F.logsigmoid(-logit))
        return log_keep, log_drop

    @property
    def keep_probs(self) -> dict[str, Tensor]:
        """Decayed keep probabilities p' used for sampling, {group: same shape as its logits}."""
        return {name: self._log_keep_and_drop(name)[0].exp() for name in self.logits}

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Masks {group: [N, size]} of float 0/1, z ~ Bernoulli(p') (same draws as torch.distributions.Bernoulli).

        `generator` must live on the logits' device (a torch.Generator(device=...)).
        """
        masks = {}
        for name, prob in self.keep_probs.items():
            prob = prob.detach().expand(batch_size, prob.shape[-1])  # [size] → [N, size]
            masks[name] = torch.bernoulli(prob, generator=generator)
        return masks

    def log_prob(self, masks: Mapping[str, Tensor]) -> Tensor:
        """Σ over groups and elements of log P(z | p'), one value per sampled structure: [N]."""
        total = self._zero()
        for name in self.logits:
            log_keep, log_drop = self._log_keep_and_drop(name)
            mask = masks[name]
            total = total + (mask * log_keep + (1.0 - mask) * log_drop).sum(dim=-1)  # [N, size] → [N]
        return total

    def entropy(self) -> Tensor:
        """Σ over groups and elements of the Bernoulli entropy of p' (shape: the logits' batch shape)."""
        total = self._zero()
        for name in self.logits:
            log_keep, log_drop = self._log_keep_and_drop(name)
            total = total - (log_keep.exp() * log_keep + log_drop.exp() * log_drop).sum(dim=-1)
        return total


def score_variance(
    logits: Mapping[str, Tensor], tau: float, decay: float, masks: Mapping[str, Tensor], advantages: Tensor
) -> float:
    """Variance of the REINFORCE estimate mean_i[adv_i ∇ log P(z_i)], w.r.t. the compressor's output logits.

    Exact per-sample gradients g_i = adv_i ∇_logits log P(z_i) are taken on a batched copy of the logits;
    the returned value is tr Cov(g_i) / N, the total variance of the batch-mean gradient.
    """
    batch_size = advantages.shape[0]
    batched = {
        name: logit.detach()
        .expand(batch_size, logit.shape[-1])
        .clone()
        .requires_grad_()  # [size] → [N, size]
        for name, logit in logits.items()
    }
    objective = (advantages.detach() * MaskDistribution(batched, tau, decay).log_prob(masks)).sum()
    per_sample = torch.cat(torch.autograd.grad(objective, list(batched.values())), dim=1)  # [N, Σ size]
    return float(per_sample.var(dim=0, unbiased=True).sum() / batch_size)
