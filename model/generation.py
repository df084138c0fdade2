"""Generation through the KV cache: greedy or sampled (temperature, top-k, top-p, seeded),
stops on any of a set of token ids, batched prompts of different lengths (left-padded, as
transformers does), returning each sequence's new tokens and their log-probabilities.

In the manner of gpt-fast, in small parts: `_Sequences.prefill` runs the prompts (and the
first guesses), `_Sequences.decode` one step (one token per row; or, greedy and batch 1, the
last token with prompt-lookup guesses checked in the same forward; or a compiled step),
`_Choices.take` picks the tokens from a forward's logits and keeps count of stops, and
`generate` is the loop over them that streams and extends the lookup."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from .cache import KVCache, PrefixForks, RowCache
from .compiled_decode import decode_steps
from .modeling import CwmForCausalLM
from .prompt_lookup import PromptLookup, agreement


@dataclass
class Generation:
    tokens: list[int]
    logprobs: list[float]
    stopped: bool  # ended on a stop token (else max_new_tokens)


@torch.inference_mode()
def generate(model: CwmForCausalLM, prompts: list[list[int]], max_new_tokens: int,
             stop_ids: tuple[int, ...] = (), temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None,
             cache: KVCache | PrefixForks | None = None, draft_tokens: int = 0,
             lookup: PromptLookup | None = None,
             on_tokens: Callable[[list[int]], None] | None = None) -> list[Generation]:
    """Continue each prompt. temperature 0 is greedy; the stop token is kept in `tokens`.

    With `cache` (holding a prefix already run, e.g. a trace so far), `prompts` are the tokens
    that follow it, one equal-length list per cached row: only they and the new tokens run
    through the model. The cache keeps the generated tokens, except the last one chosen.
    With `cache` a PrefixForks, each branch's continuation follows its own prefix.

    `draft_tokens` > 0 (greedy, one prompt): each forward also checks up to that many tokens
    guessed by prompt lookup (model/prompt_lookup.py) in what came before: the greedy tokens
    in fewer forwards (a forward of several tokens rounds differently from one-token forwards,
    so a near-tie could flip, as in any batched decode). `lookup`: the tokens the cache holds
    before `prompts`, to guess from too; it is extended with the prompt and every token chosen
    (a session keeps one from step to step).

    `on_tokens` (one prompt): called after each forward with the tokens it chose, for
    streaming; the last call ends with the stop token when there is one."""
    if (lookup is not None or on_tokens is not None) and len(prompts) != 1:
        raise ValueError("a PromptLookup or on_tokens follows one sequence: give one prompt")
    sequences = _Sequences(model, prompts, max_new_tokens, cache, draft_tokens,
                           greedy=temperature <= 0)
    draft_tokens = sequences.draft_tokens
    if lookup is None and draft_tokens > 0:
        lookup = PromptLookup()
    if lookup is not None:
        lookup.extend(prompts[0])
    choices = _Choices(len(prompts), max_new_tokens, stop_ids, temperature, top_k, top_p, seed,
                       model.device)
    # guesses run in the last forward, after the last chosen token (first: after the prompt)
    guessed = lookup.guess(min(draft_tokens, max_new_tokens - 1)) if draft_tokens > 0 else []
    logits = sequences.prefill(guessed)
    while True:
        rows = logits.float()  # (batch, 1 + len(guessed), vocab)
        agreed = agreement(guessed, rows[0, :len(guessed)].argmax(-1).tolist()) if guessed else 0
        chosen = choices.take(rows, agreed)
        if lookup is not None:
            lookup.extend(t.item() for t in chosen)
        if on_tokens is not None:
            on_tokens([t[0].item() for t in chosen])
        if choices.finished:
            break
        sequences.forget(len(guessed) - agreed)
        guessed = []
        if draft_tokens > 0:
            guessed = lookup.guess(min(draft_tokens, max_new_tokens - choices.produced - 1))
        logits = sequences.decode(chosen[-1], choices.produced, guessed)
    if draft_tokens > 0:  # the cache ends on the tokens chosen, less the last (as without)
        sequences.cache.rewind(sequences.width + choices.produced - 1)
    return choices.generations()


class _Sequences:
    """The rows being continued: their tokens' padding mask and positions, the cache, and the
    forwards that feed them to the model."""

    def __init__(self, model: CwmForCausalLM, prompts: list[list[int]], max_new_tokens: int,
                 cache: KVCache | PrefixForks | None, draft_tokens: int, greedy: bool):
        device = model.device
        batch, width = len(prompts), max(len(p) for p in prompts)
        if cache is not None and (cache.keys[0].shape[0] != batch
                                  or any(len(p) != width for p in prompts) or width == 0):
            raise ValueError("with a cache, give one non-empty continuation per cached row, "
                             "all of the same length")
        past = cache.length if cache is not None else 0
        self.ids = torch.zeros(batch, width, dtype=torch.long, device=device)  # left-padded
        # real tokens (1) and padding (0), for the cached prefix, the prompts and what follows
        self.mask = torch.zeros(batch, past + width + max_new_tokens, dtype=torch.long,
                                device=device)
        self.mask[:, :past] = 1
        for row, prompt in enumerate(prompts):
            self.ids[row, width - len(prompt):] = torch.tensor(prompt, device=device)
            self.mask[row, past + width - len(prompt):] = 1
        if cache is None:
            cache = KVCache(model.config, batch, width + max_new_tokens, model.dtype, device,
                            rewind_margin=draft_tokens)
        self.model, self.cache, self.device = model, cache, device
        self.forked = isinstance(cache, PrefixForks)  # no padding; positions follow each prefix
        if self.forked:
            self.positions = cache.next_positions(width)
        else:
            self.positions = (self.mask[:, :past + width].cumsum(-1) - 1).clamp(min=0)[:, past:]
        self.width = past + width  # the lengths from here on count the cached prefix too
        # Greedy batch-1 decoding guesses tokens by prompt lookup and checks them in the same
        # forward; the cache must be able to forget wrong guesses (a ring keeps rewind_margin).
        self.draft_tokens = draft_tokens
        if not greedy or batch != 1 or self.forked:
            self.draft_tokens = 0
        elif not cache.windows_reach_all:
            self.draft_tokens = min(draft_tokens, cache.rewind_margin)
        # Compiled steps for one row: batched steps are bound by their products (blocked weights)
        self.compiled = model.compile_decode and isinstance(cache, KVCache) and batch == 1
        self._step: Callable | None = None  # the compiled step, made at its first use

    def prefill(self, guessed: list[int]) -> torch.Tensor:
        """Run the prompts, then `guessed` (one row): logits (batch, 1 + len(guessed), vocab)
        of the prompt's last token and of each guess."""
        feed, positions = self.ids, self.positions
        if guessed:
            feed = torch.cat((feed, torch.tensor([guessed], device=self.device)), 1)
            positions = torch.cat((positions, positions[:, -1:] + 1 + torch.arange(
                len(guessed), device=self.device)), 1)
            self.mask[:, self.width:self.width + len(guessed)] = 1
        past = self.width - self.ids.shape[1]
        return self.model(feed, attention_mask=self._mask(past + feed.shape[1]),
                          position_ids=positions, cache=self.cache,
                          logits_to_keep=1 + len(guessed)).logits

    def forget(self, rejected: int) -> None:
        """Forget the keys/values of the last forward's rejected guesses."""
        if rejected > 0:
            self.cache.rewind(self.cache.length - rejected)

    def decode(self, token: torch.Tensor, produced: int, guessed: list[int]) -> torch.Tensor:
        """Run the latest chosen `token` (batch,), the `produced`-th new one, and then
        `guessed` (one row): logits (batch, 1 + len(guessed), vocab)."""
        length = self.width + produced  # tokens in each row, this one included
        position = self.positions[:, -1:] + produced  # (batch, 1)
        if guessed:
            feed = torch.tensor([[token.item(), *guessed]], device=self.device)
            self.mask[:, length - 1:length + len(guessed)] = 1
            return self.model(feed, attention_mask=self._mask(length + len(guessed)),
                              position_ids=position + torch.arange(feed.shape[1],
                                                                   device=self.device),
                              cache=self.cache, logits_to_keep=feed.shape[1]).logits
        self.mask[:, length - 1] = 1
        if self.compiled:
            self._step = self._step or decode_steps(self.model, self.cache)
            return self._step(token[:, None], position)[:, None]
        return self.model(token[:, None], attention_mask=self._mask(length),
                          position_ids=position, cache=self.cache).logits[:, -1:]

    def _mask(self, length: int) -> torch.Tensor | None:
        return None if self.forked else self.mask[:, :length]


class _Choices:
    """The tokens chosen so far for each row, their log-probabilities, and where each row
    stopped."""

    def __init__(self, batch: int, max_new_tokens: int, stop_ids: tuple[int, ...],
                 temperature: float, top_k: int, top_p: float, seed: int | None,
                 device: torch.device):
        self.max_new_tokens = max_new_tokens
        self.sampling = temperature, top_k, top_p
        self.generator = (torch.Generator(device=device).manual_seed(seed)
                          if seed is not None else None)
        self.tokens: list[torch.Tensor] = []  # (batch,) per step
        self.logprobs: list[torch.Tensor] = []
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.finished_at = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
        self.stops = torch.tensor(list(stop_ids) or [-1], device=device)
        self.produced = 0

    @property
    def finished(self) -> bool:
        return self.produced == self.max_new_tokens or bool(self.done.all())

    def take(self, rows: torch.Tensor, agreed: int) -> list[torch.Tensor]:
        """Choose from a forward's logits (batch, positions, vocab): each of the `agreed`
        guesses is the greedy choice, then one more; stop early when every row is finished.
        Returns the tokens chosen (batch,), in order."""
        logprobs = torch.log_softmax(rows[:, :agreed + 1], dim=-1)
        chosen = []
        for row in range(agreed + 1):
            token = _choose(rows[:, row], *self.sampling, self.generator)
            chosen.append(token)
            self.tokens.append(token)
            self.logprobs.append(logprobs[:, row].gather(-1, token[:, None])[:, 0])
            stopped_now = torch.isin(token, self.stops) & ~self.done
            self.finished_at = torch.where(stopped_now, self.produced + 1, self.finished_at)
            self.done |= stopped_now
            self.produced += 1
            if self.finished:
                break
        return chosen

    def generations(self) -> list[Generation]:
        tokens = torch.stack(self.tokens, 1).tolist()
        logprobs = torch.stack(self.logprobs, 1).tolist()
        return [Generation(t[:end], lp[:end], s) for t, lp, end, s in
                zip(tokens, logprobs, self.finished_at.tolist(), self.done.tolist())]


def _choose(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
            generator: torch.Generator | None) -> torch.Tensor:
    """One token per row (batch, vocab) -> (batch,): argmax at temperature 0, else sampled."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, -1) > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]


def forced_start(ids: list[int], start: int, argmax: list[int], logprobs: list[float],
                 max_new_tokens: int, stop_ids: tuple[int, ...]) -> tuple[Generation, bool]:
    """What greedy `generate` writes first after `ids[:start]`, known without decoding: the
    real tokens `ids[start:]` for as long as each is the model's choice after the real tokens
    before it (`argmax[p]` is the choice after `ids[:p + 1]`, `logprobs[p]` the
    log-probability of `ids[p + 1]` there; one forward over `ids` gives both), up to the first
    stop token (kept) or `max_new_tokens`. Returns that generation and whether it is the whole
    of it (it reached a stop or the cap); if not, decoding goes on from `ids[:start + len]`
    for the tokens left (`joined`). The real ids may end first: then it is not whole."""
    stops = set(stop_ids)
    end = min(start + max_new_tokens, len(ids))
    for p in range(start, end):
        if argmax[p - 1] != ids[p]:
            end = p
            break
        if ids[p] in stops:
            return Generation(ids[start:p + 1], logprobs[start - 1:p], True), True
    return (Generation(ids[start:end], logprobs[start - 1:end - 1], False),
            end == start + max_new_tokens)


def joined(first: Generation, rest: Generation) -> Generation:
    """A generation continued by another (decoded after it)."""
    return Generation(first.tokens + rest.tokens, first.logprobs + rest.logprobs, rest.stopped)


@dataclass
class Continuation:
    """What a row does next: keep its first `keep` positions, run `feed` one token a forward
    (at least one: the last one's logits give the first new token), then write up to
    `max_new_tokens` new tokens."""

    keep: int
    feed: list[int]
    max_new_tokens: int


@dataclass
class RowJob:
    """One greedy job for `decode_rows`: the first `length` positions of `prefix` (a one-row
    KVCache holding them in order), then `feed` and up to `max_new_tokens` as in a
    Continuation. `follow`, when given, is shown each generation and says how the job goes on
    in its row (a Continuation, counting positions from the row's start), or None when it is
    done; without it a job is one generation. `guesses_from`: tokens that may be repeated
    (ending with the row's last ones, `feed` included), for prompt-lookup guesses. `key`
    names it."""

    key: object
    prefix: KVCache
    length: int
    feed: list[int]
    max_new_tokens: int
    follow: Callable[[Generation], Continuation | None] | None = None
    guesses_from: list[int] = field(default_factory=list)


class _Row:
    """A job in a row: the tokens it must run before its next choice (`pending`: what it
    feeds, or the token it chose last), its guesses, and what it has written so far. Its
    `lookup` ends with the row's tokens so far, pending ones included."""

    def __init__(self, job: RowJob, draft_tokens: int):
        self.key, self.follow, self.draft_tokens = job.key, job.follow, draft_tokens
        self.lookup = PromptLookup(job.guesses_from) if draft_tokens > 0 else None

    def go_on(self, feed: list[int], max_new_tokens: int) -> None:
        """Start a generation after `feed`."""
        if not feed or max_new_tokens < 1:
            raise ValueError("a row job feeds at least one token and writes at least one")
        self.pending, self.max_new_tokens = list(feed), max_new_tokens
        self.tokens: list[int] = []
        self.logprobs: list[float] = []

    def proposal(self) -> list[int]:
        """The tokens to run next: pending ones, then guesses of what the model will choose
        (at most `draft_tokens`, none past the budget)."""
        if len(self.pending) > self.draft_tokens or self.lookup is None:
            return self.pending[:self.draft_tokens + 1]
        room = self.max_new_tokens - len(self.tokens) - 1
        return self.pending + self.lookup.guess(min(self.draft_tokens, room))

    def take(self, ran: list[int], choices: list[int], logprobs: list[float],
             stops: set[int]) -> tuple[int, bool]:
        """After a forward ran `ran` (this row's proposal), with the model's choice and its
        log-probability after each: keep each guess while it is the model's choice. Returns
        the positions of `ran` that stay (the rest are taken back) and whether the generation
        is done (a stop token or the budget)."""
        pending = len(self.pending)
        if pending > len(ran):
            self.pending = self.pending[len(ran):]
            return len(ran), False
        at = pending - 1  # the position whose choice comes next
        while True:
            token = choices[at]
            self.tokens.append(token)
            self.logprobs.append(logprobs[at])
            if self.lookup is not None:
                self.lookup.extend((token,))
            if token in stops or len(self.tokens) == self.max_new_tokens:
                return at + 1, True
            if at + 1 < len(ran) and ran[at + 1] == token:  # the guess was right: run already
                at += 1
                continue
            self.pending = [token]
            return at + 1, False

    def rewound(self, held: int, then: Continuation) -> None:
        """Go on as `then` says in a row that held `held` positions."""
        if self.lookup is not None:  # it ends with those positions and the last choice
            self.lookup.truncate(max(0, len(self.lookup.tokens) - (held + 1 - then.keep)))
            self.lookup.extend(then.feed)
        self.go_on(then.feed, then.max_new_tokens)


@torch.inference_mode()
def decode_rows(model: CwmForCausalLM, jobs: Iterable[RowJob], rows: int, max_length: int,
                stop_ids: tuple[int, ...], draft_tokens: int = 0
                ) -> Iterator[tuple[object, Generation]]:
    """Greedy jobs, decoded up to `rows` at a time in one batch that is refilled as rows
    finish (continuous batching, as vLLM schedules requests). Each forward runs the same
    number of tokens in every row: the tokens a job feeds or the one it chose last, then up
    to `draft_tokens` guesses by prompt lookup (model/prompt_lookup.py), kept while they are
    the model's own choices (the rest taken back). A generation ends at a stop token or its
    `max_new_tokens`; a job that is done yields (its key, its last generation) and its row
    takes the next job, whose prefix is copied in, while the others go on; once the jobs run
    out, the batch shrinks to the rows still running. Jobs are drawn only as rows free up, so
    a lazy iterable is prefilled as needed. `max_length` bounds every row's positions."""
    cache = RowCache(model.config, rows, max_length + draft_tokens, model.dtype, model.device)
    pending = iter(jobs)
    running: list[_Row] = []  # row i's job, in cache row i
    stops = set(stop_ids)

    def start(row: int) -> bool:
        """Load the next job into `row` (in use, or the next free one); False if none is left."""
        job = next(pending, None)
        if job is None:
            return False
        cache.load(row, job.prefix, job.length)
        state = _Row(job, draft_tokens)
        state.go_on(job.feed, job.max_new_tokens)
        if row < len(running):
            running[row] = state
        else:
            running.append(state)
        return True

    while len(running) < rows and start(len(running)):
        pass
    while running:
        order = cache.reorder()  # rows into bands by length, when they have drifted from them
        if order is not None:
            running[:] = [running[row] for row in order]
        finished = _step(model, cache, running, stops)
        for row in reversed(finished):  # the rows above each have found their place already
            state = running[row]
            generation = Generation(state.tokens, state.logprobs, state.tokens[-1] in stops)
            then = state.follow(generation) if state.follow is not None else None
            if then is not None:
                held = int(cache.lengths[row])
                cache.rewind_row(row, then.keep)
                state.rewound(held, then)
                continue
            yield state.key, generation
            if not start(row):
                cache.drop(row)
                last = running.pop()
                if row < len(running):
                    running[row] = last


def _step(model: CwmForCausalLM, cache: RowCache, running: list[_Row],
          stops: set[int]) -> list[int]:
    """One forward of every row in use; returns the rows whose generation is done."""
    proposals = [state.proposal() for state in running]
    width = max(len(p) for p in proposals)
    feed = torch.tensor([p + p[-1:] * (width - len(p)) for p in proposals],
                        device=model.device)  # (rows, width), short ones padded
    logits = model(feed, cache=cache).logits.float()  # (rows, width, vocab)
    choices = logits.argmax(-1)
    logprobs = torch.log_softmax(logits, -1).gather(-1, choices[..., None])[..., 0].tolist()
    finished, unkept = [], []
    for row, (state, ran, chosen) in enumerate(zip(running, proposals, choices.tolist())):
        kept, done = state.take(ran, chosen, logprobs[row], stops)
        unkept.append(width - kept)
        if done:
            finished.append(row)
    cache.take_back(torch.tensor(unkept, device=cache.lengths.device))
    return finished
