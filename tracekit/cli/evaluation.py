"""`tracekit eval`: score predictions against real traces and write the report; compare runs."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from tracekit.cli.common import (
    Failure,
    device_option,
    exit_help,
    model_options,
    model_spec,
    progress_bar,
    resume_option,
    runtime_flags,
    sampling_options,
)
from tracekit.cli.exits import EXIT_DATA, EXIT_MODEL
from tracekit.cli.models import COMPILE_HELP, DRAFT_HELP
from tracekit.cli.pretty import make_console
from tracekit.evals.compare import Mode
from tracekit.prediction.predict import MAX_FRAME_TOKENS


class _DefaultToRun(click.Group):
    """`tracekit eval DATASET ...` is `tracekit eval run DATASET ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group("eval", cls=_DefaultToRun)
def eval_group() -> None:
    """Score trace predictions against real traces and write a report.

    \b
    tracekit eval DATASET --model SPEC -o OUT        (the same as `tracekit eval run ...`)
    tracekit eval compare OUT1 OUT2
    """


EVAL_EXIT = (exit_help(0, 2, 7, 8, 10, 130) + " After 7 the predictions made so far are kept: "
             "rerun with --resume.")


@eval_group.command("run", epilog=EVAL_EXIT)
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@model_options(None, "bundled (tracekit's own small model, the default without "
               "--predictions), a checkpoint directory, transformers:DIR, openai:URL (with "
               "--openai-model), or a baseline: oracle (the real trace) or copy (repeat the "
               "state, next line in file order).")
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Score a JSONL of predictions made elsewhere instead: one {\"id\", "
                   "\"text\"} per trace (rollout/output), or {\"id\", \"texts\": [one per "
                   "frame]} (teacher-forced).")
@click.option("--mode", type=click.Choice([m.value for m in Mode]), default=Mode.ROLLOUT.value,
              show_default=True, callback=lambda ctx, param, value: Mode(value),
              help="rollout: the whole trace free-running from the entry's real call frame "
                   "(which holds the arguments; it is not scored), the CWM table's setting "
                   "(greedy, with our runtime, the programs decode together in one batch, "
                   "one taking the row of another that ends; with --compile or "
                   "--temperature > 0, one program at a time); "
                   "teacher-forced: every frame from the real frames before it (greedy, "
                   "with our runtime, one forward over the real trace says which frames the "
                   "model writes exactly, and only the others are decoded; with "
                   "--temperature > 0 every frame is sampled, so every frame is decoded); "
                   "output: the entry's return frame straight after its call frame; "
                   "reasoning: the return value by CWM's chat (think, then answer "
                   "[OUTPUT]value[/OUTPUT]; --budget-tokens per reply), no trace.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Directory for report.html, report.md, metrics.json, frames.parquet and "
                   "predictions.jsonl.")
@resume_option("Finish an eval that was interrupted (same options): only the missing "
               "predictions are made.")
@click.option("--split", type=click.Choice(["train", "validation", "test"]),
              help="Evaluate one split. Default: every row.")
@click.option("--limit", type=click.IntRange(min=1), help="The first N complete traces only.")
@click.option("--max-tokens", type=click.IntRange(min=1), metavar="N", help="Leave out traces "
              "longer than N tokens (the whole trace with its end). Whatever this says, a "
              "trace that does not fit the model's context is left out and counted "
              "(docs/trace-format.md section 11).")
@sampling_options(top=True)
@click.option("--concurrency", type=click.IntRange(min=1), help="Traces predicted at once. "
              "Default: 8 for openai:URL (requests in flight), else 1.")
@click.option("--max-frame-tokens", type=click.IntRange(min=1), default=MAX_FRAME_TOKENS,
              show_default=True,
              help="Tokens one predicted frame may take before it counts as malformed.")
@click.option("--budget-tokens", type=click.IntRange(min=1), default=32768, show_default=True,
              help="rollout: tokens for the whole trace; reasoning: tokens for the reply. A "
                   "prediction cut off here counts as truncated.")
@device_option
@click.option("--compile", "compile_decode", is_flag=True, help=COMPILE_HELP)
@click.option("--draft-tokens", type=click.IntRange(min=0), metavar="N", help=DRAFT_HELP)
def eval_run(dataset: Path, spec, predictions, mode, out: Path, resume, split, limit,
             max_tokens, temperature, top_k, top_p, seed, concurrency, max_frame_tokens,
             budget_tokens, openai_model, device, compile_decode, draft_tokens) -> None:
    """Predict every complete trace of DATASET (a `tracekit dataset build` directory), score
    the predictions against the real traces, and write the report into OUT.

    \b
    tracekit eval traces/ -o eval-bundled/              (the bundled model, rollout)
    tracekit eval traces/ --model copy -o eval-copy/
    tracekit eval traces/ --model ./checkpoint --mode teacher-forced -o eval-tf/
    tracekit eval traces/ --model openai:http://localhost:8000 --openai-model cwm -o eval-cwm/
    tracekit eval traces/ --predictions preds.jsonl -o eval-mine/
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from tracekit.evals.run import EvalError, RunOptions, evaluate
    from tracekit.model.errors import BackendError

    if spec is not None and predictions is not None:
        raise click.UsageError("pass one of --model and --predictions, not both")
    if predictions is None:
        spec = spec or "bundled"
    served = spec is not None and model_spec(spec, openai_model).served
    options = RunOptions(
        dataset=str(dataset), mode=mode, model=spec,
        predictions=str(predictions) if predictions else None, openai_model=openai_model,
        split=split, limit=limit, max_tokens=max_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p,
        seed=seed, max_frame_tokens=max_frame_tokens, budget_tokens=budget_tokens,
        device=device, compile_decode=compile_decode, draft_tokens=draft_tokens)
    concurrency = concurrency or (8 if served else 1)
    runtime_flags(spec, openai_model, compile_decode, draft_tokens)
    if compile_decode and concurrency > 1:
        raise click.UsageError("--compile runs one trace at a time: drop --concurrency")
    try:
        with progress_bar(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[rate]} traces/s"), TimeRemainingColumn(),
                          transient=True) as bar:
            task = bar.add_task("eval", total=None, rate="-")
            summary, info = evaluate(options, out, resume, concurrency,
                                     _progress(bar, task))
    except EvalError as exc:
        raise Failure("eval", str(exc), EXIT_DATA) from None
    except BackendError as exc:
        kept = (f" (predictions so far are kept in {out}: rerun with --resume)"
                if (out / "run.json").exists() else "")
        raise Failure("model", f"{exc}{kept}", EXIT_MODEL) from None
    print_eval(summary, info, out, make_console())


def print_eval(summary: dict, info: dict, out: Path, console: Console) -> None:
    """The CWM table of a finished eval, its prediction problems, and where the report is."""
    from rich.table import Table

    from tracekit.evals.metrics import shown_metrics

    mode = info["mode"]
    table = Table(title=f"{info['predictor']} · {mode} · {summary['traces']} traces",
                  title_justify="left")
    for column in ("metric", "value", "95% CI"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, label in shown_metrics(mode):
        found = summary["metrics"].get(metric.key)
        if found:
            table.add_row(label, f"{found['value']:.1f}",
                          f"{found['low']:.1f}-{found['high']:.1f}")
    console.print(table)
    for why, frames in info.get("skipped_frames", {}).items():
        console.print(f"not predicted, {why}: {info['skipped'][why]} traces ({frames} frames)",
                      highlight=False)
    problems = info["problems"]
    if problems:
        console.print("prediction problems: "
                      + ", ".join(f"{k} {v}" for k, v in problems.items()), highlight=False)
    console.print(f"report: {out / 'report.html'}", highlight=False, soft_wrap=True)


@eval_group.command("compare", epilog=exit_help(0, 2, 8))
@click.argument("first", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("second", type=click.Path(exists=True, file_okay=False, path_type=Path))
def eval_compare(first: Path, second: Path) -> None:
    """Show two eval runs' metrics side by side, with the difference."""
    from rich.table import Table

    from tracekit.evals.report import compare_runs, load_metrics, output_agreement

    runs = []
    for directory in (first, second):
        try:
            runs.append(load_metrics(directory))
        except (OSError, ValueError):
            raise Failure("eval", f"{directory}/metrics.json is missing or unreadable: is it "
                                  "an eval directory whose run finished?", EXIT_DATA) from None
    table = Table()
    table.add_column("metric")
    for directory, run in zip((first, second), runs):
        table.add_column(f"{directory.name}\n{run['run']['predictor']} · {run['run']['mode']}",
                         justify="right")
    table.add_column("difference", justify="right")
    for row in compare_runs(*runs):
        table.add_row(*row)
    console = make_console()
    console.print(table)
    agreement = output_agreement(*runs)
    if agreement is not None and agreement["programs"]:
        names = [f"{d.name} ({r['run']['mode']})" for d, r in zip((first, second), runs)]
        console.print(f"output right, per program ({agreement['programs']} in both runs): "
                      f"both {agreement['both']}, only {names[0]} {agreement['first only']}, "
                      f"only {names[1]} {agreement['second only']}, neither "
                      f"{agreement['neither']}", highlight=False, soft_wrap=True)
    differ = [field for field in ("dataset", "mode", "split")
              if runs[0]["run"].get(field) != runs[1]["run"].get(field)]
    if differ or runs[0]["traces"] != runs[1]["traces"]:
        click.echo(f"note: the runs differ in {', '.join(differ) or 'their traces'} "
                   f"({runs[0]['traces']} and {runs[1]['traces']} traces): not a like-for-like "
                   "comparison")


def _progress(bar, task):
    """The eval's progress: traces done of all, and traces/s over those predicted by this run
    (a resumed run's earlier ones do not count)."""
    import time

    started: dict[str, tuple[float, int]] = {}  # the first report's time and count

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        start, before = started.setdefault("at", (now, done))
        rate = (done - before) / (now - start) if now > start and done > before else None
        bar.update(task, completed=done, total=total,
                   rate=f"{rate:.2f}" if rate is not None else "-")
    return progress
