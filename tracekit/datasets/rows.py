"""A dataset row, with one schema: its fields (`DatasetRow`), the Parquet schema made from them,
and the two conversions, a traced program into a row (`trace_row`) and a row read back into a
Trace (`row_trace`). A row read from Parquet is a dict with these fields, less `hash`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from tracekit.format.trace import Frame, Trace
from tracekit.programs.sources import Program


@dataclass(kw_only=True)
class DatasetRow:
    id: str
    source: str  # the source spec the program came from
    context: str
    call: str | None
    interpreter: str  # the Python version that traced it
    status: str
    error: str | None
    frames: list[dict]  # event, lineno, source, locals (the state's JSON text), arg
    cwm: str  # the wire text, as `tracekit trace --format cwm` writes it
    n_frames: int
    n_tokens: int  # the CWM token ids a model sees
    return_value: str | None
    expected: str | None
    # the tests: source's episodes (None for other rows)
    function: str | None = None
    file: str | None = None
    module: str | None = None
    test: str | None = None
    args: str | None = None  # JSON
    harness: str | None = None  # a program that calls the function standalone
    hash: int  # which split the row goes to (not written)

    def written(self) -> dict:
        """The row as its Parquet file holds it."""
        row = asdict(self)
        del row["hash"]
        return row


def parquet_schema():
    """The Parquet schema of DatasetRow's written fields: text, but for the counts and the
    frames."""
    import pyarrow as pa

    frame = pa.struct([("event", pa.string()), ("lineno", pa.int32()), ("source", pa.string()),
                       ("locals", pa.string()), ("arg", pa.string())])
    types = {"frames": pa.list_(frame), "n_frames": pa.int32(), "n_tokens": pa.int32()}
    return pa.schema([(f.name, types.get(f.name, pa.string())) for f in fields(DatasetRow)
                      if f.name != "hash"])


def trace_row(program: Program, trace: Trace) -> DatasetRow:
    """The row of one traced program; its split follows the program (source, entry, call)."""
    from tracekit.format.cwm import prompt_segments, state_json
    from tracekit.format.tokenizer import cwm_tokenizer, encode_segments

    segments = prompt_segments(trace.context, trace.frames, end=trace.complete)
    key = json.dumps([program.source, program.entry, program.call]).encode()
    return DatasetRow(
        id=program.id, source=program.origin, context=trace.context, call=trace.call,
        interpreter=trace.python, status=trace.status, error=trace.error,
        frames=[{"event": f.event, "lineno": f.lineno, "source": f.source,
                 "locals": state_json(f.locals) if f.locals is not None else None,
                 "arg": f.arg} for f in trace.frames],
        cwm="".join(segments),  # as trace_text writes it
        n_frames=len(trace.frames),
        n_tokens=len(encode_segments(cwm_tokenizer(), segments)),
        return_value=trace.return_value, expected=program.expected,
        hash=int(hashlib.sha256(key).hexdigest()[:8], 16))


def row_trace(row: dict) -> Trace:
    """A dataset row back as a Trace (frames without scope ids, which `resolve_dots` and the
    evaluation do not need)."""
    frames = [Frame(f["event"], f["lineno"], f["source"],
                    json.loads(f["locals"]) if f["locals"] is not None else None, f["arg"])
              for f in row["frames"]]
    return Trace(context=row["context"], entry=None, call=row["call"], frames=frames,
                 status=row["status"], error=row["error"], return_value=row["return_value"],
                 python=row["interpreter"])
