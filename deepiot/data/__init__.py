"""Datasets: every loader returns a normalised DatasetBundle and raises DataError on bad input."""

from __future__ import annotations

from collections.abc import Callable

from deepiot.data.base import DatasetBundle
from deepiot.data.cifar10 import load_cifar10
from deepiot.data.errors import DataError
from deepiot.data.hapt import load_hapt_activity, load_hapt_user
from deepiot.data.mnist import load_mnist
from deepiot.data.npz import load_npz

loaders_by_name: dict[str, Callable[..., DatasetBundle]] = {
    "mnist": load_mnist,
    "hapt_activity": load_hapt_activity,
    "hapt_user": load_hapt_user,
    "cifar10": load_cifar10,
    "npz": load_npz,
}

__all__ = [
    "DataError",
    "DatasetBundle",
    "load_cifar10",
    "load_hapt_activity",
    "load_hapt_user",
    "load_mnist",
    "load_npz",
    "loaders_by_name",
]
