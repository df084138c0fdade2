"""Dataset build throughput: CRUXEval programs (repeated to --count) traced with full isolation
by `tracekit.datasets.build.build` with 1 and 2 workers, and the in-process tracing rate (no
sandbox, no child process) as the ceiling.

    python benchmarks/dataset.py [--count 5000] [--data data/cruxeval/cruxeval.jsonl]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.datasets.build import BuildOptions, build  # noqa: E402
from tracekit.execution.sandbox import bwrap_problem  # noqa: E402
from tracekit.programs import sources  # noqa: E402
from tracekit.tracer.run import trace_source  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data/cruxeval/cruxeval.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: missing; pass --data with a CRUXEval JSONL file")
    base = list(sources.cruxeval(args.data))
    programs = [replace(base[i % len(base)], id=f"{base[i % len(base)].id}/{i // len(base)}")
                for i in range(args.count)]
    print(f"{platform.node() or 'machine'}: Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; {len(programs)} CRUXEval programs; sandbox: "
          f"{'bwrap' if not bwrap_problem() else 'rlimits only (' + bwrap_problem() + ')'}")
    start = time.perf_counter()
    for program in programs:
        trace_source(program.source, call=program.call)
    ceiling = len(programs) / (time.perf_counter() - start)
    print(f"in-process tracing (ceiling): {ceiling:,.0f} programs/s")
    for workers in (1, 2):
        out = Path(tempfile.mkdtemp(prefix="tracekit-bench-"))
        try:
            start = time.perf_counter()
            # the copies differ only in id: dedup off, or it would keep 800
            stats = build(programs, out / "ds", BuildOptions(dedup=False), workers=workers)
            rate = len(programs) / (time.perf_counter() - start)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(f"build, {workers} worker{'s' if workers > 1 else ''}: {rate:,.1f} programs/s "
              f"({stats['rows']} rows; {stats['statuses']})")


if __name__ == "__main__":
    main()
