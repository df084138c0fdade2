"""The child side of the sandbox. `main(["", RESULT_FD])` traces one request read as JSON from
stdin and writes the result to RESULT_FD (a test file's episodes for the kinds "suite" and
"harness": `tracer.suite`); `main(["", "--serve"])` is the warm worker. The
sandbox starts it with `tracekit.execution.sandbox.child_command`: the package's parent directory on
sys.path, the package imported as `tracer`, so nothing but the standard library is needed."""

from __future__ import annotations

import json
import mmap
import os
import signal
import sys
import threading

from .constants import DEFAULT_MAX_FRAMES, DEFAULT_MAX_REPR_CHARS, DEFAULT_REPR_TIMEOUT
from .context import normalize_newlines
from .pump import OutputPump
from .run import trace_source


def main(argv: list[str]) -> None:
    if argv[1:2] == ["--serve"]:
        _serve_main(pytest="--pytest" in argv)
        return
    result_fd = int(argv[1])
    request = json.loads(sys.stdin.read())
    _run_request(request, result_fd)


def _run_request(request: dict, result_fd: int) -> None:
    """Trace one request in this process and write the result to `result_fd`; never returns.
    A test file's run or a harness (kinds "suite", "harness") goes to `tracer.suite`."""
    import random

    if request.get("kind") in ("suite", "harness"):
        from .suite import run_request

        run_request(request, result_fd)

    _apply_rlimits(request.get("limits", {}))
    sys.stdin = open(os.devnull)
    random.seed(request.get("seed", 0))
    filename = request.get("filename", "<tracekit>")
    sys.argv = [filename]
    reporter = _Reporter(request, result_fd)
    cwd = request.get("cwd")
    if cwd:  # the program's own directory (read-only under bubblewrap)
        try:
            os.chdir(cwd)
        except OSError as exc:
            reporter.write_result({**reporter.base, "status": "setup_error", "frames": [],
                                   "error": f"cannot enter the program's directory {cwd} "
                                            f"({exc.strerror})"})
            _flush_and_exit()
    timeout = request.get("timeout")
    if timeout:
        def watchdog():
            threading.Event().wait(timeout)
            reporter.abort("timeout", f"wall-clock timeout after {timeout:g}s")

        threading.Thread(target=watchdog, daemon=True).start()
    if hasattr(signal, "SIGXCPU"):
        signal.signal(signal.SIGXCPU,
                      lambda *_: reporter.abort("timeout", "CPU time limit reached"))

    try:
        result = trace_source(
            request["source"], call=request.get("call"), entry=request.get("entry"),
            filename=filename,
            max_frames=request.get("max_frames", DEFAULT_MAX_FRAMES),
            max_value_chars=request.get("max_value_chars"),
            max_repr_chars=request.get("max_repr_chars", DEFAULT_MAX_REPR_CHARS),
            repr_timeout=request.get("repr_timeout", DEFAULT_REPR_TIMEOUT),
            on_limit=reporter.abort, on_start=reporter.on_start,
            module=request.get("module"), sys_path=request.get("sys_path"),
        )
    except MemoryError:
        reporter.abort("memory_limit", "MemoryError: out of memory (address-space limit)")
        return
    reporter.write_result(result)
    _flush_and_exit()


class _Reporter:
    """The one writer of a run's result, whoever reports first: the run's end, a limit the
    tracer meets, the watchdog or SIGXCPU. What is known of the run (the request's entry and
    call, the prepared ones once it starts) is kept for a report that comes mid-run."""

    def __init__(self, request: dict, result_fd: int):
        self.result_fd = result_fd
        self.lock = threading.Lock()
        # Address space (RLIMIT_AS) held back, given back to report a MemoryError: a mapping
        # never touched, so it costs no page faults (a bytearray would write 4 MiB per program).
        self.reserve = [mmap.mmap(-1, 4 << 20)]
        self.running = {"recorder": None, "context": normalize_newlines(request["source"]),
                        "entry": request.get("entry"), "call": request.get("call")}
        self.base = {"context": self.running["context"], "entry": self.running["entry"],
                     "call": self.running["call"],
                     "python": ".".join(map(str, sys.version_info[:3])), "return_value": None}

    def write_result(self, result: dict, locked: bool = False) -> None:
        if not locked:
            self.lock.acquire()  # a second reporter waits here until the first ends the process
        data = memoryview(json.dumps(result).encode())
        while data:
            data = data[os.write(self.result_fd, data):]
        os.close(self.result_fd)

    def on_start(self, recorder, context, entry, call) -> None:
        self.running.update(recorder=recorder, context=context, entry=entry, call=call)

    def abort(self, status: str, message: str) -> None:
        """Report what was traced so far and end the process at once."""
        self.lock.acquire()  # a second reporter waits here until the first ends the process
        while self.reserve:
            self.reserve.pop().close()
        try:  # a first byte (JSON allows leading blanks): the reader then allows REPORT_GRACE
            os.write(self.result_fd, b" ")
        except OSError:
            pass
        sys.settrace(None)
        recorder = self.running["recorder"]
        if recorder is not None:
            # the main thread stops recording (abort may run elsewhere), and waits if so
            recorder.park = threading.current_thread() is not threading.main_thread()
            recorder.done = True
        frames = list(recorder.frames) if recorder else []
        running = self.running
        self.write_result({**self.base, "context": running["context"], "status": status,
                           "entry": running["entry"], "call": running["call"], "error": message,
                           "frames": frames}, locked=True)
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


# ---------------------------------------------------------------------------------------------
# Warm worker mode: `main(["", "--serve"])`, inside bubblewrap only. One request per stdin
# line, each traced in a child forked from this clean process; one reply per stdout line. Between
# programs it kills every other process of the sandbox's PID namespace and removes what appeared
# in /tmp, so programs cannot reach their neighbours.


def _serve_main(pytest: bool = False) -> None:
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    quiet = os.open(os.devnull, os.O_RDWR)
    os.dup2(quiet, 1)
    os.close(quiet)
    _warm_up(pytest)
    baseline = _tmp_paths()
    for line in sys.stdin.buffer:
        reply = _serve_one(json.loads(line), protocol.fileno(), baseline)
        protocol.write(json.dumps(reply).encode() + b"\n")


def _warm_up(pytest: bool = False) -> None:
    """Do here, once, what every forked child would do again: import the modules a child
    uses (with `pytest`, pytest and the plugins it would load: a test file's run then starts
    in a fraction of the time), run the tracer so its bytecode is specialized, then freeze
    every object out of the garbage collector's reach. A child then writes to few of the
    pages it shares with this process (each first write copies a page)."""
    import gc
    import random  # noqa: F401 - imported for the children
    import resource  # noqa: F401
    import selectors  # noqa: F401
    import shutil  # noqa: F401
    import time  # noqa: F401

    from .suite import run_request  # noqa: F401 - imported for the children

    if pytest:
        _import_pytest_and_plugins()

    trace_source("def f(xs):  # << START_OF_TRACE\n    return [x for x in xs]\n", call="f('ab')")
    gc.collect()
    gc.freeze()


def _import_pytest_and_plugins() -> None:
    """Start pytest once on an empty directory, so that pytest and what its plugins import
    when a session starts (hypothesis's takes most of a second) are imported here, once;
    a child then starts a session in a fraction of the time. Whatever fails here fails again
    in the child, where it is reported."""
    import tempfile

    try:
        import pytest

        with tempfile.TemporaryDirectory() as empty:
            pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", empty])
    except BaseException:  # noqa: BLE001 - no pytest, or a plugin that breaks: said later
        pass


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
