"""Every run on a worker may share the workflow modules: they hold no state a run could change.

The worker passes ``workflows`` through the sandbox (worker.py:workflow_runner): each module is
imported once and all the runs it caches see the same globals and the same classes. That is as
deterministic as a fresh import per run only while nothing a run can reach there changes: every
value bound at module or class level is immutable, and no function rebinds a global.
"""

from __future__ import annotations

import ast
import enum
import importlib
import pkgutil
import types
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

import pydantic
import pytest
from temporalio.common import RetryPolicy, SearchAttributeKey

import workflows

MODULES = sorted(f"workflows.{m.name}" for m in pkgutil.iter_modules(workflows.__path__))
VALUES = (str, bytes, int, float, bool, type(None), timedelta, datetime, tzinfo, enum.Enum)
# Values the SDK only reads: a RetryPolicy is copied into each command it is passed to.
SDK_VALUES = (RetryPolicy, SearchAttributeKey)
CODE = (type, types.FunctionType, staticmethod, classmethod, property)
TYPING = ("typing", "typing_extensions", "__future__")


def immutable(value: Any) -> bool:
    if isinstance(value, (tuple, frozenset)):
        return all(immutable(item) for item in value)
    return (
        isinstance(value, VALUES + SDK_VALUES + CODE)
        or type(value).__module__ in TYPING  # Literal[...], type aliases, __future__ flags
    )


def shared_values(module: types.ModuleType) -> dict[str, Any]:
    """What the module binds at its top level and in the classes it defines (not pydantic's
    models: each instance gets its own copy of a field's default)."""
    found: dict[str, Any] = {}
    for name, value in vars(module).items():
        if name.startswith("__") or isinstance(value, types.ModuleType):
            continue
        found[name] = value
        if (
            isinstance(value, type)
            and value.__module__ == module.__name__
            and not issubclass(value, (pydantic.BaseModel, enum.Enum, BaseException))
        ):
            for attr, member in vars(value).items():
                if not attr.startswith("__"):
                    found[f"{name}.{attr}"] = member
    return found


@pytest.mark.parametrize("name", MODULES)
def test_module_and_class_level_values_are_immutable(name: str) -> None:
    module = importlib.import_module(name)
    mutable = {k: type(v).__name__ for k, v in shared_values(module).items() if not immutable(v)}
    assert not mutable, f"{name} would share mutable state between runs: {mutable}"


@pytest.mark.parametrize("name", MODULES)
def test_no_function_rebinds_a_global(name: str) -> None:
    source = Path(importlib.import_module(name).__file__ or "").read_text()
    rebinds = [
        f"line {node.lineno}: global {', '.join(node.names)}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Global)
    ]
    assert not rebinds, f"{name}: {rebinds}"


def test_the_check_finds_shared_mutable_state() -> None:
    # What the two tests above would refuse, so they are known to look.
    module = types.ModuleType("workflows.example")

    class Holder:
        seen: list[str] = []  # the very thing refused

    Holder.__module__ = module.__name__
    module.__dict__.update(CACHE={}, Holder=Holder, LIMIT=3, KEYS=("a", ["b"]))
    refused = {k for k, v in shared_values(module).items() if not immutable(v)}
    assert refused == {"CACHE", "Holder.seen", "KEYS"}
