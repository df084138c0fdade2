"""Reading a traced process's stdout, stderr and result pipe together, with an output cap and a
deadline: used by the host for one-shot sandboxes and by the warm worker."""

from __future__ import annotations

import os

from .constants import REPORT_GRACE


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
