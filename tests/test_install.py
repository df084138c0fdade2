"""tracekit as a Python package: the wheel and the sdist build without warnings and alike, and
an installed wheel works in a fresh virtual environment outside the checkout, with the
checkout hidden from it (under bubblewrap) so that nothing can be read from data/ or model/
by accident: demo, dataset builds of the shipped sources, trace and eval from an empty folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tracekit.execution.sandbox import bwrap_problem

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = "def total(xs):  # << START_OF_TRACE\n    s = 0\n    for x in xs:\n        s += x\n" \
          "    return s\n\n# tracekit-call: total([1, 2, 3])\n"


def run(command: list, cwd: Path, env: dict | None = None, timeout: int = 600):
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
    return done


def wheel_files(path: Path) -> dict[str, str]:
    """Each file of a wheel (its RECORD left out) and its content's hash."""
    with zipfile.ZipFile(path) as wheel:
        return {name: hashlib.sha256(wheel.read(name)).hexdigest() for name in wheel.namelist()
                if not name.endswith("dist-info/RECORD")}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The checkout's files as a clean clone has them (those git tracks or would; no build/
    left by an earlier build, no .venv), copied: a build writes into its source tree."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                 cwd=ROOT).stdout.split("\0")
    tree = tmp_path_factory.mktemp("source") / "tracekit"
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    return tree


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds from the source tree (no warning while it builds)."""
    out = tmp_path_factory.mktemp("wheel")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 source, "-w", out], cwd=out)
    assert "Warning" not in built.stdout + built.stderr, built.stderr[-3000:]
    (path,) = out.glob("tracekit-*.whl")
    return path


def test_the_sdist_builds_the_same_wheel_and_ships_the_data(source, wheel, tmp_path):
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", tmp_path, source],
        cwd=tmp_path)
    (sdist,) = tmp_path.glob("tracekit-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(n.endswith("data/cruxeval/LICENSE") for n in names)
    again = tmp_path / "again"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 sdist, "-w", again], cwd=tmp_path)
    assert "Warning" not in built.stdout + built.stderr
    (from_sdist,) = again.glob("tracekit-*.whl")
    assert wheel_files(from_sdist) == wheel_files(wheel)
    shipped = wheel_files(wheel)
    for needed in ("tracekit/data/cruxeval/cruxeval.jsonl", "tracekit/data/cruxeval/LICENSE",
                   "tracekit/data/programs/bubble_sort.py",
                   "tracekit/data/realworld/realworld.jsonl",
                   "tracekit/data/realworld/project-files/toolz/LICENSE.txt",
                   "tracekit/model/bundled/model.safetensors",
                   "tracekit/templates/chat.jinja", "tracekit/evals/templates/report.html.jinja"):
        assert needed in shipped, needed
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in shipped)


def test_an_installed_wheel_works_from_an_empty_folder_without_the_checkout(wheel, tmp_path):
    """A fresh venv holds the wheel alone; the dependencies come from this test run's own
    environment through a path file (so no download), which holds no tracekit of its own (the
    editable install's finder is never run there). Under bubblewrap the checkout is an empty
    directory for every command (the environment's directory bound back)."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp_path).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    work = tmp_path / "empty"
    work.mkdir()
    (work / "total.py").write_text(PROGRAM)
    prefix = []
    problem = bwrap_problem()
    if problem is None:
        environment = Path(sys.prefix)
        prefix = ["bwrap", "--dev-bind", "/", "/", "--tmpfs", ROOT]
        if environment.is_relative_to(ROOT):  # make's .venv, inside the checkout
            prefix += ["--ro-bind", environment, environment]
    elif IN_CI:
        pytest.fail(f"CI=true and bubblewrap is unusable ({problem}): .ci/run must provide it")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    tracekit = [*prefix, venv / "bin" / "tracekit"]

    where = run([*prefix, python, "-c", "import tracekit.programs.sources as s, "
                 "tracekit.model.checkpoint as c; print(s.DATA, c.BUNDLED, sep='\\n')"], work,
                env).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where
    if prefix:
        hidden = run([*prefix, python, "-c", f"import os; print(os.listdir({str(ROOT)!r}))"],
                     work, env).stdout.strip()
        assert hidden == ("['.venv']" if Path(sys.prefix).is_relative_to(ROOT) else "[]")
    assert run([*tracekit, "--version"], work, env).stdout.startswith("tracekit, version ")
    assert "Usage: tracekit" in run([*prefix, python, "-m", "tracekit", "--help"], work,
                                    env).stdout
    trace = run([*tracekit, "trace", "total.py"], work, env).stdout
    assert "return s" in trace and "6" in trace
    built = run([*tracekit, "dataset", "build", "cruxeval:6", "realworld:3", "-o", "ds"], work,
                env).stdout
    assert "9 rows from 9 programs in ds (ok 9)" in built, built
    evaluated = run([*tracekit, "eval", "ds", "--model", "bundled", "-o", "ev"], work, env)
    assert (work / "ev" / "report.html").is_file(), evaluated.stdout
    demo = run([*tracekit, "demo"], work, env).stdout
    assert f"the demo's output is in {work / 'demo-output'}" in demo.replace("\n", "")
    assert (work / "demo-output" / "eval" / "report.html").is_file()
