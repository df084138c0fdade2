"""`tracekit demo`: the whole pipeline on the sample programs, explained as it goes."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from tracekit.cli.common import Failure, exit_help, tracing_options
from tracekit.cli.evaluation import print_eval
from tracekit.pretty import print_trace, summary_table
from tracekit.trace import EXIT_DATA, EXIT_MODEL


@click.command(epilog=exit_help(0, 2, 7, 8))
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
                   "for `tracekit eval`.")
@tracing_options
def demo(programs: Path, show, output: Path, spec, tracing) -> None:
    """Trace every sample program and print one trace in full and a line per program; then
    build a dataset of them, evaluate a predictor on it, and print where the report is."""
    from tracekit.evals.demo import (
        DemoError,
        build_and_evaluate,
        output_directories,
        trace_programs,
    )
    from tracekit.evals.run import EvalError
    from tracekit.model.errors import BackendError

    console = Console()
    files = sorted(programs.glob("*.py"))
    if not files:
        raise click.UsageError(f"no .py files in {programs}")
    with console.status("tracing…"):
        results = trace_programs(files, tracing)
    shown = next((r for name, r, _ in results if name == show), results[0][1])
    print_trace(shown, console)
    console.print()
    console.print(summary_table(results))
    bad = [name for name, r, _ in results if not r.complete]
    first = results[0][1]
    console.print(f"{len(results)} programs traced, {len(results) - len(bad)} complete"
                  + (f"; incomplete: {', '.join(bad)}" if bad else "")
                  + f" (python {first.python}, sandbox {first.sandbox})")
    try:
        dataset_dir, eval_dir = output_directories(output)
    except DemoError as exc:
        raise click.UsageError(str(exc)) from None
    predictor = ("the copy baseline (repeat the state, next line in file order)"
                 if spec == "copy" else spec)
    try:
        with console.status(f"building a dataset, evaluating {predictor} teacher-forced…"):
            stats, summary, info = build_and_evaluate(programs, dataset_dir, eval_dir, spec,
                                                      tracing)
    except EvalError as exc:
        raise Failure("eval", str(exc), EXIT_DATA) from None
    except BackendError as exc:
        raise Failure("model", str(exc), EXIT_MODEL) from None
    console.print(f"\ndataset: {stats['rows']} rows in {dataset_dir}", highlight=False)
    console.print(f"evaluated {predictor}, teacher-forced:", highlight=False)
    print_eval(summary, info, eval_dir, console)
