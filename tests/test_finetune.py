"""The shared fine-tuning recipe: distillation loss, best-validation choice, resume, schedule, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepiot import finetune as finetune_module
from deepiot.finetune import FinetuneConfig, FinetuneError, distillation_loss, finetune, learning_rate


def blobs(samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian blobs in 8-D: learnable in a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (samples,), generator=generator)
    centres = torch.eye(8)[:4] * 3.0  # [4, 8]
    return centres[labels] + torch.randn(samples, 8, generator=generator), labels


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))


def interrupted_after(steps: int, step_function):
    """`step_function` that raises KeyboardInterrupt on its call number `steps` + 1 (a killed run)."""
    calls = {"count": 0}

    def interrupted(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > steps:
            raise KeyboardInterrupt
        return step_function(*args, **kwargs)

    return interrupted


def test_distillation_loss_matches_a_hand_computed_value():
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0]])
    labels = torch.tensor([0])
    weight, temperature = 0.25, 2.0
    # by hand: CE = log(1 + e^-1); p_t = softmax([0, 1]), p_s = softmax([0.5, 0])
    ce = math.log(1.0 + math.exp(-1.0))
    p_t = [1 / (1 + math.e), math.e / (1 + math.e)]
    p_s = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    kl = sum(t * math.log(t / s) for t, s in zip(p_t, p_s, strict=True))
    expected = (1 - weight) * ce + weight * temperature**2 * kl
    value = distillation_loss(student, teacher, labels, weight, temperature)
    assert float(value) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(student, None, labels, 0.0, temperature)) == pytest.approx(ce, rel=1e-6)


def test_cosine_learning_rate_falls_to_zero_and_constant_stays():
    cosine = FinetuneConfig(steps=100, lr=0.01)
    assert learning_rate(cosine, 0) == pytest.approx(0.01)
    assert learning_rate(cosine, 50) == pytest.approx(0.005)
    assert learning_rate(cosine, 100) == 0.0
    assert learning_rate(FinetuneConfig(steps=100, lr=0.01, schedule="constant"), 100) == 0.01


def test_finetuning_learns_and_reports_the_last_lr_as_zero():
    train, val = blobs(512, 0), blobs(256, 1)
    result = finetune(
        small_model(),
        train,
        val,
        FinetuneConfig(distill_weight=0.0, steps=60, batch_size=32, eval_every=20, lr=0.01),
    )
    assert [record["step"] for record in result.history] == [0, 20, 40, 60]
    assert result.history[-1]["lr"] == 0.0
    assert result.best_val_accuracy == max(record["val_accuracy"] for record in result.history)
    assert result.best_val_accuracy > 0.9


def test_the_best_validation_weights_are_returned(monkeypatch):
    """Validation accuracies are scripted 0.3, 0.9, 0.5: the weights of the second evaluation come back."""
    train, val = blobs(256, 0), blobs(64, 1)
    scripted = iter([0.3, 0.9, 0.5])
    snapshots = []

    def scripted_accuracy(network, *args, **kwargs):
        snapshots.append({key: value.clone() for key, value in network.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(finetune_module.runtime, "accuracy", scripted_accuracy)
    result = finetune(
        small_model(), train, val, FinetuneConfig(distill_weight=0.0, steps=20, batch_size=32, eval_every=10)
    )
    assert result.best_val_accuracy == 0.9
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, snapshots[1][key])
    assert not torch.equal(result.model.state_dict()["0.weight"], snapshots[2]["0.weight"])


def test_an_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch):
    train, val = blobs(512, 0), blobs(128, 1)
    teacher = small_model()
    config = FinetuneConfig(steps=50, batch_size=32, eval_every=20, distill_weight=0.5, seed=3)
    whole = finetune(small_model(), train, val, config, teacher=teacher)

    original_step = finetune_module.train_step
    state_path = tmp_path / "finetune_state.pt"
    monkeypatch.setattr(finetune_module, "train_step", interrupted_after(27, original_step))
    with pytest.raises(KeyboardInterrupt):
        finetune(small_model(), train, val, config, teacher=teacher, state_path=state_path)
    monkeypatch.setattr(finetune_module, "train_step", original_step)
    torch.manual_seed(12345)  # the resumed run must not depend on the global generator's state
    resumed = finetune(small_model(), train, val, config, teacher=teacher, state_path=state_path)

    assert resumed.history == whole.history
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key])


def test_an_interrupted_gradual_pruning_resumes_bit_identically(tmp_path, monkeypatch):
    """The checkpoint at step 20 lies four steps before the next mask update (every 8 steps): the resumed run
    takes its masks from the weights held at 0 and must end where the uninterrupted one does."""
    from deepiot.baselines.unstructured import GradualPruning, prunable_weights

    train, val = blobs(512, 0), blobs(128, 1)
    total = sum(weight.numel() for weight in prunable_weights(small_model()).values())
    pruning = GradualPruning(total=total, final_keep=60, end_step=30, every=8)
    config = FinetuneConfig(steps=50, batch_size=32, eval_every=10, distill_weight=0.0, seed=3, lr=0.01)
    whole = finetune(small_model(), train, val, config, pruning=pruning)
    kept = sum(int((weight != 0).sum()) for weight in prunable_weights(whole.model).values())
    assert kept == 60 and whole.best_val_accuracy > 0.5
    assert whole.best_val_accuracy == max(row["val_accuracy"] for row in whole.history if row["step"] > 30)

    original_step = finetune_module.train_step
    state_path = tmp_path / "finetune_state.pt"
    monkeypatch.setattr(finetune_module, "train_step", interrupted_after(27, original_step))
    with pytest.raises(KeyboardInterrupt):
        finetune(small_model(), train, val, config, pruning=pruning, state_path=state_path)
    monkeypatch.setattr(finetune_module, "train_step", original_step)
    resumed = finetune(small_model(), train, val, config, pruning=pruning, state_path=state_path)
    assert resumed.history == whole.history
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key])


def test_resuming_with_another_recipe_is_refused(tmp_path):
    train, val = blobs(128, 0), blobs(64, 1)
    state_path = tmp_path / "state.pt"
    finetune(
        small_model(),
        train,
        val,
        FinetuneConfig(distill_weight=0.0, steps=4, batch_size=32, eval_every=2),
        state_path=state_path,
    )
    with pytest.raises(ValueError, match="lr: 0.001 → 0.01"):
        finetune(
            small_model(),
            train,
            val,
            FinetuneConfig(distill_weight=0.0, steps=4, batch_size=32, eval_every=2, lr=0.01),
            state_path=state_path,
        )


def test_weight_masks_hold_masked_weights_at_zero():
    train, val = blobs(256, 0), blobs(64, 1)
    model = small_model()
    mask = (torch.rand(16, 8, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    result = finetune(
        model,
        train,
        val,
        FinetuneConfig(distill_weight=0.0, steps=20, batch_size=32, eval_every=10),
        weight_masks={"0.weight": mask},
    )
    weight = result.model.state_dict()["0.weight"]
    assert torch.all(weight[mask == 0] == 0)
    assert int((weight != 0).sum()) == int(mask.sum())


def test_a_non_finite_loss_stops_with_a_clear_message():
    train, val = blobs(128, 0), blobs(64, 1)
    train = (train[0].clone(), train[1])
    train[0][5, 0] = float("nan")
    with pytest.raises(FinetuneError, match="fine-tuning loss became nan at step"):
        finetune(
            small_model(),
            train,
            val,
            FinetuneConfig(distill_weight=0.0, steps=10, batch_size=128, eval_every=5),
        )


def test_an_exploding_finite_loss_stops_too():
    train, val = blobs(128, 0), blobs(64, 1)
    train = (train[0] * 1e6, train[1])  # finite inputs, logits in the millions: cross-entropy far above 1000
    with pytest.raises(FinetuneError, match=r"loss became .* at step 1 .*fine-tuning diverged"):
        finetune(
            small_model(),
            train,
            val,
            FinetuneConfig(distill_weight=0.0, steps=10, batch_size=128, eval_every=5),
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"steps": -1}, "finetune.steps must be an integer >= 0, got -1"),
        ({"schedule": "linear"}, "finetune.schedule must be one of cosine, constant, got 'linear'"),
        ({"distill_weight": 1.5}, "finetune.distill_weight must be in \\[0, 1\\], got 1.5"),
        ({"lr": 0.0}, "finetune.lr must be a positive learning rate"),
        ({"temperature": 0}, "finetune.temperature must be a positive number"),
    ],
)
def test_bad_recipe_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**overrides)


def test_distillation_without_a_teacher_is_rejected():
    with pytest.raises(ValueError, match="no teacher was given"):
        finetune(small_model(), blobs(64, 0), blobs(64, 1), FinetuneConfig(batch_size=32, distill_weight=0.5))
