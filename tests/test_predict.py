"""The prediction engine on a random tiny CWM model (CWM's vocabulary, so real trace prompts):
teacher forcing equals next_frame per prefix, rollout equals repeated next_frame, backends
agree, sessions run only new tokens, malformed output never raises."""

from __future__ import annotations

import pytest
import torch

from model.backends import RuntimeBackend, TransformersBackend
from model.config import CwmConfig
from model.modeling import CwmForCausalLM
from model.predictor import Sampling, TracePredictor
from tracekit.trace import Frame, Trace
from tracekit.tracer import trace_source

transformers = pytest.importorskip("transformers")

TINY_CWM = dict(vocab_size=128256, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=16,
                max_position_embeddings=2048, bos_token_id=128000, eos_token_id=[128001],
                pad_token_id=128004,
                layer_types=["full_attention", "sliding_attention", "full_attention"])

PROGRAM = '''
def count_vowels(text):  # << START_OF_TRACE
    n = 0
    for ch in text:
        if ch in "aeiou":
            n += 1
    return n
'''


def tiny_models(seed: int = 0):
    """Ours (exact path) and transformers' with the same random weights."""
    torch.manual_seed(seed)
    reference = transformers.CwmForCausalLM(
        transformers.CwmConfig(**TINY_CWM, attn_implementation="eager")).eval()
    ours = CwmForCausalLM(CwmConfig(**TINY_CWM, dtype="float32")).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


@pytest.fixture(scope="module")
def trace() -> Trace:
    return Trace.from_dict(trace_source(PROGRAM, call="count_vowels('tracekit')"))


@pytest.fixture(scope="module")
def models():
    return tiny_models()


def test_teacher_forcing_equals_next_frame_per_prefix(trace, models):
    _, ours = models
    predictor = TracePredictor(RuntimeBackend(ours, branch_batch=5), max_frame_tokens=24)
    forced = predictor.teacher_forced(trace.context, trace.frames)
    assert len(forced) == len(trace.frames) > 10
    for i, prediction in enumerate(forced):
        alone = predictor.next_frame(trace.context, trace.frames[:i])
        assert prediction.tokens == alone.tokens, i
        assert prediction.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
        assert prediction.frame == alone.frame


def test_rollout_equals_repeated_next_frame_and_stops_with_a_reason(trace, models):
    _, ours = models
    predictor = TracePredictor(RuntimeBackend(ours), max_frame_tokens=24)
    rollout = predictor.rollout(trace.context, trace.frames[:3], max_frames=5)
    frames = list(trace.frames[:3])
    for step in rollout.steps:
        assert step.tokens == predictor.next_frame(trace.context, frames).tokens
        if step.frame is not None and step.error is None:
            frames.append(step.frame)
    assert rollout.stop in ("end_of_text", "max_frames", "budget", "malformed")
    # random weights write garbage: it comes back as a frame with an error, not an exception
    assert rollout.stop == "malformed" and rollout.steps[-1].error
    budget = predictor.rollout(trace.context, trace.frames[:3], budget_tokens=10)
    assert budget.stop == "budget" and budget.tokens_used == 10


def test_backends_agree_on_the_same_weights(trace, models):
    reference, ours = models
    runtime = TracePredictor(RuntimeBackend(ours), max_frame_tokens=24)
    hf = TracePredictor(TransformersBackend(reference), max_frame_tokens=24)
    for i in (0, 4, 9):
        a = runtime.next_frame(trace.context, trace.frames[:i])
        b = hf.next_frame(trace.context, trace.frames[:i])
        assert a.tokens == b.tokens
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    forced = runtime.teacher_forced(trace.context, trace.frames[:6])
    assert [p.tokens for p in forced] == [p.tokens for p in
                                         hf.teacher_forced(trace.context, trace.frames[:6])]


def test_a_session_runs_only_the_new_tokens(trace, models):
    _, ours = models
    seen = []  # tokens per forward pass (per row)

    def count(module, args, kwargs):
        seen.append((args[0] if args else kwargs["input_ids"]).shape[1])

    hook = ours.register_forward_pre_hook(count, with_kwargs=True)
    try:
        predictor = TracePredictor(RuntimeBackend(ours), max_frame_tokens=8)
        session = predictor.session(trace.context)
        for i, frame in enumerate(trace.frames[:8]):
            seen.clear()
            prediction = session.step()
            if i:  # the frame appended last (less what the cache shares with it), then decode
                assert seen[0] <= len(predictor.frame_ids(trace.frames[i - 1]))
                assert seen[1:] == [1] * (len(prediction.tokens) - 1)
            session.append(frame)
        session.step()
        seen.clear()
        again = session.step(sampling=Sampling(temperature=1.0, seed=1))  # re-sample it
        assert seen[0] == 1 and sum(seen) == len(again.tokens)  # the prompt is all cached
        session.back(2)  # step back: the cache keeps the common prefix
        seen.clear()
        session.step()
        assert seen[0] == 1
    finally:
        hook.remove()


def test_forced_event_and_malformed_output_never_raise(trace, models):
    _, ours = models
    predictor = TracePredictor(RuntimeBackend(ours), max_frame_tokens=6)
    prediction = predictor.next_frame(trace.context, trace.frames[:2], force_event="return")
    assert prediction.tokens[0] == 128102 and prediction.frame.event == "return"
    assert prediction.error  # six random tokens are no frame
    for garbage in ([], [5, 6, 7], [128100], [128103, 128100], [128001], [128104, 12, 128001]):
        read = predictor.read(garbage, [0.0] * len(garbage))
        assert read.ended or read.error or read.frame is not None
    assert predictor.read([128001], [0.0]).ended
    assert predictor.read([], []).error == "empty output"
    assert isinstance(Frame("line", 1, ""), Frame)
