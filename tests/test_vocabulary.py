"""Fresh names for generated programs: the program means the same, only its names change."""

from __future__ import annotations

import ast
import random

from tracekit.format.vocabulary import rename
from tracekit.programs.basic_programs import generate_basic_program
from tracekit.programs.synthetic import FEATURES, generate_program
from tracekit.tracer.run import trace_source
from tracekit.training.data import function_shapes

HOSTILE = '''def f(count, text):  # << START_OF_TRACE
    key = sorted(text, key=lambda count: -ord(count))
    # count stays in this comment, and in 'count' below
    total = text.count('count') + count
    return [key, total, 'key']
'''


def test_names_change_where_bound_and_nowhere_else():
    original = trace_source(HOSTILE, call="f(2, 'banana')")
    for seed in range(40):
        source, call = rename(HOSTILE, "f(2, 'banana')", random.Random(seed), variable_share=1.0,
                              function_share=1.0)
        tree = ast.parse(source)
        entry = tree.body[0]
        params = [a.arg for a in entry.args.args]
        assert entry.name != "f" and call == f"{entry.name}(2, 'banana')"
        assert "count" not in params and "text" not in params
        assert "# count stays in this comment, and in 'count' below" in source
        assert ".count('count')" in source and "key=lambda" in source  # attribute, keyword
        assert "key = sorted(" in source  # bound, but also a keyword argument: kept
        assert source.endswith("'key']\n") and "# << START_OF_TRACE" in source
        renamed = trace_source(source, call=call)
        assert renamed["status"] == original["status"] == "ok"
        expected = "[['n', 'n', 'b', 'a', 'a', 'a'], 2, 'key']"
        assert renamed["return_value"] == original["return_value"] == expected
        assert _values(renamed) == _values(original)


def _values(trace: dict) -> list:
    """Each frame's event, line and values in order, without the names."""
    return [(event, line, list((state or {}).values()), value)
            for event, line, _, state, value, *_ in trace["frames"]]


def test_generated_programs_keep_their_meaning_under_new_names():
    plain = tuple(f for f in FEATURES if f != "methods")  # the generator without renaming
    names: set[str] = set()
    for index in range(150):
        source, call = generate_program(3, index, size=2, features=plain)
        new_source, new_call = rename(source, call, random.Random(index))
        # the same functions up to names (the leakage check's normalisation)
        assert sorted(function_shapes(new_source).values()) == \
            sorted(function_shapes(source).values())
        before, after = trace_source(source, call=call), trace_source(new_source, call=new_call)
        assert after["status"] == before["status"] and _values(after) == _values(before)
        names |= {n.id for n in ast.walk(ast.parse(new_source)) if isinstance(n, ast.Name)}
    assert len(names) > 400  # a vocabulary, not a list a model can learn by heart
    entries = {generate_basic_program(4, i)[1].split("(")[0] for i in range(200)}
    assert "main" in entries and "f" in entries and len(entries) > 30
