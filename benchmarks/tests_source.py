"""The tests: source on a real project: its suite run bare (one pytest process, no tracing)
and through `tracekit dataset build tests:DIR` (every test file in its own sandbox, episodes
recorded), in one run; the ratio of their wall times, episodes per second, and how many of the
project functions its tests call got an episode, those calls counted independently (a
`sys.setprofile` plugin over the bare run that shares no code with the tracer). With
--check-harness, a second build says how many harnesses trace the same.

    pip download --no-deps --no-binary :all: more-itertools==10.5.0
    tar xzf more-itertools-10.5.0.tar.gz
    python benchmarks/tests_source.py more-itertools-10.5.0 [--check-harness] [--workers 2]
    python benchmarks/tests_source.py more-itertools-10.5.0 --kill-check

--kill-check instead builds the project's episodes with `tracekit dataset build
--check-determinism` (one test file per shard; each run twice, the episodes that came out the
same both times kept: an id-based hash or an unseeded random generator differs from run to
run), SIGKILLs it twice at named points (after tracing the first shard, with the
last shard's files written but not yet recorded), resumes, and compares the rows with an
uninterrupted build's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.datasets import build as dataset  # noqa: E402
from tracekit.datasets.episode_rows import FunctionIndex  # noqa: E402
from tracekit.datasets.files import load_rows  # noqa: E402
from tracekit.execution.sandbox import bwrap_problem  # noqa: E402
from tracekit.programs import sources  # noqa: E402
from tracekit.programs.suites import EpisodeOptions  # noqa: E402

# Loaded by the bare run with `-p`: every call of a function or method (not a lambda,
# comprehension or class body) of the project's source files while a test runs.
PROFILE_PLUGIN = '''
import json, os, sys
FILES = set(json.loads(os.environ["TRACEKIT_BENCH_FILES"]))
CALLED = set()
def _profile(frame, event, arg):
    if event == "call":
        code = frame.f_code
        if code.co_filename in FILES and code.co_flags & 1 and not code.co_name.startswith("<"):
            CALLED.add((code.co_filename, code.co_firstlineno, code.co_name))
def pytest_runtest_logstart(nodeid, location):
    sys.setprofile(_profile)
def pytest_runtest_logfinish(nodeid, location):
    sys.setprofile(None)
def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["TRACEKIT_BENCH_OUT"], "w") as out:
        json.dump(sorted(CALLED), out)
'''


def bare_run(project: Path, suites: list, python: str, profile: bool) -> tuple[float, set]:
    """Wall seconds of the whole suite in one pytest process over a copy of the project, and
    (with `profile`) the (file, first line, name) of every project function its tests call."""
    with tempfile.TemporaryDirectory(prefix="tracekit-bare-") as work:
        copy = Path(work) / project.name
        shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        (Path(work) / "tracekit_bench_profile.py").write_text(PROFILE_PLUGIN)
        roots = [str(copy / r) for r in suites[0].roots]
        files = {str(copy / f): f for f in suites[0].files}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*roots, work]),
               "TRACEKIT_BENCH_FILES": json.dumps(list(files)),
               "TRACEKIT_BENCH_OUT": str(Path(work) / "called.json"),
               "PYTHONDONTWRITEBYTECODE": "1"}
        tests = sorted({s.test_file for s in suites})
        command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                   *(["-p", "tracekit_bench_profile"] if profile else []), *tests]
        start = time.perf_counter()
        subprocess.run(command, cwd=copy, env=env, capture_output=True)
        seconds = time.perf_counter() - start
        called = set()
        if profile:
            called = {(files[f], line, name)
                      for f, line, name in json.loads((Path(work) / "called.json").read_text())}
    return seconds, called


def traced_run(project: Path, settings: EpisodeOptions, workers: int, python: str
               ) -> tuple[float, dict, list[dict]]:
    from tracekit.execution.sandbox import TraceOptions

    suites = list(sources.from_specs([f"tests:{project}"], episodes=settings))
    with tempfile.TemporaryDirectory(prefix="tracekit-bench-") as work:
        start = time.perf_counter()
        stats = dataset.build(suites, Path(work) / "ds",
                              dataset.BuildOptions(TraceOptions(python=python)), workers)
        seconds = time.perf_counter() - start
        rows = load_rows(Path(work) / "ds", columns=["file", "function"])
    return seconds, stats, rows


def kill_check(project: Path, workers: int) -> None:
    import signal

    from tracekit.killpoints import ENV

    command = [sys.executable, "-m", "tracekit.cli", "dataset", "build", f"tests:{project}",
               "--shard-size", "1", "--workers", str(workers), "--check-determinism"]
    shards = len(list(sources.from_specs([f"tests:{project}"])))
    with tempfile.TemporaryDirectory(prefix="tracekit-kill-") as work:
        whole, killed = Path(work) / "whole", Path(work) / "killed"
        subprocess.run([*command, "-o", str(whole)], check=True, capture_output=True)
        for point in ("traced:0", f"written:{shards - 1}"):
            run = subprocess.run([*command, "-o", str(killed), "--resume"], capture_output=True,
                                 env={**os.environ, ENV: point}, check=False)
            print(f"  killed at {point}: exit {run.returncode} "
                  f"({'SIGKILL' if run.returncode == -signal.SIGKILL else 'NOT KILLED'})")
        subprocess.run([*command, "-o", str(killed), "--resume"], check=True,
                       capture_output=True)
        same = load_rows(killed) == load_rows(whole)
        print(f"{project.name}: {len(load_rows(whole))} rows; killed twice and "
              f"resumed: {'the same rows' if same else 'DIFFERENT ROWS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--per-function", type=int, default=5)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--check-harness", action="store_true")
    parser.add_argument("--kill-check", action="store_true")
    args = parser.parse_args()
    project = args.project.resolve()
    if args.kill_check:
        kill_check(project, args.workers)
        return
    suites = list(sources.from_specs([f"tests:{project}"]))
    print(f"{platform.node() or 'machine'}: Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; {project.name}: "
          f"{len(suites)} test files, {len(suites[0].files)} source files; sandbox: "
          f"{'bwrap' if not bwrap_problem() else 'rlimits only'}; workers {args.workers}")
    bare, _ = bare_run(project, suites, args.python, profile=False)
    settings = EpisodeOptions(per_function=args.per_function)
    traced, stats, rows = traced_run(project, settings, args.workers, args.python)
    _, called = bare_run(project, suites, args.python, profile=True)
    episodes = len(rows)
    print(f"bare suite {bare:.1f} s; tests: build {traced:.1f} s = {traced / bare:.2f}x; "
          f"{episodes} episodes, {episodes / traced:.1f} episodes/s")
    print(f"  {json.dumps(stats['suites'].get('test files'))}, tests "
          f"{json.dumps(stats['suites'].get('tests'))}, dropped "
          f"{json.dumps(stats['suites'].get('episodes dropped'))}")
    with_episodes = {(row["file"], row["function"]) for row in rows}
    indexes: dict[str, FunctionIndex] = {}
    covered, missed = 0, []
    for path, line, name in sorted(called):
        if path not in indexes:
            indexes[path] = FunctionIndex((project / path).read_text(encoding="utf-8"))
        qualname = indexes[path].defs.get((line, name), (name,))[0]
        if (path, qualname) in with_episodes:
            covered += 1
        else:
            missed.append(f"{path}:{qualname}")
    share = covered / max(len(called), 1)
    print(f"project functions the tests call (setprofile): {len(called)}; with an episode: "
          f"{covered} ({share:.0%})" + (f"; without: {', '.join(missed[:12])}"
                                        + (" ..." if len(missed) > 12 else "") if missed else ""))
    if args.check_harness:
        checked = EpisodeOptions(per_function=args.per_function, check_harness=True)
        _, stats, rows = traced_run(project, checked, args.workers, args.python)
        checks = stats["suites"].get("harness check", {})
        tried = sum(n for why, n in checks.items() if why != "no harness")
        print(f"--check-harness: {json.dumps(checks)}; passed {checks.get('passed', 0)} of "
              f"{tried} harnesses ({checks.get('passed', 0) / max(tried, 1):.0%}); "
              f"{len(rows)} rows kept")


if __name__ == "__main__":
    main()
