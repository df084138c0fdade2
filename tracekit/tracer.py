"""CWM-format execution tracer: a `sys.settrace` recorder, stdlib-only, CPython 3.10+.

This module runs inside the traced program's interpreter (see `tracekit.sandbox`), so it imports
nothing outside the standard library and uses no syntax newer than 3.10. It can also be used
in-process (`trace_source`), which is what the benchmarks do.

What it records follows `spec/trace-format.md` sections 1-5:

- events are CPython's own `call` / `line` / `return` / `exception`, restricted to code compiled
  from the context, from the entry function's first `call` to that frame's final `return`;
- values are `repr(v)` with every `` at 0x<hex>`` removed; locals keep `f_locals` insertion order
  (3.10 semantics, emulated on 3.13+ where `f_locals` became a proxy);
- in a `line` frame a value equal to the previous locals frame of the same Python frame becomes
  `".."`, unless a frame of another scope was emitted in between (the context-switch reset).

Placeholders the tracer writes instead of a value (all start with ``<tracekit:``):

- ``<tracekit: repr raised TYPE>``: the value's ``__repr__`` raised TYPE;
- ``<tracekit: repr timed out>``: the ``__repr__`` ran longer than ``repr_timeout`` seconds
  (a frame's values are first rendered in one pass under one budget; if that pass fails or
  runs out of time, each value is rendered again alone, under a budget of its own, so a
  ``__repr__`` with side effects may run twice in that case);
- ``<tracekit: repr too large: N chars>``: the repr was longer than ``max_repr_chars``;
- ``...<tracekit: N more chars>``: appended to a value cut at ``max_value_chars`` (off by
  default, as in CWM's data).
"""

from __future__ import annotations

import ast
import builtins
import json
import mmap
import os
import re
import signal
import sys
import threading
import types

MARKER = "  # << START_OF_TRACE"
CALL_COMMENT = "# tracekit-call:"
DOTS = ".."

RAISED_PLACEHOLDER = "<tracekit: repr raised {}>"
TIMEOUT_PLACEHOLDER = "<tracekit: repr timed out>"
TOO_LARGE_PLACEHOLDER = "<tracekit: repr too large: {} chars>"
TRUNCATED_MARKER = "...<tracekit: {} more chars>"

DEFAULT_MAX_FRAMES = 10_000
DEFAULT_MAX_REPR_CHARS = 1_000_000
DEFAULT_REPR_TIMEOUT = 1.0

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_LOOSE_MARKER = re.compile(r"#\s*<<\s*START_OF_TRACE\s*$")  # to explain a misspelt marker
# Types whose repr runs no user code, so no time budget is needed.
_PLAIN_TYPES = frozenset({int, float, str, bool, type(None), bytes, complex})
_GENERATOR_FLAGS = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
_PY313 = sys.version_info >= (3, 13)


def _opcode_numbers(*names: str) -> frozenset:
    import dis

    return frozenset(dis.opmap[n] for n in names if n in dis.opmap)


_YIELD_OPS = _opcode_numbers("YIELD_VALUE", "YIELD_FROM")
_RETURN_OPS = _opcode_numbers("RETURN_VALUE", "RETURN_CONST")
_RESUME_OP = _opcode_numbers("RESUME")


class TraceSetupError(Exception):
    """The program cannot be traced as asked; `status` says which way."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class _ReprTimeout(BaseException):
    pass


class _StopTracing(BaseException):
    pass


# ---------------------------------------------------------------------------------------------
# Context: finding the entry, adding the marker, reading the call


def normalize_newlines(source: str) -> str:
    """Universal newlines, as reading a file in text mode gives."""
    return source.replace("\r\n", "\n").replace("\r", "\n")


def _function_defs(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def prepare_context(source: str, entry: str | None = None) -> tuple[str, str, int]:
    """Return (context with exactly one marker, entry function name, line of its `def`).

    With `entry`, the marker is added to that function's `def` line (a name or a dotted
    qualified name such as `Stack.push`); otherwise the one marked `def` in `source` is the entry.
    Raises TraceSetupError("syntax_error" | "no_entry", message).
    """
    source = normalize_newlines(source)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise TraceSetupError("syntax_error", _syntax_message(exc)) from None
    lines = source.split("\n")
    marked = [i + 1 for i, line in enumerate(lines) if _LOOSE_MARKER.search(line)]
    defs = list(_function_defs(tree))
    if entry is not None:
        if marked:
            raise TraceSetupError(
                "no_entry",
                f"--entry {entry} given but line {marked[0]} already has the START_OF_TRACE "
                "marker: drop one of the two",
            )
        node = _find_def(tree, entry)
        if node is None:
            raise TraceSetupError("no_entry", f"no function named {entry!r}: check --entry")
        lines[node.lineno - 1] = lines[node.lineno - 1] + MARKER
        return "\n".join(lines), node.name, node.lineno
    if not marked:
        raise TraceSetupError(
            "no_entry",
            "no function is marked: end its def line with '  # << START_OF_TRACE' or pass --entry",
        )
    if len(marked) > 1:
        raise TraceSetupError(
            "no_entry", f"START_OF_TRACE marker on lines {marked}: keep exactly one"
        )
    for node in defs:
        if node.lineno <= marked[0] < node.body[0].lineno:
            if MARKER not in lines[marked[0] - 1]:
                raise TraceSetupError(
                    "no_entry",
                    f"line {marked[0]}: the marker must be written exactly '{MARKER}' "
                    "(two spaces, then '# << START_OF_TRACE')",
                )
            return source, node.name, node.lineno
    raise TraceSetupError(
        "no_entry", f"line {marked[0]} has the START_OF_TRACE marker but is not a def line"
    )


def _find_def(tree: ast.AST, qualname: str):
    parts = qualname.split(".")

    def search(body, parts):
        for node in body:
            if getattr(node, "name", None) != parts[0]:
                continue
            if len(parts) == 1 and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
            if len(parts) > 1 and hasattr(node, "body"):
                found = search(node.body, parts[1:])
                if found is not None:
                    return found
        return None

    found = search(tree.body, parts)
    if found is None and len(parts) == 1:  # a nested function, found anywhere
        found = next((n for n in _function_defs(tree) if n.name == qualname), None)
    return found


def call_from_comment(source: str) -> str | None:
    """The call written in the file as `# tracekit-call: f(3, 'x')`, if any."""
    for line in normalize_newlines(source).split("\n"):
        stripped = line.strip()
        if stripped.startswith(CALL_COMMENT):
            return stripped[len(CALL_COMMENT):].strip() or None
    return None


def _syntax_message(exc: SyntaxError) -> str:
    return f"SyntaxError: {exc.msg} (line {exc.lineno})"


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _entry_code(module_code: types.CodeType, tree: ast.AST, def_lineno: int):
    """The entry's code object, or None when the compiler dropped it as unreachable."""
    node = next(n for n in _function_defs(tree) if n.lineno == def_lineno)
    first_lines = {node.lineno} | {d.lineno for d in node.decorator_list}
    for code in _code_objects(module_code):
        if code.co_name == node.name and code.co_firstlineno in first_lines:
            return code
    return None


# ---------------------------------------------------------------------------------------------
# Rendering values


class _ReprWatchdog:
    """Interrupts the main thread when one rendering pass runs longer than its budget.

    A daemon thread samples which pass is in progress a few times per budget; when the same
    one is still running after the budget, it sends SIGALRM to the main thread, whose handler
    raises inside the repr. The main thread pays two attribute writes per pass, no syscalls.
    If the program installs its own SIGALRM handler, the budget is off (the wall-clock
    timeout still ends the program).
    """

    _instance = None

    def __init__(self):
        self.budget = DEFAULT_REPR_TIMEOUT
        # The rendering pass in progress, named by an object made for it (None when idle):
        # the main thread only stores a reference, which allocates nothing.
        self.current = None
        self.fired = None  # the pass the last interrupt was meant for
        self.main_id = threading.main_thread().ident
        signal.signal(signal.SIGALRM, self.on_alarm)
        threading.Thread(target=self.watch, name="tracekit-repr-watchdog", daemon=True).start()

    @classmethod
    def get(cls, budget: float):
        """The process's watchdog (started on first use, from the main thread), or None."""
        if cls._instance is None:
            if threading.current_thread() is not threading.main_thread():
                return None
            cls._instance = cls()
        cls._instance.budget = budget
        return cls._instance

    def on_alarm(self, signum, frame):
        # Raise only inside the repr itself: a signal that lands in the tracer's own code
        # (the repr has just returned) is ignored.
        if (self.current is not None and self.current is self.fired
                and frame is not None and frame.f_code not in _TRACER_CODES):
            raise _ReprTimeout()

    def watch(self) -> None:
        import time

        seen, since = None, 0.0  # holding `seen` keeps its id from being reused
        while True:
            period = self.budget / 4
            time.sleep(period)
            current = self.current
            if current is None or current is not seen:
                seen, since = current, 0.0
                continue
            since += period
            if since >= self.budget and signal.getsignal(signal.SIGALRM) == self.on_alarm:
                self.fired = current
                signal.pthread_kill(self.main_id, signal.SIGALRM)
                since = 0.0  # a repr that swallows the first interrupt gets another


class Renderer:
    """repr(v) with addresses stripped, under a time and size budget, optionally capped."""

    def __init__(self, max_value_chars=None, max_repr_chars=DEFAULT_MAX_REPR_CHARS,
                 repr_timeout=DEFAULT_REPR_TIMEOUT):
        self.max_value_chars = max_value_chars
        self.max_repr_chars = max_repr_chars
        # A text longer than this, or holding an address, needs `finish`.
        self.threshold = min(max_repr_chars, max_value_chars or max_repr_chars)
        self.watchdog = (_ReprWatchdog.get(repr_timeout)
                         if repr_timeout is not None and hasattr(signal, "pthread_kill") else None)

    def render(self, value) -> str:
        """The CWM rendering of one value, under its own time budget; never raises."""
        if type(value) in _PLAIN_TYPES and type(value) is not int:  # no user code, no digit limit
            text = repr(value)
            return text if len(text) <= self.threshold and " at 0x" not in text else self.finish(text)
        watchdog = self.watchdog
        if watchdog is not None:
            watchdog.current = object()
        try:
            text = repr(value)
        except BaseException as exc:  # a __repr__ may raise anything, SystemExit included
            if isinstance(exc, _ReprTimeout):
                text = TIMEOUT_PLACEHOLDER
            elif isinstance(exc, ValueError) and "integer string conversion" in str(exc):
                text = _big_int_repr(value)  # past 3.11+'s digit limit: print it as 3.10 does
            else:
                text = RAISED_PLACEHOLDER.format(type(exc).__name__)
        finally:
            if watchdog is not None:
                watchdog.current = None
        return self.finish(text)

    def finish(self, text: str) -> str:
        """Size budget, address stripping and the optional value cap."""
        n = len(text)
        if n > self.max_repr_chars:
            return TOO_LARGE_PLACEHOLDER.format(n)
        if " at 0x" in text:
            text = _ADDRESS.sub("", text)
        cap = self.max_value_chars
        if cap is not None and len(text) > cap:
            text = text[:cap] + TRUNCATED_MARKER.format(len(text) - cap)
        return text


def _big_int_repr(value) -> str:
    """repr of an int beyond 3.11+'s str-conversion digit limit, as 3.10 would print it."""
    if not hasattr(sys, "set_int_max_str_digits"):
        return repr(value)
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return repr(value)
    finally:
        sys.set_int_max_str_digits(limit)


# ---------------------------------------------------------------------------------------------
# The recorder


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
            if is_generator and op in _YIELD_OPS:
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
_TRACER_CODES = _nested_codes(Renderer.render, Recorder._render_locals)


def _exception_line(exc_type, exc_value) -> str:
    name = getattr(exc_type, "__name__", str(exc_type))
    try:
        text = str(exc_value)
    except BaseException:
        text = "<str() raised>"
    return f"{name}: {text}" if text else name


def source_lines(context: str) -> list[str]:
    """The context's physical lines, each ending in a newline, marker removed (index = line-1)."""
    return [line + "\n" for line in context.replace(MARKER, "").split("\n")]


# ---------------------------------------------------------------------------------------------
# Running one program


def trace_source(
    source: str,
    call: str | None = None,
    entry: str | None = None,
    filename: str = "<tracekit>",
    max_frames: int | None = DEFAULT_MAX_FRAMES,
    max_value_chars: int | None = None,
    max_repr_chars: int = DEFAULT_MAX_REPR_CHARS,
    repr_timeout: float | None = DEFAULT_REPR_TIMEOUT,
    on_limit=None,
    on_start=None,
) -> dict:
    """Trace `call` (default: the entry called with no arguments) in this process.

    Returns a JSON-ready dict: status, error, context, entry, call, frames (lists of
    event, lineno, source, state, arg, scope, depth), return_value, python.
    `on_limit(status, message)` is called when a limit stops the trace (the child process
    reports and exits there); `on_start(recorder, context)` once, before the call runs.
    The program runs unsandboxed here: use `tracekit.sandbox` for untrusted code.
    """
    result = {
        "status": "ok", "error": None, "context": normalize_newlines(source), "entry": entry,
        "call": call, "frames": [], "return_value": None,
        "python": ".".join(map(str, sys.version_info[:3])),
    }
    try:
        context, entry_name, def_lineno = prepare_context(source, entry)
        result.update(context=context, entry=entry_name)
        call = call or f"{entry_name}()"
        result["call"] = call
        try:
            module_code = compile(context, filename, "exec")
            call_code = compile(call, "<call>", "eval")
        except SyntaxError as exc:
            where = "--call" if exc.filename == "<call>" else "program"
            raise TraceSetupError("syntax_error", f"{where}: {_syntax_message(exc)}") from None
        entry_code = _entry_code(module_code, ast.parse(context), def_lineno)
    except TraceSetupError as exc:
        result.update(status=exc.status, error=str(exc))
        return result

    module = types.ModuleType("__main__")
    module.__file__ = filename
    module.__builtins__ = builtins
    namespace = module.__dict__
    saved_main = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        exec(module_code, namespace)
    except BaseException as exc:  # module-level code is the program's, it may do anything
        sys.modules["__main__"] = saved_main
        result.update(status="setup_error",
                      error=f"module-level code raised {_exception_line(type(exc), exc)}")
        return result
    if entry_code is None:
        result.update(status="no_entry", error=f"{entry_name} is never defined (unreachable code?)")
        return result

    recorder = Recorder(filename, context, entry_code,
                        Renderer(max_value_chars, max_repr_chars, repr_timeout),
                        max_frames, on_limit)
    if on_start is not None:
        on_start(recorder, context)
    call_error = None
    sys.settrace(recorder.global_trace)
    try:
        eval(call_code, namespace)
    except _StopTracing:
        pass
    except BaseException as exc:
        call_error = exc
    finally:
        sys.settrace(None)
        sys.modules["__main__"] = saved_main
    frames = recorder.frames
    result["frames"] = frames
    result["status"], result["error"] = _status_of(recorder, call_error, entry_name, call)
    if result["status"] == "ok":
        result["return_value"] = frames[-1][4]
    return result


def _status_of(recorder: Recorder, call_error, entry_name: str, call: str):
    if recorder.limit is not None:
        return recorder.limit
    if recorder.entry_frame is None:
        if call_error is not None:
            return "no_entry", (f"{call} raised {_exception_line(type(call_error), call_error)} "
                                f"before entering {entry_name}: check --call")
        return "no_entry", f"{call} never called {entry_name}: check --call"
    if not recorder.done:
        if isinstance(call_error, RecursionError):
            return "recursion_limit", (
                "RecursionError: the program reached the recursion limit, where the tracer "
                "itself can no longer run; the trace stops there")
        return "crashed", ("tracing stopped before the entry returned (the program called "
                           "sys.settrace, or hit the recursion limit and caught it)")
    if recorder.entry_exception is not None:
        exc_type, exc_value = recorder.entry_exception
        message = _exception_line(exc_type, exc_value)
        if isinstance(exc_type, type) and issubclass(exc_type, SystemExit):
            return "exited", message
        if isinstance(exc_type, type) and issubclass(exc_type, MemoryError):
            return "memory_limit", message
        return "raised", message
    return "ok", None


# ---------------------------------------------------------------------------------------------
# Child-process mode: `python tracer.py RESULT_FD` with the request as JSON on stdin


def _child_main(argv: list[str]) -> None:
    if argv[1:] == ["--serve"]:
        _serve_main()
        return
    result_fd = int(argv[1])
    request = json.loads(sys.stdin.read())
    _run_request(request, result_fd)


def _run_request(request: dict, result_fd: int) -> None:
    """Trace one request in this process and write the result to `result_fd`; never returns."""
    import random

    _apply_rlimits(request.get("limits", {}))
    sys.stdin = open(os.devnull)
    random.seed(request.get("seed", 0))
    filename = request.get("filename", "<tracekit>")
    sys.argv = [filename]
    lock = threading.Lock()
    # Address space (RLIMIT_AS) held back, given back to report a MemoryError: a mapping never
    # touched, so it costs no page faults (a bytearray would write 4 MiB per program).
    reserve = [mmap.mmap(-1, 4 << 20)]
    running = {"recorder": None, "context": normalize_newlines(request["source"])}
    base = {"context": running["context"], "entry": request.get("entry"),
            "call": request.get("call"), "python": ".".join(map(str, sys.version_info[:3])),
            "return_value": None}

    def write_result(result: dict, locked: bool = False) -> None:
        if not locked:
            lock.acquire()  # a second reporter waits here until the first ends the process
        data = memoryview(json.dumps(result).encode())
        while data:
            data = data[os.write(result_fd, data):]
        os.close(result_fd)

    def on_start(recorder, context):
        running.update(recorder=recorder, context=context)

    def abort(status: str, message: str) -> None:
        """Report what was traced so far and end the process at once."""
        lock.acquire()  # a second reporter waits here until the first ends the process
        while reserve:
            reserve.pop().close()
        try:  # a first byte (JSON allows leading blanks): the reader then allows REPORT_GRACE
            os.write(result_fd, b" ")
        except OSError:
            pass
        sys.settrace(None)
        recorder = running["recorder"]
        if recorder is not None:
            # the main thread stops recording (abort may run elsewhere), and waits if so
            recorder.park = threading.current_thread() is not threading.main_thread()
            recorder.done = True
        frames = list(recorder.frames) if recorder else []
        write_result({**base, "context": running["context"], "status": status,
                      "error": message, "frames": frames}, locked=True)
        _flush_and_exit()

    timeout = request.get("timeout")
    if timeout:
        def watchdog():
            threading.Event().wait(timeout)
            abort("timeout", f"wall-clock timeout after {timeout:g}s")

        threading.Thread(target=watchdog, daemon=True).start()
    if hasattr(signal, "SIGXCPU"):
        signal.signal(signal.SIGXCPU, lambda *_: abort("timeout", "CPU time limit reached"))

    try:
        result = trace_source(
            request["source"], call=request.get("call"), entry=request.get("entry"),
            filename=filename,
            max_frames=request.get("max_frames", DEFAULT_MAX_FRAMES),
            max_value_chars=request.get("max_value_chars"),
            max_repr_chars=request.get("max_repr_chars", DEFAULT_MAX_REPR_CHARS),
            repr_timeout=request.get("repr_timeout", DEFAULT_REPR_TIMEOUT),
            on_limit=abort, on_start=on_start,
        )
    except MemoryError:
        abort("memory_limit", "MemoryError: out of memory (address-space limit)")
        return
    write_result(result)
    _flush_and_exit()


def _apply_rlimits(limits: dict) -> None:
    """Set each named rlimit (soft, hard), never above what this process may already use."""
    import resource

    for name, (soft, hard) in limits.items():
        which = getattr(resource, name, None)
        if which is None:
            continue
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass


def _park() -> None:
    """Wait for good: another thread is reporting and will end the process."""
    threading.Event().wait()


def _flush_and_exit() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# Warm worker mode: `python tracer.py --serve`, inside bubblewrap only. One request per stdin
# line, each traced in a child forked from this clean process; one reply per stdout line. Between
# programs it kills every other process of the sandbox's PID namespace and removes what appeared
# in /tmp, so programs cannot reach their neighbours.


def _serve_main() -> None:
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    quiet = os.open(os.devnull, os.O_RDWR)
    os.dup2(quiet, 1)
    os.close(quiet)
    _warm_up()
    baseline = _tmp_paths()
    for line in sys.stdin.buffer:
        reply = _serve_one(json.loads(line), protocol.fileno(), baseline)
        protocol.write(json.dumps(reply).encode() + b"\n")


def _warm_up() -> None:
    """Do here, once, what every forked child would do again: import the modules a child
    uses, run the tracer so its bytecode is specialized, then freeze every object out of the
    garbage collector's reach. A child then writes to few of the pages it shares with this
    process (each first write copies a page)."""
    import gc
    import random  # noqa: F401 - imported for the children
    import resource  # noqa: F401
    import selectors  # noqa: F401
    import shutil  # noqa: F401
    import time  # noqa: F401

    trace_source("def f(xs):  # << START_OF_TRACE\n    return [x for x in xs]\n", call="f('ab')")
    gc.collect()
    gc.freeze()


def _serve_one(request: dict, protocol_fd: int, baseline: set[str]) -> dict:
    import time

    result_r, result_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the program's process
        try:
            os.setsid()
            os.chdir("/tmp")
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            for fd in (result_r, out_r, err_r, out_w, err_w, protocol_fd):
                os.close(fd)
            _run_request(request, result_w)
        finally:
            os._exit(70)
    for fd in (result_w, out_w, err_w):
        os.close(fd)
    status = {}

    def poll():
        if "code" not in status:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status["code"] = _exit_code(code)
        return status.get("code")

    pump = OutputPump(poll, out_r, err_r, result_r, request["max_output_bytes"],
                      request["capture_bytes"])
    started = time.monotonic()
    try:
        pump.pump(started + request["timeout"] + request["grace"])
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if "code" not in status:
            status["code"] = _exit_code(os.waitpid(pid, 0)[1])
        pump.close()
        _clear_sandbox(baseline)
    stdout, stderr = pump.text()
    return {"result": bytes(pump.result).decode("utf-8", "replace"), "code": status["code"],
            "cut_off": pump.cut_off, "timed_out": pump.timed_out,
            "elapsed": time.monotonic() - started, "stdout": stdout, "stderr": stderr}


def _exit_code(wait_status: int) -> int:
    """As subprocess reports it: the exit status, or minus the signal that ended the child."""
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def _tmp_paths() -> set[str]:
    """Every path under /tmp, not descending into mount points (the sandbox's read-only
    binds of the interpreter and the tracer can sit under /tmp)."""
    paths = set()
    for root, dirs, files in os.walk("/tmp"):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]
        paths.update(os.path.join(root, name) for name in dirs + files)
    return paths


def _clear_sandbox(baseline: set[str]) -> None:
    """Kill every process of the PID namespace but its init and this one; remove whatever
    appeared under /tmp since the worker started (`baseline`)."""
    import shutil

    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, os.getpid()):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
    for path in sorted(_tmp_paths() - baseline, key=len):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


# Seconds a traced process that has begun writing its report gets past its deadline: a
# timeout report of a tight loop can hold ~10^6 frames, whose JSON takes seconds to write.
REPORT_GRACE = 8.0


class OutputPump:
    """Reads a traced process's stdout, stderr and result pipe together, with an output cap and
    a deadline (used by the host for one-shot sandboxes and by the warm worker)."""

    def __init__(self, poll, stdout_fd: int, stderr_fd: int, result_fd: int,
                 max_output_bytes: int, capture_bytes: int):
        import selectors

        self.poll = poll  # None while the process runs
        self.max_output_bytes, self.capture_bytes = max_output_bytes, capture_bytes
        self.selector = selectors.DefaultSelector()
        self.captured = {"stdout": bytearray(), "stderr": bytearray()}
        self.result = bytearray()
        self.total_output = 0
        self.cut_off = self.timed_out = self.result_done = False
        self.fds = (stdout_fd, stderr_fd, result_fd)
        for fd, name in zip(self.fds, ("stdout", "stderr", "result")):
            self.selector.register(fd, selectors.EVENT_READ, name)

    def pump(self, deadline: float) -> None:
        """Read until the process is done, or `deadline`; a process whose report has begun
        (its result pipe has a byte) gets REPORT_GRACE more seconds once, to finish it."""
        import time

        exited_at, extended = None, False
        while self.selector.get_map():
            now = time.monotonic()
            if now > deadline:
                if self.result and not extended:
                    deadline, extended = now + REPORT_GRACE, True
                    continue
                self.timed_out = True
                return
            if self.poll() is not None:
                # The process is gone; its own children may hold stdout open: drain briefly.
                exited_at = exited_at or now
                if self.result_done or now - exited_at > 0.2:
                    self._drain_ready()
                    return
            for key, _ in self.selector.select(timeout=min(0.05, max(0.0, deadline - now))):
                if self._read(key):
                    return

    def _drain_ready(self) -> None:
        """Read whatever is already buffered (the writers may never close the pipes: the
        program's own children inherit them)."""
        while self.selector.get_map():
            ready = self.selector.select(timeout=0)
            if not ready:
                return
            for key, _ in ready:
                if self._read(key):
                    return

    def _read(self, key) -> bool:
        """Read one chunk; True when the output limit was crossed."""
        try:
            chunk = os.read(key.fd, 1 << 16)
        except OSError:
            chunk = b""
        if not chunk:
            self.selector.unregister(key.fileobj)
            if key.data == "result":
                self.result_done = True
            return False
        if key.data == "result":
            self.result += chunk
            return False
        self.total_output += len(chunk)
        buffer = self.captured[key.data]
        room = self.capture_bytes - len(buffer)
        if room > 0:
            buffer += chunk[:room]
        if self.total_output > self.max_output_bytes:
            self.cut_off = True
            return True
        return False

    def text(self) -> tuple[str, str]:
        def decode(name: str) -> str:
            text = self.captured[name].decode("utf-8", errors="replace")
            cut = len(self.captured[name]) >= self.capture_bytes
            return text + "\n[tracekit: output cut]" if cut else text
        return decode("stdout"), decode("stderr")

    def close(self) -> None:
        self.selector.close()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


if __name__ == "__main__":
    _child_main(sys.argv)
