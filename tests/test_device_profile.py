"""Device profiling and the latency model: layer inventory against the structure's own cost, the fit on
known piecewise-linear data, the torch-free ONNX Runtime profiler, the profile pipeline and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import deepiot.device.ort_profile as ort_profile_module
from deepiot.device import (
    KindModel,
    LatencyModel,
    ProfileConfig,
    ProfileError,
    layer_inventory,
    load_profile,
    spearman,
)
from deepiot.device.layers import features_at
from deepiot.device.profile import PROFILE_NAME, fit_profile
from deepiot.device.suite import build_suite, reference_models, write_onnx_suite
from deepiot.models import DeepSense, LeNet5, LSTMClassifier
from deepiot.structure import Structure, slice_model

MODELS = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "deepsense": (DeepSense, (128, 6)),
    "lstm": (lambda: LSTMClassifier(hidden_size=24, num_layers=2, bidirectional=True), (128, 6)),
}


def _random_counts(structure: Structure, seed: int) -> dict[str, int]:
    generator = torch.Generator().manual_seed(seed)
    return {g.name: int(torch.randint(1, g.size + 1, (1,), generator=generator)) for g in structure.groups}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inventory_macs_and_params_match_the_structure_cost(name):
    build, shape = MODELS[name]
    model = build().eval()
    structure = Structure.from_model(model, torch.randn(2, *shape))
    inventory = layer_inventory(model, structure)
    for seed in range(3):
        counts = _random_counts(structure, seed)
        rows = [features_at(spec, counts) for spec in inventory]
        cost = structure.cost(counts)
        assert sum(row["macs"] for row in rows) == cost.macs
        # params of the compute layers = all params minus BatchNorm's weight and bias (2 per channel)
        norm_params = cost.params - sum(row["params"] for row in rows)
        assert 0 <= norm_params <= 2 * sum(counts.values())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inventory_at_kept_counts_equals_the_inventory_of_the_sliced_model(name):
    build, shape = MODELS[name]
    model = build().eval()
    example = torch.randn(2, *shape)
    structure = Structure.from_model(model, example)
    counts = _random_counts(structure, 7)
    kept = {group: list(range(count)) for group, count in counts.items()}
    sliced = slice_model(model, structure, kept)
    sliced_structure = Structure.from_model(sliced, example)
    expected = [features_at(spec, counts) for spec in layer_inventory(model, structure)]
    actual = [
        features_at(spec, sliced_structure.group_sizes) for spec in layer_inventory(sliced, sliced_structure)
    ]
    assert actual == expected


def _synthetic_rows(count: int, seed: int) -> tuple[list[dict[str, float]], np.ndarray]:
    rng = np.random.default_rng(seed)
    macs = np.exp(rng.uniform(np.log(1e3), np.log(1e7), count))
    rows = [{"macs": m, "params": m / 7, "traffic": m**0.5, "unfolded": 0.0, "steps": 0.0} for m in macs]
    times = (
        0.005 + 2e-8 * macs + 3e-8 * np.maximum(0.0, macs - np.quantile(macs, 0.5))
    )  # a bend at the median
    return rows, times


def test_kind_model_recovers_a_piecewise_linear_device():
    rows, times = _synthetic_rows(200, 0)
    model = KindModel.fit(rows, times, quantiles=(0.5,))
    predicted = np.array([model.predict(row) for row in rows])
    np.testing.assert_allclose(predicted, times, rtol=1e-6)
    restored = KindModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert restored == model


def test_kind_model_cross_validation_picks_a_bend_when_the_data_has_one():
    rows, times = _synthetic_rows(120, 1)
    assert len(KindModel.fit(rows, times).knots) >= 1
    straight = 0.005 + 2e-8 * np.array([row["macs"] for row in rows])
    assert (
        KindModel.fit(rows, straight).knots == ()
    )  # no bend needed: the simplest model cross-validates best


def test_tensor_features_give_the_same_prediction_and_a_gradient():
    rows, times = _synthetic_rows(50, 2)
    model = KindModel.fit(rows, times, quantiles=(0.5,))
    macs = torch.tensor([2e3, 5e5, 8e6], dtype=torch.float64, requires_grad=True)
    features = {"macs": macs, "params": macs / 7, "traffic": macs**0.5, "unfolded": 0.0, "steps": 0.0}
    predicted = model.predict(features)
    expected = [
        model.predict(
            {
                key: float(value[i].detach()) if torch.is_tensor(value) else value
                for key, value in features.items()
            }
        )
        for i in range(3)
    ]
    np.testing.assert_allclose(predicted.detach().numpy(), expected, rtol=1e-12)
    predicted.sum().backward()
    assert bool((macs.grad > 0).all())


def test_spearman_matches_its_definition():
    first = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(first, first**3) == pytest.approx(1.0)
    assert spearman(first, -first) == pytest.approx(-1.0)
    assert spearman(first, np.array([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(1 - 6 * 4 / (5 * 24))


def test_latency_model_sums_layers_and_overhead():
    kinds = {"linear": KindModel((1.0, 0.0, 0.0, 0.0, 0.0, 0.0), (), 0.0)}  # 1 ms per layer
    model = LatencyModel(kinds, (0.5, -0.25))
    rows = [
        {"kind": "linear", "features": {"macs": 1.0, "params": 0, "traffic": 0, "unfolded": 0, "steps": 0}}
    ] * 3
    assert model.model_ms(rows) == pytest.approx(3 + 0.5 - 0.75)
    assert LatencyModel.from_dict(model.to_dict()) == model
    # a negative fitted overhead never takes a model below its layers' floors (0.2 ms a linear layer here)
    floored = LatencyModel({"linear": KindModel((1.0, 0.0, 0.0, 0.0, 0.0, 0.0), (), 0.2)}, (-10.0, 0.0))
    assert floored.model_ms(rows) == pytest.approx(0.6)
    macs = torch.tensor([1.0, 5.0], requires_grad=True)
    tensor_rows = [{"kind": "linear", "features": {**rows[0]["features"], "macs": macs}}] * 3
    assert floored.model_ms(tensor_rows).tolist() == pytest.approx([0.6, 0.6])
    with pytest.raises(ValueError, match="no latency model for gru layers"):
        model.layer_ms("gru", rows[0]["features"])


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory) -> Path:
    """A small ONNX suite: 2 configurations per layer kind, 1 per reference layer, 2 slicings per model."""
    folder = tmp_path_factory.mktemp("suite")
    write_onnx_suite(build_suite(seed=0, per_kind=2, per_model=2, per_reference_layer=1), folder, {})
    return folder


GUARD = (
    "import sys; sys.modules['torch'] = None; sys.modules['deepiot'] = None; import runpy; "
    "sys.argv = ['ort_profile', sys.argv[1], '--warmup', '1', '--repeats', '4', '--rounds', '2']; "
    "runpy.run_path({path!r}, run_name='__main__')"
)


def test_ort_profiler_runs_without_torch(tiny_suite):
    script = ort_profile_module.__file__
    code = GUARD.format(path=script)
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_suite)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    timings = json.loads((tiny_suite / "timings.json").read_text())
    suite = json.loads((tiny_suite / "suite.json").read_text())
    assert set(timings["timings"]) == {entry["id"] for entry in suite["entries"]}
    for stats in timings["timings"].values():
        assert stats["repeats"] == 4
        assert 0 < stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert timings["environment"]["runtime"] == "onnxruntime"


def test_torch_is_really_unimportable_under_the_guard():
    code = (
        "import sys; sys.modules['torch'] = None\ntry:\n import torch\nexcept ImportError:\n print('blocked')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "blocked"


def test_suite_covers_every_layer_kind_and_reference_model(tiny_suite):
    suite = json.loads((tiny_suite / "suite.json").read_text())
    kinds = {entry["kind"] for entry in suite["entries"]}
    assert kinds == {"linear", "conv1d", "conv2d", "lstm", "gru", "model"}
    architectures = {entry["architecture"] for entry in suite["entries"] if entry["kind"] == "model"}
    assert architectures == set(reference_models())
    assert all((tiny_suite / entry["file"]).is_file() for entry in suite["entries"])


def test_fit_profile_refuses_timings_of_another_suite(tiny_suite):
    suite = json.loads((tiny_suite / "suite.json").read_text())
    with pytest.raises(ProfileError, match="the timings lack"):
        fit_profile(
            suite["entries"], {"environment": {}, "timings": {}}, ProfileConfig(per_kind=8, per_model=5)
        )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"runtime": "tflite"}, "runtime must be one of"),
        ({"rounds": 0}, "rounds"),
        ({"statistic": "mean"}, "statistic"),
    ],
)
def test_profile_config_rejects_bad_settings(settings, message):
    with pytest.raises(ProfileError, match=message):
        ProfileConfig(**settings)


def test_profile_cli_writes_a_loadable_profile(tmp_path):
    command = [
        sys.executable,
        "-m",
        "deepiot.cli.profile",
        f"out_dir={tmp_path}",
        "per_kind=8",
        "per_model=5",
        "per_reference_layer=1",
        "warmup=1",
        "repeats=3",
        "rounds=1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "[deepiot-profile] wrote" in done.stdout
    profile = load_profile(tmp_path)
    assert (tmp_path / "fit.png").stat().st_size > 0
    model = LatencyModel.from_dict(profile["latency_model"])
    assert set(model.kinds) == {"linear", "conv1d", "conv2d", "lstm", "gru"}
    quality = profile["fit_quality"]
    assert quality["sliced_models"]["count"] == 3 * (5 - 3)  # slicings 1-3 calibrate, the rest validate
    assert set(quality["sliced_models_by_architecture"]) == set(reference_models())
    assert json.loads((tmp_path / "suite" / "timings.json").read_text())["settings"]["repeats"] == 3


@pytest.mark.parametrize(
    ("argument", "expected"),
    [("stage=bogus", "stage must be one of"), ("runtime=tflite", "runtime must be one of")],
)
def test_profile_cli_reports_bad_settings_with_status_2(tmp_path, argument, expected):
    command = [sys.executable, "-m", "deepiot.cli.profile", argument, f"out_dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert f"deepiot-profile: error: {expected}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["threads=abc"], "config value threads='abc' has the wrong type: expected an integer"),
        (["repeats=1.5"], "config value repeats=1.5 has the wrong type: expected an integer"),
        (["out_dir={file}"], "out_dir {file} cannot be created: {file} is an existing file, not a folder"),
        (["out_dir={file}/profile"], "{file} is an existing file, not a folder"),
    ],
)
def test_profile_cli_refuses_bad_types_and_a_file_as_out_dir(tmp_path, arguments, expected):
    occupied = tmp_path / "occupied"
    occupied.write_text("someone's file\n")
    arguments = [argument.format(file=occupied) for argument in arguments]
    if not any(argument.startswith("out_dir=") for argument in arguments):
        arguments.append(f"out_dir={tmp_path / 'profile'}")
    done = subprocess.run(
        [sys.executable, "-m", "deepiot.cli.profile", *arguments], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("deepiot-profile: error: "), done.stderr
    assert expected.format(file=occupied) in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["occupied"]
    assert occupied.read_text() == "someone's file\n"


def test_load_profile_names_what_is_missing(tmp_path):
    with pytest.raises(ProfileError, match="no device profile"):
        load_profile(tmp_path)
    (tmp_path / PROFILE_NAME).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ProfileError, match="is not a deepiot-device-profile"):
        load_profile(tmp_path)
    (tmp_path / PROFILE_NAME).write_text('{"format": "deepiot-device-profile/1", "environ')
    with pytest.raises(ProfileError, match=r"device_profile.json is not valid JSON .*truncated"):
        load_profile(tmp_path)
    (tmp_path / PROFILE_NAME).write_text("[1, 2]")
    with pytest.raises(ProfileError, match="holds a JSON list, not a deepiot-device-profile/1 document"):
        load_profile(tmp_path)
    (tmp_path / PROFILE_NAME).write_text(json.dumps({"format": "deepiot-device-profile/1"}))
    with pytest.raises(ProfileError, match="incomplete .* it lacks environment, latency_model. Expected"):
        load_profile(tmp_path)
    partial = {
        "format": "deepiot-device-profile/1",
        "environment": {"runtime": "onnxruntime"},
        "latency_model": {},
    }
    (tmp_path / PROFILE_NAME).write_text(json.dumps(partial))
    with pytest.raises(
        ProfileError, match="it lacks environment.threads, latency_model.kinds, latency_model.overhead"
    ):
        load_profile(tmp_path)


def test_torch_runtime_profile_times_every_entry_in_process(tmp_path):
    from deepiot.device import profile_device

    config = ProfileConfig(
        runtime="torch", per_kind=8, per_model=5, per_reference_layer=1, warmup=1, repeats=3, rounds=1
    )
    profile = profile_device(config, tmp_path)
    assert profile["environment"]["runtime"] == "torch"
    assert not (tmp_path / "suite").exists()  # eager PyTorch needs no ONNX files
    assert all(row["repeats"] == 3 and row["predicted_ms"] > 0 for row in profile["measurements"])
    assert (tmp_path / PROFILE_NAME).is_file()


def test_suite_then_device_timing_then_fit_is_the_same_pipeline(tmp_path):
    tiny = ["per_kind=8", "per_model=5", "per_reference_layer=1", "warmup=1", "repeats=3", "rounds=1"]
    cli = [sys.executable, "-m", "deepiot.cli.profile", f"out_dir={tmp_path}", *tiny]
    done = subprocess.run([*cli, "stage=fit"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "stage=fit needs" in done.stderr  # nothing timed yet
    done = subprocess.run([*cli, "stage=suite"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / PROFILE_NAME).exists()
    assert (
        ort_profile_module.main([str(tmp_path / "suite"), "--warmup", "1", "--repeats", "3", "--rounds", "1"])
        == 0
    )
    done = subprocess.run([*cli, "stage=fit"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    profile = load_profile(tmp_path)
    suite = json.loads((tmp_path / "suite" / "suite.json").read_text())
    assert {row["id"] for row in profile["measurements"]} == {entry["id"] for entry in suite["entries"]}


def test_architectures_limit_the_suite_to_their_models_and_layer_kinds():
    entries = build_suite(seed=0, per_kind=8, per_model=5, per_reference_layer=1, architectures=["lenet5"])
    assert {entry.kind for entry in entries} == {"linear", "conv2d", "model"}
    assert {entry.info["architecture"] for entry in entries if entry.kind == "model"} == {"lenet5"}
    assert sum(entry.kind == "model" for entry in entries) == 5
    assert sum(entry.id.startswith("ref_") for entry in entries) == 4  # LeNet-5's four layers, once each


def test_executorch_runtime_profile_prices_latency_for_cost_runtime_executorch(tmp_path):
    """A tiny profile timed in ExecuTorch's runtime: a valid profile that the budget code loads for
    cost.runtime=executorch only, and that refuses a model with layer kinds it has not profiled."""
    pytest.importorskip("executorch")
    from importlib.metadata import version

    from deepiot.compression.budget import BudgetError, LatencyProfile, attach_profile
    from deepiot.device import predict_latency, profile_device
    from deepiot.edge import time_executorch_suite

    config = ProfileConfig(
        runtime="executorch",
        architectures=["lenet5"],
        per_kind=8,
        per_model=5,
        per_reference_layer=1,
        warmup=1,
        repeats=3,
        rounds=1,
    )
    with pytest.raises(ProfileError, match="needs the ExecuTorch timer"):
        profile_device(config, tmp_path)  # the timer lives above deepiot.device (tests/test_layers.py)
    profile = profile_device(config, tmp_path, time_suite=time_executorch_suite)
    environment = profile["environment"]
    assert environment["runtime"] == "executorch" and environment["backend"] == "XNNPACK"
    assert environment["threads"] == 1 and environment["runtime_version"] == version("executorch")
    assert len(profile["measurements"]) == 8 + 8 + 4 + 5
    assert all(row["repeats"] == 3 and row["median_ms"] > 0 for row in profile["measurements"])
    assert not (tmp_path / "suite").exists()  # the .pte files lived in a temporary folder
    document = load_profile(tmp_path)
    assert set(document["latency_model"]["kinds"]) == {"linear", "conv2d"}
    assert document["settings"]["architectures"] == ["lenet5"]

    settings = LatencyProfile(profile=str(tmp_path), runtime="executorch")
    assert settings.load("compress.target_latency_ms=0.05") == document
    with pytest.raises(BudgetError, match="made for runtime=executorch with threads=1, but latency is asked for runtime=onnxruntime"):  # fmt: skip
        LatencyProfile(profile=str(tmp_path), runtime="onnxruntime").load("compress.target_latency_ms=0.05")
    lenet = LeNet5().eval()
    structure = Structure.from_model(lenet, torch.randn(2, 1, 28, 28))
    attach_profile(structure, lenet, settings, "compress.target_latency_ms=0.05")
    assert np.isfinite(predict_latency(structure))
    deepsense = DeepSense().eval()
    with pytest.raises(
        BudgetError, match=r"cannot price this model: .*acc_convs.0 \(conv1d\).*gru.l0 \(gru\)"
    ):
        attach_profile(
            Structure.from_model(deepsense, torch.randn(2, 128, 6)), deepsense, settings, "cost=latency"
        )
