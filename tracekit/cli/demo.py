"""`tracekit demo`: the whole pipeline on the sample programs, explained as it goes."""

from __future__ import annotations

from pathlib import Path

import click

from tracekit.cli.common import Failure, exit_help, tracing_options
from tracekit.cli.evaluation import print_eval
from tracekit.cli.exits import EXIT_DATA, EXIT_MODEL
from tracekit.cli.pretty import make_console, print_comparison, print_trace, summary_table
from tracekit.evals.compare import Mode
from tracekit.sources import SAMPLE_PROGRAMS


@click.command(epilog=exit_help(0, 2, 7, 8, 10))
@click.option("--programs", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=SAMPLE_PROGRAMS, show_default="the sample programs shipped with tracekit",
              help="Directory of sample programs (each marked, with a '# tracekit-call:' line).")
@click.option("--show", metavar="NAME", default="bubble_sort",
              help="Which program's trace to print in full.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo-output"), show_default=True,
              help="Where the demo writes its dataset/ and eval/ (replaced on each run).")
@click.option("--model", "spec", default="bundled", show_default=True, metavar="SPEC",
              help="The predictor: bundled (tracekit's own small model), a baseline (copy, "
                   "oracle) or a model spec as for `tracekit eval`.")
@tracing_options
def demo(programs: Path, show, output: Path, spec, tracing) -> None:
    """Trace every sample program; predict one with a model, real beside predicted frames;
    build a dataset of them, evaluate the model on it teacher-forced and free-running, and
    print what it measured and where the reports are."""
    from tracekit.evals.baselines import BASELINES
    from tracekit.evals.compare import judge_predicted_frames
    from tracekit.evals.demo import (
        DemoError,
        build_dataset,
        evaluate_on,
        output_directories,
        trace_programs,
    )
    from tracekit.evals.run import EvalError
    from tracekit.model.errors import BackendError
    from tracekit.predict import load_predictor

    console = make_console()
    files = sorted(programs.glob("*.py"))
    if not files:
        raise click.UsageError(f"no .py files in {programs}")
    with console.status("tracing…"):
        results = trace_programs(files, tracing)
    console.print(summary_table(results))
    bad = [name for name, r, _ in results if not r.complete]
    first = results[0][1]
    console.print(f"{len(results)} programs traced, {len(results) - len(bad)} complete"
                  + (f"; incomplete: {', '.join(bad)}" if bad else "")
                  + f" (python {first.python}, sandbox {first.sandbox})")
    try:
        dataset_dir, *eval_dirs = output_directories(output)
    except DemoError as exc:
        raise click.UsageError(str(exc)) from None
    name, shown = next(((n, r) for n, r, _ in results if n == show), results[0][:2])
    predictor = ("the copy baseline (repeat the state, next line in file order)"
                 if spec == "copy" else f"the {spec} model" if spec == "bundled" else spec)
    try:
        if spec in BASELINES:
            console.print()
            print_trace(shown, console)
        else:
            with console.status(f"predicting {name} with {predictor}, teacher-forced…"):
                steps = load_predictor(spec).teacher_forced(shown.context, shown.frames)
            matches = judge_predicted_frames(shown.frames, [s.text for s in steps], 0, False)
            print_comparison(shown.frames, steps, matches, 0, f"{name}: each frame predicted "
                             "from the real frames before it", console)
        with console.status("building a dataset…"):
            stats = build_dataset(programs, dataset_dir, tracing)
        console.print(f"\ndataset: {stats['rows']} rows in {dataset_dir}", highlight=False)
        for mode, eval_dir in zip((Mode.TEACHER_FORCED, Mode.ROLLOUT), eval_dirs):
            with console.status(f"evaluating {predictor}, {mode}…"):
                summary, info = evaluate_on(dataset_dir, eval_dir, spec, mode)
            console.print(f"\nevaluated {predictor}, {mode}:", highlight=False)
            print_eval(summary, info, eval_dir, console)
        console.print(f"\nthe demo's output is in {output.resolve()} (dataset/, eval/, "
                      "eval-rollout/)", highlight=False, soft_wrap=True)
    except EvalError as exc:
        raise Failure("eval", str(exc), EXIT_DATA) from None
    except BackendError as exc:
        raise Failure("model", str(exc), EXIT_MODEL) from None
