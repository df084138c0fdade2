"""Trace prediction: a model predicts a program's next execution frame, free-runs a rollout, or
predicts every frame of a real trace from the real frames before it (teacher forcing).

One API over every backend (`tracekit.model.backends.Backend`): prompts are CWM trace prompts
as token ids (`tracekit.format.prompts.trace_prompt_ids`), a frame is generated up to
`<|frame_sep|>` (or `<|end_of_text|>`, the model's way of saying the trace is over), and
whatever comes back is parsed by the one parser of `tracekit.format.cwm`, which never raises:
malformed output becomes a frame with an `error`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracekit.format.cwm import (
    END_OF_TEXT,
    EVENT_TOKENS,
    FRAME_SEP,
    frame_segments,
    parse_segments,
)
from tracekit.format.prompts import trace_prompt_ids
from tracekit.format.tokenizer import (
    ServerTokenizer,
    Tokenizer,
    TokenizerError,
    cwm_tokenizer,
    encode_segments,
    id_segments,
    load_tokenizer,
)
from tracekit.format.trace import Frame
from tracekit.model.errors import BackendError, ContextError
from tracekit.model.spec import ModelSpec

if TYPE_CHECKING:  # the model layer (torch) is imported where a model is loaded
    from tracekit.model.backends import Backend
    from tracekit.model.generation import Generation


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; `seed` makes sampling reproducible."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


GREEDY = Sampling()
MAX_FRAME_TOKENS = 256  # a predicted frame is cut here: every command's and the eval's default


@dataclass
class FramePrediction:
    """One predicted step: the parsed frame (None when the model ended the trace instead), the
    raw text and tokens (a forced event token first), and the generated tokens' log-probs."""

    frame: Frame | None
    text: str
    tokens: list[int]
    logprobs: list[float]
    ended: bool  # the model wrote <|end_of_text|>

    @property
    def error(self) -> str | None:
        return self.frame.error if self.frame is not None else None


@dataclass
class Rollout:
    """A free-running prediction. `stop` says why it stopped: "end_of_text" (the model ended
    the trace), "max_frames", "budget" (the token budget ran out), "context" (the model's
    context is full), or "malformed" (the last frame has an error, e.g. no <|frame_sep|>
    within max_frame_tokens)."""

    steps: list[FramePrediction] = field(default_factory=list)
    stop: str = ""

    @property
    def frames(self) -> list[Frame]:
        return [s.frame for s in self.steps if s.frame is not None]

    @property
    def tokens_used(self) -> int:
        return sum(len(s.logprobs) for s in self.steps)


class TracePredictor:
    """Predict trace frames with a backend (`tracekit.model.backends.RuntimeBackend`, ...)."""

    def __init__(self, backend: Backend, tokenizer: Tokenizer | None = None,
                 max_frame_tokens: int = MAX_FRAME_TOKENS):
        self.backend = backend
        self.tokenizer = tokenizer or cwm_tokenizer()
        self.max_frame_tokens = max_frame_tokens
        special = self.tokenizer.special_ids
        self.stop_ids = (special[FRAME_SEP], special[END_OF_TEXT])

    @property
    def local_config(self):
        """The model's config when it runs here (ours, transformers), None behind a server."""
        return getattr(getattr(self.backend, "model", None), "config", None)

    @property
    def context_length(self) -> int | None:
        """Token positions the model reads: max_position_embeddings when it runs here, the
        server's max_model_len behind one that tells it (vLLM's /tokenize), else None."""
        config = self.local_config
        if config is not None:
            return config.max_position_embeddings
        return getattr(self.tokenizer, "context_length", None)

    def prompt(self, context: str, frames: list[Frame] = (),
               force_event: str | None = None) -> list[int]:
        return trace_prompt_ids(self.tokenizer, context, list(frames), force_event)

    def frames_that_fit(self, context: str, frames: list[Frame]) -> int:
        """The one rule for traces longer than the model's context (docs/trace-format.md,
        section 11): real frame i can be predicted only when the prompt before it and the
        frame itself fit the context, its last token at a position below context_length.
        Returns how many of `frames`, from the first, can (all when the length is unknown)."""
        limit = self.context_length
        if limit is None:
            return len(frames)
        end = len(self.prompt(context))
        for i, frame in enumerate(frames):
            end += len(self.frame_ids(frame))
            if end > limit:
                return i
        return len(frames)

    def check_prompt(self, ids: list[int]) -> None:
        """Raise ContextError unless a prompt leaves room for a token in the context."""
        limit = self.context_length
        if limit is not None and len(ids) >= limit:
            raise ContextError(f"the prompt is {len(ids)} tokens and the model reads "
                               f"{limit}: nothing is left to predict in")

    def next_frame(self, context: str, frames: list[Frame] = (), force_event: str | None = None,
                   sampling: Sampling = GREEDY, max_tokens: int | None = None) -> FramePrediction:
        """The frame after `frames` (the real or predicted frames so far), in at most
        `max_tokens` (default and cap: max_frame_tokens). Raises ContextError when the prompt
        fills the model's context."""
        prompt = self.prompt(context, frames, force_event)
        self.check_prompt(prompt)
        generation = self.backend.generate([prompt], self._budget(max_tokens), self.stop_ids,
                                           sampling)[0]
        return self.read(generation.tokens, generation.logprobs, force_event)

    def _budget(self, max_tokens: int | None) -> int:
        return self.max_frame_tokens if max_tokens is None else min(max_tokens,
                                                                    self.max_frame_tokens)

    def teacher_forced(self, context: str, frames: list[Frame],
                       sampling: Sampling = GREEDY) -> list[FramePrediction]:
        """The model's prediction of every frame i given the real frames before it, for the
        frames that fit the context (`frames_that_fit`: the list may be shorter than
        `frames`). Backends that can (ours) run one prefill of the real trace and decode all
        branches at once. (A branch that runs past the context is longer than its real frame,
        which fits: wrong however it ends.)"""
        return self.teacher_forced_many([(context, frames)], sampling)[0]

    def teacher_forced_many(self, traces: list[tuple[str, list[Frame]]],
                            sampling: Sampling = GREEDY) -> list[list[FramePrediction]]:
        """`teacher_forced` of each (context, frames), in order (`teacher_forced_stream`)."""
        out: list[list[FramePrediction]] = [[] for _ in traces]
        for i, predictions in self.teacher_forced_stream(traces, sampling):
            out[i] = predictions
        return out

    def teacher_forced_stream(self, traces: list[tuple[str, list[Frame]]],
                              sampling: Sampling = GREEDY
                              ) -> Iterator[tuple[int, list[FramePrediction]]]:
        """`teacher_forced` of each (context, frames), yielded as (its index, its predictions)
        as soon as each is done, in any order, from one call to the backend: ours decodes the
        frames it gets wrong in every trace together (continuous batching)."""
        asked = []  # (index, prompt, frame starts) of the traces with a frame that fits
        for i, (context, frames) in enumerate(traces):
            frames = frames[:self.frames_that_fit(context, frames)]
            if frames:
                asked.append((i, self.prompt(context, frames),
                              self._frame_starts(context, frames)))
            else:
                yield i, []
        answers = self.backend.teacher_forced_stream([(ids, starts) for _, ids, starts in asked],
                                                     self.max_frame_tokens, self.stop_ids,
                                                     sampling)
        for k, generations in answers:
            yield asked[k][0], [self.read(g.tokens, g.logprobs) for g in generations]

    def rollout(self, context: str, seed_frames: list[Frame] = (), max_frames: int = 1000,
                budget_tokens: int | None = None, sampling: Sampling = GREEDY) -> Rollout:
        """Predict frame after frame from `seed_frames` until the model ends the trace, a frame
        is malformed, `max_frames` predicted frames, `budget_tokens` generated tokens, or the
        model's context is full (`rollout_steps`), keeping the prompt's cache from frame to
        frame where the backend has one. Raises ContextError when the seed frames fill the
        context."""
        steps = self.rollout_steps(context, seed_frames, max_frames, budget_tokens)
        from tracekit.model.backends import drive

        margin = max(512, 4 * self.max_frame_tokens)  # as a Session's
        return drive(steps, self.backend.new_session(margin), self.backend, self.stop_ids,
                     sampling)

    def rollout_stream(self, programs: list[tuple[str, list[Frame]]], max_frames: int = 1000,
                       budget_tokens: int | None = None, sampling: Sampling = GREEDY
                       ) -> Iterator[tuple[int, Rollout]]:
        """`rollout` of each (context, seed frames), yielded as (its index, its rollout) as
        soon as each is done, in any order: ours decodes many programs' rollouts in one batch
        (Backend.converse)."""
        conversations = ((i, self.rollout_steps(context, seeds, max_frames, budget_tokens))
                         for i, (context, seeds) in enumerate(programs))
        yield from self.backend.converse(conversations, self.stop_ids, sampling)

    def rollout_steps(self, context: str, seed_frames: list[Frame] = (), max_frames: int = 1000,
                      budget_tokens: int | None = None
                      ) -> Generator[tuple[list[int], int], Generation, Rollout]:
        """A rollout as a conversation with whatever generates: it yields (the prompt's ids,
        the tokens the next frame may take), is sent what was generated, and returns the
        Rollout. The prompt grows by each predicted frame as `prompt` encodes it. Raises
        ContextError (when started) when the seed frames fill the context."""
        ids = self.prompt(context, seed_frames)
        self.check_prompt(ids)
        rollout = Rollout()
        limit = self.context_length
        while True:
            if len(rollout.frames) >= max_frames:
                rollout.stop = "max_frames"
                return rollout
            left = None if budget_tokens is None else budget_tokens - rollout.tokens_used
            if left is not None and left <= 0:
                rollout.stop = "budget"
                return rollout
            room = None if limit is None else limit - len(ids)
            if room is not None and room <= 0:
                rollout.stop = "context"
                return rollout
            budget = self._budget(min((n for n in (left, room) if n is not None), default=None))
            generation = yield ids, budget
            step = self.read(generation.tokens, generation.logprobs)
            rollout.steps.append(step)
            if step.ended and step.frame is None:
                rollout.stop = "end_of_text"
                return rollout
            if step.error is not None:
                used = len(step.logprobs)
                cut = step.frame is not None and step.error.startswith("truncated")
                if cut and room is not None and used >= room:
                    rollout.stop = "context"
                elif cut and left is not None and used >= left:
                    rollout.stop = "budget"
                else:
                    rollout.stop = "malformed"
                return rollout
            ids = ids + self.frame_ids(step.frame)

    def session(self, context: str, frames: list[Frame] = ()) -> Session:
        """A stepping session over the context and `frames` (see Session)."""
        return Session(self, context, frames)

    def read(self, tokens: list[int], logprobs: list[float],
             force_event: str | None = None) -> FramePrediction:
        """Parse generated tokens (after an optional forced event token) into a prediction."""
        ids = list(tokens)
        if force_event is not None:
            ids.insert(0, self.tokenizer.special_ids[EVENT_TOKENS[force_event]])
        segments = id_segments(self.tokenizer, ids)
        parsed = parse_segments(segments)
        frame = parsed.frames[0] if parsed.frames else None
        if frame is None and not parsed.ended:  # nothing at all: an empty generation
            frame = Frame("line", None, "", error="empty output")
        return FramePrediction(frame, "".join(t for _, t in segments), ids, list(logprobs),
                               parsed.ended)

    def frame_ids(self, frame: Frame) -> list[int]:
        return encode_segments(self.tokenizer, frame_segments(frame))

    def _frame_starts(self, context: str, frames: list[Frame]) -> list[int]:
        """Token length of the prompt before each frame (prompts encode frame by frame, so
        each is a prefix of the whole trace's ids)."""
        length = len(self.prompt(context))
        starts = []
        for frame in frames:
            starts.append(length)
            length += len(self.frame_ids(frame))
        return starts


class Session:
    """The context and the frames so far, kept in the backend's cache where it has one (ours):
    `step()` predicts the next frame, `append(frame)` adds a frame (the predicted one costs
    nothing more), `back(n)` drops frames, and a re-`step()` re-samples. Each costs only the
    tokens not already cached."""

    def __init__(self, predictor: TracePredictor, context: str, frames: list[Frame] = ()):
        self.predictor = predictor
        self.context = context
        self.frames = list(frames)
        # the cache can step back over about two frames without running the prompt again
        margin = max(512, 4 * predictor.max_frame_tokens)
        self.cached = predictor.backend.new_session(margin)  # None: no cache to keep
        self._context_ids: list[int] | None = None
        self._frame_ids: dict[int, tuple[Frame, list[int]]] = {}  # id(frame) -> (frame, ids)

    def prompt(self, force_event: str | None = None) -> list[int]:
        """The prompt's ids for the frames so far, as `predictor.prompt` gives them, with the
        context and each frame encoded once per session (a prompt is encoded frame by frame,
        so it is their concatenation)."""
        p = self.predictor
        if self._context_ids is None:
            self._context_ids = p.prompt(self.context)
        ids = list(self._context_ids)
        known, kept = self._frame_ids, {}
        for frame in self.frames:
            entry = known.get(id(frame))
            if entry is None or entry[0] is not frame:
                entry = (frame, p.frame_ids(frame))
            kept[id(frame)] = entry
            ids += entry[1]
        self._frame_ids = kept
        if force_event is not None:
            ids.append(p.tokenizer.special_ids[EVENT_TOKENS[force_event]])
        return ids

    def step(self, force_event: str | None = None, sampling: Sampling = GREEDY,
             max_tokens: int | None = None) -> FramePrediction:
        """Predict the next frame (not added: call append)."""
        p = self.predictor
        if self.cached is None:  # a backend without a cache: the whole prompt each time
            return p.next_frame(self.context, self.frames, force_event, sampling, max_tokens)
        generation = self.cached.generate(self.prompt(force_event), p._budget(max_tokens),
                                         p.stop_ids, sampling)
        return p.read(generation.tokens, generation.logprobs, force_event)

    def append(self, frame: Frame) -> None:
        self.frames.append(frame)

    def back(self, n: int = 1) -> None:
        if not 0 <= n <= len(self.frames):
            raise ValueError(f"cannot go back {n} frames: the session holds {len(self.frames)}")
        del self.frames[len(self.frames) - n:]


def load_predictor(spec: str | ModelSpec, openai_model: str | None = None, device: str = "cpu",
                   max_frame_tokens: int = MAX_FRAME_TOKENS, compile_decode: bool = False,
                   draft_tokens: int | None = None) -> TracePredictor:
    """The predictor for a model spec (`tracekit.model.backends.load_backend` says which), with the
    checkpoint's own tokenizer when it has one. The one place a spec becomes a predictor: the
    CLI, the eval and the server all come here. Raises BackendError in one line."""
    from tracekit.model.backends import load_backend

    spec = ModelSpec.parse(spec, openai_model)
    backend = load_backend(spec, device=device, compile_decode=compile_decode,
                           draft_tokens=draft_tokens)
    if spec.served:  # the served model's own tokenizer (else CWM's)
        tokenizer = ServerTokenizer.of(backend) or cwm_tokenizer()
        return TracePredictor(backend, tokenizer, max_frame_tokens)
    directory = spec.directory()
    try:
        tokenizer = load_tokenizer(directory if directory.is_dir() else None)
    except TokenizerError as exc:
        raise BackendError(str(exc)) from None
    predictor = TracePredictor(backend, tokenizer, max_frame_tokens)
    config = predictor.local_config
    if config is not None and tokenizer.vocab_size > config.vocab_size:
        raise BackendError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but "
                           f"the model only {config.vocab_size}: they are not from one "
                           "checkpoint")
    return predictor
