"""The `tracekit` command line: formats, exit codes, one-line errors, the demo."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import python_or_skip
from tracekit.cli import main
from tracekit.cli.exits import EXIT_CODES
from tracekit.execution.sandbox import bwrap_problem
from tracekit.format.trace import STATUSES, Trace

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "programs" / "bubble_sort.py"
ISOLATION_OFF = "warning: network and filesystem isolation are OFF ("


def error_lines(stderr: str) -> list[str]:
    """stderr's lines but the warning that isolation is off, which comes exactly when
    bubblewrap cannot run here (and the error must still be one line)."""
    lines = stderr.strip().splitlines()
    warned = [line for line in lines if line.startswith(ISOLATION_OFF)]
    assert len(warned) <= (1 if bwrap_problem() else 0), lines
    return [line for line in lines if line not in warned]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cwm_format_is_the_whole_wire_sequence():
    result = run("trace", str(SAMPLE), "--format", "cwm")
    assert result.exit_code == 0
    assert result.stdout.startswith("<|begin_of_text|><|trace_context_start|>def bubble_sort")
    assert result.stdout.endswith("<|end_of_text|>")
    assert result.stdout.count("<|call_sep|>") == 1


def test_json_format_round_trips():
    result = run("trace", str(SAMPLE), "--format", "json", "--call", "bubble_sort([2, 1])")
    trace = Trace.from_json(result.stdout)
    assert trace.status == "ok" and trace.return_value == "[1, 2]"
    assert trace.call == "bubble_sort([2, 1])"


def test_pretty_format_shows_the_source_and_a_summary():
    result = run("trace", str(SAMPLE))
    assert result.exit_code == 0
    assert "swapped = True" in result.output
    assert "ok" in result.output and "returned [1, 2, 3]" in result.output


def test_output_file(tmp_path):
    out = tmp_path / "trace.cwm"
    result = run("trace", str(SAMPLE), "--format", "cwm", "-o", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    assert out.read_text().endswith("<|end_of_text|>")


def test_program_that_raises_exits_1_with_one_line(tmp_path):
    prog = tmp_path / "p.py"
    prog.write_text("def f(d):  # << START_OF_TRACE\n    return d['k']\n")
    result = subprocess.run([sys.executable, "-m", "tracekit.cli", "trace", str(prog),
                             "--call", "f({})", "--format", "cwm"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert result.stdout.endswith("<|end_of_text|>")  # the trace is complete and printed
    assert error_lines(result.stderr) == ["raised: KeyError: 'k' (the trace is complete)"]


@pytest.mark.parametrize("source, args, code, words", [
    ("def f(:\n", [], 4, "syntax_error: SyntaxError"),
    ("def f():\n    return 1\n", [], 4, "no_entry: no function is marked"),
    ("def f():\n    return 1\n", ["--entry", "g"], 4, "no_entry: no function named 'g'"),
    ("def f():  # << START_OF_TRACE\n    while True:\n        pass\n", ["--max-frames", "50"], 3,
     "frame_limit"),
    ("import os\ndef f():  # << START_OF_TRACE\n    os._exit(0)\n", [], 5, "crashed"),
    ("def f():  # << START_OF_TRACE\n    return 1\n", ["--python", "2.5"], 6,
     "sandbox_unavailable: python 2.5 is too old: the tracer needs CPython 3.10 or newer"),
    ("def f():  # << START_OF_TRACE\n    return 1\n", ["--python", "/no/such/python"], 6,
     "sandbox_unavailable: python '/no/such/python' not found"),
])
def test_exit_codes_and_one_line_errors(tmp_path, source, args, code, words):
    prog = tmp_path / "p.py"
    prog.write_text(source)
    result = subprocess.run([sys.executable, "-m", "tracekit.cli", "trace", str(prog),
                             "--format", "json", *args], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == code, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(words), lines
    assert json.loads(result.stdout)["status"] == words.split(":")[0]


def test_python_option_runs_the_chosen_interpreter():
    python_or_skip("3.10")
    result = run("trace", str(SAMPLE), "--format", "json", "--python", "3.10")
    assert Trace.from_json(result.stdout).python.startswith("3.10.")


def test_missing_bubblewrap_is_said_once(tmp_path):
    """With no bwrap on PATH the demo still runs, under rlimits, and says so exactly once;
    run from outside the checkout, it still finds its sample programs."""
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty PATH: no bwrap to find
    result = subprocess.run([sys.executable, "-m", "tracekit.cli", "demo", "--model", "copy",
                             "-o", "demo"], capture_output=True, text=True,
                            cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("network and filesystem isolation are OFF") == 1
    assert "sandbox rlimits)" in result.stdout


def test_demo_predicts_with_the_bundled_model_then_builds_and_evaluates(tmp_path):
    result = run("demo", "-o", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    names = sorted(p.stem for p in (ROOT / "data" / "programs").glob("*.py"))
    assert len(names) >= 12
    for name in names:
        assert name in result.output
    assert f"{len(names)} programs traced, {len(names)} complete" in result.output
    assert "bubble_sort: each frame predicted from the real frames before it" in result.output
    assert re.search(r"\d+/\d+ frames exactly right", result.output)
    assert f"dataset: {len(names)} rows" in result.output
    for mode, directory in (("teacher-forced", "eval"), ("rollout", "eval-rollout")):
        assert f"evaluated the bundled model, {mode}:" in result.output
        assert f"bundled (runtime) · {mode} · {len(names)} traces" in result.output
        report = tmp_path / "demo" / directory / "report.html"
        assert report.exists() and f"report: {report}" in result.output
    assert "state exact match" in result.output
    again = run("demo", "--model", "copy", "-o", str(tmp_path / "demo"))  # replaced
    assert again.exit_code == 0 and "the copy baseline" in again.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "dataset").mkdir()
    assert run("demo", "-o", str(tmp_path / "mine")).exit_code == 2  # not the demo's: kept


def test_help_teaches_the_command():
    result = run("trace", "--help")
    assert "--call" in result.output and "Exit codes" in result.output
    assert "START_OF_TRACE" in result.output


def test_pretty_format_to_a_file(tmp_path):
    out = tmp_path / "trace.txt"
    result = run("trace", str(SAMPLE), "-o", str(out))
    assert result.exit_code == 0
    text = out.read_text()
    assert "items[j], items[j + 1] = items[j + 1], items[j]" in text and "\x1b[" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))  # no padding to a width


def test_what_a_person_reads_names_the_call_and_nothing_prints_before_an_error(tmp_path):
    """A trace cut by a limit still says which call ran; a dataset row's trace is titled by its
    call (rows keep no entry name); a build refused at once prints its one line alone; a
    degenerate frame beside a real one is a few lines, not a screenful."""
    from tracekit.cli.pretty import FRAME_TEXT_CHARS, frame_text
    from tracekit.format.trace import Frame

    endless = tmp_path / "endless.py"
    endless.write_text("def spin():  # << START_OF_TRACE\n    x = 0\n    while True:\n"
                       "        x += 1\n")
    cut = run("trace", str(endless), "--max-frames", "20")
    assert cut.exit_code == 3 and cut.stdout.splitlines()[0].strip() == "spin  <-  spin()"
    assert run("dataset", "build", str(SAMPLE), "-o", str(tmp_path / "ds")).exit_code == 0
    shown = run("dataset", "show", str(tmp_path / "ds"), "--id", "bubble_sort")
    assert shown.stdout.splitlines()[0].strip() == "bubble_sort([3, 1, 2])"
    again = run("dataset", "build", str(SAMPLE), "-o", str(tmp_path / "ds"))
    assert again.exit_code == 8
    assert error_lines(again.stderr) == [f"dataset: {tmp_path / 'ds'} already holds a build: "
                                         "pass --resume to finish it, or choose another "
                                         "output directory"]
    degenerate = Frame("line", None, "x = 1" + " + 1" * 5000, {f"v{i}": "0" for i in range(99)})
    assert len(frame_text(degenerate).plain) == FRAME_TEXT_CHARS


def test_every_status_has_an_exit_code():
    assert set(EXIT_CODES) == set(STATUSES)
    assert EXIT_CODES["ok"] == 0 and all(code != 2 for code in EXIT_CODES.values())


def test_a_model_spec_is_parsed_in_one_place_and_each_default_is_defined_once():
    """Every command reads --model through ModelSpec; --max-frame-tokens' default is
    tracekit.prediction.predict.MAX_FRAME_TOKENS in every command, the eval's options and the
    loader."""
    import inspect

    from tracekit.evals.run import RunOptions
    from tracekit.model.spec import ModelSpec
    from tracekit.prediction.predict import MAX_FRAME_TOKENS, TracePredictor, load_predictor

    served = ModelSpec.parse("openai:http://127.0.0.1:8000/v1", "cwm")
    assert (served.kind, served.target, served.served, served.needs_name) == (
        "openai", "http://127.0.0.1:8000/v1", True, False)
    assert ModelSpec.parse("openai:http://x").needs_name
    reference = ModelSpec.parse("transformers:bundled")
    assert (reference.kind, reference.target, str(reference)) == (
        "transformers", "bundled", "transformers:bundled")
    assert ModelSpec.parse("bundled").directory() == ModelSpec.parse(
        "transformers:bundled").directory() and ModelSpec.parse(served) is served
    defaults = {name: param.default for name, param in (
        ("load_predictor", inspect.signature(load_predictor).parameters["max_frame_tokens"]),
        ("TracePredictor", inspect.signature(TracePredictor).parameters["max_frame_tokens"]))}
    defaults["RunOptions"] = RunOptions("d").max_frame_tokens
    for path in (["predict"], ["debug"], ["eval", "run"]):
        command = main
        for name in path:
            command = command.commands[name]
        option = next(p for p in command.params if p.name == "max_frame_tokens")
        defaults[" ".join(path)] = option.default
    assert set(defaults.values()) == {MAX_FRAME_TOKENS}, defaults
    roots = [ROOT / "tracekit", ROOT / "model", ROOT / "evals"]
    parsing = [f"{path.relative_to(ROOT)}" for root in roots for path in root.rglob("*.py")
               if re.search(r'(startswith|removeprefix)\(\(?f?"(openai|transformers|\{kind\})',
                            path.read_text())]
    assert parsing == ["model/spec.py"]


def test_the_train_commands_defaults_are_the_training_configs():
    """`tracekit train`'s defaults are read from TrainConfig and TrainOptions (one place each):
    a default changed there changes the command, and no option says otherwise."""
    from dataclasses import MISSING, fields

    import click

    from tracekit.training.config import SIZES, TrainConfig, TrainOptions

    command = main.commands["train"]
    options = {p.name: p for p in command.params}
    context = click.Context(command)
    shared = 0
    for settings in (TrainConfig(), TrainOptions(datasets=())):
        for field in fields(settings):
            if field.name in options and field.default not in (MISSING, None):
                default = options[field.name].get_default(context)
                assert default == getattr(settings, field.name), field.name
                shared += 1
    assert shared >= 12
    assert list(options["size"].type.choices) == list(SIZES)
