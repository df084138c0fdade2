"""`tracekit debug`: the oracle's moves checked against a real debugger's, back and reset,
`set` with the bundled model, a person's terminal session, scripts, and random command lines."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracekit.cli.debug import DebugSession, split_commands
from tracekit.execution.sandbox import run_trace
from tracekit.format.tokenizer import decode
from tracekit.format.trace import resolve_dots
from tracekit.prediction.debugger import (
    DebuggerError,
    ModelStepper,
    ReplayStepper,
    SourceMap,
    Track,
)
from tracekit.prediction.predict import GREEDY, load_predictor

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = '''\
def parse(token):
    if not token.isdigit():
        raise ValueError(token)
    return int(token)


def total(tokens):  # << START_OF_TRACE
    result = 0
    bad = []
    for token in tokens:
        try:
            result += parse(token)
        except ValueError as err:
            bad.append(str(err))
    squares = [n * n for n in range(3)]
    return result, bad, squares

# tracekit-call: total(["4", "x", "5"])
'''
# Calls, a loop, an exception raised in a callee and caught, a comprehension (its own scope
# before 3.12), recursion and a generator: the moves must land right over all of them.
PROGRAMS = {
    "parse": (PROGRAM, 'total(["4", "x", "5"])'),
    "recursion": ("def fact(n):  # << START_OF_TRACE\n    if n <= 1:\n        return 1\n"
                  "    return n * fact(n - 1)\n", "fact(4)"),
    "generator": ("def evens(xs):\n    for x in xs:\n        if x % 2 == 0:\n"
                  "            yield x\n\ndef f(xs):  # << START_OF_TRACE\n    out = []\n"
                  "    for e in evens(xs):\n"
                  "        out.append(e * 10)\n    return out\n", "f([1, 2, 3, 4])"),
    "uncaught": ("def inner(x):\n    return 10 // x\n\ndef outer(x):  # << START_OF_TRACE\n"
                 "    y = x + 1\n    return inner(y - 1)\n", "outer(0)"),
}


def real_trace(name: str):
    source, call = PROGRAMS[name]
    trace = run_trace(source, call)
    assert trace.complete, trace.error
    return trace


# A real debugger's answer over the real trace (depths known): the frame index each move lands
# on, and whether the trace is over there. Written from the definitions, not from the tracks.

def _depth(frame) -> int:
    """The depth of the function a frame leaves the user in (a return frame: its caller)."""
    return frame.depth - (frame.event == "return")


def reference(real, i: int, command: str, lines=frozenset()) -> tuple[int, bool]:
    last = len(real) - 1
    if command == "step":
        return (i + 1, False) if i < last else (i, True)
    if command == "next":
        depth = _depth(real[i])
        j = next((j for j in range(i + 1, len(real)) if real[j].depth <= depth), None)
        return (j, False) if j is not None else (last, True)
    if command == "out":
        depth = real[i].depth if real[i].event == "call" else _depth(real[i])
        r = next((j for j in range(i + 1, len(real))
                  if real[j].event == "return" and real[j].depth == depth), last)
        return (r + 1, False) if r < last else (r, True)
    if command == "until":
        j = next((j for j in range(i + 1, len(real))
                  if real[j].event in ("call", "line") and real[j].lineno in lines), None)
        return (j, False) if j is not None else (last, True)
    raise ValueError(command)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_the_oracle_lands_where_a_real_debugger_does_and_back_restores(name):
    trace = real_trace(name)
    real = trace.frames
    resolved = resolve_dots(real)
    code_lines = sorted({f.lineno for f in real if f.event == "line"})
    rng = random.Random(name)
    for _ in range(40):  # random walks, each from the entry
        track = Track(ReplayStepper(real), real[:1], SourceMap(trace.context))
        index, ended = 0, False
        undo = []
        for _ in range(12):
            command = rng.choice(["step", "step", "next", "out", "until", "back", "reset"])
            before = (list(track.frames), track.ended, index, ended)
            if command == "back":
                if track.back():
                    frames, was_ended, index, ended = undo.pop()
                    assert track.frames == frames and all(
                        a is b for a, b in zip(track.frames, frames))
                    assert track.ended == was_ended
                continue
            track.save()
            undo.append(before)
            if command == "reset":
                track.reset()
                index, ended = 0, False
                assert track.frames == real[:1]
                continue
            if ended:
                continue  # the debugger refuses to move past the end (checked below)
            lines = {rng.choice(code_lines)}
            move = {"step": track.step, "next": track.next, "out": track.out,
                    "until": lambda: track.run_to(lines)}[command]
            stop = move()
            index, ended = reference(real, index, command, lines)
            assert track.current is real[index], (command, index)
            assert track.ended == ended and (stop.reason == "ended") == ended
            frame = real[index]
            if frame.locals is not None:  # print: the real values, '..' resolved
                assert track.locals() == resolved[index]
            assert track.lineno() == frame.lineno


def session_for(name: str, real_beside: bool = True) -> DebugSession:
    trace = real_trace(name)
    program = SourceMap(trace.context)
    truth = Track(ReplayStepper(trace.frames), trace.frames[:1], program) if real_beside \
        else None
    return DebugSession(Track(ReplayStepper(trace.frames), trace.frames[:1], program), truth,
                        color=False)


def test_print_where_and_list_show_the_real_state(capsys):
    session = session_for("parse")
    for line in ["until 3", "p", "p token", "w", "l", "p nosuch", "set token = 1"]:
        session.run(line)
    out = capsys.readouterr().out.splitlines()
    assert "->   3          raise ValueError(token)" in out
    assert "token = 'x'" in out
    assert out.count("token = 'x'") == 2  # p and p token
    assert "  #0 total  line 12  result += parse(token)" in out
    assert ">   #1 parse  line 3  raise ValueError(token)" not in out
    assert "> #1 parse  line 3  raise ValueError(token)" in out
    assert "   3  ->         raise ValueError(token)" in out
    assert "*** no local named 'nosuch' here (locals: token)" in out
    assert "*** set needs a model: the oracle can only replay the real trace" in out


def test_list_break_and_clear_count_the_programs_lines_and_the_oracle_ends_as_the_real_run(
        capsys):
    """A 4-line file (its text ends with a newline): `l` lists 4 lines, `br 99` says 4, `cl`
    says which breakpoints it cleared, and the end of a replay is the real trace's."""
    session = session_for("recursion", real_beside=False)
    for line in ["l", "br 99", "br 2", "br 4", "cl", "cl", "c"]:
        session.run(line)
    out = capsys.readouterr().out.splitlines()
    listed = [x for x in out if re.match(r" +\d+ ", x)]
    assert [int(x.split()[0]) for x in listed] == [1, 2, 3, 4]
    assert "*** line 99 holds no code (the program has 4 lines)" in out
    assert "breakpoints at line 2, 4 cleared" in out and "no breakpoints to clear" in out
    assert "the real trace ended: back, reset or quit" in out
    assert not any("the model" in x for x in out)


def test_commands_split_at_semicolons_outside_quotes():
    assert split_commands("s; n;p x; set s = 'a;b'\nc;;") == ["s", "n", "p x", "set s = 'a;b'",
                                                              "c"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.sampled_from(["s", "n", "o", "b", "p", "reset", "l", "w", "c", "q", "h", "help", "?",
                     "exit", "until", "break", "br", "clear", "cl", "set", "print", "step"]),
    st.tuples(st.sampled_from(["until", "br", "clear", "p", "set", "b", "s"]),
              st.one_of(st.integers(-5, 40).map(str), st.text(max_size=12),
                        st.sampled_from(["result = 3", "bad = [1", "x == 2", "= 4", "result =",
                                         "token = 'é;'", "result = 10**10", "9"])))
    .map(" ".join),
    st.text(max_size=20)), max_size=25))
def test_random_command_lines_never_crash_the_debugger(lines):
    session = session_for("parse")
    for line in lines:
        assert session.run(line) in (True, False)
    assert session.predicted.frames  # the entry frame always stays


def test_a_track_refuses_to_edit_what_has_no_locals():
    trace = real_trace("recursion")
    track = Track(ReplayStepper(trace.frames), trace.frames[:1], SourceMap(trace.context))
    with pytest.raises(DebuggerError, match="no local named 'm'"):
        track.set_value("m", "3")
    track.save()
    assert track.out().reason == "ended"  # out of the entry: its return ends the trace
    with pytest.raises(DebuggerError, match="a return frame holds no locals"):
        track.set_value("n", "3")
    assert track.back() and track.frames == trace.frames[:1] and not track.ended
    assert not track.back()


def test_set_with_the_oracle_edits_the_frame_it_cannot_go_on_from_and_back_undoes_it():
    trace = real_trace("recursion")
    track = Track(ReplayStepper(trace.frames), trace.frames[:1], SourceMap(trace.context))
    track.save()
    track.set_value("n", "7")
    assert track.current.locals == {"n": "7"} and track.is_edited
    assert trace.frames[0].locals == {"n": "4"}  # the real trace is not touched
    stop = track.step()  # the oracle knows no run from n = 7
    assert stop.reason == "refused" and "edited frame" in stop.message
    assert track.back() and track.frames == trace.frames[:1] and not track.is_edited
    assert track.step().reason == "landed" and track.frames == trace.frames[:2]


def test_set_with_a_model_is_the_state_the_next_step_starts_from(tmp_path):
    """`set k = 5` at the call frame: the model's next step is predicted from the edited frame
    (the same prediction as from a fresh prompt holding it), the real run beside it keeps
    k = 2, and `back` twice gives the unedited start that the real run is compared with again.
    A tiny random-weight model: what it predicts does not matter, what it is given does."""
    from tests.test_evals import tiny_checkpoint

    trace = run_trace(LOOP, "f(2)")
    program = SourceMap(trace.context)
    predictor = load_predictor(str(tiny_checkpoint(tmp_path / "tiny")), max_frame_tokens=24)
    stepper = ModelStepper(predictor, trace.context, GREEDY)
    given = []
    generate = stepper.generate

    def generate_and_record(frames, force_event, budget):
        prediction = generate(frames, force_event, budget)
        given.append((list(frames), force_event, budget, prediction))
        return prediction

    stepper.generate = generate_and_record
    predicted = Track(stepper, trace.frames[:1], program)
    real = Track(ReplayStepper(trace.frames), trace.frames[:1], program)
    session = DebugSession(predicted, real, color=False)
    session.run("set k = 5")
    assert predicted.current.locals == {"k": "5"} and predicted.is_edited
    assert real.frames == trace.frames[:1] and real.current.locals == {"k": "2"}
    session.run("s")
    (frames, force, budget, prediction), = given
    assert [f.locals for f in frames] == [{"k": "5"}] and force == "line"
    assert '{"k": "5"}' in decode(predictor.tokenizer, stepper.session.prompt())
    fresh = predictor.next_frame(trace.context, frames, force, GREEDY, budget)
    assert prediction.text == fresh.text
    assert real.frames == trace.frames[:1]  # not moved: an edited run is not compared
    moved = len(predicted.frames) == 2  # (a malformed frame is shown, not added)
    assert len(predicted.history) == 1 + moved
    for _ in range(1 + moved):
        session.run("back")
    assert predicted.frames == trace.frames[:1] and real.frames == trace.frames[:1]
    assert not predicted.history and not real.history  # exactly the two commands undone


# ---- the bundled model -------------------------------------------------------------------

LOOP = "def f(k):  # << START_OF_TRACE\n    i1 = 0\n    while i1 < k:\n        i1 += 1\n" \
       "    return i1\n"


@pytest.fixture(scope="module")
def bundled():
    return load_predictor("bundled")


def test_back_over_a_set_compares_with_the_real_run_again(bundled):
    """After `set` and `back` the track holds no edited frame, however many frames the model
    writes next (a freed edited frame's id must not make a new frame look edited)."""
    trace = run_trace(LOOP, "f(2)")
    program = SourceMap(trace.context)
    track = Track(ModelStepper(bundled, trace.context, GREEDY), trace.frames[:1], program)
    track.step()
    track.save()
    track.set_value("k", "5")
    assert track.is_edited
    track.back()
    for _ in range(6):
        track.step()
        assert not track.is_edited


SUM = "def f(items):  # << START_OF_TRACE\n    total = 0\n    for x in items:\n" \
      "        total += x\n    return total\n"


def test_set_of_a_loop_bound_changes_how_many_rounds_the_model_predicts(bundled):
    """`set` is counterfactual execution: with the list a loop walks edited at the call frame,
    the bundled model's trace runs another number of rounds. It does not follow loops in
    general (`benchmarks/loops.py`: 1 of 23 `set` probes right): traced as f([5, 6]) it runs 4
    rounds, not 2; after `set items = [1]` it runs one round and returns 1, as the real run of
    f([1]) does (greedy; the one edit it gets right that changes its count, in a search over
    bounds 0-4 of five one-loop functions, `benchmarks/loops.py`'s four and README's count.py,
    2026-12-08)."""
    trace = run_trace(SUM, "f([5, 6])")

    def rounds(frames) -> int:
        return sum(f.source.strip() == "total += x" for f in frames)

    def predicted(edit: str | None) -> tuple[int, str]:
        track = Track(ModelStepper(bundled, trace.context, GREEDY), trace.frames[:1],
                      SourceMap(trace.context))
        if edit is not None:
            track.set_value("items", edit)
            assert track.frames[0].locals == {"items": edit} and track.is_edited
        track.run_to(set())
        return rounds(track.frames), track.frames[-1].arg

    real = run_trace(SUM, "f([1])")
    assert rounds(trace.frames) == 2 and predicted(None)[0] == 4
    assert predicted("[1]") == (1, "1") == (rounds(real.frames), real.frames[-1].arg)


def test_ctrl_c_during_a_prediction_stops_it_and_keeps_the_session(bundled, capsys):
    """Ctrl-C arrives as KeyboardInterrupt in the middle of the model's forward pass (here at
    its fifth forward, exactly where a person's Ctrl-C would land): the command stops, the
    frames so far stay, and the next command predicts as if nothing had happened."""
    trace = run_trace(LOOP, "f(2)")
    program = SourceMap(trace.context)
    track = Track(ModelStepper(bundled, trace.context, GREEDY), trace.frames[:1], program)
    session = DebugSession(track, None, color=False)
    model = bundled.backend.model
    forwards = {"n": 0}

    def interrupt(module, args):
        forwards["n"] += 1
        if forwards["n"] == 5:
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(interrupt)
    try:
        session.run("c")
    finally:
        handle.remove()
    assert "*** interrupted: the frames predicted so far are kept" in capsys.readouterr().out
    kept = len(track.frames)
    session.run("s")
    session.run("s")
    clean = Track(ModelStepper(bundled, trace.context, GREEDY), trace.frames[:1], program)
    for _ in range(kept + 1):
        clean.step()
    assert [f.source for f in track.frames] == [f.source for f in clean.frames]
    assert track.frames[-1].locals == clean.frames[-1].locals


# ---- a person at a terminal, and the same as a script ---------------------------------------

SESSION = ["s", "s", "n", "p", "p result", "w", "l", "br 14", "c", "p err", "b", "b", "until 3",
           "w", "o", "frobnicate", "p nosuch", "s", "", "n", "reset", "set result = 3", "c",
           "clear", "br", "h", "q"]


def _plain(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]", "", text)
    return text.replace("\r\n", "\n").replace("\r", "")


def _as_a_shell_starts_it() -> None:
    """In the child before exec: SIGINT at its default and no signal blocked, as a person's
    shell starts a program. A SIGINT the test process ignores would be ignored by the child
    too (exec keeps ignored signals): then Ctrl-C did nothing and the test waited 180 s."""
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_state(pid: int) -> str:
    """The child's ignored, blocked and caught signal masks, for a failure message."""
    status = Path(f"/proc/{pid}/status")
    lines = status.read_text().splitlines() if status.exists() else []
    return "no prompt after Ctrl-C: " + "; ".join(
        line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt", "State")))


def test_a_person_at_a_terminal_and_the_same_commands_as_a_script(tmp_path):
    """A person types 27 commands (with an empty line, Ctrl-C at the prompt and the up arrow);
    the terminal shows the real debugger's answers in colour, and --commands or a pipe with the
    same commands print the same answers."""
    pexpect = pytest.importorskip("pexpect")
    program = tmp_path / "parse.py"
    program.write_text(PROGRAM)
    command = [sys.executable, "-m", "tracekit.cli", "debug", str(program), "--model", "oracle",
               "--real"]
    child = pexpect.spawn(command[0], command[1:], cwd=ROOT, encoding="utf-8", timeout=180,
                          dimensions=(50, 200), env={"TERM": "xterm", "PATH": "/usr/bin:/bin"},
                          preexec_fn=_as_a_shell_starts_it)
    shown: list[str] = []
    child.logfile_read = _Collect(shown)
    child.expect_exact("(tracekit) ")
    child.sendline("s")
    child.expect_exact("(tracekit) ")
    child.sendintr()  # Ctrl-C at the prompt: a new prompt, the session goes on
    assert child.expect_exact(["(tracekit) ", pexpect.TIMEOUT], timeout=30) == 0, \
        _signal_state(child.pid)
    child.send("\x1b[A\r")  # the up arrow: readline's history gives "s" again
    child.expect_exact("(tracekit) ")
    typed = ["s", "s"]
    for line in SESSION:
        typed.append(line or typed[-1])  # an empty line repeats the last command, as in pdb
        child.sendline(line)
        if line != "q":
            child.expect_exact("(tracekit) ")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    raw = "".join(shown)
    assert "\x1b[32m" in raw and "\x1b[31m" in raw  # colours on a terminal: green, red
    terminal = _plain(raw)
    for expected in ["->   9      bad = []", "->  10      for token in tokens:",
                     "breakpoint at line 14: bad.append(str(err))", "err = ValueError('x')",
                     "*** unknown command 'frobnicate': h lists the commands",
                     "*** no local named 'nosuch' here (locals: tokens, result, bad, token)",
                     "*** set needs a model: the oracle can only replay the real trace",
                     "   real: same", "> #1 parse  line 3  raise ValueError(token)",
                     "  #0 total  line 12  result += parse(token)"]:
        assert expected in terminal, expected
    scripted = subprocess.run([*command, "--commands", "; ".join(typed)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert scripted.returncode == 0, scripted.stderr
    piped = subprocess.run(command, cwd=ROOT, input="\n".join(typed) + "\n",
                           capture_output=True, text=True, timeout=60)
    assert piped.stdout == scripted.stdout
    answers = _answers(terminal)
    del answers[1]  # the prompt Ctrl-C cleared
    assert [a.strip() for a in answers] == [a.strip() for a in _answers(scripted.stdout)]
    assert len(typed) >= 20


class _Collect:
    def __init__(self, into: list):
        self.into = into

    def write(self, text: str) -> None:
        self.into.append(text)

    def flush(self) -> None:
        pass


def _answers(transcript: str) -> list[str]:
    """The output of each command (the text between prompts), without the echoed command."""
    parts = transcript.split("(tracekit) ")[1:]
    return [part.split("\n", 1)[1] if "\n" in part else "" for part in parts]
