"""The tests: source: episodes cut from a project's own test suite, on a small project written
for them (tests/fixtures/tinyproj: src layout, plain pytest tests, a unittest class, a
parametrized test, a function called from many tests, recursion, methods, a generator, an
exception, a callee in the same file, a relative import, a function reading a global one test
changes, a decorated function, a property, a staticmethod, a classmethod) and on one whose
test files misbehave (tests/fixtures/hostileproj)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import needs_bwrap
from tracekit.datasets import build as dataset
from tracekit.datasets.files import load_rows
from tracekit.datasets.rows import row_trace
from tracekit.execution.sandbox import Limits, TraceOptions, run_trace
from tracekit.format.prompts import trace_text
from tracekit.format.trace import resolve_dots
from tracekit.programs import sources
from tracekit.programs.suites import EpisodeOptions

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tinyproj"
HOSTILE = ROOT / "tests" / "fixtures" / "hostileproj"


def build(tmp_path: Path, name: str, project: Path = TINY, **settings) -> list[dict]:
    programs = sources.from_specs([f"tests:{project}"], episodes=EpisodeOptions(**settings))
    dataset.build(programs, tmp_path / name, dataset.BuildOptions(), workers=2)
    return load_rows(tmp_path / name)


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory) -> list[dict]:
    return build(tmp_path_factory.mktemp("tiny"), "default")


def by_call(rows: list[dict]) -> dict[str, dict]:
    return {row["call"]: row for row in rows}


def test_each_episode_is_what_tracekit_trace_gives_for_that_call(tiny_rows):
    """Every episode whose arguments evaluate back, traced again by `tracekit trace` (the
    file with the marker, as its module, the project importable): the same CWM text, byte
    for byte. The one episode of a function that read a global its test had changed is the
    one that differs."""
    calls = by_call(tiny_rows)
    # what the project exercises is all there: recursion, a method, a generator, an exception,
    # a callee of the same file, calls from a unittest class and a parametrized test
    for call in ("fib(5)", "fib(4)", "Stack.push(Stack([1]), 2)",
                 "list(chunks([1, 2, 3, 4, 5], 2))", "parse_pair('novalue')",
                 "normalize('the')", "count_words('b a b c b a', 2)", "clamp(2, 0, 3)",
                 # reached as the module reaches them: under a decorator, a property, a
                 # staticmethod; a decorator's closure through the name it was bound to
                 "area.__wrapped__(2, 3)", "Box.size.fget(Box(2, 5))", "Box.unit()",
                 "area(*(2, 3), **{})"):
        assert call in calls, sorted(calls)
    assert calls["parse_pair('novalue')"]["status"] == "raised"
    assert calls["fib(5)"]["test"] == "tests/test_text.py::test_fib[5-5]"
    assert calls["Stack.pop(Stack([1, 2]))"]["test"] == (
        "tests/test_stack.py::StackTest::test_push_pop")
    assert calls["Stack.push(Stack([1]), 2)"]["function"] == "Stack.push"
    assert json.loads(calls["count_words('b a b c b a', 2)"]["args"]) == {
        "text": "'b a b c b a'", "limit": "2"}
    with_harness = [row for row in tiny_rows if row["harness"]]
    assert len(with_harness) >= 18
    differ = []
    for row in with_harness:
        trace = run_trace(row["context"], row["call"], None, TraceOptions(),
                          str(TINY / row["file"]), row["module"], (str(TINY / "src"),))
        assert trace.status in ("ok", "raised"), (row["call"], trace.error)
        if trace_text(trace) != row["cwm"]:
            differ.append(row["call"])
    assert differ == ["split_fields('a;b ')"]
    # Stack.__init__'s self has no repr yet (no items): no harness, the call still recorded
    init = [row for row in tiny_rows if row["function"] == "Stack.__init__"]
    assert init and all(row["harness"] is None for row in init)
    assert calls["area(*(2, 3), **{})"]["function"] == "logged.<locals>.wrapper"


def test_the_harness_is_the_file_and_a_main_that_makes_the_call(tiny_rows):
    row = by_call(tiny_rows)["fib(4)"]
    source = (TINY / "src" / "tinyproj" / "text.py").read_text()
    assert row["harness"] == (source.rstrip() + "\n\n\ndef main():  # << START_OF_TRACE\n"
                                                "    return fib(4)\n")
    assert row["module"] == "tinyproj.text" and row["file"] == "src/tinyproj/text.py"
    trace = run_trace(row["harness"], None, None, TraceOptions(), str(TINY / row["file"]),
                      row["module"], (str(TINY / "src"),))
    assert trace.status == "ok" and trace.return_value == "3"


def test_step_in_zero_steps_over_callees_and_keeps_the_callers_baseline(tiny_rows, tmp_path):
    """Step-in 0: count_words's episode has no frame of normalize (its callee), its lambda's
    frames stay (part of the function), and every other frame is the step-in 1 episode's,
    values resolved. Max depth bounds how deep recursion is followed."""
    over = by_call(build(tmp_path, "over", step_in=0.0))
    full = by_call(tiny_rows)
    call = "count_words('the cat and the hat', None)"
    normalize = {"def normalize(word):\n", "    return word.strip(\"'\").lower()\n"}

    def resolved(row, keep=lambda frame: True):
        trace = row_trace(row)
        states = resolve_dots(trace.frames)
        return [(f.event, f.source, state, f.arg)
                for f, state in zip(trace.frames, states) if keep(f)]

    stepped_over = resolved(over[call])
    assert not any(source in normalize for _, source, _, _ in stepped_over)
    assert stepped_over == resolved(full[call], lambda f: f.source not in normalize)
    # after the stepped-over call the caller's baseline holds ("raw" unchanged is ".."); after
    # a callee stepped into, the caller's next frame is written in full
    for row, raw in ((over[call], '".."'), (full[call], "\"'the'\"")):
        frames = row_trace(row).frames
        calling = next(i for i, f in enumerate(frames) if "normalize(raw)" in f.source)
        after = next(f for f in frames[calling + 1:] if f.source == "        if word:\n")
        assert json.dumps(after.locals["raw"]) == raw
    limited = "count_words('b a b c b a', 2)"
    assert any("lambda kv" in f[1] and f[0] == "call" for f in resolved(over[limited]))

    shallow = by_call(build(tmp_path, "shallow", max_depth=1))
    calls = [f for f in row_trace(shallow["fib(5)"]).frames if f.event == "call"]
    assert len(calls) == 3  # fib(5), and fib(4) and fib(3) one level down, no deeper
    entry_only = by_call(build(tmp_path, "flat", max_depth=0))
    assert [f.event for f in row_trace(entry_only["fib(5)"]).frames].count("call") == 1


def test_per_function_caps_the_episodes_of_each_function(tmp_path):
    rows = build(tmp_path, "two", per_function=2)
    functions: dict[str, list] = {}
    for row in rows:
        functions.setdefault(f"{row['file']}:{row['function']}", []).append(row["args"])
    assert functions["src/tinyproj/text.py:normalize"] == [
        json.dumps({"word": "'x'"}), json.dumps({"word": "'y'"})]  # first met, file order
    assert all(len(args) <= 2 and len(set(args)) == len(args) for args in functions.values())
    assert len(functions["src/tinyproj/text.py:fib"]) == 2


def test_check_harness_keeps_pure_functions_and_drops_one_that_read_a_changed_global(tmp_path):
    programs = sources.from_specs([f"tests:{TINY}"], episodes=EpisodeOptions(check_harness=True))
    stats = dataset.build(programs, tmp_path / "checked", dataset.BuildOptions(), workers=2)
    rows = by_call(load_rows(tmp_path / "checked"))
    assert "split_fields('a, b')" in rows and "split_fields('a;b ')" not in rows
    assert all(row["harness"] for row in rows.values())
    checks = stats["suites"]["harness check"]
    # no harness: Stack.__init__ twice and Box.__init__ three times (self has no repr yet),
    # Box.square (its cls is a class)
    assert checks["frames differ"] == 1 and checks["no harness"] == 6
    assert checks["passed"] == len(rows) >= 18


def test_a_build_is_deterministic_and_resumes_after_sigkill_to_the_same_rows(tmp_path):
    command = [sys.executable, "-m", "tracekit.cli", "dataset", "build", f"tests:{TINY}",
               "--shard-size", "1", "--workers", "2", "--step-in", "0.5"]
    whole = tmp_path / "whole"
    subprocess.run([*command, "-o", str(whole)], check=True, cwd=ROOT, capture_output=True)
    again = tmp_path / "again"
    subprocess.run([*command, "-o", str(again)], check=True, cwd=ROOT, capture_output=True)
    assert load_rows(again) == load_rows(whole)
    killed = tmp_path / "killed"
    for point in ("traced:1", "written:2"):
        proc = subprocess.run([*command, "-o", str(killed), "--resume"], cwd=ROOT,
                              capture_output=True, env={**os.environ, "TRACEKIT_KILL_AT": point})
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-500:])
    subprocess.run([*command, "-o", str(killed), "--resume"], check=True, cwd=ROOT,
                   capture_output=True)
    assert load_rows(killed) == load_rows(whole)
    assert json.loads((killed / "stats.json").read_text())["suites"] == json.loads(
        (whole / "stats.json").read_text())["suites"]


def test_long_files_are_shortened_around_what_the_episode_ran(tmp_path):
    """Past --max-context-tokens the bodies of functions the episode did not run become
    `...`; further past it those functions go whole (a run of them one `...`), and long
    module-level statements too. The frames' lines point into the shortened context."""
    source = (TINY / "src" / "tinyproj" / "text.py").read_text()
    for budget, kept in ((300, "class Stack:\n    def __init__(self, items=()):\n        ...\n"),
                         (120, "\n\n...\n\nclass Stack:\n    ...")):
        row = by_call(build(tmp_path, f"short{budget}", max_context_tokens=budget))["fib(5)"]
        context = row["context"]
        ast.parse(context)
        assert len(context.splitlines()) < len(source.splitlines()) and kept in context
        assert "def fib(n):  # << START_OF_TRACE\n" in context and "import re" in context
        lines = context.replace("  # << START_OF_TRACE", "").split("\n")
        for frame in row_trace(row).frames:
            assert lines[frame.lineno - 1] + "\n" == frame.source


def project_hash(project: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(project.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(project)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_hostile_test_files_are_contained_and_the_others_episodes_kept(tmp_path):
    """A test that forks, loops forever, writes into the project, opens the network, calls
    os._exit or sets its own tracer, and a file that set a tracer before its tests (as
    coverage does): each ends in one line or is said in the stats, nothing of the project
    changes, and every episode recorded before a file went wrong is kept."""
    needs_bwrap()
    before = project_hash(HOSTILE)
    command = [sys.executable, "-m", "tracekit.cli", "dataset", "build", f"tests:{HOSTILE}",
               "-o", str(tmp_path / "out"), "--timeout", "5", "--workers", "2",
               "--per-function", "10"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-800:]
    assert project_hash(HOSTILE) == before
    errors = [line for line in proc.stderr.splitlines() if line.startswith("test file:")]
    assert sorted(line.split()[2] for line in errors) == [
        "tests/test_exit.py:", "tests/test_loop.py:"], proc.stderr
    assert "crashed: the process exited with code 3" in proc.stderr
    assert "tests/test_loop.py: timeout: " in proc.stderr
    assert "replaced tracekit's tracer in tests/test_tracer.py::test_sets_its_own_tracer" in (
        proc.stdout)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())["suites"]
    # fine, fork, write, network (not reached), own tracer, another tracer set before
    assert stats["tests"] == {"passed": 6}
    assert stats["other tracer active in"] == {"test files": 1}  # and its episode kept
    assert stats["episodes dropped"]["over 10,000 events"] == 1  # spin()
    rows = load_rows(tmp_path / "out")
    assert sorted(row["call"] for row in rows) == [
        "double(2)", "double(3)", "double(4)", "double(5)", "double(6)", "double(7)",
        "double(9)"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracekit.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_what_a_build_cannot_use_is_one_line_and_exit_8(tmp_path):
    missing = run_cli("dataset", "build", f"tests:{tmp_path / 'nowhere'}", "-o",
                      str(tmp_path / "a"))
    assert missing.returncode == 8 and "no such directory" in missing.stderr
    (tmp_path / "empty" / "pkg").mkdir(parents=True)
    (tmp_path / "empty" / "pkg" / "m.py").write_text("def f():\n    return 1\n")
    no_tests = run_cli("dataset", "build", f"tests:{tmp_path / 'empty'}", "-o",
                       str(tmp_path / "b"))
    assert no_tests.returncode == 8 and "no test files" in no_tests.stderr
    bare = tmp_path / "bare"  # an interpreter without pytest
    venv.create(bare, with_pip=False)
    no_pytest = run_cli("dataset", "build", f"tests:{TINY}", "-o", str(tmp_path / "c"),
                        "--python", str(bare / "bin" / "python"))
    assert no_pytest.returncode == 8, no_pytest.stderr
    assert "pytest is not installed in" in no_pytest.stderr
    assert len(no_pytest.stderr.strip().splitlines()[-1]) > 40  # one line, saying what to do
    broken = tmp_path / "broken"
    (broken / "tests").mkdir(parents=True)
    (broken / "lib.py").write_text("import not_a_module_anywhere\n\ndef f():\n    return 1\n")
    (broken / "tests" / "test_lib.py").write_text("import lib\n\ndef test_f():\n    "
                                                  "assert lib.f() == 1\n")
    no_import = run_cli("dataset", "build", f"tests:{broken}", "-o", str(tmp_path / "d"))
    assert no_import.returncode == 8
    assert "No module named 'not_a_module_anywhere'" in no_import.stderr.splitlines()[-1]
    # a conftest hook pytest rejects makes pytest.main raise (boltons 24.0's under pytest 8):
    # the suite's error, named, not a crashed worker
    rejected = tmp_path / "rejected"
    (rejected / "tests").mkdir(parents=True)
    (rejected / "lib.py").write_text("def f():\n    return 1\n")
    (rejected / "tests" / "conftest.py").write_text(
        "def pytest_ignore_collect(path, config):\n    return False\n")
    (rejected / "tests" / "test_lib.py").write_text("import lib\n\ndef test_f():\n    "
                                                    "assert lib.f() == 1\n")
    raised = run_cli("dataset", "build", f"tests:{rejected}", "-o", str(tmp_path / "e"))
    assert raised.returncode == 8
    assert "internal_error: pytest raised PluginValidationError" in raised.stderr, raised.stderr


def test_a_suite_that_runs_long_is_killed_at_the_timeout(tmp_path):
    """--timeout is per test file: the loop's file ends at it, with its process group."""
    needs_bwrap()
    programs = [s for s in sources.from_specs([f"tests:{HOSTILE}"],
                                              episodes=EpisodeOptions(timeout=2))
                if s.test_file == "tests/test_loop.py"]
    options = dataset.BuildOptions(TraceOptions(limits=Limits(timeout=2)))
    stats = dataset.build(programs, tmp_path / "loop", options, workers=1)
    assert stats["suites"]["test files"] == {"timeout": 1}
    assert [row["call"] for row in load_rows(tmp_path / "loop")] == ["double(5)"]


def test_doctest_examples_become_programs_with_their_expected_output(tmp_path):
    """Each example that calls the module's own code is the module plus a main returning it,
    run as its module (text.py's relative import resolves); the traced value is the
    example's expected output. A module name is found as Python finds it."""
    programs = list(sources.from_specs([f"doctest:{TINY / 'src'}"]))
    assert [(p.id, p.expected) for p in programs] == [
        ("tinyproj/text.py:16", "{'a': 2, 'b': 1}"), ("tinyproj/text.py:32", "8"),
        ("tinyproj/util.py:4", "5"), ("tinyproj/util.py:6", "0")]
    assert programs[0].source.endswith("def main():  # << START_OF_TRACE\n"
                                       "    return count_words(\"a b a\")\n")
    assert programs[0].module == "tinyproj.text"
    stats = dataset.build(programs, tmp_path / "doc", dataset.BuildOptions(), workers=2)
    rows = load_rows(tmp_path / "doc")
    assert stats["statuses"] == {"ok": 4}
    assert [row["return_value"] for row in rows] == [row["expected"] for row in rows]
    fractions = list(sources.from_specs(["doctest:fractions"]))
    assert len(fractions) >= 5 and all(p.module == "fractions" for p in fractions)
    with pytest.raises(sources.SourceError, match="no such file, directory or pure-Python"):
        list(sources.from_specs(["doctest:not_a_module_anywhere"]))


def test_the_realworld_set_traces_as_shipped_and_is_held_out(tmp_path):
    """data/realworld/: each program, traced from the project files shipped beside it,
    returns what it returned when the set was made; contexts are shortened around what ran;
    the training runs' leakage check holds its files out."""
    from tracekit.training.data import leaks
    from tracekit.training.run import held_out_programs

    programs = list(sources.from_specs(["realworld"]))
    assert len(programs) == 286 and len({p.id for p in programs}) == 286
    for project, licence in (("inflection", "LICENSE"), ("more-itertools", "LICENSE"),
                             ("toolz", "LICENSE.txt")):
        assert (ROOT / "data" / "realworld" / "project-files" / project / licence).is_file()
    sample = random.Random(0).sample(programs, 40)
    stats = dataset.build(sample, tmp_path / "rw", dataset.BuildOptions(), workers=2)
    rows = load_rows(tmp_path / "rw")
    assert len(rows) == 40 and set(stats["statuses"]) <= {"ok", "raised"}
    assert [row["return_value"] for row in rows] == [row["expected"] for row in rows]
    for row in rows:
        lines = row["context"].split("\n")
        assert lines[-3] == "def main():  # << START_OF_TRACE"
        for frame in row_trace(row).frames:
            assert lines[frame.lineno - 1].replace("  # << START_OF_TRACE", "") + "\n" == (
                frame.source)
    held_out = held_out_programs()
    copied = next(p for p in programs if p.id.startswith("toolz/toolz/itertoolz.py"))
    assert leaks([("copy", copied.source)], held_out)[0].startswith("copy ~ realworld/")


def test_trace_runs_a_harness_as_its_module_from_the_command_line(tiny_rows, tmp_path):
    row = by_call(tiny_rows)["fib(4)"]
    harness = tmp_path / "harness.py"
    harness.write_text(row["harness"])
    traced = run_cli("trace", str(harness), "--module", row["module"], "--path",
                     str(TINY / "src"), "--format", "json")
    assert traced.returncode == 0, traced.stderr
    assert json.loads(traced.stdout)["return_value"] == "3"
    alone = run_cli("trace", str(harness))  # as __main__: its relative import has no package
    assert alone.returncode == 4 and "attempted relative import" in alone.stderr
