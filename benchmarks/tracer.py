"""Tracer speed on the 800 CRUXEval programs: tracekit vs a minimal settrace loop vs PySnooper.

All three run in this process, on the same interpreter, over the same programs, interleaved
program by program (in an order that rotates), for several rounds. Printed: the median
round in microseconds per trace event (events counted by the minimal loop: call, line, return
and exception events of the program's code), and the ratio to the minimal loop as the median
of each round's ratio, with their range.

    python benchmarks/tracer.py [--data data/cruxeval/cruxeval.jsonl] [--rounds 5]

(a) minimal: `sys.settrace` that records (event, line, {name: repr(value)}) per event;
(b) PySnooper: `pysnooper.snoop(depth=...)` on the entry, writing to memory;
(c) tracekit: the recorder with full CWM semantics (addresses stripped, ".." rule, scopes,
    source lines, repr time/size budget): a finished list of frames;
(d) the same, turned into a Trace and rendered as CWM wire text.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tracekit.format.prompts import trace_text  # noqa: E402
from tracekit.format.trace import Trace  # noqa: E402
from tracekit.tracer.context import _entry_code, prepare_context  # noqa: E402
from tracekit.tracer.recorder import Recorder  # noqa: E402
from tracekit.tracer.values import Renderer  # noqa: E402

FILENAME = "<cruxeval>"
HARNESS = "\ndef main():  # << START_OF_TRACE\n    return f({})\n"


def load_programs(path: Path) -> list[dict]:
    programs = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        source = row["code"] + HARNESS.format(row["input"])
        context, _, def_lineno = prepare_context(source)
        import ast

        code = compile(context, FILENAME, "exec")
        programs.append({"id": row["id"], "context": context, "code": code,
                         "entry_code": _entry_code(code, ast.parse(context), def_lineno)})
    return programs


def fresh_namespace(program: dict) -> dict:
    namespace = {"__name__": "__main__"}
    exec(program["code"], namespace)
    return namespace


def run_traced(namespace: dict, trace_function) -> None:
    """Call the program's main() under `trace_function`; the program's own errors are fine."""
    sys.settrace(trace_function)
    try:
        namespace["main"]()
    except Exception:
        pass
    finally:
        sys.settrace(None)


def run_minimal(program: dict, namespace: dict) -> int:
    events = []

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != FILENAME:
            return None
        events.append((event, frame.f_lineno, {k: repr(v) for k, v in frame.f_locals.items()}))
        return tracer

    run_traced(namespace, tracer)
    return len(events)


def run_pysnooper(program: dict, namespace: dict) -> int:
    import pysnooper

    sink = io.StringIO()
    snooped = pysnooper.snoop(output=sink, depth=20, color=False)(namespace["main"])
    try:
        snooped()
    except Exception:
        pass
    return sink.tell()


def record(program: dict, namespace: dict) -> Recorder:
    recorder = Recorder(FILENAME, program["context"], program["entry_code"], Renderer(),
                        max_frames=None)
    run_traced(namespace, recorder.global_trace)
    return recorder


def run_tracekit(program: dict, namespace: dict) -> int:
    return len(record(program, namespace).frames)


def run_tracekit_text(program: dict, namespace: dict) -> int:
    trace = Trace.from_dict({"context": program["context"], "entry": "main", "call": "main()",
                             "frames": record(program, namespace).frames})
    return len(trace_text(trace))


TRACERS = {
    "minimal settrace loop": run_minimal,
    "PySnooper": run_pysnooper,
    "tracekit": run_tracekit,
    "tracekit + CWM wire text": run_tracekit_text,
}


def time_round(programs: list[dict], runners: dict) -> dict[str, float]:
    """Seconds per tracer over all programs, the tracers interleaved program by program, in an
    order that rotates from program to program (so that a slower moment of the machine, and
    the caches the previous tracer left, fall on all of them alike)."""
    totals = dict.fromkeys(runners, 0.0)
    order = list(runners.items())
    for i, program in enumerate(programs):
        for name, runner in order[i % len(order):] + order[:i % len(order)]:
            namespace = fresh_namespace(program)
            start = time.perf_counter()
            runner(program, namespace)
            totals[name] += time.perf_counter() - start
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data/cruxeval/cruxeval.jsonl")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=[*TRACERS, "none"],
                        help="run one tracer once over all programs, untimed (for valgrind "
                             "--tool=callgrind: compare its instruction count with 'none')")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no data at {args.data}: pass --data PATH to cruxeval.jsonl")
    try:
        import pysnooper  # noqa: F401
    except ImportError:
        sys.exit("PySnooper is not installed: pip install pysnooper (it is in the dev extra)")

    programs = load_programs(args.data)
    if args.only is not None:  # one tracer, one pass, no timing: for instruction counters
        for program in programs:
            if args.only != "none":
                TRACERS[args.only](program, fresh_namespace(program))
            else:
                fresh_namespace(program)
        return
    events = sum(run_minimal(p, fresh_namespace(p)) for p in programs)
    frames = sum(run_tracekit(p, fresh_namespace(p)) for p in programs)
    assert frames == events, f"tracekit recorded {frames} frames for {events} events"
    time_round(programs[:50], TRACERS)  # warm up
    rounds: dict[str, list[float]] = {name: [] for name in TRACERS}
    for _ in range(args.rounds):
        for name, seconds in time_round(programs, TRACERS).items():
            rounds[name].append(seconds)

    per_event = {name: statistics.median(t) / events * 1e6 for name, t in rounds.items()}
    # A tracer's ratio to the minimal loop is taken round by round (the two ran interleaved,
    # under the same machine load), then the median of those: a slow moment of the VM falls on
    # both sides of each ratio, where two independent medians can come from different rounds.
    minimal = rounds["minimal settrace loop"]
    ratios = {name: sorted(t / m for t, m in zip(times, minimal)) for name, times in rounds.items()}
    print(f"{len(programs)} CRUXEval programs, {events} events, median of {args.rounds} rounds; "
          f"Python {platform.python_version()} on {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'tracer':28s} {'us/event':>9s} {'vs minimal':>11s}  {'rounds range':>13s}")
    for name, us in per_event.items():
        low, high = ratios[name][0], ratios[name][-1]
        print(f"{name:28s} {us:9.2f} {statistics.median(ratios[name]):10.2f}x  "
              f"{low:5.2f}-{high:.2f}x")
    faster = per_event["PySnooper"] / per_event["tracekit"]
    print(f"tracekit is {faster:.1f}x faster than PySnooper")


if __name__ == "__main__":
    main()
