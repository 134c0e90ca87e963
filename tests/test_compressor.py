"""The LSTM compressor and its Bernoulli mask distribution (against torch.distributions.Bernoulli)."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli

from deepiot.compression.compressor import (
    Compressor,
    CompressorConfig,
    GroupSpec,
    MaskDistribution,
    score_variance,
)

SPECS = [
    GroupSpec("conv1", "conv", 26, 20),
    GroupSpec("fc1", "linear", 801, 50),
    GroupSpec("lstm.l0", "rnn", 300, 30),
]


def random_weights(scale: float = 0.1) -> dict[str, torch.Tensor]:
    return {spec.name: scale * torch.randn(spec.rows, spec.size) for spec in SPECS}


def test_initial_keep_probs_follow_the_papers_code():
    torch.manual_seed(0)
    logits = Compressor(SPECS)(random_weights())
    assert set(logits) == {"conv1", "fc1", "lstm.l0"}
    assert logits["fc1"].shape == (50,)
    # small weights → small LSTM state → p ≈ sigmoid(bias) = 0.8 for conv/linear, 0.5 for rnn
    assert torch.sigmoid(logits["conv1"]).mean().item() == pytest.approx(0.8, abs=0.03)
    assert torch.sigmoid(logits["fc1"]).mean().item() == pytest.approx(0.8, abs=0.03)
    assert torch.sigmoid(logits["lstm.l0"]).mean().item() == pytest.approx(0.5, abs=0.05)


def test_only_compressor_parameters_receive_gradient():
    compressor = Compressor(SPECS)
    weights = {name: weight.requires_grad_() for name, weight in random_weights().items()}
    logits = compressor(weights)
    sum(logit.sum() for logit in logits.values()).backward()
    assert all(weight.grad is None for weight in weights.values())
    assert all(param.grad is not None for param in compressor.parameters())


def test_probabilities_depend_on_the_weights_and_on_earlier_groups():
    torch.manual_seed(0)
    compressor = Compressor(SPECS)
    weights = random_weights(scale=1.0)
    before = compressor(weights)
    changed = dict(weights, conv1=weights["conv1"] * 3)
    after = compressor(changed)
    # the LSTM carries the first group's weights into every later group's probabilities (the "global view")
    assert not torch.allclose(before["fc1"], after["fc1"])
    assert not torch.allclose(before["lstm.l0"], after["lstm.l0"])


def test_wrong_weight_shape_is_named():
    weights = random_weights()
    weights["fc1"] = torch.zeros(800, 50)
    with pytest.raises(ValueError, match=r"group 'fc1' has shape \(800, 50\), expected \(801, 50\)"):
        Compressor(SPECS)(weights)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"lr": 0.0}, "compressor.lr"),
        ({"init_keep_prob": {"linear": 0.8, "conv": 1.0, "rnn": 0.5}}, r"init_keep_prob\['conv'\]"),
        ({"init_keep_prob": {"linear": 0.8}}, "missing"),
    ],
)
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompressorConfig(**kwargs)


def reference_probs(logits: dict[str, torch.Tensor], tau: float, decay: float) -> dict[str, torch.Tensor]:
    probs = {name: torch.sigmoid(logit) for name, logit in logits.items()}
    return {name: torch.where(p < tau, decay * p, p) for name, p in probs.items()}


@pytest.mark.parametrize("tau", [0.0, 0.3, 0.7])
def test_sample_log_prob_entropy_match_torch_bernoulli(tau):
    torch.manual_seed(1)
    logits = {"a": 3 * torch.randn(40), "b": 3 * torch.randn(7)}
    dist = MaskDistribution(logits, tau=tau, decay=0.5)
    reference = {name: Bernoulli(probs=p) for name, p in reference_probs(logits, tau, 0.5).items()}

    masks = dist.sample(64, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(5)
    expected_a = reference["a"].sample((64,))
    expected_b = reference["b"].sample((64,))
    assert torch.equal(masks["a"], expected_a)
    assert torch.equal(masks["b"], expected_b)

    expected_log_prob = reference["a"].log_prob(expected_a).sum(1) + reference["b"].log_prob(expected_b).sum(
        1
    )
    torch.testing.assert_close(dist.log_prob(masks), expected_log_prob, atol=1e-5, rtol=1e-6)
    expected_entropy = reference["a"].entropy().sum() + reference["b"].entropy().sum()
    torch.testing.assert_close(dist.entropy(), expected_entropy, atol=1e-5, rtol=1e-6)


def test_log_prob_gradient_matches_bernoulli_gradient_with_decay():
    torch.manual_seed(2)
    raw = torch.randn(30)
    masks = {"a": torch.bernoulli(torch.full((8, 30), 0.5))}
    ours_logits = raw.clone().requires_grad_()
    MaskDistribution({"a": ours_logits}, tau=0.5, decay=0.5).log_prob(masks).sum().backward()
    ref_logits = raw.clone().requires_grad_()
    probs = reference_probs({"a": ref_logits}, 0.5, 0.5)["a"]
    Bernoulli(probs=probs).log_prob(masks["a"]).sum().backward()
    torch.testing.assert_close(ours_logits.grad, ref_logits.grad, atol=1e-5, rtol=1e-5)


def test_log_prob_stays_finite_for_saturated_probabilities():
    logits = {"a": torch.tensor([40.0, -40.0, 0.0], requires_grad=True)}
    masks = {"a": torch.tensor([[1.0, 0.0, 1.0]])}
    log_prob = MaskDistribution(logits, tau=0.5, decay=1.0).log_prob(masks)
    log_prob.sum().backward()
    assert torch.isfinite(log_prob).all()
    assert torch.isfinite(logits["a"].grad).all()


@pytest.mark.parametrize(
    ("tau", "decay", "message"), [(1.0, 0.5, "tau"), (-0.1, 0.5, "tau"), (0.5, 0.0, "gamma")]
)
def test_bad_threshold_or_decay_is_rejected(tau, decay, message):
    with pytest.raises(ValueError, match=message):
        MaskDistribution({"a": torch.zeros(3)}, tau=tau, decay=decay)


def test_score_variance_matches_hand_computed_per_sample_gradients():
    torch.manual_seed(3)
    logits = {"a": torch.randn(5)}
    masks = MaskDistribution(logits).sample(16, generator=torch.Generator().manual_seed(0))
    advantages = torch.randn(16)
    # without decay, ∂ log P(z_i)/∂ logit_j = z_ij − p_j
    per_sample = advantages[:, None] * (masks["a"] - torch.sigmoid(logits["a"]))  # [N, 5]
    expected = per_sample.var(dim=0, unbiased=True).sum().item() / 16
    assert score_variance(logits, 0.0, 0.5, masks, advantages) == pytest.approx(expected, rel=1e-5)


def test_reinforce_steps_lower_the_keep_probability_of_a_penalised_group():
    """Toy problem: the reward counts the kept elements of group "fc1" as a cost; group "conv1" is free."""
    from deepiot.compression.reward import EMABaseline

    torch.manual_seed(0)
    compressor = Compressor(SPECS)
    optimizer = torch.optim.RMSprop(compressor.parameters(), lr=1e-3)
    baseline = EMABaseline()
    weights = random_weights()
    generator = torch.Generator().manual_seed(0)
    start = {name: torch.sigmoid(logit).mean().item() for name, logit in compressor(weights).items()}
    for _ in range(20):
        distribution = MaskDistribution(compressor(weights))
        masks = distribution.sample(64, generator)
        rewards = -masks["fc1"].sum(dim=1)  # [N]: fewer kept fc1 elements is better
        advantages = baseline.advantages(rewards, None)
        loss = -(advantages * distribution.log_prob(masks)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = {name: torch.sigmoid(logit).mean().item() for name, logit in compressor(weights).items()}
    assert end["fc1"] < start["fc1"] - 0.1
    assert abs(end["conv1"] - start["conv1"]) < abs(end["fc1"] - start["fc1"])
