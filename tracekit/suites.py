"""The `tests:DIR` source: function-level episodes cut from a project's own test suite.

Each test file of the project is one `Suite`, run with pytest in a fresh sandbox over a copy
of the project (`run_suite`; the child side is `tracer.suite`): every call of a function of
the project's own source files can become an episode, a trace of that call as `tracekit
trace` records the function called the same way (`tracer.episodes` says which calls and how
callees are stepped into). `episode_rows` turns a suite's episodes into dataset rows: at most
`per_function` per function over the whole build, the context (the function's file with the
marker on its `def`, shortened past `max_context_tokens`), and a harness program where every
argument's repr evaluates back. `--check-harness` traces each harness (`run_harness`) and
keeps the episode only if the function's frames come out the same.

Which files: test files are pytest's defaults (`test_*.py`, `*_test.py`); the project's own
source files are every other `.py` file outside directories named tests/test/testing and
docs/doc, hidden directories, virtual environments and build output, but conftest.py,
setup.py and versioneer.py. The import roots are `src/` (when there is one) and the
project's directory, first on sys.path, so the project is importable from the copy without
being installed.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from tracekit.sandbox import TraceOptions, WarmSandbox, run_lines
from tracekit.trace import Trace
from tracekit.tracer.constants import MARKER, MAX_EPISODE_BYTES
from tracekit.tracer.context import normalize_newlines

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
    from tracekit.sources import SourceError

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
    `warm` (a sandbox with pytest loaded and its workdir writable) when given."""
    settings = suite.settings
    options = replace(options, limits=replace(options.limits, timeout=settings.timeout))
    with tempfile.TemporaryDirectory(prefix="tracekit-project-",
                                     dir=warm.workdir if warm else None) as workdir:
        copy = Path(workdir) / Path(suite.project).name
        shutil.copytree(suite.project, copy, symlinks=True,
                        ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info"))
        files = {}
        for base in (copy, Path(suite.project)):  # an editable install runs the original
            files.update({str(base / f): f for f in suite.files})
        request = {"kind": "suite", "project": str(copy), "test_file": suite.test_file,
                   "roots": [str(copy / r) for r in suite.roots], "files": files,
                   "per_function": settings.per_function, "step_in": settings.step_in,
                   "max_depth": settings.max_depth}
        if warm is not None:
            lines, summary, _, stderr = warm.lines(request, options)
        else:
            lines, summary, _, stderr = run_lines(request, options, (suite.project,), str(copy))
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
    request = {"kind": "harness", "source": check.source, "filename": str(project / check.file),
               "module": check.module, "roots": [str(project / r) for r in check.roots],
               "files": {str(project / check.file): check.file}, "wanted": list(check.key),
               "per_function": 1, "step_in": check.step_in, "max_depth": check.max_depth}
    if warm is not None:
        lines, summary, _, _ = warm.lines(request, options)
    else:
        lines, summary, _, _ = run_lines(request, options, (check.project,))
    return SuiteResult([line["episode"] for line in lines], summary)


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


# ---------------------------------------------------------------------------------------------
# Episodes into rows


class FunctionIndex:
    """The `def`s of one project file: qualified names, marked and shortened contexts.

    A context's length is estimated as the sum of its lines' CWM tokens (each line counted
    once per file): 1-3% over the exact count on the files measured, never under. Past the
    budget, the bodies of the functions no frame of the episode is in become `...` (their
    signatures, the imports, class headers and other module-level code stay); still past it,
    those functions go whole, each run of them one `...` line."""

    def __init__(self, source: str):
        self.source = source
        self.lines = source.split("\n")
        self.tree = ast.parse(source)
        self.defs: dict[tuple[int, str], tuple[str, ast.AST]] = {}
        self._walk(self.tree.body, "")
        self.nodes = sorted((node for _, node in self.defs.values()), key=lambda n: n.lineno)
        self._line_tokens: dict[str, int] = {}
        self._contexts: dict = {}

    def _walk(self, body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                self.defs[(first, node.name)] = (prefix + node.name, node)
                self._walk(node.body, f"{prefix}{node.name}.<locals>.")
            elif isinstance(node, ast.ClassDef):
                self._walk(node.body, f"{prefix}{node.name}.")
            elif hasattr(node, "body"):  # if/try/with blocks at any level
                for block in ("body", "orelse", "finalbody", "handlers"):
                    self._walk(getattr(node, block, []) or [], prefix)

    def tokens(self, lines: list[str]) -> int:
        from tracekit.tokenizer import cwm_tokenizer

        total, cache = 0, self._line_tokens
        for line in lines:
            n = cache.get(line)
            if n is None:
                n = cache[line] = len(cwm_tokenizer().encode_plain(line + "\n"))
            total += n
        return total

    def context(self, node: ast.AST | None, touched: frozenset[int], budget: int
                ) -> tuple[str, dict[int, int], bool]:
        """The file with the marker on `node`'s def line (None: it has its marker, as a
        harness has), shortened past `budget` tokens around the functions `touched` lines
        are in. Returns the context, old line to new line, and whether it fits the budget."""
        lines = list(self.lines)
        marked = node.lineno if node is not None else 0
        if node is not None:
            lines[marked - 1] += MARKER
        if (marked, budget) not in self._contexts:
            self._contexts[marked, budget] = self.tokens(lines) <= budget
        if self._contexts[marked, budget]:
            return "\n".join(lines), {n: n for n in range(1, len(lines) + 1)}, True
        key = (marked, touched, budget)
        if key not in self._contexts:
            kept = self._kept(touched | {marked})
            for whole in (False, True):
                text_lines, line_map = self._elide(lines, kept, touched, whole)
                fits = self.tokens(text_lines) <= budget
                if fits:
                    break
            self._contexts[key] = ("\n".join(text_lines), line_map, fits)
        return self._contexts[key]

    def _kept(self, touched: set[int]) -> list[ast.AST]:
        """The functions a touched line is in (and those around them)."""
        lines = sorted(touched)
        kept = []
        for node in self.nodes:
            i = bisect.bisect_left(lines, node.lineno)
            if i < len(lines) and lines[i] <= node.end_lineno:
                kept.append(node)
        return kept

    def _elide(self, lines: list[str], kept: list[ast.AST], touched: frozenset[int],
               whole: bool) -> tuple[list[str], dict[int, int]]:
        """`lines` with every function outside `kept` (and not inside one) cut to `...`:
        its body, or with `whole` all of it and every module- or class-level statement of
        three lines or more (`NAME = ...` for an assignment), a run of cuts one line."""
        cuts: dict[int, tuple[int, str]] = {}  # first line cut -> (last line, what stays)
        last_end = 0
        for node in self.nodes:
            if node.lineno <= last_end or node in kept or any(
                    k.lineno <= node.lineno <= k.end_lineno for k in kept):
                continue
            if whole:
                start = min([d.lineno for d in node.decorator_list] + [node.lineno])
            else:
                first = node.body[0]
                start = min([d.lineno for d in getattr(first, "decorator_list", [])]
                            + [first.lineno])
                if start == node.lineno:
                    continue  # a one-line def
            cuts[start] = (node.end_lineno, _indent(lines[start - 1]) + "...")
            last_end = node.end_lineno
        if whole:
            for node in self._long_statements(self.tree.body, kept, touched):
                target = node.targets[0] if isinstance(node, ast.Assign) else None
                name = f"{target.id} = " if isinstance(target, ast.Name) else ""
                cuts[node.lineno] = (node.end_lineno,
                                     f"{_indent(lines[node.lineno - 1])}{name}...")
        out: list[str] = []
        line_map: dict[int, int] = {}
        n = 1
        while n <= len(lines):
            if n in cuts:
                n, placeholder = cuts[n][0] + 1, cuts[n][1]
                if not (whole and out and out[-1] == placeholder):
                    out.append(placeholder)
                if whole:  # blank lines between cuts go with them; one stays before code
                    while n <= len(lines) and not lines[n - 1].strip():
                        n += 1
                    if n <= len(lines) and n not in cuts:
                        out.append("")
                continue
            out.append(lines[n - 1])
            line_map[n] = len(out)
            n += 1
        return out, line_map

    def _long_statements(self, body: list, kept: list[ast.AST], touched: frozenset[int]):
        """Statements of three lines or more at module or class level, not imports or
        definitions, with no kept function or line run in them (class bodies too)."""
        for node in body:
            if isinstance(node, ast.ClassDef):
                yield from self._long_statements(node.body, kept, touched)
            elif (isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr))
                  and node.end_lineno - node.lineno >= 2
                  and not any(node.lineno <= k.lineno <= node.end_lineno for k in kept)
                  and not any(node.lineno <= t <= node.end_lineno for t in touched)):
                yield node


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def call_text(qualname: str, params: list, args: dict, kind: str) -> str:
    """The call of the function with the arguments' reprs, as the harness writes it."""
    order = {"pos": 0, "var": 1, "kw": 2, "varkw": 3}
    parts = []
    for name, how in sorted(params, key=lambda p: order[p[1]]):
        if name in args:
            text = args[name]
            parts.append({"pos": text, "var": f"*{text}", "kw": f"{name}={text}",
                          "varkw": f"**{text}"}[how])
    call = f"{qualname}({', '.join(parts)})"
    return f"list({call})" if kind == "generator" else call


def harness_program(source: str, call: str) -> str:
    """The file's source and a CRUXEval-style entry that makes the call."""
    return f"{source.rstrip()}\n\n\ndef main():{MARKER}\n    return {call}\n"


def function_key(episode: dict) -> str:
    return f"{episode['file']}:{episode['line']}:{episode['name']}"


def episode_rows(suite: Suite, result: SuiteResult, seen: dict[str, list[str]],
                 counts: dict[str, int]) -> list[tuple[dict, dict]]:
    """(row, episode) for each of the suite's episodes kept: at most `per_function` per
    function over the build (`seen`: function key -> the argument digests taken so far, kept
    across shards), under MAX_EPISODE_BYTES of wire text; `counts` gets the others, by why."""
    from tracekit.cwm import prompt_text
    from tracekit.dataset import trace_row
    from tracekit.sources import Program
    from tracekit.trace import Frame

    settings = suite.settings
    evaluable = set(result.summary.get("harness", []))
    python = result.summary.get("python", "")
    indexes: dict[str, FunctionIndex | None] = {}
    kept = []
    for number, episode in enumerate(result.episodes):
        key = function_key(episode)
        digest = hashlib.sha256(json.dumps(episode["args"]).encode()).hexdigest()
        taken = seen.setdefault(key, [])
        if digest in taken or len(taken) >= settings.per_function:
            _count(counts, "repeated arguments" if digest in taken else "past per_function")
            continue
        path = episode["file"]
        if path not in indexes:
            try:
                text = (Path(suite.project) / path).read_bytes().decode("utf-8-sig")
                indexes[path] = FunctionIndex(normalize_newlines(text))
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                indexes[path] = None
        index = indexes[path]
        found = index.defs.get((episode["line"], episode["name"])) if index else None
        if found is None:
            _count(counts, "no def found")
            continue
        qualname, node = found
        touched = frozenset(f[1] for f in episode["frames"] if f[1])
        context, line_map, fits = index.context(node, touched, settings.max_context_tokens)
        if not touched <= line_map.keys():  # a line run was cut: never, but if so, the file
            context, line_map, fits = index.context(node, touched, 1 << 62)
        if not fits:
            _count(counts, "context over max_context_tokens (kept)")
        frames = [Frame(e, line_map[n] if n else n, text, state, arg, scope, depth)
                  for e, n, text, state, arg, scope, depth in episode["frames"]]
        call = call_text(qualname, episode["params"], episode["args"], episode["kind"])
        standalone = ((number in evaluable or _literal(episode["args"]))
                      and "<locals>" not in qualname and episode["kind"] != "coroutine")
        trace = Trace(context, qualname, call, frames, episode["status"], episode["error"],
                      episode["return_value"], python)
        if len(prompt_text(context, frames, end=trace.complete).encode()) > MAX_EPISODE_BYTES:
            _count(counts, "over 1 MB")  # before the row's tokens are counted
            continue
        program = Program(f"{path}::{qualname}::{digest[:8]}", context, call, qualname,
                          suite.id)
        row = trace_row(program, trace)
        taken.append(digest)
        row.update(function=qualname, file=path, module=episode["module"], test=episode["test"],
                   args=json.dumps(episode["args"]),
                   harness=harness_program(index.source, call) if standalone else None,
                   hash=int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
        kept.append((row, episode))
    return kept


def shortened(trace: Trace, budget: int) -> Trace:
    """A real program's trace (a harness or a doctest: a project's file run as its module)
    with its context shortened past `budget` tokens as an episode's is (FunctionIndex), the
    frames' line numbers remapped to it."""
    try:
        index = FunctionIndex(trace.context)
    except (SyntaxError, ValueError):
        return trace
    touched = frozenset(f.lineno for f in trace.frames if f.lineno)
    context, line_map, _ = index.context(None, touched, budget)
    if not touched <= line_map.keys():
        return trace
    frames = [replace(f, lineno=line_map[f.lineno]) if f.lineno else f for f in trace.frames]
    return replace(trace, context=context, frames=frames)


def _literal(args: dict) -> bool:
    """Whether every argument is a literal that evaluates back to the same repr (the child's
    check at the end of the run covers the rest; a run cut short never gets to it)."""
    try:
        return all(repr(ast.literal_eval(text)) == text for text in args.values())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _count(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1
