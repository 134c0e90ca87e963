"""The quick pipeline on CUDA, end to end (marker `gpu`; skipped without CUDA; `bash scripts/gpu_check.sh`)."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from deepiot.checkpoint import load_trained_model
from deepiot.cli import compose_config
from deepiot.cli.compress import FINETUNED_MODEL, run_compress
from deepiot.compression import STATE_FILE, CompressionConfig, LoopConfig, compress_model, loop
from deepiot.export import load_sliced_model
from deepiot.finetune import FinetuneConfig
from deepiot.runtime import model_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

TINY = [
    "experiment=lenet300_mnist",
    "data.dataset.limit=512",
    "trainer.epochs=1",
    "compress.max_iterations=40",
    "compress.eval_every=20",
    "compress.batch_size=32",
    "finetune.steps=20",
    "compress.latency_threads=null",
]


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def short_config() -> CompressionConfig:
    return CompressionConfig(
        loop=LoopConfig(max_iterations=30, eval_every=10, batch_size=32, eval_batch_size=64),
        finetune=FinetuneConfig(steps=10, batch_size=32, eval_every=5),
    )


def test_quick_pipeline_end_to_end_on_cuda(tmp_path):
    cfg = compose_config(
        [
            *TINY,
            "device=cuda",
            f"paths.output_dir={tmp_path / 'compress'}",
            f"paths.original_dir={tmp_path / 'train'}",
        ]
    )
    report = run_compress(cfg)
    assert report["iterations"] <= 40 and 0.0 <= report["accuracy"]["compressed_test"] <= 1.0
    assert json.loads((tmp_path / "compress" / "report.json").read_text())["cost"] == report["cost"]
    assert (tmp_path / "compress" / "export" / "model.onnx").is_file()
    # checkpoints written on the GPU load on the CPU (map_location) and on the GPU
    for device in ("cpu", "cuda"):
        model, _ = load_trained_model(tmp_path / "train" / "model.pt", device)
        assert model_device(model).type == device
    sliced, _ = load_sliced_model(tmp_path / "compress" / FINETUNED_MODEL)
    assert model_device(sliced).type == "cpu"


def test_compression_on_cuda_keeps_everything_on_the_gpu(trained_model, data):
    result = compress_model(trained_model.cpu(), *data, short_config(), device="cuda")
    assert model_device(result.sliced_model).type == "cuda"
    assert model_device(trained_model).type == "cpu"  # the caller's model stays where it was
    inputs = data[2].tensors[0][:8].cuda()
    assert result.sliced_model(inputs).device.type == "cuda"


def test_a_killed_cuda_run_resumes_to_the_uninterrupted_result(trained_model, data, tmp_path, monkeypatch):
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        whole = compress_model(
            trained_model.cpu(), *data, short_config(), device="cuda", run_dir=tmp_path / "a"
        )
        real_step, calls = loop.compressor_critic_step, {"count": 0}

        def killed_after_17_steps(*args, **kwargs):
            calls["count"] += 1
            if calls["count"] > 17:
                raise KeyboardInterrupt
            return real_step(*args, **kwargs)

        monkeypatch.setattr(loop, "compressor_critic_step", killed_after_17_steps)
        with pytest.raises(KeyboardInterrupt):
            compress_model(trained_model.cpu(), *data, short_config(), device="cuda", run_dir=tmp_path / "b")
        monkeypatch.setattr(loop, "compressor_critic_step", real_step)
        resumed = compress_model(
            trained_model.cpu(), *data, short_config(), device="cuda", run_dir=tmp_path / "b"
        )
    finally:
        torch.use_deterministic_algorithms(False)
    assert resumed.report["history"] == whole.report["history"]  # same masks, batches and steps on the GPU
    assert resumed.report["kept"] == whole.report["kept"]
    assert (tmp_path / "b" / STATE_FILE).is_file()
    with pytest.raises(ValueError, match="written on a cuda device"):
        compress_model(trained_model.cpu(), *data, short_config(), device="cpu", run_dir=tmp_path / "b")


def test_env_runs_an_episode_on_cuda():
    import gymnasium
    import numpy as np

    env = gymnasium.make(
        "deepiot/Compress-v0", data_limit=256, finetune_steps=5, eval_samples=128, device="cuda"
    )
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, reward, terminated, _, info = env.step(np.array([0.5], dtype=np.float32))
    assert np.isfinite(reward) and 0.0 <= info["accuracy"] <= 1.0
    assert model_device(env.unwrapped.sliced_model()).type == "cuda"
