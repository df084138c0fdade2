"""The demo's pipeline, in steps the command line shows one by one: trace the sample programs,
make room for the demo's output, predict one program beside its real trace, build a dataset of
the programs and evaluate a predictor on it, teacher-forced and free-running."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tracekit import sources
from tracekit.dataset import BuildOptions, build
from tracekit.evals.run import RunOptions, evaluate
from tracekit.sandbox import TraceOptions, run_trace
from tracekit.trace import Trace
from tracekit.tracer.context import call_from_comment


class DemoError(Exception):
    """The demo cannot write where it was asked to; the message says why."""


def trace_programs(files: list[Path], tracing: TraceOptions) -> list[tuple[str, Trace, float]]:
    """(name, trace, seconds) for each program file, traced with its '# tracekit-call:' line."""
    results = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        start = time.perf_counter()
        real = path.resolve()  # run from its own file, as `tracekit trace` runs it
        result = run_trace(source, call_from_comment(source), None, tracing, str(real),
                           directory=str(real.parent))
        results.append((path.stem, result, time.perf_counter() - start))
    return results


DEMO_ROLLOUT_BUDGET = 2048  # tokens per free-running trace: a model that loops stops here


def output_directories(output: Path) -> tuple[Path, Path, Path]:
    """OUTPUT/dataset, OUTPUT/eval (teacher-forced) and OUTPUT/eval-rollout, emptied when an
    earlier demo made them; refused when something else is there."""
    directories = (output / "dataset", output / "eval", output / "eval-rollout")
    for directory, made_by_demo in zip(directories, ("manifest.json", "run.json", "run.json")):
        if directory.exists():
            if not (directory / made_by_demo).exists():
                raise DemoError(f"{directory} exists and is not a demo's output: choose another "
                                "--output")
            shutil.rmtree(directory)
    return directories


def build_dataset(programs: Path, dataset_dir: Path, tracing: TraceOptions) -> dict:
    """The programs' dataset (its build stats)."""
    return build(sources.python_files([programs]), dataset_dir, BuildOptions(tracing))


def evaluate_on(dataset_dir: Path, eval_dir: Path, spec: str, mode: str) -> tuple[dict, dict]:
    """(eval summary, eval run info) of `spec` on the dataset in `mode`. Raises EvalError or
    BackendError as `tracekit eval` does."""
    return evaluate(RunOptions(str(dataset_dir), mode, spec,
                               budget_tokens=DEMO_ROLLOUT_BUDGET), eval_dir)
