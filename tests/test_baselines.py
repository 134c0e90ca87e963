"""Baseline methods: exact counts, budgets met within one element, sliced == masked, Torch-Pruning's own
count, exact unstructured sparsity, and the end-to-end `prune` with its artefacts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from deepiot import runtime
from deepiot.api import OutputOptions
from deepiot.baselines import pipeline, prune, reference, selection, unstructured
from deepiot.compression import slice_checked
from deepiot.cost import measure_cost
from deepiot.finetune import FinetuneConfig
from deepiot.structure import MaskedNetwork, Structure


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3)
        self.fc1 = nn.Linear(12 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # [N, 8, 6, 6]
        x = torch.relu(self.conv2(x))  # [N, 12, 4, 4]
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class SmallGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.gru = nn.GRU(8, 10, batch_first=True)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:  # x: [N, T=12, C=3]
        h = torch.relu(self.conv(x.transpose(1, 2)))  # [N, 8, 12]
        out, _ = self.gru(h.transpose(1, 2))  # [N, 12, 10]
        return self.fc(out.mean(dim=1))


def built(model_class: type[nn.Module], input_shape: tuple[int, ...]) -> tuple[nn.Module, Structure, Tensor]:
    torch.manual_seed(0)
    model = model_class().eval()
    inputs = torch.randn(16, *input_shape)
    return model, Structure.from_model(model, inputs[:2]), inputs


@pytest.fixture
def cnn():
    return built(SmallCNN, (1, 8, 8))


def test_magnitude_at_counts_keeps_exactly_the_largest_l1_columns(cnn):
    model, structure, _ = cnn
    counts = {"conv1": 3, "conv2": 5, "fc1": 7}
    kept = selection.magnitude_at_counts(model, structure, counts)
    assert selection.counts_of(kept) == counts
    column_l1 = model.fc1.weight.abs().sum(dim=1) + model.fc1.bias.abs()  # [32]: fan-in weights + bias
    assert kept["fc1"] == sorted(torch.argsort(column_l1, descending=True)[:7].tolist())


def test_importance_is_the_batchnorm_folded_layer_and_the_raw_weights_without_one(cnn):
    """conv1 → bn1: its importance matrix is the fused layer's [fan-in + bias, out], which computes
    bn1(conv1(x)) exactly in eval mode; conv2 has no BatchNorm, so its importance is its weight matrix."""
    model, structure, inputs = cnn
    torch.manual_seed(1)
    with torch.no_grad():
        model.bn1.weight.copy_(torch.randn(8))
        model.bn1.bias.copy_(torch.randn(8))
        model.bn1.running_mean.copy_(torch.randn(8))
        model.bn1.running_var.copy_(torch.rand(8) + 0.1)
    matrix = structure.importance_matrix(model, "conv1")  # [1·3·3 + 1, 8]
    fused = nn.functional.conv2d(inputs, matrix[:-1].t().reshape(8, 1, 3, 3), matrix[-1])
    assert torch.allclose(fused, model.bn1(model.conv1(inputs)), atol=1e-5)
    assert (
        structure.batchnorm_of(model, "conv1") is model.bn1 and structure.batchnorm_of(model, "conv2") is None
    )
    assert torch.equal(structure.importance_matrix(model, "conv2"), structure.weight_matrix(model, "conv2"))


def test_magnitude_ranks_batchnormed_filters_by_their_folded_scale(cnn):
    """BatchNorm hides a filter's weight scale: shrink filter 0's weights 100× (raw L1 the smallest) and give
    it a γ 1000× the others'; the magnitude criterion ranks it first, and drops the filter whose γ is 0."""
    model, structure, _ = cnn
    with torch.no_grad():
        model.conv1.weight[0] *= 0.01
        model.conv1.bias[0] *= 0.01
        model.bn1.weight.fill_(1.0)
        model.bn1.weight[0] = 1000.0
        model.bn1.weight[5] = 0.0
        model.bn1.bias.zero_()
    raw = structure.weight_matrix(model, "conv1").abs().sum(dim=0)
    assert int(raw.argmin()) == 0
    kept = selection.magnitude_at_counts(model, structure, {"conv1": 7})["conv1"]
    assert 0 in kept and 5 not in kept
    assert structure.largest_l1_elements(model, "conv1", 7) == kept
    assert selection.magnitude_at_counts(model, structure, {"conv1": 1})["conv1"] == [0]


def test_uniform_fraction_rounds_per_group_and_keeps_at_least_one(cnn):
    model, structure, _ = cnn
    assert selection.counts_of(selection.magnitude_at_fraction(model, structure, 0.5)) == {
        "conv1": 4,
        "conv2": 6,
        "fc1": 16,
    }
    assert selection.counts_of(selection.magnitude_at_fraction(model, structure, 0.01)) == {
        "conv1": 1,
        "conv2": 1,
        "fc1": 1,
    }


@pytest.mark.parametrize("cost", ["params", "macs"])
@pytest.mark.parametrize("budget", [0.05, 0.2, 0.5])
def test_global_budget_is_met_within_one_element(cnn, cost, budget):
    model, structure, _ = cnn
    kept = selection.magnitude_at_budget(model, structure, budget, cost)
    original = getattr(structure.cost(), cost)
    left = getattr(structure.cost(selection.counts_of(kept)), cost) / original
    assert left <= budget
    order = selection.removal_order(selection.l1_scores(model, structure), "mean")
    removed = sum(group.size for group in structure.groups) - sum(map(len, kept.values()))
    one_fewer = selection.counts_of(selection.kept_after_removing(structure, order[: removed - 1]))
    assert getattr(structure.cost(one_fewer), cost) / original > budget
    assert all(len(indices) >= 1 for indices in kept.values())


def test_an_unreachable_budget_is_refused_with_the_floor(cnn):
    model, structure, _ = cnn
    with pytest.raises(ValueError, match="one element per group still leaves"):
        selection.magnitude_at_budget(model, structure, 1e-4)


def test_random_selection_is_seeded_and_exact(cnn):
    _, structure, _ = cnn
    counts = {"conv1": 2, "conv2": 3, "fc1": 4}
    first = selection.random_at_counts(structure, counts, seed=1)
    assert first == selection.random_at_counts(structure, counts, seed=1)
    assert first != selection.random_at_counts(structure, counts, seed=2)
    assert selection.counts_of(first) == counts


@pytest.mark.parametrize("model_class, input_shape", [(SmallCNN, (1, 8, 8)), (SmallGRU, (12, 3))])
def test_sliced_model_equals_the_masked_network_for_magnitude_kept_sets(model_class, input_shape):
    model, structure, inputs = built(model_class, input_shape)
    kept = selection.magnitude_at_budget(model, structure, 0.3)
    sliced, _ = slice_checked(model, structure, kept, inputs)
    with torch.no_grad():
        masked = MaskedNetwork(model, structure).eval()(inputs, structure.masks_from_kept(kept))
        assert torch.allclose(sliced(inputs), masked, atol=1e-5)
    assert measure_cost(sliced, inputs).params == structure.cost(selection.counts_of(kept)).params


def test_torch_pruning_reference_agrees_with_its_own_parameter_count(cnn):
    model, structure, inputs = cnn
    choice = reference.torch_pruning_kept(model, structure, inputs, budget=0.3)
    sliced, _ = slice_checked(model, structure, choice.kept, inputs)
    ours = measure_cost(sliced, inputs)
    assert ours.params == choice.params
    assert reference.count_with_torch_pruning(sliced, inputs)[0] == choice.params
    assert choice.params <= 0.3 * measure_cost(model, inputs).params
    assert choice.kept != {group.name: list(range(group.size)) for group in structure.groups}


def test_torch_pruning_refuses_recurrent_models():
    model, structure, inputs = built(SmallGRU, (12, 3))
    with pytest.raises(ValueError, match="recurrent layers \\['gru'\\]"):
        reference.torch_pruning_kept(model, structure, inputs, budget=0.3)


def test_unstructured_masks_leave_exactly_the_budgeted_nonzero_parameters(cnn):
    model, _, _ = cnn
    total = sum(parameter.numel() for parameter in model.parameters())
    masks = unstructured.global_magnitude_masks(model, 0.1)
    assert unstructured.nonzero_params(model, masks) == round(0.1 * total)
    magnitudes = {name: model.get_parameter(name).detach().abs() for name in masks}
    smallest_kept = min(float(magnitudes[name][mask == 1].min()) for name, mask in masks.items())
    largest_dropped = max(float(magnitudes[name][mask == 0].max()) for name, mask in masks.items())
    assert largest_dropped <= smallest_kept
    with pytest.raises(ValueError, match="below the .* parameters unstructured pruning leaves dense"):
        unstructured.global_magnitude_masks(model, 1e-4)


def toy_data(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (samples,), generator=generator)
    inputs = torch.randn(samples, 1, 8, 8, generator=generator) + labels[:, None, None, None].float()
    return TensorDataset(inputs, labels)


RECIPE = FinetuneConfig(steps=6, batch_size=16, eval_every=3, eval_batch_size=64)
NO_LATENCY = OutputOptions(latency_threads=None)


def test_prune_magnitude_writes_the_deepiot_artefacts_and_resumes(tmp_path, cnn):
    model = cnn[0]
    train, val = toy_data(64, 0), toy_data(32, 1)
    result = prune(
        model,
        train,
        val,
        val,
        method="magnitude",
        budget=0.3,
        finetune_config=RECIPE,
        out_dir=tmp_path,
        outputs=NO_LATENCY,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"]["name"] == "magnitude"
    assert report["cost"]["left"]["params"] <= 0.3
    assert (
        report["cost"]["compressed"]["params"]
        == measure_cost(result.sliced_model, train.tensors[0][:1]).params
    )
    assert {"slicing_plan.json", "report.md", "finetune.png", "finetune_state.pt"} <= {
        path.name for path in tmp_path.iterdir()
    }
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert sorted(result.plan.kept) == ["conv1", "conv2", "fc1"]
    rerun = prune(
        model,
        train,
        val,
        val,
        method="magnitude",
        budget=0.3,
        finetune_config=RECIPE,
        out_dir=tmp_path,
        outputs=NO_LATENCY,
    )
    assert rerun.report["accuracy"] == result.report["accuracy"]


def test_prune_unstructured_reports_nonzero_parameters_and_no_smaller_model(tmp_path, cnn):
    model = cnn[0]
    train, val = toy_data(64, 0), toy_data(32, 1)
    result = prune(
        model,
        train,
        val,
        method="unstructured",
        budget=0.2,
        finetune_config=RECIPE,
        out_dir=tmp_path,
        outputs=NO_LATENCY,
    )
    total = sum(parameter.numel() for parameter in model.parameters())
    nonzero = sum(int((parameter != 0).sum()) for parameter in result.sliced_model.parameters())
    assert nonzero <= round(0.2 * total)  # exactly the masks' count unless a kept weight is exactly 0
    assert result.report["unstructured"]["nonzero_params"] == round(0.2 * total)
    assert result.report["cost"]["left"]["params"] == 1.0  # dense shape unchanged
    assert result.plan is None and not (tmp_path / "export").exists()
    assert "sparse storage" in result.report["unstructured"]["note"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "magnitude"}, "needs exactly one of budget, counts or fraction"),
        ({"method": "pca", "budget": 0.5}, "unknown baseline method 'pca'"),
        ({"method": "unstructured", "budget": 0.5, "cost": "macs"}, "params budget only"),
    ],
)
def test_prune_rejects_bad_method_arguments(cnn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune(cnn[0], toy_data(32, 0), toy_data(32, 1), finetune_config=RECIPE, **kwargs)


# --- magnitude_floor, uniform, scratch, unstructured_fair -----------------------------------------------------


class TinyMLP(nn.Module):
    """2 → fc1 (4) → fc2 (3) → out (2 classes): params with (a, b) kept = 3a + b(a + 1) + 2b + 2 (35 in all)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 4)
        self.fc2 = nn.Linear(4, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def tiny_mlp() -> tuple[nn.Module, Structure]:
    """fc1 unit i has L1 i + 1 (normalised by the mean 2.5: 0.4, 0.8, 1.2, 1.6); fc2's units 0.1, 0.2, 6
    (normalised: 0.048, 0.095, 2.86) — plain magnitude removes fc2's two weak units first."""
    torch.manual_seed(0)
    model = TinyMLP().eval()
    with torch.no_grad():
        model.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.0, 0.0]]))
        model.fc1.bias.zero_()
        model.fc2.weight.zero_()
        model.fc2.weight[:, 0] = torch.tensor([0.1, 0.2, 6.0])
        model.fc2.bias.zero_()
    return model, Structure.from_model(model, torch.randn(2, 2))


def test_magnitude_floor_against_a_hand_computed_case():
    model, structure = tiny_mlp()
    assert structure.cost().params == 35
    # budget 0.6 = 21 params. Plain order: fc2.0, fc2.1 → (4, 1) = 12 + 5 + 4 = 21: fc2 collapses to one unit.
    assert selection.magnitude_at_budget(model, structure, 0.6) == {"fc1": [0, 1, 2, 3], "fc2": [2]}
    # floor 2: fc2's units 2 and 1, fc1's 3 and 2 are protected; order fc2.0, fc1.0, fc1.1:
    # (4, 2) = 28, (3, 2) = 23, (2, 2) = 6 + 6 + 6 = 18 <= 21.
    assert selection.magnitude_floor_at_budget(model, structure, 0.6, floor=2) == {
        "fc1": [2, 3],
        "fc2": [1, 2],
    }
    assert selection.magnitude_floor_at_budget(model, structure, 0.6, floor={"fc2": 2}) == {
        "fc1": [2, 3],
        "fc2": [1, 2],
    }
    # budget 0.45 = 15.75 params: the floors alone cost 18.
    with pytest.raises(
        ValueError, match=r"floor \{'fc1': 2, 'fc2': 2\} alone leaves 0.5143 .* over the budget"
    ):
        selection.magnitude_floor_at_budget(model, structure, 0.45, floor=2)
    with pytest.raises(ValueError, match="must keep between 1 and 3 elements"):
        selection.magnitude_floor_at_budget(model, structure, 0.6, floor={"fc2": 4})
    with pytest.raises(ValueError, match="method.floor must be a positive int"):
        selection.magnitude_floor_at_budget(model, structure, 0.6, floor=0)


def test_removal_order_protects_one_element_per_group_by_default():
    model, structure = tiny_mlp()
    scores = selection.l1_scores(model, structure)
    assert selection.removal_order(scores, "mean") == [
        ("fc2", 0),
        ("fc2", 1),
        ("fc1", 0),
        ("fc1", 1),
        ("fc1", 2),
    ]
    assert selection.removal_order(scores, "mean", {"fc1": 3, "fc2": 2}) == [("fc2", 0), ("fc1", 0)]


def lenet300_like() -> tuple[nn.Module, Structure]:
    """LeNet-300-100 (784 → 300 → 100 → 10) with fc2's units 1-99 made weak: magnitude collapses fc2 to one unit,
    as it does on the trained LeNet-300-100 at 2%."""
    from deepiot.models import LeNet300

    torch.manual_seed(0)
    model = LeNet300().eval()
    with torch.no_grad():
        model.fc2.weight[1:] *= 1e-3
        model.fc2.bias[1:] *= 1e-3
    return model, Structure.from_model(model, torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize("budget", [0.01, 0.02, 0.035])
def test_magnitude_floor_keeps_every_group_at_its_floor_and_meets_the_budget(budget):
    model, structure = lenet300_like()
    assert selection.counts_of(selection.magnitude_at_budget(model, structure, budget))["fc2"] == 1
    floors = selection.default_floors(structure, selection.output_width(model, structure), budget, "params")
    kept = selection.counts_of(selection.magnitude_floor_at_budget(model, structure, budget))
    assert all(kept[name] >= floors[name] for name in floors)
    assert floors["fc2"] == 10  # the class count: cheap
    original = structure.cost().params
    assert structure.cost(kept).params <= budget * original
    assert structure.cost(floors).params <= selection.FLOOR_SHARE * budget * original


def test_random_at_a_budget_keeps_magnitude_floors_counts_not_the_collapsed_ones():
    """The random control draws its elements at the fair global allocation (magnitude_floor's counts): at
    magnitude's floor-less counts it would inherit fc2's collapse to one unit."""
    from deepiot.baselines.pipeline import Splits, structured_choice

    model, structure = lenet300_like()
    inputs = torch.randn(16, 1, 28, 28)
    splits = Splits(*[(inputs, torch.zeros(16, dtype=torch.long))] * 3)
    choice = structured_choice(model, structure, splits, "random", 0.02, "params", None, None, "mean", seed=3)
    floor_counts = selection.counts_of(selection.magnitude_floor_at_budget(model, structure, 0.02))
    assert selection.counts_of(choice.kept) == floor_counts
    assert floor_counts["fc2"] >= 10
    assert choice.kept != selection.magnitude_floor_at_budget(
        model, structure, 0.02
    )  # random, not the L1 pick


def test_default_floors_rise_to_the_class_count_within_half_the_budget():
    model, structure = lenet300_like()
    assert selection.output_width(model, structure) == 10
    # 2% of 266,610 params: the floors may cost 2,666. fc1 at 3 units (785 params each) with fc2 at 10:
    # 2,355 + 40 + 110 = 2,505; fc1 at 4 would cost 3,290 + ... > 2,666 (and a common fraction raises neither).
    assert selection.default_floors(structure, 10, 0.02, "params") == {"fc1": 3, "fc2": 10}
    assert selection.default_floors(structure, 10, 0.01, "params") == {"fc1": 1, "fc2": 10}
    # at the whole budget: uniform width at half the parameters, 158/300 and 53/100 (fc2 rounds 0.527 · 100 up)
    floors = selection.default_floors(structure, 10, 1.0, "params")
    assert floors == {"fc1": 158, "fc2": 53}
    assert structure.cost(floors).params <= 0.5 * structure.cost().params
    assert structure.cost({"fc1": 159, "fc2": 53}).params > 0.5 * structure.cost().params
    assert selection.default_floors(structure, 200, 1.0, "params", share=1.0) == {"fc1": 300, "fc2": 100}


@pytest.mark.parametrize("budget", [0.01, 0.03, 0.1])
def test_default_floors_are_at_least_uniform_width_at_half_the_budget_on_a_cnn_gru(budget):
    """DeepSense: the floors keep every conv and GRU group at least as wide as uniform width at half the budget
    (so the global ranking cannot empty the GRU layers) and cost at most half the budget."""
    from deepiot.models import DeepSense

    torch.manual_seed(0)
    model = DeepSense().eval()
    structure = Structure.from_model(model, torch.randn(2, 128, 6))
    floors = selection.default_floors(structure, selection.output_width(model, structure), budget, "params")
    half = selection.uniform_counts(structure, selection.uniform_fraction_at_budget(structure, budget / 2))
    assert all(floors[name] >= half[name] for name in half), (floors, half)
    assert structure.cost(floors).params <= 0.5 * budget * structure.cost().params


@pytest.mark.parametrize("cost", ["params", "macs"])
@pytest.mark.parametrize("budget", [0.05, 0.2, 0.5])
def test_uniform_width_is_the_largest_common_fraction_within_the_budget(cnn, cost, budget):
    model, structure, _ = cnn
    fraction = selection.uniform_fraction_at_budget(structure, budget, cost)
    kept = selection.uniform_at_budget(model, structure, budget, cost)
    counts = selection.counts_of(kept)
    for group in structure.groups:  # proportional to the sizes within rounding
        assert counts[group.name] == 1 or abs(counts[group.name] - fraction * group.size) <= 0.5
        assert kept[group.name] == structure.largest_l1_elements(model, group.name, counts[group.name])
    original = getattr(structure.cost(), cost)
    assert getattr(structure.cost(counts), cost) <= budget * original
    larger = selection.uniform_counts(structure, fraction + 1e-9)
    assert larger != counts and getattr(structure.cost(larger), cost) > budget * original


def test_uniform_width_on_lenet300_and_its_limits():
    model, structure = lenet300_like()
    fraction = selection.uniform_fraction_at_budget(structure, 0.02)
    assert selection.counts_of(selection.uniform_at_budget(model, structure, 0.02)) == {"fc1": 6, "fc2": 2}
    assert 0.0183 < fraction < 0.025  # fc1 6 (round(300 f) = 6 up to f = 6.5 / 300 = 0.02167), fc2 2
    assert selection.uniform_fraction_at_budget(structure, 1.0) == 1.0
    with pytest.raises(ValueError, match="one element per group still leaves"):
        selection.uniform_fraction_at_budget(structure, 1e-4)


def test_a_fraction_out_of_range_is_named_as_the_fraction(cnn):
    model, structure, _ = cnn
    for method in ("magnitude", "random"):
        with pytest.raises(ValueError, match=r"kept fraction per group must be in \(0, 1\], got 1.5"):
            prune(
                model, toy_data(32, 0), toy_data(32, 1), method=method, fraction=1.5, finetune_config=RECIPE
            )
    with pytest.raises(ValueError, match=r"kept fraction per group must be in \(0, 1\], got 0"):
        selection.magnitude_at_fraction(model, structure, 0.0)


@pytest.mark.parametrize("scratch_better", [True, False])
def test_try_scratch_keeps_the_better_of_the_handed_on_and_the_reinitialised_weights(
    tmp_path, cnn, scratch_trials, scratch_better
):
    model, structure, inputs = cnn
    started = scratch_trials(prefer_scratch=scratch_better)
    result = prune(model, toy_data(64, 0), toy_data(32, 1), method="magnitude", budget=0.3, seed=5,
                   try_scratch=True, finetune_config=NO_FINETUNING, out_dir=tmp_path, outputs=NO_LATENCY)  # fmt: skip
    assert [scratch for scratch, _ in started] == [False, True]
    handed_on, _ = slice_checked(
        model, structure, selection.magnitude_at_budget(model, structure, 0.3), inputs
    )
    fresh, _ = runtime.reinitialised(
        handed_on, 5
    )  # the definition: same architecture, reset, seeded by `seed`
    for (_, weights), expected in zip(started, (handed_on, fresh), strict=True):
        assert all(torch.equal(weights[key], value) for key, value in expected.state_dict().items())
    assert result.report["element_choice"] == {"scratch": {
        "chosen": "scratch" if scratch_better else "handed_on",
        "val_accuracy": {"handed_on": 0.9 - 0.1 * scratch_better, "scratch": 0.8 + 0.1 * scratch_better},
    }}  # fmt: skip
    winner = fresh if scratch_better else handed_on  # 0 steps: the winner's weights come back unchanged
    assert all(
        torch.equal(value, winner.state_dict()[key])
        for key, value in result.sliced_model.state_dict().items()
    )
    assert (
        json.loads((tmp_path / "report.json").read_text())["element_choice"]
        == result.report["element_choice"]
    )


@pytest.mark.parametrize("method", ["scratch", "unstructured", "unstructured_fair"])
def test_try_scratch_is_refused_where_no_original_weights_are_handed_on(cnn, method):
    with pytest.raises(ValueError, match=f"try_scratch applies to .* not to '{method}'"):
        prune(cnn[0], toy_data(32, 0), toy_data(32, 1), method=method, budget=0.3, try_scratch=True,
              finetune_config=NO_FINETUNING)  # fmt: skip


def magnitude_plan(tmp_path, model, structure, budget: float = 0.3):
    from deepiot.structure import SlicingPlan

    kept = selection.magnitude_at_budget(model, structure, budget)
    path = tmp_path / "slicing_plan.json"
    SlicingPlan.from_structure(structure, {}, kept).save(path)
    return path, kept


def reported_counts(report) -> dict[str, int]:
    return {group["name"]: group["kept"] for group in report["groups"]}


NO_FINETUNING = FinetuneConfig(steps=0, batch_size=16, eval_every=3, eval_batch_size=64)


def test_scratch_reinitialises_the_plans_architecture_deterministically(tmp_path, cnn):
    model, structure, inputs = cnn
    path, kept = magnitude_plan(tmp_path, model, structure)
    train, val = toy_data(64, 0), toy_data(32, 1)

    def scratch(seed: int):
        return prune(model, train, val, method="scratch", plan=path, budget=0.3, seed=seed,
                     finetune_config=NO_FINETUNING, outputs=NO_LATENCY)  # fmt: skip

    result = scratch(seed=3)
    assert result.plan.kept == kept
    assert reported_counts(result.report) == selection.counts_of(kept)
    assert result.report["scratch"]["plan"] == str(path)
    assert result.report["method"]["budget"] == 0.3  # recorded only
    sliced, _ = slice_checked(model, structure, kept, inputs)
    fresh, pruned = result.sliced_model.state_dict(), sliced.state_dict()
    assert fresh.keys() == pruned.keys()
    assert all(fresh[key].shape == pruned[key].shape for key in fresh)
    for name in ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc2.bias"):
        assert not torch.allclose(fresh[name], pruned[name])  # re-initialised, not the trained weights
    assert torch.equal(fresh["bn1.running_var"], torch.ones(len(kept["conv1"])))  # statistics reset too
    assert (
        measure_cost(result.sliced_model, inputs).params == structure.cost(selection.counts_of(kept)).params
    )
    again = scratch(seed=3).sliced_model.state_dict()
    assert all(torch.equal(fresh[key], again[key]) for key in fresh)
    other = scratch(seed=4).sliced_model.state_dict()
    assert not torch.equal(fresh["fc1.weight"], other["fc1.weight"])


def test_reinitialised_leaves_the_global_generator_alone_and_refuses_bare_parameters(cnn):
    model = cnn[0]
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    fresh, names = runtime.reinitialised(model, seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert names == ["conv1", "bn1", "conv2", "fc1", "fc2"]

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.scale = nn.Parameter(torch.ones(2))

    with pytest.raises(ValueError, match=r"parameters \['scale'\] belong to modules without one"):
        runtime.reinitialised(Scaled(), seed=0)


def test_scratch_takes_counts_and_refuses_a_missing_or_mismatched_plan(tmp_path, cnn):
    model = cnn[0]
    train, val = toy_data(64, 0), toy_data(32, 1)
    counts = {"conv1": 2, "conv2": 3, "fc1": 4}
    result = prune(model, train, val, method="scratch", counts=counts, finetune_config=NO_FINETUNING,
                   outputs=NO_LATENCY)  # fmt: skip
    assert reported_counts(result.report) == counts
    with pytest.raises(ValueError, match="exactly one of plan=<that run's slicing_plan.json>"):
        prune(model, train, val, method="scratch", budget=0.3, finetune_config=NO_FINETUNING)
    gru, gru_structure, _ = built(SmallGRU, (12, 3))
    path, _ = magnitude_plan(tmp_path, gru, gru_structure)
    from deepiot.structure import StructureError

    with pytest.raises(StructureError, match="does not match the model's groups"):
        prune(model, train, val, method="scratch", plan=path, finetune_config=NO_FINETUNING)


def test_lamp_scores_are_each_weights_share_of_what_is_left_of_its_layer():
    scores = unstructured.lamp_scores(torch.tensor([[3.0, -1.0], [2.0, 0.0]]))
    # squares 9, 1, 4, 0 ascending 0, 1, 4, 9; what is left from each on: 14, 14, 13, 9
    expected = torch.tensor([[9 / 9, 1 / 14], [4 / 13, 0 / 14]], dtype=torch.float64)
    assert torch.allclose(scores, expected)


def test_lamp_masks_never_empty_a_small_weight_layer_and_ignore_a_layers_scale(cnn):
    model, _, _ = cnn
    keep = 40
    before = unstructured.lamp_masks(model, keep)
    with torch.no_grad():
        model.conv2.weight *= 1e-3  # a layer of small weights: the global |w| ranking empties it
    assert float(unstructured.global_magnitude_masks(model, 0.1)["conv2.weight"].sum()) == 0
    masks = unstructured.lamp_masks(model, keep)
    assert sum(int(mask.sum()) for mask in masks.values()) == keep
    assert all(mask.sum() > 0 for mask in masks.values())
    assert all(torch.equal(masks[name], before[name]) for name in masks)
    for name, mask in masks.items():  # inside a tensor, the largest |w| are the kept ones
        magnitudes = model.get_parameter(name).detach().abs()
        if bool((mask == 0).any()):
            assert float(magnitudes[mask == 0].max()) <= float(magnitudes[mask == 1].min())


def test_gradual_pruning_follows_the_cubic_schedule_to_the_budget(cnn):
    model, _, _ = cnn
    schedule = unstructured.GradualPruning.for_budget(model, 0.1, steps=300)
    total = sum(parameter.numel() for parameter in model.parameters())
    dense = total - schedule.total
    assert schedule.final_keep + dense == round(0.1 * total)
    assert (schedule.end_step, schedule.every) == (150, 150 // unstructured.GRADUAL_UPDATES)
    keeps = [schedule.keep_at(step) for step in range(0, 301, 10)]
    assert keeps[0] == schedule.total and keeps[15:] == [schedule.final_keep] * 16
    assert all(a >= b for a, b in zip(keeps, keeps[1:], strict=False))
    middle = schedule.final_keep + round((schedule.total - schedule.final_keep) * 0.5**3)  # t = end / 2
    assert schedule.keep_at(75) == middle
    assert schedule.masks_at(model, schedule.every + 1) is None and schedule.masks_at(model, 151) is None
    assert sum(int(mask.sum()) for mask in schedule.masks_at(model, 150).values()) == schedule.final_keep


def test_unstructured_fair_prunes_gradually_and_keeps_only_a_final_sparsity_checkpoint(tmp_path, cnn):
    model = cnn[0]
    total = sum(parameter.numel() for parameter in model.parameters())
    recipe = FinetuneConfig(steps=30, batch_size=16, eval_every=3, eval_batch_size=64)
    result = prune(model, toy_data(64, 0), toy_data(32, 1), method="unstructured_fair", budget=0.2,
                   finetune_config=recipe, out_dir=tmp_path, outputs=NO_LATENCY)  # fmt: skip
    tuned = result.sliced_model  # the dense masked model
    nonzero = unstructured.nonzero_params(tuned, unstructured.GradualPruning.masks_of(tuned))
    assert nonzero == result.report["unstructured"]["nonzero_params"] == round(0.2 * total)
    assert result.report["unstructured"]["ranking"] == "LAMP, gradual"
    assert result.report["unstructured"]["emptied_tensors"] == []
    final = [row["val_accuracy"] for row in result.report["finetune_history"] if row["step"] > 15]
    assert result.report["accuracy"]["compressed_val"] == max(final)  # the denser steps before 15 cannot win


@pytest.mark.parametrize("method", ["magnitude_floor", "uniform", "unstructured_fair"])
def test_prune_runs_the_new_budget_methods_end_to_end(tmp_path, cnn, method):
    model = cnn[0]
    result = prune(model, toy_data(64, 0), toy_data(32, 1), method=method, budget=0.2, finetune_config=RECIPE,
                   out_dir=tmp_path, outputs=NO_LATENCY)  # fmt: skip
    assert result.report["method"]["name"] == method
    total = sum(parameter.numel() for parameter in model.parameters())
    if method == "unstructured_fair":
        assert result.report["unstructured"]["nonzero_params"] == round(0.2 * total)
        assert result.report["unstructured"]["emptied_tensors"] == []
        assert result.plan is None
    else:
        assert result.report["cost"]["left"]["params"] <= 0.2
        assert (tmp_path / "slicing_plan.json").is_file()
        assert method in result.report


def test_deepiot_baseline_config_selects_the_new_methods(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from deepiot.cli.baseline import compose_baseline_config

    base = [f"paths.output_dir={tmp_path}"]
    try:
        for method in ("magnitude_floor", "uniform", "scratch", "unstructured_fair"):
            assert pipeline.METHODS.count(method) == 1
            assert compose_baseline_config([*base, f"method={method}"]).method.name == method
        floor = compose_baseline_config([*base, "method=magnitude_floor", "method.floor=4"]).method
        assert (floor.floor, floor.normalizer) == (4, "mean")
        plan = tmp_path / "slicing_plan.json"
        scratch = compose_baseline_config([*base, "method=scratch", f"method.plan={plan}"]).method
        assert (scratch.plan, scratch.counts) == (str(plan), None)
    finally:
        GlobalHydra.instance().clear()


def test_run_baseline_trains_another_runs_plan_from_scratch(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from deepiot.cli.baseline import compose_baseline_config, run_baseline

    tiny = [
        "data.dataset.limit=256",
        "trainer.epochs=1",
        "finetune.steps=2",
        "finetune.eval_every=2",
        "finetune.batch_size=32",
        "budget.fraction=0.2",
        f"paths.original_dir={tmp_path / 'train'}",
    ]
    try:
        magnitude = run_baseline(
            compose_baseline_config([*tiny, "method=magnitude", f"paths.output_dir={tmp_path / 'magnitude'}"])
        )
        plan = tmp_path / "magnitude" / "slicing_plan.json"
        scratch = run_baseline(
            compose_baseline_config(
                [*tiny, "method=scratch", f"method.plan={plan}", f"paths.output_dir={tmp_path / 'scratch'}"]
            )
        )
    finally:
        GlobalHydra.instance().clear()
    assert reported_counts(scratch) == reported_counts(magnitude)
    assert scratch["cost"]["compressed"]["params"] == magnitude["cost"]["compressed"]["params"]
    assert scratch["scratch"]["plan"] == str(plan)
    assert (scratch["method"]["name"], scratch["method"]["budget"]) == ("scratch", 0.2)


@pytest.mark.parametrize("method", ["magnitude_floor", "uniform"])
def test_the_new_structured_methods_take_a_budget_in_device_units(cnn, method):
    model, _, inputs = cnn
    full_kb = 4 * sum(parameter.numel() for parameter in model.parameters()) / 1024
    result = prune(model, toy_data(64, 0), toy_data(32, 1), method=method, budget=full_kb / 4, cost="model_kb",
                   finetune_config=NO_FINETUNING, outputs=NO_LATENCY)  # fmt: skip
    assert 4 * measure_cost(result.sliced_model, inputs).params / 1024 <= full_kb / 4
    with pytest.raises(ValueError, match="takes a budget only"):
        prune(model, toy_data(64, 0), toy_data(32, 1), method=method, fraction=0.5, finetune_config=RECIPE)
