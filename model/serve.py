"""`tracekit serve`: an OpenAI-compatible HTTP server over our runtime.

Endpoints: GET /health, GET /v1/models, POST /tokenize and /detokenize (vLLM's: the served
tokenizer, for clients whose own differs), POST /v1/completions (prompt as text or token ids,
max_tokens, temperature, top_p, top_k, seed, stop, stop_token_ids, logprobs; vLLM's
`return_tokens_as_token_ids`; n > 1, echo and the penalties are refused with a 400), and POST
/v1/chat/completions (messages rendered by the caller's `chat` function with vLLM's
`chat_template_kwargs`, e.g. {"enable_thinking": false}; the reply ends at an end-of-turn token,
left out of its content). `stream: true` on either sends server-sent events as OpenAI does,
each chunk as its tokens are chosen, then `data: [DONE]`.
Requests arriving together are decoded as one batch: a worker thread takes whatever is queued
(same sampling settings) and runs one batched `generate`; a streamed request runs alone. Bad
requests get a 4xx with a one-line message (bodies over MAX_BODY a 413); a client silent for
SOCKET_TIMEOUT is dropped; the server keeps serving.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .generation import generate
from .prompt_lookup import DRAFT_TOKENS


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "suffix": None,
               "logit_bias": None, "presence_penalty": 0, "frequency_penalty": 0}
CHAT_UNSUPPORTED = {"logprobs": False, "top_logprobs": None, "tools": None,
                    "tool_choice": None, "response_format": None}
MAX_BODY = 8 << 20  # bytes: a full-context prompt of token ids is well under this
POST_PATHS = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")
GET_PATHS = ("/health", "/v1/models")
SOCKET_TIMEOUT = 30.0  # seconds a client may take to send its request


def _number(body: dict, key: str, default, kind: type, minimum=None, maximum=None):
    """body[key] as `kind` (an int for int; any finite number for float), within bounds."""
    value = body.get(key, default)
    if value is None:
        return default
    numeric = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if (not numeric or isinstance(value, bool) or value != value or value in (float("inf"),
                                                                              float("-inf"))
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        bounds = (f" >= {minimum}" if minimum is not None else "") + (
            f" and <= {maximum}" if maximum is not None else "")
        what = "an integer" if kind is int else "a finite number"
        raise RequestError(400, f"{key} must be {what}{bounds}, got {value!r}")
    return kind(value)


@dataclass(eq=False)  # a job is one request in flight: compared by identity
class Job:
    """One validated request: its prompt ids, its limits and sampling, the stop strings and
    ids, what the response carries; `future` gets the response, and for a stream `events`
    gets each chunk, then None."""

    ids: list[int]
    max_tokens: int
    sampling: dict
    stop: list[str]
    stop_ids: tuple[int, ...]
    logprobs: bool  # the chosen tokens' log-probs in the response
    as_ids: bool  # tokens named "token_id:N" (vLLM's return_tokens_as_token_ids)
    chat: bool
    stream: bool
    future: Future = field(default_factory=Future)
    events: queue.Queue | None = None


class Engine:
    """Batches queued completion requests through the model, one batch at a time. A greedy
    request alone in its batch decodes with `draft_tokens` prompt-lookup guesses per forward
    (as RuntimeBackend does). Text goes in and out through `encode` and `decode` (the caller's
    tokenizer, special tokens included): the server itself knows only token ids."""

    def __init__(self, model, encode: Callable[[str], list[int]],
                 decode: Callable[[list[int]], str], name: str, max_batch: int = 16,
                 draft_tokens: int = DRAFT_TOKENS,
                 chat: Callable[[list, dict], list[int]] | None = None,
                 end_of_turn: tuple[int, ...] = ()):
        """`chat(messages, chat_template_kwargs)`: the prompt's ids, or ValueError naming what
        is wrong (None: no chat endpoint); `end_of_turn`: ids that end a chat reply."""
        self.model, self.encode, self.decode, self.name = model, encode, decode, name
        self.chat, self.end_of_turn = chat, end_of_turn
        self.max_batch = max_batch
        self.draft_tokens = draft_tokens
        self.context = model.config.max_position_embeddings
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._worker, daemon=True).start()

    def submit(self, request: dict, chat: bool = False) -> Job:
        """Queue a request; the job's `future` gets the response, or, for `stream: true`, its
        `events` queue gets each chunk's dict, then None."""
        job = self._validate(request, chat)
        if job.stream:
            job.events = queue.Queue()
        self.queue.put(job)
        return job

    def tokens(self, body: dict, tokenize: bool) -> dict:
        """vLLM's /tokenize ({"prompt"} to {"tokens", "count", "max_model_len"}; special
        tokens written out are special) and /detokenize ({"tokens"} to {"prompt"}), with the
        served model's own tokenizer: what a client needs whose tokenizer differs."""
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        if body.get("model", self.name) != self.name:
            raise RequestError(404, f"model {body.get('model')!r} is not served here; "
                                    f"GET /v1/models lists {self.name!r}")
        if tokenize:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise RequestError(400, "prompt must be a string")
            ids = self.encode(prompt)
            return {"tokens": ids, "count": len(ids), "max_model_len": self.context}
        ids = body.get("tokens")
        vocab = self.model.config.vocab_size
        if not isinstance(ids, list) or not all(type(t) is int and 0 <= t < vocab for t in ids):
            raise RequestError(400, f"tokens must be a list of token ids (0..{vocab - 1})")
        return {"prompt": self.decode(ids)}

    def _validate(self, body: dict, chat: bool = False) -> Job:
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        if body.get("model", self.name) != self.name:
            raise RequestError(404, f"model {body.get('model')!r} is not served here; "
                                    f"GET /v1/models lists {self.name!r}")
        refused = {**UNSUPPORTED, **CHAT_UNSUPPORTED} if chat else UNSUPPORTED
        for key, default in refused.items():
            if body.get(key, default) not in (default, None):
                raise RequestError(400, f"{key}={body[key]!r} is not supported by this server "
                                        f"(leave it out, or {default!r})")
        if not isinstance(body.get("stream", False), bool):
            raise RequestError(400, f"stream must be true or false, got {body['stream']!r}")
        ids = self._chat_ids(body) if chat else self._prompt_ids(body)
        vocab = self.model.config.vocab_size
        if not ids or any(not 0 <= t < vocab for t in ids):
            raise RequestError(400, f"prompt has token ids outside the vocabulary "
                                    f"(0..{vocab - 1})" if ids else "prompt encodes to no tokens")
        max_tokens = _number(body, "max_completion_tokens" if chat and "max_completion_tokens"
                             in body else "max_tokens", 16, int, minimum=0)
        return self._rest(body, ids, max_tokens, chat)

    def _prompt_ids(self, body: dict) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str) and prompt:
            return self.encode(prompt)
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            return prompt
        raise RequestError(400, "prompt must be a non-empty string or list of token ids "
                                "(one prompt per request)")

    def _chat_ids(self, body: dict) -> list[int]:
        if self.chat is None:
            raise RequestError(404, "this server has no chat endpoint")
        options = body.get("chat_template_kwargs") or {}
        if not isinstance(options, dict):
            raise RequestError(400, "chat_template_kwargs must be an object")
        try:
            return self.chat(body.get("messages"), options)
        except ValueError as exc:
            raise RequestError(400, str(exc)) from None

    def _rest(self, body: dict, ids: list[int], max_tokens: int, chat: bool) -> Job:
        if len(ids) + max_tokens > self.context:
            raise RequestError(400, f"prompt of {len(ids)} tokens + max_tokens {max_tokens} "
                                    f"exceed the model's context of {self.context} tokens")
        sampling = {"temperature": _number(body, "temperature", 1.0, float, minimum=0.0),
                    "top_p": _number(body, "top_p", 1.0, float, minimum=0.0, maximum=1.0),
                    "top_k": _number(body, "top_k", 0, int, minimum=-1),
                    "seed": _number(body, "seed", None, int)}
        if sampling["top_p"] == 0:
            raise RequestError(400, "top_p must be in (0, 1], got 0")
        sampling["top_k"] = max(sampling["top_k"], 0)  # vLLM's -1: no top-k
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(400, f"stop must be a non-empty string or a list of them, got "
                                    f"{body.get('stop')!r}")
        stop_ids = body.get("stop_token_ids") or []
        if not isinstance(stop_ids, list) or not all(type(t) is int for t in stop_ids):
            raise RequestError(400, f"stop_token_ids must be a list of integers, got "
                                    f"{body.get('stop_token_ids')!r}")
        logprobs = None if chat else _number(body, "logprobs", None, int, minimum=0)
        if logprobs is not None and logprobs > 1:  # top_logprobs are not computed here
            raise RequestError(400, f"logprobs={logprobs} is not supported by this server (the "
                                    "chosen token's log-prob only: 0 or 1)")
        if logprobs is not None and body.get("stream"):
            raise RequestError(400, "logprobs with stream=true is not supported (streamed "
                                    "chunks carry text only): leave one of them out")
        if chat:  # a reply ends with its turn (the stop token then left out of the content)
            stop_ids = [*stop_ids, *(t for t in self.end_of_turn if t not in stop_ids)]
        return Job(ids=ids, max_tokens=max_tokens, sampling=sampling, stop=stop,
                   stop_ids=tuple(stop_ids), logprobs=logprobs is not None,
                   as_ids=bool(body.get("return_tokens_as_token_ids")), chat=chat,
                   stream=body.get("stream", False))

    def _worker(self) -> None:
        while True:
            jobs = [self.queue.get()]
            time.sleep(0.002)  # let requests sent together arrive together
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            groups: dict = {}
            for job in jobs:  # a streamed job runs alone: its chunks follow its own tokens
                key = (tuple(sorted(job.sampling.items())), job.stop_ids,
                       id(job) if job.stream else None)
                groups.setdefault(key, []).append(job)
            for group in groups.values():
                try:
                    self._run(group)
                except Exception as exc:  # noqa: BLE001 - reported to each waiting client
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(exc)
                        if job.stream:
                            job.events.put(None)

    def _run(self, jobs: list[Job]) -> None:
        new = max(job.max_tokens for job in jobs)
        on_tokens = self._streamer(jobs[0]) if jobs[0].stream else None
        results = generate(self.model, [job.ids for job in jobs], max(new, 1),
                           jobs[0].stop_ids, draft_tokens=self.draft_tokens,
                           on_tokens=on_tokens, **jobs[0].sampling) if new else None
        for i, job in enumerate(jobs):
            tokens, logprobs, finish, reason = [], [], "length", None
            if results is not None:
                g = results[i]
                cut = min(len(g.tokens), job.max_tokens)
                tokens, logprobs = g.tokens[:cut], g.logprobs[:cut]
                if g.stopped and cut == len(g.tokens):
                    finish, reason = "stop", tokens[-1]
            text = self._text(job, tokens)
            if job.stop:
                tokens, logprobs, text, finish, reason = self._stop_at_strings(
                    job, tokens, logprobs, text, finish, reason)
            response = self._choice(job, tokens, logprobs, text, finish, reason)
            if job.stream:
                on_tokens.finish(text, finish, reason)
            job.future.set_result(response)

    def _text(self, job: Job, tokens: list[int]) -> str:
        """The text of `tokens`; a chat reply's end-of-turn token is not part of it."""
        if job.chat and tokens and tokens[-1] in job.stop_ids:
            tokens = tokens[:-1]
        return self.decode(tokens)

    def _streamer(self, job: Job) -> _Streamer:
        return _Streamer(self, job)

    def _stop_at_strings(self, job, tokens, logprobs, text, finish, reason):
        """vLLM's stop strings: the text ends where the first stop string begins; the tokens
        (and usage) run to the one that completed it."""
        found = [(at, s) for s in job.stop if (at := text.find(s)) >= 0]
        if not found:
            return tokens, logprobs, text, finish, reason
        at, stop = min(found)
        keep = next(k for k in range(1, len(tokens) + 1)
                    if len(self._text(job, tokens[:k])) >= at + len(stop))
        return tokens[:keep], logprobs[:keep], text[:at], "stop", stop

    def _choice(self, job, tokens, logprobs, text, finish, reason) -> dict:
        usage = {"prompt_tokens": len(job.ids), "completion_tokens": len(tokens),
                 "total_tokens": len(job.ids) + len(tokens)}
        if job.chat:
            return {"id": f"chatcmpl-{id(job):x}", "object": "chat.completion",
                    "created": int(time.time()), "model": self.name, "choices": [{
                        "index": 0, "message": {"role": "assistant", "content": text},
                        "finish_reason": finish, "stop_reason": reason, "logprobs": None}],
                    "usage": usage}
        choice = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": reason,
                  "logprobs": None}
        if job.logprobs:
            names = ([f"token_id:{t}" for t in tokens] if job.as_ids
                     else [self.decode([t]) for t in tokens])
            choice["logprobs"] = {"tokens": names, "token_logprobs": logprobs,
                                  "top_logprobs": None, "text_offset": None}
        return {"id": f"cmpl-{id(job):x}", "object": "text_completion",
                "created": int(time.time()), "model": self.name, "choices": [choice],
                "usage": usage}


class _Streamer:
    """A streamed job's chunks: text as its tokens are chosen, held back where it could still
    turn out to start a stop string (or ends inside a character), so the chunks join into
    exactly the text the same request gets unstreamed."""

    def __init__(self, engine: Engine, job: Job):
        self.engine, self.job = engine, job
        self.tokens: list[int] = []
        self.sent = 0  # characters already sent
        self.hold = max((len(s) for s in job.stop), default=1) - 1
        self.id = f"{'chatcmpl' if job.chat else 'cmpl'}-{id(job):x}"
        if job.chat:
            self._put({"role": "assistant", "content": ""}, None)

    def __call__(self, new: list[int]) -> None:
        self.tokens.extend(new)
        tokens = self.tokens[:self.job.max_tokens]
        text = self.engine._text(self.job, tokens)
        found = [at for s in self.job.stop if (at := text.find(s)) >= 0]
        safe = min(found) if found else len(text) - self.hold
        while 0 < safe <= len(text) and text[safe - 1] == "\ufffd":
            safe -= 1  # half of a multi-byte character: wait for the rest
        if safe > self.sent:
            self._send(text[self.sent:safe], None)
            self.sent = safe

    def finish(self, text: str, finish: str, reason) -> None:
        self._send(text[self.sent:], finish, reason)
        self.job.events.put(None)

    def _send(self, text: str, finish: str | None, reason=None) -> None:
        if self.job.chat:
            self._put({"content": text} if text else {}, finish, reason)
        else:
            self._put(text, finish, reason)

    def _put(self, delta, finish: str | None, reason=None) -> None:
        choice = {"index": 0, "finish_reason": finish, "logprobs": None}
        if finish is not None:
            choice["stop_reason"] = reason
        if self.job.chat:
            choice["delta"] = delta
            kind = "chat.completion.chunk"
        else:
            choice["text"] = delta
            kind = "text_completion"
        self.job.events.put({"id": self.id, "object": kind, "created": int(time.time()),
                                "model": self.engine.name, "choices": [choice]})


class Handler(BaseHTTPRequestHandler):
    """One connection's requests: the OpenAI-compatible endpoints over `engine`."""

    protocol_version = "HTTP/1.1"
    engine: Engine  # set per server by make_server
    timeout = SOCKET_TIMEOUT  # a client that stops sending is dropped, not waited for

    def log_message(self, *args) -> None:  # quiet: one line per request is noise here
        pass

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": {"message": message, "type": "invalid_request_error",
                                      "code": status}})

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok"})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": self.engine.name, "object": "model", "owned_by": "tracekit",
                 "max_model_len": self.engine.context}]})
        else:
            self._refuse("GET")

    def _refuse(self, method: str) -> None:
        """A 405 for an endpoint that takes another method, else a 404; both as JSON."""
        if self.path in POST_PATHS:
            return self._error(405, f"{self.path} takes POST, not {method}")
        if self.path in GET_PATHS:
            return self._error(405, f"{self.path} takes GET, not {method}")
        self._error(404, f"no such endpoint: {method} {self.path}")

    def do_PUT(self) -> None:
        self._refuse("PUT")

    def do_DELETE(self) -> None:
        self._refuse("DELETE")

    def do_PATCH(self) -> None:
        self._refuse("PATCH")

    def send_error(self, code: int, message=None, explain=None) -> None:
        """A method with no handler (501) answered in OpenAI's JSON shape, not HTML."""
        if code == 501 and getattr(self, "command", None):
            self.close_connection = True
            return self._error(501, f"{self.command} is not supported: use GET or POST")
        super().send_error(code, message, explain)

    def handle_one_request(self) -> None:
        """One request; a client that goes away mid-request ends its connection quietly."""
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True  # the body is not read: the connection is over
            return self._error(413 if length > MAX_BODY else 400,
                               f"Content-Length must be 0..{MAX_BODY} bytes, got "
                               f"{self.headers.get('Content-Length')}")
        raw = self.rfile.read(length)
        if len(raw) < length:  # the client went away mid-body: nothing to answer
            self.close_connection = True
            return
        if self.path not in POST_PATHS:
            return self._refuse("POST")
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return self._error(400, f"the body is not valid JSON ({exc})")
        try:
            if self.path in ("/tokenize", "/detokenize"):
                return self._send(200, self.engine.tokens(body, self.path == "/tokenize"))
            job = self.engine.submit(body, chat=self.path == "/v1/chat/completions")
            if job.stream:
                return self._stream(job)
            self._send(200, job.future.result())
        except RequestError as exc:
            self._error(exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - the server keeps serving
            self._error(500, f"generation failed: {type(exc).__name__}: {exc}")

    def _stream(self, job: Job) -> None:
        """Server-sent events until `data: [DONE]`; the connection then closes (no
        length is known in advance). A failure mid-stream is sent as an error event."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        while (event := job.events.get()) is not None:
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()
        error = job.future.exception()
        if error is not None:
            self.wfile.write(b"data: " + json.dumps({"error": {
                "message": f"generation failed: {type(error).__name__}: {error}",
                "type": "server_error", "code": 500}}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000,
                socket_timeout: float = SOCKET_TIMEOUT) -> ThreadingHTTPServer:
    """The HTTP server over `engine` (not yet serving: call serve_forever)."""
    handler = type("Handler", (Handler,), {"engine": engine, "timeout": socket_timeout})
    return Server((host, port), handler)


class Server(ThreadingHTTPServer):
    """One thread per connection, a listen backlog for bursts of clients (the default 5
    reset connections when 40 arrived at once), threads that never block shutdown."""

    request_queue_size = 1024
    daemon_threads = True
