"""The `tracekit` command line."""

from __future__ import annotations

import io
import sys
import time
import warnings
from pathlib import Path

import click
from rich.console import Console

from tracekit import sandbox
from tracekit.model.prompt_lookup import DRAFT_TOKENS
from tracekit.pretty import print_trace, summary_table
from tracekit.prompts import trace_text
from tracekit.trace import Trace
from tracekit.tracer.constants import DEFAULT_MAX_FRAMES, DEFAULT_REPR_TIMEOUT, MARKER
from tracekit.tracer.context import TraceSetupError, call_from_comment, prepare_context

# Exit codes: one per kind of outcome, so scripts can tell them apart.
EXIT_CODES = {
    "ok": 0,
    "raised": 1, "exited": 1,                      # complete trace; the program itself failed
    "timeout": 3, "memory_limit": 3, "output_limit": 3, "frame_limit": 3,   # a limit hit
    "recursion_limit": 3,
    "syntax_error": 4, "no_entry": 4, "setup_error": 4,                   # the program or call is unusable
    "crashed": 5,
    "sandbox_unavailable": 6,
}
EXIT_MODEL = 7  # the model could not be loaded or reached
EXIT_HELP = ("Exit codes: 0 ok; 1 the program raised or called sys.exit (the trace is complete); "
             "2 bad command line; 3 a limit was hit (timeout, memory, output, frames, recursion); "
             "4 syntax error, no entry function or module-level error; 5 the program crashed; "
             "6 sandbox or interpreter unavailable; 7 the model could not be loaded or "
             "reached (predict, serve).")

stderr = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tracekit")
def main() -> None:
    """tracekit: execution traces in the format of Meta's Code World Model (CWM).

    Start with `tracekit trace prog.py --call "f(3)"`.
    """
    warnings.simplefilter("default", sandbox.SandboxWarning)
    warnings.showwarning = _show_warning


def _show_warning(message, category, *args, **kwargs) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _limits_options(f):
    options = [
        click.option("--python", "python", metavar="VERSION|PATH",
                     help="Interpreter that runs the program: 3.10 reproduces CWM's traces most "
                          "closely. Default: this one."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                     help="Wall-clock seconds per program (also the CPU-time limit)."),
        click.option("--memory-mb", type=click.IntRange(min=64), default=2048, show_default=True,
                     help="Address-space limit of the program."),
        click.option("--max-frames", type=click.IntRange(min=0), default=DEFAULT_MAX_FRAMES,
                     show_default=True, help="Stop with status frame_limit after this many "
                     "frames (0: no cap)."),
        click.option("--max-value-chars", type=click.IntRange(min=1), default=None,
                     help="Cut rendered values after this many characters, marked "
                          "'...<tracekit: N more chars>'. Default: no cut (as in CWM's data)."),
        click.option("--repr-timeout", type=click.FloatRange(min=0.01),
                     default=DEFAULT_REPR_TIMEOUT,
                     show_default=True, help="Seconds a value's __repr__ may run before it is "
                     "shown as '<tracekit: repr timed out>'."),
        click.option("--sandbox", type=click.Choice(sandbox.SANDBOX_MODES), default="auto",
                     show_default=True, help="bubblewrap isolation: auto (use it when it works), "
                     "bwrap (require it), none (rlimits only)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _run(source: str, filename: str, call, entry, python, timeout, memory_mb, max_frames,
         max_value_chars, repr_timeout, sandbox_mode) -> Trace:
    return sandbox.run_trace(
        source, call=call or call_from_comment(source), entry=entry, filename=filename,
        python=python, limits=sandbox.Limits(timeout=timeout, memory_mb=memory_mb),
        max_frames=max_frames or None, max_value_chars=max_value_chars,
        repr_timeout=repr_timeout, sandbox=sandbox_mode,
    )


@main.command(epilog=EXIT_HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--entry", metavar="NAME", help="Function to trace (the marker is added to its def "
              "line). Default: the def marked '  # << START_OF_TRACE'.")
@click.option("--call", metavar="EXPR", help="Call to run, e.g. \"f(3, 'x')\". Default: a "
              "'# tracekit-call: EXPR' line in the file, else the entry with no arguments.")
@click.option("--format", "fmt", type=click.Choice(["pretty", "cwm", "json"]), default="pretty",
              show_default=True, help="pretty: a table to read; cwm: the wire sequence CWM was "
              "trained on; json: tracekit's trace schema.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the trace here instead of stdout.")
@_limits_options
def trace(file: Path, entry, call, fmt, output, python, timeout, memory_mb, max_frames,
          max_value_chars, repr_timeout, sandbox) -> None:
    """Trace FILE's entry function in a sandbox and print the CWM trace.

    \b
    tracekit trace prog.py --call "f(3)"
    tracekit trace prog.py --entry helper --call "helper('x')" --python 3.10 --format cwm
    """
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.FileError(str(file), hint=str(exc)) from None
    result = _run(source, str(file), call, entry, python, timeout, memory_mb, max_frames,
                  max_value_chars, repr_timeout, sandbox)
    if fmt == "pretty" and output is None:
        print_trace(result)
    else:
        text = {"cwm": trace_text, "json": lambda t: t.to_json(indent=1),
                "pretty": _pretty_text}[fmt](result)
        if output is None:
            click.echo(text, nl=fmt != "cwm")
        else:
            output.write_text(text, encoding="utf-8")
    _exit_for(result)


def _pretty_text(trace: Trace) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    print_trace(trace, console)
    return console.export_text()


def _exit_for(result: Trace) -> None:
    code = EXIT_CODES[result.status]
    if code:
        what = "(the trace is complete)" if result.complete else ""
        stderr.print(f"[red]{result.status}:[/] {result.error} {what}".rstrip(), highlight=False,
                     soft_wrap=True)
    sys.exit(code)


@main.command(epilog=EXIT_HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
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
              help="A checkpoint directory whose tokenizer.json to use. Default: CWM's.")
@_limits_options
def prompt(file: Path, entry, call, k, force, chat, no_thinking, ids, count, checkpoint,
           python, timeout, memory_mb, max_frames, max_value_chars, repr_timeout, sandbox) -> None:
    """Print the CWM prompt for FILE: its text, token ids (--ids) or token count (--count).

    \b
    tracekit prompt prog.py                      # context only: the model predicts the trace
    tracekit prompt prog.py --frames 3 --count   # context + 3 real frames, in tokens
    tracekit prompt prog.py --frames 1 --force return   # step over the entry's first call
    tracekit prompt prog.py --chat               # predict the output, with reasoning
    """
    from tracekit import prompts
    from tracekit import tokenizer as tokenizers

    source = file.read_text(encoding="utf-8")
    frames = []
    if chat or k:
        result = _run(source, str(file), call, entry, python, timeout, memory_mb, max_frames,
                      max_value_chars, repr_timeout, sandbox)
        if result.status not in ("ok", "raised", "exited", "frame_limit"):
            _exit_for(result)
        context, frames, call = result.context, result.frames[:k], result.call
    else:
        context, _, _ = _prepare(source, entry)
    if chat:
        text = prompts.output_prediction_prompt(context.replace(MARKER, ""), call,
                                                enable_thinking=not no_thinking)
    else:
        text = prompts.trace_prompt(context, frames, force_event=force)
    if not (ids or count):
        click.echo(text, nl=False)
        return
    token_ids = tokenizers.encode(tokenizers.load_tokenizer(checkpoint), text)
    click.echo(len(token_ids) if count else " ".join(map(str, token_ids)))


COMPILE_HELP = ("Our runtime: compile batch-1 decode steps (torch.compile; on CUDA also "
                "replayed as a CUDA graph). Compiling takes tens of seconds once; then "
                "rollouts and sessions decode faster.")


DRAFT_HELP = ("Our runtime, greedy decoding: tokens guessed by prompt lookup and checked in "
              "each forward (0: one token per forward). Same predictions, to rounding, in fewer "
              f"forwards.  [default: {DRAFT_TOKENS}]")


MODEL_HELP = ("A checkpoint directory (our runtime), transformers:DIR (the reference path), "
              "openai:URL with --openai-model NAME (vLLM, tracekit serve), or bundled.")


@main.command(epilog=EXIT_HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "spec", required=True, metavar="SPEC", help=MODEL_HELP)
@click.option("--openai-model", metavar="NAME", help="The served model's name, for openai:URL.")
@click.option("--mode", type=click.Choice(["next", "rollout", "teacher-forced"]),
              default="teacher-forced", show_default=True,
              help="teacher-forced: every frame from the real frames before it; rollout: "
                   "free-running from the first K real frames; next: the frame after K.")
@click.option("--frames", "k", type=click.IntRange(min=0), default=0, show_default=True,
              help="next / rollout: start after the first K real frames.")
@click.option("--entry", metavar="NAME", help="Function to trace (as for `tracekit trace`).")
@click.option("--call", metavar="EXPR", help="Call to run (as for `tracekit trace`).")
@click.option("--max-frame-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Tokens one predicted frame may take before it counts as malformed.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--compile", "compile_decode", is_flag=True, help=COMPILE_HELP)
@click.option("--draft-tokens", type=click.IntRange(min=0), metavar="N", help=DRAFT_HELP)
@_limits_options
def predict(file: Path, spec, openai_model, mode, k, entry, call, max_frame_tokens, device,
            compile_decode, draft_tokens, python, timeout, memory_mb, max_frames,
            max_value_chars, repr_timeout, sandbox) -> None:
    """Trace FILE for real, predict its frames with a model, and print both side by side
    with the first divergence marked.

    \b
    tracekit predict prog.py --model ./checkpoint
    tracekit predict prog.py --model ./checkpoint --mode rollout --frames 1
    tracekit predict prog.py --model openai:http://localhost:8000 --openai-model cwm
    """
    from tracekit.cwm import frame_wire_text
    from tracekit.evals.compare import compare_rollout, compare_teacher_forced
    from tracekit.model.errors import BackendError
    from tracekit.predict import load_predictor
    from tracekit.pretty import print_comparison

    source = file.read_text(encoding="utf-8")
    result = _run(source, str(file), call, entry, python, timeout, memory_mb, max_frames,
                  max_value_chars, repr_timeout, sandbox)
    if not result.frames:
        _exit_for(result)
    try:
        predictor = load_predictor(spec, openai_model, device, max_frame_tokens, compile_decode,
                                   draft_tokens)
    except BackendError as exc:
        stderr.print(f"[red]model:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_MODEL)
    backend = predictor.backend
    real = result.frames
    try:
        with stderr.status(f"predicting ({mode}, {backend.name})..."):
            if mode == "teacher-forced":
                steps, start, stop = predictor.teacher_forced(result.context, real), 0, None
            elif mode == "rollout":
                rollout = predictor.rollout(result.context, real[:k], max_frames=len(real) - k)
                steps, start, stop = rollout.steps, k, rollout.stop
            else:
                steps, start, stop = [predictor.next_frame(result.context, real[:k])], k, None
    except BackendError as exc:
        stderr.print(f"[red]model:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_MODEL)
    # right or wrong as the eval judges it: ".." resolved, the real frames before `start` given
    seeds = [frame_wire_text(frame) for frame in real[:start]]
    if mode == "rollout":
        judged = compare_rollout("", real, "".join(seeds + [s.text for s in steps]), stop)
    else:
        judged = compare_teacher_forced("", real[:start + len(steps)],
                                        seeds + [s.text for s in steps])
    matches = [frame.match for frame in judged.frames[start:]]
    shown = real[start:] if mode == "rollout" else real[start:start + len(steps)]
    print_comparison(shown, steps, matches, start,
                     title=f"{file.name}: {mode} with {spec}")
    if stop:
        click.echo(f"rollout stopped: {stop}")


@main.command(epilog=EXIT_HELP)
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--name", help="The model name clients send. Default: the directory's name.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests decoded together at most.")
def serve(checkpoint: Path, host, port, name, device, max_batch) -> None:
    """Serve CHECKPOINT with our runtime behind an OpenAI-compatible API
    (/v1/completions, /v1/models, /health) until interrupted.

    \b
    tracekit serve ./checkpoint --port 8000
    tracekit predict prog.py --model openai:http://127.0.0.1:8000 --openai-model checkpoint
    """
    from functools import partial

    from tracekit.model.backends import RuntimeBackend
    from tracekit.model.errors import BackendError
    from tracekit.model.serve import Engine, make_server
    from tracekit.predict import load_predictor
    from tracekit.tokenizer import decode, encode

    try:
        predictor = load_predictor(str(checkpoint), device=device)
    except BackendError as exc:
        stderr.print(f"[red]model:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_MODEL)
    assert isinstance(predictor.backend, RuntimeBackend)  # a directory: our runtime
    tokenizer = predictor.tokenizer
    name = name or checkpoint.resolve().name
    try:
        engine = Engine(predictor.backend.model, partial(encode, tokenizer),
                        partial(decode, tokenizer), name, max_batch)
        httpd = make_server(engine, host, port)
    except OSError as exc:
        stderr.print(f"[red]serve:[/] cannot listen on {host}:{port} ({exc.strerror}): pick "
                     "another --port", highlight=False, soft_wrap=True)
        sys.exit(EXIT_MODEL)
    stderr.print(f"serving {name!r} on http://{host}:{httpd.server_address[1]}/v1 "
                 "(Ctrl-C stops)", highlight=False)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


@main.group()
def dataset() -> None:
    """Build trace datasets (Parquet, loadable with datasets.load_dataset) and look inside."""


@dataset.command("build", epilog="Exit codes: 0 built; 2 bad command line; 8 the sources or "
                 "the output directory are unusable (one line says why).")
@click.argument("specs", nargs=-1, required=True, metavar="SOURCE...")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Directory for the Parquet shards, stats.json and README.md.")
@click.option("--resume", is_flag=True, help="Finish a build that was interrupted (same "
              "sources and options).")
@click.option("--workers", type=click.IntRange(min=1), help="Programs traced at once. "
              "Default: all cores.")
@click.option("--call", metavar="EXPR", help="Call for .py sources without a call line.")
@click.option("--python", metavar="VERSION|PATH", help="Interpreter that runs the programs.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--memory-mb", type=click.IntRange(min=64), default=2048, show_default=True)
@click.option("--max-frames", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Traces stop there with status frame_limit.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Drop rows longer in CWM tokens.")
@click.option("--drop-failed", is_flag=True, help="Keep complete traces only (ok, raised, "
              "exited); by default every program gets a row with its status.")
@click.option("--no-dedup", is_flag=True, help="Keep exact duplicates (context + call).")
@click.option("--check-determinism", is_flag=True, help="Trace every program twice and keep "
              "only traces that came out the same.")
@click.option("--split", default="98,1,1", show_default=True, metavar="TRAIN,VAL,TEST",
              help="Split weights, by program hash.")
@click.option("--shard-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--synthetic-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Statements per body for synthetic:N sources.")
@click.option("--sandbox", type=click.Choice(sandbox.SANDBOX_MODES), default="auto",
              show_default=True)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="ray: trace as Ray tasks on a Ray cluster (pip install "
              "'tracekit[ray]'); the same rows as local.")
@click.option("--address", metavar="HOST:PORT", help="With --engine ray: the cluster to join "
              "(default: start a local one). Its nodes need tracekit installed.")
def dataset_build(specs, out, resume, workers, call, python, timeout, memory_mb, max_frames,
                  max_tokens, drop_failed, no_dedup, check_determinism, split, shard_size,
                  synthetic_size, sandbox, engine, address) -> None:
    """Trace every program of SOURCE... in the sandbox into a Parquet dataset.

    \b
    SOURCE: a .py file or a directory of them, a .jsonl file (rows with code and call, or
    CRUXEval rows), cruxeval (the 800 rows shipped in data/cruxeval/), humaneval, or
    synthetic:COUNT[:SEED].

    \b
    tracekit dataset build data/programs -o traces/
    tracekit dataset build cruxeval synthetic:10000:1 -o traces/ --drop-failed
    tracekit dataset build synthetic:1000000 -o traces/ --engine ray --address HEAD:6379
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from tracekit import sources
    from tracekit.dataset import BuildError, BuildOptions, build
    from tracekit.sources import SourceError

    try:
        weights = tuple(int(w) for w in split.split(","))
        assert len(weights) == 3 and min(weights) >= 0 and sum(weights) > 0
    except (ValueError, AssertionError):
        raise click.BadParameter("three non-negative integers, e.g. 98,1,1",
                                 param_hint="--split") from None
    options = BuildOptions(python=python, timeout=timeout, memory_mb=memory_mb,
                           max_frames=max_frames, drop_failed=drop_failed,
                           max_tokens=max_tokens, dedup=not no_dedup, split=weights,
                           shard_size=shard_size, sandbox=sandbox,
                           check_determinism=check_determinism)
    try:
        programs = list(sources.from_specs(specs, call, synthetic_size))
        with Progress(TextColumn("tracing"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]} programs/s  {task.fields[statuses]}"),
                      TimeRemainingColumn(), console=stderr, transient=False) as bar:
            task = bar.add_task("build", total=len(programs), rate="-", statuses="")
            started = time.monotonic()

            def progress(done, statuses):
                rate = done / max(time.monotonic() - started, 1e-9)
                shown = " ".join(f"{s}={n}" for s, n in statuses.most_common())
                bar.update(task, completed=done, rate=f"{rate:.0f}", statuses=shown)

            stats = build(programs, out, options, workers, resume, progress, engine, address)
    except (SourceError, BuildError) as exc:
        stderr.print(f"[red]dataset:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(8)
    click.echo(f"{stats['rows']} rows from {stats['programs']} programs in {out} "
               f"({', '.join(f'{s} {n}' for s, n in sorted(stats['statuses'].items()))})")


@dataset.command("stats")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def dataset_stats(directory: Path) -> None:
    """Print a built dataset's stats.json."""
    path = directory / "stats.json"
    if not path.exists():
        stderr.print(f"[red]dataset:[/] {path} is missing: the build has not finished "
                     "(finish it with --resume)", highlight=False, soft_wrap=True)
        sys.exit(8)
    click.echo(path.read_text(encoding="utf-8"))


@dataset.command("show")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--id", "program_id", required=True, help="The row's id.")
def dataset_show(directory: Path, program_id: str) -> None:
    """Print one row's trace, readable."""
    import pyarrow.dataset as ds

    from tracekit.dataset import row_trace

    table = ds.dataset(sorted(str(p) for p in directory.glob("*-*.parquet")), format="parquet")
    rows = table.to_table(filter=ds.field("id") == program_id).to_pylist()
    if not rows:
        stderr.print(f"[red]dataset:[/] no row with id {program_id!r} in {directory}",
                     highlight=False, soft_wrap=True)
        sys.exit(8)
    print_trace(row_trace(rows[0]))


class _DefaultToRun(click.Group):
    """`tracekit eval DATASET ...` is `tracekit eval run DATASET ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@main.group("eval", cls=_DefaultToRun)
def eval_group() -> None:
    """Score trace predictions against real traces and write a report.

    \b
    tracekit eval DATASET --model SPEC -o OUT        (the same as `tracekit eval run ...`)
    tracekit eval compare OUT1 OUT2
    """


EVAL_EXIT = ("Exit codes: 0 evaluated; 2 bad command line; 7 the model could not be loaded or "
             "reached (predictions made so far are kept: rerun with --resume); 8 the dataset, "
             "the predictions file or the output directory is unusable.")


@eval_group.command("run", epilog=EVAL_EXIT)
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "spec", metavar="SPEC", help="A checkpoint directory, "
              "transformers:DIR, openai:URL (with --openai-model), or a baseline: oracle (the "
              "real trace) or copy (repeat the state, next line in file order).")
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Score a JSONL of predictions made elsewhere instead: one {\"id\", "
                   "\"text\"} per trace (rollout/output), or {\"id\", \"texts\": [one per "
                   "frame]} (teacher-forced).")
@click.option("--mode", type=click.Choice(["rollout", "teacher-forced", "output"]),
              default="rollout", show_default=True,
              help="rollout: the whole trace free-running from the prompt (the CWM table's "
                   "setting); teacher-forced: every frame from the real frames before it; "
                   "output: the entry's return frame straight after its call frame.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Directory for report.html, report.md, metrics.json, frames.parquet and "
                   "predictions.jsonl.")
@click.option("--resume", is_flag=True, help="Finish an eval that was interrupted (same "
              "options): only the missing predictions are made.")
@click.option("--split", type=click.Choice(["train", "validation", "test"]),
              help="Evaluate one split. Default: every row.")
@click.option("--limit", type=click.IntRange(min=1), help="The first N complete traces only.")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 is greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--seed", type=int, help="Makes sampling reproducible.")
@click.option("--concurrency", type=click.IntRange(min=1), help="Traces predicted at once. "
              "Default: 8 for openai:URL (requests in flight), else 1.")
@click.option("--max-frame-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Tokens one predicted frame may take before it counts as malformed.")
@click.option("--budget-tokens", type=click.IntRange(min=1), default=32768, show_default=True,
              help="rollout: tokens for the whole trace; a prediction cut off here counts as "
                   "truncated.")
@click.option("--openai-model", metavar="NAME", help="The served model's name, for openai:URL.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--compile", "compile_decode", is_flag=True, help=COMPILE_HELP)
@click.option("--draft-tokens", type=click.IntRange(min=0), metavar="N", help=DRAFT_HELP)
def eval_run(dataset: Path, spec, predictions, mode, out: Path, resume, split, limit,
             temperature, top_k, top_p, seed, concurrency, max_frame_tokens, budget_tokens,
             openai_model, device, compile_decode, draft_tokens) -> None:
    """Predict every complete trace of DATASET (a `tracekit dataset build` directory), score
    the predictions against the real traces, and write the report into OUT.

    \b
    tracekit eval traces/ --model copy -o eval-copy/
    tracekit eval traces/ --model ./checkpoint --mode teacher-forced -o eval-tf/
    tracekit eval traces/ --model openai:http://localhost:8000 --openai-model cwm -o eval-cwm/
    tracekit eval traces/ --predictions preds.jsonl -o eval-mine/
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from tracekit.evals.baselines import BASELINES
    from tracekit.evals.run import EvalError, RunOptions, evaluate
    from tracekit.model.errors import BackendError

    if (spec is None) == (predictions is None):
        raise click.UsageError("pass exactly one of --model and --predictions")
    options = RunOptions(
        dataset=str(dataset), mode=mode, model=spec,
        predictions=str(predictions) if predictions else None, openai_model=openai_model,
        split=split, limit=limit, temperature=temperature, top_k=top_k, top_p=top_p,
        seed=seed, max_frame_tokens=max_frame_tokens, budget_tokens=budget_tokens,
        device=device, compile_decode=compile_decode, draft_tokens=draft_tokens)
    concurrency = concurrency or (8 if (spec or "").startswith("openai:") else 1)
    runtime_only = (("--compile", compile_decode), ("--draft-tokens", draft_tokens is not None))
    for flag, given in runtime_only:
        if given and (spec is None or spec in BASELINES):
            raise click.UsageError(f"{flag} applies to a model run by our runtime (a checkpoint "
                                   f"directory): drop {flag}")
    if compile_decode and concurrency > 1:
        raise click.UsageError("--compile runs one trace at a time: drop --concurrency")
    try:
        with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=stderr, transient=True) as bar:
            task = bar.add_task("eval", total=None)
            summary, info = evaluate(
                options, out, resume, concurrency,
                lambda done, total: bar.update(task, completed=done, total=total))
    except EvalError as exc:
        stderr.print(f"[red]eval:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(8)
    except BackendError as exc:
        stderr.print(f"[red]model:[/] {exc} (predictions so far are kept in {out}: rerun with "
                     "--resume)", highlight=False, soft_wrap=True)
        sys.exit(EXIT_MODEL)
    _print_eval(summary, info, out, Console())


def _print_eval(summary: dict, info: dict, out: Path, console: Console) -> None:
    """The CWM table of a finished eval, its prediction problems, and where the report is."""
    from rich.table import Table

    from tracekit.evals.metrics import CWM_TABLE, OUTPUT_MODE_METRICS

    mode = info["mode"]
    table = Table(title=f"{info['predictor']} · {mode} · {summary['traces']} traces",
                  title_justify="left")
    for column in ("metric", "value", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric in CWM_TABLE:
        found = summary["metrics"].get(metric.key)
        if found and (mode != "output" or metric.key in OUTPUT_MODE_METRICS):
            table.add_row(metric.label, f"{found['value']:.1f}",
                          f"{found['low']:.1f}-{found['high']:.1f}")
    console.print(table)
    problems = info["problems"]
    if problems:
        console.print("prediction problems: "
                      + ", ".join(f"{k} {v}" for k, v in problems.items()), highlight=False)
    console.print(f"report: {out / 'report.html'}", highlight=False, soft_wrap=True)


@eval_group.command("compare")
@click.argument("first", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("second", type=click.Path(exists=True, file_okay=False, path_type=Path))
def eval_compare(first: Path, second: Path) -> None:
    """Show two eval runs' metrics side by side, with the difference."""
    from rich.table import Table

    from tracekit.evals.report import compare_runs, load_metrics

    runs = []
    for directory in (first, second):
        try:
            runs.append(load_metrics(directory))
        except (OSError, ValueError):
            stderr.print(f"[red]eval:[/] {directory}/metrics.json is missing or unreadable: "
                         "is it an eval directory whose run finished?", highlight=False,
                         soft_wrap=True)
            sys.exit(8)
    table = Table()
    table.add_column("metric")
    for directory, run in zip((first, second), runs):
        table.add_column(f"{directory.name}\n{run['run']['predictor']} · {run['run']['mode']}",
                         justify="right")
    table.add_column("difference", justify="right")
    for row in compare_runs(*runs):
        table.add_row(*row)
    Console().print(table)
    differ = [field for field in ("dataset", "mode", "split")
              if runs[0]["run"].get(field) != runs[1]["run"].get(field)]
    if differ or runs[0]["traces"] != runs[1]["traces"]:
        click.echo(f"note: the runs differ in {', '.join(differ) or 'their traces'} "
                   f"({runs[0]['traces']} and {runs[1]['traces']} traces): not a like-for-like "
                   "comparison")


def _prepare(source: str, entry):
    """The context with its marker, or exit 4 with one line naming the problem."""
    try:
        return prepare_context(source, entry)
    except TraceSetupError as exc:
        stderr.print(f"[red]{exc.status}:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_CODES[exc.status])


@main.command()
@click.option("--programs", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("data/programs"), show_default=True,
              help="Directory of sample programs (each marked, with a '# tracekit-call:' line).")
@click.option("--show", metavar="NAME", default="bubble_sort",
              help="Which program's trace to print in full.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-output"), show_default=True,
              help="Where the demo writes its dataset/ and eval/ (replaced on each run).")
@click.option("--model", "spec", default="copy", show_default=True, metavar="SPEC",
              help="The predictor to evaluate: a baseline (copy, oracle) or a model spec as "
                   "for `tracekit eval` (there is no bundled model yet).")
@_limits_options
def demo(programs: Path, show, output: Path, spec, python, timeout, memory_mb, max_frames,
         max_value_chars, repr_timeout, sandbox) -> None:
    """Trace every sample program and print one trace in full and a line per program; then
    build a dataset of them, evaluate a predictor on it, and print where the report is."""
    import shutil

    from tracekit import sources
    from tracekit.dataset import BuildOptions, build
    from tracekit.evals.run import EvalError, RunOptions, evaluate
    from tracekit.model.errors import BackendError

    console = Console()
    files = sorted(programs.glob("*.py"))
    if not files:
        raise click.UsageError(f"no .py files in {programs}")
    results = []
    with console.status("tracing…"):
        for path in files:
            start = time.perf_counter()
            result = _run(path.read_text(encoding="utf-8"), path.name, None, None, python,
                          timeout, memory_mb, max_frames, max_value_chars, repr_timeout, sandbox)
            results.append((path.stem, result, time.perf_counter() - start))
    shown = next((r for name, r, _ in results if name == show), results[0][1])
    print_trace(shown, console)
    console.print()
    console.print(summary_table(results))
    bad = [name for name, r, _ in results if not r.complete]
    first = results[0][1]
    console.print(f"{len(results)} programs traced, {len(results) - len(bad)} complete"
                  + (f"; incomplete: {', '.join(bad)}" if bad else "")
                  + f" (python {first.python}, sandbox {first.sandbox})")

    dataset_dir, eval_dir = output / "dataset", output / "eval"
    for directory, marker in ((dataset_dir, "manifest.json"), (eval_dir, "run.json")):
        if directory.exists():
            if not (directory / marker).exists():
                raise click.UsageError(f"{directory} exists and is not a demo's output: "
                                       "choose another --output")
            shutil.rmtree(directory)
    with console.status("building a dataset…"):
        stats = build(sources.python_files([programs]), dataset_dir,
                      BuildOptions(python=python, timeout=timeout, memory_mb=memory_mb,
                                   max_frames=max_frames, sandbox=sandbox))
    console.print(f"\ndataset: {stats['rows']} rows in {dataset_dir}", highlight=False)
    predictor = ("the copy baseline (repeat the state, next line in file order: there is no "
                 "bundled model yet)" if spec == "copy" else spec)
    console.print(f"evaluating {predictor}, teacher-forced…", highlight=False)
    try:
        summary, info = evaluate(RunOptions(str(dataset_dir), "teacher-forced", spec), eval_dir)
    except (EvalError, BackendError) as exc:
        stderr.print(f"[red]eval:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_MODEL if isinstance(exc, BackendError) else 8)
    _print_eval(summary, info, eval_dir, console)


if __name__ == "__main__":
    main()
