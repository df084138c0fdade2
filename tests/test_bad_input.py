"""Every command given bad input, as a new user gives it: each case ends in its documented exit
code and one line on stderr naming the cause (no traceback), and leaves what was already there
as it was. The table is the list of what was found trying (issue: every failure a user can
cause) and more."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracekit.cli import main
from tracekit.model.checkpoint import BUNDLED

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = "def f(n):  # << START_OF_TRACE\n    total = 0\n    for i in range(n):\n" \
          "        total += i\n    return total\n# tracekit-call: f(3)\n"
PROGRESS = ("tracing ", "training ", "warning: network and filesystem isolation are OFF")


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """Files the cases point at: programs good and bad, a dataset, checkpoints good and bad."""
    base = tmp_path_factory.mktemp("bad-input")
    (base / "prog.py").write_text(PROGRAM)
    (base / "latin1.py").write_bytes(("# -*- coding: latin-1 -*-\n" + PROGRAM.replace(
        "total = 0", "total = 0  # caf\xe9")).encode("latin-1"))
    (base / "bom.py").write_bytes(b"\xef\xbb\xbf" + PROGRAM.encode())
    (base / "binary.py").write_bytes(b"\x00\xff\xfe\x81 not python \x00")
    (base / "unmarked.py").write_text("def f():\n    return 1\n")
    (base / "empty.py").write_text("")
    (base / "methods.py").write_text("class Stack:\n    def push(self, x):\n        return x\n\n"
                                     "def main():  # << START_OF_TRACE\n    return 1\n")
    (base / "a-file").write_text("keep me\n")
    (base / "empty-dir").mkdir()
    (base / "empty.jsonl").write_text("")
    (base / "call42.jsonl").write_text(json.dumps({"code": "def g():\n    return 1\n",
                                                   "call": 42}) + "\n")
    (base / "notjson.jsonl").write_text("{oops\n")
    (base / "args.jsonl").write_text(json.dumps({"code": "def add(a, b):\n    return a + b\n",
                                                 "entry": "add", "args": [1, 2]}) + "\n")
    assert invoke("dataset", "build", str(base / "prog.py"), "-o", str(base / "ds")
                  ).exit_code == 0
    (base / "half-ds").mkdir()
    (base / "half-ds" / "manifest.json").write_text("{}")
    for name, change in (("bad-tokenizer", "tokenizer"), ("small-vocab", "vocab"),
                         ("short-context", "context"), ("bad-config", "config")):
        shutil.copytree(BUNDLED, base / name)
        config = json.loads((base / name / "config.json").read_text())
        if change == "tokenizer":
            (base / name / "tokenizer.json").write_text("{not json")
        elif change == "vocab":  # a tokenizer bigger than the model's embedding table
            tokens = json.loads((base / name / "tokenizer.json").read_text())
            tokens["model"]["vocab"].update({f"extra{i}": config["vocab_size"] + i
                                             for i in range(50)})
            (base / name / "tokenizer.json").write_text(json.dumps(tokens))
        elif change == "config":
            config["rope_parameters"]["rope_theta"] = "1e6"  # a string where a number goes
            (base / name / "config.json").write_text(json.dumps(config))
        else:
            config["max_position_embeddings"] = 32
            (base / name / "config.json").write_text(json.dumps(config))
    assert invoke("eval", str(base / "ds"), "--model", "copy", "--mode", "teacher-forced",
                  "-o", str(base / "ev")).exit_code == 0
    return base


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# (name, command line with {P} for the place, exit code, words of the one line)
CASES = [
    # trace
    ("trace: nonexistent file", "trace {P}/nosuch.py", 2, "does not exist"),
    ("trace: a directory", "trace {P}/empty-dir", 2, "is a directory"),
    ("trace: binary file", "trace {P}/binary.py", 8, "cannot read it as Python source"),
    ("trace: unmarked file", "trace {P}/unmarked.py", 4, "no_entry: no function is marked"),
    ("trace: empty file", "trace {P}/empty.py", 4, "no_entry: no function is marked"),
    ("trace: unmarked, cwm format", "trace {P}/unmarked.py --format cwm", 4, "no_entry"),
    ("trace: no such entry", "trace {P}/prog.py --entry nosuch", 4, "no function named"),
    ("trace: method entry without call", "trace {P}/methods.py --entry Stack.push", 4,
     "is not a module-level function"),
    ("trace: bad --call", "trace {P}/prog.py --call f(", 4, "--call: SyntaxError"),
    ("trace: unknown python", "trace {P}/prog.py --python 3.99", 6, "not found"),
    ("trace: a python too old", "trace {P}/prog.py --python 2.7", 6,
     "python 2.7 is too old: the tracer needs CPython 3.10 or newer"),
    ("trace: bad sandbox", "trace {P}/prog.py --sandbox nope", 2, "'nope' is not one of"),
    ("trace: zero timeout", "trace {P}/prog.py --timeout 0", 2, "--timeout"),
    ("trace: -o into a file", "trace {P}/prog.py -o {P}/a-file/x.txt", 8, "cannot write"),
    ("trace: -o onto the program", "trace {P}/prog.py -o {P}/prog.py", 8,
     "is the program itself"),
    ("trace: -o under /proc", "trace {P}/prog.py -o /proc/nosuch/x.txt", 8, "cannot write"),
    # prompt
    ("prompt: --chat with --frames", "prompt {P}/prog.py --chat --frames 3", 2,
     "--chat does not go with --frames"),
    ("prompt: --ids with --count", "prompt {P}/prog.py --ids --count", 2,
     "--ids does not go with --count"),
    ("prompt: --no-thinking alone", "prompt {P}/prog.py --no-thinking", 2, "it needs --chat"),
    ("prompt: binary file", "prompt {P}/binary.py", 8, "cannot read it as Python source"),
    ("prompt: --frames past the end", "prompt {P}/prog.py --frames 100", 2,
     "--frames 100: the trace has 11 frames; give at most 11"),
    ("prompt: corrupt tokenizer", "prompt {P}/prog.py --count --tokenizer {P}/bad-tokenizer",
     7, "tokenizer.json: cannot load it"),
    ("prompt: --tokenizer names no checkpoint", "prompt {P}/prog.py --count --tokenizer "
     "{P}/empty-dir", 7, "has no tokenizer.json and is not a checkpoint"),
    # dataset
    ("dataset: empty directory", "dataset build {P}/empty-dir -o {P}/out1", 8,
     "nothing to trace"),
    ("dataset: empty jsonl", "dataset build {P}/empty.jsonl -o {P}/out2", 8, "nothing to trace"),
    ("dataset: synthetic:0", "dataset build synthetic:0 -o {P}/out3", 8, "COUNT >= 1"),
    ("dataset: synthetic:-5", "dataset build synthetic:-5 -o {P}/out4", 8, "COUNT >= 1"),
    ("dataset: synthetic:abc is not markup", "dataset build synthetic:abc -o {P}/out5", 8,
     "synthetic:abc: write synthetic:COUNT"),
    ("dataset: markup and emoji codes in a name are shown as written",
     "dataset build {P}/[red]no:smile:such.py -o {P}/out10", 8, "[red]no:smile:such.py"),
    ("dataset: a call that is not a string", "dataset build {P}/call42.jsonl -o {P}/out6", 8,
     "call42.jsonl:1: 'call' must be a string, got 42"),
    ("dataset: a row that is not JSON", "dataset build {P}/notjson.jsonl -o {P}/out7", 8,
     "notjson.jsonl:1: not JSON"),
    ("dataset: bad split", "dataset build {P}/prog.py --split 1,2 -o {P}/out8", 2, "--split"),
    ("dataset: no such source", "dataset build {P}/nosuch.py -o {P}/out9", 8,
     "no such file or directory"),
    ("dataset: -o under /proc", "dataset build {P}/prog.py -o /proc/nosuch", 8,
     "cannot use /proc/nosuch"),
    ("dataset: -o is a file", "dataset build {P}/prog.py -o {P}/a-file", 8,
     "a-file is a file: choose a directory"),
    ("dataset: show a missing id", "dataset show {P}/ds --id nosuch", 8, "no row with id"),
    ("dataset: stats of an unfinished build", "dataset stats {P}/half-ds", 8,
     "stats.json is missing"),
    # predict
    ("predict: no such checkpoint", "predict {P}/prog.py --model {P}/nosuch", 7,
     "not a checkpoint directory"),
    ("predict: openai without a name", "predict {P}/prog.py --model openai:http://127.0.0.1:9",
     2, "needs --openai-model"),
    ("predict: --frames past the end", "predict {P}/prog.py --mode next --frames 999", 2,
     "--frames 999: the trace has"),
    ("predict: corrupt tokenizer", "predict {P}/prog.py --model {P}/bad-tokenizer", 7,
     "tokenizer.json: cannot load it"),
    ("predict: tokenizer bigger than the model", "predict {P}/prog.py --model {P}/small-vocab",
     7, "they are not from one checkpoint"),
    ("predict: a call frame longer than the context", "predict {P}/prog.py --model "
     "{P}/short-context", 10, "too long: the call frame alone does not fit the model's "
     "context of 32 tokens"),
    ("predict: next frame after frames that fill the context", "predict {P}/prog.py --mode "
     "next --frames 4 --model {P}/short-context", 10, "tokens and the model reads 32"),
    ("eval: every trace longer than the context", "eval {P}/ds --model {P}/short-context -o "
     "{P}/ev5", 10, "is over the context (32 tokens): evaluate a model with a longer context"),
    ("predict: a config field of the wrong type", "predict {P}/prog.py --model {P}/bad-config",
     7, "config.json: rope_parameters.rope_theta: must be a number, got '1e6'"),
    ("eval: a config field of the wrong type", "eval {P}/ds --model {P}/bad-config -o {P}/ev6",
     7, "rope_parameters.rope_theta: must be a number"),
    ("train --init: a config field of the wrong type", "train {P}/ds -o {P}/tr2 --init "
     "{P}/bad-config", 8, "rope_parameters.rope_theta: must be a number"),
    ("predict: binary file", "predict {P}/binary.py", 8, "cannot read it as Python source"),
    # eval
    ("eval: not a dataset", "eval {P}/empty-dir --model copy -o {P}/ev1", 8,
     "not a tracekit dataset"),
    ("eval: no such checkpoint", "eval {P}/ds --model {P}/nosuch -o {P}/ev2", 7,
     "not a checkpoint directory"),
    ("eval: -o is a file", "eval {P}/ds --model copy -o {P}/a-file", 8, "is a file"),
    ("eval: both --model and --predictions", "eval {P}/ds --model copy --predictions "
     "{P}/a-file -o {P}/ev3", 2, "not both"),
    ("eval: resume with other options", "eval {P}/ds --model copy --mode teacher-forced "
     "--limit 1 --resume -o {P}/ev", 8, "limit None there, 1 now"),
    ("eval: over a finished eval", "eval {P}/ds --model copy --mode teacher-forced -o {P}/ev",
     8, "already holds an eval"),
    ("eval: openai without a name", "eval {P}/ds --model openai:http://127.0.0.1:9 -o "
     "{P}/ev4", 2, "needs --openai-model"),
    # chat
    ("chat: a conversation longer than the context", "chat -m hello --model "
     "{P}/short-context", 10, "too long: the conversation no longer fits the model's context "
     "of 32 tokens"),
    # serve, train, the group
    ("serve: no such checkpoint", "serve {P}/nosuch", 7, "not a checkpoint directory"),
    ("serve: a port out of range", "serve --port 70000", 2, "70000 is not in the range"),
    ("serve: a remote spec", "serve openai:http://x", 7, "serve runs a checkpoint directory"),
    ("train: not a dataset", "train {P}/empty-dir -o {P}/tr1", 8, "not a tracekit dataset"),
    ("train: -o is a file", "train {P}/ds -o {P}/a-file", 8, "a-file"),
    ("unknown command", "tracee {P}/prog.py", 2, "No such command 'tracee'"),
]


@pytest.mark.parametrize("line, code, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_line_and_its_exit_code(place, line, code, words):
    before = {p: p.read_bytes() for p in place.rglob("*") if p.is_file()}
    result = invoke(*[part.replace("{P}", str(place)) for part in line.split()])
    lines = [x for x in result.stderr.strip().splitlines()
             if x.strip() and not x.startswith(PROGRESS)]
    assert result.exit_code == code, result.output
    if code == 2:  # click's usage error: the usage, a hint, and the one line that says why
        lines = [x for x in lines if x.startswith("Error:")]
    assert len(lines) == 1, lines
    assert words.replace("{P}", str(place)) in lines[0], lines[0]
    assert "Traceback" not in result.output
    for path, data in before.items():  # nothing that was there is lost or changed
        assert path.read_bytes() == data, path


def test_sources_python_runs_are_read_as_python_reads_them(place):
    """A latin-1 file with its coding line and a UTF-8 file with a BOM trace as CPython runs
    them; a JSONL row's args list is the call's arguments."""
    for name in ("latin1.py", "bom.py"):
        result = invoke("trace", str(place / name), "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["return_value"] == "3"
        built = invoke("dataset", "build", str(place / name), "-o", str(place / f"ds-{name}"))
        assert built.exit_code == 0, built.output  # the build reads it as trace does
        assert "1 rows from 1 programs" in built.stdout and "(ok 1)" in built.stdout
    built = invoke("dataset", "build", str(place / "args.jsonl"), "-o", str(place / "args-ds"))
    assert built.exit_code == 0, built.output
    import pyarrow.parquet as pq

    rows = pq.read_table(sorted((place / "args-ds").glob("*.parquet"))).to_pylist()
    assert [(r["call"], r["status"]) for r in rows] == [("add(1, 2)", "ok")]


def test_skip_bad_rows_reports_each_with_file_and_line(place):
    """A row with a bad field, a line that is not JSON, and a .py file in a directory that
    is not Python source: each reported, skipped and counted; without --skip-bad-rows the
    first stops the build in one line."""
    (place / "mixed.jsonl").write_text((place / "args.jsonl").read_text()
                                       + (place / "call42.jsonl").read_text() + "{oops\n")
    programs = place / "some-bad"
    programs.mkdir()
    shutil.copy(place / "prog.py", programs / "good.py")
    shutil.copy(place / "binary.py", programs / "bad.py")
    result = invoke("dataset", "build", str(place / "mixed.jsonl"), str(programs),
                    "--skip-bad-rows", "-o", str(place / "mixed-ds"))
    assert result.exit_code == 0, result.output
    for said in (str(place / "mixed.jsonl") + ":2: 'call' must be a string",
                 str(place / "mixed.jsonl") + ":3: not JSON",
                 str(programs / "bad.py") + ": cannot read it as Python source"):
        assert "skipped: " + said in result.stderr, said
    assert "2 rows from 2 programs" in result.stdout
    assert "skipped: 3 bad rows or files (--skip-bad-rows)" in result.stdout
    stopped = invoke("dataset", "build", str(programs), "-o", str(place / "stopped-ds"))
    assert stopped.exit_code == 8
    assert "bad.py: cannot read it as Python source" in stopped.stderr


def test_an_unexpected_error_is_one_line_exit_9_and_debug_shows_the_traceback(place,
                                                                              monkeypatch):
    import tracekit.cli.tracing as tracing

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(tracing, "run_program", broken)
    result = invoke("trace", str(place / "prog.py"))
    assert result.exit_code == 9
    assert result.stderr.strip() == ("error: RuntimeError: boom (rerun with --debug for the "
                                     "traceback, and report it)")
    with pytest.raises(RuntimeError, match="boom"):
        invoke("--debug", "trace", str(place / "prog.py"))
    monkeypatch.setenv("TRACEKIT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        invoke("trace", str(place / "prog.py"))


@pytest.mark.parametrize("command", ["trace {P}/long.py --format cwm --max-frames 0",
                                     "trace {P}/long.py --max-frames 0", "predict {P}/prog.py",
                                     "eval compare {P}/ev {P}/ev"])
def test_a_closed_pipe_ends_quietly(place, command):
    """`tracekit ... | head -1`: the reader goes away; exit 0, nothing on stderr (rich's
    console, left to itself, exits 1 there)."""
    (place / "long.py").write_text("def f():  # << START_OF_TRACE\n    for i in range(5000):"
                                   "\n        x = i\n    return x\n")
    process = subprocess.Popen([sys.executable, "-m", "tracekit.cli",
                                *command.replace("{P}", str(place)).split()],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    process.stdout.read(1)
    process.stdout.close()
    assert process.wait(timeout=120) == 0
    assert [x for x in process.stderr.read().decode().splitlines()
            if not x.startswith(PROGRESS)] == []


def test_each_commands_help_lists_its_own_exit_codes_and_the_readme_says_the_same():
    from tracekit.cli import exit_code_table

    table = exit_code_table()
    rows = table.splitlines()[2:]
    assert len(rows) >= 11 and all(", 9" in r and "| 0, " in r for r in rows)
    assert "| `tracekit serve` | 0, 2, 7, 8, 9 |" in rows  # its own codes, not the tracer's
    assert table in (ROOT / "README.md").read_text()
