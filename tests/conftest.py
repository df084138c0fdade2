from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from tracekit.execution.interpreters import SandboxUnavailable, find_python

SUPPORTED_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# small projects whose own test suites the tests: source runs (tests/test_suites.py): not ours
collect_ignore = ["fixtures"]
IN_CI = os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    """Skip the test for `reason` (something this machine lacks) on a developer's machine; fail
    it under CI=true, where .ci/run installs everything and a skip would hide a missing part."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}: .ci/run must provide it", pytrace=False)
    pytest.skip(reason)


def needs_bwrap() -> None:
    """Skip or fail (see skip_or_fail) unless bubblewrap can make a sandbox here."""
    from tracekit.execution.sandbox import bwrap_problem

    problem = bwrap_problem()
    if problem:
        skip_or_fail(f"bubblewrap is unusable ({problem})")


def python_or_skip(version: str) -> str:
    """The interpreter for `version`, or skip (fail under CI) saying it is not installed."""
    try:
        return find_python(version).path
    except SandboxUnavailable as exc:
        skip_or_fail(f"CPython {version} is not installed ({exc})")


def benchmark_module(name: str) -> ModuleType:
    """benchmarks/NAME.py, imported (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundled_context() -> int:
    """The bundled model's context (positions), read from its config, not from the runtime
    that the tests check against it."""
    from tracekit.model.checkpoint import BUNDLED
    from tracekit.model.config import CwmConfig

    return CwmConfig.from_file(BUNDLED).max_position_embeddings


@pytest.fixture(params=SUPPORTED_PYTHONS)
def python(request) -> str:
    """Each CPython 3.10-3.13 found on PATH or under pyenv; absent ones skip with a reason."""
    return python_or_skip(request.param)


@pytest.fixture(scope="session")
def converted_tokenizer_dir(tmp_path_factory) -> Path:
    """A directory holding CWM's BPE (the Llama 3 ranks plus CWM's special tokens) converted to
    a tokenizer.json by transformers' tiktoken converter."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from tracekit.format.cwm import SPECIAL_TOKENS
    from tracekit.format.tokenizer import LLAMA3_PATTERN, _llama3_bpe_file

    converter = TikTokenConverter(
        vocab_file=str(_llama3_bpe_file()), pattern=LLAMA3_PATTERN,
        extra_special_tokens=sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.get))
    directory = tmp_path_factory.mktemp("converted")
    converter.converted().save(str(directory / "tokenizer.json"))
    return directory
