"""The `doctest:PATH_OR_MODULE` source: docstring examples that call the module's own code,
each a program (the module's source and `def main():  # << START_OF_TRACE` returning the
example's expression), with the example's expected output in `expected`.

An example is taken when its source is one expression that calls a function or class defined
at the module's top level (`f(2)`, `Stack([1]).pop()`, `sorted(f(x) for x in 'ab')`) and names
nothing but the module's top-level names and builtins (an example that uses a variable an
earlier example set cannot run alone). Docstrings are read with `ast` and `doctest`'s parser:
nothing is imported or run here. The program runs as its module, with the directory above its
package on sys.path, so that its imports (relative ones too) resolve; a module name is found
by this interpreter (`importlib.util.find_spec`): give a path to use another's files.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from tracekit.datasets.episode_rows import harness_program
from tracekit.programs.sources import Program, SourceError
from tracekit.tracer.context import read_source


def doctest_source(target: str) -> Iterator[Program]:
    """The programs of every doctest example in a file, a directory or a module."""
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        base = path
    elif path.is_file():
        files, base = [path], path.parent
    else:
        try:
            spec = importlib.util.find_spec(target)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise SourceError(f"doctest:{target}: no such file, directory or pure-Python "
                              "module")
        files = [Path(spec.origin)]
        base = files[0].parent
    for file in files:
        yield from _file_programs(file.resolve(), file.relative_to(base).as_posix())


def _file_programs(file: Path, name: str) -> Iterator[Program]:
    try:
        source = read_source(str(file))
        tree = ast.parse(source)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return  # not a module Python can read: no examples
    module, root = _module_of(file)
    defined, names = _top_level_names(tree)
    parser = doctest.DocTestParser()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                 ast.AsyncFunctionDef)):
            continue
        docstring = ast.get_docstring(node, clean=False)
        if not docstring:
            continue
        try:
            examples = parser.get_examples(docstring)
        except ValueError:  # a malformed example
            continue
        first_line = node.body[0].lineno  # where the docstring starts
        for example in examples:
            expression = example.source.strip()
            if not _runs_alone(expression, defined, names):
                continue
            yield Program(f"{name}:{first_line + example.lineno}", harness_program(source,
                                                                                  expression),
                          "main()", None, str(file), example.want.strip() or None,
                          module, (str(root),))


def _module_of(file: Path) -> tuple[str, Path]:
    """The file's dotted module name and the directory its top package sits in."""
    parts = [file.stem] if file.stem != "__init__" else []
    directory = file.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    return ".".join(parts) or file.parent.name, directory


def _top_level_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(functions and classes defined at the top level, every name bound there)."""
    defined = {node.name for node in tree.body if isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    names, stack = set(), list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue  # what a body binds is not the module's
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif not isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                                   ast.GeneratorExp)):
            stack.extend(ast.iter_child_nodes(node))
    return defined, names


def _runs_alone(expression: str, defined: set[str], names: set[str]) -> bool:
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return False  # a statement (an assignment, an import), not an expression
    calls = any(isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))
                and _root_name(n.func) in defined for n in ast.walk(tree))
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
             and isinstance(n.ctx, ast.Store)}  # comprehension variables
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
              and isinstance(n.ctx, ast.Load)}
    return calls and loaded <= names | bound | set(dir(builtins))


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Call):
        return _root_name(node.func)
    return node.id if isinstance(node, ast.Name) else None
