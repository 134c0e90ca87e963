"""Budget-driven search: the dual-ascent prices, the pressure on each group, fitting a kept set to a budget,
the warm-up phase, and a search on a tiny model that ends at its budget."""

from __future__ import annotations

import pytest
import torch

from deepiot.compression import CompressionConfig, LoopConfig, compress_model
from deepiot.compression.budget import BudgetController, BudgetError, cost_ratios, fit_to_budget
from deepiot.compression.compressor import MaskDistribution
from deepiot.compression.reward import CriticConfig
from deepiot.compression.schedules import ScheduleConfig
from deepiot.compression.step import build_parts, compressor_critic_step, fresh_state
from deepiot.finetune import FinetuneConfig, distillation_loss, finetune
from deepiot.models import LeNet300
from deepiot.runtime import BatchStream, accuracy
from deepiot.structure import MaskedNetwork, Structure, slice_model


@pytest.fixture(scope="module")
def lenet300() -> tuple[LeNet300, Structure]:
    torch.manual_seed(0)
    model = LeNet300(hidden1=60, hidden2=30).eval()
    return model, Structure.from_model(model, torch.randn(1, 1, 28, 28))


def budget_config(**loop: object) -> CompressionConfig:
    return CompressionConfig(
        loop=LoopConfig(batch_size=32, eval_every=10, **loop),
        schedule=ScheduleConfig(final_tau=0.6, steps=6, every=5),
        finetune=FinetuneConfig(steps=0),
    )


def params_of(structure: Structure, counts: dict[str, int]) -> int:
    return structure.cost(counts).params


def test_prices_rise_while_a_budget_is_exceeded_and_fall_once_it_is_met(lenet300):
    _, structure = lenet300
    controller = BudgetController(structure, {"params": 0.25}, lr=0.1)
    controller.update({"params": 0.5})
    assert controller.prices["params"] == pytest.approx(0.1 * torch.log(torch.tensor(2.0)).item())
    controller.update({"params": 0.125})  # log(0.5) < 0: the price falls, but never below 0
    assert controller.prices["params"] == 0.0
    restored = BudgetController(structure, {"params": 0.25}, lr=0.1)
    controller.update({"params": 1.0})
    restored.load_state_dict(controller.state_dict())
    assert restored.prices == controller.prices


@pytest.mark.parametrize("pressure", ["marginal", "elasticity"])
def test_penalty_gradient_is_the_cost_slope_scaled_by_the_pressure(lenet300, pressure):
    _, structure = lenet300
    controller = BudgetController(structure, {"params": 0.1}, lr=0.1, pressure=pressure)
    controller.prices["params"] = 2.0
    probs = {
        "fc1": torch.full((60,), 0.5, requires_grad=True),
        "fc2": torch.full((30,), 0.8, requires_grad=True),
    }
    penalty, ratios = controller.penalty(probs)
    penalty.backward()
    counts = {"fc1": 30.0, "fc2": 24.0}
    original = params_of(structure, {"fc1": 60, "fc2": 30})
    assert ratios["params"] == pytest.approx(structure.cost(counts).params / original, rel=1e-5)
    # the cost polynomial's slope per kept element: fc1 → (784 + 1) + fc2 kept; fc2 → (fc1 kept + 1) + 10
    slopes = {"fc1": (785 + 24.0) / original, "fc2": (30.0 + 1 + 10) / original}
    mean_count = (30.0 + 24.0) / 2
    for name, prob in probs.items():
        scale = counts[name] / mean_count if pressure == "elasticity" else 1.0
        expected = 2.0 * slopes[name] * scale
        torch.testing.assert_close(prob.grad, torch.full_like(prob, expected), rtol=1e-4, atol=1e-9)


def test_fit_to_budget_drops_the_least_and_adds_back_the_most_probable_elements(lenet300):
    _, structure = lenet300
    scores = {"fc1": torch.linspace(1.0, 0.0, 60), "fc2": torch.linspace(0.9, 0.1, 30)}
    everything = {"fc1": list(range(60)), "fc2": list(range(30))}
    budget = 0.3
    fitted = fit_to_budget(structure, everything, scores, {"params": budget})
    ratio = cost_ratios(structure, fitted)["params"]
    assert ratio <= budget
    # used fully: no removed element fits any more
    for name, size in (("fc1", 60), ("fc2", 30)):
        for index in set(range(size)) - set(fitted[name]):
            grown = {**fitted, name: [*fitted[name], index]}
            assert cost_ratios(structure, grown)["params"] > budget
    # the kept fc1 units are the highest-scored ones (a prefix, scores fall with the index)
    assert fitted["fc1"] == list(range(len(fitted["fc1"])))
    # from a kept set below the budget, fitting only adds
    small = {"fc1": [0, 1], "fc2": [0]}
    grown = fit_to_budget(structure, small, scores, {"params": budget})
    assert set(small["fc1"]) <= set(grown["fc1"]) and cost_ratios(structure, grown)["params"] <= budget


def test_fit_to_budget_never_empties_a_group(lenet300):
    _, structure = lenet300
    scores = {"fc1": torch.rand(60), "fc2": torch.rand(30)}
    fitted = fit_to_budget(
        structure, {"fc1": list(range(60)), "fc2": list(range(30))}, scores, {"params": 1e-6}
    )
    assert len(fitted["fc1"]) == 1 and len(fitted["fc2"]) == 1


def test_fit_to_budget_keeps_min_kept_elements_a_group_the_highest_scored(lenet300):
    _, structure = lenet300
    scores = {"fc1": torch.linspace(1.0, 0.0, 60), "fc2": torch.linspace(0.0, 1.0, 30)}  # fc2: last ones best
    searched = {"fc1": list(range(40)), "fc2": [3]}  # the search left fc2 one unit, not its best
    fitted = fit_to_budget(structure, searched, scores, {"params": 0.3}, min_kept=5)
    assert {25, 26, 27, 28, 29} <= set(fitted["fc2"]) and cost_ratios(structure, fitted)["params"] <= 0.3
    squeezed = fit_to_budget(structure, searched, scores, {"params": 1e-6}, min_kept=5)
    assert len(squeezed["fc1"]) == 5 and len(squeezed["fc2"]) == 5  # the floor outranks an impossible budget
    assert fit_to_budget(structure, searched, scores, {}, min_kept=5) == {"fc1": list(range(40)),
                                                                         "fc2": [3, 26, 27, 28, 29]}  # fmt: skip
    assert fit_to_budget(structure, searched, scores, {"params": 0.3}) == fit_to_budget(
        structure, searched, scores, {"params": 0.3}, min_kept=1
    )


def test_a_min_kept_the_budget_cannot_pay_for_is_refused_before_the_search(data, trained_model):
    critic = LeNet300(hidden1=60, hidden2=30)
    critic.load_state_dict(trained_model.state_dict())
    config = budget_config(target_params=0.02, min_kept=30)  # 30 fc1 units alone: 30 x 784 weights, ~45%
    with pytest.raises(
        BudgetError, match=r"compress.min_kept=30 cannot be met at compress.target_params=0.02"
    ):
        build_parts(critic, Structure.from_model(critic, data[0].tensors[0][:1]), data[0].tensors, config)


def test_warm_up_trains_the_compressor_only_at_threshold_zero(data, trained_model):
    config = budget_config(warmup_iterations=5, target_params=0.2)
    critic = LeNet300(hidden1=60, hidden2=30)
    critic.load_state_dict(trained_model.state_dict())
    parts = build_parts(critic, Structure.from_model(critic, data[0].tensors[0][:1]), data[0].tensors, config)
    state = fresh_state(parts)
    weights = {name: value.clone() for name, value in critic.state_dict().items()}
    compressor = {name: value.clone() for name, value in parts.compressor.state_dict().items()}
    for _ in range(5):
        stats = compressor_critic_step(parts, state)
        state.iteration += 1
        assert stats.tau == 0.0 and parts.budget.prices["params"] == 0.0
    assert all(torch.equal(value, critic.state_dict()[name]) for name, value in weights.items())
    assert any(
        not torch.equal(value, parts.compressor.state_dict()[name]) for name, value in compressor.items()
    )
    compressor_critic_step(parts, state)  # the search proper: the critic trains, the price rises
    assert any(not torch.equal(value, critic.state_dict()[name]) for name, value in weights.items())
    assert parts.budget.prices["params"] > 0.0


def test_a_budgeted_search_stops_at_its_budget_and_fills_it(data, trained_model):
    config = budget_config(max_iterations=400, target_params=0.3, budget_lr=0.2)
    result = compress_model(trained_model, *data, config)
    assert result.report["stop_reason"].startswith("target met")
    assert result.report["iterations"] < 400
    structure = Structure.from_model(trained_model, data[0].tensors[0][:1])
    kept = result.plan.kept
    assert cost_ratios(structure, kept)["params"] <= 0.3
    for name, size in structure.group_sizes.items():  # filled: no removed element fits any more
        for index in set(range(size)) - set(kept[name]):
            assert cost_ratios(structure, {**kept, name: [*kept[name], index]})["params"] > 0.3


def test_critic_step_distils_from_the_original_when_asked(data, trained_model):
    config = budget_config()
    config = CompressionConfig(
        loop=config.loop,
        schedule=config.schedule,
        finetune=config.finetune,
        critic=CriticConfig(distill_weight=0.7, temperature=3.0),
    )
    critic = LeNet300(hidden1=60, hidden2=30)
    critic.load_state_dict(trained_model.state_dict())
    inputs, labels = data[0].tensors
    parts = build_parts(critic, Structure.from_model(critic, inputs[:1]), (inputs, labels), config)
    with torch.no_grad():
        torch.testing.assert_close(parts.soft_targets, trained_model(inputs))
    state = fresh_state(parts)
    # replay the step's batch and masks from copies of its random streams
    batches_state = {
        key: value.clone() if torch.is_tensor(value) else value
        for key, value in parts.batches.state_dict().items()
    }
    generator_state = parts.mask_generator.get_state()
    keep_logits = {name: logits.clone() for name, logits in state.keep_logits.items()}
    stats = compressor_critic_step(parts, state)
    replay = BatchStream(inputs, labels, 32, seed=0)
    replay.load_state_dict(batches_state)
    indices = replay.next_indices()
    masks = MaskDistribution(keep_logits, 0.0, 0.5).sample(32, torch.Generator().set_state(generator_state))
    student = LeNet300(hidden1=60, hidden2=30)
    student.load_state_dict(trained_model.state_dict())
    with torch.no_grad():
        logits = MaskedNetwork(student, parts.structure).train()(inputs[indices], masks)
        expected = distillation_loss(logits, trained_model(inputs[indices]), labels[indices], 0.7, 3.0)
    assert stats.critic_loss == pytest.approx(float(expected), rel=1e-5)


def test_magnitude_reference_is_l1_at_the_same_counts_with_the_same_fine_tuning(data, trained_model):
    config = budget_config(max_iterations=20, target_params=0.5, compare_magnitude=True)
    config = CompressionConfig(
        loop=config.loop,
        schedule=config.schedule,
        finetune=FinetuneConfig(steps=10, batch_size=32, eval_every=5),
    )
    result = compress_model(trained_model, *data, config)
    reference = result.report["magnitude_at_same_counts"]
    counts = {name: len(indices) for name, indices in result.plan.kept.items()}
    assert reference["kept_counts"] == counts
    # the same choice and fine-tuning, done by hand
    structure = Structure.from_model(trained_model, data[0].tensors[0][:1])
    chosen = {
        name: structure.largest_l1_elements(trained_model, name, count) for name, count in counts.items()
    }
    recipe = FinetuneConfig(steps=10 + result.report["iterations"], batch_size=32, eval_every=5)
    assert reference["finetune_steps"] == recipe.steps  # as many steps as the critic got in all
    sliced = slice_model(trained_model, structure, chosen)
    tuned = finetune(sliced, data[0].tensors, data[1].tensors, recipe, teacher=trained_model)  # distils
    assert reference["test_accuracy"] == accuracy(tuned.model, *data[2].tensors, 512)
    assert reference["val_accuracy"] == tuned.best_val_accuracy
