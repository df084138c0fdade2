"""The report's tables, as rows of strings, and report.md made of them (the HTML page shows
the same rows)."""

from __future__ import annotations

from pathlib import Path

from tracekit.evals.compare import ANSWERS_ONLY, Mode, TraceComparison
from tracekit.evals.metrics import (
    CWM_TABLE,
    METRICS,
    MORE,
    OUTPUT_MODE_METRICS,
    PUBLISHED_CRUXEVAL,
    REASONING_LABELS,
)

WORST_SHOWN = 20


def metric_rows(summary: dict, metrics, mode: str) -> list[tuple[str, str, str, str, str]]:
    """(label, value, 95% CI, n, published CWM on CRUXEval) per metric the run has."""
    rows = []
    for metric in metrics:
        if mode in ANSWERS_ONLY and metric.key not in OUTPUT_MODE_METRICS:
            continue
        found = summary["metrics"].get(metric.key)
        if found is None:
            continue
        published = PUBLISHED_CRUXEVAL.get(metric.key) if mode == Mode.ROLLOUT else None
        label = REASONING_LABELS.get(metric.key, metric.label) if mode == Mode.REASONING else \
            metric.label
        rows.append((label, f"{found['value']:.1f}",
                     f"{found['low']:.1f}–{found['high']:.1f}", str(found["n"]),
                     f"{published:.1f}" if published is not None else ""))
    return rows


def breakdowns(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for each breakdown table."""
    tables = []
    for key, title, unit in (
            ("by_value_type", "Changed values right, by the real value's type", "values"),
            ("by_output_type", "Output pass@1, by the real return value's type", "traces"),
            ("by_event", "Frame match by event", "frames")):
        if summary[key]:
            tables.append((title, ["type" if key != "by_event" else "event", "right %",
                                   "95% CI", unit],
                           [[k, f"{v['value']:.1f}", f"{v['low']:.1f}–{v['high']:.1f}",
                             str(v["n"])] for k, v in summary[key].items()]))
    what = summary["divergence"]["what"]
    if what:
        wrong = sum(what.values())
        tables.append(("The first wrong frame of each trace, by what is wrong",
                       ["first wrong", "traces", "% of traces not exact"],
                       [[kind, str(n), f"{100 * n / wrong:.1f}"] for kind, n in what.items()]))
    if summary["by_length"]:
        tables.append(("By trace length (real frames)",
                       ["frames", "traces", "frame match %", "output pass@1 %", "truncated %"],
                       [[r["bucket"], str(r["traces"]), _num(r["frame_match"]),
                         _num(r["output_pass1"]), _num(r["truncated"])]
                        for r in summary["by_length"]]))
    if summary["by_step"]:
        tables.append(("Frame match by step index", ["step", "frames", "frame match %"],
                       [[r["bucket"], str(r["frames"]), _num(r["frame_match"])]
                        for r in summary["by_step"]]))
    return tables


def _num(value) -> str:
    return "" if value is None else f"{value:.1f}"


def worst_first(comparisons: list[TraceComparison]) -> list[TraceComparison]:
    """Programs from the worst: fewest frames right, then earliest divergence."""
    def badness(c: TraceComparison):
        right = sum(f.match for f in c.frames) / len(c.frames) if c.frames else 0.0
        return (c.exact, right, c.first_divergence if c.first_divergence is not None else 1e9)
    return sorted(comparisons, key=badness)


def headline(summary: dict, info: dict) -> list[str]:
    """The two failure modes the CWM study names, said in one line each."""
    metrics, lines = summary["metrics"], []
    truncated = metrics.get("truncated")
    if truncated is not None:
        count = round(truncated["value"] * summary["traces"] / 100)
        lines.append(f"Truncated by the token budget ({info.get('budget_tokens')} tokens): "
                     f"{count} of {summary['traces']} traces ({truncated['value']:.1f}%).")
    typed = summary["by_value_type"]
    overall = metrics.get("micro_values")
    if "str" in typed and overall is not None:
        lines.append(f"String values right: {typed['str']['value']:.1f}% "
                     f"(all changed values: {overall['value']:.1f}%).")
    return lines


def info_line(info: dict, summary: dict) -> str:
    skipped = info.get("skipped") or {}
    problems = info.get("problems") or {}
    parts = [f"dataset {info['dataset']}", f"predictor {info['predictor']}",
             f"mode {info['mode']}", f"{summary['traces']} traces, {summary['frames']} frames"]
    frames_left_out = info.get("skipped_frames") or {}
    incomplete = {k: v for k, v in skipped.items() if k not in frames_left_out}
    if incomplete:
        parts.append("skipped (incomplete real traces): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(incomplete.items())))
    for why, frames in frames_left_out.items():
        parts.append(f"not predicted, {why}: {skipped[why]} traces, {frames} frames")
    if problems:
        parts.append("prediction problems: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(problems.items())))
    return " · ".join(parts)


def markdown(summary: dict, info: dict, ordered: list[TraceComparison]) -> str:
    """report.md; `ordered`: the comparisons worst first (`_worst`)."""
    mode = info["mode"]
    lines = [f"# tracekit eval: {info['predictor']} on {Path(info['dataset']).name}", "",
             info_line(info, summary), ""]
    lines += [f"- {line}" for line in headline(summary, info)]
    published = "CWM 32B, CRUXEval (published)" if mode == Mode.ROLLOUT else ""
    for title, metrics in (("The CWM table (macro-averaged per trace)", CWM_TABLE),
                           ("More metrics", MORE)):
        rows = metric_rows(summary, metrics, mode)
        if rows:
            lines += ["", f"## {title}", ""]
            lines += _md_table(["metric", "value", "95% CI", "n", published],
                               [list(r) for r in rows])
    for title, header, rows in breakdowns(summary):
        lines += ["", f"## {title}", ""] + _md_table(header, rows)
    lines += ["", "## Worst programs", ""]
    lines += _md_table(["id", "frames", "frames right", "first divergence", "output", "truncated"],
                       [worst_row(c) for c in ordered[:WORST_SHOWN]])
    lines += ["", "## Formulas", ""]
    lines += [f"- **{m.label}** ({m.average}): {m.formula}" for m in METRICS]
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return (["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def worst_row(c: TraceComparison) -> list[str]:
    right = sum(f.match for f in c.frames)
    return [c.id, str(len(c.real)), f"{right}/{len(c.frames)}",
            "" if c.first_divergence is None else str(c.first_divergence),
            "right" if c.output_correct else "wrong", "yes" if c.truncated else ""]
