"""Draft tokens for greedy decoding, copied from earlier in the sequence (prompt lookup
decoding: Saxena, 2023; transformers' `prompt_lookup_num_tokens`, vLLM's n-gram speculator).

A trace repeats itself: a frame mostly restates the locals of the frame before it, and a
line's source text is the same every time the line runs. So the tokens that followed the last
occurrence of the sequence's final few tokens are a good guess of what comes next. `generate`
runs the guesses through the model together with the last chosen token, one forward for several
tokens, and keeps the longest run the model's own greedy choices agree with: the output is the
greedy output (to rounding: several tokens per forward round differently from one), only
fewer forwards make it. A forward reads the weights once however many tokens it runs, so on a
decode bound by reading weights (or by launching kernels) a wrong guess costs little.
"""

from __future__ import annotations

from collections.abc import Iterable

DRAFT_TOKENS = 8  # guesses per forward, our runtime's default (RuntimeBackend, tracekit serve)


class PromptLookup:
    """A growing (and shrinkable) token sequence, indexed to guess what follows it. The longest
    match wins: the last `longest` tokens, else fewer, down to one; the guess copies what
    followed that match's most recent earlier occurrence (overlapping the end as an LZ77 copy
    does, so a repeating run continues). Extending or truncating costs per token changed."""

    def __init__(self, tokens: Iterable[int] = (), longest: int = 4):
        self.longest = longest
        self.tokens: list[int] = []
        # n-gram -> index of its last token at each occurrence before the sequence's end
        self._ends: list[dict[tuple[int, ...], list[int]]] = [{} for _ in range(longest)]
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens) - 2  # the n-grams ending here now have a continuation
            for n in range(1, min(self.longest, end + 1) + 1):
                self._ends[n - 1].setdefault(tuple(self.tokens[end - n + 1:end + 1]),
                                             []).append(end)

    def truncate(self, length: int) -> None:
        """Forget every token from `length` on."""
        while len(self.tokens) > length:
            end = len(self.tokens) - 2
            for n in range(1, min(self.longest, end + 1) + 1):
                key = tuple(self.tokens[end - n + 1:end + 1])
                ends = self._ends[n - 1][key]
                ends.pop()
                if not ends:
                    del self._ends[n - 1][key]
            self.tokens.pop()

    def guess(self, count: int) -> list[int]:
        """Up to `count` tokens to follow the sequence ([] when nothing matches)."""
        tokens, length = self.tokens, len(self.tokens)
        for n in range(min(self.longest, length), 0, -1):
            ends = self._ends[n - 1].get(tuple(tokens[length - n:]))
            if ends:
                guess: list[int] = []
                for source in range(ends[-1] + 1, ends[-1] + 1 + count):
                    guess.append(tokens[source] if source < length else guess[source - length])
                return guess
        return []


def agreement(guess: list[int], chosen: list[int]) -> int:
    """How many of the guessed tokens, from the first, equal the tokens actually chosen."""
    agreed = 0
    while agreed < min(len(guess), len(chosen)) and guess[agreed] == chosen[agreed]:
        agreed += 1
    return agreed
