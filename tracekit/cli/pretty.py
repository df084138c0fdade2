"""A readable view of a trace for people (rich)."""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from tracekit.format.trace import Trace
from tracekit.tracer.constants import DOTS


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """A closed stdout (`| head`) is the command line's to end (quietly, exit 0); rich
        would exit 1 here."""
        self.quiet = True
        raise BrokenPipeError


def make_console(**options) -> Console:
    """tracekit's consoles: user text (paths, program names, values, messages) is shown as
    written, never read as rich markup or emoji codes; styles come from Text objects."""
    return _Console(markup=False, emoji=False, **options)


_EVENT_STYLE = {"call": "bold green", "line": "cyan", "return": "bold magenta",
                "exception": "bold red"}


PRETTY_HEAD, PRETTY_TAIL = 400, 100  # frames shown of a longer trace: its start and its end


def trace_table(trace: Trace, max_value_chars: int = 80) -> Table:
    """One row per frame: step, event, line, source (indented by call depth), state or value.
    Unchanged values (`".."`) are shown as dim names; changed ones as `name = value`. Past
    PRETTY_HEAD + PRETTY_TAIL frames, the middle is one row saying how many are not shown."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("event")
    table.add_column("line", justify="right", style="dim")
    table.add_column("source", overflow="fold", ratio=2)
    table.add_column("state / value", overflow="fold", ratio=3)
    frames = trace.frames
    hidden = len(frames) - PRETTY_HEAD - PRETTY_TAIL
    steps = range(len(frames)) if hidden <= 0 else [
        *range(PRETTY_HEAD), -1, *range(len(frames) - PRETTY_TAIL, len(frames))]
    for step in steps:
        if step < 0:
            table.add_row("", "", "", Text(f"… {hidden:,} frames not shown (--format cwm or "
                                           "json prints every frame)", style="yellow"), "")
            continue
        frame = frames[step]
        source = Text("  " * frame.depth + frame.source.rstrip("\n").strip(), style="white")
        if frame.locals is not None:
            shown = Text()
            for name, value in frame.locals.items():
                if shown:
                    shown.append("  ")
                if value == DOTS:
                    shown.append(name, style="dim")
                else:
                    shown.append(f"{name} = ", style="bold")
                    shown.append(_clip(value, max_value_chars))
        else:
            arrow = "-> " if frame.event == "return" else "!! "
            shown = Text(arrow + _clip(frame.arg or "", max_value_chars),
                         style=_EVENT_STYLE[frame.event])
        table.add_row(str(step), Text(frame.event, style=_EVENT_STYLE[frame.event]),
                      str(frame.lineno or ""), source, shown)
    return table


def summary_line(trace: Trace) -> Text:
    """`status · frames · return value or error` in one line."""
    style = "green" if trace.status == "ok" else "yellow" if trace.complete else "red"
    text = Text(trace.status, style=f"bold {style}")
    text.append(f"  {len(trace.frames)} frames  python {trace.python}  sandbox {trace.sandbox}")
    if trace.return_value is not None:
        text.append(f"  returned {_clip(trace.return_value, 60)}")
    if trace.error:
        text.append(f"  {trace.error}", style=style)
    return text


def summary_table(rows: list[tuple[str, Trace, float]]) -> Table:
    """One line per traced program: name, status, frames, what it returned or why it failed,
    and the time it took (sandbox start included)."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, expand=True)
    table.add_column("program")
    table.add_column("status")
    table.add_column("frames", justify="right")
    table.add_column("returned / error", overflow="fold", ratio=1)
    table.add_column("ms", justify="right")
    for name, trace, seconds in rows:
        style = "green" if trace.status == "ok" else "yellow" if trace.complete else "red"
        outcome = trace.error if trace.error else _clip(trace.return_value or "", 80)
        table.add_row(name, Text(trace.status, style=style), str(len(trace.frames)),
                      outcome, f"{seconds * 1000:.0f}")
    return table


def print_trace(trace: Trace, console: Console | None = None) -> None:
    """The trace as a titled table and a summary line (the summary alone when nothing ran)."""
    console = console or make_console()
    if not trace.frames:
        console.print(summary_line(trace))
        return
    title = Text("  <-  ".join(part for part in (trace.entry, trace.call) if part), style="bold")
    console.print(Group(title, trace_table(trace), summary_line(trace)))


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


FRAME_TEXT_CHARS = 320  # the most of one frame shown beside another


def frame_text(frame, max_value_chars: int = 60) -> Text:
    """A frame on one line: event, source, then its state or value."""
    if frame is None:
        return Text("<|end_of_text|>", style="dim")
    text = Text(f"{frame.event:<9s}", style=_EVENT_STYLE.get(frame.event, ""))
    text.append(frame.source.strip())
    if frame.error:
        text.append(f"  [{frame.error}]", style="red")
    elif frame.locals is not None:
        text.append("  " + ", ".join(f"{k}={_clip(v, max_value_chars)}"
                                     for k, v in frame.locals.items()), style="dim")
    elif frame.arg is not None:
        text.append("  -> " + _clip(frame.arg, max_value_chars), style="dim")
    text.truncate(FRAME_TEXT_CHARS, overflow="ellipsis")  # a degenerate frame: a few lines
    return text


def print_comparison(real: list, steps: list, matches: list[bool], start: int = 0,
                     title: str = "", console: Console | None = None) -> None:
    """Real and predicted frames side by side, `matches[i]` saying whether step i is right
    (as `tracekit.evals.compare` judges it), the first divergence marked."""
    table = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("real", overflow="fold", ratio=1)
    table.add_column("predicted", overflow="fold", ratio=1)
    table.add_column("", no_wrap=True)
    diverged = False
    right = 0
    for i in range(max(len(real), len(steps))):
        r = real[i] if i < len(real) else None
        p = steps[i].frame if i < len(steps) else None
        same = r is not None and i < len(matches) and matches[i]
        right += same
        mark = Text("ok", style="green") if same else Text("", style="red")
        if not same and not diverged:
            mark, diverged = Text("<- first divergence", style="bold red"), True
        elif not same:
            mark = Text("x", style="red")
        table.add_row(str(start + i), frame_text(r) if r is not None else Text(""),
                      frame_text(p) if i < len(steps) else Text(""), mark)
    console = console or make_console()
    console.print(table)
    console.print(f"{right}/{len(real)} frames exactly right", highlight=False)
