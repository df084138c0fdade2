"""Rendering values as the trace shows them: `repr` with addresses removed, under a time
budget per frame (a watchdog's SIGALRM) and a size cap, placeholders where a repr fails."""

from __future__ import annotations

import re
import signal
import sys
import threading

from .constants import (
    DEFAULT_MAX_REPR_CHARS,
    DEFAULT_REPR_TIMEOUT,
    RAISED_PLACEHOLDER,
    TIMEOUT_PLACEHOLDER,
    TOO_LARGE_PLACEHOLDER,
    TRUNCATED_MARKER,
)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# Types whose repr runs no user code, so no time budget is needed.
_PLAIN_TYPES = frozenset({int, float, str, bool, type(None), bytes, complex})


class _ReprTimeout(BaseException):
    pass




class _ReprWatchdog:
    """Interrupts the main thread when one rendering pass runs longer than its budget.

    A daemon thread samples which pass is in progress a few times per budget; when the same
    one is still running after the budget, it sends SIGALRM to the main thread, whose handler
    raises inside the repr. The main thread pays two attribute writes per pass, no syscalls.
    If the program installs its own SIGALRM handler, the budget is off (the wall-clock
    timeout still ends the program).
    """

    _instance = None
    # The tracer's own code objects (the recorder fills them in once it is defined): an alarm
    # that lands there is ignored.
    tracer_codes: frozenset = frozenset()

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
                and frame is not None and frame.f_code not in self.tracer_codes):
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
            short = len(text) <= self.threshold and " at 0x" not in text
            return text if short else self.finish(text)
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


