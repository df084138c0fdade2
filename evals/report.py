"""What an eval writes in OUT: metrics.json, frames.parquet (one row per compared frame),
report.md (`tables`) and report.html (`page`: one self-contained file, inline CSS, plots
embedded as PNG, no script and nothing fetched); and reading runs back to compare them."""

from __future__ import annotations

import json
from pathlib import Path

from tracekit.evals.compare import TraceComparison
from tracekit.evals.metrics import METRICS
from tracekit.evals.page import page
from tracekit.evals.tables import markdown, worst_first


def write_report(out: Path, comparisons: list[TraceComparison], summary: dict,
                 info: dict) -> None:
    """Write every report file into `out`."""
    (out / "metrics.json").write_text(json.dumps({"run": info, **summary}, indent=1),
                                      encoding="utf-8")
    _write_frames(out / "frames.parquet", comparisons)
    ordered = worst_first(comparisons)
    (out / "report.md").write_text(markdown(summary, info, ordered), encoding="utf-8")
    (out / "report.html").write_text(page(summary, info, ordered), encoding="utf-8")


def _write_frames(path: Path, comparisons: list[TraceComparison]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dumps = lambda d: json.dumps(d) if d is not None else None  # noqa: E731
    rows = []
    for c in comparisons:
        for f, a in zip(c.frames, c.aligned):
            pred = f.pred
            rows.append({
                "id": c.id, "mode": c.mode, "step": f.step, "trace_frames": len(c.real),
                "real_event": f.real.event, "real_source": f.real.source,
                "real_state": dumps(f.real.locals), "real_arg": f.real.arg,
                "pred_event": pred.event if pred is not None and pred.error is None else None,
                "pred_source": pred.source if pred is not None else None,
                "pred_state": dumps(pred.locals) if pred is not None else None,
                "pred_arg": pred.arg if pred is not None else None,
                "pred_error": ("no predicted frame" if pred is None else pred.error),
                "event_match": f.event_match, "action_match": f.action_match,
                "state_exact": f.state_exact, "state_match": f.state_match,
                "key_jaccard": f.key_jaccard, "kv_jaccard": f.kv_jaccard,
                "value_match": f.value_match, "match": f.match, "aligned_match": a.match,
                "variables": [{"name": n, "type": t, "changed": ch, "right": r}
                              for n, t, ch, r in f.variables],
            })
    variable = pa.struct([("name", pa.string()), ("type", pa.string()), ("changed", pa.bool_()),
                          ("right", pa.bool_())])
    schema = pa.schema([
        ("id", pa.string()), ("mode", pa.string()), ("step", pa.int32()),
        ("trace_frames", pa.int32()), ("real_event", pa.string()), ("real_source", pa.string()),
        ("real_state", pa.string()), ("real_arg", pa.string()), ("pred_event", pa.string()),
        ("pred_source", pa.string()), ("pred_state", pa.string()), ("pred_arg", pa.string()),
        ("pred_error", pa.string()), ("event_match", pa.bool_()), ("action_match", pa.bool_()),
        ("state_exact", pa.bool_()), ("state_match", pa.bool_()), ("key_jaccard", pa.float64()),
        ("kv_jaccard", pa.float64()), ("value_match", pa.bool_()), ("match", pa.bool_()),
        ("aligned_match", pa.bool_()), ("variables", pa.list_(variable))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def load_metrics(out: Path) -> dict:
    """An eval directory's metrics.json."""
    return json.loads((Path(out) / "metrics.json").read_text(encoding="utf-8"))


def compare_runs(first: dict, second: dict) -> list[tuple[str, str, str, str]]:
    """(metric, run 1, run 2, run 2 - run 1) for the metrics either run has."""
    rows = []
    for metric in METRICS:
        a = first["metrics"].get(metric.key)
        b = second["metrics"].get(metric.key)
        if a is None and b is None:
            continue
        show = lambda m: "" if m is None else f"{m['value']:.1f}"  # noqa: E731
        delta = f"{b['value'] - a['value']:+.1f}" if a is not None and b is not None else ""
        rows.append((metric.label, show(a), show(b), delta))
    return rows


def output_agreement(first: dict, second: dict) -> dict[str, int] | None:
    """Per program (the ids both runs scored): output right in both runs, in the first only,
    in the second only, in neither. None when a run predates per-program outputs."""
    a, b = first.get("output_by_id"), second.get("output_by_id")
    if a is None or b is None:
        return None
    common = [i for i in a if i in b]
    return {"programs": len(common),
            "both": sum(a[i] and b[i] for i in common),
            "first only": sum(a[i] and not b[i] for i in common),
            "second only": sum(b[i] and not a[i] for i in common),
            "neither": sum(not a[i] and not b[i] for i in common)}
