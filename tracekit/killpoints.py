"""Named points where a test may SIGKILL the running process, to prove that a kill there
loses no finished work on any machine (a kill chosen by the clock lands wherever the machine's
speed puts it). `TRACEKIT_KILL_AT=NAME` makes the process kill itself with SIGKILL when it
reaches `kill_point(NAME)` (or interrupts it as Ctrl-C would); unset, a kill point costs one
dictionary lookup."""

from __future__ import annotations

import os
import signal

ENV = "TRACEKIT_KILL_AT"
SIGNAL_ENV = "TRACEKIT_KILL_SIGNAL"  # INT: Ctrl-C instead, to the process's whole group


def kill_point(name: str) -> None:
    """SIGKILL this process if TRACEKIT_KILL_AT names this point (as `kill -9` would); with
    TRACEKIT_KILL_SIGNAL=INT, send SIGINT to its process group, as Ctrl-C at a terminal does
    (start the process in a session of its own)."""
    if os.environ.get(ENV) == name:
        if os.environ.get(SIGNAL_ENV) == "INT":
            os.killpg(os.getpgrp(), signal.SIGINT)
        else:
            os.kill(os.getpid(), signal.SIGKILL)
