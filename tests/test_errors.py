"""One error hierarchy: every error class of the package derives from deepiot.errors.DeepIoTError (and keeps its
ValueError/RuntimeError base and its import path), and the commands report any of them the same way."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import deepiot
from deepiot.cli import reported_errors
from deepiot.errors import DeepIoTError

# every error class where it is imported from, and the builtin base `except` clauses already rely on
ERRORS = {
    "deepiot.utils.ConfigError": ValueError,
    "deepiot.compression.budget.BudgetError": ValueError,
    "deepiot.checks.ModelCheckError": ValueError,
    "deepiot.structure.StructureError": ValueError,
    "deepiot.data.DataError": ValueError,
    "deepiot.checkpoint.CheckpointError": ValueError,
    "deepiot.export.ExportError": ValueError,
    "deepiot.edge.EdgeError": ValueError,
    "deepiot.litert.LiteRTError": ValueError,
    "deepiot.device.ProfileError": ValueError,
    "deepiot.runtime.CompressionError": RuntimeError,
    "deepiot.finetune.FinetuneError": RuntimeError,
    "deepiot.train.TrainingError": RuntimeError,
    "deepiot.cli.harness.GridError": RuntimeError,
}


def error_class(dotted: str) -> type[BaseException]:
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def defined_errors() -> set[type[BaseException]]:
    """Every exception class defined in a module of the package."""
    found = set()
    for info in pkgutil.walk_packages(deepiot.__path__, "deepiot."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.add(value)
    return found


def test_every_error_class_of_the_package_is_listed_and_derives_from_the_base():
    defined = defined_errors() - {DeepIoTError}
    assert {cls.__name__ for cls in defined} == {dotted.rsplit(".", 1)[1] for dotted in ERRORS}
    assert [cls.__name__ for cls in defined if not issubclass(cls, DeepIoTError)] == []


@pytest.mark.parametrize("dotted", sorted(ERRORS))
def test_each_error_keeps_its_import_path_and_builtin_base(dotted):
    cls = error_class(dotted)
    assert issubclass(cls, DeepIoTError) and issubclass(cls, ERRORS[dotted])


@pytest.mark.parametrize("dotted", sorted(ERRORS))
def test_the_commands_report_every_error_as_one_line_and_exit_status_2(dotted, capsys):
    with pytest.raises(SystemExit) as exit_info, reported_errors("deepiot-x"):
        raise error_class(dotted)("what is wrong; what was expected")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "deepiot-x: error: what is wrong; what was expected\n"


def test_other_exceptions_keep_their_traceback():
    with pytest.raises(ValueError, match="not ours"), reported_errors("deepiot-x"):
        raise ValueError("not ours")
