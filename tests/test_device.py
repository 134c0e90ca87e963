"""The one `device` setting: resolving it, and every tensor of the compression path on the model's device.

`device` parametrises over what this machine has (the CPU always, CUDA when present); the CUDA-only checks
are in test_gpu.py. A source scan keeps hard-wired CPU tensors out of the compression path.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import deepiot
from deepiot.checkpoint import load_checkpoint, save_checkpoint
from deepiot.compression import STATE_FILE, CompressionConfig, LoopConfig, compress_model
from deepiot.compression.compressor import Compressor, MaskDistribution
from deepiot.compression.reward import Reward, build_baselines, structure_features
from deepiot.runtime import BatchStream, model_device, resolve_device
from deepiot.structure import Structure, slice_model

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return resolve_device(request.param)


def tiny_config(**loop) -> CompressionConfig:
    settings = {"max_iterations": 20, "eval_every": 10, "batch_size": 32, "eval_batch_size": 64, **loop}
    config = CompressionConfig(loop=LoopConfig(**settings))
    finetune = config.finetune.__class__(steps=5, batch_size=32, eval_every=5)
    return CompressionConfig(loop=config.loop, finetune=finetune)


# ---------------------------------------------------------------------------------------------- the setting


def test_auto_is_the_cpu_without_an_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")


def test_cuda_names_resolve_to_an_indexed_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda") == resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"asks for CUDA device 2, but 2 CUDA device\(s\) are available"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tpu9", "is not a torch device: expected auto | cpu | cuda | cuda:N | mps"),
        ("xpu", "is not supported: expected auto"),
    ],
)
def test_bad_device_names_are_refused(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_device(name)


def test_missing_accelerators_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"0 CUDA device\(s\) are available here; use device=auto"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="Apple MPS, which is not available here"):
        resolve_device("mps")


def test_config_device_drives_training_and_compression():
    from deepiot.cli import compose_config

    cfg = compose_config(["paths.output_dir=/tmp/unused", "device=cpu"])
    assert cfg.device == "cpu" and cfg.trainer.device == "cpu"  # trainer.device follows the root setting
    assert compose_config(["paths.output_dir=/tmp/unused"]).trainer.device == "auto"


# ---------------------------------------------------------------------------------------------- the pieces


def test_compressor_masks_costs_and_baselines_live_on_the_device(trained_model, data, device):
    model = trained_model.to(device)
    inputs = data[0].tensors[0][:1].to(device)
    structure = Structure.from_model(model, inputs)
    compressor = Compressor.for_structure(structure, model).to(device)
    weights = {group.name: structure.weight_matrix(model, group.name) for group in structure.groups}
    logits = compressor(weights)
    distribution = MaskDistribution(logits, tau=0.3)
    masks = distribution.sample(8, torch.Generator(device=device).manual_seed(0))
    reward = Reward(structure, "macs", lam=0.5)
    judged = reward(torch.zeros(8, device=device), masks)
    baselines = build_baselines(CompressionConfig().critic, len(structure.groups), device)
    features = structure_features(masks, judged.cost_ratio)
    advantage = baselines["learned"].advantages(judged.reward, features)
    control = baselines["ema"].control_variate(distribution.keep_probs, reward)
    ratio, slopes = reward.cost_slopes(distribution.keep_probs)
    hard = structure.masks_from_kept({structure.groups[0].name: [0, 2]}, device)
    produced = [
        *logits.values(),
        *masks.values(),
        distribution.log_prob(masks),
        distribution.entropy(),
        judged.reward,
        advantage,
        control,
        ratio,
        slopes,
        *hard.values(),
    ]
    assert {tensor.device for tensor in produced} == {device}
    sliced = slice_model(model, structure, {structure.groups[0].name: [0, 2]})
    assert model_device(sliced) == device


def test_batch_stream_gives_the_same_batches_on_every_device(device):
    inputs, labels = torch.arange(40.0)[:, None], torch.arange(40)
    on_cpu = BatchStream(inputs, labels, batch_size=8, seed=3)
    on_device = BatchStream(inputs.to(device), labels.to(device), batch_size=8, seed=3)
    for _ in range(7):  # across an epoch boundary
        indices = on_device.next_indices()
        assert indices.device == device
        assert torch.equal(indices.cpu(), on_cpu.next_indices())


# ---------------------------------------------------------------------------------------------- the loop


def test_compress_model_runs_on_the_requested_device(trained_model, data, device):
    result = compress_model(trained_model.cpu(), *data, tiny_config(), device=str(device))
    assert model_device(result.sliced_model) == device
    assert model_device(trained_model) == torch.device("cpu")  # the caller's model is left where it was
    assert 0.0 <= result.report["accuracy"]["compressed_test"] <= 1.0


def test_an_explicit_cpu_device_computes_what_the_models_device_does(trained_model, data):
    implicit = compress_model(trained_model.cpu(), *data, tiny_config())
    explicit = compress_model(trained_model.cpu(), *data, tiny_config(), device="cpu")
    assert implicit.report["kept"] == explicit.report["kept"]
    assert implicit.report["history"] == explicit.report["history"]


def test_resuming_on_another_device_type_is_refused(trained_model, data, tmp_path):
    compress_model(trained_model.cpu(), *data, tiny_config(), run_dir=tmp_path)
    state = load_checkpoint(tmp_path / STATE_FILE)
    assert state["device"] == "cpu"
    state["device"] = "cuda"  # as if written on a GPU
    save_checkpoint(state, tmp_path / STATE_FILE)
    with pytest.raises(ValueError, match="written on a cuda device .*Resume it with device=cuda"):
        compress_model(trained_model.cpu(), *data, tiny_config(), run_dir=tmp_path)


def test_api_takes_a_device_and_reports_on_the_host(trained_model, data, tmp_path):
    result = deepiot.compress(
        trained_model.cpu(),
        *data,
        config=tiny_config(),
        out_dir=tmp_path,
        device="cpu",
        progress=False,
        outputs=deepiot.api.OutputOptions(
            model_config={"_target_": "deepiot.models.LeNet300", "hidden1": 60, "hidden2": 30},
            latency_threads=None,
        ),
    )
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert result.report["config"]["loop"]["max_iterations"] == 20


# ---------------------------------------------------------------------------------------------- the grep

PACKAGE = Path(deepiot.__file__).parent
COMPRESSION_PATH = [
    *(f"compression/{path.name}" for path in sorted((PACKAGE / "compression").glob("*.py"))),
    "finetune.py",
    "runtime.py",
    *(f"structure/{name}.py" for name in ("graph", "cost", "slicing", "masking", "recurrent", "layout")),
]
CPU_TENSOR = re.compile(
    r"\.cpu\(\)|torch\.(zeros|ones|empty|full|arange|tensor|as_tensor|randperm|randint|rand|randn|Generator)\("
)
# Tensors made on the CPU on purpose: index sets and seeds built on the host (moved where they are used),
# the original's cost (a float), and results copied to the host.
INTENDED = {
    "compression/compressor.py": [
        "nn.init.trunc_normal_(torch.empty(shape)"
    ],  # initialised on the CPU, then moved
    "compression/reward.py": [
        "full = {group.name: torch.ones(1, group.size)"
    ],  # the original's cost, a Python float
    "compression/budget.py": [
        "(torch.arange(group.size) < int(counts[group.name]))"
    ],  # a budget's cost at given counts, a Python float computed once on the host
    "runtime.py": [
        "self.generator = torch.Generator().manual_seed(seed)",  # batch order: the same on every device
        "torch.randperm(len(",
        "torch.stack([torch.as_tensor(item[0])",  # reading a dataset
        "labels = torch.as_tensor([int(item[1])",
    ],
    "compression/loop.py": ["torch.sigmoid(logits).cpu()"],  # ranking elements on the host
    "structure/slicing.py": ["torch.empty(0))"],  # only for a BatchNorm without any tensor
    "structure/graph.py": ["torch.arange(group.size)", "indices = torch.as_tensor(value)"],
    "structure/layout.py": ["torch.arange(offset, offset", "within = torch.arange(", "torch.zeros(0, dtype"],
    "structure/recurrent.py": ["torch.arange(spec.input_size)", "torch.as_tensor(kept"],
}


def test_no_hard_wired_cpu_tensor_in_the_compression_path():
    found = []
    for name in COMPRESSION_PATH:
        for number, line in enumerate((PACKAGE / name).read_text().splitlines(), start=1):
            code = line.split("#")[0]
            if not CPU_TENSOR.search(code) or "device=" in code:
                continue
            if not any(snippet in line for snippet in INTENDED.get(name, [])):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "CPU tensors in the compression path:\n" + "\n".join(found)
