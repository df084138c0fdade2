"""Which CPython runs a traced program: `--python` resolved to an interpreter (this one, a
version found on PATH or under pyenv, or a path) and what the sandbox must let it see."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class SandboxUnavailable(Exception):
    """The interpreter or the sandbox cannot be started; the message says how to fix it."""


@dataclass(frozen=True)
class Interpreter:
    path: str
    version: str
    prefixes: tuple[str, ...]  # directories the interpreter needs to see inside the sandbox


def find_python(spec: str | None = None) -> Interpreter:
    """Resolve `--python`: None (this interpreter), a version like "3.10", or a path."""
    if spec is None:
        path = sys.executable
    elif re.fullmatch(r"\d+\.\d+(\.\d+)?", spec):
        if tuple(int(x) for x in spec.split(".")[:2]) < (3, 10):
            raise SandboxUnavailable(f"python {spec} is too old: the tracer needs CPython 3.10 "
                                     "or newer")
        path = _find_version(spec)
    else:
        path = shutil.which(spec) or spec
        if not os.path.exists(path):
            raise SandboxUnavailable(f"python {spec!r} not found: give a version like 3.10 or "
                                     "a path")
    return _describe(os.path.abspath(path))


def _find_version(version: str) -> str:
    major_minor = ".".join(version.split(".")[:2])
    for candidate in _pyenv_versions():
        if candidate.name == version or (
            candidate.name.startswith(major_minor + ".") and version == major_minor
        ):
            python = candidate / "bin" / "python"
            if python.exists():
                return str(python)
    found = shutil.which(f"python{major_minor}")
    if found and (version == major_minor or _describe(found).version == version):
        return found
    raise SandboxUnavailable(
        f"python {version} not found on PATH or under $(pyenv root)/versions: install it "
        "or pass --python PATH"
    )


def _pyenv_versions() -> list[Path]:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not root.is_dir():
        return []

    def key(p: Path):
        return tuple(int(x) if x.isdigit() else 0 for x in p.name.split("."))
    return sorted((p for p in root.iterdir() if p.is_dir()), key=key, reverse=True)


@functools.lru_cache(maxsize=None)
def _describe(path: str) -> Interpreter:
    probe = ("import sys, json; print(json.dumps([sys.version_info[:3], sys.prefix, "
             "sys.base_prefix, sys.exec_prefix]))")
    try:
        out = subprocess.run([path, "-c", probe], capture_output=True, text=True, timeout=30,
                             check=True).stdout
        version, *prefixes = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxUnavailable(f"cannot run python at {path}: {exc}") from None
    if tuple(version[:2]) < (3, 10):
        raise SandboxUnavailable(f"{path} is Python {'.'.join(map(str, version))}: "
                                 "the tracer needs CPython 3.10 or newer")
    real = os.path.dirname(os.path.dirname(os.path.realpath(path)))
    dirs = tuple(dict.fromkeys([*prefixes, real, os.path.dirname(path)]))
    return Interpreter(path, ".".join(map(str, version)), dirs)
