"""The CWM wire format (docs/trace-format.md sections 1, 2, 7): special tokens, the one writer
of traces and prompts (`prompt_segments`: special tokens and plain text, which the text route
joins and the ids route encodes segment by segment), and a parser that reads back whatever a
model writes.

    <|begin_of_text|><|trace_context_start|>CONTEXT<|frame_sep|>FRAME FRAME ... <|end_of_text|>
    <|call_sep|>LOCALS<|action_sep|>SOURCE<|frame_sep|>       (line frames alike)
    <|return_sep|><|action_sep|>SOURCE<|arg_sep|>VALUE<|frame_sep|>   (exception frames alike)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tracekit.format.trace import Frame
from tracekit.tracer.constants import DOTS

# Special tokens and their ids (docs/trace-format.md section 7): id = 128000 + offset.
SPECIAL_TOKENS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|pad|>": 128004,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
    "<|frame_sep|>": 128100,
    "<|action_sep|>": 128101,
    "<|return_sep|>": 128102,
    "<|call_sep|>": 128103,
    "<|line_sep|>": 128104,
    "<|exception_sep|>": 128105,
    "<|arg_sep|>": 128106,
    "<|trace_context_start|>": 128107,
    "<|reasoning_thinking_start|>": 128120,
    "<|reasoning_thinking_end|>": 128121,
}
for _id in range(128000, 128256):  # every other id of the 256 is a reserved token
    if _id not in SPECIAL_TOKENS.values():
        SPECIAL_TOKENS[f"<|reserved_special_token_{_id - 128000}|>"] = _id
del _id

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
TRACE_CONTEXT_START = "<|trace_context_start|>"
FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
ARG_SEP = "<|arg_sep|>"
EVENT_TOKENS = {
    "call": "<|call_sep|>",
    "line": "<|line_sep|>",
    "return": "<|return_sep|>",
    "exception": "<|exception_sep|>",
}
TOKEN_EVENTS = {token: event for event, token in EVENT_TOKENS.items()}


# ---------------------------------------------------------------------------------------------
# Rendering


def frame_segments(frame: Frame) -> list[str]:
    """A frame as alternating special tokens and plain-text segments (what gets encoded)."""
    segments: list[str] = []
    _write_frames(segments.extend, (frame,))
    return segments


def _write_frames(extend, frames) -> None:
    """The one writer of frames: each frame's segments, passed to `extend` as one tuple (one
    call per frame, no list per frame)."""
    for frame in frames:
        event = frame.event
        if event == "line" or event == "call":
            extend((EVENT_TOKENS[event], state_json(frame.locals), ACTION_SEP, frame.source,
                    FRAME_SEP))
        else:
            arg = frame.arg
            extend((EVENT_TOKENS[event], ACTION_SEP, frame.source, ARG_SEP,
                    _quote(arg) if isinstance(arg, str) else json.dumps(arg), FRAME_SEP))


_quote = json.encoder.encode_basestring_ascii  # what json.dumps uses (ensure_ascii), in C
# A name's part of a state, cached (names repeat from frame to frame): `"name": ` before a
# value, and the whole `"name": ".."` of an unchanged one (most of a line frame's).
_KEYS: dict[str, str] = {}
_UNCHANGED: dict[str, str] = {}


def state_json(state: dict[str, str] | None) -> str:
    """`json.dumps(state)` with default settings, written out for a dict of strings (a CWM
    state) at a fourth of its cost; anything else goes through json.dumps."""
    try:
        parts = []
        for name, value in state.items():
            if value == DOTS:
                part = _UNCHANGED.get(name)
                if part is None:
                    part = _quote(name) + ": " + _quote(DOTS)
                    if len(_UNCHANGED) < 65536:
                        _UNCHANGED[name] = part
            else:
                key = _KEYS.get(name)
                if key is None:
                    key = _quote(name) + ": "
                    if len(_KEYS) < 65536:
                        _KEYS[name] = key
                part = key + _quote(value)
            parts.append(part)
        return "{" + ", ".join(parts) + "}"
    except (TypeError, AttributeError):  # not a dict of strings
        return json.dumps(state)


def frame_wire_text(frame: Frame) -> str:
    """A frame as CWM wire text (special tokens spelled out), as a model writes it."""
    return "".join(frame_segments(frame))


def prompt_segments(context: str, frames: list[Frame] = (), force_event: str | None = None,
                    end: bool = False) -> list[str]:
    """`<|begin_of_text|><|trace_context_start|>CONTEXT<|frame_sep|>`, then `frames`, then
    optionally a forced next event token, or `<|end_of_text|>` with `end`."""
    if force_event is not None and force_event not in EVENT_TOKENS:
        raise ValueError(f"unknown event {force_event!r}: use one of {', '.join(EVENT_TOKENS)}")
    segments = [BEGIN_OF_TEXT, TRACE_CONTEXT_START, context, FRAME_SEP]
    _write_frames(segments.extend, frames)
    if force_event is not None:
        segments.append(EVENT_TOKENS[force_event])
    elif end:
        segments.append(END_OF_TEXT)
    return segments


def prompt_text(context: str, frames: list[Frame] = (), force_event: str | None = None,
                end: bool = False) -> str:
    """`prompt_segments` as wire text (special tokens spelled out)."""
    return "".join(prompt_segments(context, frames, force_event, end))


# ---------------------------------------------------------------------------------------------
# Parsing: text and token ids both become segments (special token or plain text), and one
# parser reads segments. From ids the split is exact; from text, a plain string that spells a
# special token (a program that prints "<|frame_sep|>") cannot be told from the token.

Segment = tuple  # (is_special: bool, text: str)
_SPECIAL_PATTERN = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


def text_segments(text: str) -> list[Segment]:
    """Split text at every special token."""
    return [(i % 2 == 1, part) for i, part in enumerate(_SPECIAL_PATTERN.split(text)) if part]


@dataclass
class ParsedTrace:
    """What a parse found: the context (if the input had one), the frames (each may carry an
    `error`), and whether `<|end_of_text|>` closed the sequence."""

    context: str | None
    frames: list[Frame]
    ended: bool

    @property
    def valid(self) -> bool:
        return all(f.error is None for f in self.frames)


def parse_trace(text: str) -> ParsedTrace:
    """Parse a whole sequence, or a run of frames. Never raises: a malformed frame comes back
    with `error` set, and parsing goes on at the next `<|frame_sep|>`."""
    return parse_segments(text_segments(text))


def parse_frames(text: str) -> list[Frame]:
    """Parse a run of frames (model output after a prompt)."""
    return parse_segments(text_segments(text)).frames


def parse_segments(segments: list[Segment]) -> ParsedTrace:
    """The parser behind `parse_trace` and `tracekit.format.tokenizer.parse_ids`."""
    i, context = 0, None
    if i < len(segments) and segments[i] == (True, BEGIN_OF_TEXT):
        i += 1
    if i < len(segments) and segments[i] == (True, TRACE_CONTEXT_START):
        i += 1
        parts = []
        while i < len(segments) and segments[i] != (True, FRAME_SEP):
            parts.append(segments[i][1])
            i += 1
        context = "".join(parts)
        if i == len(segments):
            return ParsedTrace(context, [], False)
        i += 1
    frames, chunk, ended = [], [], False
    for special, text in segments[i:]:
        if special and text == END_OF_TEXT:
            ended = True
            break
        if special and text == FRAME_SEP:
            frames.append(_parse_chunk(chunk))
            chunk = []
        elif special and text in TOKEN_EVENTS and chunk:
            # A new event token before the <|frame_sep|>: close the broken frame, start anew.
            frame = _parse_chunk(chunk)
            frame.error = f"missing <|frame_sep|> before {text}" + (
                f" ({frame.error})" if frame.error else "")
            frames.append(frame)
            chunk = [(special, text)]
        else:
            chunk.append((special, text))
    if chunk:
        frame = _parse_chunk(chunk)
        frame.error = "truncated: no <|frame_sep|> at the end" + (
            f" ({frame.error})" if frame.error else "")
        frames.append(frame)
    return ParsedTrace(context, frames, ended)


def _parse_chunk(chunk: list[Segment]) -> Frame:
    """One frame's segments, without its closing `<|frame_sep|>`. Never raises."""
    if not chunk or not chunk[0][0] or chunk[0][1] not in TOKEN_EVENTS:
        start = "".join(text for _, text in chunk)[:30]
        return Frame("line", None, "", error=f"bad event token at {start!r}")
    event = TOKEN_EVENTS[chunk[0][1]]
    fields, current = [], []  # plain text between the separators
    separators = []
    for special, text in chunk[1:]:
        if special:
            if text not in (ACTION_SEP, ARG_SEP):
                return Frame(event, None, "", error=f"unexpected {text} inside a frame")
            fields.append("".join(current))
            separators.append(text)
            current = []
        else:
            current.append(text)
    fields.append("".join(current))
    if event in ("call", "line"):
        if separators != [ACTION_SEP]:
            problem = ("a value (<|arg_sep|>) in a {} frame" if ARG_SEP in separators
                       else "missing <|action_sep|>" if not separators
                       else "more than one <|action_sep|>")
            return Frame(event, None, "", error=problem.format(event))
        state, error = _parse_locals(fields[0])
        return Frame(event, None, fields[1], state, error=error)
    if separators != [ACTION_SEP, ARG_SEP]:
        problem = ("missing <|action_sep|>" if ACTION_SEP not in separators
                   else f"missing <|arg_sep|> in a {event} frame" if ARG_SEP not in separators
                   else f"separators out of order in a {event} frame")
        return Frame(event, None, "", error=problem)
    if fields[0]:
        return Frame(event, None, fields[1], error=f"locals in a {event} frame")
    value = fields[2]
    try:
        arg = json.loads(value)
    except ValueError:
        return Frame(event, None, fields[1], error=f"value is not valid JSON: {value[:40]!r}")
    if not isinstance(arg, str):
        return Frame(event, None, fields[1], error=f"value is not a JSON string: {value[:40]!r}")
    return Frame(event, None, fields[1], None, arg)


def _parse_locals(text: str) -> tuple[dict | None, str | None]:
    try:
        state = json.loads(text)
    except ValueError:
        return None, f"locals are not valid JSON: {text[:40]!r}"
    if not isinstance(state, dict):
        return None, f"locals are not a JSON object: {text[:40]!r}"
    bad = [name for name, value in state.items() if not isinstance(value, str)]
    if bad:
        return None, f"non-string value for {bad[0]!r} in the locals"
    return state, None
