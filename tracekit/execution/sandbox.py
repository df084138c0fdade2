"""Run the tracer on untrusted code: a child process under a chosen CPython, inside bubblewrap
when it works, always with rlimits and a wall-clock timeout.

bubblewrap gives: no network (own network namespace), a read-only view of the filesystem, a
private size-capped /tmp as the only writable place, the users' home directories hidden, and
its own PID namespace, so every process the program starts dies with the sandbox. Without
bubblewrap the program still runs in its own process group under rlimits (and a warning says,
once, that network and filesystem isolation are off).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tracekit.execution.interpreters import Interpreter, SandboxUnavailable, find_python
from tracekit.format.trace import Trace
from tracekit.tracer import constants
from tracekit.tracer.context import normalize_newlines
from tracekit.tracer.pump import OutputPump

TRACER_DIR = Path(constants.__file__).resolve().parent  # the stdlib-only tracer package
SANDBOX_MODES = ("auto", "bwrap", "none")
_INSIDE = "/tmp/.tracekit"  # under bubblewrap the package is bound at _INSIDE/tracer
WORK_INSIDE = f"{_INSIDE}/work"  # and a writable work directory here
_GRACE_SECONDS = 1.0  # the child reports its own timeout first; the host kills after this


class SandboxWarning(UserWarning):
    """Shown once when tracing runs without bubblewrap."""


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Memory is the address-space rlimit; output counts stdout + stderr."""

    timeout: float = 10.0
    cpu_seconds: int | None = None  # default: the timeout, rounded up
    memory_mb: int = 2048
    file_size_mb: int = 64
    tmp_size_mb: int = 64
    max_processes: int = 256
    max_output_bytes: int = 8 << 20
    capture_bytes: int = 64 << 10  # how much of stdout and of stderr the trace keeps


# ---------------------------------------------------------------------------------------------
# bubblewrap


@functools.lru_cache(maxsize=None)
def bwrap_problem() -> str | None:
    """None when bubblewrap can run a sandbox here, else why not."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    try:
        probe = subprocess.run([bwrap, *_bwrap_base(64), "true"], capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap failed to start: {exc}"
    if probe.returncode != 0:
        return f"bwrap cannot create a sandbox here: {probe.stderr.strip()[:200]}"
    return None


def _bwrap_base(tmp_size_mb: int) -> list[str]:
    args = ["--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--size", str(tmp_size_mb << 20), "--tmpfs", "/tmp"]
    for home in sorted({"/root", "/home", os.path.expanduser("~")}):
        if os.path.isdir(home) and home != "/":
            args += ["--tmpfs", home]
    return args


def _bwrap_command(interp: Interpreter, limits: Limits, readable: tuple[str, ...] = (),
                   writable: str | None = None) -> list[str]:
    """bubblewrap's arguments: the base sandbox, the interpreter and `readable` directories
    visible read-only at their own paths (those under /tmp or a home are bound back; /tmp or a
    home itself entry by entry, over the sandbox's own writable tmpfs, which a program in /tmp
    needs), and `writable` bound read-write at WORK_INSIDE (a path that is the same in every
    sandbox, so that what a program prints of its files' paths does not change from run to
    run)."""
    args = [shutil.which("bwrap"), *_bwrap_base(limits.tmp_size_mb)]
    hidden = [a for i, a in enumerate(args) if i and args[i - 1] == "--tmpfs"]
    for prefix in [*interp.prefixes, *readable]:
        if prefix in hidden:
            args += _entries_bound(prefix)
        elif any(prefix.startswith(h.rstrip("/") + "/") for h in hidden):
            args += ["--ro-bind", prefix, prefix]
    if writable is not None:
        args += ["--bind", writable, WORK_INSIDE]
    args += ["--ro-bind", str(TRACER_DIR), f"{_INSIDE}/tracer", "--chdir", "/tmp"]
    return args


def _entries_bound(directory: str) -> list[str]:
    """Each entry of `directory` bound read-only at its own path (one that is gone by the time
    the sandbox starts is skipped), but the sandbox's own (_INSIDE)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    args = []
    for name in names:
        path = os.path.join(directory, name)
        if path != _INSIDE:
            args += ["--ro-bind-try", path, path]
    return args


def child_command(interp: Interpreter, parent: str) -> list[str]:
    """The command that starts the tracer's child side (`tracekit.tracer.worker.main`) with
    `parent`, the directory holding the tracer package, first on sys.path: the package is
    imported as `tracer`, on its own (as the traced program's sys.path[0] is that directory)."""
    boot = (f"import sys; sys.path[0] = {parent!r}; from tracer.worker import main; "
            "main(sys.argv)")
    return [interp.path, "-s", "-B", "-c", boot]


def _resolve_mode(sandbox: str) -> str:
    if sandbox not in SANDBOX_MODES:
        raise SandboxUnavailable(f"unknown sandbox {sandbox!r}: use one of "
                                 f"{', '.join(SANDBOX_MODES)}")
    if sandbox == "none":
        return "rlimits"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if sandbox == "bwrap":
        raise SandboxUnavailable(f"{problem}; or pass --sandbox none for rlimits only")
    global _warned
    if not _warned:  # once per process, whichever command traces first
        _warned = True
        warnings.warn(f"network and filesystem isolation are OFF ({problem}); programs run "
                      "with rlimits only", SandboxWarning, stacklevel=3)
    return "rlimits"


_warned = False


# ---------------------------------------------------------------------------------------------
# Running one trace


@dataclass(frozen=True)
class TraceOptions:
    """How a program is traced, in one value: the interpreter, the sandbox mode, the limits and
    the tracer's settings. The command line makes one; run_trace, WarmSandbox and dataset
    builds take it; the child gets its settings in the request."""

    python: str | None = None  # a version ("3.10") or a path; None: this interpreter
    sandbox: str = "auto"  # see SANDBOX_MODES
    limits: Limits = Limits()
    max_frames: int | None = constants.DEFAULT_MAX_FRAMES  # None: no cap
    max_value_chars: int | None = None  # None: values are not cut (as in CWM's data)
    max_repr_chars: int = constants.DEFAULT_MAX_REPR_CHARS
    repr_timeout: float | None = constants.DEFAULT_REPR_TIMEOUT
    seed: int = 0  # PYTHONHASHSEED and random.seed of the program
    binds: tuple[str, ...] = ()  # more paths the program may read (--bind), read-only


def run_trace(source: str, call: str | None = None, entry: str | None = None,
              options: TraceOptions = TraceOptions(), filename: str = "<tracekit>",
              module: str | None = None, sys_path: tuple[str, ...] = (),
              directory: str | None = None) -> Trace:
    """Trace one program in a fresh sandboxed child process. Never raises for a bad program:
    every outcome is a Trace whose `status` is one of `tracekit.format.trace.STATUSES`.
    `filename` is the program's `__file__`; `directory` (its file's, absolute) its working
    directory. `module` runs the program as that module (a project's file, for its relative
    imports and reprs); `sys_path` directories (a project's import roots) go first on
    sys.path. Under bubblewrap the program sees `directory`, `sys_path` and the options'
    `binds` read-only (and nothing else of /tmp or the home directories)."""
    request = {**_request(source, call, entry, filename, options), "module": module,
               "sys_path": list(sys_path), "cwd": directory}
    readable = _readable(sys_path, directory, options)
    failed = Trace(context=normalize_newlines(source), entry=entry, call=call)
    try:
        interp = find_python(options.python)
        mode = _resolve_mode(options.sandbox)
    except SandboxUnavailable as exc:
        failed.status, failed.error = "sandbox_unavailable", str(exc)
        return failed

    limits = options.limits
    with tempfile.TemporaryDirectory(prefix="tracekit-") as workdir:
        command, tmp = _command(interp, mode, limits, workdir, readable)
        outcome = _run_child(command, request, _child_environment(tmp, options.seed), workdir,
                             limits)
    return _finish(outcome, failed, interp, mode)


def _readable(paths: tuple[str, ...], directory: str | None,
              options: TraceOptions) -> tuple[str, ...]:
    """What a program may read besides the system: `paths` (import roots, a project), its own
    directory and the paths bound with --bind, each once."""
    return tuple(dict.fromkeys([*paths, *([directory] if directory else []),
                                *options.binds]))


def _command(interp: Interpreter, mode: str, limits: Limits, workdir: str,
             readable: tuple[str, ...] = (), writable: str | None = None) -> tuple[list, str]:
    """The child's command line in this sandbox mode, and its TMPDIR."""
    if mode == "bwrap":
        return [*_bwrap_command(interp, limits, readable, writable),
                *child_command(interp, _INSIDE)], "/tmp"
    return child_command(interp, str(TRACER_DIR.parent)), workdir


def run_lines(make_request: Callable[[str | None], dict], options: TraceOptions,
              readable: tuple[str, ...] = (), writable: str | None = None
              ) -> tuple[list[dict], dict, str, str]:
    """Run a request whose child reports JSON lines (a `tests:` suite or harness,
    `tracer.suite`) in a fresh sandbox: `readable` directories visible read-only at their own
    paths, `writable` read-write at WORK_INSIDE under bubblewrap (else at its own path);
    `make_request(path)` makes the request given the path the child sees `writable` at.
    Returns the reported lines but the last, the summary (the last line, or what became of a
    process that did not write one), stdout and stderr."""
    limits = options.limits
    try:
        interp = find_python(options.python)
        mode = _resolve_mode(options.sandbox)
    except SandboxUnavailable as exc:
        return [], {"status": "sandbox_unavailable", "error": str(exc)}, "", ""
    inside = WORK_INSIDE if mode == "bwrap" and writable else writable
    request = _lines_request(make_request(inside), options)
    with tempfile.TemporaryDirectory(prefix="tracekit-") as workdir:
        command, tmp = _command(interp, mode, limits, workdir,
                                _readable(readable, None, options), writable)
        run = _spawn(command, request, _child_environment(tmp, options.seed), workdir, limits)
    return _lines_of(run, request, limits)


def _lines_request(request: dict, options: TraceOptions) -> dict:
    return {**request, "seed": options.seed, "max_frames": options.max_frames,
            "max_value_chars": options.max_value_chars,
            "max_repr_chars": options.max_repr_chars, "repr_timeout": options.repr_timeout,
            "timeout": options.limits.timeout, "limits": _rlimits(options.limits)}


def _lines_of(run: _ChildEnd | _Outcome, request: dict,
              limits: Limits) -> tuple[list[dict], dict, str, str]:
    """The JSON lines a run reported, its summary, stdout and stderr (see run_lines)."""
    if isinstance(run, _Outcome):
        return [], {"status": run.status, "error": run.error}, "", ""
    lines = []
    for line in run.raw.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            break  # a line cut off by a kill
    summary = lines.pop()["summary"] if lines and "summary" in lines[-1] else None
    if run.cut_off:
        summary = {"status": "output_limit",
                   "error": f"the program wrote more than {limits.max_output_bytes} bytes"}
    elif summary is None and run.timed_out:
        summary = {"status": "timeout", "error": f"wall-clock timeout after {limits.timeout:g}s"}
    elif summary is None:
        status, error = _crash_reason(run.code, run.stderr,
                                      run.elapsed >= request["limits"]["RLIMIT_CPU"][0])
        summary = {"status": status, "error": error}
    return lines, summary, run.stdout, run.stderr


def _request(source: str, call: str | None, entry: str | None, filename: str,
             options: TraceOptions) -> dict:
    """What the child reads on stdin (tracekit.tracer.worker)."""
    return {
        "source": source, "call": call, "entry": entry, "filename": filename,
        "seed": options.seed, "max_frames": options.max_frames,
        "max_value_chars": options.max_value_chars, "max_repr_chars": options.max_repr_chars,
        "repr_timeout": options.repr_timeout, "timeout": options.limits.timeout,
        "limits": _rlimits(options.limits),
    }


def _child_environment(tmp: str, seed: int) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp,
            "LANG": "C.UTF-8", "PYTHONHASHSEED": str(seed), "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1"}


def _finish(outcome: _Outcome, failed: Trace, interp: Interpreter, mode: str) -> Trace:
    failed.python, failed.sandbox = interp.version, mode
    if outcome.result is not None:
        trace = Trace.from_dict(outcome.result)
        trace.python, trace.sandbox = interp.version, mode
    else:
        trace = failed
        trace.status, trace.error = outcome.status, outcome.error
    trace.stdout, trace.stderr = outcome.stdout, outcome.stderr
    if outcome.status == "output_limit":  # the host cut the program off: that wins
        trace.status, trace.error = outcome.status, outcome.error
    return trace


class WarmSandbox:
    """One bubblewrap sandbox kept warm for many programs: a worker inside it forks a fresh
    child per program (no new sandbox or interpreter each time), and between programs kills
    whatever the program left running and empties /tmp. The same statuses as run_trace. A
    program that kills the worker gets status crashed, and the next one a new worker. Needs
    bubblewrap (its PID namespace is what makes the cleaning safe); seed 0 only.

    `readable` directories are visible read-only at their own paths (a project's files),
    `writable` binds the sandbox's own `workdir` read-write at WORK_INSIDE (where `tests:`
    copies a project for each test file), and `pytest` starts pytest and its plugins once,
    before forking.

    (This module is over 450 lines: run_trace, run_lines and WarmSandbox share the private
    steps of one child's life, the bubblewrap command, the spawn, the reading of its pipes
    and what its end means, and keep them in one place.)"""

    def __init__(self, options: TraceOptions = TraceOptions(), readable: tuple[str, ...] = (),
                 writable: bool = False, pytest: bool = False):
        problem = bwrap_problem()
        if problem:
            raise SandboxUnavailable(f"warm sandboxes need bubblewrap: {problem}")
        if options.seed != 0:
            raise SandboxUnavailable("warm sandboxes trace with seed 0 only")
        self.interp = find_python(options.python)
        self.options = options
        self.readable = _readable(readable, None, options)
        self.writable, self.pytest = writable, pytest
        self.proc: subprocess.Popen | None = None
        self.workdir = tempfile.mkdtemp(prefix="tracekit-warm-")

    def _start(self) -> subprocess.Popen:
        command = [*_bwrap_command(self.interp, self.options.limits, self.readable,
                                   self.workdir if self.writable else None),
                   *child_command(self.interp, _INSIDE), "--serve",
                   *(["--pytest"] if self.pytest else [])]
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True,
                                env=_child_environment("/tmp", 0), cwd=self.workdir)

    def trace(self, source: str, call: str | None = None, entry: str | None = None,
              filename: str = "<tracekit>", module: str | None = None,
              sys_path: tuple[str, ...] = (), directory: str | None = None) -> Trace:
        """As run_trace; `sys_path` and `directory` must be among the sandbox's `readable`."""
        limits = self.options.limits
        request = {**_request(source, call, entry, filename, self.options), "module": module,
                   "sys_path": list(sys_path), "cwd": directory}
        failed = Trace(context=normalize_newlines(source), entry=entry, call=call)
        run = self._run(request)
        outcome = run if isinstance(run, _Outcome) else _outcome(run, request, limits)
        return _finish(outcome, failed, self.interp, "bwrap")

    def lines(self, make_request: Callable[[str | None], dict],
              options: TraceOptions | None = None) -> tuple[list[dict], dict, str, str]:
        """`run_lines` in this sandbox (`options`: this request's, else the sandbox's); the
        writable `workdir` is at WORK_INSIDE."""
        options = options or self.options
        request = _lines_request(make_request(WORK_INSIDE if self.writable else None), options)
        return _lines_of(self._run(request, options.limits), request, options.limits)

    def _run(self, request: dict, limits: Limits | None = None) -> _ChildEnd | _Outcome:
        """Have the worker run `request` in a fresh child: what `_spawn` returns."""
        limits = limits or self.options.limits
        request = {**request, "max_output_bytes": limits.max_output_bytes,
                   "capture_bytes": limits.capture_bytes, "grace": _GRACE_SECONDS}
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        reply = self._ask(request, limits.timeout + _GRACE_SECONDS + constants.REPORT_GRACE
                          + (60 if self.pytest else 10))
        if reply is None:  # the worker died (the program killed it) or hung: a new one next
            self.close()
            return _Outcome(None, "crashed", "the program killed its sandbox", "", "")
        return _ChildEnd(raw=reply["result"].encode(), cut_off=reply["cut_off"],
                         timed_out=reply["timed_out"], code=reply["code"],
                         elapsed=reply["elapsed"], stdout=reply["stdout"],
                         stderr=reply["stderr"])

    def _ask(self, request: dict, timeout: float) -> dict | None:
        import select

        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        try:
            return json.loads(line) if line else None
        except ValueError:
            return None

    def close(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.proc = None

    def __enter__(self) -> WarmSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _rlimits(limits: Limits) -> dict[str, list[int]]:
    cpu = limits.cpu_seconds or max(1, int(limits.timeout + 0.999))
    return {
        "RLIMIT_AS": [limits.memory_mb << 20] * 2,
        "RLIMIT_CPU": [cpu, cpu + 2],  # SIGXCPU at the soft limit reports; SIGKILL at the hard one
        "RLIMIT_FSIZE": [limits.file_size_mb << 20] * 2,
        "RLIMIT_NPROC": [limits.max_processes] * 2,
        "RLIMIT_CORE": [0, 0],
    }


@dataclass
class _Outcome:
    result: dict | None
    status: str
    error: str | None
    stdout: str
    stderr: str


@dataclass(frozen=True, kw_only=True)
class _ChildEnd:
    """How a child process ended, as its pipes and exit status said: what it wrote on the
    result pipe, whether its output was cut off or its time ran out, its exit code, how long it
    ran, and its captured stdout and stderr."""

    raw: bytes
    cut_off: bool
    timed_out: bool
    code: int | None
    elapsed: float
    stdout: str
    stderr: str


def _run_child(command: list[str], request: dict, env: dict, cwd: str, limits: Limits) -> _Outcome:
    run = _spawn(command, request, env, cwd, limits)
    return run if isinstance(run, _Outcome) else _outcome(run, request, limits)


def _spawn(command: list[str], request: dict, env: dict, cwd: str,
           limits: Limits) -> _ChildEnd | _Outcome:
    """Start the child with `request` on stdin and read it to the end or the deadline (an
    _Outcome when the child could not start)."""
    result_read, result_write = os.pipe()
    try:
        proc = subprocess.Popen(
            [*command, str(result_write)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(result_write,), start_new_session=True,
            env=env, cwd=cwd,
        )
    except OSError as exc:
        os.close(result_read)
        os.close(result_write)
        return _Outcome(None, "sandbox_unavailable", f"cannot start {command[0]}: {exc}", "", "")
    os.close(result_write)
    try:
        proc.stdin.write(json.dumps(request).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass
    streams = OutputPump(proc.poll, os.dup(proc.stdout.fileno()),
                                os.dup(proc.stderr.fileno()), result_read,
                                limits.max_output_bytes, limits.capture_bytes)
    started = time.monotonic()
    try:
        streams.pump(started + limits.timeout + _GRACE_SECONDS)
    finally:
        _kill_group(proc)
        streams.close()
        proc.stdout.close()
        proc.stderr.close()
    stdout, stderr = streams.text()
    return _ChildEnd(raw=bytes(streams.result), cut_off=streams.cut_off,
                     timed_out=streams.timed_out, code=proc.returncode,
                     elapsed=time.monotonic() - started, stdout=stdout, stderr=stderr)


def _outcome(end: _ChildEnd, request: dict, limits: Limits) -> _Outcome:
    """What became of a traced process, from what its pipes and exit status said."""
    stdout, stderr = end.stdout, end.stderr
    result = None
    if end.raw:
        try:
            result = json.loads(end.raw)
        except ValueError:
            result = None
    if end.cut_off:
        return _Outcome(result, "output_limit",
                        f"the program wrote more than {limits.max_output_bytes} bytes of output",
                        stdout, stderr)
    if result is not None:
        return _Outcome(result, result["status"], result["error"], stdout, stderr)
    if end.timed_out:
        return _Outcome(None, "timeout", f"wall-clock timeout after {limits.timeout:g}s "
                        "(the process did not respond)", stdout, stderr)
    cpu_limit = request["limits"]["RLIMIT_CPU"][0]
    return _Outcome(None, *_crash_reason(end.code, stderr, end.elapsed >= cpu_limit), stdout,
                    stderr)


def _crash_reason(code: int, stderr: str, past_cpu_limit: bool) -> tuple[str, str]:
    """Status and message for a child that ended without reporting a result."""
    if code > 128:
        code = -(code - 128)  # bwrap reports a child killed by a signal as 128 + signal
    if "MemoryError" in stderr:
        return "memory_limit", "the program ran out of memory (address-space limit)"
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and past_cpu_limit):
        return "timeout", "CPU time limit reached (the program did not respond)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return "crashed", f"the program was killed by signal {name} before the trace finished"
    return "crashed", f"the process exited with code {code} before the trace finished (os._exit?)"


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child and everything it started in its session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
