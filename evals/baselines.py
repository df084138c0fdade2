"""Baselines that anchor the scale, as prediction records like a model's (`tracekit.evals.run`):

- `oracle`: the real trace itself. Scores 100 on every accuracy metric; anything less is a bug
  in the scoring.
- `copy`: no model at all. Each frame repeats the previous state as `".."` (every name of the
  last state, unchanged) and moves to the next source line in file order (the next line that
  is neither blank nor a comment); the first frame is the entry's call frame with no
  arguments (a rollout, like a model's, starts from the real one). Past the last line of the
  file it ends the trace. In output mode it predicts
  that the entry returns its first argument unchanged (None without arguments); in reasoning
  mode it answers that value with no reasoning.
"""

from __future__ import annotations

from tracekit.evals.compare import Mode
from tracekit.format.cwm import END_OF_TEXT, frame_wire_text, parse_trace
from tracekit.format.trace import DotsResolver, Frame, Trace
from tracekit.tracer.constants import DOTS, MARKER
from tracekit.tracer.context import marker_line

BASELINES = ("oracle", "copy")


def predict(name: str, trace: Trace, mode: str) -> dict:
    """The baseline's prediction record for one trace (reasoning mode: the answer of the
    output mode's frame, with no thinking)."""
    if mode == Mode.REASONING:
        frames = parse_trace(predict(name, trace, Mode.OUTPUT)["text"]).frames
        value = frames[0].arg if frames else None
        return {"text": f"[OUTPUT]{value}[/OUTPUT]" if value is not None else ""}
    return (_oracle if name == "oracle" else _copy)(trace, mode)


def _oracle(trace: Trace, mode: str) -> dict:
    if mode == Mode.TEACHER_FORCED:
        return {"texts": [frame_wire_text(f) for f in trace.frames]}
    if mode == Mode.OUTPUT:
        return {"text": frame_wire_text(trace.frames[-1]) if trace.frames else END_OF_TEXT}
    return {"text": "".join(frame_wire_text(f) for f in trace.frames) + END_OF_TEXT,
            "stop": "end_of_text"}


def _copy(trace: Trace, mode: str) -> dict:
    lines = trace.context.splitlines(keepends=True)
    if mode == Mode.OUTPUT:
        call = trace.frames[0] if trace.frames else None
        first = next(iter((call.locals or {}).values()), "None") if call else "None"
        entry = _entry_line(lines)
        return {"text": frame_wire_text(Frame("return", None, lines[entry - 1] if entry else "",
                                         arg=first))}
    if mode == Mode.TEACHER_FORCED:
        resolver, texts = DotsResolver(), []
        for i, real in enumerate(trace.frames):
            previous = trace.frames[i - 1] if i else None
            guess = _next(lines, previous, resolver.previous)
            texts.append(frame_wire_text(guess) if guess is not None else END_OF_TEXT)
            resolver.add(real)
        return {"texts": texts}
    resolver, frames = DotsResolver(), trace.frames[:1]  # a rollout starts from the real call
    given = len(frames)
    if frames:
        resolver.add(frames[0])
    while len(frames) < 10 * len(trace.frames) + 10:
        guess = _next(lines, frames[-1] if frames else None, resolver.previous)
        if guess is None:
            return {"text": "".join(map(frame_wire_text, frames)) + END_OF_TEXT,
                    "given": given, "stop": "end_of_text"}
        resolver.add(guess)
        frames.append(guess)
    return {"text": "".join(map(frame_wire_text, frames)), "given": given, "stop": "max_frames"}


def _next(lines: list[str], previous: Frame | None, state: dict | None) -> Frame | None:
    """The copy baseline's frame after `previous` (None: past the end of the file)."""
    if previous is None:
        entry = _entry_line(lines)
        return Frame("call", entry, _source(lines, entry), {}) if entry else None
    lineno = previous.lineno or 0
    for number in range(lineno + 1, len(lines) + 1):
        text = lines[number - 1].strip()
        if text and not text.startswith("#"):
            return Frame("line", number, _source(lines, number),
                         {name: DOTS for name in state or {}})
    return None


def _entry_line(lines: list[str]) -> int | None:
    return marker_line("".join(lines))


def _source(lines: list[str], number: int) -> str:
    line = lines[number - 1].replace(MARKER, "")
    return line if line.endswith("\n") else line + "\n"
