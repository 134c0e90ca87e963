"""Suite-wide settings and fixtures: one torch thread per test process (CI machines have 2 shared cores; more
threads only thrash); a small LeNet-300-100 trained on synthetic digits-shaped data for the compression loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepiot.models import LeNet300


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def teacher_data(samples: int, seed: int) -> TensorDataset:
    """Digits-shaped inputs labelled by a fixed random linear teacher (learnable by LeNet-300)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, 1, 28, 28, generator=generator)
    teacher = torch.randn(784, 10, generator=torch.Generator().manual_seed(123))
    return TensorDataset(inputs, (inputs.flatten(1) @ teacher).argmax(dim=1))


@pytest.fixture(scope="module")
def data() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    return teacher_data(512, 0), teacher_data(128, 1), teacher_data(128, 2)


@pytest.fixture(scope="module")
def trained_model(data) -> nn.Module:
    torch.manual_seed(0)
    model = LeNet300(hidden1=60, hidden2=30)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, labels = data[0].tensors
    for step in range(150):
        batch = slice(step * 64 % 512, step * 64 % 512 + 64)
        loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def scratch_trials(monkeypatch):
    """`install(prefer_scratch)` patches fine-tuning in the compression loop and in the baselines: every call runs
    the real `finetune`, appends (is it try_scratch's from-scratch candidate?, the weights it started from) to the
    returned list, and reports a best validation accuracy of 0.9 for the candidate `prefer_scratch` names, 0.8
    for the other."""
    from deepiot import finetune as finetuning
    from deepiot.baselines import pipeline
    from deepiot.compression import loop

    def install(prefer_scratch: bool) -> list[tuple[bool, dict[str, torch.Tensor]]]:
        started = []

        def finetune(model, train, validation, config, **kwargs):
            result = finetuning.finetune(model, train, validation, config, **kwargs)
            scratch = str(kwargs.get("state_path", "")).endswith(loop.SCRATCH_STATE_FILE)
            started.append((scratch, {key: value.clone() for key, value in model.state_dict().items()}))
            return result._replace(best_val_accuracy=0.9 if scratch == prefer_scratch else 0.8)

        monkeypatch.setattr(loop, "finetune", finetune)
        monkeypatch.setattr(pipeline, "finetune", finetune)
        return started

    return install
