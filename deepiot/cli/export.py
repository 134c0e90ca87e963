"""`deepiot-export`: export a trained checkpoint, optionally sliced by a slicing plan, to TorchScript + ONNX.

Examples:
    deepiot-export checkpoint=outputs/train/lenet5_mnist/model.pt
    deepiot-export checkpoint=outputs/train/lenet5_mnist/model.pt plan=<compress run>/slicing_plan.json \
        out_dir=exports/lenet5_small formats=[onnx]
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from deepiot.cli import CONFIG_DIR, reported_errors
from deepiot.export import ExportError, ExportResult, export_compressed


def run_export(cfg: DictConfig) -> ExportResult:
    """Export `cfg.checkpoint` (sliced by `cfg.plan` when given) into `cfg.out_dir`; see configs/export.yaml."""
    if OmegaConf.is_missing(cfg, "checkpoint") or not cfg.checkpoint:
        raise ExportError(
            "deepiot-export needs checkpoint=<path to a deepiot model.pt>, e.g. "
            "deepiot-export checkpoint=outputs/train/lenet5_mnist/model.pt"
        )
    formats = list(cfg.formats) if OmegaConf.is_list(cfg.formats) else [cfg.formats]
    if cfg.get("int8", False) and "onnx" not in formats:
        raise ExportError("int8=true quantises the ONNX model; add onnx to formats.")
    result = export_compressed(
        cfg.checkpoint,
        cfg.plan,
        cfg.out_dir,
        formats=formats,
        check=bool(cfg.check),
        onnx_exporter=cfg.onnx_exporter,
    )
    if cfg.get("int8", False):
        from deepiot.quantize import checkpoint_datasets, export_int8

        train, test = checkpoint_datasets(cfg.checkpoint)
        int8 = export_int8(result.paths["manifest"].parent, train, test, windows=int(cfg.int8_windows))
        result.paths["onnx_int8"] = int8.path
    return result


def describe(result: ExportResult) -> str:
    """One line per written file plus the checked differences."""
    lines = [f"  {key}: {path}" for key, path in result.paths.items()]
    checked = ", ".join(f"{name} {diff:.2e}" for name, diff in result.max_abs_diff.items()) or "not checked"
    return "\n".join(["[deepiot-export] wrote", *lines, f"  max |exported - PyTorch|: {checked}"])


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """Run the export and print where it went; bad inputs end with their message and exit status 2."""
    with reported_errors("deepiot-export"):
        result = run_export(cfg)
    print(describe(result))


if __name__ == "__main__":
    main()
