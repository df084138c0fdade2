"""Where a warm sandbox's time per program goes: the worker's loop (`worker._serve_one`: fork a
child, trace, read the result) run in this process, outside bubblewrap and without the
between-program cleaning (which only makes sense inside the sandbox's PID namespace), on
CRUXEval programs; ms per program, median of --repeats.

    python benchmarks/warm_worker.py [--count 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tracekit"))  # as the worker runs it: the package on its own

from tracer import worker  # noqa: E402
from tracer.constants import MARKER  # noqa: E402
from tracer.run import trace_source  # noqa: E402

DEFAULT_DATA = ROOT / "data/cruxeval/cruxeval.jsonl"


def request(source: str) -> dict:
    return {"source": source, "call": None, "entry": None, "filename": "<p>", "seed": 0,
            "max_frames": 10_000, "max_value_chars": None, "max_repr_chars": 100_000,
            "repr_timeout": 1.0, "timeout": 10.0, "limits": {}, "max_output_bytes": 1 << 20,
            "capture_bytes": 1 << 16, "grace": 1.0}


def per_program(sources: list[str], repeats: int) -> float:
    sink = os.open(os.devnull, os.O_WRONLY)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for source in sources:
            reply = worker._serve_one(request(source), sink, set())
            assert reply["code"] == 0, reply
        times.append((time.perf_counter() - start) / len(sources) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: missing; pass --data with a CRUXEval JSONL file")
    rows = [json.loads(line) for line in args.data.open()][:args.count]
    sources = [f"{r['code']}\ndef main():{MARKER}\n    return f({r['input']})\n"
               for r in rows]
    worker._clear_sandbox = lambda baseline: None  # outside a PID namespace: never
    run_request = worker._run_request
    print(f"{len(sources)} CRUXEval programs, ms per program (median of {args.repeats})")
    worker._run_request = lambda req, fd: os._exit(0)
    print(f"  child that exits at once          {per_program(sources, args.repeats):6.2f}")
    worker._run_request = run_request
    print(f"  cold worker (no warm-up)          {per_program(sources, args.repeats):6.2f}")
    worker._warm_up()
    print(f"  warm worker (as in the sandbox)   {per_program(sources, args.repeats):6.2f}")
    start = time.perf_counter()
    for source in sources:
        trace_source(source)
    print(f"  in-process trace_source           "
          f"{(time.perf_counter() - start) / len(sources) * 1000:6.2f}")


if __name__ == "__main__":
    main()
