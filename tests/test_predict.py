"""The prediction engine on a random tiny CWM model (CWM's vocabulary, so real trace prompts):
teacher forcing equals next_frame per prefix, rollout equals repeated next_frame, backends
agree, sessions run only new tokens, malformed output never raises."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import transformers

from tests.test_serve import post
from tracekit.format.prompts import trace_prompt_ids
from tracekit.format.trace import Frame, Trace
from tracekit.model.backends import RuntimeBackend, TransformersBackend
from tracekit.model.config import CwmConfig
from tracekit.model.modeling import CwmForCausalLM
from tracekit.prediction.predict import Sampling, TracePredictor
from tracekit.tracer.run import trace_source

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
    predictor = TracePredictor(RuntimeBackend(ours, branch_batch=5, prefill_chunk=100),
                               max_frame_tokens=24)  # chunks: the prefill runs in several parts
    forced = predictor.teacher_forced(trace.context, trace.frames)
    assert len(forced) == len(trace.frames) > 10
    for i, prediction in enumerate(forced):
        alone = predictor.next_frame(trace.context, trace.frames[:i])
        assert prediction.tokens == alone.tokens, i
        assert prediction.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
        assert prediction.frame == alone.frame


def test_no_frame_is_predicted_past_the_models_context(trace, models):
    """The one rule (docs/trace-format.md section 11) with a context cut to 300 positions:
    teacher forcing predicts exactly the frames whose prompt and real frame end within it
    (counted here from each prefix's own prompt), a rollout stops with "context" having
    never run past it, and a prompt that fills it is refused with ContextError."""
    from tracekit.model.errors import ContextError

    _, ours = models
    predictor = TracePredictor(RuntimeBackend(ours), max_frame_tokens=64)
    limit = 300
    ours.config.max_position_embeddings = limit
    try:
        ends = [len(predictor.prompt(trace.context, trace.frames[:i + 1]))
                for i in range(len(trace.frames))]
        fitting = sum(end <= limit for end in ends)
        assert 0 < fitting < len(trace.frames)
        assert predictor.frames_that_fit(trace.context, trace.frames) == fitting
        forced = predictor.teacher_forced(trace.context, trace.frames)
        assert len(forced) == fitting
        seed = trace.frames[:fitting - 1]
        rollout = predictor.rollout(trace.context, seed, max_frames=50)
        assert rollout.stop == "context"
        used = len(predictor.prompt(trace.context, seed)) + rollout.tokens_used
        assert limit - 64 < used <= limit  # (a frame of the random model fills the room)
        past = trace.frames[:fitting + 1]
        with pytest.raises(ContextError, match=f"tokens and the model reads {limit}"):
            predictor.next_frame(trace.context, past)
        with pytest.raises(ContextError):
            predictor.rollout(trace.context, past)
    finally:
        ours.config.max_position_embeddings = TINY_CWM["max_position_embeddings"]


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
        # one token per forward (no prompt-lookup guesses): every token through is counted
        predictor = TracePredictor(RuntimeBackend(ours, draft_tokens=0), max_frame_tokens=8)
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
        session.back(1)  # step back: the cache keeps the common prefix
        seen.clear()
        session.step()
        assert seen[0] == 1
        session.back(6)  # back to the first frame
        assert session.step().tokens == predictor.next_frame(trace.context,
                                                             trace.frames[:1]).tokens
    finally:
        hook.remove()


def test_a_session_prompt_is_the_predictor_prompt_with_each_frame_encoded_once(trace, models):
    """Session.prompt (the context and each frame encoded once per session) gives exactly the
    ids of predictor.prompt, through appends, a step back, an edited frame and forced events;
    a frame already seen is not encoded again."""
    from dataclasses import replace

    _, ours = models
    predictor = TracePredictor(RuntimeBackend(ours), max_frame_tokens=8)
    session = predictor.session(trace.context)
    encoded = []
    frame_ids = predictor.frame_ids
    predictor.frame_ids = lambda frame: encoded.append(frame) or frame_ids(frame)

    def same(force_event=None):
        assert session.prompt(force_event) == trace_prompt_ids(
            predictor.tokenizer, trace.context, session.frames, force_event)

    same()
    for frame in trace.frames[:6]:
        session.append(frame)
        same()
        same("return")
    assert encoded == trace.frames[:6]  # each once, though the prompt was asked for 13 times
    session.back(2)
    same("line")
    edited = replace(trace.frames[3], locals={**trace.frames[3].locals, "x": "99"})
    session.back(1)
    session.append(edited)
    same()
    assert encoded[-1] is edited and len(encoded) == 7


@pytest.mark.parametrize("draft", [0, 4])
def test_a_session_going_back_past_its_margin_starts_again(trace, models, draft):
    from tracekit.model.backends import RuntimeSession
    from tracekit.model.generation import generate

    _, ours = models
    ids = TracePredictor(RuntimeBackend(ours)).prompt(trace.context, trace.frames[:6])
    session = RuntimeSession(ours, rewind_margin=4, capacity=64,  # grows as needed
                             draft_tokens=draft)
    for prompt in (ids, ids[:40], ids[:-3], ids[:20]):
        assert session.generate(prompt, 5, (), Sampling()).tokens == \
            generate(ours, [prompt], 5)[0].tokens


def test_a_session_step_that_fails_midway_leaves_the_session_usable(trace, models):
    """A step interrupted after its prompt ran (Ctrl-C, an error) must not leave the session
    believing its cache holds what it held before."""
    from tracekit.model.backends import RuntimeSession
    from tracekit.model.generation import generate

    _, ours = models
    ids = TracePredictor(RuntimeBackend(ours)).prompt(trace.context, trace.frames[:6])
    session = RuntimeSession(ours, rewind_margin=64, draft_tokens=4)
    session.generate(ids[:-20], 5, (), Sampling())
    forwards = []

    def interrupt(module, args):
        forwards.append(1)
        if len(forwards) == 2:  # the prompt has overwritten the cache from ids[:-30] on
            raise KeyboardInterrupt

    hook = ours.register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        session.generate(ids[:-30] + [5] * 10, 10, (), Sampling())
    hook.remove()
    assert session.generate(ids[:-20], 10, (), Sampling()).tokens == \
        generate(ours, [ids[:-20]], 10)[0].tokens


def test_forced_event_and_malformed_output_never_raise(trace, models):
    _, ours = models
    predictor = TracePredictor(RuntimeBackend(ours), max_frame_tokens=6)
    prediction = predictor.next_frame(trace.context, trace.frames[:2], force_event="return")
    assert prediction.tokens[0] == 128102 and prediction.frame.event == "return"
    assert prediction.error  # six random tokens are no frame
    # each malformed output: ended or not, and the one problem its frame names
    for garbage, ended, error in [
            ([], False, "empty output"),
            ([5, 6, 7], False, "truncated: no <|frame_sep|> at the end (bad event token"),
            ([128100], False, "bad event token"),
            ([128103, 128100], False, "missing <|action_sep|>"),
            ([128104, 12, 128001], True, "truncated: no <|frame_sep|> at the end (missing"),
            ([128104, 90, 128101, 262, 1522, 198, 128100], False,
             "locals are not valid JSON: '{'")]:
        read = predictor.read(garbage, [0.0] * len(garbage))
        assert read.ended == ended and read.error.startswith(error), (garbage, read.error)
    end = predictor.read([128001], [0.0])
    assert end.ended and end.frame is None and end.error is None  # the trace is over: no frame


@pytest.fixture(scope="module")
def server(models):
    import threading

    from tracekit.format.tokenizer import cwm_tokenizer, decode, encode
    from tracekit.model.serve import Engine, make_server

    _, ours = models
    tokenizer = cwm_tokenizer()
    engine = Engine(ours, partial(encode, tokenizer), partial(decode, tokenizer), "tiny-cwm")
    httpd = make_server(engine, port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_openai_backend_against_tracekit_serve_agrees_with_the_runtime(trace, models, server):
    from tracekit.model.backends import OpenAIBackend

    _, ours = models
    runtime = TracePredictor(RuntimeBackend(ours), max_frame_tokens=24)
    remote = TracePredictor(OpenAIBackend(server, "tiny-cwm"), max_frame_tokens=24)
    for i in (0, 5):
        a = runtime.next_frame(trace.context, trace.frames[:i])
        b = remote.next_frame(trace.context, trace.frames[:i])
        assert a.tokens == b.tokens and a.frame == b.frame
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    forced = remote.teacher_forced(trace.context, trace.frames[:8])  # concurrent requests
    assert [p.tokens for p in forced] == [
        p.tokens for p in runtime.teacher_forced(trace.context, trace.frames[:8])]


def test_server_serves_concurrent_clients_and_rejects_bad_requests(models, server):
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from tracekit.model.generation import generate

    _, ours = models
    prompts = [[128000, 100 + i, 200 + 2 * i, 300] for i in range(8)]

    def ask(prompt):
        return post(server, {"model": "tiny-cwm", "prompt": prompt, "max_tokens": 6,
                              "temperature": 0, "logprobs": 1,
                              "return_tokens_as_token_ids": True})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    for prompt, (status, body) in zip(prompts, answers):
        assert status == 200
        tokens = [int(t.split(":")[1]) for t in body["choices"][0]["logprobs"]["tokens"]]
        assert tokens == generate(ours, [prompt], 6)[0].tokens
    first = generate(ours, [prompts[0]], 6)[0].tokens[2]  # stop on the third token
    status, body = post(server, {"prompt": prompts[0], "max_tokens": 6, "temperature": 0,
                                  "stop_token_ids": [first]})
    choice = body["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", first)
    assert body["usage"]["completion_tokens"] == 3
    status, body = post(server, None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = post(server, {"model": "gpt-4", "prompt": [1, 2]})
    assert status == 404 and "tiny-cwm" in body["error"]["message"]
    status, body = post(server, {"model": "tiny-cwm", "prompt": [1] * 2040, "max_tokens": 16})
    assert status == 400 and "context of 2048" in body["error"]["message"]
    status, body = post(server, {"model": "tiny-cwm", "prompt": [1, 2], "max_tokens": -1})
    assert status == 400 and "max_tokens" in body["error"]["message"]
    status, body = post(server, {"model": "tiny-cwm", "prompt": "def f():", "max_tokens": 3,
                                  "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] == 3  # still serving
    with urllib.request.urlopen(server + "/health", timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(server + "/v1/models", timeout=10) as response:
        assert b"tiny-cwm" in response.read()


def command_line_setup(tmp_path, model):
    """The CLI's entry point, a runner, and a program and a checkpoint of `model` to use."""
    from click.testing import CliRunner

    from tracekit.cli import main
    from tracekit.model.checkpoint import save_checkpoint

    save_checkpoint(model, tmp_path / "tiny")
    program = tmp_path / "prog.py"
    program.write_text(PROGRAM + "\n# tracekit-call: count_vowels('ab')\n")
    return main, CliRunner(), program


def test_predict_command_prints_real_and_predicted_frames(tmp_path, models):
    """A model that writes one known frame over and over (a line the program does not have):
    every mode shows it in the predicted column, beside the real frames, all judged wrong."""
    from tracekit.model.checkpoint import save_checkpoint

    main, runner, program = command_line_setup(tmp_path, models[1])
    written = Frame("line", None, "    said_by_the_model\n", {})
    ids = TracePredictor(RuntimeBackend(bigram_model([]))).frame_ids(written)
    save_checkpoint(bigram_model(ids), tmp_path / "writer")
    n = len(trace_source(PROGRAM, call="count_vowels('ab')")["frames"])
    for mode, shown in (("teacher-forced", n), ("rollout", n - 1), ("next", 1)):
        result = runner.invoke(main, ["predict", str(program), "--model", str(tmp_path / "writer"),
                                      "--mode", mode, "--frames", "1", "--max-frame-tokens", "16",
                                      "--sandbox", "none"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert result.output.count("said_by_the_model") == shown, mode
        assert "n = 0" in result.output and "first divergence" in result.output  # real frame 1
        assert f"0/{shown} frames exactly right" in result.output, mode
    assert "rollout stopped: malformed" in runner.invoke(
        main, ["predict", str(program), "--model", str(tmp_path / "tiny"), "--mode", "rollout",
               "--max-frame-tokens", "8", "--sandbox", "none"]).output
    missing = runner.invoke(main, ["predict", str(program), "--model", str(tmp_path / "nope"),
                                   "--sandbox", "none"])
    assert missing.exit_code == 7 and "not a checkpoint directory" in missing.output
    absent_gpu = f"cuda:{torch.cuda.device_count()}"  # one GPU more than this machine has
    for model in (str(tmp_path / "tiny"), f"transformers:{tmp_path / 'tiny'}"):
        no_device = runner.invoke(main, ["predict", str(program), "--model", model,
                                         "--device", absent_gpu, "--sandbox", "none"])
        assert no_device.exit_code == 7 and f"device {absent_gpu}" in no_device.output, model
        assert "Traceback" not in no_device.output and "truncated" not in no_device.output
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "cwm",')
    broken = runner.invoke(main, ["predict", str(program), "--model",
                                  f"transformers:{tmp_path / 'broken'}", "--sandbox", "none"])
    assert broken.exit_code == 7 and "transformers cannot load it" in broken.output
    unreachable = runner.invoke(main, ["predict", str(program), "--model",
                                       "openai:http://127.0.0.1:9", "--openai-model", "x",
                                       "--sandbox", "none"])
    assert unreachable.exit_code == 7 and "cannot reach the server" in unreachable.output


def test_predict_and_eval_compile_and_draft_on_request(tmp_path, models):
    """--compile and --draft-tokens: the same rollout as without them; refused where they
    cannot apply."""
    from tracekit.model.backends import DRAFT_TOKENS, load_backend

    main, runner, program = command_line_setup(tmp_path, models[1])
    command = ["predict", str(program), "--model", str(tmp_path / "tiny"), "--mode", "rollout",
               "--max-frame-tokens", "24", "--sandbox", "none"]
    plain = runner.invoke(main, command, catch_exceptions=False)
    for extra in (["--compile"], ["--draft-tokens", "0"], ["--draft-tokens", "3"]):
        other = runner.invoke(main, [*command, *extra], catch_exceptions=False)
        assert plain.exit_code == other.exit_code == 0 and other.output == plain.output, extra
    assert load_backend(str(tmp_path / "tiny"), compile_decode=True).model.compile_decode
    assert load_backend(str(tmp_path / "tiny")).draft_tokens == DRAFT_TOKENS
    assert load_backend(str(tmp_path / "tiny"), draft_tokens=0).draft_tokens == 0
    for flag in (["--compile"], ["--draft-tokens", "2"]):
        refused = runner.invoke(main, ["predict", str(program), "--model", "openai:http://x:1",
                                       "--openai-model", "x", *flag, "--sandbox", "none"])
        assert refused.exit_code == 7 and f"{flag[0]} applies to our runtime" in refused.output
        baseline = runner.invoke(main, ["eval", str(tmp_path), "--model", "copy", *flag,
                                        "-o", str(tmp_path / "e")])
        assert baseline.exit_code == 2 and f"{flag[0]} applies to a model run by" in \
            baseline.output
    concurrent = runner.invoke(main, ["eval", str(tmp_path), "--model", str(tmp_path / "tiny"),
                                      "--compile", "--concurrency", "2", "-o", str(tmp_path / "e")])
    assert concurrent.exit_code == 2 and "--compile runs one trace at a time" in concurrent.output


def bigram_model(cycle: list[int]) -> CwmForCausalLM:
    """A hand-built CWM whose next token depends on the current one only: attention and MLP
    outputs are zero, token cycle[i] is the one-hot direction i, and the head maps direction i
    to cycle[i + 1]. It writes `cycle` round and round: real weights, known behaviour."""
    model = CwmForCausalLM(CwmConfig(**TINY_CWM, dtype="float32")).eval()
    assert len(set(cycle)) == len(cycle) <= TINY_CWM["hidden_size"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(1.0 if name.endswith("norm.weight") else 0.0)
        for i, token in enumerate(cycle):
            model.model.embed_tokens.weight[token, i] = 1.0
            model.lm_head.weight[cycle[(i + 1) % len(cycle)], i] = 1.0
    return model


def test_predict_judges_frames_as_the_eval_does(tmp_path):
    """A state written in full where the real frame says ".." (unchanged) is right, as in
    `tracekit eval`; the frames before --frames K are what ".." resolves against."""
    from click.testing import CliRunner

    from tracekit.cli import main
    from tracekit.model.checkpoint import save_checkpoint

    program = tmp_path / "prog.py"
    program.write_text("def f():  # << START_OF_TRACE\n    x = 1\n    pass\n    return x\n"
                       "\n# tracekit-call: f()\n")
    real = Trace.from_dict(trace_source(program.read_text(), call="f()")).frames
    assert real[3].locals == {"x": ".."}
    written_out = Frame("line", None, "    return x\n", {"x": "1"})  # what ".." stands for
    predictor = TracePredictor(RuntimeBackend(bigram_model([])))
    save_checkpoint(bigram_model(predictor.frame_ids(written_out)), tmp_path / "bigram")
    runner = CliRunner()
    result = runner.invoke(main, ["predict", str(program), "--model", str(tmp_path / "bigram"),
                                  "--mode", "next", "--frames", "3", "--sandbox", "none"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1/1 frames exactly right" in result.output
    result = runner.invoke(main, ["predict", str(program), "--model", str(tmp_path / "bigram"),
                                  "--mode", "teacher-forced", "--sandbox", "none"])
    assert "1/5 frames exactly right" in result.output  # frame 3 only, as eval would count


def test_rollouts_of_valid_frames_stop_at_the_frame_cap_or_the_budget(trace):
    backend = RuntimeBackend(bigram_model([]), draft_tokens=0)  # one token per forward
    predictor = TracePredictor(backend, max_frame_tokens=16)
    frame = Frame("line", None, "    pass\n", {})
    cycle = predictor.frame_ids(frame)  # <|line_sep|>{}<|action_sep|>    pass\n<|frame_sep|>
    predictor.backend.model = bigram_model(cycle)
    seen = []  # tokens per forward pass
    hook = predictor.backend.model.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].shape[1]))
    rollout = predictor.rollout(trace.context, trace.frames[:2], max_frames=6)
    hook.remove()
    assert rollout.stop == "max_frames" and len(rollout.frames) == 6
    # after the prompt, a rollout runs one token per generated token: nothing twice
    assert seen[1:] == [1] * (sum(len(s.tokens) for s in rollout.steps) - 1)
    assert all(f == frame for f in rollout.frames) and rollout.tokens_used == 6 * len(cycle)
    frames = list(trace.frames[:2])
    for step in rollout.steps:  # the same as asking for one frame at a time
        assert step.tokens == predictor.next_frame(trace.context, frames).tokens
        frames.append(step.frame)
    budget = predictor.rollout(trace.context, budget_tokens=2 * len(cycle) + 2)
    assert budget.stop == "budget" and len(budget.frames) == 3
    assert budget.steps[-1].error.startswith("truncated") and budget.tokens_used == 2 * len(
        cycle) + 2
    forced = predictor.teacher_forced(trace.context, trace.frames[:5])
    assert [p.frame for p in forced] == [frame] * 5
    ended = predictor.rollout(trace.context, max_frames=3, budget_tokens=3 * len(cycle))
    assert ended.stop == "max_frames"  # the budget was exactly enough
    predictor.backend.model = bigram_model([128100, 128001])  # <|frame_sep|> -> end of text
    finished = predictor.rollout(trace.context, trace.frames[:3])
    assert finished.stop == "end_of_text" and finished.frames == []
    assert finished.steps[0].ended and finished.steps[0].tokens == [128001]


def test_the_prediction_benchmark_runs(capsys):
    """benchmarks/predict.py at toy sizes (so that a GPU session can run it as it is)."""
    from tests.conftest import benchmark_module

    benchmark_module("predict").main(["--layers", "1", "--hidden", "64", "--sizes", "3",
                                      "--steps", "3", "--frame-tokens", "4"])
    out = capsys.readouterr().out
    assert "3 frames" in out and "3-step session" in out and "float32" in out


def test_drafted_decoding_gives_the_same_sessions_and_rollouts_in_fewer_forwards(trace, models):
    """Prompt-lookup guesses (RuntimeBackend's draft_tokens, on by default) change how many
    forwards a prediction takes, not what it predicts: a session over real frames (stepping
    back, re-sampling) and a rollout give what one token per forward gives."""
    _, ours = models
    runs = {}
    for draft in (0, 4):
        predictor = TracePredictor(RuntimeBackend(ours, draft_tokens=draft), max_frame_tokens=24)
        session, steps = predictor.session(trace.context), []
        for frame in trace.frames[:8]:
            steps.append(session.step())
            session.append(frame)
        session.back(2)
        steps += [session.step(), session.step(sampling=Sampling(temperature=1.0, seed=1))]
        runs[draft] = steps
    for plain, drafted in zip(runs[0], runs[4]):
        assert drafted.tokens == plain.tokens
        assert drafted.logprobs == pytest.approx(plain.logprobs, abs=1e-4)

    frame = Frame("line", None, "    pass\n", {})
    cycle = TracePredictor(RuntimeBackend(ours)).frame_ids(frame)
    model = bigram_model(cycle)  # writes `frame` again and again: every guess is right
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    forwards = {}
    try:
        for draft in (0, 4):
            seen.clear()
            predictor = TracePredictor(RuntimeBackend(model, draft_tokens=draft),
                                       max_frame_tokens=16)
            rollout = predictor.rollout(trace.context, trace.frames[:2], max_frames=6)
            assert rollout.frames == [frame] * 6 and rollout.tokens_used == 6 * len(cycle)
            forwards[draft] = len(seen)
    finally:
        hook.remove()
    # one forward per token, against (after the first frames) 2 per frame of 7 tokens
    assert forwards[0] == 6 * len(cycle) and forwards[4] <= 16


@pytest.mark.parametrize("case, tokens, logprobs, stopped", [
    ("stopped_at_a_stop_token_left_out", [128104, 6390, 128101, 262, 1522, 198, 128100],
     [-0.01, -0.2, -0.03, -0.5, -0.04, -0.9, 0.0], True),  # the stop id comes back, logprob 0
    ("stopped_at_a_stop_token_kept", [128102, 128101, 128100], [-0.1, -0.2, -0.3], True),
    ("cut_at_max_tokens", [128104, 90], [-0.5, -1.5], False),
    ("ended_by_end_of_text", [128001], [0.0], True)])
def test_the_openai_client_reads_vllm_shaped_responses(case, tokens, logprobs, stopped):
    """Response bodies in vLLM's shape (tests/fixtures/vllm_completions.json: `token_id:N`
    strings, `stop_reason` as the stop id, extra fields such as `token_ids`,
    `prompt_token_ids`, `kv_transfer_params`), served by a plain HTTP server: the client
    reads the generated ids and log-probs, and whether a stop id ended it."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path

    from tracekit.model.backends import OpenAIBackend

    body = json.loads((Path(__file__).parent / "fixtures" / "vllm_completions.json")
                      .read_text())[case]
    asked = []

    class Recorded(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            asked.append((self.path, json.loads(self.rfile.read(
                int(self.headers["Content-Length"])))))
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorded)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{httpd.server_address[1]}", "facebook/cwm")
        generation = backend.generate([[128000, 128107, 755]], 8, (128100, 128001), Sampling())[0]
    finally:
        httpd.shutdown()
    assert (generation.tokens, generation.logprobs, generation.stopped) == (tokens, logprobs,
                                                                            stopped)
    path, request = asked[0]
    assert path == "/v1/completions" and request["prompt"] == [128000, 128107, 755]
    assert request["stop_token_ids"] == [128100, 128001] and request["logprobs"] == 1
    assert request["return_tokens_as_token_ids"] and request["skip_special_tokens"] is False


@pytest.mark.parametrize("max_frame_tokens", [256, 12])
def test_greedy_teacher_forcing_decodes_only_the_frames_the_forward_says_are_wrong(
        max_frame_tokens, monkeypatch):
    """The bundled model over the sample programs, teacher-forced and greedy: each frame's
    prediction equals the decode-every-frame path's token for token (ids, log-probs to
    rounding, parsed frame), while only the frames that path gets wrong (in the state, in the
    action, cut at max_frame_tokens, or ended early) are decoded, four rows at a time in a
    batch refilled as rows finish (their lengths differ); the right ones come from the
    trace's one forward. Both kinds occur."""
    from collections import Counter

    import tracekit.model.backends as backends
    from tracekit.model.generation import decode_rows, generate
    from tracekit.prediction.predict import load_predictor
    from tracekit.programs.sources import SAMPLE_PROGRAMS, python_files

    decoded = []  # branches decoded, by either way of decoding them

    def counted(model, prompts, *args, **kwargs):
        decoded.append(len(prompts))
        return generate(model, prompts, *args, **kwargs)

    def counted_rows(*args):
        for key, generation in decode_rows(*args):
            decoded.append(1)
            yield key, generation

    monkeypatch.setattr(backends, "generate", counted)
    monkeypatch.setattr(backends, "decode_rows", counted_rows)
    predictor = load_predictor("bundled", max_frame_tokens=max_frame_tokens)  # as commands do
    backend = predictor.backend
    backend.branch_batch = 4
    right, wrong = 0, Counter()  # wrong frames by what is wrong
    for program in list(python_files([str(SAMPLE_PROGRAMS)]))[:6]:
        trace = Trace.from_dict(trace_source(program.source, call=program.call))
        backend.exact_from_forward = False
        decoded.clear()
        every = predictor.teacher_forced(trace.context, trace.frames)
        assert sum(decoded) == len(every) == len(trace.frames)
        backend.exact_from_forward = True
        decoded.clear()
        forced = predictor.teacher_forced(trace.context, trace.frames)
        for real, one, other in zip(trace.frames, every, forced):
            assert other.tokens == one.tokens and other.frame == one.frame
            assert other.logprobs == pytest.approx(one.logprobs, abs=1e-4)
        exact = [one.tokens == predictor.frame_ids(real)[:max_frame_tokens]
                 for real, one in zip(trace.frames, every)]
        assert sum(decoded) == exact.count(False)
        right += exact.count(True)
        for real, one, ok in zip(trace.frames, every, exact):
            frame = one.frame
            if not ok:
                wrong["malformed" if frame is None or frame.error else "action" if (
                    frame.event, frame.source.strip()) != (real.event, real.source.strip())
                    else "state"] += 1
    assert right > 10 and min(wrong.values()) > 0 and set(wrong) == {"malformed", "action",
                                                                    "state"}


def test_transformers_teacher_forcing_generates_only_the_frames_its_forward_says_are_wrong(
        tmp_path, monkeypatch):
    """transformers' model, greedy teacher forcing: a model that writes one real frame after
    every <|frame_sep|> has that frame exactly right, which its one forward over the real
    trace says, so it is not generated; the others are (in one padded batch), and every
    prediction equals one `generate` per frame (the default path) and our runtime's."""
    from tracekit.model.backends import Backend
    from tracekit.model.checkpoint import save_checkpoint

    source = ("def f():  # << START_OF_TRACE\n    x = 1\n    pass\n    return x\n"
              "\n# tracekit-call: f()\n")
    real = Trace.from_dict(trace_source(source, call="f()")).frames
    predictor = TracePredictor(RuntimeBackend(bigram_model([])))
    k = next(i for i in range(1, len(real)) if len(set(predictor.frame_ids(real[i]))) == len(
        predictor.frame_ids(real[i])))  # a frame a bigram model can write: no token twice
    bigram = bigram_model(predictor.frame_ids(real[k]))  # writes real[k] after each frame
    save_checkpoint(bigram, tmp_path / "bigram")
    reference = transformers.CwmForCausalLM.from_pretrained(tmp_path / "bigram",
                                                            attn_implementation="eager")
    backend = TransformersBackend(reference)
    asked = []
    generate = backend.generate
    monkeypatch.setattr(backend, "generate", lambda prompts, *a, **kw: asked.append(
        len(prompts)) or generate(prompts, *a, **kw))
    ids = predictor.prompt(source, real)
    starts = predictor._frame_starts(source, real)
    right = [i for i, frame in enumerate(real) if i > 0 and frame == real[k]]
    forced = backend.teacher_forced(ids, starts, 64, predictor.stop_ids, Sampling())
    assert right and asked == [len(real) - len(right)]
    per_frame = Backend.teacher_forced(backend, ids, starts, 64, predictor.stop_ids, Sampling())
    runtime = RuntimeBackend(bigram).teacher_forced(ids, starts, 64, predictor.stop_ids,
                                                    Sampling())
    for a, b, c in zip(forced, per_frame, runtime, strict=True):
        assert a.tokens == b.tokens == c.tokens and a.stopped == b.stopped == c.stopped
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    assert all(forced[i].tokens == predictor.frame_ids(real[k]) for i in right)


def test_rollouts_of_many_programs_decode_together_as_each_would_alone():
    """The bundled model's greedy rollouts of the sample programs, two rows at a time in one
    batch: each equals the rollout one program at a time through a session (frames, tokens,
    why it stopped), and a program that ends early hands its row to the next one, so they
    come back out of order. The same conversations through the default `converse` (rounds of
    batched `generate`, as a server's concurrent requests) agree too."""
    from tracekit.model.backends import Backend
    from tracekit.prediction.predict import load_predictor
    from tracekit.programs.sources import SAMPLE_PROGRAMS, python_files

    predictor = load_predictor("bundled")
    backend = predictor.backend
    backend.branch_batch = 2
    programs = []
    for program in list(python_files([str(SAMPLE_PROGRAMS)]))[:6]:
        trace = Trace.from_dict(trace_source(program.source, call=program.call))
        programs.append((trace.context, trace.frames[:1]))
    alone = [predictor.rollout(context, seeds, budget_tokens=400) for context, seeds in programs]
    order, lengths = [], [len(r.steps) for r in alone]
    for i, rollout in predictor.rollout_stream(programs, budget_tokens=400):
        order.append(i)
        assert [s.tokens for s in rollout.steps] == [s.tokens for s in alone[i].steps]
        assert rollout.frames == alone[i].frames and rollout.stop == alone[i].stop
    assert sorted(order) == list(range(6)) and order != sorted(order)
    assert len(set(lengths)) > 2 and {r.stop for r in alone} >= {"end_of_text"}
    backend.conversation_batch = 3
    rounds = dict(Backend.converse(backend, ((i, predictor.rollout_steps(*p, budget_tokens=400))
                                             for i, p in enumerate(programs)),
                                   predictor.stop_ids, Sampling()))
    assert [[s.tokens for s in rounds[i].steps] for i in range(6)] == [
        [s.tokens for s in r.steps] for r in alone]


def test_transformers_rollouts_of_many_programs_equal_the_runtimes(tmp_path):
    """transformers' model behind the default `converse` (rounds of left-padded batched
    `generate`, prompts of different lengths) and our runtime's batched rows give the same
    rollouts of three programs: a model that writes one real frame after every
    <|frame_sep|> writes it frame after frame until the token budget ends each rollout."""
    from tracekit.model.checkpoint import save_checkpoint

    source = ("def f():  # << START_OF_TRACE\n    x = 1\n    pass\n    return x\n"
              "\n# tracekit-call: f()\n")
    real = Trace.from_dict(trace_source(source, call="f()")).frames
    predictor = TracePredictor(RuntimeBackend(bigram_model([])))
    k = next(i for i in range(1, len(real)) if len(set(predictor.frame_ids(real[i]))) == len(
        predictor.frame_ids(real[i])))
    bigram = bigram_model(predictor.frame_ids(real[k]))
    save_checkpoint(bigram, tmp_path / "bigram")
    reference = transformers.CwmForCausalLM.from_pretrained(tmp_path / "bigram",
                                                            attn_implementation="eager")
    programs = [(source, real[:1]), (source + "# a longer context\n", real[:1]),
                (source, real[:2])]
    ours = TracePredictor(RuntimeBackend(bigram))
    theirs = TracePredictor(TransformersBackend(reference, branch_batch=3))
    here = dict(ours.rollout_stream(programs, budget_tokens=40))
    there = dict(theirs.rollout_stream(programs, budget_tokens=40))
    for i in range(3):
        assert [s.tokens for s in here[i].steps] == [s.tokens for s in there[i].steps]
        assert here[i].stop == there[i].stop == "budget"
        steps = here[i].steps  # the last one cut by the budget
        assert len(steps) > 2 and all(s.tokens == ours.frame_ids(real[k]) for s in steps[:-1])
