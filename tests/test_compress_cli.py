"""deepiot-compress: the composed configs, run_compress end to end, resume, bad config, subprocess smoke test."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from deepiot.checkpoint import load_checkpoint
from deepiot.cli import compose_config
from deepiot.cli import compress as compress_cli
from deepiot.cli.compress import FINETUNED_MODEL, compression_config, run_compress
from deepiot.export import ExportError, export_compressed
from deepiot.structure import SlicingPlan
from deepiot.utils import ConfigError

TINY = [
    "experiment=lenet300_mnist",
    "data.dataset.limit=256",
    "trainer.epochs=1",
    "num_threads=1",
    "compress.max_iterations=20",
    "compress.eval_every=10",
    "finetune.steps=10",
    "compress.batch_size=32",
    "compress.latency_threads=null",
]


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def tiny_config(tmp_path, *overrides: str):
    return compose_config(
        [
            *TINY,
            f"paths.output_dir={tmp_path / 'compress'}",
            f"paths.original_dir={tmp_path / 'train'}",
            *overrides,
        ]
    )


def test_default_groups_are_the_papers_settings_with_a_quick_schedule(tmp_path):
    config = compression_config(compose_config([f"paths.output_dir={tmp_path}"]))
    assert (
        config.critic.lr == 1e-4 and config.critic.betas == (0.5, 0.9) and config.critic.weight_decay == 5e-4
    )
    assert config.critic.baseline == "ema" and config.critic.ema_decay == 0.9 and config.critic.lam == 0.0
    assert config.compressor.hidden_size == 64 and config.compressor.lr == 1e-3
    assert (config.schedule.final_tau, config.schedule.steps, config.schedule.decay) == (0.825, 33, 0.5)
    assert config.loop.batch_size == 64
    paper = compression_config(compose_config(["compress=paper", f"paths.output_dir={tmp_path}"]))
    assert (paper.schedule.every, paper.loop.eval_every) == (500, 200)


def test_groups_select_baseline_schedule_and_cost(tmp_path):
    config = compression_config(
        compose_config(
            [
                "critic=learned",
                "schedule=guarded",
                "cost=macs",
                "critic.lam=0.1",
                f"paths.output_dir={tmp_path}",
            ]
        )
    )
    assert (config.critic.baseline, config.schedule.name, config.critic.cost, config.critic.lam) == (
        "learned",
        "guarded",
        "macs",
        0.1,
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("critic.lr=0", "critic.lr"),
        ("schedule.final_tau=1.0", "final_tau"),
        ("compress.target_params=1.5", "target_params"),
        ("cost.name=joules", "unknown cost 'joules'"),
        ("compress.max_iterations=0", "max_iterations"),
        # budgets the architecture cannot meet (BudgetError), found on an untrained model of it
        ("compress.min_kept=90", r"compress.min_kept=90 cannot be met at compress.target_params="),
        ("compress.target_model_kb=5000", r"compress.target_model_kb=5000: the original model already fits"),
    ],
)
def test_bad_config_fails_before_any_training(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_compress(tiny_config(tmp_path, override))
    assert not (tmp_path / "train").exists()


def test_run_compress_trains_compresses_exports_and_resumes(tmp_path, monkeypatch):
    report = run_compress(tiny_config(tmp_path))
    out_dir = tmp_path / "compress"
    assert (tmp_path / "train" / "model.pt").is_file()  # the original was trained first
    for name in (
        "report.json",
        "report.md",
        "slicing_plan.json",
        FINETUNED_MODEL,
        "export/model.onnx",
        "export/model.ts",
    ):
        assert (out_dir / name).is_file(), name
    assert json.loads((out_dir / "report.json").read_text())["cost"] == report["cost"]
    assert report["name"] == "lenet300_mnist" and report["iterations"] == 20

    # the fine-tuned weights + plan rebuild exactly the exported model through deepiot-export's path
    exported = export_compressed(out_dir / FINETUNED_MODEL, out_dir / "slicing_plan.json", tmp_path / "again")
    manifest = json.loads(exported.paths["manifest"].read_text())
    assert manifest["cost"]["params"] == report["cost"]["compressed"]["params"]
    # one manifest builder: the run's export and deepiot-export's describe the model and its data alike
    written = json.loads((out_dir / "export" / "manifest.json").read_text())
    described = ("model_config", "input_layout", "normalization", "class_names", "dataset", "slicing_plan")
    assert {key: written[key] for key in described} == {key: manifest[key] for key in described}
    assert (written["input_layout"], written["name"]) == ("NCHW", "lenet300_mnist")
    assert written["source"].endswith("model.pt") and manifest["source"] == str(out_dir / FINETUNED_MODEL)
    original_ts = torch.jit.load(str(out_dir / "export" / "model.ts"))
    again_ts = torch.jit.load(str(exported.paths["torchscript"]))
    example = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(original_ts(example), again_ts(example), atol=1e-5, rtol=1e-5)
    # the checkpoint carries its plan: no plan needed, and another run's plan is refused
    alone = export_compressed(out_dir / FINETUNED_MODEL, None, tmp_path / "alone", formats=("torchscript",))
    alone_ts = torch.jit.load(str(alone.paths["torchscript"]))
    torch.testing.assert_close(original_ts(example), alone_ts(example), atol=1e-5, rtol=1e-5)
    other = SlicingPlan.load(out_dir / "slicing_plan.json")
    other.kept = {name: indices[:1] for name, indices in other.kept.items()}
    other.save(tmp_path / "other_plan.json")
    with pytest.raises(ExportError, match="is not the plan .* was sliced with"):
        export_compressed(out_dir / FINETUNED_MODEL, tmp_path / "other_plan.json", tmp_path / "never")
    assert not (tmp_path / "never").exists()

    # rerunning the same command finds the finished state and reproduces the result without training again
    # (report.json removed: the run counts as unfinished, so it resumes from its saved states)
    state_before = load_checkpoint(out_dir / "compress_state.pt")
    (out_dir / "report.json").unlink()
    again = run_compress(tiny_config(tmp_path))
    assert again["accuracy"] == report["accuracy"] and again["groups"] == report["groups"]
    assert (
        load_checkpoint(out_dir / "compress_state.pt")["loop"]["phase"]
        == state_before["loop"]["phase"]
        == "finetune"
    )
    assert load_checkpoint(out_dir / "finetune_state.pt")["loop"]["step"] == 10  # finetune.steps, all done

    # a finished run (report.json and finetuned_model.pt) is skipped: its report comes back, nothing runs
    def fail(*args, **kwargs):
        raise AssertionError("a finished run was compressed again")

    monkeypatch.setattr(compress_cli, "compress", fail)
    skipped = run_compress(tiny_config(tmp_path))
    assert skipped["accuracy"] == report["accuracy"] and skipped["cost"] == report["cost"]
    monkeypatch.undo()
    with pytest.raises(ValueError, match="another compression config"):  # not skipped: another config
        run_compress(tiny_config(tmp_path, "critic.lam=0.5"))


def test_smoke_cli_subprocess_with_tiny_overrides(tmp_path):
    command = [
        sys.executable,
        "-m",
        "deepiot.cli.compress",
        *TINY,
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.original_dir={tmp_path / 'train'}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "[deepiot-compress] lenet300_mnist: params left" in completed.stdout
    assert (tmp_path / "run" / "report.json").is_file()


@pytest.mark.slow
def test_sweep_over_lambda_writes_one_run_per_value(tmp_path):
    command = [
        sys.executable,
        "-m",
        "deepiot.cli.compress",
        "-m",
        *TINY,
        "critic.lam=0,0.5",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"paths.original_dir={tmp_path / 'train'}",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    reports = sorted((tmp_path / "sweep").rglob("report.json"))
    assert len(reports) == 2
    lams = sorted(json.loads(path.read_text())["config"]["critic"]["lam"] for path in reports)
    assert lams == [0.0, 0.5]
