"""Golden traces under every CPython found. The expected files are the tracer's output, written
by `tests/golden/expected_for.py --write` and read over by hand; each is also checked against
an independent record of the same run (tests/golden/snapshot.py, a plain settrace loop): same
events, same actions, every value equal once ".." is resolved."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import SUPPORTED_PYTHONS, python_or_skip
from tests.golden.expected_for import PROGRAMS, expected_path, trace_program
from tracekit.format.cwm import parse_trace
from tracekit.format.prompts import trace_text
from tracekit.format.trace import Trace, resolve_dots

NAMES = sorted(p.stem for p in PROGRAMS.glob("*.py"))
VERSION = "import platform; print(platform.python_version())"
SEEDED = {"PYTHONHASHSEED": "0"}  # as the sandbox runs programs: set order is repeatable


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


@pytest.mark.parametrize("version", SUPPORTED_PYTHONS)
def test_golden_files_agree_with_a_plain_settrace_record(version: str):
    """Each expected file in force for `version`, ".." resolved, against snapshot.py run under
    that interpreter: the golden files are not only the tracer's word. Key order is not
    compared (3.13's f_locals proxy orders keys its own way; the tracer restores 3.10's)."""
    python = python_or_skip(version)
    full_version = subprocess.run([python, "-c", VERSION],
                                  capture_output=True, text=True, check=True).stdout.strip()
    wrong = []
    for name in NAMES:
        run = subprocess.run([python, "-s", "-B", str(PROGRAMS.parent / "snapshot.py"),
                              str(PROGRAMS / f"{name}.py")], capture_output=True, text=True,
                             timeout=120, check=True, env={**os.environ, **SEEDED})
        truth = json.loads(run.stdout)
        frames = parse_trace(expected_path(name, full_version).read_text()).frames
        golden = [{"event": f.event, "source": f.source, "locals": state, "arg": f.arg}
                  for f, state in zip(frames, resolve_dots(frames))]
        if golden != truth:
            wrong.append(name)
    assert wrong == []


def test_golden_trace_survives_json_round_trip():
    trace = trace_program("exception_from_callee", None)
    again = Trace.from_json(trace.to_json())
    assert again == trace
    assert trace_text(again) == trace_text(trace)


def test_entry_marker_spacing_and_entry_on_a_marked_file():
    """One space before `# << START_OF_TRACE` (harnesses in the wild) marks the entry as two
    do; only CWM's exact two-space form is stripped from actions, so the one-space marker stays
    in the call frame's action (as CWM's generations for such harnesses show). `--entry` naming
    the marked function gives the same trace; naming another moves the marker there."""
    from tracekit.execution.sandbox import run_trace

    golden = (PROGRAMS / "harness_one_space.py").read_text()
    assert "def main(): # << START_OF_TRACE\n" in golden
    expected = expected_path("harness_one_space", "3.10").read_text()
    assert "<|action_sep|>def main(): # << START_OF_TRACE\n<|frame_sep|>" in expected
    by_entry = run_trace(golden, call="main()", entry="main")
    assert trace_text(by_entry) == expected_path("harness_one_space", by_entry.python).read_text()
    two_spaces = run_trace(golden.replace("): # <<", "):  # <<"), call="main()", entry="main")
    assert two_spaces.status == "ok"
    assert two_spaces.frames[0].source == "def main():\n"  # CWM's form is stripped
    other = run_trace(golden, call="f('ab')", entry="f")
    assert other.status == "ok" and other.context.count("START_OF_TRACE") == 1
    assert "def main():\n" in other.context and other.frames[0].event == "call"
    assert other.frames[0].source.startswith("def f(")
