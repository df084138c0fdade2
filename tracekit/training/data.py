"""Traces as training data: a compact tokenizer trained on their wire text, and whole traces
packed into fixed-length rows of token ids for `tracekit.training.loop`.

The tokenizer is a byte-level BPE (Hugging Face `tokenizers`) with every digit its own token and
each of CWM's 256 special tokens a named special token, so prompts, parsing and metrics work on
it as on CWM's own (`tracekit.format.tokenizer.HFTokenizer` reads the `tokenizer.json` it writes).
A row holds whole traces, each `<|begin_of_text|> ... <|end_of_text|>`; a trace longer than a
row is dropped, never split; attention and positions restart with each trace in a row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracekit.format.cwm import FRAME_SEP, SPECIAL_TOKENS, prompt_segments, text_segments
from tracekit.format.tokenizer import HFTokenizer, Tokenizer, encode_segments
from tracekit.format.trace import Trace
from tracekit.training.loop import Rows

TOKENIZER_SAMPLE_CHARS = 16_000_000  # a sample this size learns nearly the same merges


def train_tokenizer(texts: Iterable[str], vocab_size: int, path: Path) -> HFTokenizer:
    """Learn a byte-level BPE of `vocab_size` (CWM's special tokens included) from `texts`
    (wire text: the special tokens in it are not learned from) and write it to `path`. Of
    more than `TOKENIZER_SAMPLE_CHARS` characters it reads every k-th text, spread evenly
    (what that costs and saves: benchmarks/RESULTS.md, "The tokenizer's sample")."""
    from tokenizers import Tokenizer as HFBackend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials = sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.get)
    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = list(texts)
    stride = math.ceil(sum(map(len, texts)) / TOKENIZER_SAMPLE_CHARS) or 1
    backend.train_from_iterator(_plain_parts(texts[::stride]), trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(path))
    return HFTokenizer(path)


def _plain_parts(texts: Iterable[str]) -> Iterable[str]:
    """The text between special tokens: what the BPE learns merges from."""
    for text in texts:
        yield from (part for special, part in text_segments(text) if not special)


@dataclass
class Packing:
    rows: Rows
    traces: int  # packed
    dropped: int  # longer than a row
    tokens: int  # in the packed traces
    long_frames: int = 0  # left out for a frame longer than max_frame_tokens


def trace_ids(tokenizer: Tokenizer, trace: Trace) -> tuple[list[int], int]:
    """A whole trace as ids (the one writer's segments, encoded), and where its frames start
    (the context before that is the prompt)."""
    segments = prompt_segments(trace.context, trace.frames, end=True)
    prompt = encode_segments(tokenizer, segments[:4])  # BOS, context start, context, frame sep
    assert segments[3] == FRAME_SEP
    return prompt + encode_segments(tokenizer, segments[4:]), len(prompt)


def pack(traces: Iterable[Trace], tokenizer: Tokenizer, length: int,
         loss_on_context: bool = False, max_frame_tokens: int | None = None) -> Packing:
    """Whole traces packed first-fit, in order, into rows of `length` tokens (padding at a
    row's end: its own document, no loss). Targets are the next token inside each trace;
    the context's tokens get none unless `loss_on_context`. With `max_frame_tokens`, a trace
    with a longer frame (its tokens and the separator that ends it) is left out: a frame the
    predictor, which cuts a frame there, could never write."""
    pad = tokenizer.special_ids["<|pad|>"]
    frame_sep = tokenizer.special_ids[FRAME_SEP]
    rows: list[list[tuple[list[int], int]]] = []
    room: list[int] = []
    dropped = packed = tokens = long_frames = 0
    for trace in traces:
        ids, prompt = trace_ids(tokenizer, trace)
        if len(ids) > length:
            dropped += 1
            continue
        if max_frame_tokens is not None and _longest_frame(ids, prompt, frame_sep) > \
                max_frame_tokens:
            long_frames += 1
            continue
        packed, tokens = packed + 1, tokens + len(ids)
        # first fit among the last few open rows keeps the order nearly that of the data
        for r in range(max(0, len(rows) - 8), len(rows)):
            if room[r] >= len(ids):
                rows[r].append((ids, prompt))
                room[r] -= len(ids)
                break
        else:
            rows.append([(ids, prompt)])
            room.append(length - len(ids))
    n = len(rows)
    out = Rows(np.full((n, length), pad, dtype=np.int64), np.zeros((n, length), np.int32),
               np.full((n, length), -100, dtype=np.int64))
    for r, documents in enumerate(rows):
        at = 0
        for d, (ids, prompt) in enumerate(documents):
            end = at + len(ids)
            out.tokens[r, at:end] = ids
            out.documents[r, at:end] = d
            first_target = 1 if loss_on_context else prompt  # predict from the frames on
            out.targets[r, at + first_target - 1:end - 1] = ids[first_target:]
            at = end
        out.documents[r, at:] = len(documents)  # the padding, a document of its own
    return Packing(out, packed, dropped, tokens, long_frames)


def _longest_frame(ids: list[int], prompt: int, frame_sep: int) -> int:
    """The most tokens of one frame in a trace's ids (the prompt ends with a frame
    separator; each frame ends with one)."""
    ends = np.flatnonzero(np.asarray(ids[prompt - 1:]) == frame_sep)
    return int(np.diff(ends).max()) if len(ends) > 1 else 0


def function_shapes(source: str) -> dict[str, str]:
    """Each function of `source`, its name -> its body with every local name renamed in order
    of appearance and docstrings dropped (attribute and method names kept): two functions with
    the same shape are the same program up to names. A function that only returns a call (the
    CRUXEval harness's `main`) is left out."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    shapes = {}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        names: dict[str, str] = {}

        def rename(name: str) -> str:
            return names.setdefault(name, f"v{len(names)}")

        # The tree is this call's own, so it is changed in place: a function nested in this
        # one is visited later with its names already renamed, which renaming again in order
        # of appearance maps to the same shape as the original names.
        name = node.name
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:] or [ast.Pass()]
        if len(body) == 1 and isinstance(body[0], ast.Return) \
                and isinstance(body[0].value, ast.Call):
            continue  # a harness (`def main(): return f(...)`), not a program of its own
        node.body, node.name, node.decorator_list = body, "f", []
        for sub in ast.walk(node):
            if isinstance(sub, ast.arg):
                sub.arg = rename(sub.arg)
            elif isinstance(sub, ast.Name):
                sub.id = rename(sub.id)
            elif isinstance(sub, ast.ExceptHandler) and sub.name:  # `except E as err`
                sub.name = rename(sub.name)
        shapes[name] = ast.dump(node, annotate_fields=False)
    return shapes


def leaks(training: Iterable[tuple[str, str]], held_out: Iterable[tuple[str, str]]) -> list[str]:
    """`training id ~ held-out id` for each training program (id, source) with a function of
    the same shape as a held-out program's."""
    seen: dict[str, str] = {}
    for program_id, source in held_out:
        for shape in function_shapes(source).values():
            seen.setdefault(shape, program_id)
    found = []
    for program_id, source in training:
        for shape in function_shapes(source).values():
            if shape in seen:
                found.append(f"{program_id} ~ {seen[shape]}")
                break
    return found
