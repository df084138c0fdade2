"""Generation through the KV cache: greedy or sampled (temperature, top-k, top-p, seeded),
stops on any of a set of token ids, batched prompts of different lengths (left-padded, as
transformers does), returning each sequence's new tokens and their log-probabilities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cache import KVCache, PrefixForks
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
    device, dtype = model.device, model.dtype
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    if cache is not None and (cache.keys[0].shape[0] != batch
                              or any(len(p) != width for p in prompts) or width == 0):
        raise ValueError("with a cache, give one non-empty continuation per cached row, all "
                         "of the same length")
    past = cache.length if cache is not None else 0
    ids = torch.zeros(batch, width, dtype=torch.long, device=device)
    mask = torch.zeros(batch, past + width + max_new_tokens, dtype=torch.long, device=device)
    mask[:, :past] = 1
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, device=device)
        mask[row, past + width - len(prompt):] = 1
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    if cache is None:
        cache = KVCache(model.config, batch, width + max_new_tokens, dtype, device,
                        rewind_margin=draft_tokens)
    positions = (mask[:, :past + width].cumsum(-1) - 1).clamp(min=0)[:, past:]
    forked = isinstance(cache, PrefixForks)  # no padding; positions follow each prefix
    if forked:
        positions = cache.next_positions(width)
    # Greedy batch-1 decoding guesses tokens by prompt lookup and checks them in the same
    # forward; the cache must be able to forget wrong guesses (a ring keeps rewind_margin more).
    if temperature > 0 or batch != 1 or forked:
        draft_tokens = 0
    elif not cache.windows_reach_all:
        draft_tokens = min(draft_tokens, cache.rewind_margin)
    if (lookup is not None or on_tokens is not None) and batch != 1:
        raise ValueError("a PromptLookup or on_tokens follows one sequence: give one prompt")
    if lookup is None and draft_tokens > 0:
        lookup = PromptLookup()
    if lookup is not None:
        lookup.extend(prompts[0])
    # guesses run in the last forward, after the last chosen token (first: after the prompt)
    guessed = lookup.guess(min(draft_tokens, max_new_tokens - 1)) if draft_tokens > 0 else []
    feed, feed_positions = ids, positions
    if guessed:
        feed = torch.cat((ids, torch.tensor([guessed], device=device)), 1)
        feed_positions = torch.cat((positions, positions[:, -1:] + 1 + torch.arange(
            len(guessed), device=device)), 1)
        mask[:, past + width:past + width + len(guessed)] = 1
    logits = model(feed, attention_mask=None if forked else mask[:, :past + feed.shape[1]],
                   position_ids=feed_positions, cache=cache,
                   logits_to_keep=1 + len(guessed)).logits
    width = past + width  # from here on, lengths count the cached prefix too
    chosen_tokens, chosen_logprobs = [], []
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    finished_at = torch.full((batch,), max_new_tokens, dtype=torch.long, device=device)
    stops = torch.tensor(list(stop_ids) or [-1], device=device)
    # Compiled steps for one row: batched steps are bound by their products (blocked weights)
    compiled = model.compile_decode and isinstance(cache, KVCache) and batch == 1
    step = None  # made at the first compiled step
    produced = 0
    while True:
        rows = logits.float()  # (batch, 1 + len(guessed), vocab)
        agreed = agreement(guessed, rows[0, :len(guessed)].argmax(-1).tolist()) if guessed else 0
        logprobs = torch.log_softmax(rows[:, :agreed + 1], dim=-1)
        before = produced
        for row in range(agreed + 1):  # each agreed guess is the greedy choice; then one more
            token = _choose(rows[:, row], temperature, top_k, top_p, generator)
            logprob = logprobs[:, row].gather(-1, token[:, None])[:, 0]
            chosen_tokens.append(token)
            chosen_logprobs.append(logprob)
            stopped_now = torch.isin(token, stops) & ~done
            finished_at = torch.where(stopped_now, produced + 1, finished_at)
            done |= stopped_now
            produced += 1
            if produced == max_new_tokens or bool(done.all()):
                break
        if lookup is not None:
            lookup.extend(t.item() for t in chosen_tokens[before:])
        if on_tokens is not None:
            on_tokens([t[0].item() for t in chosen_tokens[before:]])
        if produced == max_new_tokens or bool(done.all()):
            break
        if len(guessed) > agreed:  # forget the rejected guesses' keys/values
            cache.rewind(cache.length - (len(guessed) - agreed))
        length = width + produced
        position = positions[:, -1:] + produced
        guessed = []
        if draft_tokens > 0:
            guessed = lookup.guess(min(draft_tokens, max_new_tokens - produced - 1))
        if guessed:
            feed = torch.tensor([[token.item(), *guessed]], device=device)
            mask[:, length - 1:length + len(guessed)] = 1
            logits = model(feed, attention_mask=mask[:, :length + len(guessed)],
                           position_ids=position + torch.arange(feed.shape[1], device=device),
                           cache=cache, logits_to_keep=feed.shape[1]).logits
            continue
        mask[:, length - 1] = 1
        if compiled:
            step = step or decode_steps(model, cache)
            logits = step(token[:, None], position)[:, None]
            continue
        logits = model(token[:, None], attention_mask=None if forked else mask[:, :length],
                       position_ids=position, cache=cache).logits[:, -1:]
    if draft_tokens > 0:  # the cache ends on the tokens chosen, less the last (as without)
        cache.rewind(width + produced - 1)
    tokens = torch.stack(chosen_tokens, 1).tolist()
    logprobs = torch.stack(chosen_logprobs, 1).tolist()
    ends = finished_at.tolist()
    stopped = done.tolist()
    return [Generation(t[:end], lp[:end], s)
            for t, lp, end, s in zip(tokens, logprobs, ends, stopped)]


def _choose(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
            generator: torch.Generator | None) -> torch.Tensor:
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
