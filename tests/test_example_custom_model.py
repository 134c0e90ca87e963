"""The README's custom-model example runs end to end and leaves a sliced, exported model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "examples" / "example_custom_model.py"


def test_example_compresses_and_exports_a_user_model(tmp_path):
    out_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "params left:" in done.stdout
    report = json.loads((out_dir / "report.json").read_text())
    assert [group["name"] for group in report["groups"]] == ["features.0", "features.3", "gru.l0"]
    assert report["cost"]["compressed"]["params"] <= report["cost"]["original"]["params"]
    manifest = json.loads((out_dir / "export" / "manifest.json").read_text())
    assert manifest["cost"]["params"] == report["cost"]["compressed"]["params"]
    assert manifest["metrics"]["test_accuracy"] == report["accuracy"]["compressed_test"]
    assert (out_dir / "export" / "model.onnx").stat().st_size > 0
