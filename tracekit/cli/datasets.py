"""`tracekit dataset build|stats|show`: trace many programs into a Parquet dataset."""

from __future__ import annotations

import time
from pathlib import Path

import click

from tracekit.cli.common import (
    Failure,
    exit_help,
    print_error,
    progress_bar,
    resume_option,
    tracing_options,
)
from tracekit.cli.exits import EXIT_DATA
from tracekit.cli.pretty import print_trace

DIRECTORY = click.Path(exists=True, file_okay=False, path_type=Path)


@click.group()
def dataset() -> None:
    """Build trace datasets (Parquet, loadable with datasets.load_dataset) and look inside."""


@dataset.command("build", epilog=exit_help(0, 2, 8, 130))
@click.argument("specs", nargs=-1, required=True, metavar="SOURCE...")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="Directory for the Parquet shards, stats.json and README.md.")
@resume_option("Finish a build that was interrupted (same sources and options).")
@click.option("--workers", type=click.IntRange(min=1), help="Programs traced at once. "
              "Default: all cores.")
@click.option("--call", metavar="EXPR", help="Call for .py sources without a call line.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Drop rows longer in CWM tokens.")
@click.option("--drop-failed", is_flag=True, help="Keep complete traces only (ok, raised, "
              "exited); by default every program gets a row with its status.")
@click.option("--skip-bad-rows", is_flag=True, help="A .jsonl row that names no program "
              "properly (file:line), or a .py file that cannot be read as Python source, is "
              "reported, skipped and counted; by default it stops the build.")
@click.option("--no-dedup", is_flag=True, help="Keep exact duplicates (context + call).")
@click.option("--check-determinism", is_flag=True, help="Trace every program twice and keep "
              "only traces that came out the same (tests: each test file's episodes).")
@click.option("--split", default="98,1,1", show_default=True, metavar="TRAIN,VAL,TEST",
              help="Split weights, by program hash.")
@click.option("--shard-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--synthetic-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Statements per body for synthetic:N sources.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="ray: trace as Ray tasks on a Ray cluster (pip install "
              "'tracekit[ray]'); the same rows as local.")
@click.option("--address", metavar="HOST:PORT", help="With --engine ray: the cluster to join "
              "(default: start a local one). Its nodes need tracekit installed.")
@click.option("--per-function", type=click.IntRange(min=1), default=5, show_default=True,
              help="tests: at most this many episodes per function (distinct arguments, the "
              "first met in test-file order).")
@click.option("--step-in", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="tests: probability of stepping into a callee of the same file (else it "
              "is stepped over, as a debugger's next). 1 gives what `tracekit trace` gives.")
@click.option("--max-depth", type=click.IntRange(min=0), default=None,
              help="tests: callees deeper than this below the episode's function are stepped "
              "over. Default: no limit.")
@click.option("--max-context-tokens", type=click.IntRange(min=64), default=2048,
              show_default=True, help="tests:, doctest:, realworld: a longer file context "
              "has the functions the trace did not run elided to '...'.")
@click.option("--check-harness", is_flag=True, help="tests: trace each episode's harness "
              "program and keep the episode only if the function's frames come out the same "
              "(drops functions that depend on state a test set up, and those without one).")
@tracing_options
def build(specs, out, resume, workers, call, max_tokens, drop_failed, skip_bad_rows, no_dedup,
          check_determinism, split, shard_size, synthetic_size, engine, address, per_function,
          step_in, max_depth, max_context_tokens, check_harness, tracing) -> None:
    """Trace every program of SOURCE... in the sandbox into a Parquet dataset.

    \b
    SOURCE: tests:DIR (the test suite of the project at DIR, run with pytest in the sandbox:
    one row per episode, a call of one of the project's functions; --python names an
    interpreter with pytest and the project's dependencies; --timeout is per test file, 300 s
    unless given), doctest:PATH_OR_MODULE (docstring examples that call the module's code),
    a .py file or a directory of them, a .jsonl file (rows with code and call, or code, entry
    and args; or CRUXEval rows), cruxeval (CRUXEval's 800 rows, shipped with tracekit),
    realworld (the real-code evaluation set, shipped), humaneval (each also as NAME:COUNT,
    its first COUNT programs), synthetic:COUNT[:SEED],
    basic:COUNT[:SEED] (short everyday functions), loops:COUNT[:SEED] (their loops) or
    methods:COUNT[:SEED] (chains of str/list/dict methods).

    \b
    tracekit dataset build data/programs -o traces/
    tracekit dataset build tests:inflection-0.5.1/ -o inflection/ --check-harness
    tracekit dataset build doctest:fractions realworld -o real/
    tracekit dataset build cruxeval synthetic:10000:1 -o traces/ --drop-failed
    tracekit dataset build cruxeval:50 -o sample/
    tracekit dataset build synthetic:1000000 -o traces/ --engine ray --address HEAD:6379
    """
    from tracekit.datasets import build as datasets
    from tracekit.programs import sources

    options = datasets.BuildOptions(tracing, drop_failed=drop_failed, max_tokens=max_tokens,
                                    dedup=not no_dedup, split=_split_weights(split),
                                    shard_size=shard_size, check_determinism=check_determinism,
                                    max_context_tokens=max_context_tokens)
    bad: list[str] = []  # the rows and files skipped (--skip-bad-rows)
    try:
        episodes = _episode_options(per_function, step_in, max_depth, max_context_tokens,
                                    check_harness, tracing)
        programs = _programs(specs, call, synthetic_size, bad if skip_bad_rows else None,
                             episodes)
        stats = _traced(programs, out, options, workers, resume, engine, address)
    except (sources.SourceError, datasets.BuildError) as exc:
        raise Failure("dataset", str(exc), EXIT_DATA) from None
    _print_built(stats, out, bad)


def _split_weights(split: str) -> tuple[int, int, int]:
    try:
        weights = tuple(int(w) for w in split.split(","))
        assert len(weights) == 3 and min(weights) >= 0 and sum(weights) > 0
    except (ValueError, AssertionError):
        raise click.BadParameter("three non-negative integers, e.g. 98,1,1",
                                 param_hint="--split") from None
    return weights


def _episode_options(per_function, step_in, max_depth, max_context_tokens, check_harness,
                     tracing):
    """The tests: source's options; its --timeout is per test file, EpisodeOptions' own
    default unless --timeout is given."""
    from tracekit.programs.suites import EpisodeOptions

    timeout_given = click.get_current_context().get_parameter_source("timeout") not in (
        None, click.core.ParameterSource.DEFAULT)
    return EpisodeOptions(per_function, step_in, max_depth, max_context_tokens, check_harness,
                          tracing.limits.timeout if timeout_given else EpisodeOptions.timeout)


def _programs(specs, call, synthetic_size, bad: list[str] | None, episodes) -> list:
    """Every program of the specs; with `bad`, a row or file that names no program is
    reported, added to it and skipped (else it stops the build)."""
    from tracekit.programs import sources

    def skip(message: str) -> None:
        bad.append(message)
        print_error("skipped", message, "yellow")
    programs = list(sources.from_specs(specs, call, synthetic_size,
                                       skip if bad is not None else None, episodes))
    if not programs:
        raise sources.SourceError(
            f"nothing to trace in {' '.join(specs)}: give programs (tests:DIR, doctest:PATH, "
            "FILE.py, DIR, FILE.jsonl, cruxeval, realworld, humaneval, synthetic:N, "
            "basic:N, loops:N, methods:N)")
    return programs


def _traced(programs, out, options, workers, resume, engine, address) -> dict:
    """Build the dataset under a progress bar (programs/s and the statuses so far)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from tracekit.datasets import build as datasets

    with progress_bar(TextColumn("tracing"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]} programs/s  {task.fields[statuses]}"),
                      TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task("build", total=len(programs), rate="-", statuses="")
        started = time.monotonic()

        def progress(done, statuses):
            rate = done / max(time.monotonic() - started, 1e-9)
            shown = " ".join(f"{s}={n}" for s, n in statuses.most_common())
            bar.update(task, completed=done, rate=f"{rate:.0f}", statuses=shown)

        return datasets.build(programs, out, options, workers, resume, progress, engine,
                              address)


def _print_built(stats: dict, out: Path, bad: list[str]) -> None:
    """What a build made: its test files' errors and counts, then one line of rows."""
    dropped = stats.get("filtered") or {}
    if "suites" in stats:
        for test_file, error in stats["suites"].get("errors", {}).items():
            print_error("test file", f"{test_file}: {error}", "yellow")
        click.echo(suites_line(stats["suites"]))
    files = sum(stats.get("suites", {}).get("test files", {}).values())
    items = " and ".join(part for part in (
        f"{stats['programs'] - files} programs" if stats["programs"] > files else "",
        f"{files} test file{'s' if files != 1 else ''}" if files else "")
        if part) or "0 programs"
    click.echo(f"{stats['rows']} rows from {items} in {out} "
               f"({', '.join(f'{s} {n}' for s, n in sorted(stats['statuses'].items()))})"
               + (f"; dropped: {', '.join(f'{n} {DROPPED[why]}' for why, n in dropped.items())}"
                  if dropped else "")
               + (f"; skipped: {len(bad)} bad rows or files (--skip-bad-rows)" if bad else ""))


def suites_line(suites: dict) -> str:
    """One line of a tests: build's stats: test files, tests, episodes, harness checks."""
    def counts(group: str) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(suites.get(group, {}).items()))

    files = sum(suites.get("test files", {}).values())
    parts = [f"tests: {files} test files ({counts('test files')})",
             f"tests {counts('tests') or 'none ran'}", f"episodes {counts('episodes')}"]
    for group in ("episodes dropped", "harness check"):
        if suites.get(group):
            parts.append(f"{group}: {counts(group)}")
    if suites.get("other tracer active in"):
        files = suites["other tracer active in"]["test files"]
        parts.append(f"a tracer was already set in {files} test files (coverage?): set aside "
                     "during each test, put back after it")
    if suites.get("tracer replaced in"):
        parts.append(f"the suite replaced tracekit's tracer in {suites['tracer replaced in'][0]} "
                     f"(and {len(suites['tracer replaced in']) - 1} more): its episodes there "
                     "are missing")
    return "; ".join(parts)


DROPPED = {"failed": "failed (--drop-failed)", "max_tokens": "longer than --max-tokens",
           "nondeterministic": "not repeatable (--check-determinism)"}


@dataset.command("stats", epilog=exit_help(0, 2, 8))
@click.argument("directory", type=DIRECTORY)
def stats(directory: Path) -> None:
    """Print a built dataset's stats.json, once its shards are checked against its manifest
    (each listed file there, readable, with its rows; no other shard file)."""
    import json

    from tracekit.datasets.files import MANIFEST, BuildError, check_shards

    path = directory / "stats.json"
    if not path.exists():
        raise Failure("dataset", f"{path} is missing: the build has not finished (finish it "
                                 "with --resume)", EXIT_DATA)
    try:
        check_shards(directory, json.loads((directory / MANIFEST).read_text()),
                     "build the dataset again")
    except (BuildError, OSError, ValueError) as exc:
        raise Failure("dataset", str(exc) if isinstance(exc, BuildError) else
                      f"{directory / MANIFEST}: cannot read it: build the dataset again",
                      EXIT_DATA) from None
    click.echo(path.read_text(encoding="utf-8"))


@dataset.command("show", epilog=exit_help(0, 2, 8))
@click.argument("directory", type=DIRECTORY)
@click.option("--id", "program_id", required=True, help="The row's id.")
def show(directory: Path, program_id: str) -> None:
    """Print one row's trace, readable."""
    import pyarrow.dataset as ds

    from tracekit.datasets.rows import row_trace

    try:
        table = ds.dataset(sorted(str(p) for p in directory.glob("*-*.parquet")),
                           format="parquet")
        rows = table.to_table(filter=ds.field("id") == program_id).to_pylist()
    except (OSError, ValueError) as exc:  # Arrow's errors (a truncated shard) derive from these
        raise Failure("dataset", f"{directory}: cannot read its shards ("
                      f"{str(exc).split('. ')[0][:160]}): build the dataset again",
                      EXIT_DATA) from None
    if not rows:
        raise Failure("dataset", f"no row with id {program_id!r} in {directory}", EXIT_DATA)
    print_trace(row_trace(rows[0]))
