"""The synthetic program generator: distinct, reproducible across processes, valid, and
terminating with status ok when traced."""

from __future__ import annotations

import ast
import collections
import hashlib
import subprocess
import sys
from pathlib import Path

from tracekit.programs.synthetic import generate_program, generate_programs
from tracekit.tracer.run import trace_source

ROOT = Path(__file__).resolve().parent.parent
DIGEST = ("import hashlib, sys; from tracekit.programs.synthetic import generate_programs; "
          "h = hashlib.sha256(); [h.update(repr(p).encode()) for p in "
          "generate_programs(int(sys.argv[1]), seed=7)]; print(h.hexdigest())")


def test_ten_thousand_distinct_programs_identical_across_runs_nearly_all_ok():
    programs = list(generate_programs(10_000, seed=7))
    assert len({(source, call) for _, source, call in programs}) == 10_000
    digest = hashlib.sha256()
    for program in programs:
        digest.update(repr(program).encode())
    other_process = subprocess.run([sys.executable, "-c", DIGEST, "10000"], cwd=ROOT, text=True,
                                   capture_output=True, check=True).stdout.strip()
    assert other_process == digest.hexdigest()
    statuses = collections.Counter(
        trace_source(source, call=call)["status"] for _, source, call in programs)
    assert statuses["ok"] >= 9_900, statuses


def test_programs_use_the_features_asked_for():
    kinds, methods, calls = collections.Counter(), collections.Counter(), collections.Counter()
    for index in range(300):
        source, call = generate_program(1, index)
        tree = ast.parse(source)
        kinds.update(type(node).__name__ for node in ast.walk(tree))
        methods.update(node.func.attr for node in ast.walk(tree)
                       if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute))
        calls.update(node.func.id for node in ast.walk(tree)
                     if isinstance(node, ast.Call) and isinstance(node.func, ast.Name))
        assert "  # << START_OF_TRACE" in source
        # half run as CRUXEval does: main() marked, calling the entry
        entry = "main" if call == "main()" else call[:call.index("(")]
        assert f"def {entry}(" in source
        assert entry != "main" or "def main():  # << " in source
    for construct in ("For", "While", "If", "Try", "ListComp", "DictComp", "Return", "Tuple",
                      "Raise", "Yield", "Lambda", "GeneratorExp"):
        assert kinds[construct] > 0, construct
    for method in ("sort", "reverse", "insert", "pop", "setdefault", "update", "upper", "split",
                   "join", "find", "count", "items", "format", "center", "partition"):
        assert methods[method] > 0, method
    assert calls["sorted"] > 0 and calls["enumerate"] > 0 and calls["zip"] > 0
    functions = [[n.name for n in ast.parse(generate_program(1, i)[0]).body
                  if isinstance(n, ast.FunctionDef) and n.name != "main"] for i in range(300)]
    assert sum(len(names) > 1 for names in functions) > 50  # a helper beside the entry
    assert 100 < sum(generate_program(1, i)[1] == "main()" for i in range(300)) < 200
    for index in range(300):  # loops and branches only: no exceptions, helpers, while
        source, call = generate_program(1, index, size=3, features=("loops", "branches"))
        names = {type(node).__name__ for node in ast.walk(ast.parse(source))}
        assert not names & {"Try", "While", "ListComp", "DictComp", "Raise", "Yield", "Lambda"}
        assert "def helper" not in source and call.startswith("f(")  # no "methods": no renaming


def test_size_grows_the_programs():
    small = sum(len(generate_program(2, i, size=1)[0].splitlines()) for i in range(200))
    large = sum(len(generate_program(2, i, size=8)[0].splitlines()) for i in range(200))
    assert large > 2 * small


def test_basic_programs_are_distinct_repeatable_everyday_functions_that_all_run():
    from tracekit.programs.basic_programs import (
        TEMPLATES,
        generate_basic_program,
        generate_basic_programs,
    )

    programs = list(generate_basic_programs(2_000, seed=3))
    assert len({(source, call) for _, source, call in programs}) == 2_000
    assert generate_basic_program(3, 17) == generate_basic_program(3, 17)
    assert generate_basic_program(3, 17) != generate_basic_program(4, 17)
    statuses = collections.Counter(
        trace_source(source, call=call)["status"] for _, source, call in programs)
    assert statuses == {"ok": 2_000}, statuses
    shapes = collections.Counter()
    for _, source, call in programs:
        tree = ast.parse(source)
        shapes.update(type(node).__name__ for node in ast.walk(tree))
        assert source.count("# << START_OF_TRACE") == 1 and len(source.splitlines()) <= 14
        # the loop bounds and tests read the arguments: no counter-named locals (v1, i2)
        assert not any(isinstance(n, ast.Name) and n.id[-1:].isdigit() for n in ast.walk(tree))
    for construct in ("For", "While", "If", "Break", "Continue", "ListComp", "Tuple"):
        assert shapes[construct] > 0, construct
    assert 800 < sum(call == "main()" for _, _, call in programs) < 1_200
    assert len(TEMPLATES) >= 10


def test_loop_programs_run_as_many_rounds_as_their_arguments_say():
    from tracekit.programs.basic_programs import generate_basic_programs

    programs = list(generate_basic_programs(500, seed=3, kind="loops"))
    assert len({(source, call) for _, source, call in programs}) == 500
    assert programs[0][0] == "loops-3-0"
    assert len({p[1:] for p in programs} & {
        p[1:] for p in generate_basic_programs(500, seed=3)}) < 10  # another stream
    rounds = collections.defaultdict(set)  # loop shape -> the round counts its calls give
    for _, source, call in programs:
        tree = ast.parse(source)
        loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While))]
        assert loops, source
        trace = trace_source(source, call=call)
        assert trace["status"] == "ok"
        for node in ast.walk(ast.Module(body=[loops[0]], type_ignores=[])):
            if isinstance(node, ast.Name):
                node.id = "_"  # the loop's shape, whatever its (fresh) names
        header = ast.unparse(loops[0]).splitlines()[0]
        first_body_line = loops[0].body[0].lineno
        rounds[header].add(sum(event == "line" and line == first_body_line
                               for event, line, *_ in trace["frames"]))
    # the same loop header runs different numbers of rounds: the arguments bound it
    assert sum(len(counts) >= 3 for counts in rounds.values()) >= 10
    assert any(h.startswith("while") and "<=" in h for h in rounds)


def test_method_programs_chain_methods_on_their_arguments_and_all_run():
    from tracekit.programs.method_programs import generate_method_program, generate_method_programs
    from tracekit.programs.sources import from_specs

    programs = list(generate_method_programs(2_000, seed=5))
    assert len({(source, call) for _, source, call in programs}) == 2_000
    assert generate_method_program(5, 17) == generate_method_program(5, 17)
    assert generate_method_program(5, 17) != generate_method_program(6, 17)
    assert [p.id for p in from_specs(["methods:3:5"])] == [p[0] for p in programs[:3]]
    statuses = collections.Counter(
        trace_source(source, call=call)["status"] for _, source, call in programs)
    assert statuses == {"ok": 2_000}, statuses
    shapes, methods, results = collections.Counter(), collections.Counter(), set()
    for _, source, call in programs:
        tree = ast.parse(source)
        shapes.update(type(node).__name__ for node in ast.walk(tree))
        methods.update(node.func.attr for node in ast.walk(tree)
                       if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute))
        assert source.count("# << START_OF_TRACE") == 1
        assert not any(isinstance(n, ast.Name) and n.id[-1:].isdigit() for n in ast.walk(tree))
    for construct in ("For", "While", "If", "Try", "ListComp", "DictComp", "GeneratorExp",
                      "Subscript", "Slice", "Lambda", "IfExp", "Delete"):
        assert shapes[construct] > 0, construct
    for method in ("replace", "strip", "split", "join", "find", "count", "upper", "swapcase",
                   "center", "zfill", "removeprefix", "partition", "append", "insert", "pop",
                   "remove", "sort", "reverse", "extend", "index", "get", "setdefault",
                   "update", "items", "values", "format", "isdigit", "isupper"):
        assert methods[method] > 0, method
    for index in range(200):  # results vary (not one constant a model could learn)
        source, call = generate_method_program(5, index)
        results.add(trace_source(source, call=call)["return_value"])
    assert len(results) > 150
    assert 800 < sum(call == "main()" for _, _, call in programs) < 1_200
