"""Bad input on deepiot-baseline, scripts/reproduce.py, deepiot-export int8 and the launchers: one
`<program>: error: ...` paragraph naming the bad key and what was expected, exit status 2, no traceback,
before any long work and before any file is written (the rest of the battery is test_bad_input_battery.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from deepiot.baselines.run import compose_baseline_config, run_baseline
from deepiot.cli import reported_errors


@pytest.fixture(autouse=True)
def clear_hydra():
    yield
    GlobalHydra.instance().clear()


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


BASELINE_CASES = {
    "device=cuda": (["device=cuda"], r"trainer.device='cuda' cannot be used here: .*CUDA device"),
    "device=tpu": (["device=tpu"], r"trainer.device='tpu' is not a torch device: expected e.g. cpu"),
    "budget.fraction=abc": (
        ["budget.fraction=abc"],
        r"config value budget.fraction='abc' is invalid: expected .* a number in \(0, 1\]",
    ),
    "budget.fraction=1.5": (["budget.fraction=1.5"], r"budget.fraction=1.5 is invalid: expected"),
    "budget.fraction=0": (["budget.fraction=0"], r"budget.fraction=0 is invalid: expected"),
    "budget.limit=0": (
        ["budget.cost=model_kb", "budget.limit=0"],
        r"budget.limit=0 is invalid: expected a number > 0 \(KiB for budget.cost=model_kb\)",
    ),
    "budget.cost=energy": (
        ["budget.cost=energy"],
        r"budget.cost='energy' is invalid: expected params or macs",
    ),
    "method.fraction=1.5": (
        ["method.fraction=1.5"],
        r"config value method.fraction=1.5 is invalid: expected null .* a number in \(0, 1\]",
    ),
    "method.fraction=0": (["method=random", "method.fraction=0"], r"method.fraction=0 is invalid"),
    "method.counts=3": (["method.counts=3"], r"method.counts=3 is invalid: expected null .* integers >= 1"),
    "method.normalizer": (
        ["method.normalizer=median"],
        r"method.normalizer='median' is invalid: expected mean",
    ),
    "unstructured macs": (
        ["method=unstructured", "budget.cost=macs"],
        "method unstructured prunes single weights to a params budget: expected budget.cost=params",
    ),
    "recipe": (["recipe=fancy"], "recipe must be one of equal, best, got 'fancy'"),
    "deepiot critic.lr": (["method=deepiot", "critic.lr=-1"], "critic.lr"),
}


@pytest.mark.parametrize("case_id", list(BASELINE_CASES))
def test_deepiot_baseline_refuses_bad_settings_before_training(case_id, tmp_path, capsys):
    overrides, pattern = BASELINE_CASES[case_id]
    cfg = compose_baseline_config(
        [*overrides, f"paths.output_dir={tmp_path / 'run'}", f"paths.original_dir={tmp_path / 'original'}"]
    )
    with pytest.raises(SystemExit) as stopped, reported_errors("deepiot-baseline"):
        run_baseline(cfg)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert err.startswith("deepiot-baseline: error: ") and err.count("error:") == 1, err
    assert re.search(pattern, err), (pattern, err)
    assert files_under(tmp_path) == []  # nothing trained, nothing written
