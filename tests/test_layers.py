"""The layers import one way: model/ (token ids) <- tracekit/ core <- evals/ <- the CLI, and the
tracer, which runs inside the sandbox under any CPython 3.10+, imports only the standard library.
Every import statement counts, at module level or inside a function."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`; relative imports resolved."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module
                                                             else []))))
            else:
                found.append((node.lineno, node.module))
    return found


def forbidden(module: str) -> tuple[str, ...]:
    """The packages `module` (dotted, a file's module name) must not import."""
    if module.startswith("model."):
        return ("tracekit", "evals")
    if module.startswith("tracekit.tracer."):
        return ()  # checked more strictly: standard library only
    if module.startswith("tracekit.cli") or module == "tracekit.__main__":
        return ()
    if module.startswith("tracekit."):
        return ("evals", "tracekit.cli")
    if module.startswith("evals."):
        return ("tracekit.cli",)
    raise AssertionError(f"{module}: not in a known layer")


def upward_imports(root: Path) -> list[str]:
    """`file:line imports name` for every import under root's layers that runs up them."""
    wrong = []
    for path in sorted(p for layer in ("model", "tracekit", "evals")
                       for p in (root / layer).rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for line, name in imports(path, root):
            if any(name == f or name.startswith(f + ".") for f in forbidden(module)):
                wrong.append(f"{path.relative_to(root)}:{line} imports {name}")
    return wrong


def test_imports_point_one_way():
    wrong = upward_imports(ROOT)
    assert not wrong, "imports that run up the layers:\n" + "\n".join(wrong)


def test_the_tracer_imports_only_the_standard_library():
    tracer = ROOT / "tracekit" / "tracer"
    files = sorted(tracer.rglob("*.py")) if tracer.is_dir() else [tracer.with_suffix(".py")]
    wrong = [f"{path.name}:{line} imports {name}" for path in files
             for line, name in imports(path)
             if name.split(".")[0] not in sys.stdlib_module_names
             and not name.startswith("tracekit.tracer")]
    assert files and not wrong, wrong


def test_the_check_sees_wrong_imports(tmp_path):
    """Relative imports are resolved and imports inside functions found."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "probe.py").write_text(
        "import torch\ndef f():\n    from ..tracekit import cwm\n    import evals.run\n")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "probe.py").write_text("from tracekit.cli import main\n")
    assert upward_imports(tmp_path) == ["evals/probe.py:1 imports tracekit.cli",
                                        "model/probe.py:3 imports tracekit",
                                        "model/probe.py:4 imports evals.run"]
