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
    does, so a repeating run continues). The index (each n-gram's last occurrence) catches up
    at the next guess, at a cost per token added; truncating below what it holds rebuilds it."""

    def __init__(self, tokens: Iterable[int] = (), longest: int = 4):
        self.longest = longest
        self.tokens: list[int] = []
        # n-gram -> index of its last token at its last occurrence before the sequence's end
        self._last: list[dict[tuple[int, ...], int]] = [{} for _ in range(longest)]
        self._indexed = 0  # the n-grams ending before position _indexed - 1 are in _last
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        self.tokens.extend(tokens)

    def truncate(self, length: int) -> None:
        """Forget every token from `length` on."""
        del self.tokens[length:]
        if self._indexed > length:  # n-grams it forgets may hide earlier occurrences
            self._last = [{} for _ in range(self.longest)]
            self._indexed = 0

    def guess(self, count: int) -> list[int]:
        """Up to `count` tokens to follow the sequence ([] when nothing matches)."""
        self._catch_up()
        tokens, length = self.tokens, len(self.tokens)
        for n in range(min(self.longest, length), 0, -1):
            end = self._last[n - 1].get(tuple(tokens[length - n:]))
            if end is not None:
                guess: list[int] = []
                for source in range(end + 1, end + 1 + count):
                    guess.append(tokens[source] if source < length else guess[source - length])
                return guess
        return []

    def _catch_up(self) -> None:
        """Index the n-grams that now have a continuation (ending up to the last but one)."""
        seq, last = self.tokens, len(self.tokens) - 2
        first = max(0, self._indexed - 1)
        for n, index in enumerate(self._last, 1):
            lo = max(first, n - 1)  # each n-gram ending at lo..last, in order: the last wins
            grams = zip(*(seq[lo - n + 1 + i:last - n + 2 + i] for i in range(n)))
            index.update(zip(grams, range(lo, last + 1)))
        self._indexed = len(seq)


def agreement(guess: list[int], chosen: list[int]) -> int:
    """How many of the guessed tokens, from the first, equal the tokens actually chosen."""
    agreed = 0
    while agreed < min(len(guess), len(chosen)) and guess[agreed] == chosen[agreed]:
        agreed += 1
    return agreed
