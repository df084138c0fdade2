"""What an eval writes in OUT: metrics.json, frames.parquet (one row per compared frame),
report.md (the tables) and report.html (one self-contained file: inline CSS, plots embedded
as PNG, no script and nothing fetched)."""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
import re
from pathlib import Path

from tracekit.evals.compare import TraceComparison
from tracekit.evals.metrics import (
    CWM_TABLE,
    METRICS,
    MORE,
    OUTPUT_MODE_METRICS,
    PUBLISHED_CRUXEVAL,
)
from tracekit.tracer.constants import DOTS

MAIN_COLOR, SECOND_COLOR, WARN_COLOR = "#1f77b4", "#ff7f0e", "#d62728"
MAX_PROGRAMS_SHOWN, WORST_SHOWN = 300, 20


def write_report(out: Path, comparisons: list[TraceComparison], summary: dict,
                 info: dict) -> None:
    """Write every report file into `out`."""
    (out / "metrics.json").write_text(json.dumps({"run": info, **summary}, indent=1),
                                      encoding="utf-8")
    _write_frames(out / "frames.parquet", comparisons)
    ordered = _worst(comparisons)
    (out / "report.md").write_text(markdown(summary, info, ordered), encoding="utf-8")
    (out / "report.html").write_text(page(summary, info, ordered), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Tables shared by both reports


def _metric_rows(summary: dict, metrics, mode: str) -> list[tuple[str, str, str, str, str]]:
    """(label, value, 95% CI, n, published CWM on CRUXEval) per metric the run has."""
    rows = []
    for metric in metrics:
        if mode == "output" and metric.key not in OUTPUT_MODE_METRICS:
            continue
        found = summary["metrics"].get(metric.key)
        if found is None:
            continue
        published = PUBLISHED_CRUXEVAL.get(metric.key) if mode == "rollout" else None
        rows.append((metric.label, f"{found['value']:.1f}",
                     f"{found['low']:.1f}–{found['high']:.1f}", str(found["n"]),
                     f"{published:.1f}" if published is not None else ""))
    return rows


def _breakdowns(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
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


def _worst(comparisons: list[TraceComparison]) -> list[TraceComparison]:
    """Programs from the worst: fewest frames right, then earliest divergence."""
    def badness(c: TraceComparison):
        right = sum(f.match for f in c.frames) / len(c.frames) if c.frames else 0.0
        return (c.exact, right, c.first_divergence if c.first_divergence is not None else 1e9)
    return sorted(comparisons, key=badness)


def _headline(summary: dict, info: dict) -> list[str]:
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


def _info_line(info: dict, summary: dict) -> str:
    skipped = info.get("skipped") or {}
    problems = info.get("problems") or {}
    parts = [f"dataset {info['dataset']}", f"predictor {info['predictor']}",
             f"mode {info['mode']}", f"{summary['traces']} traces, {summary['frames']} frames"]
    if skipped:
        parts.append("skipped (incomplete real traces): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    if problems:
        parts.append("prediction problems: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(problems.items())))
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------------
# report.md


def markdown(summary: dict, info: dict, ordered: list[TraceComparison]) -> str:
    """report.md; `ordered`: the comparisons worst first (`_worst`)."""
    mode = info["mode"]
    lines = [f"# tracekit eval: {info['predictor']} on {Path(info['dataset']).name}", "",
             _info_line(info, summary), ""]
    lines += [f"- {line}" for line in _headline(summary, info)]
    published = "CWM 32B, CRUXEval (published)" if mode == "rollout" else ""
    for title, metrics in (("The CWM table (macro-averaged per trace)", CWM_TABLE),
                           ("More metrics", MORE)):
        rows = _metric_rows(summary, metrics, mode)
        if rows:
            lines += ["", f"## {title}", ""]
            lines += _md_table(["metric", "value", "95% CI", "n", published],
                               [list(r) for r in rows])
    for title, header, rows in _breakdowns(summary):
        lines += ["", f"## {title}", ""] + _md_table(header, rows)
    lines += ["", "## Worst programs", ""]
    lines += _md_table(["id", "frames", "frames right", "first divergence", "output", "truncated"],
                       [_worst_row(c) for c in ordered[:WORST_SHOWN]])
    lines += ["", "## Formulas", ""]
    lines += [f"- **{m.label}** ({m.average}): {m.formula}" for m in METRICS]
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return (["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def _worst_row(c: TraceComparison) -> list[str]:
    right = sum(f.match for f in c.frames)
    return [c.id, str(len(c.real)), f"{right}/{len(c.frames)}",
            "" if c.first_divergence is None else str(c.first_divergence),
            "right" if c.output_correct else "wrong", "yes" if c.truncated else ""]


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, embedded as PNG)


def plots(summary: dict) -> dict[str, str]:
    """Title -> base64 PNG for each plot the run has data for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    curve = summary["step_curve"]
    if curve["step"]:
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        ax.plot(curve["step"], curve["frame_match"], color=MAIN_COLOR, marker=".", linewidth=2)
        ax.set(xlabel="step index", ylabel="frame match %", ylim=(-2, 102),
               title="Accuracy vs step index")
        figures["Accuracy vs step index"] = fig
    if summary["by_length"]:
        rows = summary["by_length"]
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        x = range(len(rows))
        ax.bar([i - 0.27 for i in x], [r["frame_match"] or 0 for r in rows], 0.27,
               color=MAIN_COLOR, label="frame match")
        ax.bar(list(x), [r["output_pass1"] for r in rows], 0.27, color=SECOND_COLOR,
               label="output pass@1")
        ax.bar([i + 0.27 for i in x], [r["truncated"] for r in rows], 0.27, color=WARN_COLOR,
               label="truncated")
        ax.set_xticks(list(x), [f"{r['bucket']}\n({r['traces']})" for r in rows])
        ax.set(xlabel="real trace length in frames (traces)", ylabel="%", ylim=(0, 105),
               title="Accuracy vs trace length")
        ax.legend(fontsize=7)
        figures["Accuracy vs trace length"] = fig
    typed = summary["by_value_type"]
    if typed:
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        names = list(typed)
        values = [typed[k]["value"] for k in names]
        errors = [[v - typed[k]["low"] for k, v in zip(names, values)],
                  [typed[k]["high"] - v for k, v in zip(names, values)]]
        ax.barh(names, values, xerr=errors, color=MAIN_COLOR, capsize=3)
        for i, k in enumerate(names):
            ax.text(1, i, f" n={typed[k]['n']}", va="center", fontsize=7, color="white")
        ax.set(xlabel="changed values right % (95% CI)", xlim=(0, 105),
               title="Accuracy by value type")
        ax.invert_yaxis()
        figures["Accuracy by value type"] = fig
    divergence = summary["divergence"]
    if divergence["index"]:
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        top = max(divergence["index"])
        ax.hist(divergence["index"], bins=range(0, top + 2), color=MAIN_COLOR, align="left")
        ax.set(xlabel="first divergence (step index)", ylabel="traces",
               title=f"First divergence ({divergence['exact']} traces exact, not shown)")
        figures["First divergence"] = fig
    encoded = {}
    for title, fig in figures.items():
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        encoded[title] = base64.b64encode(buffer.getvalue()).decode()
    return encoded


# ---------------------------------------------------------------------------------------------
# report.html

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1180px;color:#1b1f24;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.info{color:#57606a;font-size:13px}.headline{background:#fff8e5;border-left:4px solid #e3a008;
padding:6px 12px;margin:12px 0}
table{border-collapse:collapse;margin:6px 0 12px}th,td{padding:3px 10px;text-align:left;
vertical-align:top;border-bottom:1px solid #d8dee4}
th{background:#dde6f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:10px}.plots img{width:100%;
border:1px solid #d8dee4}
details{margin:4px 0;border:1px solid #d8dee4;border-radius:4px;padding:2px 8px}
summary{cursor:pointer}table.trace{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;
width:100%}table.trace td{border-bottom:1px solid #eef1f4;white-space:pre-wrap;
word-break:break-all}tr.diverge td{background:#ffe9e9}td.bad{background:#fff1f1}
.dots{color:#8c959f}.wrong{color:#b42318;font-weight:600}del{background:#ffd7d5;
text-decoration:line-through;padding:0 1px}ins{background:#ccf2d7;text-decoration:none;
padding:0 1px}
.ok{color:#1a7f37}.err{color:#b42318}
"""


def page(summary: dict, info: dict, ordered: list[TraceComparison]) -> str:
    """The whole report as one HTML document; `ordered`: the comparisons worst first."""
    esc = html.escape
    mode = info["mode"]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>tracekit eval: {esc(info['predictor'])}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>tracekit eval: {esc(info['predictor'])} on {esc(Path(info['dataset']).name)}"
             "</h1>", f"<p class='info'>{esc(_info_line(info, summary))}</p>"]
    for line in _headline(summary, info):
        parts.append(f"<p class='headline'>{esc(line)}</p>")
    published = "CWM 32B on CRUXEval (published)" if mode == "rollout" else ""
    rows = _metric_rows(summary, CWM_TABLE, mode)
    parts.append("<h2>The CWM table <span class='info'>(macro-averaged per trace, %; token "
                 "lengths in tokens)</span></h2>")
    parts.append(_html_table(["metric", "value", "95% CI", "n", published], rows,
                             numeric=(1, 2, 3, 4), table_id="metrics"))
    images = plots(summary)
    if images:
        parts.append("<h2>Plots</h2><div class='plots'>")
        parts += [f"<img alt='{esc(t)}' title='{esc(t)}' src='data:image/png;base64,{b}'>"
                  for t, b in images.items()]
        parts.append("</div>")
    more = _metric_rows(summary, MORE, mode)
    if more:
        parts.append("<h2>More metrics</h2>")
        parts.append(_html_table(["metric", "value", "95% CI", "n", ""], more,
                                 numeric=(1, 2, 3)))
    for title, header, table in _breakdowns(summary):
        parts.append(f"<h2>{esc(title)}</h2>")
        parts.append(_html_table(header, table, numeric=tuple(range(1, len(header)))))
    parts.append("<h2>Worst programs</h2>")
    worst = [[f"<a href='#p-{esc(c.id)}'>{esc(c.id)}</a>", *map(esc, _worst_row(c)[1:])]
             for c in ordered[:WORST_SHOWN]]
    parts.append(_html_table(["id", "frames", "frames right", "first divergence", "output",
                              "truncated"], worst, numeric=(1, 2, 3), escape=False))
    shown = ordered[:MAX_PROGRAMS_SHOWN]
    parts.append(f"<h2>Programs, predicted beside real</h2><p class='info'>{len(shown)} of "
                 f"{len(ordered)} programs, worst first; the first divergence is highlighted "
                 "and wrong values are diffed against the real ones (<del>real</del> "
                 "<ins>predicted</ins>). Every compared frame is in frames.parquet.</p>")
    parts += [_program(c) for c in shown]
    parts.append("<h2>Formulas</h2><ul>")
    parts += [f"<li><b>{esc(m.label)}</b> ({m.average}): {esc(m.formula)}</li>" for m in METRICS]
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def _html_table(header, rows, numeric=(), table_id=None, escape=True) -> str:
    esc = html.escape if escape else (lambda s: s)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td class='n'>{esc(str(v))}</td>" if i in numeric else f"<td>{esc(str(v))}</td>"
        for i, v in enumerate(row)) + "</tr>" for row in rows)
    attribute = f" id='{table_id}'" if table_id else ""
    return f"<table{attribute}><tr>{head}</tr>{body}</table>"


def _program(c: TraceComparison) -> str:
    esc = html.escape
    right = sum(f.match for f in c.frames)
    verdict = ("<span class='ok'>exact</span>" if c.exact
               else f"<span class='err'>diverges at step {c.first_divergence}</span>")
    aligned = sum(f.match for f in c.aligned)
    unpaired = sum(f.pred is None for f in c.aligned)  # skipped, or past the prediction's end
    realigned = (f" · aligned: {aligned}/{len(c.aligned)} right ({c.inserted} predicted "
                 f"frames inserted, {unpaired} real frames unpaired)"
                 if aligned != right or c.inserted else "")
    head = (f"<summary><b>{esc(c.id)}</b> · {right}/{len(c.frames)} frames right · {verdict}"
            f"{realigned} · output {'right' if c.output_correct else 'wrong'}"
            + (" · truncated by budget" if c.truncated else "") + "</summary>")
    rows = ["<tr><th>#</th><th>real</th><th>predicted</th></tr>"]
    for f in c.frames:
        marked = " class='diverge'" if f.step == c.first_divergence else ""
        rows.append(f"<tr{marked}><td>{f.step}</td><td>{_frame_html(f.real, None)}</td>"
                    f"<td{'' if f.match else ' class=bad'}>{_predicted_html(f)}</td></tr>")
    extra = c.predicted[len(c.frames):] if c.mode == "rollout" else []
    for j, frame in enumerate(extra, start=len(c.frames)):
        rows.append(f"<tr><td>{j}</td><td class='dots'>(no real frame)</td>"
                    f"<td class='bad'>{_frame_html(frame, None)}</td></tr>")
    return (f"<details id='p-{esc(c.id)}'>{head}<table class='trace'>{''.join(rows)}</table>"
            "</details>")


def _frame_html(frame, wrong: dict | None) -> str:
    esc = html.escape
    if frame.error is not None:
        return f"<span class='err'>malformed: {esc(frame.error)}</span>"
    text = f"<b>{frame.event}</b> {esc(frame.source.rstrip(chr(10)))}\n"
    if frame.locals is None:
        return text + ("-> " if frame.event == "return" else "!! ") + esc(frame.arg or "")
    shown = []
    for name, value in frame.locals.items():
        if value == DOTS and not (wrong and name in wrong):
            shown.append(f"<span class='dots'>{esc(name)}</span>")
        elif wrong and name in wrong:
            shown.append(f"<span class='wrong'>{esc(name)}</span> = {wrong[name]}")
        else:
            shown.append(f"{esc(name)} = {esc(value)}")
    return text + "  ".join(shown)


def _predicted_html(f) -> str:
    if f.pred is None:
        return "<span class='err'>(no predicted frame)</span>"
    if f.pred.error is not None or f.real.locals is None or f.pred_state is None:
        body = _frame_html(f.pred, None)
        if f.real.locals is None and f.pred.error is None and not f.value_match \
                and f.pred.arg is not None and f.real.arg is not None:
            body += "\n" + _diff(f.real.arg, f.pred.arg)
        return body
    wrong = {name: _diff(f.real_state.get(name, ""), value)
             for name, value in f.pred_state.items() if f.real_state.get(name) != value}
    missing = [name for name in f.real_state if name not in f.pred_state]
    body = _frame_html(f.pred, wrong)
    if missing:
        body += "\n<span class='err'>missing: " + html.escape(", ".join(missing)) + "</span>"
    return body


_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")


def _diff(real: str, predicted: str) -> str:
    """`predicted` against `real`, token by token (words, numbers, punctuation): <del> what
    only the real value has, <ins> what only the prediction has."""
    esc, out = html.escape, []
    a, b = _TOKEN.findall(real), _TOKEN.findall(predicted)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for op, a1, a2, b1, b2 in matcher.get_opcodes():
        if op == "equal":
            out.append(esc("".join(a[a1:a2])))
        else:
            if a2 > a1:
                out.append(f"<del>{esc(''.join(a[a1:a2]))}</del>")
            if b2 > b1:
                out.append(f"<ins>{esc(''.join(b[b1:b2]))}</ins>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# frames.parquet and comparing runs


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
