"""`tracekit serve`: an OpenAI-compatible HTTP server over our runtime.

Endpoints: GET /health, GET /v1/models, POST /v1/completions (prompt as text or token ids,
max_tokens, temperature, top_p, top_k, seed, stop, stop_token_ids, logprobs; vLLM's
`return_tokens_as_token_ids`). Requests arriving together are decoded as one batch: a worker
thread takes whatever is queued (same sampling settings) and runs one batched `generate`.
Bad requests get a 4xx with a one-line message; the server keeps serving.
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
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            ids = self.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            ids = prompt
        else:
            raise RequestError(400, "prompt must be a non-empty string or list of token ids "
                                    "(one prompt per request)")
        vocab = self.model.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise RequestError(400, f"prompt has token ids outside the vocabulary (0..{vocab - 1})")
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise RequestError(400, f"max_tokens must be a non-negative integer, got {max_tokens!r}")
        if len(ids) + max_tokens > self.context:
            raise RequestError(400, f"prompt of {len(ids)} tokens + max_tokens {max_tokens} "
                                    f"exceed the model's context of {self.context} tokens")
        sampling = {}
        for key, kind, default in (("temperature", float, 1.0), ("top_p", float, 1.0),
                                   ("top_k", int, 0), ("seed", int, None)):
            value = body.get(key, default)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise RequestError(400, f"{key} must be a number, got {value!r}")
            sampling[key] = kind(value) if value is not None else None
        if sampling["top_k"] < 0:
            sampling["top_k"] = 0  # vLLM's -1: no top-k
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        stop_ids = body.get("stop_token_ids") or []
        if not all(isinstance(s, str) for s in stop) or not all(
                isinstance(t, int) for t in stop_ids):
            raise RequestError(400, "stop must be strings and stop_token_ids integers")
        return {"ids": ids, "max_tokens": max_tokens, "sampling": sampling, "stop": stop,
                "stop_ids": tuple(stop_ids), "logprobs": body.get("logprobs") is not None,
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
            for s in job["stop"]:  # stop strings end the text (and the tokens) at their start
                at = text.find(s)
                if at >= 0:
                    text, finish, reason = text[:at], "stop", s
                    while tokens and len(self.decode(tokens)) > at:
                        tokens.pop()
                        logprobs.pop()
            job["future"].set_result(self._choice(job, tokens, logprobs, text, finish, reason))

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


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

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
            length = int(self.headers.get("Content-Length") or 0)
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

    return ThreadingHTTPServer((host, port), Handler)
