"""Named points where a test may SIGKILL the running process, to prove that a kill there
loses no finished work on any machine (a kill chosen by the clock lands wherever the machine's
speed puts it). `TRACEKIT_KILL_AT=NAME` makes the process kill itself with SIGKILL when it
reaches `kill_point(NAME)`; unset, a kill point costs one dictionary lookup."""

from __future__ import annotations

import os
import signal

ENV = "TRACEKIT_KILL_AT"


def kill_point(name: str) -> None:
    """SIGKILL this process if TRACEKIT_KILL_AT names this point (as `kill -9` would)."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
