"""Baseline methods: exact counts, budgets met within one element, sliced == masked, Torch-Pruning's own
count, exact unstructured sparsity, and the end-to-end `prune` with its artefacts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from deepiot.api import OutputOptions
from deepiot.baselines import prune, reference, selection, unstructured
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
