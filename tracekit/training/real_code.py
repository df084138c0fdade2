"""The real code `make model`'s third stage trains on, as `tracekit dataset build` source specs:
function-level episodes cut from the test suites of pinned, permissively licensed pure-Python
projects from PyPI (`tests:`), their docstring examples and the standard library's
(`doctest:`). No project of the real-code evaluation set (`evals/realworld.py`) is among
them, and every training run's leakage check (`run.held_out_programs`) drops any program
equal to a CRUXEval, HumanEval or real-code evaluation function all the same.

    python -m tracekit.training.real_code --work build/model/pypi   # downloads; prints specs

A download that fails exits 1 with one line naming the project and the fix.
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

from tracekit.programs import pypi

# name -> (version, licence): the projects whose test suites run (each sdist has its tests
# and its licence file; the licence as the project states it). Tried and left out: hpack,
# pycodestyle and wcwidth (their suites give no or few episodes here: options or helpers
# their sdists lack)
TESTED: pypi.Projects = {
    "cachetools": ("5.3.3", "MIT"), "click": ("8.1.7", "BSD-3-Clause"),
    "dpath": ("2.2.0", "MIT"), "funcy": ("2.0", "BSD-3-Clause"),
    "h11": ("0.14.0", "MIT"), "idna": ("3.7", "BSD-3-Clause"),
    "itsdangerous": ("2.2.0", "BSD-3-Clause"), "jmespath": ("1.0.1", "MIT"),
    "Markdown": ("3.6", "BSD-3-Clause"), "mistune": ("3.0.2", "BSD-3-Clause"),
    "parse": ("1.20.1", "MIT"), "pycparser": ("2.22", "BSD-3-Clause"),
    "pyflakes": ("3.2.0", "MIT"),
    "pyparsing": ("3.1.2", "MIT"), "schema": ("0.7.7", "MIT"), "six": ("1.16.0", "MIT"),
    "sqlparse": ("0.5.0", "BSD-3-Clause"), "tabulate": ("0.9.0", "MIT"),
    "uritemplate": ("4.1.1", "BSD-3-Clause OR Apache-2.0"),
    "webcolors": ("1.13", "BSD-3-Clause"), "xmltodict": ("0.13.0", "MIT"),
}
# projects whose docstring examples are taken (boltons' suite does not run under pytest 8:
# its conftest uses a hook argument pytest removed)
DOCTESTED: pypi.Projects = {
    "boltons": ("24.0.0", "BSD-3-Clause"), "ordered-set": ("4.1.0", "MIT"),
    "tabulate": TESTED["tabulate"], "webcolors": TESTED["webcolors"],
}
# standard-library directories whose modules are not the library's own code to run alone
STDLIB_SKIPPED = frozenset({"test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3",
                            "ensurepip", "site-packages", "dist-packages", "__pycache__",
                            "distutils"})
# modules whose examples run commands, touch files or the network, or draw random numbers
STDLIB_LEFT_OUT = frozenset({"antigravity", "http.cookiejar", "secrets", "shutil",
                             "subprocess", "zipfile"})


def specs(work: Path) -> list[str]:
    """The source specs of the training's real code: the projects downloaded into `work`
    (once), then the standard library's modules with docstring examples."""
    projects = {**TESTED, **DOCTESTED}
    checkouts = dict(zip(projects, pypi.download(projects, work)))
    out = [f"tests:{checkouts[name]}" for name in TESTED]
    out += [f"doctest:{checkouts[name]}" for name in DOCTESTED]
    return out + [f"doctest:{module}" for module in stdlib_modules_with_examples()]


def stdlib_modules_with_examples() -> list[str]:
    """Names of this interpreter's pure-Python standard-library modules whose docstrings hold
    an example the `doctest:` source takes, sorted."""
    from tracekit.programs.doctests import doctest_source

    root = Path(sysconfig.get_paths()["stdlib"])
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if STDLIB_SKIPPED & set(parts) or any("-" in part for part in parts):
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in STDLIB_LEFT_OUT and next(doctest_source(str(path)), None) is not None:
            names.append(name)
    return names


def licences_table() -> str:
    """The projects, their versions and licences, and how each is used (Markdown; `--licences`
    prints it for a run's card)."""
    rows = {**TESTED, **DOCTESTED}
    lines = ["| project | version | licence | used as |", "|---|---|---|---|"]
    for name in sorted(rows, key=str.lower):
        used = " and ".join(kind for kind, projects in (("tests:", TESTED),
                                                        ("doctest:", DOCTESTED))
                            if name in projects)
        lines.append(f"| {name} | {rows[name][0]} | {rows[name][1]} | {used} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("build/model/pypi"),
                        help="where the source distributions are downloaded and unpacked")
    parser.add_argument("--licences", action="store_true",
                        help="print the projects' licences as a Markdown table instead")
    args = parser.parse_args()
    if args.licences:
        print(licences_table())
        return
    try:
        print(" ".join(specs(args.work.resolve())))
    except pypi.DownloadError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
