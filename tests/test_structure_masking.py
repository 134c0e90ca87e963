"""MaskedNetwork and slice_model: hard masks equal physical removal, fractional masks scale, gradients flow."""

from __future__ import annotations

import pytest
import torch
from test_structure_models import CASES, build_case
from torch import nn

from deepiot.structure import MaskedNetwork, Structure, StructureError, sample_masks, slice_model

TOLERANCE = {"atol": 1e-5, "rtol": 0.0}


def _kept(structure: Structure, pattern: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Kept indices per group: a random non-empty subset, a single random unit, or everything."""
    kept = {}
    for group in structure.groups:
        if pattern == "all":
            kept[group.name] = torch.arange(group.size)
        elif pattern == "one":
            kept[group.name] = torch.randint(group.size, (1,), generator=generator)
        else:
            count = int(torch.randint(1, group.size + 1, (1,), generator=generator))
            kept[group.name] = torch.randperm(group.size, generator=generator)[:count].sort().values
    return kept


@pytest.mark.parametrize("pattern", ["random", "one", "all"])
@pytest.mark.parametrize("name", list(CASES))
def test_sliced_model_equals_hard_masked_model(name, pattern):
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    kept = _kept(structure, pattern, torch.Generator().manual_seed(1))
    sliced = slice_model(model, structure, kept).eval()
    with torch.no_grad():
        masked_output = MaskedNetwork(model, structure)(x, structure.masks_from_kept(kept))
        torch.testing.assert_close(sliced(x), masked_output, **TOLERANCE)


@pytest.mark.parametrize("name", list(CASES))
def test_sliced_model_is_physically_smaller(name):
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    kept = {group.name: [0] for group in structure.groups}
    sliced = slice_model(model, structure, kept)
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in model.parameters())
    assert structure.cost(dict.fromkeys(structure.group_sizes, 1)).params == sum(
        p.numel() for p in sliced.parameters()
    )


@pytest.mark.parametrize("name", list(CASES))
def test_all_ones_and_empty_masks_give_the_plain_model(name):
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    masked = MaskedNetwork(model, structure)
    ones = {group.name: torch.ones(len(x), group.size) for group in structure.groups}
    with torch.no_grad():
        plain = model(x)
        torch.testing.assert_close(masked(x, ones), plain, **TOLERANCE)
        torch.testing.assert_close(masked(x, {}), plain, **TOLERANCE)
        assert torch.equal(masked(x), plain)


@pytest.mark.parametrize(
    "name",
    [
        "lenet300",
        "lenet5",
        "sigmoid_tanh_mlp",
        "gelu_concat_mlp",
        "time_distributed_mlp",
        "conv1d_bn",
        "residual_bn",
        "concat_branches",
    ],
)
def test_fractional_masks_scale_each_element_once(name):
    """Masks p on group g equal scaling the consumers' input weights by p in the plain model (x·p once)."""
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    probs = {g.name: torch.rand(g.size, generator=torch.Generator().manual_seed(3)) for g in structure.groups}
    scaled = _scale_consumer_inputs(model, structure, probs)
    with torch.no_grad():
        torch.testing.assert_close(MaskedNetwork(model, structure)(x, probs), scaled(x), **TOLERANCE)


def _scale_consumer_inputs(model: nn.Module, structure: Structure, probs: dict) -> nn.Module:
    """A copy whose Linear/Conv consumers have input column/channel j scaled by p_j of the group it reads."""
    import copy

    from deepiot.structure.layout import kept_positions

    scaled = copy.deepcopy(model)
    for name, use in structure.data.module_uses.items():
        if use.kind not in ("linear", "conv"):
            continue
        module = scaled.get_submodule(name)
        column_scale = torch.ones(module.weight.shape[1])
        offset = 0
        for segment in use.input:
            if segment.group is not None:
                positions = kept_positions((segment,), {}) + offset
                column_scale[positions] = probs[segment.group].repeat_interleave(segment.repeat)
            offset += segment.width
        module.weight.data *= column_scale.view(1, -1, *[1] * (module.weight.dim() - 2))  # [1, in, 1...]
    return scaled


def test_mask_of_zero_removes_a_sigmoid_unit_exactly():
    """sigmoid(0) = 0.5: a dropped unit must not leak 0.5 into the next layer."""
    model, x = build_case("sigmoid_tanh_mlp")
    structure = Structure.from_model(model, x)
    masks = {"fc1": torch.zeros(9), "fc2": torch.ones(7)}
    with torch.no_grad():
        output = MaskedNetwork(model, structure)(x, masks)
        expected = model.fc3(torch.tanh(model.fc2.bias)).expand_as(output)
    torch.testing.assert_close(output, expected, **TOLERANCE)


@pytest.mark.parametrize(
    "name", ["lenet5", "residual_bn", "stacked_gru", "deepsense", "conv_rnn_relu", "dropout_lstm_gru"]
)
def test_gradients_reach_model_parameters_through_masks(name):
    model, x = build_case(name)
    model.train()
    structure = Structure.from_model(model, x)
    masked = MaskedNetwork(model, structure)
    probs = {g.name: torch.full((g.size,), 0.7) for g in structure.groups}
    masks = sample_masks(probs, len(x), generator=torch.Generator().manual_seed(0))
    masked(x, masks).square().sum().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
    assert set(dict(masked.named_parameters())) == {f"model.{n}" for n, _ in model.named_parameters()}


def test_per_sample_masks_act_per_sample():
    model, x = build_case("lenet5")
    structure = Structure.from_model(model, x)
    masked = MaskedNetwork(model, structure)
    keep_all = {g.name: torch.ones(g.size) for g in structure.groups}
    drop_conv1 = {**keep_all, "conv1": torch.zeros(4)}
    per_sample = {name: torch.stack([keep_all[name], drop_conv1[name], keep_all[name]]) for name in keep_all}
    with torch.no_grad():
        mixed = masked(x, per_sample)
        torch.testing.assert_close(mixed[[0, 2]], masked(x[[0, 2]], keep_all), **TOLERANCE)
        torch.testing.assert_close(mixed[1], masked(x[1:2], drop_conv1)[0], **TOLERANCE)


def test_sample_masks_shapes_and_rates():
    probs = {"a": torch.tensor([0.0, 1.0, 0.5])}
    masks = sample_masks(probs, 4000, generator=torch.Generator().manual_seed(0))
    assert masks["a"].shape == (4000, 3) and masks["a"].dtype == torch.float32
    assert set(masks["a"].unique().tolist()) <= {0.0, 1.0}
    assert masks["a"][:, 0].sum() == 0 and masks["a"][:, 1].sum() == 4000
    assert abs(float(masks["a"][:, 2].mean()) - 0.5) < 0.05


def test_bad_masks_are_rejected_with_the_group_name():
    model, x = build_case("lenet5")
    structure = Structure.from_model(model, x)
    masked = MaskedNetwork(model, structure)
    with pytest.raises(StructureError, match="unknown group 'fc2'"):
        masked(x, {"fc2": torch.ones(10)})
    with pytest.raises(StructureError, match=r"group 'conv1' must have shape \[4\] or \[3, 4\]"):
        masked(x, {"conv1": torch.ones(5)})


def test_masked_network_runs_any_batch_size_and_sequence_length():
    model, x = build_case("cnn_lstm")
    structure = Structure.from_model(model, x)
    masked = MaskedNetwork(model, structure)
    for batch, steps in ((1, 12), (5, 30)):
        masks = {g.name: torch.ones(batch, g.size) for g in structure.groups}
        assert masked(torch.randn(batch, steps, 6), masks).shape == (batch, 4)


@pytest.mark.parametrize("name", ["lenet5", "deepsense", "stacked_gru", "rnn_tanh_bidir_dropout"])
def test_sliced_model_traces_with_torchscript(name):
    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    sliced = slice_model(model, structure, {g.name: [0, 1] for g in structure.groups}).eval()
    traced = torch.jit.trace(sliced, (x,))
    torch.testing.assert_close(traced(x), sliced(x), **TOLERANCE)


@pytest.mark.parametrize(
    "name",
    [
        "hard_coded_view",
        "stacked_gru",
        "squeeze_excite",
        "rnn_relu_bidir_dropout",
        "conv_rnn_relu",
        "dropout_lstm_gru",
    ],
)
def test_sliced_model_exports_to_onnx(name, tmp_path):
    import onnxruntime

    model, x = build_case(name)
    structure = Structure.from_model(model, x)
    kept = {g.name: list(range(index % g.size + 1)) for index, g in enumerate(structure.groups)}
    sliced = slice_model(model, structure, kept).eval()
    torch.onnx.export(sliced, (x,), tmp_path / "model.onnx", input_names=["x"], dynamo=False)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (output,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(output), sliced(x), **TOLERANCE)


class FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.dropout(self.fc(x), 0.5, training=self.training))


def test_functional_dropout_follows_train_and_eval_mode():
    """fx would freeze `training=self.training` at trace time; masked and sliced models follow the mode."""
    model = FunctionalDropout().train()
    x = torch.randn(64, 3)
    structure = Structure.from_model(model, x)
    masked = MaskedNetwork(model, structure)
    keep = {"fc": torch.ones(8)}
    assert not torch.equal(masked(x, keep), masked(x, keep))
    sliced = slice_model(model, structure, {"fc": [0, 2, 5]})
    assert not torch.equal(sliced(x), sliced(x))
    model.eval()
    sliced.eval()
    assert torch.equal(masked(x, keep), model(x))
    assert torch.equal(sliced(x), sliced(x))
