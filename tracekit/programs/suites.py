"""The `tests:DIR` source: function-level episodes cut from a project's own test suite.

Each test file of the project is one `Suite`, run with pytest in a fresh sandbox over a copy
of the project (`run_suite`; the child side is `tracer.suite`): every call of a function of
the project's own source files can become an episode, a trace of that call as `tracekit
trace` records the function called the same way (`tracer.episodes` says which calls and how
callees are stepped into). `tracekit.datasets.episode_rows` turns a suite's episodes into dataset
rows; `--check-harness` traces each row's harness (`run_harness`) and keeps the episode only
if the function's frames come out the same (`harness_verdict`). With `--check-determinism`
each test file runs twice, in other processes, and `repeated` keeps the episodes that came
out the same.

Which files: test files are pytest's defaults (`test_*.py`, `*_test.py`); the project's own
source files are every other `.py` file outside directories named tests/test/testing and
docs/doc, hidden directories, virtual environments and build output, but conftest.py,
setup.py and versioneer.py. The import roots are `src/` (when there is one) and the
project's directory, first on sys.path, so the project is importable from the copy without
being installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracekit.execution.sandbox import TraceOptions, WarmSandbox, run_lines

TEST_DIRS = frozenset({"tests", "test", "testing"})
NOT_SOURCE_DIRS = TEST_DIRS | {"docs", "doc"}
SKIPPED_DIRS = frozenset({"__pycache__", "venv", "build", "dist", "node_modules",
                          "site-packages"})
NOT_SOURCES = frozenset({"conftest.py", "setup.py", "versioneer.py"})


@dataclass(frozen=True)
class EpisodeOptions:
    """How episodes are cut (the `tests:` options of `dataset build`). The defaults give
    exactly `tracekit trace` of each call (every callee of the file stepped into); lower
    `step_in` or `max_depth` for CWM-like episodes that step over some callees."""

    per_function: int = 5  # episodes per function over the build, distinct arguments
    step_in: float = 1.0  # probability of stepping into a callee of the same file
    max_depth: int | None = None  # callees deeper than this below the entry are stepped over
    max_context_tokens: int = 2048  # longer file contexts have other functions' bodies elided
    check_harness: bool = False  # keep an episode only if its harness traces the same
    timeout: float = 300.0  # seconds per test file (the sandbox kills a hung one)


@dataclass(frozen=True)
class Suite:
    """One test file of a project: what one sandboxed pytest run covers."""

    id: str  # "tests:PROJECT/TEST_FILE"
    project: str  # the project's directory, absolute
    test_file: str  # under the project
    files: tuple[str, ...]  # the project's own source files, under the project
    roots: tuple[str, ...]  # import roots under the project ("src", ".")
    digest: str  # of every .py file of the project: a resumed build refuses a changed one
    settings: EpisodeOptions = EpisodeOptions()


@dataclass
class SuiteResult:
    episodes: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def tests_source(directory: str | Path, settings: EpisodeOptions = EpisodeOptions()
                 ) -> list[Suite]:
    """The suites of the project at `directory`, one per test file, in path order."""
    from tracekit.programs.sources import SourceError

    project = Path(directory).resolve()
    if not project.is_dir():
        raise SourceError(f"tests:{directory}: no such directory (give a project's checkout)")
    tests, sources = [], []
    for path in _python_files(project):
        relative = path.relative_to(project)
        if _is_test_file(relative):
            tests.append(relative.as_posix())
        elif path.name not in NOT_SOURCES and not NOT_SOURCE_DIRS & set(relative.parts[:-1]):
            sources.append(relative.as_posix())
    if not tests:
        raise SourceError(f"tests:{directory}: no test files (test_*.py or *_test.py) found")
    if not sources:
        raise SourceError(f"tests:{directory}: no source files outside the tests to cut "
                          "episodes from")
    digest = hashlib.sha256()
    for relative in sorted(tests + sources):
        digest.update(relative.encode() + b"\0" + (project / relative).read_bytes())
    roots = tuple(r for r in ("src", ".") if (project / r).is_dir())
    return [Suite(f"tests:{project.name}/{test}", str(project), test, tuple(sources), roots,
                  digest.hexdigest()[:16], settings) for test in tests]


def _python_files(project: Path):
    for path in sorted(project.rglob("*.py")):
        parts = path.relative_to(project).parts[:-1]
        if not any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info")
                   for p in parts):
            yield path


def _is_test_file(relative: Path) -> bool:
    name = relative.name
    return name.startswith("test_") or name.endswith("_test.py")


def run_suite(suite: Suite, options: TraceOptions, warm: WarmSandbox | None = None
              ) -> SuiteResult:
    """Run one test file over a fresh copy of the project (nothing is written back) in the
    sandbox, with the project's files visible read-only where it is installed editable; in
    `warm` (a sandbox with pytest loaded and its workdir writable) when given. Under
    bubblewrap the copy is at the same path in every run, so that reprs of its paths are."""
    settings = suite.settings
    options = replace(options, limits=replace(options.limits, timeout=settings.timeout))
    name = Path(suite.project).name

    def request(work: str | None) -> dict:
        copy = Path(work) / name
        files = {str(copy / f): f for f in suite.files}
        files.update({str(Path(suite.project) / f): f for f in suite.files})  # editable
        return {"kind": "suite", "project": str(copy), "test_file": suite.test_file,
                "roots": [str(copy / r) for r in suite.roots], "files": files,
                "per_function": settings.per_function, "step_in": settings.step_in,
                "max_depth": settings.max_depth}

    scratch = (contextlib.nullcontext(warm.workdir) if warm is not None
               else tempfile.TemporaryDirectory(prefix="tracekit-project-"))
    with scratch as workdir:
        work = Path(workdir)
        shutil.copytree(suite.project, work / name, symlinks=True,
                        ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info"))
        try:
            if warm is not None:
                lines, summary, _, stderr = warm.lines(request, options)
            else:
                lines, summary, _, stderr = run_lines(request, options, (suite.project,),
                                                      str(work))
        finally:
            shutil.rmtree(work / name, ignore_errors=True)
    if summary.get("status") not in ("ok", None) and not summary.get("error"):
        summary["error"] = stderr.strip().splitlines()[-1][:300] if stderr.strip() else None
    return SuiteResult([line["episode"] for line in lines], summary)


@dataclass(frozen=True)
class HarnessCheck:
    """A harness program to trace: does the function's episode come out as recorded?"""

    project: str
    file: str
    module: str
    roots: tuple[str, ...]
    key: tuple  # (file, first line, name): the function whose episode is compared
    source: str
    step_in: float
    max_depth: int | None


def run_harness(check: HarnessCheck, options: TraceOptions,
                warm: WarmSandbox | None = None) -> SuiteResult:
    project = Path(check.project)

    def request(work: str | None) -> dict:
        return {"kind": "harness", "source": check.source,
                "filename": str(project / check.file), "module": check.module,
                "roots": [str(project / r) for r in check.roots],
                "files": {str(project / check.file): check.file}, "wanted": list(check.key),
                "per_function": 1, "step_in": check.step_in, "max_depth": check.max_depth}

    if warm is not None:
        lines, summary, _, _ = warm.lines(request, options)
    else:
        lines, summary, _, _ = run_lines(request, options, (check.project,))
    return SuiteResult([line["episode"] for line in lines], summary)


def repeated(first: SuiteResult, second: SuiteResult) -> SuiteResult:
    """The first run's episodes that the second run recorded the same (--check-determinism:
    an id-based hash, the time, an unseeded random generator make an episode differ); the
    others are counted as dropped, "nondeterministic"."""
    again = {json.dumps(e, sort_keys=True) for e in second.episodes}
    same = [json.dumps(e, sort_keys=True) in again for e in first.episodes]
    kept = [e for e, s in zip(first.episodes, same) if s]
    summary = {**first.summary, "dropped": dict(first.summary.get("dropped", {}))}
    if len(kept) < len(first.episodes):
        summary["dropped"]["nondeterministic"] = len(first.episodes) - len(kept)
    paths = first.summary.get("harness", {})
    positions = [i for i, s in enumerate(same) if s]
    summary["harness"] = {str(n): paths[str(i)] for n, i in enumerate(positions)
                          if str(i) in paths}
    return SuiteResult(kept, summary)


def harness_verdict(episode: dict, result: SuiteResult) -> str | None:
    """None when the harness traced the function as the episode recorded it, else why not."""
    if not result.episodes:
        status = result.summary.get("status")
        return "no episode" if status == "ok" else status or "crashed"
    again = result.episodes[0]
    if again["status"] != episode["status"]:
        return "status differs"
    return None if _plain(again["frames"]) == _plain(episode["frames"]) else "frames differ"


def _plain(frames: list) -> list:
    return json.loads(json.dumps(frames))
