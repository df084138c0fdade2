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
- ``<tracekit: repr timed out>``: the ``__repr__`` ran longer than ``repr_timeout`` seconds;
- ``<tracekit: repr too large: N chars>``: the repr was longer than ``max_repr_chars``;
- ``...<tracekit: N more chars>``: appended to a value cut at ``max_value_chars`` (off by
  default, as in CWM's data).
"""

from __future__ import annotations

import ast
import builtins
import json
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
# Types whose repr runs no user code, so no time budget is needed.
_PLAIN_TYPES = frozenset({int, float, str, bool, type(None), bytes, complex})
_GENERATOR_FLAGS = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
_PY313 = sys.version_info >= (3, 13)
def _opcode_numbers(*names: str) -> frozenset:
    import dis

    return frozenset(dis.opmap[n] for n in names if n in dis.opmap)


_YIELD_OPS = _opcode_numbers("YIELD_VALUE", "YIELD_FROM")
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
    marked = [i + 1 for i, line in enumerate(lines) if MARKER.strip() in line]
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


class Renderer:
    """repr(v) with addresses stripped, under a time and size budget."""

    def __init__(self, max_value_chars=None, max_repr_chars=DEFAULT_MAX_REPR_CHARS,
                 repr_timeout=DEFAULT_REPR_TIMEOUT):
        self.max_value_chars = max_value_chars
        self.max_repr_chars = max_repr_chars
        self.repr_timeout = repr_timeout
        self.can_time = (
            repr_timeout is not None
            and hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
        )
        self._armed = False
        if self.can_time:
            signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum, frame):
        if self._armed:
            raise _ReprTimeout()

    def arm(self) -> bool:
        """Start the repr time budget; returns whether it was armed."""
        if not self.can_time or signal.getsignal(signal.SIGALRM) != self._on_alarm:
            return False  # the program took SIGALRM for itself: no budget
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, self.repr_timeout, self.repr_timeout)
        return True

    def disarm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._armed = False

    def slow_repr(self, value) -> str:
        """repr of a value whose repr may run user code; the caller has armed the budget."""
        try:
            return repr(value)
        except _ReprTimeout:
            return TIMEOUT_PLACEHOLDER
        except ValueError as exc:
            if "integer string conversion" in str(exc):
                return _big_int_repr(value)
            return RAISED_PLACEHOLDER.format(type(exc).__name__)
        except BaseException as exc:  # a __repr__ may raise anything, SystemExit included
            return RAISED_PLACEHOLDER.format(type(exc).__name__)

    def finish(self, text: str) -> str:
        """Apply the size budget, address stripping and the optional value cap."""
        n = len(text)
        if n > self.max_repr_chars:
            return TOO_LARGE_PLACEHOLDER.format(n)
        if " at 0x" in text:
            text = _ADDRESS.sub("", text)
        cap = self.max_value_chars
        if cap is not None and len(text) > cap:
            text = text[:cap] + TRUNCATED_MARKER.format(len(text) - cap)
        return text

    def render(self, value) -> str:
        """The CWM rendering of one value."""
        if type(value) in _PLAIN_TYPES:
            try:
                return self.finish(repr(value))
            except ValueError:
                return self.finish(_big_int_repr(value))
        armed = self.arm()
        try:
            return self.finish(self.slow_repr(value))
        finally:
            if armed:
                self.disarm()


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
    """Records CWM frames of one entry call through `sys.settrace`.

    `frames` holds tuples (event, lineno, state, arg, scope, depth): `state` is the locals dict
    (values rendered or "..") for call/line frames and None otherwise; `arg` the rendered return
    value or exception triple for return/exception frames.
    """

    def __init__(self, filename: str, entry_code: types.CodeType, renderer: Renderer,
                 max_frames: int | None = DEFAULT_MAX_FRAMES, on_limit=None):
        self.filename = filename
        self.entry_code = entry_code
        self.renderer = renderer
        self.max_frames = max_frames
        self.on_limit = on_limit  # called with ("frame_limit", message); default: stop
        self.frames: list = []
        self.entry_frame = None
        self.done = False
        self.entry_raised: str | None = None  # "Type: message" if the entry exited by raising
        self.entry_exc_type: type | None = None
        self.return_value: str | None = None
        self._scopes: dict = {}  # id(frame) -> [scope id, depth, persistent locals (3.13+)]
        self._next_scope = 0
        self._last_frame_id = None
        self._baseline: dict | None = None
        self._pending_exc = None  # (type, value) seen in the entry frame, not yet handled
        self.limit: tuple | None = None  # (status, message) once a limit stopped the trace

    # settrace entry points ---------------------------------------------------------------

    def global_trace(self, frame, event, arg):
        if self.done or frame.f_code.co_filename != self.filename:
            return None
        if self.entry_frame is None:
            if frame.f_code is not self.entry_code:
                return None
            self.entry_frame = frame
        self._guarded(self._on_call, frame)
        return self.local_trace

    def local_trace(self, frame, event, arg):
        if self.done:
            return None
        if event == "line":
            self._guarded(self._on_line, frame)
        elif event == "return":
            self._guarded(self._on_return, frame, arg)
        elif event == "exception":
            self._guarded(self._on_exception, frame, arg)
        return self.local_trace

    def _guarded(self, handler, *args):
        """Run an event handler; the tracer's own failures never become the program's."""
        try:
            handler(*args)
        except _StopTracing:
            raise
        except RecursionError:
            # The program is at its recursion limit and the tracer's frames tipped it over:
            # record this event with some headroom; the program then meets the limit itself.
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(limit + 100)
            try:
                handler(*args)
            except _StopTracing:
                raise
            except Exception as exc:
                self._hit_limit("crashed", f"tracer error: {type(exc).__name__}: {exc}")
            finally:
                sys.setrecursionlimit(limit)
        except MemoryError:
            self._hit_limit("memory_limit", "MemoryError inside the tracer (address-space limit)")
        except Exception as exc:  # a tracer bug must not become the program's exception
            self._hit_limit("crashed", f"tracer error: {type(exc).__name__}: {exc}")

    # events ------------------------------------------------------------------------------

    def _on_call(self, frame):
        fid = id(frame)
        code = frame.f_code
        scope = self._scopes.get(fid)
        if scope is None or self._is_fresh_start(frame, code):
            scope = [self._next_scope, 0, {} if _PY313 else None]
            self._next_scope += 1
            self._scopes[fid] = scope
        scope[1] = self._depth_of(frame)
        rendered = self._render_locals(frame, scope)
        self._baseline = rendered
        self._last_frame_id = fid
        self._emit(("call", frame.f_lineno, rendered, None, scope[0], scope[1]))

    def _on_line(self, frame):
        fid = id(frame)
        scope = self._scopes[fid]
        rendered = self._render_locals(frame, scope)
        self._switch_to(fid)
        baseline = self._baseline
        if baseline is None:
            state = rendered
        else:
            state = {k: (DOTS if baseline.get(k) == v else v) for k, v in rendered.items()}
        self._baseline = rendered
        if frame is self.entry_frame:
            self._pending_exc = None
        self._emit(("line", frame.f_lineno, state, None, scope[0], scope[1]))

    def _on_return(self, frame, arg):
        fid = id(frame)
        scope = self._scopes[fid]
        self._switch_to(fid)
        self._emit(("return", frame.f_lineno, None, self.renderer.render(arg), scope[0], scope[1]))
        code = frame.f_code
        is_generator = code.co_flags & _GENERATOR_FLAGS
        if not is_generator:
            del self._scopes[fid]
        if frame is self.entry_frame and not (is_generator and self._at_yield(frame, code)):
            if self._pending_exc is not None and arg is None:
                exc_type, exc_value = self._pending_exc
                self.entry_exc_type = exc_type
                self.entry_raised = _exception_line(exc_type, exc_value)
            else:
                self.return_value = self.frames[-1][3]
            self._stop()

    def _on_exception(self, frame, arg):
        fid = id(frame)
        scope = self._scopes[fid]
        self._switch_to(fid)
        if frame is self.entry_frame:
            self._pending_exc = (arg[0], arg[1])
        self._emit(("exception", frame.f_lineno, None, self.renderer.render(arg),
                    scope[0], scope[1]))

    # helpers -----------------------------------------------------------------------------

    def _switch_to(self, fid: int) -> None:
        """The ".." rule's context switch: a frame of another scope forgets the baseline."""
        if self._last_frame_id != fid:
            self._last_frame_id = fid
            self._baseline = None

    def _emit(self, record):
        self.frames.append(record)
        if self.max_frames is not None and len(self.frames) >= self.max_frames and not self.done:
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
        sys.settrace(None)

    def _render_locals(self, frame, scope) -> dict:
        if _PY313:
            persistent = scope[2]
            current = dict(frame.f_locals)
            for name in [n for n in persistent if n not in current]:
                del persistent[name]
            persistent.update(current)
            items = persistent.items()
        else:
            items = frame.f_locals.items()
        renderer = self.renderer
        finish = renderer.finish
        out = {}
        armed = tried = False
        try:
            for name, value in items:
                if type(value) in _PLAIN_TYPES:
                    try:
                        text = repr(value)
                    except ValueError:
                        text = _big_int_repr(value)
                else:
                    if not tried:
                        tried = True
                        armed = renderer.arm()
                    text = renderer.slow_repr(value)
                out[name] = finish(text)
        finally:
            if armed:
                renderer.disarm()
        return out

    def _depth_of(self, frame) -> int:
        if frame is self.entry_frame:
            return 0
        parent = frame.f_back
        while parent is not None:
            scope = self._scopes.get(id(parent))
            if scope is not None and parent.f_code.co_filename == self.filename:
                return scope[1] + 1
            parent = parent.f_back
        return 0

    @staticmethod
    def _is_fresh_start(frame, code) -> bool:
        if not code.co_flags & _GENERATOR_FLAGS:
            return True
        lasti = frame.f_lasti
        if lasti < 0:  # 3.10: a frame that has not run yet
            return True
        if _RESUME_OP:  # 3.11+: RESUME's oparg says start (0) or resume after yield/await
            raw = code.co_code
            return raw[lasti] in _RESUME_OP and raw[lasti + 1] & 3 == 0
        return False

    @staticmethod
    def _at_yield(frame, code) -> bool:
        lasti = frame.f_lasti
        return lasti >= 0 and code.co_code[lasti] in _YIELD_OPS


def _exception_line(exc_type, exc_value) -> str:
    name = getattr(exc_type, "__name__", str(exc_type))
    try:
        text = str(exc_value)
    except BaseException:
        text = "<str() raised>"
    return f"{name}: {text}" if text else name


def source_lines(context: str) -> list[str]:
    """The context's physical lines, each ending in a newline, marker removed (index = line-1)."""
    return [line.replace(MARKER, "") + "\n" for line in context.split("\n")]


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

    recorder = Recorder(filename, entry_code,
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
    result["frames"] = frames_to_json(recorder, context)
    result["return_value"] = recorder.return_value
    result["status"], result["error"] = _status_of(recorder, call_error, entry_name, call)
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
    if recorder.entry_raised is not None:
        exc_type = recorder.entry_exc_type
        if isinstance(exc_type, type) and issubclass(exc_type, SystemExit):
            return "exited", recorder.entry_raised
        if isinstance(exc_type, type) and issubclass(exc_type, MemoryError):
            return "memory_limit", recorder.entry_raised
        return "raised", recorder.entry_raised
    return "ok", None


def frames_to_json(recorder: Recorder, context: str) -> list:
    """Recorder tuples -> [event, lineno, source, state, arg, scope, depth] lists."""
    lines = source_lines(context)
    out = []
    for event, lineno, state, arg, scope, depth in recorder.frames:
        source = lines[lineno - 1] if lineno is not None and 0 < lineno <= len(lines) else ""
        out.append([event, lineno, source, state, arg, scope, depth])
    return out


# ---------------------------------------------------------------------------------------------
# Child-process mode: `python tracer.py RESULT_FD` with the request as JSON on stdin


def _child_main(argv: list[str]) -> None:
    import random

    result_fd = int(argv[1])
    request = json.loads(sys.stdin.read())
    _apply_rlimits(request.get("limits", {}))
    sys.stdin = open(os.devnull)
    random.seed(request.get("seed", 0))
    filename = request.get("filename", "<tracekit>")
    sys.argv = [filename]
    lock = threading.Lock()
    reserve = [bytearray(4 << 20)]  # freed to have room to report a MemoryError
    running = {"recorder": None, "context": normalize_newlines(request["source"])}
    base = {"context": running["context"], "entry": request.get("entry"),
            "call": request.get("call"), "python": ".".join(map(str, sys.version_info[:3])),
            "return_value": None}

    def write_result(result: dict) -> None:
        if not lock.acquire(blocking=False):
            return  # another thread is already reporting
        data = memoryview(json.dumps(result).encode())
        while data:
            data = data[os.write(result_fd, data):]
        os.close(result_fd)

    def on_start(recorder, context):
        running.update(recorder=recorder, context=context)

    def abort(status: str, message: str) -> None:
        """Report what was traced so far and end the process at once."""
        reserve.clear()
        sys.settrace(None)
        recorder = running["recorder"]
        frames = frames_to_json(recorder, running["context"]) if recorder else []
        write_result({**base, "context": running["context"], "status": status,
                      "error": message, "frames": frames})
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


def _flush_and_exit() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)


if __name__ == "__main__":
    _child_main(sys.argv)
