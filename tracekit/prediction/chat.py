"""CWM's chat through any backend: messages rendered to a prompt (the checkpoint's own chat
template when it ships one, as transformers' `apply_chat_template` renders it; else tracekit's
template, `prompts.chat_prompt`), one generation to `<|eot_id|>`, and the reply split into its
thinking and its answer at `</think>`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tracekit.format.prompts import REASONING_SYSTEM_PROMPT, ROLES, chat_prompt

END_OF_TURN = ("<|eot_id|>", "<|end_of_text|>")  # a reply ends at the first of these
THINK_END = "</think>"
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


class ChatError(ValueError):
    """A chat template or a message list that cannot be rendered; one line naming the cause."""


class CheckpointTemplate:
    """A checkpoint's own Jinja chat template, rendered in the environment transformers uses
    for `apply_chat_template` (sandboxed; trim_blocks, lstrip_blocks, loop controls; its
    `tojson`, `raise_exception`, `strftime_now`; the tokenizer's special tokens by name)."""

    def __init__(self, source: str, specials: dict[str, str], origin: str = "template"):
        self.source, self.specials, self.origin = source, specials, origin
        try:
            self.compiled = _checkpoint_template_environment().from_string(source)
        except Exception as exc:  # noqa: BLE001 - jinja's syntax errors, one line
            raise ChatError(f"{origin}: the chat template does not parse ({exc})") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True,
               **template_kwargs) -> str:
        values = {**self.specials, **template_kwargs}  # (as transformers: kwargs win)
        try:
            return self.compiled.render(messages=_alias_reasoning(messages), tools=None,
                                        documents=None,
                                        add_generation_prompt=add_generation_prompt, **values)
        except Exception as exc:  # noqa: BLE001 - raise_exception in a template, bad fields
            raise ChatError(f"{self.origin}: the chat template failed on these messages "
                            f"({type(exc).__name__}: {exc})") from None


@functools.lru_cache(maxsize=1)
def _checkpoint_template_environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    return env


def _alias_reasoning(messages: list[dict]) -> list[dict]:
    """transformers fills `reasoning_content` and `thinking` from whichever of the two (or
    `reasoning`) a message has."""
    out = []
    for m in messages:
        reasoning = next((m[k] for k in ("reasoning_content", "thinking", "reasoning")
                          if m.get(k) is not None), None)
        out.append({"thinking": reasoning, **m, "reasoning_content": reasoning}
                   if reasoning is not None else dict(m))
    return out


def checkpoint_template(directory: str | Path | None) -> CheckpointTemplate | None:
    """The chat template a checkpoint ships (`chat_template.jinja`, else `tokenizer_config.json`'s
    `chat_template`, the one named "default" when it holds several), or None."""
    if directory is None:
        return None
    directory = Path(directory)
    config_path = directory / "tokenizer_config.json"
    config = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ChatError(f"{config_path}: not valid JSON ({exc})") from None
    specials = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            specials[key] = value
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return CheckpointTemplate(jinja_file.read_text(encoding="utf-8"), specials,
                                  str(jinja_file))
    source = config.get("chat_template")
    if isinstance(source, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if isinstance(source, str) and source:
        return CheckpointTemplate(source, specials, str(config_path))
    return None


@dataclass(frozen=True)
class ChatOptions:
    enable_thinking: bool = True
    preserve_previous_think: bool = True
    system: str | None = REASONING_SYSTEM_PROMPT  # put first when the messages have none


def render_chat(messages: list[dict], options: ChatOptions = ChatOptions(),
                template: CheckpointTemplate | None = None,
                add_generation_prompt: bool = True) -> str:
    """The prompt for `messages`: by the checkpoint's template when given (with
    `enable_thinking` and `preserve_previous_think` passed to it, as CWM's model card does),
    else by tracekit's own."""
    check_messages(messages)
    if template is None:
        return chat_prompt(messages, add_generation_prompt, options.enable_thinking,
                           options.preserve_previous_think, options.system)
    if options.system is not None and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": options.system}, *messages]
    return template.render(messages, add_generation_prompt,
                           enable_thinking=options.enable_thinking,
                           preserve_previous_think=options.preserve_previous_think)


def server_prompt(tokenizer, template: CheckpointTemplate | None):
    """`tracekit serve`'s chat renderer: (messages, chat_template_kwargs) to prompt ids, the
    messages rendered as given (no system prompt added), as vLLM renders them."""
    from tracekit.format.tokenizer import encode

    def render(messages, kwargs: dict) -> list[int]:
        known = {"enable_thinking", "preserve_previous_think"}
        if template is None and set(kwargs) - known:
            raise ChatError(f"chat_template_kwargs: {sorted(set(kwargs) - known)[0]!r} is not "
                            f"read by tracekit's template (it reads {', '.join(sorted(known))})")
        for key in known & set(kwargs):
            if not isinstance(kwargs[key], bool):
                raise ChatError(f"chat_template_kwargs.{key} must be true or false")
        check_messages(messages)
        if template is not None:
            text = template.render(messages, True, **kwargs)
        else:
            text = chat_prompt(messages, True, kwargs.get("enable_thinking", True),
                               kwargs.get("preserve_previous_think", True), None)
        return encode(tokenizer, text)

    return render


def check_messages(messages) -> None:
    """Raise ChatError unless `messages` is a non-empty list of {role, content: str} dicts."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ChatError(f"messages[{i}]: role must be one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ChatError(f"messages[{i}]: content must be a string")


@dataclass(frozen=True)
class Reply:
    text: str  # everything generated, the end-of-turn token left out
    thinking: str | None  # before </think>, when the prompt opened a <think> block
    answer: str | None  # after </think> (the whole text without thinking); None if cut off
    tokens: int | None  # generated, the end-of-turn token included (None: a server streamed)
    stopped: bool  # ended at an end-of-turn token, not at the budget

    @property
    def truncated_in_thinking(self) -> bool:
        return self.thinking is not None and self.answer is None


def split_reply(text: str, thinking: bool, tokens: int | None, stopped: bool) -> Reply:
    """A reply split at the first </think> (when the prompt ended inside <think>)."""
    if thinking and text.lstrip().startswith("<think>"):  # a template that let the model open it
        text = text.lstrip()[len("<think>"):]
    if not thinking:
        return Reply(text, None, text.strip(), tokens, stopped)
    head, found, tail = text.partition(THINK_END)
    if not found:  # the budget ended inside <think> (or the model never closed it)
        return Reply(text, head.strip(), None, tokens, stopped)
    return Reply(text, head.strip(), tail.strip(), tokens, stopped)


def chat_reply(backend, tokenizer, prompt: str, max_new_tokens: int, sampling,
               on_text: Callable[[str], None] | None = None) -> Reply:
    """Generate one assistant turn for a rendered `prompt`; `on_text` receives the text as it
    is decoded (each piece once, the end-of-turn token left out)."""
    from tracekit.format.tokenizer import decode, encode

    ids = encode(tokenizer, prompt)
    stops = tuple(tokenizer.special_ids[t] for t in END_OF_TURN if t in tokenizer.special_ids)
    generated: list[int] = []
    shown = [0]  # characters of the decoded text already passed to on_text

    def stream(new: list[int]) -> None:
        generated.extend(new)
        body = [t for t in generated if t not in stops]
        text = decode(tokenizer, body)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        if len(text) > shown[0]:
            on_text(text[shown[0]:])
            shown[0] = len(text)

    result = backend.generate([ids], max_new_tokens, stops, sampling,
                              on_tokens=stream if on_text else None)[0]
    body = result.tokens[:-1] if result.stopped else result.tokens
    text = decode(tokenizer, body)
    if on_text and len(text) > shown[0]:
        on_text(text[shown[0]:])
    return split_reply(text, thinking_opened(prompt), len(result.tokens), result.stopped)


def chat_turn(predictor, messages: list[dict], options: ChatOptions,
              template: CheckpointTemplate | None, max_tokens: int, sampling,
              on_text: Callable[[str], None] | None = None) -> Reply:
    """The assistant's next turn after `messages`. A server (the openai backend) renders them
    with its own template through its chat endpoint; any other backend gets the prompt
    rendered here and continues it, at most to the end of the model's context. Raises
    ContextError (does not fit), ChatError (cannot render) and BackendError."""
    from tracekit.format.tokenizer import encode
    from tracekit.model.backends import OpenAIBackend
    from tracekit.model.errors import ContextError

    backend = predictor.backend
    if isinstance(backend, OpenAIBackend):
        check_messages(messages)
        if options.system is not None and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": options.system}, *messages]
        text, stopped, tokens = backend.chat(
            messages, max_tokens, sampling,
            {"enable_thinking": options.enable_thinking,
             "preserve_previous_think": options.preserve_previous_think}, on_text)
        return split_reply(text, options.enable_thinking, tokens, stopped)
    prompt = render_chat(messages, options, template)
    config = predictor.local_config
    if config is not None:
        room = config.max_position_embeddings - len(encode(predictor.tokenizer, prompt))
        if room < 1:
            raise ContextError(f"the conversation no longer fits the model's context of "
                               f"{config.max_position_embeddings} tokens: start a new one "
                               "(/reset in tracekit chat)")
        max_tokens = min(max_tokens, room)
    return chat_reply(backend, predictor.tokenizer, prompt, max_tokens, sampling, on_text)


def thinking_opened(prompt: str) -> bool:
    """Whether a rendered prompt leaves the assistant inside a <think> block."""
    return re.search(r"<think>\s*$", prompt) is not None
