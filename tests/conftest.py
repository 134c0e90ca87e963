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
