"""report.html: the page is `templates/report.html.jinja`; this module gives it its values and
writes the one part a template would make unreadable, each program's frames beside the real
ones with wrong values diffed (HTML fragments, escaped here)."""

from __future__ import annotations

import difflib
import functools
import html
import re
from pathlib import Path

import jinja2

from tracekit.evals.compare import Mode, TraceComparison
from tracekit.evals.metrics import CWM_TABLE, METRICS, MORE
from tracekit.evals.plots import plots
from tracekit.evals.tables import (
    WORST_SHOWN,
    breakdowns,
    headline,
    info_line,
    metric_rows,
    worst_row,
)
from tracekit.tracer.constants import DOTS

MAX_PROGRAMS_SHOWN = 300


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("tracekit.evals", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.jinja")


def page(summary: dict, info: dict, ordered: list[TraceComparison]) -> str:
    """The whole report as one HTML document; `ordered`: the comparisons worst first."""
    mode = info["mode"]
    shown = ordered[:MAX_PROGRAMS_SHOWN]
    return _template().render(
        info=info, dataset_name=Path(info["dataset"]).name, info_line=info_line(info, summary),
        headlines=headline(summary, info),
        published="CWM 32B on CRUXEval (published)" if mode == Mode.ROLLOUT else "",
        cwm_rows=metric_rows(summary, CWM_TABLE, mode), more_rows=metric_rows(summary, MORE, mode),
        plots=plots(summary), breakdowns=breakdowns(summary),
        worst=[worst_row(c) for c in ordered[:WORST_SHOWN]],
        programs=[_program(c) for c in shown], total=len(ordered), metrics=METRICS)


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
    extra = c.predicted[len(c.frames):] if c.mode == Mode.ROLLOUT else []
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
