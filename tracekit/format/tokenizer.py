"""Tokenizers with CWM's exact ids: one interface, three implementations.

- `CwmTokenizer`: the Llama 3 BPE shipped in the `llama-models` package (read with tiktoken,
  Llama 3 pre-tokenizer regex) plus CWM's 256 reserved special tokens (spec section 7).
- `HFTokenizer`: a checkpoint directory's `tokenizer.json` through the `tokenizers` library.
- `ServerTokenizer`: a served model's, asked over HTTP (`openai:URL` specs).

`load_tokenizer(directory)` prefers the checkpoint's own tokenizer when it ships one.
Special tokens are always inserted as ids and the text between them encoded as plain text (the
way Meta's client does), so encoding a wire string and encoding its segments give the same ids.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Protocol

from tracekit.format.cwm import (
    SPECIAL_TOKENS,
    ParsedTrace,
    Segment,
    parse_segments,
    text_segments,
)

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class Tokenizer(Protocol):
    vocab_size: int
    special_ids: dict[str, int]

    def encode_plain(self, text: str) -> list[int]:
        """Text as ordinary tokens: special-token strings in it are NOT special."""

    def decode_plain(self, ids: list[int]) -> str:
        """Ordinary tokens back to text (no special ids allowed)."""


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Text with special tokens written out (`<|frame_sep|>`) to ids: each special as its id,
    the text between them as plain text."""
    return encode_segments(tokenizer, text_segments(text))


def encode_segments(tokenizer: Tokenizer, segments: list) -> list[int]:
    """Segments (strings that are special tokens, or (is_special, text) pairs) to ids."""
    ids: list[int] = []
    for segment in segments:
        special, text = segment if isinstance(segment, tuple) else (
            segment in tokenizer.special_ids, segment)
        if special:
            ids.append(tokenizer.special_ids[text])
        elif text:
            ids.extend(tokenizer.encode_plain(text))
    return ids


def id_segments(tokenizer: Tokenizer, ids: list[int]) -> list[Segment]:
    """Ids to segments: each special id on its own, runs of ordinary ids decoded together."""
    specials = {i: t for t, i in tokenizer.special_ids.items()}
    segments: list[Segment] = []
    run: list[int] = []
    for token in ids:
        if token in specials:
            if run:
                segments.append((False, tokenizer.decode_plain(run)))
                run = []
            segments.append((True, specials[token]))
        else:
            run.append(token)
    if run:
        segments.append((False, tokenizer.decode_plain(run)))
    return segments


def decode(tokenizer: Tokenizer, ids: list[int]) -> str:
    """Ids to text, special tokens kept as their names (never skipped: on traces, skipping
    special tokens deletes every separator)."""
    return "".join(text for _, text in id_segments(tokenizer, ids))


def parse_ids(tokenizer: Tokenizer, ids: list[int]) -> ParsedTrace:
    """Parse token ids into frames; exact even where the text would be ambiguous. Never raises
    (ids outside the vocabulary decode to U+FFFD)."""
    return parse_segments(id_segments(tokenizer, ids))


class CwmTokenizer:
    """The Llama 3 BPE (128,000 ranks) plus CWM's 256 special tokens, ids 128000-128255."""

    def __init__(self, model_file: str | Path | None = None):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        path = Path(model_file) if model_file else _llama3_bpe_file()
        ranks = load_tiktoken_bpe(str(path))
        self.encoding = tiktoken.Encoding(name="cwm", pat_str=LLAMA3_PATTERN,
                                          mergeable_ranks=ranks, special_tokens=SPECIAL_TOKENS)
        self.special_ids = dict(SPECIAL_TOKENS)
        self.vocab_size = len(ranks) + len(SPECIAL_TOKENS)

    def encode_plain(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special=set(), disallowed_special=())

    def decode_plain(self, ids: list[int]) -> str:
        ids = [i for i in ids if 0 <= i < self.encoding.n_vocab]
        return self.encoding.decode(ids, errors="replace")


class HFTokenizer:
    """A checkpoint's `tokenizer.json`, through the `tokenizers` library."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _Tokenizer

        self.backend = _Tokenizer.from_file(str(path))
        vocab = self.backend.get_vocab(with_added_tokens=True)
        self.special_ids = {token: i for token, i in vocab.items()
                            if token.startswith("<|") and token.endswith("|>")}
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        self.backend.encode_special_tokens = True  # plain text never yields a special id

    def encode_plain(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode_plain(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)


class ServerTokenizer:
    """A served model's own tokenizer, asked over HTTP (vLLM's /tokenize and /detokenize,
    which `tracekit serve` has too), for a client whose tokenizer is not the model's. Plain
    text goes there as it is: a special token's name written in a value comes back special,
    as it does on the text route (the ids route of a local tokenizer is exact there)."""

    def __init__(self, server, specials: dict[str, int], context_length: int | None):
        self.server, self.special_ids = server, specials
        self.vocab_size = max(specials.values(), default=-1) + 1  # (at least)
        self.context_length = context_length
        self._encoded: dict[str, list[int]] = {}

    @classmethod
    def of(cls, server) -> ServerTokenizer | None:
        """The tokenizer of the model `server` (an OpenAIBackend) serves; None when the
        server cannot tokenize. CWM's special tokens are looked up by name, all in one
        request; one that is not a single token there is left out."""
        names = list(SPECIAL_TOKENS)
        found = server.tokenize("".join(names))
        if found is None:
            return None
        ids, context = found
        if len(ids) != len(names):
            pairs = ((name, server.tokenize(name)[0]) for name in names)
            specials = {name: one[0] for name, one in pairs if len(one) == 1}
        else:
            specials = dict(zip(names, ids))
        return cls(server, specials, context)

    def encode_plain(self, text: str) -> list[int]:
        ids = self._encoded.get(text)
        if ids is None:
            ids = self.server.tokenize(text)[0]
            if len(self._encoded) < 65536:  # a trace's frames repeat their text
                self._encoded[text] = ids
        return list(ids)

    def decode_plain(self, ids: list[int]) -> str:
        return self.server.detokenize(ids) if ids else ""


class TokenizerError(Exception):
    """A checkpoint's tokenizer.json cannot be loaded; the message names the file."""


def load_tokenizer(checkpoint: str | Path | None = None) -> Tokenizer:
    """The checkpoint's own `tokenizer.json` when it has one, else CWM's (Llama 3 BPE).
    Raises TokenizerError for a file that is not a tokenizer."""
    path = Path(checkpoint or ".") / "tokenizer.json"
    if checkpoint is None or not path.exists():
        return cwm_tokenizer()
    try:
        return HFTokenizer(path)
    except Exception as exc:  # noqa: BLE001 - the tokenizers library raises bare Exceptions
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TokenizerError(f"{path}: cannot load it ({reason}): restore the checkpoint's "
                             "tokenizer") from None


@functools.lru_cache(maxsize=1)
def cwm_tokenizer() -> CwmTokenizer:
    """The shared CWM tokenizer (loading the BPE takes about a second)."""
    return CwmTokenizer()


def _llama3_bpe_file() -> Path:
    try:
        path = resources.files("llama_models") / "llama3" / "tokenizer.model"
    except ModuleNotFoundError:
        raise RuntimeError("the Llama 3 BPE comes with the llama-models package: "
                           "pip install llama-models") from None
    return Path(str(path))
