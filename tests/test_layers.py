"""The layers import one way: model/ (token ids) <- tracekit/ core <- evals/ <- the CLI
(installed as tracekit.model, tracekit, tracekit.evals, tracekit.cli), and the tracer, which
runs inside the sandbox under any CPython 3.10+, imports only the standard library. Every
import statement counts, at module level or inside a function."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_name(path: Path, root: Path = ROOT) -> str:
    """The installed name of a file's module: model/ and evals/ install as tracekit.model and
    tracekit.evals (pyproject.toml)."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts if parts[0] == "tracekit" else ("tracekit", *parts))


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `path`; relative imports resolved."""
    package = module_name(path, root).rsplit(".", 1)[0]
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


CORE_ABOVE = ("tracekit.evals", "tracekit.training", "tracekit.cli")  # the core must not import
# The core's subpackages, one concept each (README: Layout); the tracer is checked on its own.
CORE_PACKAGES = ("tracekit/format", "tracekit/programs", "tracekit/execution",
                 "tracekit/datasets", "tracekit/prediction")


def forbidden(module: str, name: str) -> bool:
    """Whether `module` (a file's installed name) must not import `name`."""
    def within(package: str) -> bool:
        return name == package or name.startswith(package + ".")

    if module.startswith("tracekit.model."):
        return within("tracekit") and not within("tracekit.model")
    if module == "tracekit.training.loop":  # the loop is over token ids, as model/ is
        return within("tracekit") and not within("tracekit.model") and \
            name != "tracekit.training.config"
    if module.startswith("tracekit.evals."):
        return within("tracekit.training") or within("tracekit.cli")
    if module.startswith("tracekit.training."):
        return within("tracekit.cli")
    if module.startswith(("tracekit.cli", "tracekit.tracer.")) or module == "tracekit.__main__":
        return False  # the top (python -m tracekit is the CLI); the tracer is checked more
        # strictly (standard library only)
    return any(within(above) for above in CORE_ABOVE)


def upward_imports(root: Path) -> list[str]:
    """`file:line imports name` for every import under root's layers that runs up them."""
    wrong = []
    for path in sorted(p for layer in ("model", "tracekit", "evals")
                       for p in (root / layer).rglob("*.py")):
        module = module_name(path, root)
        for line, name in imports(path, root):
            if forbidden(module, name):
                wrong.append(f"{path.relative_to(root)}:{line} imports {name}")
    return wrong


def test_imports_point_one_way():
    wrong = upward_imports(ROOT)
    assert not wrong, "imports that run up the layers:\n" + "\n".join(wrong)


# The imports from outside the standard library: the tests: source runs (and the warm worker
# preloads) the traced project's own pytest, in the interpreter that has it (a missing one is
# reported, not raised).
PROJECT_RUNNERS = {("suite.py", "pytest"), ("worker.py", "pytest")}


def test_the_tracer_imports_only_the_standard_library():
    tracer = ROOT / "tracekit" / "tracer"
    files = sorted(tracer.rglob("*.py")) if tracer.is_dir() else [tracer.with_suffix(".py")]
    wrong = [f"{path.name}:{line} imports {name}" for path in files
             for line, name in imports(path)
             if name.split(".")[0] not in sys.stdlib_module_names
             and not name.startswith("tracekit.tracer.")
             and (path.name, name) not in PROJECT_RUNNERS]
    assert files and not wrong, wrong


def test_the_check_sees_wrong_imports(tmp_path):
    """Relative imports are resolved and imports inside functions found."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "probe.py").write_text(
        "import torch\nfrom . import cache\ndef f():\n    from .. import cwm\n"
        "    import tracekit.evals.run\n")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "probe.py").write_text("from tracekit.cli import main\n")
    (tmp_path / "tracekit").mkdir()
    (tmp_path / "tracekit" / "probe.py").write_text("from .evals import run\n")
    (tmp_path / "tracekit" / "training").mkdir()
    (tmp_path / "tracekit" / "training" / "loop.py").write_text(
        "from tracekit.model.modeling import CwmForCausalLM\nfrom .config import TrainConfig\n"
        "from tracekit.format.trace import Trace\n")
    (tmp_path / "tracekit" / "training" / "run.py").write_text(
        "from tracekit.evals.compare import Mode\nfrom tracekit.cli import main\n")
    (tmp_path / "evals" / "uses_training.py").write_text("from tracekit.training import run\n")
    assert upward_imports(tmp_path) == ["evals/probe.py:1 imports tracekit.cli",
                                        "evals/uses_training.py:1 imports tracekit.training",
                                        "model/probe.py:4 imports tracekit",
                                        "model/probe.py:5 imports tracekit.evals.run",
                                        "tracekit/probe.py:1 imports tracekit.evals",
                                        "tracekit/training/loop.py:3 imports "
                                        "tracekit.format.trace",
                                        "tracekit/training/run.py:2 imports tracekit.cli"]


def unlisted_files(readme: str, root: Path = ROOT) -> list[str]:
    """Modules and benchmarks that the README's Layout block does not name, each looked for
    on the line of its directory's entry (`tracer/ (... values, recorder ...)` names its
    modules without `.py`)."""
    block = readme.split("## Layout", 1)[1].split("```")[1]
    entries: dict[str, str] = {}  # directory -> its entry's text
    directory = None
    for line in block.splitlines():
        if line and not line[0].isspace():
            directory = line.split()[0].rstrip("/")
            entries[directory] = ""
        if directory is not None:
            entries[directory] += " " + line
    missing = []
    for folder in ("model", "tracekit", *CORE_PACKAGES, "tracekit/training", "tracekit/cli",
                   "evals", "benchmarks"):
        for path in sorted((root / folder).glob("*.py")):
            named = re.search(rf"(?<![\w/.]){re.escape(path.name)}", entries.get(folder, ""))
            if path.name != "__init__.py" and not named:  # a whole name: not rows.py in x_rows.py
                missing.append(f"{folder}/{path.name}")
    tracer = entries.get("tracekit/tracer", "")
    for path in sorted((root / "tracekit" / "tracer").glob("*.py")):
        if path.name != "__init__.py" and path.stem not in tracer:
            missing.append(f"tracekit/tracer/{path.name}")
    return missing


def test_the_readme_layout_names_every_module_and_benchmark():
    missing = unlisted_files((ROOT / "README.md").read_text(encoding="utf-8"))
    assert not missing, "README.md's Layout does not name: " + ", ".join(missing)


def test_the_layout_check_sees_a_missing_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "debugger.py" in readme
    without = readme.replace("debugger.py (the neural", "(the neural")
    assert "tracekit/prediction/debugger.py" in unlisted_files(without)


def test_commands_that_run_no_model_do_not_import_torch(tmp_path):
    """`tracekit --version`, `--help`, `trace`, `prompt --count` and `dataset build/stats` load
    neither torch nor the model layer's weights code (torch's import alone is a second or
    more): the model layer is imported where a model is loaded."""
    import subprocess

    program = tmp_path / "prog.py"
    program.write_text("def f(n):  # << START_OF_TRACE\n    return n + 1\n# tracekit-call: f(2)\n")
    script = f"""
import sys
from click.testing import CliRunner
from tracekit.cli import main
P, D = {str(program)!r}, {str(tmp_path / "ds")!r}
for args in (["--version"], ["--help"], ["trace", P], ["prompt", P, "--count"],
             ["dataset", "build", P, "-o", D], ["dataset", "stats", D]):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, (args, result.output)
    assert "torch" not in sys.modules, args
print("none")
"""
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert ran.stdout.strip() == "none", ran.stderr[-2000:]


ATTENTION_OR_PROJECTION = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                           "down_proj", "scaled_dot_product_attention", "matmul")


def forward_outside_modeling(root: Path) -> list[str]:
    """`file:line name` for every use of a layer's projections or an attention product outside
    model/modeling.py, the one forward (attribute names and calls, read from the syntax tree)."""
    found = []
    for path in sorted(p for layer in ("model", "tracekit", "evals")
                       for p in (root / layer).rglob("*.py")):
        if path.relative_to(root).as_posix() == "model/modeling.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = (node.attr if isinstance(node, ast.Attribute)
                    else node.id if isinstance(node, ast.Name) else None)
            if name in ATTENTION_OR_PROJECTION:
                found.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    return found


def test_one_forward_computes_attention_and_calls_the_projections():
    assert forward_outside_modeling(ROOT) == []


def test_the_forward_check_sees_a_second_forward(tmp_path):
    for layer in ("model", "tracekit", "evals"):
        (tmp_path / layer).mkdir()
    (tmp_path / "model" / "modeling.py").write_text("y = layer.q_proj(x)\n")
    (tmp_path / "model" / "step.py").write_text(
        "def step(layer, h):\n    return torch.matmul(layer.self_attn.q_proj(h), h)\n")
    assert forward_outside_modeling(tmp_path) == ["model/step.py:2 matmul",
                                                  "model/step.py:2 q_proj"]


def long_functions(root: Path, limit: int = 60) -> list[str]:
    """`file:line name (n lines)` for each function over `limit` lines (decorators aside) in
    the three layers whose docstring does not say why it is that long ("over 60 lines")."""
    found = []
    for path in sorted(p for layer in ("model", "tracekit", "evals")
                       for p in (root / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit and "over 60 lines" not in (ast.get_docstring(node) or ""):
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} "
                                 f"({length} lines)")
    return found


def test_no_function_is_over_60_lines_unless_it_says_why(tmp_path):
    assert long_functions(ROOT) == []
    (tmp_path / "model").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    (tmp_path / "model" / "long.py").write_text(
        f"def long():\n{body}\ndef explained():\n    '''Kept whole: over 60 lines because "
        f"...'''\n{body}")
    assert long_functions(tmp_path) == ["model/long.py:1 long (61 lines)"]
