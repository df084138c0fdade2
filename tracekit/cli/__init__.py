"""The `tracekit` command line: one module per command group, errors handled once
(`common.Failure`), exit codes from `tracekit.cli.exits.EXIT_MEANINGS`."""

from __future__ import annotations

import os
import sys
import warnings

import click

from tracekit.cli import chat, datasets, debug, demo, evaluation, models, tracing, training
from tracekit.cli.common import exit_help, print_error
from tracekit.cli.exits import EXIT_BUG, EXIT_DATA, EXIT_INTERRUPTED, EXIT_MEANINGS, EXIT_TOO_LONG
from tracekit.execution import sandbox
from tracekit.model.errors import ContextError


class _Main(click.Group):
    """The one place an unexpected exception becomes `error: <cause>` and exit 9 (with
    --debug or TRACEKIT_DEBUG=1: the traceback); a path the system refuses, exit 8; input
    longer than the model's context, exit 10; Ctrl-C, 130 (saying --resume goes on where the
    command has it); a closed stdout (`| head`) ends quietly."""

    def invoke(self, ctx: click.Context):
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
            return result
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            print_error("interrupted", "what was finished is kept: run the same command with "
                        "--resume to go on" if ctx.meta.get("resumable") else "stopped")
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            _quiet_stdout()
            ctx.exit(0)
        except ContextError as exc:  # from any command that runs a model: one code for all
            print_error("too long", str(exc))
            ctx.exit(EXIT_TOO_LONG)
        except OSError as exc:
            if exc.filename is None or _debug(ctx):
                raise
            print_error("error", f"cannot use {exc.filename} ({exc.strerror or exc}): choose "
                                 "another path")
            ctx.exit(EXIT_DATA)
        except Exception as exc:
            if _debug(ctx):
                raise
            cause = str(exc).strip().splitlines()
            print_error("error", type(exc).__name__ + (f": {cause[0]}" if cause else "")
                        + " (rerun with --debug for the traceback, and report it)")
            ctx.exit(EXIT_BUG)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.params.get("debug")) or os.environ.get("TRACEKIT_DEBUG", "") not in ("", "0")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exit_help(*EXIT_MEANINGS))
@click.version_option(package_name="tracekit")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error (also "
              "TRACEKIT_DEBUG=1).")
def main(debug: bool) -> None:
    """tracekit: execution traces in the format of Meta's Code World Model (CWM).

    Start with `tracekit trace prog.py --call "f(3)"`.
    """
    warnings.simplefilter("default", sandbox.SandboxWarning)
    warnings.showwarning = _show_warning


def _show_warning(message, category, *args, **kwargs) -> None:
    print_error("warning", str(message), "yellow")


for command in (tracing.trace, tracing.prompt, models.predict, models.serve, datasets.dataset,
                evaluation.eval_group, demo.demo, training.train, debug.debug, chat.chat):
    main.add_command(command)


def exit_code_table() -> str:
    """README's table of each command's exit codes, read from the commands' own help."""
    from tracekit.cli.common import exit_codes

    rows = ["| command | exit codes |", "|---|---|"]
    for name, command in main.commands.items():
        leaves = getattr(command, "commands", {None: command})
        for sub, leaf in leaves.items():
            with click.Context(leaf, info_name=name) as ctx:
                codes = exit_codes(leaf.get_help(ctx))
            rows.append(f"| `{' '.join(filter(None, ['tracekit', name, sub]))}` | "
                        f"{', '.join(map(str, codes))} |")
    return "\n".join(rows)
