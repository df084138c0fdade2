"""`tracekit demo`: the whole pipeline on the sample programs, explained as it goes: trace
the sample programs, make room for the demo's output, predict one program beside its real
trace, build a dataset of the programs and evaluate a predictor on it, teacher-forced and
free-running."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from tracekit.cli.common import Failure, exit_help, read_program, run_program, tracing_options
from tracekit.cli.evaluation import print_eval
from tracekit.cli.exits import EXIT_DATA, EXIT_MODEL
from tracekit.cli.pretty import make_console, print_comparison, print_trace, summary_table
from tracekit.evals.compare import Mode
from tracekit.execution.sandbox import TraceOptions
from tracekit.format.trace import Trace
from tracekit.programs.sources import SAMPLE_PROGRAMS

DEMO_ROLLOUT_BUDGET = 2048  # tokens per free-running trace: a model that loops stops here


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
    from tracekit.datasets.build import BuildOptions, build
    from tracekit.evals.baselines import BASELINES
    from tracekit.evals.compare import judge_predicted_frames
    from tracekit.evals.run import EvalError, RunOptions, evaluate
    from tracekit.model.errors import BackendError
    from tracekit.prediction.predict import load_predictor
    from tracekit.programs import sources

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
    dataset_dir, *eval_dirs = output_directories(output)
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
            stats = build(sources.python_files([programs]), dataset_dir, BuildOptions(tracing))
        console.print(f"\ndataset: {stats['rows']} rows in {dataset_dir}", highlight=False)
        for mode, eval_dir in zip((Mode.TEACHER_FORCED, Mode.ROLLOUT), eval_dirs):
            with console.status(f"evaluating {predictor}, {mode}…"):
                summary, info = evaluate(RunOptions(str(dataset_dir), mode, spec,
                                                    budget_tokens=DEMO_ROLLOUT_BUDGET), eval_dir)
            console.print(f"\nevaluated {predictor}, {mode}:", highlight=False)
            print_eval(summary, info, eval_dir, console)
        console.print(f"\nthe demo's output is in {output.resolve()} (dataset/, eval/, "
                      "eval-rollout/)", highlight=False, soft_wrap=True)
    except EvalError as exc:
        raise Failure("eval", str(exc), EXIT_DATA) from None
    except BackendError as exc:
        raise Failure("model", str(exc), EXIT_MODEL) from None


def trace_programs(files: list[Path], tracing: TraceOptions) -> list[tuple[str, Trace, float]]:
    """(name, trace, seconds) for each program file, traced as `tracekit trace` runs it."""
    results = []
    for path in files:
        start = time.perf_counter()
        result = run_program(read_program(path), path, None, None, tracing)
        results.append((path.stem, result, time.perf_counter() - start))
    return results


def output_directories(output: Path) -> tuple[Path, Path, Path]:
    """OUTPUT/dataset, OUTPUT/eval (teacher-forced) and OUTPUT/eval-rollout, emptied when an
    earlier demo made them; refused when something else is there."""
    directories = (output / "dataset", output / "eval", output / "eval-rollout")
    for directory, made_by_demo in zip(directories, ("manifest.json", "run.json", "run.json")):
        if directory.exists():
            if not (directory / made_by_demo).exists():
                raise click.UsageError(f"{directory} exists and is not a demo's output: choose "
                                       "another --output")
            shutil.rmtree(directory)
    return directories
