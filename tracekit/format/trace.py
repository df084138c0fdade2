"""The trace data model: frames, traces, JSON round trip, resolving `".."`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from tracekit.tracer.constants import DOTS

# Every status a trace can end with. A trace is usable for training when its status is in
# COMPLETE_STATUSES: the entry frame ran to its final return event.
STATUSES = {
    "ok": "the entry returned normally",
    "raised": "the entry raised; the trace is complete and ends with the exception",
    "exited": "the entry raised SystemExit (sys.exit); the trace is complete",
    "timeout": "wall-clock or CPU time limit; frames up to that point are kept when possible",
    "memory_limit": "the program ran out of its address-space limit (MemoryError or killed)",
    "output_limit": "the program wrote more stdout/stderr than allowed",
    "frame_limit": "the trace reached the frame cap; frames up to the cap are kept",
    "recursion_limit": "the program hit the recursion limit, where the tracer cannot run: the "
                       "trace stops there (the unwinding frames are missing)",
    "syntax_error": "the program or the --call expression does not parse",
    "no_entry": "no entry function, or the call never entered it",
    "setup_error": "module-level code raised before the call",
    "crashed": "the process died or ended (os._exit, a signal) before reporting",
    "sandbox_unavailable": "the sandbox or the interpreter could not be started",
}
COMPLETE_STATUSES = frozenset({"ok", "raised", "exited"})


@dataclass(slots=True)
class Frame:
    """One CWM frame. `locals` maps names to rendered values or `".."` (call/line frames only);
    `arg` is the rendered return value or exception triple (return/exception frames only)."""

    event: str
    lineno: int | None
    source: str
    locals: dict[str, str] | None = None
    arg: str | None = None
    scope: int = 0
    depth: int = 0
    error: str | None = None  # set on frames parsed from malformed model output


@dataclass
class Trace:
    """A traced program: the context (with marker), what was called, the frames, how it
    ended."""

    context: str
    entry: str | None
    call: str | None
    frames: list[Frame] = field(default_factory=list)
    status: str = "ok"
    error: str | None = None
    return_value: str | None = None
    python: str = ""
    stdout: str = ""
    stderr: str = ""
    sandbox: str = ""

    @property
    def complete(self) -> bool:
        return self.status in COMPLETE_STATUSES

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> Trace:
        frames = [f if type(f) is Frame else Frame(**f) if type(f) is dict
                  else Frame(*f)  # the tracer's compact form: the first seven fields in order
                  for f in data.get("frames", [])]
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "frames"}
        return cls(frames=frames, **fields)

    @classmethod
    def from_json(cls, text: str) -> Trace:
        return cls.from_dict(json.loads(text))


def resolve_dots(frames: list[Frame]) -> list[dict[str, str] | None]:
    """Full locals for every frame: each `".."` replaced by the value it stands for.

    A `".."` repeats the value of the previous locals frame of the same scope, with no frame of
    another scope in between (spec section 5). The walk back stops at a scope change and at a
    return frame, so frames parsed from model output (which carry no scope ids) resolve the same
    way. Frames without locals give None. A `".."` with nothing to refer to stays `".."`.
    """
    resolver = DotsResolver()
    return [resolver.add(frame) for frame in frames]


class DotsResolver:
    """`resolve_dots` one frame at a time; `peek` resolves a frame as if it came next without
    taking it (how a prediction made after real frames is read)."""

    def __init__(self) -> None:
        self.previous: dict[str, str] | None = None  # full locals of the last locals frame
        self.last: Frame | None = None

    def _baseline(self, frame: Frame) -> dict[str, str] | None:
        last = self.last
        if last is None or frame.scope != last.scope or last.event == "return":
            return None
        return self.previous

    def peek(self, frame: Frame) -> dict[str, str] | None:
        if frame.locals is None:
            return None
        previous = self._baseline(frame)
        if previous is None:
            return dict(frame.locals)
        return {name: previous.get(name, value) if value == DOTS else value
                for name, value in frame.locals.items()}

    def add(self, frame: Frame) -> dict[str, str] | None:
        full = self.peek(frame)
        if self._baseline(frame) is None:
            self.previous = None
        if full is not None:
            self.previous = full
        self.last = frame
        return full
