"""The compressor-critic loop end to end on LeNet-300-100 with small synthetic data."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import deepiot.compression.loop as loop
from deepiot.api import compress
from deepiot.checkpoint import load_checkpoint
from deepiot.compression import STATE_FILE, CompressionConfig, LoopConfig, compress_model
from deepiot.compression.reward import CriticConfig
from deepiot.compression.schedules import ScheduleConfig
from deepiot.compression.step import build_parts, compressor_critic_step, fresh_state
from deepiot.finetune import FinetuneConfig
from deepiot.models import LeNet300
from deepiot.runtime import CompressionError
from deepiot.structure import SlicingPlan, Structure, build_sliced_model


def small_config(finetune_steps: int = 20, **loop: object) -> CompressionConfig:
    settings = {"max_iterations": 40, "batch_size": 32, "eval_every": 10, **loop}
    return CompressionConfig(
        loop=LoopConfig(**settings),
        schedule=ScheduleConfig(final_tau=0.6, steps=6, every=5),
        finetune=FinetuneConfig(steps=finetune_steps, batch_size=32, eval_every=10, distill_weight=0.5),
    )


def test_compress_writes_report_plan_and_export_that_agree(tmp_path, data, trained_model):
    model_config = {
        "_target_": "deepiot.models.LeNet300",
        "input_shape": [1, 28, 28],
        "num_classes": 10,
        "hidden1": 60,
        "hidden2": 30,
    }
    from deepiot.api import OutputOptions

    result = compress(
        trained_model,
        *data,
        config=small_config(),
        out_dir=tmp_path,
        outputs=OutputOptions(model_config=model_config, latency_threads=None),
        progress=False,
    )
    for name in (
        "report.json",
        "report.md",
        "kept_elements.png",
        "progress.png",
        "slicing_plan.json",
        STATE_FILE,
    ):
        assert (tmp_path / name).is_file(), name
    for name in ("model.ts", "model.onnx", "manifest.json", "slicing_plan.json"):
        assert (tmp_path / "export" / name).is_file(), name

    report = json.loads((tmp_path / "report.json").read_text())
    sliced_params = sum(param.numel() for param in result.sliced_model.parameters())
    assert report["cost"]["compressed"]["params"] == sliced_params
    assert report["cost"]["original"]["params"] == sum(param.numel() for param in trained_model.parameters())
    kept = {group["name"]: group["kept"] for group in report["groups"]}
    assert kept == {name: len(indices) for name, indices in result.plan.kept.items()}
    assert result.sliced_model.fc1.out_features == kept["fc1"]
    assert result.sliced_model.fc2.out_features == kept["fc2"]
    assert report["sliced_vs_masked_max_abs_diff"] <= 1e-4
    markdown = (tmp_path / "report.md").read_text()
    assert f"| params | {report['cost']['original']['params']:,} | {sliced_params:,} |" in markdown
    assert report["iterations"] == 40 and report["finetune_iterations"] == 20
    # TensorBoard: the loop's namespaced metrics, keep-probability histograms and the hyperparameter table
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    expected = {"losses/critic", "losses/compressor", "compressor/reward_mean", "compressor/baseline"}
    expected |= {"compressor/advantage_var", "compressor/grad_var", "schedule/tau", "structure/kept/fc1"}
    expected |= {"cost/params_ratio", "cost/macs_ratio", "charts/val_accuracy", "charts/test_accuracy"}
    assert expected <= set(events.Tags()["scalars"])
    assert {"keep_prob/fc1", "keep_prob/fc2"} <= set(events.Tags()["histograms"])
    assert "hyperparameters/text_summary" in events.Tags()["tensors"]
    # the saved plan rebuilds the same small model from the fine-tuned sliced weights
    plan = SlicingPlan.load(tmp_path / "slicing_plan.json")
    assert plan.kept == result.plan.kept
    example = data[2].tensors[0][:8]
    rebuilt = build_sliced_model(plan, result.sliced_model.state_dict(), example[:1]).eval()
    torch.testing.assert_close(rebuilt(example), result.sliced_model(example), atol=1e-5, rtol=1e-5)


def test_same_seed_same_result_and_killed_run_resumes_identically(tmp_path, data, trained_model, monkeypatch):
    config = small_config()
    uninterrupted = compress_model(trained_model, *data, config, run_dir=tmp_path / "a")

    real_step = loop.compressor_critic_step
    calls = {"count": 0}

    def killed_after_27_steps(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] > 27:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "compressor_critic_step", killed_after_27_steps)
    with pytest.raises(KeyboardInterrupt):
        compress_model(trained_model, *data, config, run_dir=tmp_path / "b")
    assert load_checkpoint(tmp_path / "b" / STATE_FILE)["loop"]["iteration"] == 20  # last evaluation
    monkeypatch.setattr(loop, "compressor_critic_step", real_step)
    resumed = compress_model(trained_model, *data, config, run_dir=tmp_path / "b")

    assert resumed.report["history"] == uninterrupted.report["history"]
    assert resumed.report["kept"] == uninterrupted.report["kept"]
    assert resumed.report["accuracy"] == uninterrupted.report["accuracy"]
    for name, tensor in uninterrupted.sliced_model.state_dict().items():
        assert torch.equal(tensor, resumed.sliced_model.state_dict()[name])
    final_a = load_checkpoint(tmp_path / "a" / STATE_FILE)
    final_b = load_checkpoint(tmp_path / "b" / STATE_FILE)
    for name, logits in final_a["loop"]["keep_logits"].items():
        assert torch.equal(logits, final_b["loop"]["keep_logits"][name])
    for name, tensor in final_a["state_dict"].items():
        assert torch.equal(tensor, final_b["state_dict"][name])


def test_resuming_with_another_config_is_refused(tmp_path, data, trained_model):
    compress_model(trained_model, *data, small_config(max_iterations=10, finetune_steps=0), run_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot resume .*loop.max_iterations: 10 → 20"):
        compress_model(
            trained_model, *data, small_config(max_iterations=20, finetune_steps=0), run_dir=tmp_path
        )


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_state(
    tmp_path, data, trained_model, monkeypatch
):
    real_step = loop.compressor_critic_step

    def poisoned_after_first_evaluation(parts, state, measure_variance=False):
        if state.iteration == 15:
            with torch.no_grad():
                parts.critic.fc1.weight.fill_(math.nan)
        return real_step(parts, state, measure_variance)

    monkeypatch.setattr(loop, "compressor_critic_step", poisoned_after_first_evaluation)
    with pytest.raises(
        CompressionError, match=r"critic loss became nan at iteration 15 .*last good state \(iteration 10\)"
    ):
        compress_model(trained_model, *data, small_config(), run_dir=tmp_path)
    saved = load_checkpoint(tmp_path / STATE_FILE, kind="compression_state")
    assert saved["loop"]["iteration"] == 10
    assert all(torch.isfinite(tensor).all() for tensor in saved["state_dict"].values())


def test_a_met_target_stops_at_the_first_evaluation(data, trained_model):
    result = compress_model(trained_model, *data, small_config(target_params=1.0, finetune_steps=0))
    assert result.report["iterations"] == 10
    assert result.report["stop_reason"].startswith("target met")


def test_an_accuracy_floor_above_reach_keeps_the_loop_going(data, trained_model):
    result = compress_model(
        trained_model, *data, small_config(target_params=1.0, min_val_accuracy=1.0, finetune_steps=0)
    )
    assert result.report["stop_reason"] == "max iterations (40) reached"


def test_an_unchanging_kept_set_at_the_final_threshold_converges(data, trained_model):
    config = dataclasses.replace(
        small_config(patience=2, finetune_steps=0),
        schedule=ScheduleConfig(final_tau=0.01, steps=1, every=1),
    )
    result = compress_model(trained_model, *data, config)
    assert result.report["stop_reason"] == "converged: kept set unchanged for 2 evaluations"
    assert result.report["iterations"] == 20


def test_compressor_step_with_a_heavy_size_cost_lowers_keep_probabilities(data, trained_model):
    config = dataclasses.replace(small_config(), critic=CriticConfig(lam=20.0, cost="params"))
    critic = LeNet300(hidden1=60, hidden2=30)
    critic.load_state_dict(trained_model.state_dict())
    structure = Structure.from_model(critic, data[0].tensors[0][:1])
    parts = build_parts(critic, structure, data[0].tensors, config)
    state = fresh_state(parts)
    before = torch.cat([torch.sigmoid(logit) for logit in state.keep_logits.values()]).mean()
    for _ in range(10):
        compressor_critic_step(parts, state)
        state.iteration += 1
    after = torch.cat([torch.sigmoid(logit) for logit in state.keep_logits.values()]).mean()
    assert after < before - 0.02


def test_model_without_compressible_groups_is_rejected(data):
    with pytest.raises(ValueError, match="nothing to compress"):
        compress_model(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), *data, small_config())


def test_dataset_smaller_than_one_batch_is_rejected(data, trained_model):
    tiny = TensorDataset(*(tensor[:16] for tensor in data[0].tensors))
    with pytest.raises(ValueError, match=r"16 samples, fewer than one batch \(compress.batch_size=32\)"):
        compress_model(trained_model, tiny, data[1], data[2], small_config())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LoopConfig(target_params=0.0), r"target_params .* \(0, 1\]"),
        (lambda: LoopConfig(target_macs=1.5), r"target_macs .* \(0, 1\]"),
        (lambda: LoopConfig(batch_size=0), "batch_size"),
        (lambda: CriticConfig(lr=-1.0), "critic.lr"),
        (lambda: CriticConfig(cost="joules"), "unknown cost 'joules'"),
        (lambda: ScheduleConfig(final_tau=1.2), "final_tau"),
    ],
)
def test_bad_config_is_rejected_before_any_work(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_learned_baseline_drives_the_loop_and_both_gradient_variances_are_logged(data, trained_model):
    config = dataclasses.replace(small_config(finetune_steps=0), critic=CriticConfig(baseline="learned"))
    result = compress_model(trained_model, *data, config)
    for record in result.report["history"]:
        assert record["grad_var_ema"] > 0 and record["grad_var_learned"] > 0
    assert result.report["iterations"] == 40


def test_guarded_schedule_raises_tau_at_evaluations_while_accuracy_holds(data, trained_model):
    config = dataclasses.replace(
        small_config(finetune_steps=0),
        schedule=ScheduleConfig(name="guarded", final_tau=0.6, steps=6, every=10, tolerance=0.99),
    )
    result = compress_model(trained_model, *data, config)
    assert [record["tau"] for record in result.report["history"]] == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_inverted_mask_scale_divides_each_sampled_mask_by_its_keep_probability():
    from deepiot.compression.reward import scale_critic_masks

    masks = {"fc1": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])}  # z: [N=2, size=3]
    probs = {"fc1": torch.tensor([0.5, 0.8, 0.05])}  # the last is below the 0.1 floor of the scale
    inverted = scale_critic_masks(masks, probs, "inverted")["fc1"]
    assert torch.equal(inverted, torch.tensor([[2.0, 0.0, 10.0], [0.0, 1.25, 10.0]]))
    assert scale_critic_masks(masks, probs, "none")["fc1"] is masks["fc1"]
    assert (
        scale_critic_masks(masks, probs, "inverted", recurrent=["fc1"])["fc1"] is masks["fc1"]
    )  # inside a recurrence
    with pytest.raises(ValueError, match="critic.mask_scale must be one of"):
        CriticConfig(mask_scale="half")


def test_the_critic_step_trains_under_the_scaled_masks(data, trained_model, monkeypatch):

    config = dataclasses.replace(small_config(), critic=CriticConfig(mask_scale="inverted"))
    critic = LeNet300(hidden1=60, hidden2=30)
    critic.load_state_dict(trained_model.state_dict())
    structure = Structure.from_model(critic, data[0].tensors[0][:1])
    parts = build_parts(critic, structure, data[0].tensors, config)
    state = fresh_state(parts)
    seen = []
    network_call = type(parts.network).__call__

    def record(network, inputs, masks=None):
        if network.training:  # the critic step (the compressor's judgement runs in eval mode)
            seen.append({name: mask.clone() for name, mask in masks.items()})
        return network_call(network, inputs, masks)

    monkeypatch.setattr(type(parts.network), "__call__", record)
    probs = {name: torch.sigmoid(logits) for name, logits in state.keep_logits.items()}  # τ = 0: no decay
    compressor_critic_step(parts, state)
    (masks,) = seen
    for name, mask in masks.items():  # every entry is 0 or 1/p of its element
        expected = (mask > 0).float() / probs[name].clamp_min(0.1)
        assert torch.allclose(mask, expected)
        assert (mask > 0).any() and (mask == 0).any()


@pytest.mark.parametrize("choice", ["critic", "original", "l1"])
def test_element_choice_hands_fine_tuning_the_defined_elements_and_weights(data, trained_model, choice):
    config = small_config(finetune_steps=0, target_params=0.3, element_choice=choice)
    result = compress_model(trained_model, *data, config)
    counts = result.report["kept_counts"]
    structure = Structure.from_model(trained_model, data[0].tensors[0][:1])
    assert result.report["element_choice"] == {"mode": choice, "chosen": choice}
    if choice == "l1":  # the original's largest-L1 elements at the searched counts
        for name, count in counts.items():
            assert result.plan.kept[name] == structure.largest_l1_elements(trained_model, name, count)
    if choice != "critic":  # with 0 fine-tuning steps the sliced model holds the original's weights
        from deepiot.structure import slice_model

        expected = slice_model(trained_model, structure, result.plan.kept).state_dict()
        for key, value in result.sliced_model.state_dict().items():
            assert torch.equal(value, expected[key]), key


def test_auto_element_choice_picks_the_best_validation_candidate_and_is_kept_on_resume(
    tmp_path, data, trained_model, monkeypatch
):
    scores = {"critic": 0.5, "original": 0.7, "l1": 0.6}
    real_finetune = loop.finetune
    trials = []

    def finetune(model, train, validation, config, **kwargs):
        result = real_finetune(model, train, validation, config, **kwargs)
        if config.steps == 5:  # a trial: report the score given for the candidate tried
            name = list(scores)[len(trials)]
            trials.append(name)
            return result._replace(best_val_accuracy=scores[name])
        return result

    monkeypatch.setattr(loop, "finetune", finetune)
    config = small_config(finetune_steps=10, target_params=0.3, element_choice="auto", choice_steps=5)
    result = compress_model(trained_model, *data, config, run_dir=tmp_path)
    assert trials == ["critic", "original", "l1"]
    assert result.report["element_choice"]["chosen"] == "original"
    assert json.loads((tmp_path / loop.CHOICE_FILE).read_text())["val_accuracy"] == scores
    trials.clear()
    again = compress_model(trained_model, *data, config, run_dir=tmp_path)  # resumed: no new trials
    assert trials == [] and again.report["element_choice"]["chosen"] == "original"


@pytest.mark.parametrize("scratch_better", [True, False])
def test_try_scratch_trains_the_reinitialised_architecture_and_keeps_the_better_on_validation(
    tmp_path, data, trained_model, scratch_trials, scratch_better
):
    from deepiot.runtime import accuracy, reinitialised
    from deepiot.structure import slice_model

    started = scratch_trials(prefer_scratch=scratch_better)
    config = small_config(
        finetune_steps=0,
        target_params=0.3,
        element_choice="original",
        try_scratch=True,
        compare_magnitude=False,
    )
    result = compress_model(trained_model, *data, config, run_dir=tmp_path)
    assert [scratch for scratch, _ in started] == [False, True]
    structure = Structure.from_model(trained_model, data[0].tensors[0][:1])
    handed_on = slice_model(trained_model, structure, result.plan.kept)  # element_choice=original's start
    fresh, _ = reinitialised(handed_on, config.loop.seed)  # the definition: same architecture, reset, seeded
    for (_, weights), expected in zip(started, (handed_on, fresh), strict=True):
        assert weights.keys() == expected.state_dict().keys()
        assert all(torch.equal(weights[key], value) for key, value in expected.state_dict().items())
    record = result.report["element_choice"]["scratch"]
    assert record == {
        "chosen": "scratch" if scratch_better else "handed_on",
        "val_accuracy": {"handed_on": 0.9 - 0.1 * scratch_better, "scratch": 0.8 + 0.1 * scratch_better},
    }
    winner = fresh if scratch_better else handed_on  # 0 steps: the winner's weights come back unchanged
    assert all(
        torch.equal(value, winner.state_dict()[key])
        for key, value in result.sliced_model.state_dict().items()
    )
    val_inputs, val_labels = data[1].tensors
    assert accuracy(result.sliced_model, val_inputs, val_labels, 64) == accuracy(
        winner, val_inputs, val_labels, 64
    )


def test_try_scratch_must_be_a_boolean():
    with pytest.raises(ValueError, match="compress.try_scratch must be true or false, got 'yes'"):
        LoopConfig(try_scratch="yes")


def test_try_scratch_refuses_a_model_it_cannot_reinitialise_before_the_search(tmp_path, data):
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = LeNet300()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.net(x) * self.scale

    config = small_config(target_params=0.3, try_scratch=True)
    with pytest.raises(ValueError, match=r"parameters \['scale'\] belong to modules without one"):
        compress_model(Scaled(), *data, config, run_dir=tmp_path)
    assert not (tmp_path / STATE_FILE).exists()
