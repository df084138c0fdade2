"""An independent record of a golden program's execution, to check the golden files against.

A plain `sys.settrace` loop that shares no code with tracekit's tracer: from the marked
function's call to its last return (a generator entry returns at every yield), every event of code compiled from the program, with every local
rendered in full (`repr`, addresses removed, as docs/trace-format.md section 4 says) and the
action line as the file has it (CWM's two-space marker removed). Printed as one JSON list;
`tests/test_golden.py` runs it under each interpreter and compares each golden file, its ".."
resolved, to it. Standard library only, CPython 3.10+.

    python tests/golden/snapshot.py PROGRAM.py
"""

from __future__ import annotations

import ast
import json
import re
import sys

ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
MARKER = "# << START_OF_TRACE"


def render(value) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int past 3.11+'s digit limit: printed as 3.10 prints it
        limit = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)
        try:
            text = repr(value)
        finally:
            sys.set_int_max_str_digits(limit)
    except BaseException as exc:  # the placeholder docs/trace-format.md section 4 names
        return f"<tracekit: repr raised {type(exc).__name__}>"
    return ADDRESS.sub("", text)


def snapshot(source: str, call: str | None) -> list[dict]:
    """The records of `call` (default: the marked function with no arguments)."""
    lines = source.split("\n")
    marked = next(i + 1 for i, line in enumerate(lines) if line.rstrip().endswith(MARKER))
    entry = next(node.name for node in ast.walk(ast.parse(source))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.lineno <= marked < node.body[0].lineno)
    call = call or f"{entry}()"
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<golden>", "exec"), namespace)
    records: list[dict] = []
    state = {"entry": None, "last_return": -1}

    def tracer(frame, event, arg):
        if frame.f_code.co_filename != "<golden>":
            return None
        if state["entry"] is None:
            if event != "call" or frame.f_code.co_name != entry:
                return tracer
            state["entry"] = frame
        action = lines[frame.f_lineno - 1].replace("  " + MARKER, "") + "\n"
        record = {"event": event, "source": action, "locals": None, "arg": None}
        if event in ("call", "line"):
            record["locals"] = {name: render(value) for name, value in frame.f_locals.items()}
        elif event == "return":
            record["arg"] = render(arg)
        elif event == "exception":
            record["arg"] = render(arg)
        records.append(record)
        if event == "return" and frame is state["entry"]:
            state["last_return"] = len(records)
        return tracer

    sys.settrace(tracer)
    try:
        eval(call, namespace)
    except BaseException:
        pass
    finally:
        sys.settrace(None)
    # The trace ends at the entry frame's last return: a generator entry returns at each
    # yield and resumes, and only the call's end shows which return was the last.
    return records[:state["last_return"]]


def main() -> None:
    path = sys.argv[1]
    source = open(path, encoding="utf-8").read()
    call = next((line.split(":", 1)[1].strip() for line in source.split("\n")
                 if line.startswith("# tracekit-call:")), None)
    print(json.dumps(snapshot(source, call)))


if __name__ == "__main__":
    main()
