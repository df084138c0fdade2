from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tracekit.sandbox import SandboxUnavailable, find_python

SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def python_or_skip(version: str) -> str:
    """The interpreter for `version`, or skip the test saying it is not installed."""
    try:
        return find_python(version).path
    except SandboxUnavailable as exc:
        pytest.skip(f"CPython {version} not found: {exc}")


def benchmark_module(name: str) -> ModuleType:
    """benchmarks/NAME.py, imported (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=SUPPORTED_PYTHONS)
def python(request) -> str:
    """Each CPython 3.10-3.13 found on PATH or under pyenv; absent ones skip with a reason."""
    return python_or_skip(request.param)
