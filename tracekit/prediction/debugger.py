"""The neural debugger's engine: a track of frames that a stepper extends with the moves of
Meta's cwmdbg (step, next, out) and the ones it lacks (run to a line, set a value).

A stepper predicts the frame after a track's frames, optionally forced to start with an event
token: `ModelStepper` asks a model through a cached session (each step runs only the new
tokens); `ReplayStepper` answers with the real trace (the `oracle`). A `Track` keeps the frames
and a history of them for `back`; the CLI's `DebugSession` runs every command on the predicted
track and, when the real trace is shown beside it, on a real track too.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, replace

from tracekit.format.cwm import frame_wire_text
from tracekit.format.trace import DotsResolver, Frame
from tracekit.model.errors import BackendError
from tracekit.prediction.predict import FramePrediction, Sampling, TracePredictor
from tracekit.tracer.constants import MARKER

MOVE_LIMIT = 200  # frames one command may predict (continue, until, out, next over calls)
_DEF = re.compile(r"\s*(?:async\s+)?def\s+(\w+)")


class DebuggerError(Exception):
    """A command that cannot run here; the message says why and what to do instead."""


@dataclass
class Stop:
    """How a command ended: `reason` is "landed" (on the frame it was after), "ended" (the
    trace is over), "malformed" (`prediction` holds the model's raw output), "limit",
    "interrupted", or "refused" (`message` says why)."""

    reason: str = "landed"
    prediction: FramePrediction | None = None
    message: str = ""


class ModelStepper:
    """A model predicts each frame in a session that keeps the prompt's cache."""

    def __init__(self, predictor: TracePredictor, context: str, sampling: Sampling):
        self.predictor, self.context, self.sampling = predictor, context, sampling
        config = predictor.local_config
        self.max_positions = config.max_position_embeddings if config is not None else None
        self.session = predictor.session(context)

    def predict(self, frames: list[Frame], force_event: str | None) -> FramePrediction:
        budget = None
        if self.max_positions is not None:
            self.session.frames = list(frames)
            used = len(self.session.prompt(force_event))
            budget = self.max_positions - used
            if budget < 8:
                raise DebuggerError(f"the prompt fills the model's context ({used} of "
                                    f"{self.max_positions} tokens): go back or reset")
        return self.generate(frames, force_event, budget)

    def generate(self, frames: list[Frame], force_event: str | None,
                 budget: int | None) -> FramePrediction:
        """The next frame in at most `budget` tokens, from the session's cache."""
        self.session.frames = list(frames)
        return self.session.step(force_event, self.sampling, budget)

    def drop_cache(self) -> None:
        """Start the cache again (after a prediction was interrupted half way)."""
        self.session = self.predictor.session(self.context)


class ReplayStepper:
    """The real trace as the model (`--model oracle`): a step gives the real frame that follows
    the track's last frame; a forced return after a call skips to that call's real return."""

    def __init__(self, real: list[Frame]):
        self.real = real
        self.position = {id(frame): i for i, frame in enumerate(real)}

    def predict(self, frames: list[Frame], force_event: str | None) -> FramePrediction:
        at = -1
        if frames:
            at = self.position.get(id(frames[-1]), None)
            if at is None:
                raise DebuggerError("the oracle replays the real trace and cannot go on from an "
                                    "edited frame: go back, or debug with a model")
        following = at + 1
        if force_event == "return" and at >= 0 and self.real[at].event == "call":
            depth = self.real[at].depth
            following = next((j for j in range(at + 1, len(self.real))
                              if self.real[j].event == "return" and self.real[j].depth == depth),
                             len(self.real))
        if following >= len(self.real):
            return FramePrediction(None, "<|end_of_text|>", [], [], True)
        frame = self.real[following]
        return FramePrediction(frame, frame_wire_text(frame), [], [], False)

    def drop_cache(self) -> None:
        pass


@dataclass
class Level:
    """One function on the stack: its name, the line it is at, its locals ('..' resolved)."""

    name: str
    lineno: int | None
    locals: dict[str, str]


class SourceMap:
    """The debugged program's lines, and where a frame's source line is in them (model frames
    carry no line number: the line is found by its text, inside the current function first)."""

    def __init__(self, context: str):
        self.lines = context.replace(MARKER, "").split("\n")
        if len(self.lines) > 1 and self.lines[-1] == "":  # the text's last newline ends a line
            self.lines.pop()
        self.functions: dict[str, list[tuple[int, int]]] = {}
        try:
            tree = ast.parse(context)
        except SyntaxError:
            tree = ast.Module(body=[], type_ignores=[])
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions.setdefault(node.name, []).append((node.lineno, node.end_lineno))

    def locate(self, frame: Frame, function: str | None, after: int | None) -> int | None:
        if frame.lineno is not None:
            return frame.lineno
        text = frame.source.rstrip()
        found = [i + 1 for i, line in enumerate(self.lines) if line.rstrip() == text and text]
        if len(found) > 1 and function in self.functions:
            inside = [n for n in found
                      if any(a <= n <= b for a, b in self.functions[function])]
            found = inside or found
        if after is not None and len(found) > 1:
            found = [n for n in found if n >= after] or found
        return found[0] if found else None


class Track:
    """The frames of one execution (predicted or real), moved by cwmdbg's commands."""

    def __init__(self, stepper, start: list[Frame], program: SourceMap):
        self.stepper, self.start, self.program = stepper, list(start), program
        self.frames = list(start)
        self.ended = False
        self.history: list[tuple[list[Frame], bool]] = []
        self.edited: dict[int, Frame] = {}  # frames changed by `set`, by id (kept alive, so
        # an id is never reused by a later frame)

    @property
    def current(self) -> Frame:
        return self.frames[-1]

    @property
    def is_edited(self) -> bool:
        return any(id(frame) in self.edited for frame in self.frames)

    def save(self) -> None:
        self.history.append((list(self.frames), self.ended))

    def back(self) -> bool:
        """Undo the last command that moved (or set); False when there is none."""
        if not self.history:
            return False
        self.frames, self.ended = self.history.pop()
        return True

    def reset(self) -> None:
        self.frames, self.ended = list(self.start), False

    # moves -----------------------------------------------------------------------------------

    def _advance(self, force: str | None = None) -> Stop | None:
        """Predict one frame and append it; a Stop when that did not work."""
        if self.ended:
            return Stop("ended")
        try:
            prediction = self.stepper.predict(self.frames, force)
        except KeyboardInterrupt:
            self.stepper.drop_cache()
            return Stop("interrupted")
        except (DebuggerError, BackendError) as exc:  # the session stays; the user decides
            return Stop("refused", message=str(exc))
        if prediction.frame is None:
            self.ended = True
            return Stop("ended")
        if prediction.error is not None:
            return Stop("malformed", prediction)
        self.frames.append(prediction.frame)
        return None

    def step(self) -> Stop:
        """Into: after a call frame the next one is forced to be a line of its body."""
        return self._advance("line" if self.current.event == "call" else None) or Stop("landed")

    def next(self) -> Stop:
        """Over: a call the step lands on is answered by its return at once (forced), then the
        step goes on in this function."""
        stop = self._advance("line" if self.current.event == "call" else None)
        for _ in range(MOVE_LIMIT):
            if stop is not None or self.current.event != "call":
                return stop or Stop("landed")
            stop = self._advance("return") or self._advance()
        return Stop("limit")

    def out(self) -> Stop:
        """To the frame after the current function's return; calls on the way are answered by
        their returns at once (a call frame's own function returns at once)."""
        if self.current.event == "call":
            return self._advance("return") or self._advance() or Stop("landed")
        for _ in range(MOVE_LIMIT):
            stop = self._advance()
            if stop is not None:
                return stop
            if self.current.event == "call":
                stop = self._advance("return")
                if stop is not None:
                    return stop
            elif self.current.event == "return":
                return self._advance() or Stop("landed")
        return Stop("limit")

    def run_to(self, lines: set[int]) -> Stop:
        """Step (into calls) until a call or line frame at one of `lines`."""
        for _ in range(MOVE_LIMIT):
            stop = self.step()
            if stop.reason != "landed":
                return stop
            if self.current.event in ("call", "line") and self.lineno() in lines:
                return stop
        return Stop("limit")

    def set_value(self, name: str, rendered: str) -> None:
        """Give `name` the value `rendered` in the current frame (a counterfactual state)."""
        frame = self.current
        if frame.locals is None:
            raise DebuggerError(f"a {frame.event} frame holds no locals: set works on a call "
                                "or line frame (step first)")
        names = self.stack()[-1].locals if self.stack() else {}
        if name not in names:
            have = ", ".join(names) or "none"
            raise DebuggerError(f"no local named {name!r} here (locals: {have})")
        edited = replace(frame, locals={**frame.locals, name: rendered})
        self.frames[-1] = edited
        self.edited[id(edited)] = edited

    # what the frames say ---------------------------------------------------------------------

    def stack(self) -> list[Level]:
        """The call stack after the last frame, innermost last (a function that is returning
        stays on it until the next frame)."""
        levels: list[Level] = []
        resolver = DotsResolver()
        returning = False
        for frame in self.frames:
            if returning and levels:
                levels.pop()
            returning = frame.event == "return"
            resolved = resolver.add(frame)
            if frame.event == "call":
                match = _DEF.match(frame.source)
                name = match.group(1) if match else (
                    "<lambda>" if "lambda" in frame.source else "<comprehension>")
                levels.append(Level(name, None, {}))
            elif not levels:  # a model may start oddly: keep going with an unnamed level
                levels.append(Level("?", None, {}))
            top = levels[-1]
            top.lineno = self.program.locate(frame, top.name, top.lineno)
            if resolved is not None:
                top.locals = resolved
        return levels

    def lineno(self) -> int | None:
        levels = self.stack()
        return levels[-1].lineno if levels else None

    def locals(self) -> dict[str, str]:
        levels = self.stack()
        return levels[-1].locals if levels else {}


def differences(predicted: Track, real: Track) -> list[str]:
    """What the real track's current frame says that the predicted one does not (empty: the
    same frame), as short phrases naming the real value."""
    mine, theirs = predicted.current, real.current
    found = []
    if real.ended != predicted.ended:
        found.append("the real trace has ended" if real.ended else "the real trace goes on")
    if mine.event != theirs.event or mine.source.rstrip() != theirs.source.rstrip():
        found.append(f"{theirs.event} {real.lineno() or '?'}  {theirs.source.strip()}")
    if mine.arg != theirs.arg and theirs.event in ("return", "exception"):
        found.append(f"=> {theirs.arg}")
    if mine.locals is not None and theirs.locals is not None:
        ours, truth = predicted.locals(), real.locals()
        for name in list(truth) + [n for n in ours if n not in truth]:
            if ours.get(name) != truth.get(name):
                found.append(f"{name} = {truth[name]}" if name in truth else f"no {name}")
    return found
