"""Tracing one program in this process: `trace_source`, the recorder's result as a dict."""

from __future__ import annotations

import ast
import builtins
import importlib
import sys
import types

from .constants import DEFAULT_MAX_FRAMES, DEFAULT_MAX_REPR_CHARS, DEFAULT_REPR_TIMEOUT
from .context import (
    TraceSetupError,
    _entry_code,
    _syntax_message,
    normalize_newlines,
    prepare_context,
)
from .recorder import Recorder, _exception_line, _StopTracing
from .values import Renderer


def trace_source(source: str, call: str | None = None, entry: str | None = None,
                 filename: str = "<tracekit>", max_frames: int | None = DEFAULT_MAX_FRAMES,
                 max_value_chars: int | None = None,
                 max_repr_chars: int = DEFAULT_MAX_REPR_CHARS,
                 repr_timeout: float | None = DEFAULT_REPR_TIMEOUT, on_limit=None,
                 on_start=None, module: str | None = None,
                 sys_path: list[str] | None = None) -> dict:
    """Trace `call` (default: the entry called with no arguments) in this process.

    Returns a JSON-ready dict: status, error, context, entry, call, frames (lists of
    event, lineno, source, state, arg, scope, depth), return_value, python.
    `on_limit(status, message)` is called when a limit stops the trace (the child process
    reports and exits there); `on_start(recorder, context, entry, call)` once, before the call
    runs.
    `module` runs the program as that module (e.g. "pkg.mod": its `__name__`, `__package__`
    for relative imports, and its reprs), else as `__main__`; `sys_path` entries go first on
    sys.path (a project's import roots, so that the program's imports resolve).
    The program runs unsandboxed here: use `tracekit.execution.sandbox` for untrusted code.
    """
    result = {
        "status": "ok", "error": None, "context": normalize_newlines(source), "entry": entry,
        "call": call, "frames": [], "return_value": None,
        "python": ".".join(map(str, sys.version_info[:3])),
    }
    try:
        context, entry_name, call, module_code, call_code, entry_code = _compiled(
            source, entry, call, filename, result)
    except TraceSetupError as exc:
        result.update(status=exc.status, error=str(exc))
        return result

    namespace, restore = _install_module(module or "__main__", filename, sys_path)
    try:
        exec(module_code, namespace)
    except BaseException as exc:  # module-level code is the program's, it may do anything
        restore()
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
        on_start(recorder, context, entry_name, call)
    call_error = _run_call(recorder, call_code, namespace, restore)
    frames = recorder.frames
    result["frames"] = frames
    result["status"], result["error"] = _status_of(recorder, call_error, entry_name, call)
    if result["status"] == "ok":
        result["return_value"] = frames[-1][4]
    return result


def _run_call(recorder: Recorder, call_code, namespace: dict, restore) -> BaseException | None:
    """Evaluate the call under the recorder, then put the module back (`restore`): the
    exception the call raised, if any (a limit that stops the trace is not one)."""
    sys.settrace(recorder.global_trace)
    try:
        eval(call_code, namespace)
    except _StopTracing:
        pass
    except BaseException as exc:
        return exc
    finally:
        sys.settrace(None)
        restore()
    return None


def _compiled(source: str, entry: str | None, call: str | None, filename: str, result: dict):
    """The program prepared and compiled: (context, entry name, call, the module's code, the
    call's code, the entry's code object or None). `result` gets the context, the entry and
    the call as each becomes known (a setup error reports them). Raises TraceSetupError."""
    context, entry_name, def_lineno = prepare_context(source, entry)
    result.update(context=context, entry=entry_name)
    tree = ast.parse(context)
    if call is None and not any(getattr(node, "lineno", None) == def_lineno
                                for node in tree.body):
        raise TraceSetupError(
            "no_entry", f"{entry or entry_name} is not a module-level function, so there "
            "is no call to default to: pass one that reaches it, e.g. --call "
            "\"Stack().push(1)\"")
    call = call or f"{entry_name}()"
    result["call"] = call
    try:
        module_code = compile(context, filename, "exec")
        call_code = compile(call, "<call>", "eval")
    except SyntaxError as exc:
        where = "--call" if exc.filename == "<call>" else "program"
        raise TraceSetupError("syntax_error", f"{where}: {_syntax_message(exc)}") from None
    return context, entry_name, call, module_code, call_code, _entry_code(module_code, tree,
                                                                          def_lineno)


def _install_module(name: str, filename: str, sys_path: list[str] | None):
    """A fresh module `name` in sys.modules (with `sys_path` first on sys.path): its namespace
    and a function that puts back what was there."""
    saved_path = list(sys.path)
    sys.path[:0] = sys_path or []
    module = types.ModuleType(name)
    module.__file__ = filename
    module.__builtins__ = builtins
    if name != "__main__":
        module.__package__ = package = name.rpartition(".")[0]
        if package:  # imported first, as importing the module would: its __init__ may
            try:  # import this very module, which must not find the half-run program
                importlib.import_module(package)
            except BaseException:  # noqa: BLE001 - the program's own import then says why
                pass
    saved = sys.modules.get(name)
    sys.modules[name] = module

    def restore() -> None:
        sys.path[:] = saved_path
        if saved is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = saved

    return module.__dict__, restore


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
