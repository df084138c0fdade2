"""`tracekit serve` under load and abuse, serving the bundled model over loopback: many clients
at once, bodies too big, clients that stop sending, and every malformed request a 400."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import torch

from tests.conftest import bundled_context


@pytest.fixture(scope="module")
def served():
    from tracekit.format.tokenizer import decode, encode, load_tokenizer
    from tracekit.model.checkpoint import BUNDLED, load_checkpoint
    from tracekit.model.serve import Engine, make_server

    model = load_checkpoint(BUNDLED, dtype=torch.float32)
    model.fast = True
    tokenizer = load_tokenizer(BUNDLED)
    engine = Engine(model, partial(encode, tokenizer), partial(decode, tokenizer), "bundled")
    httpd = make_server(engine, port=0, socket_timeout=2.0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.server_address[1], model
    httpd.shutdown()


def post(url: str, body: dict | None, raw: bytes | None = None,
         path: str = "/v1/completions") -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


PROMPTS = ["def f(x):\n    return x + 1\n", "items = [3, 1, 2]\n", "s = 'abc'.upper()\n",
           "for i in range(3):\n    print(i)\n"]


def test_64_clients_at_once_all_answered_as_alone(served):
    """64 clients x 4 requests, released together: no connection refused or reset, and every
    greedy answer equals the answer to the same request sent alone."""
    url, _, _ = served
    requests = [{"prompt": PROMPTS[(c + r) % 4] + f"# {c}\n", "max_tokens": 8,
                 "temperature": 0} for c in range(64) for r in range(4)]
    alone = {r["prompt"]: post(url, r)[1]["choices"][0]["text"] for r in requests[:4 * 64:4]}
    start = threading.Barrier(64)

    def client(c: int) -> list[tuple[str, int, str]]:
        start.wait()
        answers = []
        for r in range(4):
            request = requests[4 * c + r]
            status, body = post(url, request)  # a reset or refusal raises here
            answers.append((request["prompt"], status, body["choices"][0]["text"]))
        return answers

    with ThreadPoolExecutor(64) as pool:
        answers = [a for batch in pool.map(client, range(64)) for a in batch]
    assert len(answers) == 256 and all(status == 200 for _, status, _ in answers)
    for prompt, _, text in answers:
        if prompt in alone:
            assert text == alone[prompt], prompt


def test_a_huge_declared_body_gets_413_at_once_and_the_server_goes_on(served):
    url, port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 999999999999\r\n\r\n{\"prompt\":")
        reply = b""
        while chunk := client.recv(4096):  # the server closes the connection after it
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "Content-Length must be" in reply
    assert post(url, {"prompt": "x = 1\n", "max_tokens": 2})[0] == 200


def test_slow_clients_do_not_stop_the_others_and_are_dropped(served):
    """Ten clients that send half a request and go quiet: others are answered meanwhile, and
    the quiet ones are disconnected after the socket timeout (2 s here, 30 s by default)."""
    url, port, _ = served
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
    for client in slow:
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"pro")
    assert post(url, {"prompt": "y = 2\n", "max_tokens": 2, "temperature": 0})[0] == 200
    time.sleep(3)  # past the 2 s timeout
    for client in slow:
        assert client.recv(4096) == b""  # closed by the server
        client.close()


BAD_REQUESTS = [
    ({"prompt": "x", "temperature": float("nan")}, "temperature must be a finite number"),
    ({"prompt": "x", "temperature": -1}, "temperature must be a finite number >= 0.0"),
    ({"prompt": "x", "top_p": 5}, "top_p must be a finite number >= 0.0 and <= 1.0"),
    ({"prompt": "x", "top_p": 0}, "top_p must be in (0, 1]"),
    ({"prompt": "x", "top_k": -3}, "top_k must be an integer >= -1"),
    ({"prompt": "x", "seed": 1.5}, "seed must be an integer"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens must be an integer"),
    ({"prompt": ""}, "prompt must be a non-empty string"),
    ({"prompt": [1, True, 3]}, "prompt must be a non-empty string or list of token ids"),
    ({"prompt": [10 ** 9]}, "outside the vocabulary"),
    ({"prompt": "x", "stop": 5}, "stop must be a non-empty string or a list of them"),
    ({"prompt": "x", "stop": [""]}, "stop must be a non-empty string"),
    ({"prompt": "x", "stop_token_ids": [True]}, "stop_token_ids must be a list of integers"),
    ({"prompt": "x", "logprobs": -1}, "logprobs must be an integer >= 0"),
    ({"prompt": "x", "logprobs": 2}, "logprobs=2 is not supported"),
    ({"prompt": "x", "stream": "yes"}, "stream must be true or false"),
    ({"prompt": "x", "stream": True, "logprobs": 1}, "logprobs with stream=true"),
    ({"prompt": "x", "n": 3}, "n=3 is not supported"),
    ({"prompt": "x", "echo": True}, "echo=True is not supported"),
    ({"prompt": "x", "best_of": 2}, "best_of=2 is not supported"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty=0.5 is not supported"),
    ([1, 2], "the body must be a JSON object"),
]


@pytest.mark.parametrize("body, message", BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
def test_each_bad_request_is_a_400_in_openai_shape(served, body, message):
    url, _, _ = served
    raw = json.dumps(body, allow_nan=True).encode()
    status, reply = post(url, None, raw=raw)
    assert status == 400, reply
    assert message in reply["error"]["message"] and "\n" not in reply["error"]["message"]
    assert reply["error"]["type"] == "invalid_request_error"


def raw_request(port: int, request: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(request)
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
            if b"\r\n\r\n" in reply and b"}" in reply:
                break
    return reply.decode()


@pytest.mark.parametrize("request_line, status, says", [
    ("GET /v1/completions", 405, "/v1/completions takes POST, not GET"),
    ("DELETE /v1/completions", 405, "/v1/completions takes POST, not DELETE"),
    ("POST /v1/models", 405, "/v1/models takes GET, not POST"),
    ("GET /v2/nothing", 404, "no such endpoint: GET /v2/nothing"),
    ("OPTIONS /v1/completions", 501, "OPTIONS is not supported: use GET or POST"),
])
def test_a_wrong_method_or_path_gets_its_status_in_openai_shape(served, request_line, status,
                                                                 says):
    _, port, _ = served
    reply = raw_request(port, f"{request_line} HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 0\r\n\r\n".encode())
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}") and "application/json" in head, head
    assert json.loads(body)["error"]["message"] == says


def test_a_client_that_leaves_mid_body_is_dropped_quietly(served, capfd):
    url, port, _ = served
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"p")
    time.sleep(0.5)
    assert post(url, {"prompt": "x = 1\n", "max_tokens": 2})[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_stop_strings_cut_the_text_and_count_the_tokens_as_vllm_does(served):
    url, _, _ = served
    from tracekit.format.tokenizer import decode, load_tokenizer
    from tracekit.model.checkpoint import BUNDLED

    tokenizer = load_tokenizer(BUNDLED)
    request = {"prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0, "logprobs": 0,
               "return_tokens_as_token_ids": True}
    full = post(url, request)[1]["choices"][0]
    ids = [int(t.split(":")[1]) for t in full["logprobs"]["tokens"]]
    assert len(ids) == 24
    # a stop string made of two generated tokens, found first where they were generated
    for k in range(2, 20):
        start = len(decode(tokenizer, ids[:k]))
        stop = decode(tokenizer, ids[:k + 2])[start:]
        if stop.strip() and full["text"].find(stop) == start:
            break
    else:
        pytest.fail(f"no usable stop string in {full['text']!r}")
    status, body = post(url, {**request, "stop": ["never in the text", stop]})
    choice = body["choices"][0]
    assert status == 200 and choice["text"] == full["text"][:start]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", stop)
    assert body["usage"]["completion_tokens"] == k + 2  # up to the token that completed it
    assert len(choice["logprobs"]["tokens"]) == k + 2


def test_a_client_predicts_with_the_served_models_own_tokenizer(served):
    """The bundled model (its own 2,048-token vocabulary) behind the server: `openai:URL`
    asks the server to tokenize (vLLM's /tokenize, /detokenize), so its predictions are the
    local model's, frame for frame, and it knows the model's context for the one rule."""
    from tracekit.execution.sandbox import run_trace
    from tracekit.prediction.predict import load_predictor

    url, _, _ = served
    trace = run_trace("def f(xs):  # << START_OF_TRACE\n    out = []\n    for x in xs:\n"
                      "        out.append(x * 2)\n    return out\n", "f([1, 2, 3])")
    remote = load_predictor(f"openai:{url}", "bundled", max_frame_tokens=64)
    local = load_predictor("bundled", max_frame_tokens=64)
    assert remote.context_length == local.context_length == bundled_context()
    assert remote.prompt(trace.context, trace.frames) == local.prompt(trace.context,
                                                                      trace.frames)
    steps = remote.teacher_forced(trace.context, trace.frames)
    assert [s.text for s in steps] == [s.text for s in local.teacher_forced(trace.context,
                                                                            trace.frames)]
    right = sum((s.frame.event, s.frame.source, s.frame.locals) == (f.event, f.source, f.locals)
                for s, f in zip(steps, trace.frames))
    assert right > 0  # (the model's tokens, not garbage)
    status, body = post(url.replace("/v1", ""), None, json.dumps(
        {"model": "bundled", "tokens": [10**6]}).encode(), path="/detokenize")
    assert status == 400 and "tokens must be a list of token ids" in body["error"]["message"]


def test_rollouts_through_the_server_are_concurrent_requests_equal_to_the_local_ones(served):
    """Three programs' rollouts through `openai:URL` (Backend.converse: each round one request
    per program, sent at once) equal our runtime's batched rollouts of the same programs."""
    from tracekit.execution.sandbox import run_trace
    from tracekit.prediction.predict import load_predictor

    url, _, _ = served
    programs = []
    for body, call in [("    return [x * 2 for x in xs]\n", "f([1, 2, 3])"),
                       ("    s = 0\n    for x in xs:\n        s += x\n    return s\n", "f([4, 5])"),
                       ("    return len(xs)\n", "f('abc')")]:
        trace = run_trace("def f(xs):  # << START_OF_TRACE\n" + body, call)
        programs.append((trace.context, trace.frames[:1]))
    remote = load_predictor(f"openai:{url}", "bundled", max_frame_tokens=64)
    local = load_predictor("bundled", max_frame_tokens=64)
    sent = []
    generate = remote.backend.generate
    remote.backend.generate = lambda prompts, *a, **kw: sent.append(len(prompts)) or generate(
        prompts, *a, **kw)
    there = dict(remote.rollout_stream(programs, budget_tokens=300))
    here = dict(local.rollout_stream(programs, budget_tokens=300))
    for i in range(3):
        assert [s.tokens for s in there[i].steps] == [s.tokens for s in here[i].steps]
        assert there[i].stop == here[i].stop
    assert sent[0] == 3 and len(sent) < sum(len(r.steps) for r in here.values())


def test_ctrl_c_during_a_request_stops_the_server_with_0_and_a_port_in_use_is_8():
    """Ctrl-C while the engine decodes ends `tracekit serve` with 0 and "stopped" (a torch op
    in the engine's thread used to abort the shutdown, 134); a port that is taken is exit 8."""
    import http.client
    import signal
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run([sys.executable, "-m", "tracekit.cli", "serve", "--port",
                                  str(port)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 8 and "choose another --port" in refused.stderr
    server = subprocess.Popen([sys.executable, "-m", "tracekit.cli", "serve", "--port",
                               str(port)], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr.readline().startswith("serving 'bundled'")
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        client.request("POST", "/v1/completions", json.dumps({
            "prompt": "def f", "max_tokens": 900, "temperature": 0, "stream": True}),
            {"Content-Type": "application/json"})
        reply = client.getresponse()
        assert reply.readline().startswith(b"data: ")  # a first chunk: the engine is decoding
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
        assert server.stderr.read().strip() == "stopped"
        client.close()
    finally:
        server.kill()
