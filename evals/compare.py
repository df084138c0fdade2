"""Predicted frames against real frames.

Two pairings of a prediction with the real trace:

- by index, frame i with frame i (CWM's convention). The real trace sets the count: a real frame
  with no predicted frame at its index is wrong in every field, and predicted frames past the
  end make the trace inexact.
- aligned: a banded edit-distance alignment that lets a free-running prediction skip a real
  frame or insert one of its own, so one slip does not count every later frame as wrong.

Each sequence resolves its own `".."` (spec section 5); a teacher-forced prediction, made after
the real frames before it, resolves against them. Nothing here raises on malformed output: a
frame the parser flags has an `error` and is never a right frame, while each of its parts
counts where it could be read (its event token, its source line, its locals).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import lru_cache

from tracekit.format.cwm import ParsedTrace, frame_wire_text, parse_segments, parse_trace
from tracekit.format.trace import DotsResolver, Frame, resolve_dots
from tracekit.tracer.constants import DOTS


class Mode(StrEnum):
    """An eval's mode: what the model is given and what it predicts (README: Evaluate)."""

    ROLLOUT = "rollout"  # the whole trace free-running from the real call frame
    TEACHER_FORCED = "teacher-forced"  # every frame from the real frames before it
    OUTPUT = "output"  # the return frame straight after the call frame
    REASONING = "reasoning"  # the return value by CWM's chat, no trace


ANSWERS_ONLY = (Mode.OUTPUT, Mode.REASONING)  # modes that predict the answer, not frames
VALUE_TYPES = ("int", "float", "str", "list", "tuple", "dict", "set", "bool", "None", "other")
ENDED_HERE = "the model ended the trace here"  # a per-frame generation with no frame
NO_EVENT_ERRORS = ("bad event token", "empty output", ENDED_HERE)
GAP_COST, ALIGN_BAND, ALIGN_MAX_CELLS = 1.5, 8, 3_000_000


@lru_cache(maxsize=1 << 16)
def value_type(rendered: str) -> str:
    """The Python type a rendered value (a repr) spells: one of VALUE_TYPES."""
    if rendered in ("True", "False"):
        return "bool"
    if rendered == "None":
        return "None"
    if rendered in ("set()", "nan", "inf", "-inf"):
        return "set" if rendered == "set()" else "float"
    if len(rendered) <= 10_000:
        try:
            value = ast.literal_eval(rendered)
        except Exception:  # not a literal (an object repr inside, a huge nesting): by shape
            pass
        else:
            name = type(value).__name__
            return name if name in VALUE_TYPES else "other"
    head = rendered[:1]
    if head == "{":
        return "dict" if ": " in rendered else "set"
    return {"[": "list", "(": "tuple", "'": "str", '"': "str"}.get(head, "other")


@dataclass
class FrameComparison:
    """Real frame `step` against the predicted frame paired with it (None: none there).
    State fields are None for return/exception real frames, `value_match` for call/line ones."""

    step: int
    real: Frame
    pred: Frame | None
    real_state: dict[str, str] | None  # locals with ".." resolved
    pred_state: dict[str, str] | None
    event_match: bool
    action_match: bool
    state_exact: bool | None  # the ".."-encoded dicts are equal
    state_match: bool | None  # equal after resolving ".."
    key_jaccard: float | None
    kv_jaccard: float | None
    value_match: bool | None  # return value / exception triple
    # (name, value type, changed, predicted right) for every variable of the real state;
    # changed: written in full in the real frame (new or changed), not ".."
    variables: list[tuple[str, str, bool, bool]] = field(default_factory=list)

    @property
    def match(self) -> bool:
        """A well-formed frame with event, source line and state (or value) all right."""
        rest = self.state_match if self.real.locals is not None else self.value_match
        return (self.event_match and self.action_match and bool(rest)
                and self.pred.error is None)


@dataclass(kw_only=True)
class TraceComparison:
    """One program's prediction against its real trace."""

    id: str
    mode: Mode
    real: list[Frame]
    predicted: list[Frame]  # as parsed, malformed frames included
    frames: list[FrameComparison]  # by index: one per real frame (none in output mode)
    aligned: list[FrameComparison]  # one per real frame, with its aligned predicted frame
    inserted: int  # predicted frames the alignment pairs with no real frame
    ended: bool  # the prediction closed the trace with <|end_of_text|>
    valid_format: bool
    output_correct: bool
    truncated: bool  # cut off by the token budget
    first_divergence: int | None  # first wrong index; None for an exact trace
    reasoning_tokens: int | None = None  # reasoning mode: tokens the reply took

    @property
    def exact(self) -> bool:
        return self.first_divergence is None

    @property
    def parse_errors(self) -> int:
        return sum(f.error is not None for f in self.predicted)

    @property
    def first_wrong(self) -> str | None:
        """What is wrong in the first wrong frame, checked in this order: "ended early" (no
        frame there), "malformed" (a frame that cannot be read), "event", "line" (the source
        line), "state" (or "value", of a return or exception), or "did not end" (every real
        frame right, then more frames or no end of trace); None for an exact trace."""
        if self.first_divergence is None:
            return None
        wrong = next((f for f in self.frames if f.step == self.first_divergence), None)
        if wrong is None:
            return "did not end"
        if wrong.pred is None or wrong.pred.error == ENDED_HERE:
            return "ended early"
        if wrong.pred.error is not None:
            return "malformed"
        if not wrong.event_match:
            return "event"
        if not wrong.action_match:
            return "line"
        return "state" if wrong.real.locals is not None else "value"


# A prediction: the model's text, or its tokens as segments (`tokenizer.id_segments`), which
# parse exactly where text cannot (a value that spells a special token).
Prediction = str | list


def _parse(prediction: Prediction) -> ParsedTrace:
    if isinstance(prediction, str):
        return parse_trace(prediction)
    return parse_segments(prediction)


def compare(trace_id: str, real: list[Frame], record: dict) -> TraceComparison:
    """Compare one prediction record (see `tracekit.evals.run`: `texts` for teacher-forced,
    `text` for rollout and output, optional `stop`; each text may be segments) with the real
    frames."""
    mode = record.get("mode", Mode.ROLLOUT)
    if mode == Mode.TEACHER_FORCED:
        return compare_teacher_forced(trace_id, real, record.get("texts") or [])
    if mode == Mode.OUTPUT:
        return compare_output(trace_id, real, record.get("text") or "")
    if mode == Mode.REASONING:
        return compare_reasoning(trace_id, real, record.get("text") or "", record.get("stop"),
                                 record.get("tokens"))
    return compare_rollout(trace_id, real, record.get("text") or "", record.get("stop"),
                           record.get("given") or 0)


def compare_rollout(trace_id: str, real: list[Frame], text: Prediction,
                    stop: str | None = None, given: int = 0) -> TraceComparison:
    """A free-running prediction of the whole trace (text after the prompt) whose first
    `given` frames are the real ones it started from: written in the text, scored for none."""
    parsed = _parse(text)
    predicted = parsed.frames
    real_states, pred_states = resolve_dots(real), resolve_dots(predicted)
    frames = [_compare_frame(i, real[i], real_states[i],
                             predicted[i] if i < len(predicted) else None,
                             pred_states[i] if i < len(predicted) else None)
              for i in range(len(real))]
    pairs = _align(real, predicted, real_states, pred_states)
    if pairs is None:  # too long to align within the cell budget: the index pairing stands
        aligned, inserted = frames, max(0, len(predicted) - len(real))
    else:
        aligned = [_compare_frame(i, real[i], real_states[i],
                                  predicted[j] if j is not None else None,
                                  pred_states[j] if j is not None else None)
                   for i, j in pairs if i is not None]
        inserted = sum(i is None for i, _ in pairs)
    divergence = _first_divergence(frames)
    if divergence is None and (len(predicted) != len(real) or not parsed.ended):
        divergence = len(real)
    last = predicted[-1] if predicted else None
    output = (parsed.ended and last is not None and last.error is None and last.event == "return"
              and bool(real) and real[-1].event == "return" and last.arg == real[-1].arg)
    truncated = stop == "budget" if stop else not parsed.ended
    return TraceComparison(
        id=trace_id, mode=Mode.ROLLOUT, real=real, predicted=predicted[given:],
        frames=frames[given:], aligned=[a for a in aligned if a.step >= given],
        inserted=inserted, ended=parsed.ended, valid_format=parsed.ended and parsed.valid,
        output_correct=output, truncated=truncated, first_divergence=divergence)


def compare_teacher_forced(trace_id: str, real: list[Frame],
                           texts: list[Prediction]) -> TraceComparison:
    """Frame i predicted from the real frames before it (one text per real frame)."""
    resolver = DotsResolver()
    frames, predicted = [], []
    for i, frame in enumerate(real):
        pred = _first_frame(texts[i]) if i < len(texts) else None
        if pred is not None:
            predicted.append(pred)
        # the prediction stands in for real frame i: its ".." refers to what real frame i's
        # would (parsed output carries no scope ids; without this, a callee's ".." read as a
        # switch of scope and resolved to nothing)
        pred_state = resolver.peek(replace(pred, scope=frame.scope)) if pred is not None else None
        frames.append(_compare_frame(i, frame, resolver.add(frame), pred, pred_state))
    divergence = _first_divergence(frames)
    last = frames[-1] if frames else None
    output = last is not None and last.real.event == "return" and bool(last.value_match)
    valid = len(predicted) == len(real) and all(f.error is None for f in predicted)
    return TraceComparison(
        id=trace_id, mode=Mode.TEACHER_FORCED, real=real, predicted=predicted, frames=frames,
        aligned=frames, inserted=0, ended=True, valid_format=valid, output_correct=output,
        truncated=False, first_divergence=divergence)


def judge_predicted_frames(real: list[Frame], texts: list[str], start: int,
                           rollout: bool, stop: str | None = None) -> list[bool]:
    """Right or wrong, as the eval judges them (".." resolved), for predicted frame texts made
    after the first `start` real frames: one text per frame, free-running with `rollout`
    (stopped for `stop`), else each from the real frames before it."""
    seeds = [frame_wire_text(frame) for frame in real[:start]]
    if rollout:
        return [frame.match for frame in
                compare_rollout("", real, "".join(seeds + texts), stop, start).frames]
    judged = compare_teacher_forced("", real[:start + len(texts)], seeds + texts)
    return [frame.match for frame in judged.frames[start:]]


def compare_output(trace_id: str, real: list[Frame], text: Prediction) -> TraceComparison:
    """The entry's return frame predicted straight after its call frame."""
    pred = _first_frame(text)
    last = _compare_frame(len(real) - 1, real[-1], None, pred, None)  # the entry's return
    right = last.real.event == "return" and bool(last.value_match)
    return TraceComparison(
        id=trace_id, mode=Mode.OUTPUT, real=real, predicted=[pred], frames=[last],
        aligned=[last], inserted=0, ended=True, valid_format=pred.error is None,
        output_correct=right, truncated=False, first_divergence=None if right else last.step)


def compare_reasoning(trace_id: str, real: list[Frame], text: str, stop: str | None = None,
                      tokens: int | None = None) -> TraceComparison:
    """A chat reply (reasoning, then the answer) against the entry's real return value: right
    when the [OUTPUT] literal equals it as a Python value (`same_value`)."""
    answer, problem = reasoning_answer(text)
    last_real = real[-1]
    pred = (Frame("return", last_real.lineno, last_real.source, arg=answer) if problem is None
            else Frame("return", None, "", error=problem))
    right = (problem is None and last_real.event == "return"
             and same_value(answer, last_real.arg or ""))
    last = replace(_compare_frame(len(real) - 1, last_real, None, pred, None),
                   value_match=right)
    truncated = problem == THINKING_CUT and stop == "budget"
    return TraceComparison(
        id=trace_id, mode=Mode.REASONING, real=real, predicted=[pred], frames=[last],
        aligned=[last], inserted=0, ended=True, valid_format=problem is None,
        output_correct=right, truncated=truncated,
        first_divergence=None if right else last.step,
        reasoning_tokens=tokens if type(tokens) is int else None)


THINKING_CUT = "the reply ended inside <think>"


def reasoning_answer(text: str) -> tuple[str | None, str | None]:
    """(the [OUTPUT] literal after the reasoning, None) or (None, what is wrong). The reply
    is the assistant's whole turn: `<think>` reasoning `</think>` answer, or the answer alone."""
    body = text.lstrip()
    if body.startswith("<think>"):
        head, closed, body = body[len("<think>"):].partition("</think>")
        if not closed:
            return None, THINKING_CUT
    found = OUTPUT_BLOCK.search(body)
    if found is None:
        return None, "no [OUTPUT] ... [/OUTPUT] in the answer"
    return found.group(1).strip(), None


OUTPUT_BLOCK = re.compile(r"\[OUTPUT\](.*?)\[/OUTPUT\]", re.DOTALL)


def same_value(predicted: str, real: str) -> bool:
    """Whether two renderings are the same Python value: equal as literals where both parse
    (`ast.literal_eval`: 'a' and "a", 1.0 and 1 are equal), else equal as text."""
    try:
        return _literal(predicted) == _literal(real)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return predicted.strip() == real.strip()


def _literal(text: str):
    if len(text) > 100_000:  # literal_eval of huge text is slow and never needed here
        raise ValueError("too long")
    return ast.literal_eval(text.strip())


def has_event(frame: Frame | None) -> bool:
    """Whether a predicted frame has an event token of its own (not one filled in for output
    that had none: an unknown token, nothing at all, or the end of the trace)."""
    return frame is not None and not (frame.error or "").startswith(NO_EVENT_ERRORS)


def _first_frame(text: Prediction) -> Frame:
    """The one frame a per-frame generation holds; an error frame when there is none."""
    parsed = _parse(text)
    if parsed.frames:
        return parsed.frames[0]
    reason = ENDED_HERE if parsed.ended else "empty output"
    return Frame("line", None, "", error=reason)


def _compare_frame(step: int, real: Frame, real_state, pred: Frame | None,
                   pred_state) -> FrameComparison:
    event_match = has_event(pred) and pred.event == real.event
    action_match = pred is not None and pred.source == real.source  # "" when unreadable
    if real.locals is None:
        value = event_match and pred.error is None and pred.arg == real.arg
        return FrameComparison(step, real, pred, None, None, event_match, action_match,
                               None, None, None, None, value)
    usable = event_match and pred.locals is not None
    pred_raw = pred.locals if usable else None
    pred_state = pred_state if usable else None
    variables = [(name, value_type(value), real.locals[name] != DOTS,
                  pred_state is not None and pred_state.get(name) == value)
                 for name, value in real_state.items()]
    return FrameComparison(
        step, real, pred, real_state, pred_state, event_match, action_match,
        pred_raw == real.locals, pred_state == real_state,
        _jaccard(set(real_state), set(pred_state) if pred_state is not None else None),
        _jaccard(set(real_state.items()),
                 set(pred_state.items()) if pred_state is not None else None),
        None, variables)


def _jaccard(real: set, pred: set | None) -> float:
    if pred is None:
        return 0.0
    union = real | pred
    return len(real & pred) / len(union) if union else 1.0


def _first_divergence(frames: list[FrameComparison]) -> int | None:
    return next((f.step for f in frames if not f.match), None)


def _align(real, pred, real_states, pred_states) -> list[tuple[int | None, int | None]] | None:
    """Minimal-cost pairing of real and predicted frames (pairs (i, j), (i, None) for a
    skipped real frame, (None, j) for an inserted one). Pair cost: 0 same frame, 1 same event
    and line, 2 otherwise; a gap costs GAP_COST, so two gaps never beat one wrong pair.
    Searched in a band around the diagonal; None when that band is too large."""
    n, m = len(real), len(pred)
    width = ALIGN_BAND + abs(n - m)
    if (n + 1) * (2 * width + 1) > ALIGN_MAX_CELLS:
        return None

    def cost(i: int, j: int) -> float:
        a, b = real[i], pred[j]
        if b.error is not None or a.event != b.event or a.source != b.source:
            return 2.0
        same = real_states[i] == pred_states[j] if a.locals is not None else a.arg == b.arg
        return 0.0 if same else 1.0

    inf = float("inf")
    rows: list[tuple[int, list[float], list[int]]] = []  # (first j, costs, moves) per i
    previous_lo, previous = 0, [GAP_COST * j for j in range(min(m, width) + 1)]
    rows.append((0, previous, [2] * len(previous)))
    for i in range(1, n + 1):
        lo, hi = max(0, i - width), min(m, i + width)
        costs, moves = [], []
        for j in range(lo, hi + 1):
            best, move = inf, 0
            if j > 0 and previous_lo <= j - 1 < previous_lo + len(previous):
                best = previous[j - 1 - previous_lo] + cost(i - 1, j - 1)
            if previous_lo <= j < previous_lo + len(previous):
                up = previous[j - previous_lo] + GAP_COST
                if up < best:
                    best, move = up, 1
            if j > lo:
                left = costs[-1] + GAP_COST
                if left < best:
                    best, move = left, 2
            costs.append(best)
            moves.append(move)
        rows.append((lo, costs, moves))
        previous_lo, previous = lo, costs
    pairs: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        lo, _, moves = rows[i]
        move = moves[j - lo] if i > 0 else 2
        if move == 0:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif move == 1:
            pairs.append((i - 1, None))
            i -= 1
        else:
            pairs.append((None, j - 1))
            j -= 1
    return pairs[::-1]
