"""int8 on CPUs other than this one: ONNX Runtime's U8S8 (int8 weights, its default) against deepiot's U8U8
(uint8 weights), natively and under qemu-user emulating x86 CPUs with AVX2 but without VNNI.

    python scripts/int8_emulated_cpus.py checkpoint=outputs/train/lenet5_mnist/model.pt [windows=2000] \
        [cpus=EPYC-Rome,Haswell] [out=experiments/device/int8/emulated_cpus.md]

For each weight type: test accuracy on `windows` test windows spread evenly over the test split and the largest output error relative
to the largest fp32 logit, on this CPU and on each emulated one (qemu-x86_64 -cpu <cpu>; apt-get install
qemu-user). ONNX Runtime picks its int8 kernels from CPUID, so the emulated runs take the AVX2 (vpmaddubsw,
saturating) path that a CPU without VNNI takes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import QuantType

from deepiot.checkpoint import load_trained_model
from deepiot.export import export_model
from deepiot.quantize import checkpoint_datasets, quantize_int8, sample_windows

RUNNER = (
    "import sys, numpy as np, onnxruntime as ort\n"
    "folder = sys.argv[1]; x = np.load(folder + '/inputs.npy')\n"
    "for name in sys.argv[2:]:\n"
    "    options = ort.SessionOptions(); options.intra_op_num_threads = 1\n"
    "    session = ort.InferenceSession(folder + '/' + name, options, providers=['CPUExecutionProvider'])\n"
    "    feed = session.get_inputs()[0].name\n"
    "    out = [session.run(None, {feed: x[i:i + 256]})[0] for i in range(0, len(x), 256)]\n"
    "    np.save(folder + '/' + name + '.npy', np.concatenate(out))\n"
)
FILES = {"fp32": "model.onnx", "U8S8 (ONNX Runtime default)": "u8s8.onnx", "U8U8 (deepiot)": "u8u8.onnx"}


def outputs(folder: Path, cpu: str | None) -> dict[str, np.ndarray]:
    """Logits of every file in FILES, natively (cpu None) or under qemu emulating `cpu`."""
    prefix = [] if cpu is None else [shutil.which("qemu-x86_64"), "-cpu", cpu]
    subprocess.run([*prefix, sys.executable, "-c", RUNNER, str(folder), *FILES.values()], check=True,
                   capture_output=True)  # fmt: skip
    return {key: np.load(folder / f"{name}.npy") for key, name in FILES.items()}


def main() -> None:
    options = dict(argument.split("=", 1) for argument in sys.argv[1:])
    checkpoint = options["checkpoint"]
    windows = int(options.get("windows", 2000))
    cpus = [cpu for cpu in options.get("cpus", "EPYC-Rome,Haswell").split(",") if cpu]
    model, saved = load_trained_model(checkpoint)
    train, test = checkpoint_datasets(checkpoint)
    chosen = (
        np.linspace(0, len(test) - 1, min(windows, len(test))).round().astype(int)
    )  # spread over the split
    inputs, labels = test.tensors[0][chosen].numpy().astype(np.float32), test.tensors[1][chosen].numpy()
    lines = [f"`{checkpoint}` ({len(inputs)} test windows; onnxruntime int8 static QDQ, per-channel, 256 "
             "calibration windows from the training split)", "",
             "| CPU | weights | test accuracy | int8 − fp32 (points) | max output error / max logit |",
             "|-|-|-|-|-|"]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        export_model(model.eval(), torch.zeros(1, *saved["data"]["input_shape"]), folder, manifest_extra={},
                     formats=["onnx"])  # fmt: skip
        calibration = sample_windows(train, 256)
        quantize_int8(folder / "model.onnx", folder / "u8s8.onnx", calibration, weight_type=QuantType.QInt8)
        quantize_int8(folder / "model.onnx", folder / "u8u8.onnx", calibration, weight_type=QuantType.QUInt8)
        np.save(folder / "inputs.npy", inputs)
        for cpu in [None, *cpus]:
            logits = outputs(folder, cpu)
            fp32 = logits["fp32"]
            fp32_accuracy = (fp32.argmax(1) == labels).mean()
            for key in list(FILES)[1:]:
                accuracy = (logits[key].argmax(1) == labels).mean()
                error = np.abs(logits[key] - fp32).max() / np.abs(fp32).max()
                lines.append(f"| {cpu or 'this CPU (AVX-512 VNNI)'} | {key} | {100 * accuracy:.2f}% "
                             f"| {100 * (accuracy - fp32_accuracy):+.2f} | {100 * error:.2f}% |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if "out" in options:
        with open(options["out"], "a") as file:
            file.write("\n" + text)


if __name__ == "__main__":
    main()
