"""The tracer's rules one by one: context and entry, rendering, the ".." rule against ground
truth, determinism, and the trace data model."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from tests.golden.expected_for import PROGRAMS
from tracekit.execution.sandbox import run_trace
from tracekit.format.prompts import trace_text
from tracekit.format.trace import Frame, Trace, resolve_dots
from tracekit.tracer.constants import MARKER
from tracekit.tracer.context import TraceSetupError, call_from_comment, prepare_context
from tracekit.tracer.run import trace_source
from tracekit.tracer.values import Renderer

ROOT = Path(__file__).resolve().parent.parent

# --- context and entry ----------------------------------------------------------------------

def test_marker_finds_the_entry():
    context, entry, line = prepare_context("x = 1\ndef f(a):  # << START_OF_TRACE\n    return a\n")
    assert (entry, line) == ("f", 2)
    assert context.count(MARKER) == 1


def test_entry_option_adds_the_marker_to_the_def_line():
    source = "def g():\n    return 1\n\n@staticmethod\ndef f(a):\n    return g()\n"
    context, entry, line = prepare_context(source, entry="f")
    assert context.split("\n")[4] == "def f(a):" + MARKER
    assert (entry, line) == ("f", 5)


def test_entry_option_takes_a_method_by_qualified_name():
    source = "class Stack:\n    def push(self, x):\n        return x\n"
    context, entry, _ = prepare_context(source, entry="Stack.push")
    assert context.split("\n")[1] == "    def push(self, x):" + MARKER
    result = trace_source(source, entry="Stack.push", call="Stack().push(3)")
    assert result["status"] == "ok" and result["return_value"] == "3"
    assert result["frames"][0][2] == "    def push(self, x):\n"  # marker removed from the action


@pytest.mark.parametrize("source, words", [
    ("def f():  # << START_OF_TRACE\n    pass\ndef g():  # << START_OF_TRACE\n    pass\n",
     "keep exactly one"),
    ("def f():  #  << START_OF_TRACE\n    pass\n", "must be written '# << START_OF_TRACE'"),
    ("def f():#<<START_OF_TRACE\n    pass\n", "must be written '# << START_OF_TRACE'"),
    ("x = 1  # << START_OF_TRACE\n", "not a def line"),
    ("def f():\n    pass\n", "--entry"),
])
def test_bad_markers_are_explained(source, words):
    with pytest.raises(TraceSetupError) as info:
        prepare_context(source)
    assert info.value.status == "no_entry"
    assert words in str(info.value)


def test_call_comment():
    assert call_from_comment("def f(x):\n    pass\n# tracekit-call: f(3, 'x')\n") == "f(3, 'x')"
    assert call_from_comment("def f(x):\n    pass\n") is None


def test_generator_entry_is_traced_to_exhaustion_not_its_first_yield():
    source = "def gen(n):  # << START_OF_TRACE\n    for i in range(n):\n        yield i\n"
    result = trace_source(source, call="list(gen(2))")
    events = [f[0] for f in result["frames"]]
    assert events.count("return") == 3  # two yields and the final return
    assert result["status"] == "ok" and result["return_value"] == "None"


def test_syntax_error_in_the_call():
    result = trace_source("def f(x):  # << START_OF_TRACE\n    return x\n", call="f(")
    assert result["status"] == "syntax_error" and result["error"].startswith("--call")


# --- rendering ------------------------------------------------------------------------------

def test_addresses_are_stripped_everywhere():
    renderer = Renderer()
    text = renderer.render([lambda: 1, object()])
    assert " at 0x" not in text
    assert re.fullmatch(r"\[<function test_addresses_are_stripped_everywhere.<locals>.<lambda>>,"
                        r" <object object>\]", text)


def test_value_cap_is_off_by_default_and_marked_when_set():
    long = "x" * 5000
    assert Renderer().render(long) == repr(long)
    assert Renderer(max_value_chars=10).render(long) == "'xxxxxxxxx...<tracekit: 4992 more chars>"


def test_big_ints_print_in_full_as_on_3_10():
    value = 10 ** 5000
    assert Renderer().render(value) == "1" + "0" * 5000


def test_frame_cap_keeps_the_first_frames():
    source = "def f():  # << START_OF_TRACE\n    n = 0\n    while True:\n        n += 1\n"
    result = trace_source(source, max_frames=7)
    assert result["status"] == "frame_limit" and len(result["frames"]) == 7
    assert "7 frames" in result["error"]


# --- the ".." rule, checked against ground truth ----------------------------------------------

def full_locals_by_snapshot(source: str, call: str) -> list[dict]:
    """Every call/line event's locals, rendered in full by a plain settrace loop (the truth)."""
    context, entry, _ = prepare_context(source)
    code = compile(context, "<truth>", "exec")
    namespace = {"__name__": "__main__"}
    exec(code, namespace)
    renderer, snapshots, state = Renderer(), [], {"on": False, "depth": 0}
    entry_code = namespace[entry].__code__ if entry in namespace else None

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != "<truth>":
            return None
        if frame.f_code is entry_code and not state["on"]:
            state["on"] = True
        if not state["on"]:
            return None
        if event in ("call", "line"):
            snapshots.append({k: renderer.render(v) for k, v in frame.f_locals.items()})
        return tracer

    sys.settrace(tracer)
    try:
        eval(call, namespace)
    except Exception:
        pass
    finally:
        sys.settrace(None)
    return snapshots


@pytest.mark.parametrize("name", ["loop_dots", "nested_calls", "recursion", "generator",
                                  "exception_from_callee", "exception_caught", "while_else",
                                  "custom_repr", "sets_dicts", "closure_free_vars"])
def test_resolving_dots_gives_back_every_value(name):
    source = (PROGRAMS / f"{name}.py").read_text()
    call = call_from_comment(source)
    result = trace_source(source, call=call, filename="<tracekit>")
    trace = Trace.from_dict(result)
    resolved = [r for r in resolve_dots(trace.frames) if r is not None]
    assert resolved == full_locals_by_snapshot(source, call)
    assert any(".." in (f.locals or {}).values() for f in trace.frames)  # the rule did apply


def test_dots_follow_the_spec_example_exactly():
    """docs/trace-format.md section 5 (the worked example), frame by frame."""
    source = textwrap.dedent("""\
        def add_all(xs):  # << START_OF_TRACE
            total = 0
            for x in xs:
                total += x
            return total
        """)
    frames = trace_source(source, call="add_all([3, 4])")["frames"]
    assert [f[3] for f in frames] == [
        {"xs": "[3, 4]"}, {"xs": ".."}, {"xs": "..", "total": "0"},
        {"xs": "..", "total": "..", "x": "3"}, {"xs": "..", "total": "3", "x": ".."},
        {"xs": "..", "total": "..", "x": "4"}, {"xs": "..", "total": "7", "x": ".."},
        {"xs": "..", "total": "..", "x": ".."}, None]
    assert frames[-1][4] == "7"


def test_dots_restart_in_full_after_a_frame_switch():
    """docs/trace-format.md section 5: the first frame after another scope's frames writes
    every value in full, though nothing changed; within one scope unchanged values are ".."."""
    source = textwrap.dedent("""\
        def g(x):
            return x + 1

        def f(x):  # << START_OF_TRACE
            a = g(x)
            b = a
            return b
        """)
    frames = trace_source(source, call="f(1)")["frames"]
    assert [(f[0], f[3]) for f in frames] == [
        ("call", {"x": "1"}), ("line", {"x": ".."}),
        ("call", {"x": "1"}), ("line", {"x": ".."}), ("return", None),
        ("line", {"x": "1", "a": "2"}),  # after g's frames: x in full (g's x was "1" too)
        ("line", {"x": "..", "a": "..", "b": "2"}), ("return", None)]


def test_the_documented_placeholder_texts_are_the_ones_written():
    """README.md and docs/trace-format.md show the placeholders' texts: they must be the
    tracer's (TYPE and N stand for the parts that vary)."""
    from tracekit.tracer import constants

    documented = [constants.RAISED_PLACEHOLDER.format("TYPE"), constants.TIMEOUT_PLACEHOLDER,
                  constants.TOO_LARGE_PLACEHOLDER.format("N"),
                  constants.TRUNCATED_MARKER.format("N")]
    assert documented == ["<tracekit: repr raised TYPE>", "<tracekit: repr timed out>",
                          "<tracekit: repr too large: N chars>", "...<tracekit: N more chars>"]
    for doc in (ROOT / "README.md", ROOT / "docs" / "trace-format.md"):
        text = doc.read_text(encoding="utf-8")
        assert all(f"`{placeholder}`" in text for placeholder in documented), doc


def test_resolve_dots_on_frames_without_scope_ids_uses_call_and_return_boundaries():
    frames = [Frame("call", 1, "def f(a):\n", {"a": "1"}),
              Frame("line", 2, "    b = g(a)\n", {"a": ".."}),
              Frame("call", 5, "def g(x):\n", {"x": "1"}),
              Frame("return", 6, "    return x\n", None, "1"),
              Frame("line", 3, "    return b\n", {"a": "1", "b": "1"}),
              Frame("line", 3, "    return b\n", {"a": "..", "b": ".."})]
    assert resolve_dots(frames) == [{"a": "1"}, {"a": "1"}, {"x": "1"}, None,
                                    {"a": "1", "b": "1"}, {"a": "1", "b": "1"}]


# --- determinism and the data model -----------------------------------------------------------

DETERMINISTIC = """\
import random

def f():  # << START_OF_TRACE
    words = {"pear", "fig", "kiwi", "plum"}
    roll = random.randint(0, 10 ** 9)
    h = hash("pear") % 1000
    return sorted(words), roll, h, list(words)
"""


def test_traces_are_deterministic():
    first = run_trace(DETERMINISTIC)
    second = run_trace(DETERMINISTIC)
    assert first.status == "ok"
    assert first.frames == second.frames


def test_stdout_and_stderr_are_captured_apart_from_the_trace():
    result = run_trace("import sys\ndef f():  # << START_OF_TRACE\n    print('hi')\n"
                       "    sys.stderr.write('err')\n    return 1\n")
    assert result.stdout == "hi\n" and result.stderr == "err"
    text = trace_text(result)  # every "hi" in the trace is the print line's own (context, action)
    assert text.count("hi") == text.count("print('hi')") == 2


def test_trace_json_round_trip_keeps_everything():
    trace = run_trace((PROGRAMS / "exception_escapes_callee.py").read_text(),
                      call="total([1, -1])")
    assert trace.status == "raised"
    again = Trace.from_json(trace.to_json())
    assert again == trace
    assert {f.event for f in again.frames} == {"call", "line", "return", "exception"}
    assert again.frames[0].depth == 0 and max(f.depth for f in again.frames) == 1
    assert len({f.scope for f in again.frames}) == 3  # total, check(1), check(-1)


@pytest.mark.parametrize("body, status, value", [
    ("    try:\n        raise ValueError('v')\n    finally:\n        x = 1\n", "raised", None),
    ("    try:\n        raise ValueError('v')\n    except ValueError:\n        pass\n", "ok", "None"),
    ("    return None\n", "ok", "None"),
    ("    for i in range(2):\n        try:\n            return {}['k']\n"
     "        except KeyError:\n            pass\n", "ok", "None"),
])
def test_exit_by_raising_is_told_from_returning_none(body, status, value):
    result = trace_source("def f():  # << START_OF_TRACE\n" + body)
    assert result["status"] == status, result["error"]
    assert result["return_value"] == value
    if status == "raised":
        assert result["error"] == "ValueError: v"
