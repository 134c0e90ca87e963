"""`deepiot-export`: export a trained checkpoint, optionally sliced by a slicing plan, to TorchScript + ONNX
(+ ExecuTorch `model.pte` with formats=[torchscript,onnx,executorch], which needs the `[edge]` extra).

Examples:
    deepiot-export checkpoint=outputs/train/lenet5_mnist/model.pt
    deepiot-export checkpoint=outputs/train/lenet5_mnist/model.pt plan=<compress run>/slicing_plan.json \
        out_dir=exports/lenet5_small formats=[onnx]
    deepiot-export checkpoint=outputs/train/lenet5_mnist/model.pt formats=[torchscript,onnx,executorch]
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from deepiot.cli import CONFIG_DIR, checked_command_line, reported_errors
from deepiot.export import ExportError, ExportResult, export_compressed


def run_export(cfg: DictConfig) -> ExportResult:
    """Export `cfg.checkpoint` (sliced by `cfg.plan` when given) into `cfg.out_dir`; see configs/export.yaml."""
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise ExportError(
            "deepiot-export needs checkpoint=<path to a deepiot model.pt>, e.g. "
            "deepiot-export checkpoint=outputs/train/lenet5_mnist/model.pt"
        )
    formats = list(cfg.formats) if OmegaConf.is_list(cfg.formats) else [cfg.formats]
    check_export_settings(cfg)
    int8 = check_int8_settings(cfg, formats)
    if int8:  # everything int8 needs, the calibration data included, is loaded before anything is exported
        from deepiot.quantize import checkpoint_datasets, export_int8

        train, test = checkpoint_datasets(cfg.checkpoint)
    result = export_compressed(
        cfg.checkpoint,
        cfg.plan,
        cfg.out_dir,
        formats=formats,
        check=bool(cfg.check),
        onnx_exporter=cfg.onnx_exporter,
    )
    if int8:
        export_dir = result.paths["manifest"].parent
        windows, max_drop = cfg.int8_windows, float(cfg.get("int8_max_drop", 1.0))
        if "onnx" in formats:
            int8 = export_int8(export_dir, train, test, windows=windows, max_drop_points=max_drop)
            result.paths["onnx_int8"] = int8.path
        if "executorch" in formats:  # PT2E quantisation of the PyTorch model, lowered to XNNPACK
            from deepiot.edge import export_int8_executorch
            from deepiot.export import load_export_model

            model = load_export_model(cfg.checkpoint, cfg.plan)[0]
            int8_pte = export_int8_executorch(
                model, export_dir, train, test, windows=windows, max_drop_points=max_drop
            )
            result.paths["executorch_int8"] = int8_pte.path
    return result


def check_int8_settings(cfg: DictConfig, formats: list) -> bool:
    """int8 (true or false) and, when true, int8_windows (an integer >= 1) and onnx or executorch among the
    formats."""
    int8 = cfg.get("int8", False)
    if not isinstance(int8, bool):
        raise ExportError(f"config value int8={int8!r} is invalid: expected true or false.")
    if not int8:
        return False
    if "onnx" not in formats and "executorch" not in formats:
        raise ExportError(
            "int8=true quantises the ONNX model (and the ExecuTorch one); add onnx to formats (or executorch)."
        )
    max_drop = cfg.get("int8_max_drop", 1.0)
    if type(max_drop) not in (int, float) or not max_drop >= 0:
        raise ExportError(
            f"config value int8_max_drop={max_drop!r} is invalid: expected the accuracy drop in points int8 may "
            "have against fp32 before it is refused, a number >= 0 (default 1)."
        )
    windows = cfg.get("int8_windows")
    if type(windows) is not int or windows < 1:
        raise ExportError(
            f"config value int8_windows={windows!r} is invalid: expected the number of calibration windows "
            "drawn from the training split, an integer >= 1 (default 256)."
        )
    return True


def check_export_settings(cfg: DictConfig) -> None:
    """Types of the settings, the plan file and the destination folder, checked before the export runs."""
    for key in ("checkpoint", "plan", "out_dir"):
        value = cfg[key]
        if value is not None and not isinstance(value, str):
            raise ExportError(f"config value {key}={value!r} is invalid: expected a path (a string).")
    if not isinstance(cfg.check, bool):
        raise ExportError(f"config value check={cfg.check!r} is invalid: expected true or false.")
    if cfg.plan is not None and not Path(cfg.plan).is_file():
        raise ExportError(
            f"slicing plan {cfg.plan} does not exist: expected the slicing_plan.json of a compression run "
            "(with its finetuned_model.pt as checkpoint), or plan=null to export the model unchanged."
        )
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else Path(cfg.checkpoint).parent / "export"
    blocking = next((path for path in (out_dir, *out_dir.parents) if path.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ExportError(
            f"out_dir {out_dir} cannot be created: {blocking} is an existing file, not a folder. Expected a "
            "folder (existing or new) for model.ts, model.onnx, model.pte and manifest.json; pass another out_dir=..."
        )


def describe(result: ExportResult) -> str:
    """One line per written file plus the checked differences."""
    lines = [f"  {key}: {path}" for key, path in result.paths.items()]
    checked = ", ".join(f"{name} {diff:.2e}" for name, diff in result.max_abs_diff.items()) or "not checked"
    return "\n".join(["[deepiot-export] wrote", *lines, f"  max |exported - PyTorch|: {checked}"])


@checked_command_line("deepiot-export", "export")
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """Run the export and print where it went; bad inputs end with their message and exit status 2."""
    with reported_errors("deepiot-export"):
        result = run_export(cfg)
    print(describe(result))


if __name__ == "__main__":
    main()
