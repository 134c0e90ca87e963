"""Budgets in device units: a latency (ms) and a flash (model KiB) budget reached by the search, the errors that
refuse a budget before any work, and the baselines at a model KiB budget.

The profile here is written by the test: every layer costs 0.01 ms + 1e-5 ms per MAC (no overhead), so the
predicted latency of any kept set is known by hand: 0.03 ms + 1e-5 · MACs for LeNet-300-100(60, 30).
"""

from __future__ import annotations

import json

import pytest
import torch

from deepiot.baselines import prune
from deepiot.cli import compose_config
from deepiot.cli.baseline import budget_setting, compose_baseline_config, run_baseline
from deepiot.cli.compress import compression_config
from deepiot.compression import CompressionConfig, CriticConfig, LoopConfig, ScheduleConfig, compress_model
from deepiot.compression.budget import (
    BudgetError,
    LatencyProfile,
    attach_profile,
    budget_fractions,
    cost_ratios,
)
from deepiot.cost import measure_cost
from deepiot.device import KindModel, LatencyModel
from deepiot.device.layers import LAYER_KINDS
from deepiot.device.profile import PROFILE_FORMAT
from deepiot.finetune import FinetuneConfig
from deepiot.structure import Structure
from deepiot.utils import ConfigError

PER_LAYER_MS, MS_PER_MAC = 0.01, 1e-5


def write_profile(folder, runtime: str = "onnxruntime", threads: int = 1) -> str:
    """A device profile whose latency model is 0.01 ms per layer + 1e-5 ms per MAC."""
    kind = KindModel((PER_LAYER_MS, MS_PER_MAC, 0.0, 0.0, 0.0, 0.0), (), 0.0)
    document = {
        "format": PROFILE_FORMAT,
        "environment": {"runtime": runtime, "threads": threads},
        "latency_model": LatencyModel(dict.fromkeys(LAYER_KINDS, kind)).to_dict(),
    }
    path = folder / f"{runtime}_{threads}" / "device_profile.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return str(path)


def hand_latency_ms(hidden1: int, hidden2: int) -> float:
    """LeNet-300-100(60, 30) at these widths: three layers, MACs 784·h1 + h1·h2 + h2·10."""
    return 3 * PER_LAYER_MS + MS_PER_MAC * (784 * hidden1 + hidden1 * hidden2 + hidden2 * 10)


def config_with(profile: str | None = None, **loop: object) -> CompressionConfig:
    return CompressionConfig(
        loop=LoopConfig(batch_size=32, eval_every=10, max_iterations=400, budget_lr=0.2, **loop),
        schedule=ScheduleConfig(final_tau=0.6, steps=6, every=5),
        finetune=FinetuneConfig(steps=0),
        latency_profile=LatencyProfile(profile=profile),
    )


def test_a_latency_budget_is_reached_and_the_prediction_is_the_profiles(tmp_path, data, trained_model):
    budget_ms = 0.2  # the original: 0.03 + 1e-5 · 49,140 MACs = 0.5214 ms
    config = config_with(write_profile(tmp_path), target_latency_ms=budget_ms)
    result = compress_model(trained_model, *data, config)
    report = result.report
    assert report["stop_reason"].startswith("target met") and report["iterations"] < 400
    kept = report["kept_counts"]
    predicted = report["budgets"]["compressed"]["latency_ms"]
    assert predicted == pytest.approx(hand_latency_ms(kept["fc1"], kept["fc2"]))
    assert predicted <= budget_ms
    assert report["budgets"]["original"]["latency_ms"] == pytest.approx(hand_latency_ms(60, 30))
    # filled: every removed fc1 unit would break the budget again
    assert hand_latency_ms(kept["fc1"] + 1, kept["fc2"]) > budget_ms


def test_a_model_kb_budget_is_reached_as_measured_on_the_sliced_model(data, trained_model):
    budget_kb = 60.0  # the original: 49,240 fp32 parameters = 192.3 KiB
    result = compress_model(trained_model, *data, config_with(target_model_kb=budget_kb))
    assert result.report["stop_reason"].startswith("target met")
    measured = measure_cost(result.sliced_model, data[0].tensors[0][:1]).model_bytes  # independent counter
    assert measured <= budget_kb * 1024
    assert result.report["budgets"]["compressed"]["model_kb"] == pytest.approx(measured / 1024)
    fc1, fc2 = result.report["kept_counts"]["fc1"], result.report["kept_counts"]["fc2"]
    assert 4 * ((784 + 1) * (fc1 + 1) + (fc1 + 2) * fc2 + fc2 * 10 + 10) > budget_kb * 1024  # filled


def test_a_latency_budget_without_a_profile_is_refused_before_any_work(data, trained_model):
    with pytest.raises(BudgetError, match=r"target_latency_ms=0.2 needs a device profile .* cost.profile="):
        compress_model(trained_model, *data, config_with(target_latency_ms=0.2))
    with pytest.raises(BudgetError, match="cost=latency needs a device profile"):
        CompressionConfig(critic=CriticConfig(cost="latency")).check_latency_profile()


@pytest.mark.parametrize(
    ("runtime", "threads", "message"),
    [
        ("onnxruntime", 2, "made for runtime=onnxruntime with threads=2, but latency is asked for runtime=onnxruntime with threads=1"),
        ("torch", 1, "made for runtime=torch with threads=1, but latency is asked for runtime=onnxruntime"),
    ],
)  # fmt: skip
def test_a_profile_of_another_runtime_or_thread_count_is_refused(tmp_path, data, trained_model, runtime, threads, message):  # fmt: skip
    config = config_with(write_profile(tmp_path, runtime, threads), target_latency_ms=0.2)
    with pytest.raises(BudgetError, match=message):
        compress_model(trained_model, *data, config)


@pytest.mark.parametrize(
    ("loop", "message"),
    [
        ({"target_model_kb": 500.0}, r"target_model_kb=500: the original model already fits \(192.3 KiB of model bytes\)"),
        ({"target_latency_ms": 0.6}, r"target_latency_ms=0.6: the original model already fits \(0.5214 ms predicted"),
        ({"target_model_kb": 1.0}, r"target_model_kb=1 cannot be met: the smallest structure .* 3.152 KiB .* at least 3.152 KiB"),
        ({"target_peak_activation_kb": 0.5}, r"target_peak_activation_kb=0.5 cannot be met: .* 3.066 KiB of activation bytes.* at least 3.066 KiB"),
        ({"target_latency_ms": 0.01}, r"target_latency_ms=0.01 cannot be met: .* 0.03795 ms predicted"),
        ({"target_model_kb": 50.0, "min_kept": 30}, r"target_model_kb=50 cannot be met: the smallest structure the model can have \(compress.min_kept=30 elements per group"),
    ],
)  # fmt: skip
def test_a_budget_the_original_meets_or_no_structure_meets_is_refused(tmp_path, trained_model, loop, message):
    structure = Structure.from_model(trained_model, torch.randn(1, 1, 28, 28))
    attach_profile(structure, trained_model, LatencyProfile(write_profile(tmp_path)), "a test")
    with pytest.raises(BudgetError, match=message):
        budget_fractions(structure, loop)


def test_the_cli_refuses_a_latency_budget_without_a_profile_before_training():
    cfg = compose_config(["paths.output_dir=unused", "compress.target_latency_ms=0.05"])
    with pytest.raises(ConfigError, match="needs a device profile"):
        compression_config(cfg).check_latency_profile()


def test_magnitude_baseline_meets_a_model_kb_budget_within_one_element(data, trained_model):
    budget_kb = 50.0
    result = prune(
        trained_model, *data, method="magnitude", budget=budget_kb, cost="model_kb",
        finetune_config=FinetuneConfig(steps=0),
    )  # fmt: skip
    measured = measure_cost(result.sliced_model, data[0].tensors[0][:1]).model_bytes
    assert measured <= budget_kb * 1024
    assert measured > budget_kb * 1024 - 4 * (785 + 30)  # at most one fc1 unit (its fan-in and fan-out) short
    assert result.report["method"]["cost"] == "model_kb" and result.report["method"]["budget"] == budget_kb


def test_random_baseline_meets_a_latency_budget(tmp_path, data, trained_model):
    result = prune(
        trained_model, *data, method="random", budget=0.25, cost="latency_ms",
        profile=LatencyProfile(write_profile(tmp_path)), finetune_config=FinetuneConfig(steps=0),
    )  # fmt: skip
    groups = {group["name"]: group["kept"] for group in result.report["groups"]}
    assert hand_latency_ms(groups["fc1"], groups["fc2"]) <= 0.25


def test_baseline_budget_errors_name_the_setting(data, trained_model):
    with pytest.raises(ValueError, match="method torch_pruning takes a params or macs budget only"):
        prune(trained_model, *data, method="torch_pruning", budget=50.0, cost="model_kb")
    with pytest.raises(BudgetError, match="a latency_ms budget needs a device profile"):
        prune(trained_model, *data, method="magnitude", budget=0.2, cost="latency_ms")
    cfg = compose_baseline_config(["paths.output_dir=unused", "budget.cost=model_kb"])
    with pytest.raises(ConfigError, match=r"budget.cost=model_kb is a budget in KiB: expected budget.limit="):
        budget_setting(cfg)
    cfg = compose_baseline_config(["paths.output_dir=unused", "budget.limit=40"])
    with pytest.raises(ConfigError, match=r"budget.limit=40 is for budgets in device units"):
        budget_setting(cfg)
    cfg = compose_baseline_config(["paths.output_dir=unused", "budget.cost=model_kb", "budget.limit=40"])
    assert budget_setting(cfg) == (40.0, "model_kb")


def test_cost_ratios_price_latency_like_the_profile(tmp_path, trained_model):
    structure = Structure.from_model(trained_model, torch.randn(1, 1, 28, 28))
    attach_profile(structure, trained_model, LatencyProfile(write_profile(tmp_path)), "a test")
    ratios = cost_ratios(structure, {"fc1": range(20), "fc2": range(5)}, ["latency", "params"])
    assert ratios["latency"] == pytest.approx(hand_latency_ms(20, 5) / hand_latency_ms(60, 30))


def test_deepiot_baseline_refuses_a_latency_budget_without_a_profile_before_training(tmp_path):
    cfg = compose_baseline_config(
        [f"paths.output_dir={tmp_path / 'run'}", f"paths.original_dir={tmp_path / 'no_original'}",
         "budget.cost=latency_ms", "budget.limit=0.02"]
    )  # fmt: skip
    with pytest.raises(BudgetError, match="a latency_ms budget needs a device profile"):
        run_baseline(cfg)
    assert not (tmp_path / "no_original").exists()  # nothing was trained


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "deepiot-device-profile/1", "environment": {"runt', "is not valid JSON .* truncated"),
        ("[1, 2, 3]", "holds a JSON list, not a deepiot-device-profile/1 document"),
        (json.dumps({"format": PROFILE_FORMAT}), "it lacks environment, latency_model"),
    ],
)
def test_a_broken_profile_is_refused_naming_what_is_wrong(tmp_path, content, message):
    (tmp_path / "device_profile.json").write_text(content)
    with pytest.raises(
        BudgetError, match=rf"a latency_ms budget: cost.profile=.* cannot be used: .*{message}"
    ):
        LatencyProfile(str(tmp_path)).load("a latency_ms budget")
