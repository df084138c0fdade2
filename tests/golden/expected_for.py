"""Golden traces: which expected file applies to which CPython, and a tool to write new ones.

`expected/NAME.cwm` is the trace under CPython 3.10 (CWM's own); `expected/NAME.py3.Y.cwm`
overrides it from 3.Y on, where the interpreter itself behaves differently (comprehension
inlining on 3.12+, iterator reprs on 3.11+, ...). Expected files are the tracer's own output,
read over against docs/trace-format.md before they are committed, and checked by
`tests/test_golden.py` against an independent settrace record (`snapshot.py`). Write new ones with

    python tests/golden/expected_for.py --python 3.12 [--write NAME ...]

which prints the differences from the file in force and writes only the names given.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

HERE = Path(__file__).parent
PROGRAMS = HERE / "programs"
EXPECTED = HERE / "expected"


def expected_path(name: str, version: str) -> Path:
    """The expected file in force for program `name` under CPython `version` ("3.12.1")."""
    major, minor = (int(x) for x in version.split(".")[:2])
    for m in range(minor, 10, -1):
        override = EXPECTED / f"{name}.py{major}.{m}.cwm"
        if override.exists():
            return override
    return EXPECTED / f"{name}.cwm"


def trace_program(name: str, python: str | None):
    from tracekit.execution.sandbox import TraceOptions, run_trace
    from tracekit.tracer.context import call_from_comment

    path = PROGRAMS / f"{name}.py"
    source = path.read_text()
    return run_trace(source, call_from_comment(source), None, TraceOptions(python=python),
                     filename=path.name)


def main() -> None:
    from tracekit.format.prompts import trace_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="3.10")
    parser.add_argument("--write", nargs="*", default=[], metavar="NAME")
    args = parser.parse_args()
    for path in sorted(PROGRAMS.glob("*.py")):
        name = path.stem
        trace = trace_program(name, args.python)
        text = trace_text(trace)
        current = expected_path(name, trace.python)
        old = current.read_text() if current.exists() else ""
        if old == text:
            continue
        print(f"== {name} ({trace.status}) differs from {current.name}")
        print("".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True))))
        if name in args.write:
            target = EXPECTED / (f"{name}.cwm" if args.python == "3.10"
                                 else f"{name}.py{'.'.join(trace.python.split('.')[:2])}.cwm")
            target.write_text(text)
            print(f"wrote {target}")


if __name__ == "__main__":
    main()
