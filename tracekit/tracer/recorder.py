"""The recorder: the `sys.settrace` callback that turns CPython's events into CWM frames."""

from __future__ import annotations

import sys
import threading
import types

from .constants import DEFAULT_MAX_FRAMES, DOTS
from .context import _code_objects, source_lines
from .values import Renderer, _ReprWatchdog

_GENERATOR_FLAGS = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
_PY313 = sys.version_info >= (3, 13)


def _opcode_numbers(*names: str) -> frozenset:
    import dis

    return frozenset(dis.opmap[n] for n in names if n in dis.opmap)


_YIELD_OPS = _opcode_numbers("YIELD_VALUE", "YIELD_FROM")
_RETURN_OPS = _opcode_numbers("RETURN_VALUE", "RETURN_CONST")
_RESUME_OP = _opcode_numbers("RESUME")


class _StopTracing(BaseException):
    pass




class Recorder:
    """Records the CWM frames of one entry call through `sys.settrace`.

    `frames` holds tuples (event, lineno, source, state, arg, scope, depth): `source` is the
    context line at `lineno` (marker removed, newline kept); `state` the locals (rendered
    values or "..") of call/line frames, else None; `arg` the rendered return value or
    exception triple of return/exception frames, else None.

    The ".." rule keeps one baseline: the rendered locals of the last call/line frame, valid
    while events keep coming from the same Python frame (`_last_frame`); an event of any
    other frame drops it, so the first frame after a context switch prints every value.
    The event handlers are written flat, with few calls and no comprehensions on the line
    path: they run for every event of every traced program (benchmarks/RESULTS.md).
    """

    def __init__(self, filename: str, context: str, entry_code: types.CodeType,
                 renderer: Renderer, max_frames: int | None = DEFAULT_MAX_FRAMES, on_limit=None):
        self.filename = filename
        self.lines = [""] + source_lines(context)  # the action of line n is lines[n]
        self.entry_code = entry_code
        self.renderer = renderer
        self.max_frames = max_frames if max_frames is not None else float("inf")
        self.on_limit = on_limit  # called with (status, message) when a limit stops the trace
        self.frames: list = []
        self.entry_frame = None
        self.done = False
        # Set with `done` by a thread that is about to report and end the process: the main
        # thread then waits at its next event instead of running on, so the report (the
        # frames' JSON) is not slowed by a busy program competing for the GIL.
        self.park = False
        self.limit: tuple | None = None  # (status, message) once a limit stopped the trace
        self.entry_exception = None  # (type, value) when the entry exited by raising
        self._entry_exception = None
        self._scopes: dict = {}  # id(frame) -> [scope id, depth, persistent locals (3.13+)]
        self._next_scope = 0
        self._last_frame = None  # the frame of the last event (released when tracing stops)
        self._last_scope = None
        self._baseline: dict | None = None
        self._retrying = False
        self._local_trace = self.local_trace  # one bound method, not a new one per event

    # settrace entry points ---------------------------------------------------------------

    def global_trace(self, frame, event, arg):
        """The `sys.settrace` function: sees every call; traces the entry and what it calls."""
        if self.done or frame.f_code.co_filename != self.filename:
            if self.park:
                _park()
            return None
        if self.entry_frame is None:
            if frame.f_code is not self.entry_code:
                return None
            self.entry_frame = frame
        try:
            self._on_call(frame)
        except BaseException as exc:
            self._failed(exc, self._on_call, frame)
        return self._local_trace

    def local_trace(self, frame, event, arg):
        """The per-frame trace function: line, return and exception events."""
        if self.done:
            if self.park:
                _park()
            return None
        try:
            if event == "line":
                if frame is self._last_frame:
                    scope, baseline = self._last_scope, self._baseline
                else:
                    scope, baseline = self._scopes[id(frame)], None
                    self._last_frame, self._last_scope = frame, scope
                state = self._render_locals(frame, scope, baseline)
                lineno = frame.f_lineno
                frames = self.frames
                if len(frames) >= self.max_frames:
                    self._frame_limit()
                frames.append(("line", lineno, self.lines[lineno or 0],
                               state, None, scope[0], scope[1]))
            elif event == "return":
                self._on_return(frame, arg)
            elif event == "exception":
                self._on_exception(frame, arg)
        except BaseException as exc:
            self._failed(exc, self.local_trace, frame, event, arg)
        return self._local_trace

    def _failed(self, exc: BaseException, retry, *args) -> None:
        """The tracer's own failures never become the program's exceptions."""
        if isinstance(exc, _StopTracing):
            raise exc
        if isinstance(exc, RecursionError) and not self._retrying:
            # The program is at its recursion limit and the tracer's frames tipped it over:
            # record this event with some headroom; the program then meets the limit itself.
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(limit + 100)
            self._retrying = True
            try:
                retry(*args)
            finally:
                self._retrying = False
                sys.setrecursionlimit(limit)
        elif isinstance(exc, MemoryError):
            self._hit_limit("memory_limit", "MemoryError inside the tracer (address-space limit)")
        else:
            self._hit_limit("crashed", f"tracer error: {type(exc).__name__}: {exc}")

    # events ------------------------------------------------------------------------------

    def _on_call(self, frame):
        fid = id(frame)
        scopes = self._scopes
        scope = scopes.get(fid)
        if (scope is None or not frame.f_code.co_flags & _GENERATOR_FLAGS
                or _fresh_generator(frame)):
            scope = scopes[fid] = [self._next_scope, 0, {} if _PY313 else None]
            self._next_scope += 1
        if frame is not self.entry_frame:
            parent = scopes.get(id(frame.f_back))
            scope[1] = parent[1] + 1 if parent is not None else self._depth_of(frame)
        state = self._render_locals(frame, scope, None)
        self._last_frame, self._last_scope = frame, scope
        self._append("call", frame.f_lineno, state, None, scope)

    def _on_return(self, frame, arg):
        fid = id(frame)
        scope = self._scopes[fid]
        if self._last_frame is not frame:
            self._last_frame, self._last_scope, self._baseline = frame, scope, None
        self._append("return", frame.f_lineno, None, self.renderer.render(arg), scope)
        is_generator = frame.f_code.co_flags & _GENERATOR_FLAGS
        if not is_generator:
            del self._scopes[fid]
        if frame is self.entry_frame:
            # The instruction the frame stopped at tells a yield, a return and a raise apart
            # (settrace passes None for both a `return None` and an exception leaving).
            lasti = frame.f_lasti
            op = frame.f_code.co_code[lasti] if lasti >= 0 else None
            # (3.13 reports a yield's return event at the RESUME after the YIELD_VALUE)
            if is_generator and (op in _YIELD_OPS or op in _RESUME_OP):
                return  # suspended, not finished
            if op not in _RETURN_OPS:
                self.entry_exception = self._entry_exception or (Exception, "unknown exception")
            self._stop()

    def _on_exception(self, frame, arg):
        scope = self._scopes[id(frame)]
        if self._last_frame is not frame:
            self._last_frame, self._last_scope, self._baseline = frame, scope, None
        if frame is self.entry_frame:
            self._entry_exception = (arg[0], arg[1])
        self._append("exception", frame.f_lineno, None, self.renderer.render(arg), scope)

    # helpers -----------------------------------------------------------------------------

    def _append(self, event, lineno, state, arg, scope):
        frames = self.frames
        if len(frames) >= self.max_frames:
            self._frame_limit()
        frames.append((event, lineno, self.lines[lineno or 0],
                       state, arg, scope[0], scope[1]))

    def _render_locals(self, frame, scope, baseline: dict | None) -> dict:
        """Render the frame's locals and make them the new baseline; with a baseline, return
        the ".."-encoded state. (A loop, not comprehensions: on 3.10/3.11 each comprehension
        is a function call, and this runs for every event.)"""
        if _PY313:  # f_locals is a proxy in fast-locals order: keep 3.10's insertion order
            variables = scope[2]
            current = dict(frame.f_locals)
            for name in [n for n in variables if n not in current]:
                del variables[name]
            variables.update(current)
            items = variables.items()
        else:
            items = frame.f_locals.items()
        renderer = self.renderer
        threshold = renderer.threshold
        watchdog = renderer.watchdog
        rendered = {}
        if watchdog is not None:  # one time budget for this optimistic pass over the values
            watchdog.current = rendered  # (a dict of strings: the watchdog may hold on to it)
        try:
            # (No bound methods kept in locals here: each would be a new object per event.)
            if baseline is None:
                state = rendered
                for name, value in items:
                    text = repr(value)
                    if len(text) > threshold or " at 0x" in text:
                        text = renderer.finish(text)
                    rendered[name] = text
            else:
                state = {}
                for name, value in items:
                    text = repr(value)
                    if baseline.get(name) == text:  # unchanged: it passed `finish` as it is
                        state[name] = DOTS
                    else:
                        if len(text) > threshold or " at 0x" in text:
                            text = renderer.finish(text)
                        state[name] = DOTS if baseline.get(name) == text else text
                    rendered[name] = text
        except BaseException:
            # A repr raised or ran out of time, or an int is past 3.11+'s digit limit: again,
            # value by value, each under its own time budget, with placeholders.
            if watchdog is not None:
                watchdog.current = None
            rendered = {name: renderer.render(value) for name, value in items}
            state = rendered if baseline is None else {
                name: DOTS if baseline.get(name) == text else text
                for name, text in rendered.items()}
        if watchdog is not None:
            watchdog.current = None
        self._baseline = rendered
        return state

    def _frame_limit(self):
        self._hit_limit("frame_limit", f"trace reached the frame limit ({self.max_frames} frames)")

    def _hit_limit(self, status: str, message: str):
        """Stop tracing for good: report through `on_limit`, else unwind the program."""
        self._stop()
        self.limit = (status, message)
        if self.on_limit is not None:
            self.on_limit(status, message)
        raise _StopTracing()

    def _stop(self):
        self.done = True
        self._last_frame = self._last_scope = None
        sys.settrace(None)

    def _depth_of(self, frame) -> int:
        parent = frame.f_back
        while parent is not None:
            scope = self._scopes.get(id(parent))
            if scope is not None and parent.f_code.co_filename == self.filename:
                return scope[1] + 1
            parent = parent.f_back
        return 0


def _fresh_generator(frame) -> bool:
    """For a generator/coroutine frame's call event: a first start, not a resume?"""
    lasti = frame.f_lasti
    if lasti < 0:  # 3.10: a frame that has not run yet
        return True
    if _RESUME_OP:  # 3.11+: RESUME's oparg says start (0) or resume after yield/await
        raw = frame.f_code.co_code
        return raw[lasti] in _RESUME_OP and raw[lasti + 1] & 3 == 0
    return False


def _nested_codes(*functions) -> frozenset:
    return frozenset(c for f in functions for c in _code_objects(f.__code__))


# The watchdog's SIGALRM interrupts a repr only when it lands outside these (the tracer's own).
_ReprWatchdog.tracer_codes = _nested_codes(Renderer.render, Recorder._render_locals)


def _park() -> None:
    """Wait for good: another thread is reporting and will end the process."""
    threading.Event().wait()


def _exception_line(exc_type, exc_value) -> str:
    name = getattr(exc_type, "__name__", str(exc_type))
    try:
        text = str(exc_value)
    except BaseException:
        text = "<str() raised>"
    return f"{name}: {text}" if text else name
