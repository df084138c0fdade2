"""`tracekit trace` and `tracekit prompt`: one program, traced or turned into a prompt."""

from __future__ import annotations

import io
from pathlib import Path

import click

from tracekit.cli.common import (
    TRACE_EXITS,
    Failure,
    exit_for,
    exit_help,
    read_program,
    run_program,
    tracing_options,
    write_output,
)
from tracekit.cli.exits import EXIT_CODES, EXIT_MODEL
from tracekit.cli.pretty import make_console, print_trace
from tracekit.format.prompts import trace_text
from tracekit.format.trace import Trace
from tracekit.tracer.constants import MARKER
from tracekit.tracer.context import TraceSetupError, prepare_context

PROGRAM = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command(epilog=TRACE_EXITS)
@click.argument("file", type=PROGRAM)
@click.option("--entry", metavar="NAME", help="Function to trace (the marker is added to its def "
              "line). Default: the def marked '# << START_OF_TRACE'.")
@click.option("--call", metavar="EXPR", help="Call to run, e.g. \"f(3, 'x')\". Default: a "
              "'# tracekit-call: EXPR' line in the file, else the entry with no arguments.")
@click.option("--format", "fmt", type=click.Choice(["pretty", "cwm", "json"]), default="pretty",
              show_default=True, help="pretty: a table to read; cwm: the wire sequence CWM was "
              "trained on; json: tracekit's trace schema.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the trace here instead of stdout.")
@click.option("--module", metavar="NAME", help="Run FILE as this module of a project (e.g. "
              "pkg.mod: its relative imports resolve, its reprs name it), as a tests: row's "
              "harness runs (its `module` column). Default: as __main__.")
@click.option("--path", "paths", multiple=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A project's import root, first on sys.path and visible read-only in the "
              "sandbox (repeatable), e.g. the project's src/.")
@tracing_options
def trace(file: Path, entry, call, fmt, output, module, paths, tracing) -> None:
    """Trace FILE's entry function in a sandbox and print the CWM trace.

    \b
    tracekit trace prog.py --call "f(3)"
    tracekit trace prog.py --entry helper --call "helper('x')" --python 3.10 --format cwm
    tracekit trace harness.py --module tinyproj.text --path tinyproj/src
    """
    if output is not None and output.resolve() == file.resolve():
        raise Failure("error", f"-o {output} is the program itself: choose another file", 8)
    result = run_program(read_program(file), file, call, entry, tracing, module,
                         tuple(str(p.resolve()) for p in paths))
    if not result.frames and fmt != "json":
        exit_for(result)  # nothing ran: the one line saying why is the whole answer
    if fmt == "pretty" and output is None:
        print_trace(result)
    else:
        text = {"cwm": trace_text, "json": lambda t: t.to_json(indent=1),
                "pretty": _pretty_text}[fmt](result)
        if output is None:
            click.echo(text, nl=fmt != "cwm")
        else:
            write_output(output, text)
    exit_for(result)


def _pretty_text(trace: Trace) -> str:
    console = make_console(record=True, width=160, file=io.StringIO())
    print_trace(trace, console)
    # the table pads each line to the console's width: a file keeps the text only
    return "\n".join(line.rstrip() for line in console.export_text().split("\n"))


@click.command(epilog=exit_help(0, 1, 2, 3, 4, 5, 6, 7, 8))
@click.argument("file", type=PROGRAM)
@click.option("--entry", metavar="NAME", help="Function to trace (as for `tracekit trace`).")
@click.option("--call", metavar="EXPR", help="Call to run (as for `tracekit trace`).")
@click.option("--frames", "k", type=click.IntRange(min=0), default=0, show_default=True,
              help="Include the first K real frames (traced in the sandbox): the model continues "
                   "from there. 0: the context alone.")
@click.option("--force", type=click.Choice(["call", "line", "return", "exception"]),
              help="End the prompt with this event token, e.g. return after a call frame to "
                   "step over the call.")
@click.option("--chat", is_flag=True, help="An output-prediction chat prompt (CRUXEval-O "
              "style, CWM's reasoning system prompt) instead of a trace prompt.")
@click.option("--no-thinking", is_flag=True, help="With --chat: no '<think>' after the "
              "assistant header.")
@click.option("--ids", is_flag=True, help="Print the token ids instead of the text.")
@click.option("--count", is_flag=True, help="Print the number of tokens only.")
@click.option("--tokenizer", "checkpoint", type=click.Path(exists=True, file_okay=False),
              help="A checkpoint directory whose tokenizer.json to use (CWM's for a checkpoint "
                   "without one, as its model does). Default: CWM's.")
@tracing_options
def prompt(file: Path, entry, call, k, force, chat, no_thinking, ids, count, checkpoint,
           tracing) -> None:
    """Print the CWM prompt for FILE: its text, token ids (--ids) or token count (--count).

    \b
    tracekit prompt prog.py                      # context only: the model predicts the trace
    tracekit prompt prog.py --frames 3 --count   # context + 3 real frames, in tokens
    tracekit prompt prog.py --frames 1 --force return   # step over the entry's first call
    tracekit prompt prog.py --chat               # predict the output, with reasoning
    """
    from tracekit.format import prompts
    from tracekit.format import tokenizer as tokenizers

    conflicts = [("--chat", chat and k, "--frames"), ("--chat", chat and force, "--force"),
                 ("--ids", ids and count, "--count"),
                 ("--no-thinking", no_thinking and not chat, "a trace prompt (it needs --chat)")]
    for first, clash, second in conflicts:
        if clash:
            raise click.UsageError(f"{first} does not go with {second}: drop one")
    source = read_program(file)
    frames = []
    if chat or k:
        result = run_program(source, file, call, entry, tracing)
        if result.status not in ("ok", "raised", "exited", "frame_limit"):
            exit_for(result)
        if k > len(result.frames):
            raise click.UsageError(f"--frames {k}: the trace has {len(result.frames)} frames; "
                                   f"give at most {len(result.frames)}")
        context, frames, call = result.context, result.frames[:k], result.call
    else:
        context = prepared(source, entry)[0]
    if chat:
        text = prompts.output_prediction_prompt(context.replace(MARKER, ""), call,
                                                enable_thinking=not no_thinking)
    else:
        text = prompts.trace_prompt(context, frames, force_event=force)
    if not (ids or count):
        click.echo(text, nl=False)
        return
    if checkpoint and not any((Path(checkpoint) / name).exists()
                              for name in ("tokenizer.json", "config.json")):
        raise Failure("model", f"{checkpoint} has no tokenizer.json and is not a checkpoint: "
                      "pass a checkpoint directory, or drop --tokenizer for CWM's", EXIT_MODEL)
    try:
        tokenizer = tokenizers.load_tokenizer(checkpoint)
    except tokenizers.TokenizerError as exc:
        raise Failure("model", str(exc), EXIT_MODEL) from None
    token_ids = tokenizers.encode(tokenizer, text)
    click.echo(len(token_ids) if count else " ".join(map(str, token_ids)))


def prepared(source: str, entry: str | None) -> tuple[str, str, int]:
    """prepare_context, or its problem as one line with its exit code."""
    try:
        return prepare_context(source, entry)
    except TraceSetupError as exc:
        raise Failure(exc.status, str(exc), EXIT_CODES[exc.status]) from None
