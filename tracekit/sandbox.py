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
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tracekit import tracer
from tracekit.trace import Trace

TRACER_PATH = Path(tracer.__file__).resolve()
SANDBOX_MODES = ("auto", "bwrap", "none")
_INSIDE_TRACER = "/tmp/.tracekit/tracer.py"
_GRACE_SECONDS = 1.0  # the child reports its own timeout first; the host kills after this


class SandboxWarning(UserWarning):
    """Shown once when tracing runs without bubblewrap."""


class SandboxUnavailable(Exception):
    """The interpreter or the sandbox cannot be started; the message says how to fix it."""


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


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str
    prefixes: tuple[str, ...]  # directories the interpreter needs to see inside the sandbox


# ---------------------------------------------------------------------------------------------
# Interpreters


def find_python(spec: str | None = None) -> Interpreter:
    """Resolve `--python`: None (this interpreter), a version like "3.10", or a path."""
    if spec is None:
        path = sys.executable
    elif re.fullmatch(r"3\.\d+(\.\d+)?", spec):
        path = _find_version(spec)
    else:
        path = shutil.which(spec) or spec
        if not os.path.exists(path):
            raise SandboxUnavailable(f"python {spec!r} not found: give a version like 3.10 or a path")
    return _describe(os.path.abspath(path))


def _find_version(version: str) -> str:
    major_minor = ".".join(version.split(".")[:2])
    for candidate in _pyenv_versions():
        if candidate.name == version or (
            candidate.name.startswith(major_minor + ".") and version == major_minor
        ):
            python = candidate / "bin" / "python"
            if python.exists():
                return str(python)
    found = shutil.which(f"python{major_minor}")
    if found and (version == major_minor or _describe(found).version == version):
        return found
    raise SandboxUnavailable(
        f"python {version} not found on PATH or under $(pyenv root)/versions: install it "
        "or pass --python PATH"
    )


def _pyenv_versions() -> list[Path]:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not root.is_dir():
        return []

    def key(p: Path):
        return tuple(int(x) if x.isdigit() else 0 for x in p.name.split("."))
    return sorted((p for p in root.iterdir() if p.is_dir()), key=key, reverse=True)


@functools.lru_cache(maxsize=None)
def _describe(path: str) -> Interpreter:
    probe = ("import sys, json; print(json.dumps([sys.version_info[:3], sys.prefix, "
             "sys.base_prefix, sys.exec_prefix]))")
    try:
        out = subprocess.run([path, "-c", probe], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        version, *prefixes = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxUnavailable(f"cannot run python at {path}: {exc}") from None
    if tuple(version[:2]) < (3, 10):
        raise SandboxUnavailable(f"{path} is Python {'.'.join(map(str, version))}: "
                                 "the tracer needs CPython 3.10 or newer")
    real = os.path.dirname(os.path.dirname(os.path.realpath(path)))
    dirs = tuple(dict.fromkeys([*prefixes, real, os.path.dirname(path)]))
    return Interpreter(path, ".".join(map(str, version)), dirs)


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


def _bwrap_command(interp: Interpreter, limits: Limits) -> list[str]:
    args = [shutil.which("bwrap"), *_bwrap_base(limits.tmp_size_mb)]
    hidden = [a for i, a in enumerate(args) if i and args[i - 1] == "--tmpfs"]
    for prefix in interp.prefixes:  # an interpreter under /tmp or a home comes back read-only
        if any(prefix == h or prefix.startswith(h.rstrip("/") + "/") for h in hidden):
            args += ["--ro-bind", prefix, prefix]
    args += ["--ro-bind", str(TRACER_PATH), _INSIDE_TRACER, "--chdir", "/tmp"]
    return args


def _resolve_mode(sandbox: str) -> str:
    if sandbox not in SANDBOX_MODES:
        raise SandboxUnavailable(f"unknown sandbox {sandbox!r}: use one of {', '.join(SANDBOX_MODES)}")
    if sandbox == "none":
        return "rlimits"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap"
    if sandbox == "bwrap":
        raise SandboxUnavailable(f"{problem}; or pass --sandbox none for rlimits only")
    warnings.warn(f"network and filesystem isolation are OFF ({problem}); programs run with "
                  "rlimits only", SandboxWarning, stacklevel=3)
    return "rlimits"


# ---------------------------------------------------------------------------------------------
# Running one trace


def run_trace(
    source: str,
    call: str | None = None,
    entry: str | None = None,
    *,
    filename: str = "<tracekit>",
    python: str | None = None,
    limits: Limits = Limits(),
    max_frames: int | None = tracer.DEFAULT_MAX_FRAMES,
    max_value_chars: int | None = None,
    max_repr_chars: int = tracer.DEFAULT_MAX_REPR_CHARS,
    repr_timeout: float | None = tracer.DEFAULT_REPR_TIMEOUT,
    seed: int = 0,
    sandbox: str = "auto",
) -> Trace:
    """Trace one program in a fresh sandboxed child process. Never raises for a bad program:
    every outcome is a Trace whose `status` is one of `tracekit.trace.STATUSES`."""
    request = {
        "source": source, "call": call, "entry": entry, "filename": filename, "seed": seed,
        "max_frames": max_frames, "max_value_chars": max_value_chars,
        "max_repr_chars": max_repr_chars, "repr_timeout": repr_timeout,
        "timeout": limits.timeout, "limits": _rlimits(limits),
    }
    failed = Trace(context=tracer.normalize_newlines(source), entry=entry, call=call)
    try:
        interp = find_python(python)
        mode = _resolve_mode(sandbox)
    except SandboxUnavailable as exc:
        failed.status, failed.error = "sandbox_unavailable", str(exc)
        return failed
    failed.python, failed.sandbox = interp.version, mode

    with tempfile.TemporaryDirectory(prefix="tracekit-") as workdir:
        if mode == "bwrap":
            command = [*_bwrap_command(interp, limits), interp.path, "-s", "-B", _INSIDE_TRACER]
            cwd, tmp = workdir, "/tmp"
        else:
            command = [interp.path, "-s", "-B", str(TRACER_PATH)]
            cwd = tmp = workdir
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp,
               "LANG": "C.UTF-8", "PYTHONHASHSEED": str(seed), "PYTHONIOENCODING": "utf-8",
               "PYTHONDONTWRITEBYTECODE": "1"}
        outcome = _run_child(command, request, env, cwd, limits)

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


def _run_child(command: list[str], request: dict, env: dict, cwd: str, limits: Limits) -> _Outcome:
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
    streams = _Streams(proc, result_read, limits)
    started = time.monotonic()
    try:
        streams.pump(started + limits.timeout + _GRACE_SECONDS)
    finally:
        _kill_group(proc)
        streams.close()
    elapsed = time.monotonic() - started
    stdout, stderr = streams.text()
    raw = bytes(streams.result)
    result = None
    if raw:
        try:
            result = json.loads(raw)
        except ValueError:
            result = None
    if streams.cut_off:
        return _Outcome(result, "output_limit",
                        f"the program wrote more than {limits.max_output_bytes} bytes of output",
                        stdout, stderr)
    if result is not None:
        return _Outcome(result, result["status"], result["error"], stdout, stderr)
    if streams.timed_out:
        return _Outcome(None, "timeout", f"wall-clock timeout after {limits.timeout:g}s "
                        "(the process did not respond)", stdout, stderr)
    cpu_limit = request["limits"]["RLIMIT_CPU"][0]
    return _Outcome(None, *_crash_reason(proc.returncode, stderr, elapsed >= cpu_limit),
                    stdout, stderr)


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


class _Streams:
    """Reads the child's stdout, stderr and result pipe together, with caps and a deadline."""

    def __init__(self, proc: subprocess.Popen, result_fd: int, limits: Limits):
        self.proc, self.limits = proc, limits
        self.selector = selectors.DefaultSelector()
        self.captured = {"stdout": bytearray(), "stderr": bytearray()}
        self.result = bytearray()
        self.total_output = 0
        self.cut_off = self.timed_out = False
        self.result_fd = result_fd
        self.selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        self.selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        self.selector.register(result_fd, selectors.EVENT_READ, "result")
        self.result_done = False

    def pump(self, deadline: float) -> None:
        exited_at = None
        while self.selector.get_map():
            now = time.monotonic()
            if now > deadline:
                self.timed_out = True
                return
            if self.proc.poll() is not None:
                # The child is gone; its own children may hold stdout open: drain briefly.
                exited_at = exited_at or now
                if self.result_done or now - exited_at > 0.2:
                    self._drain_ready(0)
                    return
            for key, _ in self.selector.select(timeout=min(0.05, max(0.0, deadline - now))):
                if self._read(key):
                    return

    def _drain_ready(self, timeout: float) -> None:
        """Read whatever is already buffered in the pipes (their writers may never close them:
        the program's own children inherit them)."""
        while self.selector.get_map():
            ready = self.selector.select(timeout=timeout)
            if not ready:
                return
            for key, _ in ready:
                if self._read(key):
                    return

    def _read(self, key) -> bool:
        """Read one chunk; True when the output limit was crossed."""
        fd = key.fd
        try:
            chunk = os.read(fd, 1 << 16)
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
        room = self.limits.capture_bytes - len(buffer)
        if room > 0:
            buffer += chunk[:room]
        if self.total_output > self.limits.max_output_bytes:
            self.cut_off = True
            return True
        return False

    def text(self) -> tuple[str, str]:
        def decode(name: str) -> str:
            text = self.captured[name].decode("utf-8", errors="replace")
            return text + "\n[tracekit: output cut]" if len(self.captured[name]) >= self.limits.capture_bytes else text
        return decode("stdout"), decode("stderr")

    def close(self) -> None:
        self.selector.close()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()
        os.close(self.result_fd)
