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


def test_entry_marker_spacing_and_entry_on_a_marked_file():
    """One space before `# << START_OF_TRACE` (harnesses in the wild) marks the entry as two
    do; only CWM's exact two-space form is stripped from actions, so the one-space marker stays
    in the call frame's action (as CWM's generations for such harnesses show). `--entry` naming
    the marked function gives the same trace; naming another is refused."""
    from tracekit.sandbox import run_trace

    golden = (PROGRAMS / "harness_one_space.py").read_text()
    assert "def main(): # << START_OF_TRACE\n" in golden
    expected = expected_path("harness_one_space", "3.10").read_text()
    assert "<|action_sep|>def main(): # << START_OF_TRACE\n<|frame_sep|>" in expected
    by_entry = run_trace(golden, call="main()", entry="main")
    assert trace_text(by_entry) == expected_path("harness_one_space", by_entry.python).read_text()
    two_spaces = run_trace(golden.replace("): # <<", "):  # <<"), call="main()", entry="main")
    assert two_spaces.status == "ok"
    assert two_spaces.frames[0].source == "def main():\n"  # CWM's form is stripped
    other = run_trace(golden, call="main()", entry="f")
    assert other.status == "no_entry" and "marks another function" in other.error
