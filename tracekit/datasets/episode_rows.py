"""A `tests:` build's rows: each test file's episodes (`suites.run_suite`) as dataset rows.

`suite_rows` keeps at most `per_function` episodes per function over the build, gives each its
context (`FunctionIndex`: the function's file with the marker on its `def`, shortened past
`max_context_tokens` around what the episode ran, docs/trace-format.md section 10), its call
as a harness makes it and, where every argument's repr evaluates back, the harness program;
with `--check-harness` it traces each harness and keeps the episodes it reproduces. What
happened goes into the build's manifest (`suites` in stats.json). `shortened` applies the same
contexts to other real programs (doctest:, realworld), run as their module.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tracekit.datasets.rows import DatasetRow, trace_row
from tracekit.format.trace import Trace
from tracekit.programs.suites import HarnessCheck, Suite, SuiteResult, harness_verdict
from tracekit.tracer.constants import MARKER, MAX_EPISODE_BYTES
from tracekit.tracer.context import read_source


def suite_rows(suite: Suite, result: SuiteResult, manifest: dict, statuses: Counter,
                tracers) -> list[DatasetRow]:
    """The rows of one test file's episodes (`episode_rows`), with --check-harness applied
    (`tracers.map` traces the harnesses); what happened is added to manifest["suites"]."""
    summary = result.summary
    stats = manifest.setdefault("suites", {})
    _add(stats, "test files", summary.get("status", "crashed"))
    for outcome, n in summary.get("tests", {}).items():
        _add(stats, "tests", outcome, n)
    if summary.get("status") != "ok":
        errors = stats.setdefault("errors", {})
        if len(errors) < 20:
            errors[suite.test_file] = f"{summary.get('status')}: {summary.get('error')}"
    if summary.get("tracer_replaced"):
        stats.setdefault("tracer replaced in", []).extend(summary["tracer_replaced"][:5])
    if summary.get("other_tracer"):
        _add(stats, "other tracer active in", "test files")
    dropped = stats.setdefault("episodes dropped", {})
    reasons = {"frame_limit": "over 10,000 events", "byte_limit": "over 1 MB"}
    for reason, n in summary.get("dropped", {}).items():
        _add(stats, "episodes dropped", reasons.get(reason, reason), n)
    _add(stats, "episodes", "recorded", len(result.episodes))
    pairs = episode_rows(suite, result, manifest.setdefault("functions", {}), dropped)
    _add(stats, "episodes", "with a harness", sum(1 for row, _ in pairs if row.harness))
    if suite.settings.check_harness:
        pairs = _check_harnesses(suite, pairs, tracers, stats)
    for row, _ in pairs:
        statuses[row.status] += 1
    _add(stats, "episodes", "kept", len(pairs))
    return [row for row, _ in pairs]


def _check_harnesses(suite: Suite, pairs: list, tracers, stats: dict) -> list:
    """Trace each harness; keep the episodes whose function's frames come out the same (one
    without a harness cannot be checked and is dropped too)."""
    checks = [HarnessCheck(suite.project, row.file, episode["module"], suite.roots,
                           (episode["file"], episode["line"], episode["name"]), row.harness,
                           suite.settings.step_in, suite.settings.max_depth)
              for row, episode in pairs if row.harness]
    results = iter(tracers.map(checks))
    kept = []
    for row, episode in pairs:
        if not row.harness:
            _add(stats, "harness check", "no harness")
            continue
        verdict = harness_verdict(episode, next(results))
        _add(stats, "harness check", verdict or "passed")
        if verdict is None:
            kept.append((row, episode))
    return kept


def _add(stats: dict, group: str, name: str, n: int = 1) -> None:
    counts = stats.setdefault(group, {})
    counts[name] = counts.get(name, 0) + n


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
        from tracekit.format.tokenizer import cwm_tokenizer

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
                 counts: dict[str, int]) -> list[tuple[DatasetRow, dict]]:
    """(row, episode) for each of the suite's episodes kept: at most `per_function` per
    function over the build (`seen`: function key -> the argument digests taken so far, kept
    across shards), under MAX_EPISODE_BYTES of wire text; `counts` gets the others, by why."""
    from tracekit.format.cwm import prompt_text
    from tracekit.format.trace import Frame
    from tracekit.programs.sources import Program

    settings = suite.settings
    paths = result.summary.get("harness", {})  # episode number -> how its module reaches it
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
            indexes[path] = _function_index(Path(suite.project) / path)
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
        access = paths.get(str(number))  # the expression its module reaches it by
        if access is None and _literal(episode["args"]) and "<locals>" not in qualname:
            access = qualname  # a run cut short before it said: literal arguments evaluate
        call = call_text(access or qualname, episode["params"], episode["args"],
                         episode["kind"])
        standalone = access is not None and episode["kind"] != "coroutine"
        trace = Trace(context, qualname, call, frames, episode["status"], episode["error"],
                      episode["return_value"], python)
        if len(prompt_text(context, frames, end=trace.complete).encode()) > MAX_EPISODE_BYTES:
            _count(counts, "over 1 MB")  # before the row's tokens are counted
            continue
        program = Program(f"{path}::{qualname}::{digest[:8]}", context, call, qualname,
                          suite.id)
        row = replace(trace_row(program, trace), function=qualname, file=path,
                      module=episode["module"], test=episode["test"],
                      args=json.dumps(episode["args"]),
                      harness=harness_program(index.source, call) if standalone else None,
                      hash=int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
        taken.append(digest)
        kept.append((row, episode))
    return kept


def _function_index(path: Path) -> FunctionIndex | None:
    """The file's functions, None when it cannot be read as Python."""
    try:
        return FunctionIndex(read_source(str(path)))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None


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
