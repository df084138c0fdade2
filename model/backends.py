"""Where predictions come from: our runtime (`runtime`), transformers' CwmForCausalLM
(`transformers`, the reference path), or any OpenAI-compatible `/v1/completions` server that
takes token-id prompts and stop token ids (`openai`: vLLM serving facebook/cwm, or
`tracekit serve`). Every backend is a `Backend`: `generate` is its own; `teacher_forced` and
`new_session` have plain defaults that ours overrides with one prefill of the trace and a
cached session. Backends see token ids only; `sampling` is any object with `temperature`,
`top_k`, `top_p` and `seed`.

Model specs (`load_backend`): model/spec.py.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .cache import KVCache
from .errors import BackendError  # noqa: F401 - raised here, imported from here too
from .generation import (
    Continuation,
    Generation,
    RowJob,
    decode_rows,
    forced_start,
    generate,
    joined,
)
from .prompt_lookup import DRAFT_TOKENS, PromptLookup
from .spec import ModelSpec

GUESS_FROM = 512  # a row's prompt-lookup guesses copy from its last this many tokens
# Guesses per row in a batch (each costs a token in every row): over CRUXEval's first 100,
# 3 gave rollouts 6.7-7.7 s, 8 gave 9.0-9.6 s, none 9.7-12.9 s (teacher-forced: 9.7-10.6,
# 9.3-13.9, 10.9-13.9 s), identical predictions.
ROW_DRAFT_TOKENS = 3
Conversation = Generator[tuple[list[int], int], Generation, object]


class Backend:
    """What trace prediction needs from a model over token ids (the protocol every backend
    follows: subclass it and write `generate`)."""

    name = "backend"

    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop_ids,
                 sampling, on_tokens=None) -> list[Generation]:
        """One generation per prompt, each ending at the first of `stop_ids` (kept) or after
        `max_new_tokens`. `on_tokens` (one prompt only): called with new tokens as they come
        (a backend that cannot stream calls it once, at the end)."""
        raise NotImplementedError

    def teacher_forced(self, ids: list[int], starts: list[int], max_new_tokens: int, stop_ids,
                       sampling) -> list[Generation]:
        """Branch i continues `ids[:starts[i]]`. By default, every branch's prompt in one
        `generate` (a server's are concurrent requests)."""
        return self.generate([ids[:n] for n in starts], max_new_tokens, stop_ids, sampling)

    def teacher_forced_stream(self, traces: list[tuple[list[int], list[int]]],
                              max_new_tokens: int, stop_ids, sampling
                              ) -> Iterator[tuple[int, list[Generation]]]:
        """`teacher_forced` of each (ids, starts), yielded as (its index, its generations) as
        each is done, in any order. By default, one trace after the other."""
        for t, (ids, starts) in enumerate(traces):
            yield t, self.teacher_forced(ids, starts, max_new_tokens, stop_ids, sampling)

    conversation_batch = 1  # conversations `converse` keeps going at once

    def converse(self, conversations: Iterable[tuple[object, Conversation]], stop_ids,
                 sampling) -> Iterator[tuple[object, object]]:
        """Run each (key, conversation) to its end and yield (key, what it returns) as each
        ends, in any order. A conversation (a generator: `TracePredictor.rollout_steps`)
        yields requests (a prompt's ids, the tokens that may follow) and is sent each
        generation. By default, in rounds: the next request of each of up to
        `conversation_batch` conversations, in one `generate` per distinct budget (a
        server's are concurrent requests), a finished one replaced by the next."""
        pending = iter(conversations)
        active: dict[object, tuple[Conversation, tuple[list[int], int]]] = {}
        while True:
            while len(active) < self.conversation_batch:
                key, conversation = next(pending, (None, None))
                if conversation is None:
                    break
                try:
                    active[key] = conversation, next(conversation)
                except StopIteration as done:
                    yield key, done.value
            if not active:
                return
            for budget in sorted({budget for _, (_, budget) in active.values()}):
                keys = [key for key, (_, (_, b)) in active.items() if b == budget]
                prompts = [active[key][1][0] for key in keys]
                generations = self.generate(prompts, budget, stop_ids, sampling)
                for key, generation in zip(keys, generations, strict=True):
                    conversation = active[key][0]
                    try:
                        active[key] = conversation, conversation.send(generation)
                    except StopIteration as done:
                        del active[key]
                        yield key, done.value

    def new_session(self, rewind_margin: int) -> RuntimeSession | None:
        """A session that keeps the prompt's cache from step to step, or None when the backend
        keeps none (every step then sends the whole prompt)."""
        return None


class RuntimeBackend(Backend):
    """Our runtime, in process (CPU or CUDA). Greedy one-prompt decoding checks
    `draft_tokens` tokens guessed by prompt lookup per forward (model/prompt_lookup.py; 0: one
    token per forward): the same tokens, in fewer forwards."""

    name = "runtime"
    exact_from_forward = True  # greedy teacher forcing decodes only the frames it gets wrong
    batch_conversations = True  # greedy conversations decode together (else one at a time)

    def __init__(self, model, branch_batch: int = 64, prefill_chunk: int = 2048,
                 draft_tokens: int = DRAFT_TOKENS):
        self.model = model.eval()
        self.branch_batch = branch_batch
        self.prefill_chunk = prefill_chunk
        self.draft_tokens = draft_tokens

    def generate(self, prompts, max_new_tokens, stop_ids, sampling,
                 on_tokens=None) -> list[Generation]:
        return generate(self.model, prompts, max_new_tokens, stop_ids,
                        draft_tokens=self.draft_tokens, on_tokens=on_tokens, **vars(sampling))

    @torch.inference_mode()
    def teacher_forced_stream(self, traces, max_new_tokens, stop_ids, sampling):
        """Greedy (and `exact_from_forward`, the default): one forward over each real trace
        keeps every position's argmax, and each branch starts with the real tokens for as long
        as they are the model's own choices (generation.forced_start): a branch right up to
        its stop is that, with no decoding; the others go on decoding from where the model
        first differs, the branches of every trace together in one batch of `branch_batch`
        rows refilled as rows finish (generation.decode_rows), and a trace is yielded as soon
        as its last branch is done. (The forward's logits round differently from a decode
        step's, so a near-tie could go the other way there, as in any batched decode.)
        Sampled, each trace's branches decode over its shared cached prefix (`_decoded`)."""
        if sampling.temperature > 0 or not self.exact_from_forward:
            for t, (ids, starts) in enumerate(traces):
                yield t, self._decoded(ids, starts, max_new_tokens, stop_ids, sampling)
            return
        traces = list(traces)
        out: list[list[Generation | None]] = [[None] * len(starts) for _, starts in traces]
        left = [len(starts) for _, starts in traces]  # branches not yet done, per trace
        ready: list[int] = []  # traces whose branches were all right, not yet yielded

        def jobs():
            for t, (ids, starts) in enumerate(traces):
                cache, argmax, logprobs = self._forward(ids)
                ends = [*starts[1:], len(ids)]
                for i, (n, end) in enumerate(zip(starts, ends)):
                    start, whole = forced_start(ids, n, argmax, logprobs, max_new_tokens,
                                                stop_ids)
                    out[t][i] = start
                    if whole:
                        left[t] -= 1
                    else:  # guessed from the trace so far and the real frame
                        at = n + len(start.tokens)
                        yield RowJob((t, i), cache, at - 1, [ids[at - 1]],
                                     max_new_tokens - len(start.tokens),
                                     guesses_from=ids[at:end] + ids[max(0, at - GUESS_FROM):at])
                if left[t] == 0:
                    ready.append(t)

        def done():
            while ready:
                t = ready.pop()
                yield t, out[t]

        longest = max((len(ids) for ids, _ in traces), default=0)
        for (t, i), generation in decode_rows(self.model, jobs(), self.branch_batch,
                                              longest + max_new_tokens + 1, stop_ids,
                                              min(self.draft_tokens, ROW_DRAFT_TOKENS)):
            out[t][i] = joined(out[t][i], generation)
            left[t] -= 1
            if left[t] == 0:
                ready.append(t)
            yield from done()
        yield from done()

    def converse(self, conversations, stop_ids, sampling):
        """Greedy (and `batch_conversations`, the default; not with a compiled step, which
        runs one row): the conversations decode together, `branch_batch` rows at a time in
        one batch refilled as they end (generation.decode_rows), each in a row of its own that
        holds its prompt from one request to the next: a request runs only the tokens that
        differ from what the row holds (after a frame, usually its last token). Else one
        conversation after another, each through a session (`new_session`)."""
        if sampling.temperature > 0 or not self.batch_conversations or self.model.compile_decode:
            for key, conversation in conversations:
                session = self.new_session(self.model.config.max_position_embeddings)
                yield key, drive(conversation, session, self, stop_ids, sampling)
            return
        ended: list[tuple[object, object]] = []  # (key, result), not yet yielded

        def jobs():
            for key, conversation in conversations:
                try:
                    prompt, budget = next(conversation)
                except StopIteration as done:
                    ended.append((key, done.value))
                    continue
                cache, _, _ = self._forward(prompt[:-1], choices=False)
                yield RowJob(key, cache, len(prompt) - 1, prompt[-1:], budget,
                             _Follow(key, conversation, prompt, ended),
                             guesses_from=prompt[-GUESS_FROM:])

        rows = decode_rows(self.model, jobs(), self.branch_batch,
                           self.model.config.max_position_embeddings + 1, stop_ids,
                           min(self.draft_tokens, ROW_DRAFT_TOKENS))
        for _ in rows:  # each job's result is in `ended` by then
            yield from _drain(ended)
        yield from _drain(ended)

    def _forward(self, ids: list[int], choices: bool = True
                 ) -> tuple[KVCache, list[int], list[float]]:
        """One forward over a whole trace, in chunks (bounded masks on long traces): a cache
        holding every position in order and (with `choices`) each position's argmax and the
        log-probability of each real next token (else no logits but the last are made)."""
        model = self.model
        cache = KVCache(model.config, 1, len(ids), model.dtype, model.device,
                        rewind_margin=len(ids))
        argmax, logprobs = [], []
        for first in range(0, len(ids), self.prefill_chunk):
            chunk = ids[first:first + self.prefill_chunk]
            logits = model(torch.tensor([chunk], device=model.device), cache=cache,
                           logits_to_keep=0 if choices else 1).logits[0]
            if choices:
                _choices(logits, ids[first + 1:first + 1 + len(chunk)], argmax, logprobs)
        return cache, argmax, logprobs

    def teacher_forced(self, ids, starts, max_new_tokens, stop_ids, sampling):
        """One trace's `teacher_forced_stream`."""
        [(_, generations)] = self.teacher_forced_stream([(ids, starts)], max_new_tokens,
                                                        stop_ids, sampling)
        return generations

    def _decoded(self, ids, starts, max_new_tokens, stop_ids, sampling) -> list[Generation]:
        """Every branch decoded (the path of sampling, and of `exact_from_forward` False): one
        prefill of the trace, then the branches decode together, `branch_batch` at a time,
        each reading the shared cached prefix."""
        model = self.model
        prefix = ids[:max(starts) - 1]
        cache = KVCache(model.config, 1, max(starts), model.dtype, model.device,
                        rewind_margin=max(starts))
        for first in range(0, len(prefix), self.prefill_chunk):
            model(torch.tensor([prefix[first:first + self.prefill_chunk]], device=model.device),
                  cache=cache, logits_to_keep=1)
        out = []
        for first in range(0, len(starts), self.branch_batch):
            chunk = starts[first:first + self.branch_batch]
            # each branch re-feeds its prompt's last token, whose logits start its frame
            forks = cache.fork([n - 1 for n in chunk], max_new=max_new_tokens + 1)
            out += generate(model, [[ids[n - 1]] for n in chunk], max_new_tokens, stop_ids,
                            cache=forks, **vars(sampling))
        return out

    def new_session(self, rewind_margin: int) -> RuntimeSession:
        return RuntimeSession(self.model, rewind_margin, draft_tokens=self.draft_tokens)


class _Follow:
    """A conversation's next request, as a RowJob's `follow`: the row holds the last prompt
    and what was generated after it, but the last token; the next prompt keeps what they
    share and runs the rest. When the conversation ends, its result goes to `ended`."""

    def __init__(self, key, conversation: Conversation, prompt: list[int],
                 ended: list[tuple[object, object]]):
        self.key, self.conversation, self.prompt, self.ended = key, conversation, prompt, ended

    def __call__(self, generation: Generation) -> Continuation | None:
        try:
            prompt, budget = self.conversation.send(generation)
        except StopIteration as done:
            self.ended.append((self.key, done.value))
            return None
        # the last token always runs, for its logits
        keep = _shared(self.prompt + generation.tokens[:-1], prompt[:-1])
        self.prompt = prompt
        return Continuation(keep, prompt[keep:], budget)


def drive(conversation: Conversation, cached: RuntimeSession | None, backend: Backend,
          stop_ids: tuple[int, ...], sampling):
    """Run one conversation (`TracePredictor.rollout_steps`) to its end, each prompt generated
    through the backend's session `cached` (only the tokens it does not hold run), or sent
    whole when the backend keeps none; returns what the conversation returns."""
    try:
        prompt, budget = next(conversation)
        while True:
            if cached is not None:
                generation = cached.generate(prompt, budget, stop_ids, sampling)
            else:
                generation = backend.generate([prompt], budget, stop_ids, sampling)[0]
            prompt, budget = conversation.send(generation)
    except StopIteration as done:
        return done.value


def _shared(a: list[int], b: list[int]) -> int:
    """How many tokens, from the first, `a` and `b` have in common."""
    shared = 0
    for x, y in zip(a, b):
        if x != y:
            break
        shared += 1
    return shared


def _drain(items: list):
    while items:
        yield items.pop(0)


def _choices(logits: torch.Tensor, following: list[int], argmax: list[int],
             logprobs: list[float]) -> None:
    """Append each position's argmax of `logits` (positions, vocab), and the log-probability
    of the token that really follows it (`following`, one shorter at the trace's end)."""
    argmax += logits.argmax(-1).tolist()
    if following:
        real = torch.tensor(following, device=logits.device)[:, None]
        logprobs += torch.log_softmax(logits[:len(following)].float(), -1).gather(
            -1, real)[:, 0].tolist()


class RuntimeSession:
    """A KV cache that follows a growing prompt: each call runs only the tokens that differ
    from what the cache already holds (the longest common prefix is kept). Sliding layers keep
    `rewind_margin` positions beyond their window, enough to step back over a frame or two;
    going back further, or past the cache's size (which doubles as needed), starts
    the cache again from the prompt. Greedy decoding also runs the prompt-lookup guesses it
    checks (`draft_tokens`), guessed from every token so far (`lookup`, kept between calls)."""

    def __init__(self, model, rewind_margin: int, capacity: int = 4096, draft_tokens: int = 0):
        self.model = model
        self.rewind_margin = rewind_margin
        self.draft_tokens = draft_tokens
        self.cache = KVCache(model.config, 1, capacity, model.dtype, model.device,
                             rewind_margin=rewind_margin)
        self.cached: list[int] = []  # the tokens whose keys/values the cache holds
        self.lookup = PromptLookup()  # the tokens so far, indexed for guesses

    def generate(self, prompt: list[int], max_new_tokens, stop_ids, sampling) -> Generation:
        # at least one token runs, for the logits
        keep = min(_shared(self.cached, prompt), len(prompt) - 1)
        needed = len(prompt) + max_new_tokens
        if needed > self.cache.max_length:
            limit = self.model.config.max_position_embeddings
            capacity = min(max(needed, 2 * self.cache.max_length), max(limit, needed))
            self.cache = KVCache(self.model.config, 1, capacity, self.model.dtype,
                                 self.model.device, rewind_margin=self.rewind_margin)
            self.cached, keep = [], 0
        try:
            self.cache.rewind(keep)
        except ValueError:  # further back than the sliding layers keep: start again
            self.cache.rewind(0)
            keep = 0
        self.cached = prompt[:keep]  # (what the cache surely holds, should generate fail)
        self.lookup.truncate(keep)  # (it holds the cached tokens and more)
        generation = generate(self.model, [prompt[keep:]], max_new_tokens, stop_ids,
                              cache=self.cache, draft_tokens=self.draft_tokens,
                              lookup=self.lookup, **vars(sampling))[0]
        self.cached = prompt + generation.tokens[:-1]  # the last token chosen is not run
        return generation


class TransformersBackend(Backend):
    """transformers' CwmForCausalLM and its `generate`: the reference path."""

    name = "transformers"

    def __init__(self, model, branch_batch: int = 16):
        self.model = model.eval()
        self.branch_batch = self.conversation_batch = branch_batch

    @torch.no_grad()
    def teacher_forced(self, ids, starts, max_new_tokens, stop_ids, sampling):
        """Greedy: one forward over the real trace says which frames `generate` would write
        exactly (generation.forced_start: those are the real frame); the others are generated
        from their prompts, `branch_batch` at a time (left-padded). Sampled: every frame so."""
        out: list[Generation | None] = [None] * len(starts)
        if sampling.temperature <= 0:
            logits = self.model(torch.tensor([ids], device=self.model.device)).logits[0]
            argmax, logprobs = [], []
            _choices(logits, ids[1:], argmax, logprobs)
            for i, n in enumerate(starts):
                start, whole = forced_start(ids, n, argmax, logprobs, max_new_tokens, stop_ids)
                out[i] = start if whole else None
        wrong = [i for i, generation in enumerate(out) if generation is None]
        for first in range(0, len(wrong), self.branch_batch):
            chunk = wrong[first:first + self.branch_batch]
            generated = self.generate([ids[:starts[i]] for i in chunk], max_new_tokens,
                                      stop_ids, sampling)
            for i, generation in zip(chunk, generated):
                out[i] = generation
        return out

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, stop_ids, sampling,
                 on_tokens=None) -> list[Generation]:
        device = self.model.device
        width = max(len(p) for p in prompts)
        pad = 0
        ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        options = dict(do_sample=False)
        if sampling.temperature > 0:
            options = dict(do_sample=True, temperature=sampling.temperature,
                           top_k=sampling.top_k or None, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  eos_token_id=list(stop_ids), pad_token_id=pad,
                                  output_logits=True, return_dict_in_generate=True, **options)
        new = out.sequences[:, width:]
        logprobs = torch.stack([torch.log_softmax(step.float(), -1) for step in out.logits], 1)
        chosen = logprobs.gather(-1, new[:, :logprobs.shape[1], None])[..., 0]
        results = []
        for tokens, lps in zip(new.tolist(), chosen.tolist()):
            stop = next((i + 1 for i, t in enumerate(tokens) if t in stop_ids), None)
            end = stop or len(tokens)
            results.append(Generation(tokens[:end], lps[:end], stop is not None))
        if on_tokens is not None:
            on_tokens(results[0].tokens)
        return results


class OpenAIBackend(Backend):
    """An OpenAI-compatible `/v1/completions` server, prompts sent as token ids (vLLM's
    `stop_token_ids` and `return_tokens_as_token_ids` extensions; `tracekit serve` has both);
    `chat` uses its `/v1/chat/completions`."""

    name = "openai"

    def __init__(self, url: str, model: str, concurrency: int = 8, timeout: float = 600):
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1"):
            self.url += "/v1"
        self.model = model
        self.concurrency = self.conversation_batch = concurrency
        self.timeout = timeout

    def generate(self, prompts, max_new_tokens, stop_ids, sampling,
                 on_tokens=None) -> list[Generation]:
        with ThreadPoolExecutor(min(self.concurrency, len(prompts))) as pool:
            results = list(pool.map(lambda p: self._one(p, max_new_tokens, stop_ids, sampling),
                                    prompts))
        if on_tokens is not None:
            on_tokens(results[0].tokens)
        return results

    def _one(self, prompt, max_new_tokens, stop_ids, sampling) -> Generation:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "stop_token_ids": list(stop_ids), "logprobs": 1,
                "return_tokens_as_token_ids": True, "skip_special_tokens": False}
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        choice = self._post("/completions", body)["choices"][0]
        logprobs = choice.get("logprobs") or {}
        tokens = [int(str(t).removeprefix("token_id:")) for t in logprobs.get("tokens", [])]
        values = [float(v) if v is not None else 0.0
                  for v in logprobs.get("token_logprobs", [])]
        stop = choice.get("stop_reason")  # vLLM: the stop token id, which it may leave out
        if isinstance(stop, int) and stop in stop_ids and (not tokens or tokens[-1] != stop):
            tokens.append(stop)
            values.append(0.0)  # its log-prob was not reported
        return Generation(tokens, values, choice.get("finish_reason") == "stop")

    def chat(self, messages: list[dict], max_tokens: int, sampling, template_kwargs: dict,
             on_text=None) -> tuple[str, bool, int | None]:
        """One reply from the server's `/v1/chat/completions` (its own chat template renders
        the messages; vLLM's `chat_template_kwargs`): (text, ended on its own, tokens; None
        when streamed). `on_text` streams the text (server-sent events) as it comes."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "chat_template_kwargs": template_kwargs, "skip_special_tokens": False}
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if on_text is None:
            answer = self._post("/chat/completions", body)
            choice = answer["choices"][0]
            return (choice["message"].get("content") or "", choice.get("finish_reason") == "stop",
                    answer.get("usage", {}).get("completion_tokens", 0))
        parts, finish = [], None
        for event in self._events("/chat/completions", {**body, "stream": True}):
            if "error" in event:
                raise BackendError(f"{self.url}/chat/completions: {event['error'].get('message')}")
            for choice in event.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    parts.append(piece)
                    on_text(piece)
                finish = choice.get("finish_reason") or finish
        return "".join(parts), finish == "stop", None  # (chunks are not tokens)

    def tokenize(self, text: str) -> tuple[list[int], int | None] | None:
        """The served model's own ids for `text` (special tokens written out are special) and
        its context length, by vLLM's `POST /tokenize` (`tracekit serve` has it too); None
        when the server has no such endpoint."""
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        try:
            answer = self._post("/tokenize", body, root=True)
        except BackendError as exc:
            if "HTTP 404" in str(exc):  # (a model name it does not serve: completions says)
                return None
            raise
        return [int(t) for t in answer["tokens"]], answer.get("max_model_len")

    def detokenize(self, ids: list[int]) -> str:
        """The served model's text for `ids`, by vLLM's `POST /detokenize`."""
        return self._post("/detokenize", {"model": self.model, "tokens": list(ids)},
                          root=True)["prompt"]

    def _events(self, path: str, body: dict):
        """The JSON events of a server-sent-event response, until `data: [DONE]`."""
        with self._open(path, body) as response:
            for line in response:
                line = line.decode().strip()
                if line == "data: [DONE]":
                    return
                if line.startswith("data: "):
                    yield json.loads(line[6:])

    def _post(self, path: str, body: dict, root: bool = False) -> dict:
        with self._open(path, body, root) as response:
            return json.loads(response.read())

    @contextlib.contextmanager
    def _open(self, path: str, body: dict, root: bool = False):
        """POST `body` as JSON to the API's `path` (`root`: the server's, as vLLM's /tokenize);
        the response, open. An HTTP error or an unreachable server (also while the response
        is read) is a BackendError in one line."""
        base = self.url.removesuffix("/v1") if root else self.url
        request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                yield response
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise BackendError(f"{base}{path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise BackendError(f"{self.url}: cannot reach the server ({exc}); is it running?"
                               ) from None


def _cpu_compute_dtype(directory: Path, device: str) -> torch.dtype | None:
    """float32 for a bfloat16 checkpoint on the CPU (the bundled model is one): its measured
    figures were computed so (docs/model.md). None: the config's."""
    from .checkpoint import CheckpointError
    from .config import ConfigError, CwmConfig

    try:
        dtype = CwmConfig.from_file(directory).dtype
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None  # (it names the file)
    return torch.float32 if torch.device(device).type == "cpu" and dtype == "bfloat16" else None


def load_backend(spec: str | ModelSpec, openai_model: str | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None, compile_decode: bool = False,
                 draft_tokens: int | None = None) -> Backend:
    """A backend from a model spec (see the module docstring). Our runtime only:
    `compile_decode` (batch-1 decode steps compiled, model/compiled_decode.py) and
    `draft_tokens` (prompt-lookup guesses per forward; None: DRAFT_TOKENS)."""
    spec = ModelSpec.parse(spec, openai_model)
    if (compile_decode or draft_tokens is not None) and spec.kind != "runtime":
        raise BackendError(f"compile_decode and draft_tokens apply to our runtime (a checkpoint "
                           f"directory), not to {spec}")
    if spec.needs_name:
        raise BackendError(f"{spec} needs the name the model is served under")
    if spec.served:
        return OpenAIBackend(spec.target, spec.served_name)
    from .checkpoint import check_device, load_checkpoint

    reference = spec.kind == "transformers"
    directory = spec.directory()
    if not (directory / "config.json").is_file():
        raise BackendError(f"{directory}: not a checkpoint directory (no config.json); pass a "
                           "directory with config.json and safetensors, or openai:URL")

    if reference:
        try:
            import transformers
        except ImportError:
            raise BackendError("transformers:DIR needs the transformers package: pip install "
                               "'tracekit[transformers]'") from None

        check_device(device, dtype or torch.float32)
        try:
            model = transformers.CwmForCausalLM.from_pretrained(
                directory, attn_implementation="eager", dtype=dtype or "auto").to(device)
        except (OSError, ValueError, RuntimeError) as exc:  # its messages name the file
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackendError(f"{directory}: transformers cannot load it: {reason}") from None
        return TransformersBackend(model)
    model = load_checkpoint(directory, device, dtype or _cpu_compute_dtype(directory, device))
    model.fast = True
    model.compile_decode = compile_decode
    return RuntimeBackend(model, draft_tokens=DRAFT_TOKENS if draft_tokens is None
                          else draft_tokens)
