"""Prompts: CWM trace prompts (text and ids, both from the one writer `cwm.prompt_segments`),
and, from the jinja2 templates in `tracekit/templates/` (as Hugging Face chat templates are
written), CWM's chat format, an output-prediction prompt, and a plain-text trace for models
without CWM's tokens.
"""

from __future__ import annotations

import functools
import json
import re

import jinja2

from tracekit.format.cwm import prompt_segments, prompt_text
from tracekit.format.trace import Frame, Trace

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
ROLES = ("system", "user", "assistant", "tool")


@functools.lru_cache(maxsize=1)
def _shipped_templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("tracekit", "templates"),
                             autoescape=False, undefined=jinja2.StrictUndefined)
    env.filters["json"] = json.dumps  # default settings, as CWM's data (jinja's tojson is not)
    return env


def render(template: str, **values) -> str:
    """Render `tracekit/templates/<template>.jinja`."""
    return _shipped_templates().get_template(f"{template}.jinja").render(**values)


REASONING_SYSTEM_PROMPT = render("reasoning_system")


def trace_prompt(context: str, frames: list[Frame] = (), force_event: str | None = None,
                 end: bool = False) -> str:
    """`<|begin_of_text|><|trace_context_start|>CONTEXT<|frame_sep|>` + `frames`, then
    optionally a forced next event token (e.g. "return" after a call frame, to step over the
    call), or `<|end_of_text|>` with `end`. With no frames the model predicts from the call
    frame on; with the first k real frames it continues a real trace."""
    return prompt_text(context, frames, force_event, end)


def trace_text(trace: Trace) -> str:
    """A whole trace, `<|begin_of_text|>` ... `<|end_of_text|>`. A trace that did not run to the
    entry's final return (a limit, a crash) gets no `<|end_of_text|>`."""
    return trace_prompt(trace.context, trace.frames, end=trace.complete)


def trace_prompt_ids(tokenizer, context: str, frames: list[Frame] = (),
                     force_event: str | None = None, end: bool = False) -> list[int]:
    """The same prompt as token ids: special tokens as ids, the rest encoded as plain text (so
    a value that spells a special token stays text, which the text route cannot tell)."""
    from tracekit.format.tokenizer import encode_segments

    return encode_segments(tokenizer, prompt_segments(context, frames, force_event, end))


def chat_prompt(messages: list[dict], add_generation_prompt: bool = True,
                enable_thinking: bool = True, preserve_previous_think: bool = True,
                system_prompt: str | None = REASONING_SYSTEM_PROMPT) -> str:
    """CWM's chat format. `messages`: dicts with `role` (system, user, assistant, tool) and
    `content`; tool messages may carry a `name` (rendered `tool: NAME`). Without a system
    message, `system_prompt` (CWM's reasoning prompt) comes first. With
    `preserve_previous_think=False`, earlier assistant turns lose their <think> blocks."""
    messages = [dict(m) for m in messages]
    for m in messages:
        if m.get("role") not in ROLES:
            raise ValueError(f"unknown role {m.get('role')!r}: use one of {', '.join(ROLES)}")
        if not preserve_previous_think and m["role"] == "assistant":
            m["content"] = _THINK_BLOCK.sub("", m["content"])
    if system_prompt is not None and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return render("chat", messages=messages, add_generation_prompt=add_generation_prompt,
                  enable_thinking=enable_thinking)


def output_prediction_question(code: str, call: str) -> str:
    """The user turn of an output-prediction chat: given code and a call, reason, then answer
    the value between [OUTPUT] and [/OUTPUT]. A trace's entry marker is left out."""
    from tracekit.tracer.constants import MARKER

    return render("output_prediction", code=code.replace(MARKER, "").rstrip("\n"), call=call)


def output_prediction_prompt(code: str, call: str, **chat_options) -> str:
    """A CRUXEval-O style chat prompt (`output_prediction_question` as the user's turn)."""
    return chat_prompt([{"role": "user", "content": output_prediction_question(code, call)}],
                       **chat_options)


def plain_trace(trace: Trace) -> str:
    """The trace as plain text, one block per frame, for models without CWM's special tokens."""
    return render("trace_plain", context=trace.context, call=trace.call, entry=trace.entry,
                  frames=trace.frames, end=trace.complete)
