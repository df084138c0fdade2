"""The traced program's context: finding the entry function, adding the marker, reading the
call (`prepare_context`), and compiling what the recorder needs to recognise the entry."""

from __future__ import annotations

import ast
import re
import types

from .constants import CALL_COMMENT, MARKER

_LOOSE_MARKER = re.compile(r"#\s*<<\s*START_OF_TRACE\s*$")  # to explain a misspelt marker
_ENTRY_MARKER = re.compile(r"# << START_OF_TRACE\s*$")  # any spacing before it


class TraceSetupError(Exception):
    """The program cannot be traced as asked; `status` says which way."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def normalize_newlines(source: str) -> str:
    """Universal newlines, as reading a file in text mode gives."""
    return source.replace("\r\n", "\n").replace("\r", "\n")


def read_source(path: str) -> str:
    """A Python file's text as Python reads it (a coding line or a BOM honoured), with
    universal newlines. Raises OSError, SyntaxError (a bad coding line), UnicodeDecodeError."""
    import tokenize

    with tokenize.open(path) as handle:
        return handle.read()


def _function_defs(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def marker_line(source: str) -> int | None:
    """The line (1-based) of the first START_OF_TRACE marker, however spaced, or None."""
    return next((i + 1 for i, line in enumerate(source.split("\n"))
                 if _LOOSE_MARKER.search(line)), None)


def prepare_context(source: str, entry: str | None = None) -> tuple[str, str, int]:
    """Return (context with exactly one marker, entry function name, line of its `def`).

    The entry is the one `def` whose line ends in `# << START_OF_TRACE`, after any spacing
    (CWM's tools write two spaces; harnesses in the wild write one: the context keeps what the
    program has). With `entry` (a name or a dotted qualified name such as `Stack.push`) and no
    marker, the marker is added to that function's `def` line; a marker on another function
    moves to it. Raises TraceSetupError("syntax_error" | "no_entry", message).
    """
    source = normalize_newlines(source)
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise TraceSetupError("syntax_error", _syntax_message(exc)) from None
    lines = source.split("\n")
    marked = [i + 1 for i, line in enumerate(lines) if _LOOSE_MARKER.search(line)]
    if len(marked) > 1:
        raise TraceSetupError(
            "no_entry", f"START_OF_TRACE marker on lines {marked}: keep exactly one"
        )
    if entry is not None:
        node = _find_def(tree, entry)
        if node is None:
            raise TraceSetupError("no_entry", f"no function named {entry!r}: check --entry")
        if marked and not node.lineno <= marked[0] < node.body[0].lineno:
            # the marker moves to the entry: the other function's line loses it
            lines[marked[0] - 1] = _LOOSE_MARKER.sub("", lines[marked[0] - 1]).rstrip()
            marked = []
        if not marked:
            lines[node.lineno - 1] = lines[node.lineno - 1] + MARKER
            return "\n".join(lines), node.name, node.lineno
    if not marked:
        raise TraceSetupError(
            "no_entry",
            "no function is marked: end its def line with '  # << START_OF_TRACE' or pass --entry",
        )
    for node in _function_defs(tree):
        if node.lineno <= marked[0] < node.body[0].lineno:
            if not _ENTRY_MARKER.search(lines[marked[0] - 1]):
                raise TraceSetupError(
                    "no_entry",
                    f"line {marked[0]}: the marker must be written '# << START_OF_TRACE' "
                    f"(CWM's tools write '{MARKER}')",
                )
            return source, node.name, node.lineno
    raise TraceSetupError(
        "no_entry", f"line {marked[0]} has the START_OF_TRACE marker but is not a def line"
    )


def _find_def(tree: ast.AST, qualname: str):
    parts = qualname.split(".")

    def search(body, parts):
        for node in body:
            if getattr(node, "name", None) != parts[0]:
                continue
            if len(parts) == 1 and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
            if len(parts) > 1 and hasattr(node, "body"):
                found = search(node.body, parts[1:])
                if found is not None:
                    return found
        return None

    found = search(tree.body, parts)
    if found is None and len(parts) == 1:  # a nested function, found anywhere
        found = next((n for n in _function_defs(tree) if n.name == qualname), None)
    return found


def call_from_comment(source: str) -> str | None:
    """The call written in the file as `# tracekit-call: f(3, 'x')`, if any."""
    for line in normalize_newlines(source).split("\n"):
        stripped = line.strip()
        if stripped.startswith(CALL_COMMENT):
            return stripped[len(CALL_COMMENT):].strip() or None
    return None


def _syntax_message(exc: SyntaxError) -> str:
    return f"SyntaxError: {exc.msg} (line {exc.lineno})"


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _entry_code(module_code: types.CodeType, tree: ast.AST, def_lineno: int):
    """The entry's code object, or None when the compiler dropped it as unreachable."""
    node = next(n for n in _function_defs(tree) if n.lineno == def_lineno)
    first_lines = {node.lineno} | {d.lineno for d in node.decorator_list}
    for code in _code_objects(module_code):
        if code.co_name == node.name and code.co_firstlineno in first_lines:
            return code
    return None



def source_lines(context: str) -> list[str]:
    """The context's physical lines, each ending in a newline, marker removed (index = line-1)."""
    return [line + "\n" for line in context.replace(MARKER, "").split("\n")]

