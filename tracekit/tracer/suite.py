"""The child side of the `tests:` source: `run_request` runs one test file of a project with
pytest in this process (kind "suite"), or one harness program (kind "harness"), and records
the episodes of the project's functions (`tracer.episodes`).

The result pipe gets one JSON line per finished episode as soon as it ends, then a summary
line; a run cut short (timeout, `os._exit`, a kill) keeps the episodes already written. The
summary of a suite: pytest's exit code, the tests' outcomes, collection errors, the episodes
dropped and why, the tests during which the program had replaced the trace function, whether
another tracer (coverage) was active, and which episodes' arguments evaluate back to values
with the same repr (`harness`: the episode numbers).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from .episodes import Collector
from .run import _install_module
from .values import Renderer
from .worker import _apply_rlimits, _flush_and_exit


class _Output:
    """Lines to the result pipe, one writer at a time; `close` ends the process."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = threading.Lock()
        self.episodes = 0

    def line(self, data: dict) -> None:
        payload = memoryview(json.dumps(data).encode() + b"\n")
        with self.lock:
            while payload:
                payload = payload[os.write(self.fd, payload):]

    def episode(self, episode: dict, code=None) -> None:
        self.line({"episode": episode})
        self.episodes += 1

    def close(self, summary: dict) -> None:
        self.lock.acquire()  # held to the end: nothing is written after the summary
        data = memoryview(json.dumps({"summary": summary}).encode() + b"\n")
        while data:
            data = data[os.write(self.fd, data):]
        os.close(self.fd)
        _flush_and_exit()


def run_request(request: dict, result_fd: int) -> None:
    """Run a "suite" or "harness" request and report on `result_fd`; never returns."""
    import random

    _apply_rlimits(request.get("limits", {}))
    sys.stdin = open(os.devnull)
    random.seed(request.get("seed", 0))
    output = _Output(result_fd)
    summary: dict = {"status": "ok", "python": ".".join(map(str, sys.version_info[:3]))}
    timeout = request.get("timeout")
    if timeout:
        def watchdog():
            threading.Event().wait(timeout)
            output.close({**summary, "status": "timeout",
                          "error": f"wall-clock timeout after {timeout:g}s"})

        threading.Thread(target=watchdog, daemon=True).start()
    if hasattr(signal, "SIGXCPU"):
        signal.signal(signal.SIGXCPU, lambda *_: output.close(
            {**summary, "status": "timeout", "error": "CPU time limit reached"}))
    sys.path[:0] = request.get("roots", [])
    collector = Collector(
        request["files"], output.episode,
        Renderer(request.get("max_value_chars"), request["max_repr_chars"],
                 request.get("repr_timeout")),
        per_function=request["per_function"], step_in=request["step_in"],
        max_depth=request.get("max_depth"), seed=request.get("seed", 0),
        max_frames=request.get("max_frames"),
        wanted=tuple(request["wanted"]) if request.get("wanted") else None)
    summary["dropped"] = collector.dropped
    try:
        if request["kind"] == "suite":
            _run_suite(request, collector, summary)
        else:
            _run_harness(request, collector, summary)
    except MemoryError:
        summary.update(status="memory_limit", error="MemoryError: out of memory")
    output.close(summary)


def _run_suite(request: dict, collector: Collector, summary: dict) -> None:
    try:
        import pytest
    except ImportError:
        summary.update(status="no_pytest", error=f"pytest is not installed in {sys.executable}")
        return
    plugin = _Plugin(collector, summary)
    os.chdir(request["project"])
    args = [request["test_file"], "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
            "--rootdir", request["project"]]
    try:
        code = int(pytest.main(args, plugins=[plugin]))
    except Exception as exc:  # noqa: BLE001 - pytest raises some setup errors (a conftest's
        # hook pytest rejects): the suite's error, not a crash of the worker
        first = (str(exc).strip().splitlines() or [""])[0]
        summary.update(status="internal_error", exit_code=3,
                       error=f"pytest raised {type(exc).__name__}: {first}"[:500])
        return
    summary["exit_code"] = code
    summary["status"] = {0: "ok", 1: "ok", 2: "collection_error", 3: "internal_error",
                         4: "usage_error", 5: "no_tests"}.get(code, "ok")
    if summary["status"] != "ok" and not summary.get("error"):
        summary["error"] = f"pytest exited with code {code}"


class _Plugin:
    """pytest hooks: each test (setup, call, teardown) is recorded under its node id."""

    def __init__(self, collector: Collector, summary: dict):
        self.collector, self.summary = collector, summary
        self.outcomes = summary.setdefault("tests", {})
        self.replaced = summary.setdefault("tracer_replaced", [])
        self.recorded: list[tuple[str | None, dict, object]] = []
        collector.emit = self._emit(collector.emit)

    def _emit(self, emit):
        def record(episode: dict, code) -> None:
            self.recorded.append((episode["module"], episode["args"], code))
            emit(episode, code)
        return record

    def pytest_runtest_logstart(self, nodeid, location):
        if sys.gettrace() is not None:
            self.summary["other_tracer"] = True  # coverage or the like: restored after each test
        self.collector.start(nodeid)

    def pytest_runtest_logfinish(self, nodeid, location):
        if not self.collector.stop():
            self.replaced.append(nodeid)

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            outcome = report.outcome if report.when == "call" else f"{report.outcome} {report.when}"
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def pytest_collectreport(self, report):
        if report.outcome == "failed" and "error" not in self.summary:
            lines = [line for line in str(report.longrepr).splitlines() if line.strip()]
            errors = [line for line in lines if line.startswith("E ")]
            self.summary["error"] = (errors[-1][1:].strip() if errors else
                                     lines[-1] if lines else "collection failed")[:300]

    def pytest_sessionfinish(self, session, exitstatus):
        """Which episodes can have a harness: the function reachable from its module (the
        expression that names it) and every argument evaluating back."""
        harness = self.summary["harness"] = {}
        for i, (module, args, code) in enumerate(self.recorded):
            path = access_path(module, code)
            if path is not None and _evaluate_back(module, args):
                harness[str(i)] = path


def _run_harness(request: dict, collector: Collector, summary: dict) -> None:
    """Run the harness program as its module and record the wanted function's episode."""
    filename = request["filename"]
    code = compile(request["source"], filename, "exec")
    namespace, _ = _install_module(request["module"], filename, None)
    try:
        exec(code, namespace)
    except BaseException as exc:  # the program's own module-level code
        summary.update(status="setup_error", error=f"{type(exc).__name__}: {exc}")
        return
    collector.start("harness")
    try:
        namespace["main"]()
    except BaseException:
        pass  # the episode records the exception
    finally:
        collector.stop()


def access_path(module: str | None, code) -> str | None:
    """An expression that gives the function of `code` from its module's namespace: its
    qualified name where that leads to it, else the way there through a class's
    staticmethod, classmethod or property, or a decorator's `__wrapped__` (`C.p.fget`,
    `f.__wrapped__`); None when nothing at the module's top reaches it (a closure)."""
    namespace = getattr(sys.modules.get(module or ""), "__dict__", None)
    if namespace is None:
        return None
    qualname = getattr(code, "co_qualname", None)
    if qualname and "<" not in qualname:
        found = namespace.get(qualname.split(".")[0])
        try:
            for part in qualname.split(".")[1:]:
                found = getattr(found, part)
        except BaseException:  # noqa: BLE001 - a descriptor's __get__ may raise
            found = None
        if getattr(found, "__code__", None) is code:
            return qualname
    todo = [(name, value, 0) for name, value in list(namespace.items())]
    seen = set()
    while todo:
        path, value, depth = todo.pop()
        if id(value) in seen or depth > 3:
            continue
        seen.add(id(value))
        try:  # the program's objects: any attribute may be computed, and raise
            if getattr(value, "__code__", None) is code:
                return path
            inner = [("__wrapped__", getattr(value, "__wrapped__", None))]
            if isinstance(value, (staticmethod, classmethod)):
                inner.append(("__func__", value.__func__))
            elif isinstance(value, property):
                inner += [("fget", value.fget), ("fset", value.fset), ("fdel", value.fdel)]
            elif isinstance(value, type) and getattr(value, "__module__", None) == module:
                inner += list(vars(value).items())
        except BaseException:  # noqa: BLE001
            continue
        for name, item in inner:
            if item is not None:
                # a class's staticmethod is reached as C.name, a classmethod's function as
                # C.name.__func__ (C.name is a bound method), a property's as C.name.fget
                step = "" if isinstance(value, staticmethod) else f".{name}"
                todo.append((path + step, item, depth + 1))
    return None


def _evaluate_back(module: str | None, args: dict) -> bool:
    """Whether every argument's text, evaluated in the function's module, gives a value
    rendered as the same text."""
    namespace = getattr(sys.modules.get(module or ""), "__dict__", None)
    if namespace is None:
        return False
    renderer = Renderer(None, 1_000_000, None)
    for text in args.values():
        try:
            if renderer.render(eval(text, dict(namespace))) != text:
                return False
        except BaseException:
            return False
    return True
