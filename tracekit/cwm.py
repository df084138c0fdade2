"""The CWM wire format (spec sections 1-2): a trace as the text sequence CWM was trained on."""

from __future__ import annotations

import json

from tracekit.trace import Frame, Trace

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


def frame_text(frame: Frame) -> str:
    """One frame, ending with `<|frame_sep|>`."""
    head = EVENT_TOKENS[frame.event]
    if frame.event in ("call", "line"):
        return f"{head}{json.dumps(frame.locals)}{ACTION_SEP}{frame.source}{FRAME_SEP}"
    return f"{head}{ACTION_SEP}{frame.source}{ARG_SEP}{json.dumps(frame.arg)}{FRAME_SEP}"


def trace_text(trace: Trace) -> str:
    """The full sequence, `<|begin_of_text|>` ... `<|end_of_text|>`.

    A trace that did not run to the entry's final return (a limit, a crash) gets no
    `<|end_of_text|>`: the sequence stops after its last recorded frame.
    """
    frames = "".join(frame_text(f) for f in trace.frames)
    end = END_OF_TEXT if trace.complete else ""
    return f"{BEGIN_OF_TEXT}{TRACE_CONTEXT_START}{trace.context}{FRAME_SEP}{frames}{end}"
