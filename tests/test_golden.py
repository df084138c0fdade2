"""Golden traces, checked by hand against spec/trace-format.md, under every CPython found."""

from __future__ import annotations

import pytest

from tests.conftest import SUPPORTED_PYTHONS, python_or_skip
from tests.golden.expected_for import PROGRAMS, expected_path, trace_program
from tracekit.prompts import trace_text
from tracekit.trace import Trace

NAMES = sorted(p.stem for p in PROGRAMS.glob("*.py"))


def test_there_are_enough_golden_programs():
    assert len(NAMES) >= 25


@pytest.mark.parametrize("version", SUPPORTED_PYTHONS)
@pytest.mark.parametrize("name", NAMES)
def test_golden_trace(name: str, version: str):
    python = python_or_skip(version)
    trace = trace_program(name, python)
    expected = expected_path(name, trace.python).read_text()
    assert trace.python.startswith(version)
    assert trace_text(trace) == expected, f"{name} under {trace.python}"


def test_golden_trace_survives_json_round_trip():
    trace = trace_program("exception_from_callee", None)
    again = Trace.from_json(trace.to_json())
    assert again == trace
    assert trace_text(again) == trace_text(trace)
