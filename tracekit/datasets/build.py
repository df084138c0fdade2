"""Trace datasets: trace many programs in the sandbox and write Parquet shards that
`datasets.load_dataset("parquet", data_dir=DIR)` loads, one row per program.

Crash safety: programs are split, in order, into fixed shards; shard k's rows go to
`train-k.parquet`, `validation-k.parquet` and `test-k.parquet` (by program hash; the names are
how `load_dataset` finds the splits), each written to a temporary file and renamed into
place, then the shard is recorded in `manifest.json` (also written by rename). `resume=True`
skips the shards the manifest lists, so a build killed at any moment (SIGKILL included) and
resumed has exactly the rows of an uninterrupted build. The manifest holds a fingerprint of the
programs and options; resuming a different build is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tracekit.datasets import episode_rows
from tracekit.datasets.files import (
    LOCK,
    MANIFEST,
    SPLITS,
    BuildError,
    BuildLock,
    check_shards,
)
from tracekit.datasets.rows import DatasetRow, parquet_schema, trace_row
from tracekit.execution import sandbox
from tracekit.execution.interpreters import SandboxUnavailable
from tracekit.format.trace import COMPLETE_STATUSES, Trace
from tracekit.killpoints import kill_point
from tracekit.programs import suites
from tracekit.programs.sources import Program
from tracekit.programs.suites import HarnessCheck, Suite, SuiteResult


@dataclass(frozen=True)
class BuildOptions:
    tracing: sandbox.TraceOptions = sandbox.TraceOptions()  # seed 0 (warm sandboxes need it)
    drop_failed: bool = False  # keep only complete traces (ok, raised, exited)
    max_tokens: int | None = None  # drop rows whose CWM text is longer
    dedup: bool = True  # exact dedup on context + call, first occurrence kept
    split: tuple[int, int, int] = (98, 1, 1)  # train / validation / test, by program hash
    shard_size: int = 500
    check_determinism: bool = False  # trace twice; keep a row only if both traces agree
    warm: bool = True  # one warm bubblewrap sandbox per worker (when bubblewrap works)
    max_context_tokens: int = 2048  # a project's file run as its module (doctest:,
    # realworld) is shortened past this around what ran, as tests: episodes are


ENGINES = ("local", "ray")


def build(programs: Iterable[Program | Suite], out: str | Path,
          options: BuildOptions = BuildOptions(), workers: int | None = None,
          resume: bool = False, progress: Callable[[int, Counter], None] | None = None,
          engine: str = "local", address: str | None = None) -> dict:
    """Trace `programs` into Parquet shards under `out`; return the stats (also stats.json).
    A `Suite` (the tests: source) is one test file whose run gives many rows, one per episode.
    `engine="ray"` traces on a Ray cluster (`address`; a local one when None) with the same
    rows: only the tracing moves there, shards and manifest are written here."""
    out = Path(out)
    programs = _dedup(list(programs)) if options.dedup else list(programs)
    fingerprint = _fingerprint(programs, options)
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} is a file: choose a directory for the dataset")
    with BuildLock(out):  # one build at a time in a directory
        return _build(programs, out, options, workers, resume, progress, engine, address,
                      fingerprint)


def _build(programs: list, out: Path, options: BuildOptions, workers: int | None, resume: bool,
           progress, engine: str, address: str | None, fingerprint: str) -> dict:
    manifest = _start(out, fingerprint, resume)
    shards = _shards(programs, options.shard_size)
    statuses: Counter = Counter(manifest["statuses"])
    filtered: Counter = Counter(manifest.get("filtered", {}))
    done = sum(len(shards[k]) for k in range(len(shards)) if _shard_name(k) in manifest["shards"])
    if engine not in ENGINES:
        raise BuildError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "ray":
        from tracekit.datasets.ray_engine import RayEngine

        tracers = RayEngine(options, workers, address)
    else:
        tracers = _Tracers(options, workers or os.cpu_count() or 1)
    if progress is not None:
        progress(done, statuses)  # the bar starts here, past the checks, at what is done
    with tracers:
        for k, shard in enumerate(shards):
            name = _shard_name(k)
            if name in manifest["shards"]:
                continue
            traces, same = _traced(tracers, shard, options, k)
            rows = _rows(shard, traces, same, options, manifest, statuses, filtered, tracers)
            files = _write_splits(out, k, rows, options)
            kill_point(f"written:{k}")  # the shard's files in place, not yet in the manifest
            manifest["shards"][name] = files
            manifest["statuses"] = dict(statuses)
            manifest["filtered"] = dict(filtered)
            _write_json(out / MANIFEST, manifest)
            kill_point(f"recorded:{k}")
            done += len(shard)
            if progress:
                progress(done, statuses)
    _check_suites(manifest)
    stats = _stats(out, manifest, len(programs), options)
    _write_json(out / "stats.json", stats)
    (out / "README.md").write_text(_card(stats), encoding="utf-8")
    return stats


def _traced(tracers, shard: list, options: BuildOptions, k: int) -> tuple[list, list[bool]]:
    """Shard k's traces, and whether each came out the same when traced again (with
    --check-determinism; else all True)."""
    traces = tracers.map(shard)
    kill_point(f"traced:{k}")
    if not options.check_determinism:
        return traces, [True] * len(shard)
    again = tracers.map(shard, again=True)  # in other processes (other addresses)
    # a test file's run keeps the episodes that came out the same both times
    same = [isinstance(a, SuiteResult) or _same(a, b) for a, b in zip(traces, again)]
    traces = [suites.repeated(a, b) if isinstance(a, SuiteResult) else a
              for a, b in zip(traces, again)]
    return traces, same


def _rows(shard: list, traces: list, same: list[bool], options: BuildOptions, manifest: dict,
          statuses: Counter, filtered: Counter, tracers) -> list[DatasetRow]:
    """The rows of a shard's traces (a test file's run gives one per episode), counting each
    status and each row dropped by why."""
    rows = []
    for program, trace, repeatable in zip(shard, traces, same):
        if isinstance(program, Suite):
            if trace.summary.get("status") == "no_pytest":
                raise BuildError(f"{trace.summary['error']}: install pytest there (and the "
                                 "project's dependencies), or pass --python an interpreter "
                                 "that has them")
            rows += episode_rows.suite_rows(program, trace, manifest, statuses, tracers)
            continue
        if program.module is not None:
            trace = episode_rows.shortened(trace, options.max_context_tokens)
        row = trace_row(program, trace)
        reason = _dropped(row, repeatable, options)
        if reason:
            filtered[reason] += 1
        else:
            rows.append(row)
        statuses[trace.status] += 1
    return rows


def _write_splits(out: Path, k: int, rows: list[DatasetRow],
                  options: BuildOptions) -> dict[str, int]:
    """Shard k's rows written as one Parquet file per split that has any: {file: rows}."""
    files = {}
    for split in SPLITS:
        part = [row for row in rows if _split_of(row.hash, options.split) == split]
        if part:  # files named by split: load_dataset makes the splits from them
            files[f"{split}-{k:05d}.parquet"] = len(part)
            _write_shard(out / f"{split}-{k:05d}.parquet", part)
    return files


SUITE_SHARD = 8  # test files per shard: a killed tests: build loses at most these runs
WARM_PER_THREAD = 8  # warm sandboxes a build thread keeps (one per set of visible directories)


def _shards(items: list, shard_size: int) -> list[list]:
    """Consecutive items, `shard_size` programs or SUITE_SHARD suites to a shard."""
    shards: list[list] = []
    for item in items:
        limit = min(SUITE_SHARD, shard_size) if isinstance(item, Suite) else shard_size
        last = shards[-1] if shards else None
        if last is None or len(last) >= limit or isinstance(last[0], Suite) != isinstance(
                item, Suite):
            shards.append([item])
        else:
            last.append(item)
    return shards


def _check_suites(manifest: dict) -> None:
    """A tests: build in which no test file ran and no episode was kept is an error, with
    the first reason."""
    stats = manifest.get("suites")
    if stats and not stats.get("test files", {}).get("ok") and not stats.get(
            "episodes", {}).get("kept"):
        first = next(iter(stats.get("errors", {}).items()), ("", "no test file ran"))
        raise BuildError(f"no test file of the project ran ({first[0]}: {first[1]}): "
                         "install the project's dependencies in the interpreter --python "
                         "names, or check the project's tests")


class _Tracers:
    """The local engine: a pool of threads, each keeping its own warm sandbox when bubblewrap
    works (a fork per program), else every program gets a fresh sandbox."""

    def __init__(self, options: BuildOptions, workers: int = 1):
        self.tracing = options.tracing
        self.pool = ThreadPoolExecutor(workers)
        self.warm = (options.warm and self.tracing.sandbox != "none"
                     and sandbox.bwrap_problem() is None)
        self.local = threading.local()
        self.opened: list[sandbox.WarmSandbox] = []
        self.lock = threading.Lock()

    def trace(self, program: Program | Suite | HarnessCheck, again: bool = False
              ) -> Trace | SuiteResult:
        """Trace one program, test file or harness; `again` in other warm sandboxes than the
        first time (--check-determinism: forks of one process share its addresses, so an
        id-based hash would come out the same)."""
        if isinstance(program, (Suite, HarnessCheck)):
            try:
                warm = self._warm((program.project,), True, again)
            except SandboxUnavailable:
                warm = None  # a fresh sandbox per run says why
            run = suites.run_suite if isinstance(program, Suite) else suites.run_harness
            return run(program, self.tracing, warm)
        filename = program.path or program.origin or "<tracekit>"
        if not self.warm:
            return sandbox.run_trace(program.source, program.call, program.entry, self.tracing,
                                     filename, program.module, program.sys_path,
                                     program.directory)
        own = (program.directory,) if program.directory else ()
        try:
            warm = self._warm((*program.sys_path, *own), again=again)
        except SandboxUnavailable as exc:
            return Trace(program.source, program.entry, program.call,
                         status="sandbox_unavailable", error=str(exc))
        return warm.trace(program.source, program.call, program.entry, filename,
                          program.module, program.sys_path, program.directory)

    def _warm(self, readable: tuple[str, ...], suite: bool = False, again: bool = False
              ) -> sandbox.WarmSandbox | None:
        """This thread's warm sandbox that sees `readable` (for `suite`: with pytest loaded
        and a writable workdir), or None without warm sandboxes."""
        if not self.warm:
            return None
        sandboxes = getattr(self.local, "sandboxes", None)
        if sandboxes is None:
            sandboxes = self.local.sandboxes = {}
        key = (readable, suite, again)
        if key not in sandboxes:
            if len(sandboxes) == WARM_PER_THREAD:  # programs in many directories: the
                sandboxes.pop(next(iter(sandboxes))).__exit__(None, None, None)  # oldest goes
            sandboxes[key] = sandbox.WarmSandbox(self.tracing, readable, suite, suite)
            with self.lock:
                self.opened.append(sandboxes[key])
        return sandboxes[key]

    def map(self, programs: list, again: bool = False) -> list:
        return list(self.pool.map(lambda program: self.trace(program, again), programs))

    def __enter__(self) -> _Tracers:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown()
        for warm in self.opened:
            warm.__exit__(None, None, None)


def _dropped(row: DatasetRow, repeatable: bool, options: BuildOptions) -> str | None:
    """Why a filter drops this row (None: kept)."""
    if options.drop_failed and row.status not in COMPLETE_STATUSES:
        return "failed"
    if options.max_tokens is not None and row.n_tokens > options.max_tokens:
        return "max_tokens"
    if not repeatable:
        return "nondeterministic"
    return None


def _same(a: Trace, b: Trace) -> bool:
    return (a.status, a.frames, a.return_value, a.error) == (b.status, b.frames,
                                                             b.return_value, b.error)


def _split_of(digest: int, split: tuple[int, int, int]) -> str:
    bucket = digest % sum(split)
    return SPLITS[0] if bucket < split[0] else SPLITS[1] if bucket < split[0] + split[1] \
        else SPLITS[2]


def _write_shard(path: Path, rows: list[DatasetRow]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([row.written() for row in rows], schema=parquet_schema())
    temporary = path.with_suffix(".tmp")
    pq.write_table(table, temporary)
    _fsync(temporary)
    kill_point(f"half-written:{path.stem}")  # a temporary file left behind
    os.replace(temporary, path)


def _dedup(programs: list[Program | Suite]) -> list[Program | Suite]:
    seen: set[tuple[str, str | None, str | None]] = set()
    kept = []
    for program in programs:
        if isinstance(program, Suite):
            kept.append(program)
            continue
        key = (program.source, program.entry, program.call)
        if key not in seen:
            seen.add(key)
            kept.append(program)
    return kept


def _fingerprint(programs: list[Program], options: BuildOptions) -> str:
    digest = hashlib.sha256(json.dumps(asdict(options), sort_keys=True).encode())
    for program in programs:
        digest.update(json.dumps(asdict(program), sort_keys=True).encode())
    return digest.hexdigest()


def _start(out: Path, fingerprint: str, resume: bool) -> dict:
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        if not resume:
            raise BuildError(f"{out} already holds a build: pass --resume to finish it, or "
                             "choose another output directory")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") != fingerprint:
            raise BuildError(f"{out} holds a build of other programs or options: resume with "
                             "the same sources and options, or choose another directory")
        for leftover in out.glob("*.tmp"):  # a file being written when the build was killed
            leftover.unlink()
        check_shards(out, manifest, "build it again into a new directory (the shards listed "
                     "cannot be resumed)", finished=False)
        return manifest
    if any(p.name != LOCK for p in out.iterdir()) and not resume:
        raise BuildError(f"{out} is not empty: choose a new output directory")
    return {"fingerprint": fingerprint, "shards": {}, "statuses": {}}


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"  # the manifest's name for shard k (its files: SPLIT-k.parquet)


def _write_json(path: Path, data: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
    _fsync(temporary)
    os.replace(temporary, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stats(out: Path, manifest: dict, programs: int, options: BuildOptions) -> dict:
    import pyarrow.parquet as pq

    frames, tokens, splits = [], [], Counter()
    for name in sorted(manifest["shards"]):
        for file, count in manifest["shards"][name].items():
            table = pq.read_table(out / file, columns=["n_frames", "n_tokens"])
            frames += table.column("n_frames").to_pylist()
            tokens += table.column("n_tokens").to_pylist()
            splits[file.split("-")[0]] += count
    return {"programs": programs, "rows": len(frames), "statuses": manifest["statuses"],
            "filtered": manifest.get("filtered", {}), **({"suites": manifest["suites"]}
                                                          if "suites" in manifest else {}),
            "splits": dict(splits), "frames": _distribution(frames),
            "tokens": _distribution(tokens), "options": asdict(options)}


def _distribution(values: list[int]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"min": ordered[0], "median": pick(0.5), "p90": pick(0.9), "p99": pick(0.99),
            "max": ordered[-1], "total": sum(ordered)}


def _card(stats: dict) -> str:
    statuses = "\n".join(f"| {s} | {n} |" for s, n in sorted(stats["statuses"].items()))
    frames, tokens = stats["frames"], stats["tokens"]
    files = "".join(f'  - split: {split}\n    path: "{split}-*.parquet"\n'
                    for split in SPLITS if stats["splits"].get(split))  # only splits with rows
    return f"""---
configs:
- config_name: default
  data_files:
{files}---
# CWM execution traces (built with tracekit)

{stats['rows']} rows from {stats['programs']} programs; one row per program, with the trace
as frames and as CWM wire text (`cwm`), its length in frames and in CWM tokens.

| status | programs |
|---|---|
{statuses}

Frames per row: median {frames.get('median')}, p90 {frames.get('p90')}, max {frames.get('max')}.
CWM tokens per row: median {tokens.get('median')}, p90 {tokens.get('p90')}, max {tokens.get('max')}.
Splits: {stats['splits']}. Rows dropped by filters: {stats['filtered'] or 'none'}.

Options: `{json.dumps(stats['options'])}`.
"""
