"""`tracekit serve`: an OpenAI-compatible HTTP server over our runtime.

Endpoints: GET /health, GET /v1/models, POST /v1/completions (prompt as text or token ids,
max_tokens, temperature, top_p, top_k, seed, stop, stop_token_ids, logprobs; vLLM's
`return_tokens_as_token_ids`; stream, n > 1, echo and the penalties are refused with a 400).
Requests arriving together are decoded as one batch: a worker thread takes whatever is queued
(same sampling settings) and runs one batched `generate`. Bad requests get a 4xx with a
one-line message (bodies over MAX_BODY a 413); a client silent for SOCKET_TIMEOUT is dropped;
the server keeps serving.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .generation import generate
from .prompt_lookup import DRAFT_TOKENS


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


UNSUPPORTED = {"stream": False, "n": 1, "best_of": 1, "echo": False, "suffix": None,
               "logit_bias": None, "presence_penalty": 0, "frequency_penalty": 0}
MAX_BODY = 8 << 20  # bytes: a full-context prompt of token ids is well under this
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


class Engine:
    """Batches queued completion requests through the model, one batch at a time. A greedy
    request alone in its batch decodes with `draft_tokens` prompt-lookup guesses per forward
    (as RuntimeBackend does). Text goes in and out through `encode` and `decode` (the caller's
    tokenizer, special tokens included): the server itself knows only token ids."""

    def __init__(self, model, encode: Callable[[str], list[int]],
                 decode: Callable[[list[int]], str], name: str, max_batch: int = 16,
                 draft_tokens: int = DRAFT_TOKENS):
        self.model, self.encode, self.decode, self.name = model, encode, decode, name
        self.max_batch = max_batch
        self.draft_tokens = draft_tokens
        self.context = model.config.max_position_embeddings
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._worker, daemon=True).start()

    def submit(self, request: dict) -> Future:
        job = self._validate(request)
        job["future"] = Future()
        self.queue.put(job)
        return job["future"]

    def _validate(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        if body.get("model", self.name) != self.name:
            raise RequestError(404, f"model {body.get('model')!r} is not served here; "
                                    f"GET /v1/models lists {self.name!r}")
        for key, default in UNSUPPORTED.items():
            if body.get(key, default) not in (default, None):
                raise RequestError(400, f"{key}={body[key]!r} is not supported by this server "
                                        f"(leave it out, or {default!r})")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str) and prompt:
            ids = self.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            ids = prompt
        else:
            raise RequestError(400, "prompt must be a non-empty string or list of token ids "
                                    "(one prompt per request)")
        vocab = self.model.config.vocab_size
        if not ids or any(not 0 <= t < vocab for t in ids):
            raise RequestError(400, f"prompt has token ids outside the vocabulary "
                                    f"(0..{vocab - 1})" if ids else "prompt encodes to no tokens")
        max_tokens = _number(body, "max_tokens", 16, int, minimum=0)
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
        logprobs = _number(body, "logprobs", None, int, minimum=0)
        return {"ids": ids, "max_tokens": max_tokens, "sampling": sampling, "stop": stop,
                "stop_ids": tuple(stop_ids), "logprobs": logprobs is not None,
                "as_ids": bool(body.get("return_tokens_as_token_ids"))}

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
            for job in jobs:
                key = (tuple(sorted(job["sampling"].items())), job["stop_ids"])
                groups.setdefault(key, []).append(job)
            for group in groups.values():
                try:
                    self._run(group)
                except Exception as exc:  # noqa: BLE001 - reported to each waiting client
                    for job in group:
                        if not job["future"].done():
                            job["future"].set_exception(exc)

    def _run(self, jobs: list[dict]) -> None:
        new = max(job["max_tokens"] for job in jobs)
        results = generate(self.model, [job["ids"] for job in jobs], max(new, 1),
                           jobs[0]["stop_ids"], draft_tokens=self.draft_tokens,
                           **jobs[0]["sampling"]) if new else None
        for i, job in enumerate(jobs):
            tokens, logprobs, finish, reason = [], [], "length", None
            if results is not None:
                g = results[i]
                cut = min(len(g.tokens), job["max_tokens"])
                tokens, logprobs = g.tokens[:cut], g.logprobs[:cut]
                if g.stopped and cut == len(g.tokens):
                    finish, reason = "stop", tokens[-1]
            text = self.decode(tokens)
            if job["stop"]:
                tokens, logprobs, text, finish, reason = self._stop_at_strings(
                    job["stop"], tokens, logprobs, text, finish, reason)
            job["future"].set_result(self._choice(job, tokens, logprobs, text, finish, reason))

    def _stop_at_strings(self, stops, tokens, logprobs, text, finish, reason):
        """vLLM's stop strings: the text ends where the first stop string begins; the tokens
        (and usage) run to the one that completed it."""
        found = [(at, s) for s in stops if (at := text.find(s)) >= 0]
        if not found:
            return tokens, logprobs, text, finish, reason
        at, stop = min(found)
        keep = next(k for k in range(1, len(tokens) + 1)
                    if len(self.decode(tokens[:k])) >= at + len(stop))
        return tokens[:keep], logprobs[:keep], text[:at], "stop", stop

    def _choice(self, job, tokens, logprobs, text, finish, reason) -> dict:
        choice = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": reason,
                  "logprobs": None}
        if job["logprobs"]:
            names = ([f"token_id:{t}" for t in tokens] if job["as_ids"]
                     else [self.decode([t]) for t in tokens])
            choice["logprobs"] = {"tokens": names, "token_logprobs": logprobs,
                                  "top_logprobs": None, "text_offset": None}
        return {"id": f"cmpl-{id(job):x}", "object": "text_completion",
                "created": int(time.time()), "model": self.name, "choices": [choice],
                "usage": {"prompt_tokens": len(job["ids"]), "completion_tokens": len(tokens),
                          "total_tokens": len(job["ids"]) + len(tokens)}}


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000,
                socket_timeout: float = SOCKET_TIMEOUT) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = socket_timeout  # a client that stops sending is dropped, not waited for

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
                    {"id": engine.name, "object": "model", "owned_by": "tracekit",
                     "max_model_len": engine.context}]})
            else:
                self._error(404, f"no such endpoint: GET {self.path}")

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
            if self.path != "/v1/completions":
                return self._error(404, f"no such endpoint: POST {self.path}")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                return self._error(400, f"the body is not valid JSON ({exc})")
            try:
                future = engine.submit(body)
                self._send(200, future.result())
            except RequestError as exc:
                self._error(exc.status, str(exc))
            except Exception as exc:  # noqa: BLE001 - the server keeps serving
                self._error(500, f"generation failed: {type(exc).__name__}: {exc}")

    return Server((host, port), Handler)


class Server(ThreadingHTTPServer):
    """One thread per connection, a listen backlog for bursts of clients (the default 5
    reset connections when 40 arrived at once), threads that never block shutdown."""

    request_queue_size = 1024
    daemon_threads = True
