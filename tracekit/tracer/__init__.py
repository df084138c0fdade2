"""CWM-format execution tracer: a `sys.settrace` recorder, stdlib-only, CPython 3.10+.

This package runs inside the traced program's interpreter (see `tracekit.execution.sandbox`),
so it imports nothing outside the standard library and uses no syntax newer than 3.10. It can
also be used in-process (`trace_source`), which is what the benchmarks do.

What it records follows `docs/trace-format.md` sections 1-5:

- events are CPython's own `call` / `line` / `return` / `exception`, restricted to code compiled
  from the context, from the entry function's first `call` to that frame's final `return`;
- values are `repr(v)` with every `` at 0x<hex>`` removed; locals keep `f_locals` insertion order
  (3.10 semantics, emulated on 3.13+ where `f_locals` became a proxy);
- in a `line` frame a value equal to the previous locals frame of the same Python frame becomes
  `".."`, unless a frame of another scope was emitted in between (the context-switch reset).

Placeholders the tracer writes instead of a value (all start with ``<tracekit:``):

- ``<tracekit: repr raised TYPE>``: the value's ``__repr__`` raised TYPE;
- ``<tracekit: repr timed out>``: the ``__repr__`` ran longer than ``repr_timeout`` seconds
  (a frame's values are first rendered in one pass under one budget; if that pass fails or
  runs out of time, each value is rendered again alone, under a budget of its own, so a
  ``__repr__`` with side effects may run twice in that case);
- ``<tracekit: repr too large: N chars>``: the repr was longer than ``max_repr_chars``;
- ``...<tracekit: N more chars>``: appended to a value cut at ``max_value_chars`` (off by
  default, as in CWM's data).
"""
