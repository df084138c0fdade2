"""What every command shares: the one error type (a line on stderr and its exit code), the
exit-code help, the tracing options and running one program."""

from __future__ import annotations

import contextlib
import functools
import tokenize
from pathlib import Path

import click
from rich.text import Text

from tracekit.cli.exits import EXIT_BUG, EXIT_CODES, EXIT_MEANINGS, EXIT_MODEL
from tracekit.cli.pretty import make_console
from tracekit.execution.sandbox import SANDBOX_MODES, Limits, TraceOptions, run_trace
from tracekit.format.trace import Trace
from tracekit.model.spec import ModelSpec
from tracekit.tracer.constants import DEFAULT_MAX_FRAMES, DEFAULT_REPR_TIMEOUT
from tracekit.tracer.context import call_from_comment

stderr = make_console(stderr=True)


class Failure(click.ClickException):
    """A failure the user can fix: `LABEL: message` on one line of stderr, then exit `code`
    (tracekit.cli.exits.EXIT_MEANINGS). Commands raise it; click prints it, once, for all."""

    def __init__(self, label: str, message: str, code: int):
        super().__init__(message)
        self.label, self.exit_code = label, code

    def show(self, file=None) -> None:
        print_error(self.label, self.message)


def progress_bar(*columns, **options):
    """rich's Progress, shown from its first update: a command that fails before any work
    prints its one line alone, with no empty bar above it. (rich.progress is imported here,
    where a bar is wanted: 40 ms that `--help` and `trace` do not pay.)"""
    from rich.progress import Progress

    class LazyProgress(Progress):
        def __enter__(self) -> LazyProgress:
            return self

        def update(self, *args, **kwargs) -> None:
            if not self.live.is_started:
                self.start()
            super().update(*args, **kwargs)

    return LazyProgress(*columns, console=stderr, **options)


def print_error(label: str, message: str, style: str = "red") -> None:
    """`label: message` on stderr, the message as plain text (never read as markup or emoji:
    it quotes user input)."""
    stderr.print(Text.assemble((f"{label}:", style), " ", message), highlight=False,
                 soft_wrap=True)


def resume_option(what: str):
    """The --resume flag of a command whose work is kept when it stops (a build, an eval, a
    training run): it marks the command so that Ctrl-C's one line says how to go on."""
    def remember(ctx: click.Context, param, value: bool) -> bool:
        ctx.meta["resumable"] = True
        return value
    return click.option("--resume", is_flag=True, help=what, callback=remember)


def exit_help(*codes: int) -> str:
    """The epilog naming what each of `codes` means (and 9, which any command can end in)."""
    codes = sorted({*codes, EXIT_BUG})
    return "Exit codes: " + "; ".join(f"{code} {EXIT_MEANINGS[code]}" for code in codes) + "."


def exit_codes(help_text: str) -> list[int]:
    """The exit codes a command's help lists (what `exit_help` wrote)."""
    listed = help_text.replace("\n", " ").split("Exit codes: ", 1)[-1]
    return [int(part.split()[0]) for part in listed.split("; ") if part.split()[0].isdigit()]


TRACE_EXITS = exit_help(0, 1, 2, 3, 4, 5, 6, 8)


def tracing_options(command):
    """The options that make the TraceOptions every tracing command passes on (as `tracing`)."""
    options = [
        click.option("--python", metavar="VERSION|PATH",
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
                     default=DEFAULT_REPR_TIMEOUT, show_default=True,
                     help="Seconds a value's __repr__ may run before it is shown as "
                          "'<tracekit: repr timed out>'."),
        click.option("--sandbox", "sandbox_mode", type=click.Choice(SANDBOX_MODES),
                     default="auto", show_default=True,
                     help="bubblewrap isolation: auto (use it when it works), bwrap (require "
                          "it), none (rlimits only)."),
        click.option("--bind", "binds", multiple=True, metavar="PATH",
                     type=click.Path(exists=True, path_type=Path),
                     help="A file or directory the program may read, read-only (repeatable); "
                          "its own file's directory it always may."),
    ]

    @functools.wraps(command)
    def with_tracing(*args, python, timeout, memory_mb, max_frames, max_value_chars,
                     repr_timeout, sandbox_mode, binds, **kwargs):
        tracing = TraceOptions(python=python, sandbox=sandbox_mode,
                               limits=Limits(timeout=timeout, memory_mb=memory_mb),
                               max_frames=max_frames or None, max_value_chars=max_value_chars,
                               repr_timeout=repr_timeout,
                               binds=tuple(str(b.resolve()) for b in binds))
        return command(*args, tracing=tracing, **kwargs)

    for option in reversed(options):
        with_tracing = option(with_tracing)
    return with_tracing


def read_program(path: Path) -> str:
    """A program's source as Python reads it (a coding line or a BOM honoured)."""
    try:
        with tokenize.open(path) as file:
            return file.read()
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        raise Failure("error", f"{path}: cannot read it as Python source ({exc})", 8) from None


def write_output(path: Path, text: str) -> None:
    """Write a command's text output to `path`, whole or not at all (a temporary file renamed
    into place); an unwritable path is a Failure naming it (exit 8)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise Failure("error", f"cannot write {path} ({exc.strerror or exc}): choose another "
                               "-o", 8) from None


def run_program(source: str, file: Path, call: str | None, entry: str | None,
                tracing: TraceOptions, module: str | None = None,
                sys_path: tuple[str, ...] = ()) -> Trace:
    """Trace one program as it runs from its own file: `__file__` its real path, its
    directory the working directory (read-only in the sandbox); the call defaults to the
    file's '# tracekit-call:' line."""
    real = file.resolve()
    return run_trace(source, call or call_from_comment(source), entry, tracing, str(real),
                     module, sys_path, str(real.parent))


MODEL_HELP = ("bundled (tracekit's own small model), a checkpoint directory (our runtime), "
              "transformers:DIR (the reference path), or openai:URL with --openai-model NAME "
              "(vLLM, tracekit serve).")


def model_options(default: str | None = "bundled", help: str = MODEL_HELP):
    """--model SPEC and --openai-model NAME, read together by `model_spec`."""
    def decorate(command):
        command = click.option("--openai-model", metavar="NAME",
                               help="The served model's name, for openai:URL.")(command)
        return click.option("--model", "spec", default=default, show_default=default is not None,
                            metavar="SPEC", help=help)(command)
    return decorate


def sampling_options(temperature_help: str = "0: greedy.", top: bool = False):
    """--temperature and --seed (and --top-k, --top-p with `top`)."""
    def decorate(command):
        options = [click.option("--temperature", type=click.FloatRange(min=0), default=0.0,
                                show_default=True, help=temperature_help)]
        if top:
            options += [click.option("--top-k", type=click.IntRange(min=0), default=0,
                                     show_default=True),
                        click.option("--top-p", type=click.FloatRange(0, 1), default=1.0,
                                     show_default=True)]
        options.append(click.option("--seed", type=int, help="Makes sampling (--temperature > "
                                    "0) reproducible."))
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


device_option = click.option("--device", default="cpu", show_default=True,
                             help="cpu, cuda, cuda:1, ...")


def model_spec(spec: str, openai_model: str | None) -> ModelSpec:
    """--model and --openai-model as one spec: a served model without its name is a bad
    command line."""
    parsed = ModelSpec.parse(spec, openai_model)
    if parsed.needs_name:
        raise click.UsageError("--model openai:URL needs --openai-model NAME (the served "
                               "model's name)")
    return parsed


def runtime_flags(spec: str | None, openai_model: str | None, compile_decode: bool,
                  draft_tokens: int | None) -> None:
    """--compile and --draft-tokens tune our runtime, so with any other model they are refused
    before anything loads: with a baseline (or no model) as a usage error, with another
    backend as the model's (exit 7)."""
    from tracekit.evals.baselines import BASELINES

    given = {"--compile": compile_decode, "--draft-tokens": draft_tokens is not None}
    for flag in (flag for flag, on in given.items() if on):
        if spec is None or spec in BASELINES:
            raise click.UsageError(f"{flag} applies to a model run by our runtime (a checkpoint "
                                   f"directory): drop {flag}")
        parsed = ModelSpec.parse(spec, openai_model)
        if parsed.kind != "runtime":
            raise Failure("model", f"{flag} applies to our runtime (a checkpoint directory), not "
                          f"to {parsed}: drop {flag}", EXIT_MODEL)


def traced_for_a_model(file: Path, call: str | None, entry: str | None, tracing: TraceOptions,
                       spec: str, openai_model: str | None) -> Trace:
    """`predict` and `debug`: check the model options, then trace FILE (a run with no frame
    at all fails with its status)."""
    model_spec(spec, openai_model)
    result = run_program(read_program(file), file, call, entry, tracing)
    if not result.frames:
        exit_for(result)
    return result


def exit_for(result: Trace) -> None:
    """Return for an ok trace; otherwise fail with its status, one line, its exit code."""
    code = EXIT_CODES[result.status]
    if code:
        what = " (the trace is complete)" if result.complete else ""
        raise Failure(result.status, f"{result.error}{what}", code)


def typed_lines(prompt: str):
    """Lines a person types at `prompt`, with readline's editing and history, until Ctrl-D;
    Ctrl-C at the prompt clears the line and asks again."""
    try:
        import readline  # noqa: F401 - input() gains editing and history
    except ImportError:  # a Python built without it: plain input()
        pass
    while True:
        try:
            yield input(prompt)
        except EOFError:
            click.echo()
            return
        except KeyboardInterrupt:
            click.echo()
