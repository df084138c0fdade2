"""`tracekit debug`: step through a program with a model predicting each frame (Meta's cwmdbg
commands and more), the real execution optionally beside it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import click

from tracekit.cli.common import (
    MODEL_HELP,
    Failure,
    device_option,
    exit_help,
    model_options,
    sampling_options,
    traced_for_a_model,
    tracing_options,
    typed_lines,
)
from tracekit.cli.exits import EXIT_MODEL
from tracekit.format.trace import Frame
from tracekit.prediction.debugger import (
    MOVE_LIMIT,
    DebuggerError,
    ReplayStepper,
    SourceMap,
    Stop,
    Track,
    differences,
)
from tracekit.prediction.predict import MAX_FRAME_TOKENS

PROMPT = "(tracekit) "
HELP = f"""\
s, step          the next frame (into a call)
n, next          the next frame in this function (a call is answered by its return)
o, out           to the frame after this function returns
b, back          undo the last command that moved (or set)
p, print [VAR]   one local, or all of them ('..' resolved)
reset            back to the entry's call frame
l, list          the source around the current line
w, where         the predicted call stack
br, break [LINE] stop at LINE on continue (no LINE: list the breakpoints)
cl, clear [LINE] remove a breakpoint (no LINE: all)
c, continue      predict frames until a breakpoint (at most {MOVE_LIMIT})
until LINE       predict frames until LINE (at most {MOVE_LIMIT})
set VAR = VALUE  give a local a new value (a Python literal) and let the model go on from it
h, help          this list
q, quit          leave (also Ctrl-D)"""
NAMES = {"s": "step", "n": "next", "o": "out", "b": "back", "p": "print", "l": "list",
         "w": "where", "br": "break", "cl": "clear", "c": "continue", "cont": "continue",
         "unt": "until", "h": "help", "?": "help", "q": "quit", "exit": "quit"}
COMMANDS = set(NAMES.values()) | {"reset", "set"}


class DebugSession:
    """The commands, run on the predicted track and (with --real) on the real one."""

    def __init__(self, predicted: Track, real: Track | None, color: bool):
        self.predicted, self.real, self.color = predicted, real, color
        self.breakpoints: set[int] = set()
        self.lines = predicted.program.lines

    def say(self, text: str, fg: str | None = None, dim: bool = False) -> None:
        click.echo(click.style(text, fg=fg, dim=dim) if self.color else text)

    def complain(self, text: str) -> None:
        self.say(f"*** {text}", fg="red")

    # the loop's one entry --------------------------------------------------------------------

    def run(self, line: str) -> bool:
        """Run one command line; False when it says quit."""
        word, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if not word:
            return True
        name = NAMES.get(word, word)
        if name not in COMMANDS:
            self.complain(f"unknown command {word!r}: h lists the commands")
            return True
        if name == "quit":
            return False
        try:
            getattr(self, "do_" + name)(rest)
        except DebuggerError as exc:
            self.complain(str(exc))
        return True

    # moves -----------------------------------------------------------------------------------

    def _move(self, how) -> None:
        tracks = [t for t in (self.predicted, self.real) if t is not None]
        if self.predicted.ended:
            self.complain("the trace has ended: back, reset or quit")
            return
        for track in tracks:
            track.save()
        stop = how(self.predicted)
        if self.real is not None and not self.predicted.is_edited:
            how(self.real)
        if self.predicted.history[-1] == (self.predicted.frames, self.predicted.ended):
            for track in tracks:  # nothing moved (a refusal, a malformed first frame): the
                track.back()  # real track stays with it, and there is nothing to undo
        self.show_stop(stop)

    def do_step(self, rest: str) -> None:
        self._move(Track.step)

    def do_next(self, rest: str) -> None:
        self._move(Track.next)

    def do_out(self, rest: str) -> None:
        self._move(Track.out)

    def do_continue(self, rest: str) -> None:
        self._move(lambda track: track.run_to(self.breakpoints))

    def do_until(self, rest: str) -> None:
        line = self._line_number(rest)
        self._move(lambda track: track.run_to({line}))

    def do_back(self, rest: str) -> None:
        if not self.predicted.back():
            self.complain("nothing to undo: this is where the session started")
            return
        if self.real is not None:
            self.real.back()
        self.show_frame()

    def do_reset(self, rest: str) -> None:
        for track in (self.predicted, self.real):
            if track is not None:
                track.save()
                track.reset()
        self.show_frame()

    def do_set(self, rest: str) -> None:
        name, equals, expression = rest.partition("=")
        name = name.strip()
        if not equals or not name.isidentifier() or not expression.strip():
            raise DebuggerError("usage: set VAR = VALUE, e.g. set n = 3")
        if isinstance(self.predicted.stepper, ReplayStepper):
            raise DebuggerError("set needs a model: the oracle can only replay the real trace")
        if self.predicted.ended:
            raise DebuggerError("the trace has ended: back or reset first")
        try:
            value = ast.literal_eval(expression.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DebuggerError(f"{expression.strip()!r} is not a Python literal (a number, "
                                "string, list, dict, tuple, set, True, False or None)") from None
        from tracekit.tracer.values import Renderer

        self.predicted.save()
        try:
            self.predicted.set_value(name, Renderer().render(value))
        except DebuggerError:
            self.predicted.history.pop()
            raise
        if self.real is not None:
            self.real.save()
        self.show_frame()

    # looking ---------------------------------------------------------------------------------

    def do_print(self, rest: str) -> None:
        values = self.predicted.locals()
        truth = self.real.locals() if self.real is not None and not self.real.ended else None
        if rest and rest not in values:
            raise DebuggerError(f"no local named {rest!r} here (locals: "
                                f"{', '.join(values) or 'none'})")
        for name in [rest] if rest else values:
            note = ""
            if truth is not None and truth.get(name) != values[name]:
                note = f"   (real: {truth[name]})" if name in truth else "   (real: not set)"
            self.say(f"{name} = {values[name]}{note}")
        if not rest and not values:
            self.say("no locals")

    def do_where(self, rest: str) -> None:
        levels = self.predicted.stack()
        for depth, level in enumerate(levels):
            here = ">" if depth == len(levels) - 1 else " "
            lineno = level.lineno
            text = self.lines[lineno - 1].strip() if lineno else "?"
            self.say(f"{here} #{depth} {level.name}  line {lineno or '?'}  {text}")

    def do_list(self, rest: str) -> None:
        current = self.predicted.lineno()
        middle = current or 1
        first = max(1, min(middle - 5, len(self.lines) - 10))
        for number in range(first, min(len(self.lines), first + 10) + 1):
            mark = "->" if number == current else "  "
            flag = "B" if number in self.breakpoints else " "
            self.say(f"{number:>4} {flag}{mark} {self.lines[number - 1]}")

    def do_break(self, rest: str) -> None:
        if not rest:
            self.say("breakpoints: " + (", ".join(map(str, sorted(self.breakpoints)))
                                        or "none"))
            return
        line = self._line_number(rest)
        self.breakpoints.add(line)
        self.say(f"breakpoint at line {line}: {self.lines[line - 1].strip()}")

    def do_clear(self, rest: str) -> None:
        if not rest:
            cleared = sorted(self.breakpoints)
            self.breakpoints.clear()
            self.say(f"breakpoints at line {', '.join(map(str, cleared))} cleared" if cleared
                     else "no breakpoints to clear")
            return
        line = self._line_number(rest)
        if line not in self.breakpoints:
            raise DebuggerError(f"no breakpoint at line {line}")
        self.breakpoints.discard(line)
        self.say(f"breakpoint at line {line} cleared")

    def do_help(self, rest: str) -> None:
        self.say(HELP)

    def _line_number(self, text: str) -> int:
        if not text.isdigit():
            raise DebuggerError(f"{text or 'nothing'!r} is not a line number: give one, e.g. 7")
        line = int(text)
        if not 1 <= line <= len(self.lines) or not self.lines[line - 1].strip():
            raise DebuggerError(f"line {line} holds no code (the program has "
                                f"{len(self.lines)} lines)")
        return line

    # showing ---------------------------------------------------------------------------------

    def show_stop(self, stop: Stop) -> None:
        if stop.reason == "malformed":
            raw = stop.prediction.text
            raw = repr(raw if len(raw) <= 160 else raw[:160]) + ("..." if len(raw) > 160 else "")
            self.complain(f"the model wrote a malformed frame ({stop.prediction.error[:80]}): "
                          f"{raw}")
            self.say("    step again (it samples anew when --temperature > 0) or go back")
        elif stop.reason == "interrupted":
            self.complain("interrupted: the frames predicted so far are kept")
        elif stop.reason == "limit":
            self.complain(f"stopped after {MOVE_LIMIT} frames: the command goes on if repeated")
        elif stop.reason == "refused":
            self.complain(stop.message)
        if stop.reason == "ended":
            self.show_frame(compare=False)
            ended = ("the real trace ended" if isinstance(self.predicted.stepper, ReplayStepper)
                     else "the model ended the trace")
            self.say(f"{ended}: back, reset or quit")
            self._compare()
            return
        self.show_frame()

    def show_frame(self, compare: bool = True) -> None:
        track = self.predicted
        frame = track.current
        level = track.stack()[-1]
        lineno = level.lineno
        tail = {"call": f"   [call {level.name}]",
                "return": f"   [return => {frame.arg}]",
                "exception": f"   [exception: {frame.arg}]"}.get(frame.event, "")
        self.say(f"-> {lineno or '?':>3}  {frame.source.rstrip()}{tail}", fg="green")
        changed = _changed(frame)
        if changed:
            self.say("     " + changed)
        if compare:
            self._compare()

    def _compare(self) -> None:
        real = self.real
        if real is None:
            return
        if self.predicted.is_edited:
            self.say("   real: not compared after set (back or reset to compare again)",
                     dim=True)
            return
        found = differences(self.predicted, real)
        if found:
            self.say("   real: " + "; ".join(found), fg="red")
        else:
            self.say("   real: same", dim=True)


def _changed(frame: Frame, width: int = 200) -> str:
    """The values this frame states (not '..'), shortened to fit one line."""
    if not frame.locals:
        return ""
    parts = [f"{name} = {value if len(value) <= 60 else value[:57] + '...'}"
             for name, value in frame.locals.items() if value != ".."]
    text = ", ".join(parts)
    return text if len(text) <= width else text[:width - 3] + "..."


def split_commands(text: str) -> list[str]:
    """`s; n; set s = 'a;b'` -> its commands (a ';' inside quotes stays)."""
    commands, current, quote = [], [], None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in ";\n":
            commands.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    commands.append("".join(current).strip())
    return [c for c in commands if c]


@click.command(epilog=exit_help(0, 2, 3, 4, 5, 6, 7, 8))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--entry", metavar="NAME", help="Function to debug (as for `tracekit trace`).")
@click.option("--call", metavar="EXPR", help="Call to run (as for `tracekit trace`).")
@model_options(help=MODEL_HELP + " oracle: the real trace replayed (every step is right).")
@click.option("--real", is_flag=True, help="Show the real execution beside each predicted "
              "frame, with the differences named.")
@sampling_options("0: greedy, the model's most likely execution (cwmdbg samples at 0.6).")
@click.option("--commands", metavar="'s; n; p x'", help="Run these commands (';' between "
              "them) and exit, instead of reading them from the terminal or a pipe.")
@click.option("--max-frame-tokens", type=click.IntRange(min=1), default=MAX_FRAME_TOKENS,
              show_default=True,
              help="Tokens one predicted frame may take before it counts as malformed.")
@device_option
@tracing_options
def debug(file: Path, entry, call, spec, openai_model, real, temperature, seed, commands,
          max_frame_tokens, device, tracing) -> None:
    """Step through FILE's entry function with a model predicting every frame: a neural
    debugger (the commands of Meta's cwmdbg, and list, where, break, continue, until, set).

    The program runs once in the sandbox for its entry's call frame (the arguments); the
    model predicts every frame after it. Commands come from the terminal (h lists them), a
    pipe, or --commands.

    \b
    tracekit debug prog.py                            (the bundled model)
    tracekit debug prog.py --real                     (the real frames beside)
    tracekit debug prog.py --commands "s; n; p total; set n = 3; c"
    tracekit debug prog.py --model openai:http://localhost:8000 --openai-model cwm
    """
    from tracekit.model.errors import BackendError
    from tracekit.prediction.predict import Sampling, load_predictor

    result = traced_for_a_model(file, call, entry, tracing, spec, openai_model)
    program = SourceMap(result.context)
    first = result.frames[:1]
    if spec == "oracle":
        stepper = ReplayStepper(result.frames)
    else:
        from tracekit.prediction.debugger import ModelStepper

        try:
            predictor = load_predictor(spec, openai_model, device, max_frame_tokens)
        except BackendError as exc:
            raise Failure("model", str(exc), EXIT_MODEL) from None
        stepper = ModelStepper(predictor, result.context, Sampling(temperature, seed=seed))
    truth = Track(ReplayStepper(result.frames), first, program) if real else None
    session = DebugSession(Track(stepper, first, program), truth, sys.stdout.isatty())
    interactive = commands is None and sys.stdin.isatty()
    session.say(f"tracekit debug: {file.name}, {result.call or result.entry} with {spec}"
                f"{'' if temperature == 0 else f' at temperature {temperature}'}; "
                "h: help, q: quit")
    if not result.complete:
        session.say(f"(the real run ended early: {result.status}; the real trace has "
                    f"{len(result.frames)} frames)")
    session.show_frame()
    if interactive:
        _interact(session)
        return
    lines = split_commands(commands) if commands is not None else sys.stdin.read().splitlines()
    for line in lines:
        session.say(PROMPT + line.strip())
        if not session.run(line):
            return


def _interact(session: DebugSession) -> None:
    """Read commands with line editing and history until quit or Ctrl-D; an empty line
    repeats the last command; Ctrl-C at the prompt clears the line."""
    last = ""
    for line in typed_lines(PROMPT):
        line = line.strip() or last
        last = line
        if not session.run(line):
            return
