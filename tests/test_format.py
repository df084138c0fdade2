"""The CWM wire format, prompts and tokenizers: known answers, round trips, malformed output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.golden.expected_for import EXPECTED, PROGRAMS
from tracekit.cli import main
from tracekit.format.cwm import (
    BEGIN_OF_TEXT,
    END_OF_TEXT,
    FRAME_SEP,
    SPECIAL_TOKENS,
    TRACE_CONTEXT_START,
    frame_segments,
    parse_frames,
    parse_trace,
    prompt_segments,
    state_json,
)
from tracekit.format.prompts import (
    REASONING_SYSTEM_PROMPT,
    chat_prompt,
    output_prediction_prompt,
    plain_trace,
    trace_prompt,
    trace_prompt_ids,
    trace_text,
)
from tracekit.format.tokenizer import (
    HFTokenizer,
    cwm_tokenizer,
    decode,
    encode,
    encode_segments,
    load_tokenizer,
    parse_ids,
)
from tracekit.format.trace import Frame, Trace
from tracekit.tracer.context import call_from_comment
from tracekit.tracer.run import trace_source

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tok():
    return cwm_tokenizer()


def traced(name: str) -> Trace:
    source = (PROGRAMS / f"{name}.py").read_text()
    return Trace.from_dict(trace_source(source, call=call_from_comment(source)))


# --- tokenizer known answers -----------------------------------------------------------------

def test_cwm_tokenizer_known_answer(tok):
    text = ("Okay, I need to write a Python function that adds two numbers. "
            "Let's start by recalling how")
    assert tok.encode_plain(text) == [33413, 11, 358, 1205, 311, 3350, 264, 13325, 734, 430,
                                      11621, 1403, 5219, 13, 6914, 596, 1212, 555, 89746, 1268]
    assert decode(tok, tok.encode_plain(text)) == text


def test_cwm_special_token_ids(tok):
    ids = tok.special_ids
    assert (ids["<|frame_sep|>"], ids["<|call_sep|>"], ids["<|trace_context_start|>"],
            ids["<|eot_id|>"]) == (128100, 128103, 128107, 128009)
    assert tok.vocab_size == 128256
    assert sorted(SPECIAL_TOKENS.values()) == list(range(128000, 128256))
    assert SPECIAL_TOKENS["<|reserved_special_token_2|>"] == 128002


def test_special_token_text_inside_plain_text_is_not_special(tok):
    ids = tok.encode_plain("<|frame_sep|>")
    assert 128100 not in ids and decode(tok, ids) == "<|frame_sep|>"
    assert encode(tok, "a<|frame_sep|>b") == tok.encode_plain("a") + [128100] + tok.encode_plain("b")


# --- rendering: text and ids agree; round trips ----------------------------------------------

GOLDEN_FILES = sorted(EXPECTED.glob("*.cwm"))


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.name)
def test_golden_traces_parse_back_to_themselves(path, tok):
    text = path.read_text()
    parsed = parse_trace(text)
    assert parsed.valid and parsed.ended
    assert trace_prompt(parsed.context, parsed.frames, end=parsed.ended) == text
    from_ids = parse_ids(tok, encode(tok, text))
    assert from_ids.frames == parsed.frames and from_ids.context == parsed.context


@pytest.mark.parametrize("name", ["generator", "exception_escapes_callee", "non_ascii",
                                  "strings_quotes_newlines", "large_ints", "loop_dots"])
def test_text_route_and_segment_route_give_the_same_ids(name, tok):
    trace = traced(name)
    by_text = encode(tok, trace_text(trace))
    by_segments = trace_prompt_ids(tok, trace.context, trace.frames, end=trace.complete)
    assert by_text == by_segments
    assert by_text[:2] == [128000, 128107] and by_text[-1] == 128001
    parsed = parse_trace(trace_text(trace))
    assert [(f.event, f.source, f.locals, f.arg) for f in parsed.frames] == \
           [(f.event, f.source, f.locals, f.arg) for f in trace.frames]


def test_prompts_context_only_first_frames_and_forced_event(tok):
    trace = traced("nested_calls")
    assert trace_prompt(trace.context).endswith("# tracekit-call: sum_squares(2, 3)\n<|frame_sep|>")
    two = trace_prompt(trace.context, trace.frames[:2])
    assert two.endswith('<|line_sep|>{"a": "..", "b": ".."}<|action_sep|>    total = square(a)\n'
                        "<|frame_sep|>")
    forced = trace_prompt(trace.context, trace.frames[:3], force_event="return")
    assert forced.endswith("def square(n):\n<|frame_sep|><|return_sep|>")
    assert encode(tok, forced)[-1] == 128102
    with pytest.raises(ValueError):
        trace_prompt(trace.context, force_event="jump")


def test_values_that_spell_special_tokens_parse_exactly_from_ids(tok):
    frames = [Frame("call", None, "def f(s):\n", {"s": "'<|frame_sep|>'"}),
              Frame("return", None, "    return s\n", None, "'<|frame_sep|>'")]
    ids = trace_prompt_ids(tok, "def f(s):\n    return s\n", frames, end=True)
    parsed = parse_ids(tok, ids)
    assert parsed.valid and parsed.frames == frames


# --- parsing malformed and real-world output -------------------------------------------------

@pytest.mark.parametrize("text, error", [
    ('<|jump_sep|>{}<|action_sep|>x\n<|frame_sep|>', "bad event token"),
    ('{"a": "1"}<|action_sep|>x\n<|frame_sep|>', "bad event token"),
    ('<|line_sep|>{"a": "1"}x\n<|frame_sep|>', "missing <|action_sep|>"),
    ('<|line_sep|>{"a": 1<|action_sep|>x\n<|frame_sep|>', "locals are not valid JSON"),
    ('<|line_sep|>["a"]<|action_sep|>x\n<|frame_sep|>', "not a JSON object"),
    ('<|line_sep|>{"a": 1}<|action_sep|>x\n<|frame_sep|>', "non-string value for 'a'"),
    ('<|line_sep|>{}<|action_sep|>x\n<|arg_sep|>"1"<|frame_sep|>', "a value (<|arg_sep|>) in a line"),
    ('<|return_sep|>{"a": "1"}<|action_sep|>x\n<|arg_sep|>"1"<|frame_sep|>', "locals in a return"),
    ('<|return_sep|><|action_sep|>x\n<|frame_sep|>', "missing <|arg_sep|>"),
    ('<|return_sep|><|action_sep|>x\n<|arg_sep|>7<|frame_sep|>', "not a JSON string"),
    ('<|return_sep|><|action_sep|>x\n<|arg_sep|>"7<|frame_sep|>', "not valid JSON"),
    ('<|line_sep|>{}<|eot_id|><|action_sep|>x\n<|frame_sep|>', "unexpected <|eot_id|>"),
    ('<|line_sep|>{"a": "1"}<|action_sep|>    retu', "truncated"),
])
def test_malformed_frames_get_precise_errors(text, error):
    good = '<|line_sep|>{"a": ".."}<|action_sep|>    y = 1\n<|frame_sep|>'
    after = "" if error == "truncated" else good
    frames = parse_frames(good + text + after)
    assert frames[0].error is None and frames[0].locals == {"a": ".."}
    assert error in frames[1].error
    assert len(frames) == (2 if error == "truncated" else 3)
    assert frames[-1].error is None or error == "truncated"  # parsing went on after the error


def test_a_missing_frame_sep_loses_only_that_frame():
    frames = parse_frames('<|line_sep|>{"a": "1"}<|action_sep|>    x = 1\n'
                          '<|line_sep|>{"a": ".."}<|action_sep|>    y = 2\n<|frame_sep|>')
    assert frames[0].error == "missing <|frame_sep|> before <|line_sep|>"
    assert frames[0].locals == {"a": "1"} and frames[1].error is None


def test_real_world_output_shapes():
    text = ('<|call_sep|>{"s": "\'say \\"hi\\"\'", "t": "\'h\\u00e9\'"}<|action_sep|>def f(s, t):\n'
            '<|frame_sep|><|line_sep|>{"s": "..", "t": ".."}<|action_sep|>    return s + "<|x|>"\n'
            '<|frame_sep|><|return_sep|><|action_sep|>    return s + "<|x|>"\n<|arg_sep|>'
            '"\'say \\"hi\\"<|x|>\'"<|frame_sep|><|line_sep|>{"s": "..", "t": "\'h')
    frames = parse_frames(text)
    assert frames[0].locals == {"s": "'say \"hi\"'", "t": "'hé'"}
    assert frames[1].locals == {"s": "..", "t": ".."}
    assert frames[2].arg == "'say \"hi\"<|x|>'" and frames[2].error is None
    assert frames[3].error.startswith("truncated")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(list(SPECIAL_TOKENS)[:17]),
                         st.sampled_from(['{', '}', '"', ':', ',', '\\', ' ', '\n', 'a', '".."']),
                         st.text(max_size=5))).map("".join))
def test_parser_never_raises_on_arbitrary_text(text):
    parsed = parse_trace(text)
    assert all(isinstance(f, Frame) for f in parsed.frames)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(min_value=-5, max_value=128300),
                          st.sampled_from(list(SPECIAL_TOKENS.values())[:17])), max_size=60))
def test_a_parse_of_arbitrary_token_ids_keeps_no_frame_it_cannot_write_back(ids):
    """Whatever the ids: every frame without an error is one the writer writes and the parser
    reads back as itself, and there is a frame per <|frame_sep|> or event token at most (one
    more for a tail without either)."""
    tok = cwm_tokenizer()
    parsed = parse_ids(tok, ids)
    for frame in parsed.frames:
        if frame.error is None:
            again = parse_ids(tok, encode_segments(tok, frame_segments(frame)))
            assert again.frames == [frame] and not again.ended
    closers = {SPECIAL_TOKENS[t] for t in ("<|frame_sep|>", "<|call_sep|>", "<|line_sep|>",
                                          "<|return_sep|>", "<|exception_sep|>")}
    assert len(parsed.frames) <= sum(i in closers for i in ids) + 1


values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
frames_strategy = st.one_of(
    st.builds(lambda e, loc, src: Frame(e, None, src, loc),
              st.sampled_from(["call", "line"]),
              st.dictionaries(st.text(min_size=1, max_size=5), values, max_size=4),
              values.map(lambda s: s.replace("\n", "") + "\n")),
    st.builds(lambda e, arg, src: Frame(e, None, src, None, arg),
              st.sampled_from(["return", "exception"]), values,
              values.map(lambda s: s.replace("\n", "") + "\n")),
)


# Frames written by the one writer, and damage that breaks exactly the frame it is in.
DAMAGE = [
    ["<|line_sep|>", '{"a": "1"}', "    a += 1\n", "<|frame_sep|>"],  # no <|action_sep|>
    ["<|line_sep|>", '{"a": 1', "<|action_sep|>", "    a += 1\n", "<|frame_sep|>"],  # bad JSON
    ["<|call_sep|>", '{"a": 1}', "<|action_sep|>", "def f(a):\n", "<|frame_sep|>"],  # a number
    ["<|line_sep|>", "<|reserved_special_token_7|>", "<|action_sep|>", "x\n", "<|frame_sep|>"],
    ["<|return_sep|>", "<|action_sep|>", "    return a\n", "<|arg_sep|>", "1", "<|frame_sep|>"],
    ["<|exception_sep|>", "<|action_sep|>", "    raise E\n", "<|frame_sep|>"],  # no value
    ["<|line_sep|>", '{"a": ".."}', "<|action_sep|>", "    a += 1\n"],  # no <|frame_sep|>
    ["stray text", "<|frame_sep|>"],  # plain text where an event token belongs
]
UNCLOSED = 6  # (plain text right after it would join its source: no damage left to see)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(frames_strategy, st.integers(0, len(DAMAGE) - 1)), max_size=8),
       st.booleans())
def test_token_ids_parse_to_their_frames_with_each_damage_one_error_frame(pieces, end):
    """A trace's ids, frames and damaged pieces mixed: the context comes back, each written
    frame parses back to itself, and each damaged piece becomes exactly one frame with an error
    in its place, the parse going on at the next frame. With no damage the frames re-encode
    to the input ids exactly."""
    assume(not any(a == UNCLOSED and b == UNCLOSED + 1 for a, b in zip(pieces, pieces[1:])))
    tok = cwm_tokenizer()
    context = "def f(a):\n    a += 1\n    return a\n"
    segments = [BEGIN_OF_TEXT, TRACE_CONTEXT_START, context, FRAME_SEP]
    for piece in pieces:
        segments += frame_segments(piece) if isinstance(piece, Frame) else DAMAGE[piece]
    if end:
        segments.append(END_OF_TEXT)
    ids = encode_segments(tok, segments)
    parsed = parse_ids(tok, ids)
    assert parsed.context == context
    assert len(parsed.frames) == len(pieces)
    for piece, frame in zip(pieces, parsed.frames):
        if isinstance(piece, Frame):
            assert frame == piece
        else:
            assert frame.error is not None, DAMAGE[piece]
    assert parsed.ended == end
    if all(isinstance(piece, Frame) for piece in pieces):
        assert encode_segments(tok, prompt_segments(context, parsed.frames, end=end)) == ids


@settings(max_examples=300, deadline=None)
@given(st.lists(frames_strategy, max_size=5))
def test_every_renderable_frame_parses_back_to_itself(frames):
    """The one writer's two routes agree for arbitrary frames: the ids decode to the text, the
    text encodes to the ids (unless a value spells a special token, which text cannot tell from
    the token), and both parse back to the frames."""
    tok = cwm_tokenizer()
    ids = trace_prompt_ids(tok, "def f():\n    pass\n", frames, end=True)
    text = trace_prompt("def f():\n    pass\n", frames, end=True)
    assert decode(tok, ids) == text
    parsed = parse_ids(tok, ids)
    assert parsed.frames == frames and parsed.ended
    if "<|" not in repr(frames):
        assert encode(tok, text) == ids
        assert parse_trace(text).frames == frames


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), values, max_size=6))
def test_the_state_writer_is_json_dumps(state):
    assert state_json(state) == json.dumps(state)
    assert state_json(None) == "null" and state_json({"x": 3}) == '{"x": 3}'  # any other way


@pytest.mark.parametrize("name", sorted(p.stem for p in PROGRAMS.glob("*.py")))
def test_parse_of_render_gives_every_traced_frame_back(name):
    trace = traced(name)
    parsed = parse_trace(trace_text(trace))
    assert parsed.context == trace.context and parsed.ended == trace.complete
    assert [(f.event, f.source, f.locals, f.arg) for f in parsed.frames] == \
           [(f.event, f.source, f.locals, f.arg) for f in trace.frames]


# --- chat, output prediction and plain text --------------------------------------------------

def test_chat_template_known_answer():
    text = chat_prompt([{"role": "system", "content": "SYS"}, {"role": "user", "content": "Hi"}])
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSYS<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")


def test_chat_default_system_prompt_and_no_thinking():
    text = chat_prompt([{"role": "user", "content": "Hi"}], enable_thinking=False)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                           "You are a helpful AI assistant. You always reason before responding")
    assert REASONING_SYSTEM_PROMPT.endswith("</think>\nyour external response")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_multi_turn_with_and_without_previous_think():
    messages = [{"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>\nadd them\n</think>\n4"},
                {"role": "tool", "name": "python", "content": "4"},
                {"role": "user", "content": "and 3+3?"}]
    kept = chat_prompt(messages, system_prompt=None)
    dropped = chat_prompt(messages, system_prompt=None, preserve_previous_think=False)
    turn = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert turn + "<think>\nadd them\n</think>\n4<|eot_id|>" in kept
    assert turn + "4<|eot_id|>" in dropped and "add them" not in dropped
    assert "<|start_header_id|>tool: python<|end_header_id|>\n\n4<|eot_id|>" in kept
    assert not kept.startswith("<|begin_of_text|><|start_header_id|>system")
    with pytest.raises(ValueError):
        chat_prompt([{"role": "robot", "content": "x"}])


def test_output_prediction_prompt_and_stop_ids(tok):
    text = output_prediction_prompt("def f(x):\n    return x + 1\n", "f(1)")
    assert "```python\ndef f(x):\n    return x + 1\n```" in text and "Call: `f(1)`" in text
    ids = encode(tok, text)
    assert ids.count(128009) == 2 and ids[:2] == [128000, 128006]
    assert decode(tok, ids) == text


def test_plain_text_trace_has_no_special_tokens():
    text = plain_trace(traced("nested_calls"))
    assert "<|" not in text
    assert "call | def square(n):\n  state: {\"n\": \"2\"}" in text
    assert "return | return result\n  returns: 4" in text and text.rstrip().endswith("End of trace")


# --- a checkpoint's own tokenizer.json -------------------------------------------------------

def test_checkpoint_tokenizer_json_wins(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|frame_sep|>", "<|action_sep|>",
                "<|call_sep|>", "<|line_sep|>", "<|return_sep|>", "<|exception_sep|>",
                "<|arg_sep|>", "<|trace_context_start|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([(PROGRAMS / "loop_dots.py").read_text()] * 5, trainer)
    from tokenizers import decoders
    backend.decoder = decoders.ByteLevel()
    backend.save(str(tmp_path / "tokenizer.json"))

    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, HFTokenizer)
    assert tok.special_ids["<|frame_sep|>"] == specials.index("<|frame_sep|>")
    text = (EXPECTED / "loop_dots.cwm").read_text()
    ids = encode(tok, text)
    assert decode(tok, ids) == text
    assert parse_ids(tok, ids).frames == parse_trace(text).frames
    assert isinstance(load_tokenizer(tmp_path / "missing"), type(cwm_tokenizer()))


# --- CLI ---------------------------------------------------------------------------------------

def test_prompt_command_text_ids_and_count(tok):
    sample = str(ROOT / "data" / "programs" / "fibonacci_recursive.py")
    runner = CliRunner()
    text = runner.invoke(main, ["prompt", sample, "--frames", "2"]).output
    ids = runner.invoke(main, ["prompt", sample, "--frames", "2", "--ids"]).output.split()
    count = runner.invoke(main, ["prompt", sample, "--frames", "2", "--count"]).output
    assert [int(i) for i in ids] == encode(tok, text)
    assert int(count) == len(ids)
    assert text.count("<|frame_sep|>") == 3
    forced = runner.invoke(main, ["prompt", sample, "--frames", "1", "--force", "return"]).output
    assert forced.endswith("def fib(n):\n<|frame_sep|><|return_sep|>")
    chat = runner.invoke(main, ["prompt", sample, "--chat"]).output
    assert "Call: `fib(4)`" in chat and "START_OF_TRACE" not in chat


@pytest.fixture(scope="module")
def converted_tokenizer(converted_tokenizer_dir):
    return load_tokenizer(converted_tokenizer_dir)


def varied_documents(megabytes: float = 3.0) -> list[str]:
    """A few MB of real, varied text: the standard library's sources, then seeded mixed-script
    text with odd whitespace, digits, emoji and special tokens spliced in."""
    import random
    import sysconfig

    documents, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        documents.append(text)
        size += len(text.encode())
        if size > megabytes * 2 ** 20:
            break
    rng = random.Random(0)
    alphabet = ("abcXYZ éüßñ ΑΒΓαβγ Жжя 中文字 日本語 한국어 العربية हिन्दी 😀🚀 0123456789 "
                " \t\n\r\n  \u00a0\u2028 ()[]{}<>|'\"\\/:;,.!?-_=+*&^%$#@~`")
    for _ in range(200):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
                 for _ in range(rng.randint(5, 200))]
        specials = [rng.choice(list(SPECIAL_TOKENS)) for _ in range(3)]
        documents.append(" ".join(words[:len(words) // 2]) + specials[0] + " ".join(words) +
                         specials[1] + specials[2])
    return documents


def test_converted_tokenizer_json_matches_the_tiktoken_route(converted_tokenizer, tok):
    assert converted_tokenizer.special_ids == tok.special_ids
    goldens = [path.read_text() for path in GOLDEN_FILES]
    documents = varied_documents()
    assert sum(len(d.encode()) for d in documents) > 3 * 2 ** 20
    for text in goldens + documents:
        ids = encode(tok, text)
        assert encode(converted_tokenizer, text) == ids
        assert decode(converted_tokenizer, ids) == decode(tok, ids)
