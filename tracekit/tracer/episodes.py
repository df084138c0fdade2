"""Function-level episodes: while a program runs (a project's test suite), every call of a
function of the project's own files can be recorded as a trace of its own, as `tracekit trace`
would record that function called the same way.

An `Episode` is a `Recorder` whose entry is a call already under way; the `Collector` is the
one `sys.settrace` function, and hands each event to the episodes that record its frame (calls
of project functions nest, so several episodes record at once; each keeps its own scopes and
`..` baseline, so each sees exactly the frames `tracekit trace` of its function would).

- Which calls: calls of functions, methods, generators and coroutines (not lambdas,
  comprehensions or class bodies) whose code is in one of `files`; at most `per_function`
  per function in one run, each with argument reprs distinct from that function's earlier
  episodes; after MAX_CANDIDATES calls of a function it is left alone.
- Callees: a call of another function of the episode's file (the only code a trace of that
  file records) is stepped into with probability `step_in`, down to `max_depth` below the
  entry, else stepped over: its frames are left out, as a debugger's `next`, and the caller's
  `..` baseline is kept (no frame of another scope was written in between). Lambdas and
  comprehensions are part of their function and always stepped into. The decisions come from
  a generator seeded by (seed, function, arguments), so a harness that calls the function the
  same way makes the same ones.
- An episode ends at its entry frame's final return; one that reaches `max_frames` is dropped
  (`dropped["frame_limit"]`), one whose frames' text passes MAX_EPISODE_BYTES too
  (`"byte_limit"`: counted as it records, values and actions only, so the wire text is
  longer still), and one still running when its test ends (`"unfinished"`).

Stdlib only, like the rest of the tracer: it runs inside the traced interpreter.
"""

from __future__ import annotations

import json
import random
import sys

from .constants import MAX_EPISODE_BYTES
from .context import read_source, source_lines
from .recorder import _GENERATOR_FLAGS, Recorder, _fresh_generator, _StopTracing
from .values import Renderer

MAX_CANDIDATES = 1000  # calls of one function looked at in one run (rendering their arguments)
_CO_OPTIMIZED, _CO_VARARGS, _CO_VARKEYWORDS = 0x1, 0x4, 0x8
_COROUTINE_FLAGS = 0x80 | 0x200  # CO_COROUTINE | CO_ASYNC_GENERATOR


class Episode(Recorder):
    """One call of a project function, recorded as `tracekit trace` records an entry. It never
    sets or clears the trace function (the Collector owns it), and a limit ends this episode
    only."""

    def __init__(self, frame, key: tuple, lines: list[str], renderer: Renderer,
                 max_frames: int | None, step_in: float, max_depth: int | None, seed: int):
        code = frame.f_code
        super().__init__(code.co_filename, "", code, renderer, max_frames)
        self.lines = lines
        self.key = key
        self.step_in = step_in
        self.max_depth = max_depth if max_depth is not None else float("inf")
        self.seed = seed
        self.rng: random.Random | None = None  # made once the arguments are known
        self.skipping = None  # the callee being stepped over, until this episode's next event
        self.entry_frame = frame
        self.size, self.sized = 0, 0  # text of frames[:sized], counted so far

    def count_size(self) -> None:
        """Add the new frames' text; past MAX_EPISODE_BYTES the episode stops (dropped)."""
        frames, size = self.frames, self.size
        for frame in frames[self.sized:]:
            size += len(frame[2]) + len(frame[4] or "")
            if frame[3]:
                for value in frame[3].values():
                    size += len(value)
        self.size, self.sized = size, len(frames)
        if size > MAX_EPISODE_BYTES:
            self.limit = ("byte_limit", f"over {MAX_EPISODE_BYTES} bytes")
            self._stop()

    def begin(self) -> bool:
        """Record the entry's call frame; False when that already failed."""
        return self._record_call(self.entry_frame)

    def arguments(self) -> dict:
        state = self.frames[0][3]
        return {name: state[name] for name, _ in parameters(self.entry_code) if name in state}

    def take(self, frame) -> bool:
        """Whether this call event of a frame of the episode's file is recorded: a generator
        the episode records resuming, a comprehension or lambda, or a callee stepped into."""
        if self.done or self.skipping is not None:
            return False
        code = frame.f_code
        if code.co_flags & _GENERATOR_FLAGS and not _fresh_generator(frame):
            if id(frame) not in self._scopes:
                return False  # a generator this episode did not start, resuming
        elif not code.co_name.startswith("<"):  # a function called: step in or over?
            parent = self._scopes.get(id(frame.f_back))
            depth = parent[1] + 1 if parent is not None else self._depth_of(frame)
            if depth > self.max_depth or (self.step_in < 1 and self._dice() >= self.step_in):
                self.skipping = frame
                return False
        return self._record_call(frame)

    def _dice(self) -> float:
        if self.rng is None:
            self.rng = random.Random(f"{self.seed}|{self.key}|{json.dumps(self.arguments())}")
        return self.rng.random()

    def _record_call(self, frame) -> bool:
        try:
            self._on_call(frame)
        except _StopTracing:
            return False
        except BaseException as exc:
            try:
                self._failed(exc, self._on_call, frame)
            except _StopTracing:
                return False
        return True

    def _stop(self):
        self.done = True
        self._last_frame = self._last_scope = None


def parameters(code) -> list[tuple[str, str]]:
    """The function's parameters in order, each (name, kind): kind "pos" (positional or
    keyword), "kw" (keyword-only), "var" (*args) or "varkw" (**kwargs)."""
    names, count, kw_count = code.co_varnames, code.co_argcount, code.co_kwonlyargcount
    params = [(n, "pos") for n in names[:count]]
    params += [(n, "kw") for n in names[count:count + kw_count]]
    index = count + kw_count
    if code.co_flags & _CO_VARARGS:
        params.append((names[index], "var"))
        index += 1
    if code.co_flags & _CO_VARKEYWORDS:
        params.append((names[index], "varkw"))
    return params


class _ProjectCode:
    """What the Collector knows of one code object of a project file."""

    __slots__ = ("key", "full")

    def __init__(self, key: tuple | None):
        self.key = key  # (file under the project, first line, name); None: starts no episode
        self.full = False  # its function has all the episodes it may have


class Collector:
    """The `sys.settrace` function of a run that records episodes (see the module's doc).

    `files` maps each project file's path (as code objects name it) to its path under the
    project; `emit(episode, code)` receives each finished episode as a dict, with the code
    object of its function; `wanted`, when given,
    is the one function key that may start episodes. `start(test)` / `stop()` bracket the
    part of the run that is recorded, with `test` written into its episodes."""

    def __init__(self, files: dict[str, str], emit, renderer: Renderer, per_function: int = 5,
                 step_in: float = 1.0, max_depth: int | None = None, seed: int = 0,
                 max_frames: int | None = None, wanted: tuple | None = None):
        self.files, self.emit, self.renderer = files, emit, renderer
        self.per_function, self.step_in, self.max_depth = per_function, step_in, max_depth
        self.seed, self.max_frames, self.wanted = seed, max_frames, wanted
        self.codes: dict = {}  # code object -> _ProjectCode, or None outside the project
        self.lines: dict[str, list[str]] = {}  # path -> the action of line n at [n]
        self.functions: dict[tuple, list] = {}  # key -> [episodes, calls looked at, args seen]
        self.active: list[Episode] = []
        self.dropped: dict[str, int] = {}
        self.test: str | None = None
        self.previous = None  # the trace function set before `start`
        self.trace = self.global_trace  # one bound method: what sys.gettrace() shows

    def start(self, test: str) -> None:
        """Record from here, in this thread, with `test` written into the episodes; a trace
        function already set (coverage's) is put back by `stop`."""
        self.test = test
        self.previous = sys.gettrace()
        sys.settrace(self.trace)

    def stop(self) -> bool:
        """End the recorded part; False when the program had replaced the trace function."""
        ours = sys.gettrace() is self.trace
        sys.settrace(self.previous)
        self.previous = None
        for _ in self.active:
            self._count("unfinished")
        self.active = []
        self.test = None
        return ours

    def global_trace(self, frame, event, arg):
        code = frame.f_code
        info = self.codes.get(code, _UNSEEN)
        if info is _UNSEEN:
            info = self.codes[code] = self._describe(code)
        if info is None:
            return None
        taken = None
        if self.active:
            filename = code.co_filename
            for episode in tuple(self.active):
                if episode.filename == filename and episode.take(frame):
                    taken = [episode] if taken is None else taken + [episode]
                elif episode.done:
                    self._finish(episode)
        if info.key is not None and not info.full:
            episode = self._start(frame, info)
            if episode is not None:
                taken = [episode] if taken is None else taken + [episode]
        return _FrameTrace(self, taken).trace if taken else None

    def _describe(self, code):
        path = self.files.get(code.co_filename)
        if path is None:
            return None
        name = code.co_name
        startable = code.co_flags & _CO_OPTIMIZED and not name.startswith("<")
        key = (path, code.co_firstlineno, name) if startable else None
        if self.wanted is not None and key != self.wanted:
            key = None
        return _ProjectCode(key)

    def _start(self, frame, info: _ProjectCode) -> Episode | None:
        code = frame.f_code
        if self.test is None or (code.co_flags & _GENERATOR_FLAGS and not _fresh_generator(frame)):
            return None
        state = self.functions.get(info.key)
        if state is None:
            state = self.functions[info.key] = [0, 0, set()]
        state[1] += 1
        if state[1] >= MAX_CANDIDATES:
            info.full = True
        episode = Episode(frame, info.key, self._lines(code.co_filename), self.renderer,
                          self.max_frames, self.step_in, self.max_depth, self.seed)
        if not episode.begin():
            self._count(episode.limit[0] if episode.limit else "failed")
            return None
        arguments = json.dumps(episode.arguments())
        if arguments in state[2]:
            return None
        state[2].add(arguments)
        state[0] += 1
        if state[0] >= self.per_function:
            info.full = True
        episode.module = frame.f_globals.get("__name__")
        episode.test = self.test
        self.active.append(episode)
        return episode

    def _lines(self, path: str) -> list[str]:
        lines = self.lines.get(path)
        if lines is None:
            lines = self.lines[path] = [""] + source_lines(read_source(path))
        return lines

    def _finish(self, episode: Episode) -> None:
        if episode in self.active:
            self.active.remove(episode)
        if episode.limit is not None:
            self._count(episode.limit[0])
            return
        self.emit(_episode_record(episode), episode.entry_code)

    def _count(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


_UNSEEN = object()


class _FrameTrace:
    """The local trace function of one frame: its events go to the episodes recording it."""

    __slots__ = ("collector", "episodes")

    def __init__(self, collector: Collector, episodes: list[Episode]):
        self.collector, self.episodes = collector, episodes

    def trace(self, frame, event, arg):
        live = False
        for episode in self.episodes:
            if episode.done:
                continue
            episode.skipping = None  # a callee stepped over has returned (or yielded)
            try:
                episode.local_trace(frame, event, arg)
            except _StopTracing:
                pass
            if not episode.done:
                episode.count_size()
            if episode.done:
                self.collector._finish(episode)
            else:
                live = True
        return self.trace if live else None


def _episode_record(episode: Episode) -> dict:
    code = episode.entry_code
    status, error = "ok", None
    if episode.entry_exception is not None:
        exc_type, exc_value = episode.entry_exception
        exited = isinstance(exc_type, type) and issubclass(exc_type, SystemExit)
        status = "exited" if exited else "raised"
        error = f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}"
    flags = code.co_flags
    kind = "coroutine" if flags & _COROUTINE_FLAGS else \
        "generator" if flags & _GENERATOR_FLAGS else "function"
    return {"file": episode.key[0], "line": episode.key[1], "name": episode.key[2],
            "qualname": getattr(code, "co_qualname", None), "module": episode.module,
            "test": episode.test, "kind": kind, "params": parameters(code),
            "args": episode.arguments(), "status": status, "error": error,
            "frames": episode.frames,
            "return_value": episode.frames[-1][4] if status == "ok" else None}
