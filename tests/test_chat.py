"""Reasoning mode: chat templates rendered as transformers renders them, `tracekit serve`'s
/v1/chat/completions (equal to the runtime, streamed or not, bad requests refused), the
reasoning eval's scoring of known answers and its run against a served model, and
`tracekit chat` in a terminal session."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import pytest
import torch

from tracekit.format.tokenizer import decode, encode, load_tokenizer
from tracekit.prediction.chat import (
    ChatOptions,
    chat_turn,
    checkpoint_template,
    render_chat,
    server_prompt,
    split_reply,
)

ROOT = Path(__file__).resolve().parent.parent

# A chat template written for these tests, in the shape of CWM's: a BOS token by name, headers,
# tool messages with a name, earlier thinking dropped when preserve_previous_think is false,
# <think> opened unless enable_thinking is false, and whitespace that trim_blocks and
# lstrip_blocks decide.
TEMPLATE = """{{ bos_token }}
{%- for m in messages %}
    {%- if m.role not in ['system', 'user', 'assistant', 'tool'] %}
        {{- raise_exception('no such role: ' ~ m.role) }}
    {%- endif %}
<|start_header_id|>{{ m.role }}
    {%- if m.role == 'tool' and m.name is defined %}: {{ m.name }}{% endif -%}
<|end_header_id|>

{% if m.role == 'assistant' and not (preserve_previous_think | default(true)) %}
{{- m.content.split('</think>')[-1] | trim }}
{%- else %}
{{- m.content }}
{%- endif %}
<|eot_id|>
{%- endfor %}
{%- if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% if enable_thinking | default(true) %}<think>
{% endif %}
{%- endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief. é ü 中文"}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "<think>\nadd them\n</think>\n4"},
     {"role": "tool", "name": "python", "content": "4"},
     {"role": "user", "content": "and  3+3?\n\n"}],
]


def test_a_checkpoint_template_renders_and_encodes_as_transformers_does(
        converted_tokenizer_dir, tmp_path):
    """Our rendering of a checkpoint's own template (tokenizer_config.json, and the
    chat_template.jinja file transformers now writes) against `apply_chat_template`, text and
    ids, with and without thinking, multi-turn, tool messages; no template: tracekit's own."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(converted_tokenizer_dir / "tokenizer.json"),
                                 bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    hf.chat_template = TEMPLATE
    saved = tmp_path / "saved"
    hf.save_pretrained(saved)  # (writes the template where this transformers version does)
    by_config = tmp_path / "config"
    by_config.mkdir()
    shutil.copyfile(converted_tokenizer_dir / "tokenizer.json", by_config / "tokenizer.json")
    (by_config / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<|begin_of_text|>"}, "chat_template": TEMPLATE}))
    ours = load_tokenizer(converted_tokenizer_dir)
    checked = 0
    for directory in (saved, by_config):
        template = checkpoint_template(directory)
        assert template is not None
        for messages in CONVERSATIONS:
            for thinking in (True, False):
                for preserve in (True, False):
                    options = ChatOptions(thinking, preserve, system=None)
                    text = render_chat(messages, options, template)
                    expected = hf.apply_chat_template(
                        messages, tokenize=False, add_generation_prompt=True,
                        enable_thinking=thinking, preserve_previous_think=preserve)
                    assert text == expected
                    ids = hf.apply_chat_template(
                        messages, tokenize=True, add_generation_prompt=True, return_dict=False,
                        enable_thinking=thinking, preserve_previous_think=preserve)
                    assert encode(ours, text) == list(ids)
                    checked += 1
    assert checked == 24
    dropped = render_chat(CONVERSATIONS[2], ChatOptions(True, False, None), template)
    assert "add them" not in dropped and "<|start_header_id|>tool: python" in dropped
    with pytest.raises(ValueError, match="no such role"):
        template.render([{"role": "robot", "content": "x"}])
    assert checkpoint_template(converted_tokenizer_dir) is None  # tracekit's own is used
    fallback = render_chat(CONVERSATIONS[0], ChatOptions(), None)
    assert fallback.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")


def test_a_reply_splits_at_the_end_of_its_thinking():
    assert split_reply("weigh it\n</think>\n[OUTPUT]3[/OUTPUT]", True, 9, True).answer == \
        "[OUTPUT]3[/OUTPUT]"
    cut = split_reply("still weighing", True, 50, False)
    assert cut.answer is None and cut.truncated_in_thinking and cut.thinking == "still weighing"
    plain = split_reply("just 4", False, 3, True)
    assert plain.thinking is None and plain.answer == "just 4"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny random-weight CWM checkpoint with the bundled tokenizer and TEMPLATE."""
    from tracekit.model.checkpoint import BUNDLED, save_checkpoint
    from tracekit.model.modeling import CwmForCausalLM
    from tracekit.training import loop

    directory = tmp_path_factory.mktemp("tiny")
    tokenizer = load_tokenizer(BUNDLED)
    torch.manual_seed(0)
    config = loop.model_config("tiny", tokenizer.vocab_size, 2048, tokenizer.special_ids)
    model = CwmForCausalLM(config)
    loop.init_weights(model, 0.5)  # large weights: sharp, varied logits, not near-uniform
    save_checkpoint(model, directory)
    shutil.copyfile(BUNDLED / "tokenizer.json", directory / "tokenizer.json")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "chat_template": TEMPLATE}))
    return directory


@pytest.fixture(scope="module")
def served(tiny):
    from tracekit.model.checkpoint import load_checkpoint
    from tracekit.model.serve import Engine, make_server
    from tracekit.prediction.chat import END_OF_TURN

    model = load_checkpoint(tiny)
    model.fast = True
    tokenizer = load_tokenizer(tiny)
    stops = tuple(tokenizer.special_ids[t] for t in END_OF_TURN)
    engine = Engine(model, partial(encode, tokenizer), partial(decode, tokenizer), "tiny",
                    chat=server_prompt(tokenizer, checkpoint_template(tiny)), end_of_turn=stops)
    httpd = make_server(engine, port=0, socket_timeout=5.0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def post(url: str, path: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def events(text: str) -> list[dict]:
    lines = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_served_chat_is_the_runtimes_reply_streamed_or_not(served, tiny):
    from tracekit.prediction.predict import GREEDY, load_predictor

    predictor = load_predictor(str(tiny))
    template = checkpoint_template(tiny)
    for messages in CONVERSATIONS:
        for thinking in (True, False):
            body = {"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0,
                    "chat_template_kwargs": {"enable_thinking": thinking}}
            status, text = post(served, "/v1/chat/completions", body)
            assert status == 200, text
            answer = json.loads(text)
            content = answer["choices"][0]["message"]["content"]
            reply = chat_turn(predictor, messages, ChatOptions(thinking, system=None), template,
                              24, GREEDY)
            assert content == reply.text and answer["object"] == "chat.completion"
            assert answer["usage"]["completion_tokens"] == reply.tokens
            status, stream = post(served, "/v1/chat/completions", {**body, "stream": True})
            chunks = events(stream)
            assert status == 200 and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content
            assert chunks[-1]["choices"][0]["finish_reason"] == \
                answer["choices"][0]["finish_reason"]
            assert len(chunks) > 3  # chunks as tokens come, not one at the end


def test_streamed_completions_join_into_the_unstreamed_text(served):
    for stop in (None, ["\n"], ["e", "<|"]):
        body = {"model": "tiny", "prompt": "def f(x):\n    return x", "max_tokens": 30,
                "temperature": 0, **({"stop": stop} if stop else {})}
        status, text = post(served, "/v1/completions", body)
        whole = json.loads(text)["choices"][0]
        status, stream = post(served, "/v1/completions", {**body, "stream": True})
        chunks = events(stream)
        assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"]
        assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]


def test_a_stop_string_split_across_chunks_is_held_back_until_it_is_known(served):
    """Stops taken from the greedy text itself (every 2- to 5-character piece of it, which
    start and end inside tokens as often as at their edges): a streamed answer joins into the
    unstreamed one for each, so no chunk gave out the start of a stop that then completed."""
    body = {"model": "tiny", "prompt": "def f(x):\n    return x", "max_tokens": 30,
            "temperature": 0}
    free = json.loads(post(served, "/v1/completions", body)[1])["choices"][0]["text"]
    stops = sorted({free[i:i + n] for n in range(2, 6) for i in range(1, len(free) - n + 1)
                    if free[i:i + n].strip()})[::3]
    assert len(stops) >= 15, free
    for stop in stops:
        request = {**body, "stop": [stop]}
        whole = json.loads(post(served, "/v1/completions", request)[1])["choices"][0]
        assert whole["text"] == free[:free.index(stop)]
        chunks = events(post(served, "/v1/completions", {**request, "stream": True})[1])
        assert "".join(c["choices"][0]["text"] for c in chunks) == whole["text"], stop


def test_earlier_thinking_is_dropped_unless_preserved_in_every_renderer(served, tiny):
    """preserve_previous_think=False drops an earlier assistant turn's <think> block in
    tracekit's own template, in the checkpoint's template, in the server's renderer, and in a
    served /v1/chat/completions, whose reply is then chat_turn's with the same option."""
    from tracekit.prediction.predict import GREEDY, load_predictor

    messages = CONVERSATIONS[2]
    tokenizer = load_tokenizer(tiny)
    for template in (None, checkpoint_template(tiny)):
        kept = render_chat(messages, ChatOptions(True, True, None), template)
        dropped = render_chat(messages, ChatOptions(True, False, None), template)
        assert "add them" in kept and "add them" not in dropped and "4" in dropped
        served_prompt = server_prompt(tokenizer, template)
        assert served_prompt(messages, {"preserve_previous_think": False}) == \
            encode(tokenizer, dropped)
        assert served_prompt(messages, {}) == served_prompt(
            messages, {"preserve_previous_think": True}) == encode(tokenizer, kept)
    predictor = load_predictor(str(tiny))
    template = checkpoint_template(tiny)
    for preserve in (True, False):
        body = {"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0,
                "chat_template_kwargs": {"preserve_previous_think": preserve}}
        answer = json.loads(post(served, "/v1/chat/completions", body)[1])
        prompt = render_chat(messages, ChatOptions(True, preserve, None), template)
        assert answer["usage"]["prompt_tokens"] == len(encode(tokenizer, prompt))
        reply = chat_turn(predictor, messages, ChatOptions(True, preserve, system=None),
                          template, 24, GREEDY)
        assert answer["choices"][0]["message"]["content"] == reply.text


@pytest.mark.parametrize("body, says", [
    ({}, "messages must be a non-empty list"),
    ({"messages": "hi"}, "messages must be a non-empty list"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role must be one of"),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "content must be a string"),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream must be"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": [1]},
     "chat_template_kwargs must be an object"),
    ({"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs":
      {"enable_thinking": "no"}}, "enable_thinking must be true or false"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, "exceed"),
])
def test_bad_chat_requests_get_400_in_openais_shape(served, body, says):
    status, text = post(served, "/v1/chat/completions", {"model": "tiny", **body})
    error = json.loads(text)["error"]
    assert status == 400 and says in error["message"] and error["code"] == 400


def test_the_reasoning_eval_scores_known_answers(tmp_path):
    """Right (as another rendering of the same value), wrong, cut off inside <think>, no
    [OUTPUT], and missing, scored to hand-computed values."""
    from click.testing import CliRunner

    from tracekit.cli import main

    source = tmp_path / "progs.jsonl"
    programs = {"a": ("def f(x):\n    return x * 2\n", "f(2)"),      # 4
                "b": ("def f(s):\n    return s.upper()\n", "f('ab')"),  # 'AB'
                "c": ("def f(xs):\n    return xs[::-1]\n", "f([1, 2])"),  # [2, 1]
                "d": ("def f(d):\n    return dict(d)\n", "f({'k': 1})"),  # {'k': 1}
                "e": ("def f(x):\n    return (x, x)\n", "f(1)")}  # (1, 1)
    source.write_text("".join(json.dumps({"id": i, "code": c, "call": k}) + "\n"
                              for i, (c, k) in programs.items()))
    runner = CliRunner()
    built = runner.invoke(main, ["dataset", "build", str(source), "-o", str(tmp_path / "ds")])
    assert built.exit_code == 0, built.output
    answers = tmp_path / "answers.jsonl"
    answers.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "text": "<think>\n2 * 2\n</think>\n[OUTPUT]4.0[/OUTPUT]", "tokens": 12},
        {"id": "b", "text": '<think>\nupper\n</think>\nIt is [OUTPUT]"AB"[/OUTPUT].',
         "tokens": 20},
        {"id": "c", "text": "<think>\nreversed\n</think>\n[OUTPUT][1, 2][/OUTPUT]",
         "tokens": 30},
        {"id": "d", "text": "<think>\na dict, and then", "stop": "budget", "tokens": 64},
    ]) + "\n" + json.dumps({"id": "zz", "text": "unused"}) + "\n")
    result = runner.invoke(main, ["eval", str(tmp_path / "ds"), "--predictions", str(answers),
                                  "--mode", "reasoning", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    values = {k: v["value"] for k, v in metrics["metrics"].items()}
    assert values["output_pass1"] == 40.0  # a (4.0 == 4) and b ("AB" == 'AB') of 5
    assert values["valid_format"] == 60.0  # a, b, c answered; d cut off; e missing
    assert values["truncated"] == 20.0  # d
    assert values["reasoning_tokens"] == (12 + 20 + 30 + 64) / 4  # e has no reply
    assert metrics["output_by_id"] == {"a": True, "b": True, "c": False, "d": False,
                                       "e": False}
    oracle = runner.invoke(main, ["eval", str(tmp_path / "ds"), "--model", "oracle", "--mode",
                                  "output", "-o", str(tmp_path / "traced")])
    assert oracle.exit_code == 0
    compared = runner.invoke(main, ["eval", "compare", str(tmp_path / "traced"),
                                    str(tmp_path / "out")])
    assert "both 2, only traced (output) 3, only out (reasoning) 0, neither 0" in \
        compared.output.replace("\n", " ")


def test_a_reasoning_eval_against_tracekit_serve_over_the_openai_backend(served, tiny,
                                                                        tmp_path):
    """End to end: the chat endpoint answers each program; what the eval records is the
    served reply, and equals the same eval run on the runtime in process."""
    from click.testing import CliRunner

    from tracekit.cli import main

    runner = CliRunner()
    built = runner.invoke(main, ["dataset", "build", str(ROOT / "data" / "programs"), "-o",
                                 str(tmp_path / "ds")])
    assert built.exit_code == 0
    common = ["--mode", "reasoning", "--limit", "3", "--budget-tokens", "16"]
    served_run = runner.invoke(main, ["eval", str(tmp_path / "ds"), "--model",
                                      f"openai:{served}", "--openai-model", "tiny", *common,
                                      "-o", str(tmp_path / "served")])
    assert served_run.exit_code == 0, served_run.output
    local = runner.invoke(main, ["eval", str(tmp_path / "ds"), "--model", str(tiny), *common,
                                 "-o", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output

    def records(name):
        lines = (tmp_path / name / "predictions.jsonl").read_text().splitlines()
        return {r["id"]: r for r in map(json.loads, lines)}

    remote, here = records("served"), records("local")
    assert len(remote) == 3 and {i: r["text"] for i, r in remote.items()} == \
        {i: r["text"] for i, r in here.items()}
    assert all(r["text"].startswith("<think>\n") and r["stop"] == "budget"
               for r in here.values())


def test_tracekit_chat_one_message_and_a_piped_session(tiny):
    def chat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tracekit.cli", "chat", *args],
                              input=stdin, capture_output=True, text=True, timeout=300,
                              cwd=ROOT)

    one = chat("--model", str(tiny), "--max-tokens", "12", "-m", "What is 2+2?")
    assert one.returncode == 0, one.stderr
    assert "reached its token budget" in one.stderr and one.stdout.strip()
    assert "\x1b[" not in one.stdout  # no styling when stdout is not a terminal
    session = chat("--model", str(tiny), "--max-tokens", "12",
                   stdin="hi\n\n/reset\n/help me\n//etc/hosts?\nhello again\n/quit\nnever sent\n")
    assert session.returncode == 0, session.stderr
    assert "(forgotten)" in session.stderr and session.stdout.count("you> ") == 7
    assert "chat: unknown command '/help': the commands are /reset, /quit, /exit" in \
        session.stderr
    assert session.stderr.count("reached its token budget") == 3  # three messages were sent
    missing = chat("--model", "openai:http://127.0.0.1:9")
    assert missing.returncode == 2 and "--openai-model" in missing.stderr


def test_at_a_terminal_the_thinking_is_dim_and_the_answer_plain(tiny):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "tracekit.cli", "chat", "--model", str(tiny),
                                           "--max-tokens", "8"], cwd=ROOT, encoding="utf-8",
                          timeout=180, env={"TERM": "xterm", "PATH": "/usr/bin:/bin"})
    child.expect_exact("you> ")
    child.sendline("hi")
    child.expect_exact("you> ")
    shown = child.before
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "\x1b[2m" in shown  # the reply (all thinking: 8 tokens never close it) is dimmed
