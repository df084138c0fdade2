"""The `tracekit` command line: one module per command group, errors handled once
(`common.Failure`), exit codes from `tracekit.trace.EXIT_MEANINGS`."""

from __future__ import annotations

import warnings

import click

from tracekit import sandbox
from tracekit.cli import datasets, demo, evaluation, models, tracing, training
from tracekit.cli.common import exit_help, stderr


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exit_help(*range(9)))
@click.version_option(package_name="tracekit")
def main() -> None:
    """tracekit: execution traces in the format of Meta's Code World Model (CWM).

    Start with `tracekit trace prog.py --call "f(3)"`.
    """
    warnings.simplefilter("default", sandbox.SandboxWarning)
    warnings.showwarning = _show_warning


def _show_warning(message, category, *args, **kwargs) -> None:
    stderr.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


for command in (tracing.trace, tracing.prompt, models.predict, models.serve, datasets.dataset,
                evaluation.eval_group, demo.demo, training.train):
    main.add_command(command)
