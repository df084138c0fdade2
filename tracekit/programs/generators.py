"""What every program generator (synthetic, basic and loops, methods) shares: the CRUXEval
harness that half of their programs are written in, and the loop that draws distinct
programs from a seeded stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tracekit.tracer.constants import MARKER


def entered(lines: list[str], entry: int, call: str, harness: bool) -> tuple[str, str]:
    """A generated program's source and call, its entry marked: with `harness`, as CRUXEval
    runs a program (a `main()` that returns `call`, marked); else the function that starts at
    `lines[entry]`, marked and called as it is. Every generator writes its program here."""
    if harness:
        return "\n".join([*lines, "", f"def main():{MARKER}", f"    return {call}"]) + "\n", \
            "main()"
    marked = [line + MARKER if k == entry else line for k, line in enumerate(lines)]
    return "\n".join(marked) + "\n", call


def distinct(prefix: str, make: Callable[[int], tuple[str, str]],
             count: int) -> Iterator[tuple[str, str, str]]:
    """`count` distinct programs of `make(index)` for index 0, 1, ... (a duplicate is skipped),
    as (id, source, call), the id `PREFIX-INDEX`; fewer only if the stream repeats itself for
    50 programs per one asked for. Every generator draws its programs here."""
    seen: set[tuple[str, str]] = set()
    index = 0
    while len(seen) < count and index < 50 * count:
        program = make(index)
        index += 1
        if program not in seen:
            seen.add(program)
            yield f"{prefix}-{index - 1}", *program
